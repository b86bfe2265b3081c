"""`mlassets lineage SAMPLE_ID`: one sample's way through the platform, from its events to
its predictions (see mlassets.lib.lineage for where each answer is read from)."""

from __future__ import annotations

import os
import sys

import click

from mlassets import settings


@click.command("lineage")
@click.argument("sample_id")
@click.option(
    "--prediction",
    "from_prediction",
    is_flag=True,
    help="start from the sample's prediction in the SQL table `predictions` and walk back: "
    "model, dataset version, events and labels",
)
@click.option("--json", "as_json", is_flag=True, help="print the same as JSON")
def lineage(sample_id: str, from_prediction: bool, as_json: bool) -> None:
    """Events, label history (CDC), dataset versions and split, models and predictions of
    SAMPLE_ID, in the order the data flowed."""
    import dagster as dg

    from mlassets.cli import _resource
    from mlassets.lib import lineage as walk

    os.environ.setdefault("DAGSTER_HOME", str(settings.PROJECT_ROOT / "dagster_home"))
    lake = _resource("lake")
    with dg.DagsterInstance.get() as instance:
        if from_prediction:
            engine = _resource("labels_db").engine
            result = walk.from_prediction(lake, instance, engine, sample_id)
        else:
            result = walk.lineage(lake, instance, sample_id)
    if not result.found:
        where = (
            f"has no prediction in the SQL table `{walk.PREDICTIONS_TABLE}`"
            if from_prediction
            else "is in no landed event, label change or prediction"
        )
        click.echo(f"not found: sample {sample_id!r} {where}", err=True)
        sys.exit(1)
    click.echo(result.to_json() if as_json else result.render())
