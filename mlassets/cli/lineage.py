"""`mlassets lineage SAMPLE_ID`: one sample's way through the platform, from its events to
its predictions (see mlassets.lib.lineage for where each answer is read from)."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import click

from mlassets import settings

if TYPE_CHECKING:
    from mlassets.lib.lineage import Lineage


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
    result = _walk(sample_id, from_prediction)
    if not result.found:
        where = (
            "has no prediction in the SQL table `predictions`"
            if from_prediction
            else "is in no landed event, label change or prediction"
        )
        click.echo(f"not found: sample {sample_id!r} {where}", err=True)
        sys.exit(1)
    click.echo(result.to_json() if as_json else result.render())


def _walk(sample_id: str, from_prediction: bool) -> Lineage:
    """The lookup, with its resources and instance closed when it returns (so none is
    still open when the command exits)."""
    import dagster as dg

    from mlassets.cli import _resource
    from mlassets.lib import lineage as walk

    os.environ.setdefault("DAGSTER_HOME", str(settings.PROJECT_ROOT / "dagster_home"))
    lake = _resource("lake")
    with dg.DagsterInstance.get() as instance:
        if not from_prediction:
            return walk.lineage(lake, instance, sample_id)
        db = _resource("labels_db")
        try:
            return walk.from_prediction(lake, instance, db.engine, sample_id)
        finally:
            db.dispose()
