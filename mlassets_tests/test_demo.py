"""The README's demo, end to end on the embedded twins: every unlabeled valid sample ends up
in the SQL `predictions` table, predicted by a model that passed its accuracy check."""

import os
import subprocess
import sys

import dagster as dg
import pyarrow.dataset as ds
import pytest
import sqlalchemy as sa

from mlassets.lib.events import LANDED_SCHEMA
from mlassets.lib.inference import approved_models
from mlassets.lib.metadata import (
    LABELS,
    LANDED_EVENTS,
    DatasetMetadata,
    LabelsMetadata,
    LandingMetadata,
    ScoringMetadata,
)
from mlassets.settings import PROJECT_ROOT

BIN = os.path.dirname(sys.executable)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    home = root / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((PROJECT_ROOT / "dagster_home" / "dagster.yaml").read_text())
    env = {**os.environ, "MLASSETS_DATA_DIR": str(root / "data"), "DAGSTER_HOME": str(home)}
    env = {
        k: v for k, v in env.items() if not k.startswith("MLASSETS_") or k in ("MLASSETS_DATA_DIR",)
    }
    result = subprocess.run(
        [f"{BIN}/mlassets", "demo", "--events", "5000", "--malformed", "25", "--seed", "5"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DAGSTER_HOME", str(home))
        yield result, root / "data", home


@pytest.mark.slow
def test_the_demo_command_runs_the_whole_graph_and_summarizes_it(demo):
    result, _, _ = demo
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "mlassets demo succeeded" in out
    assert "events published    5,000" in out
    assert "rows landed         4,975 (25 quarantined)" in out
    assert "Horovod workers" in out and "make ui" in out


@pytest.mark.slow
def test_every_unlabeled_valid_sample_has_a_prediction_in_sql_from_an_approved_model(demo):
    _, data, _ = demo
    landed = ds.dataset(data / "lake" / "landed" / "events").to_table(columns=["sample_id"])
    engine = sa.create_engine(f"sqlite:///{data / 'labels.db'}")
    with engine.connect() as conn:
        labeled = {r[0] for r in conn.execute(sa.text("SELECT sample_id FROM labels"))}
        predictions = conn.execute(
            sa.text(
                "SELECT sample_id, predicted_class, probability, model_version FROM predictions"
            )
        ).all()
    engine.dispose()
    unlabeled = set(landed["sample_id"].to_pylist()) - labeled
    assert unlabeled, "the demo keeps a share of samples unlabeled for inference"
    assert {p.sample_id for p in predictions} == unlabeled
    assert len(predictions) == len(unlabeled)  # one row each, no duplicates
    assert all(0 <= p.predicted_class <= 9 and 0.0 < p.probability <= 1.0 for p in predictions)
    with dg.DagsterInstance.get() as instance:
        approved = {m.version for m in approved_models(instance)}
    assert approved and {p.model_version for p in predictions} <= approved


@pytest.mark.slow
@pytest.mark.usefixtures("demo")
def test_the_demo_run_is_in_the_dagster_instance_with_every_check_passed():
    with dg.DagsterInstance.get() as instance:
        (run,) = instance.get_runs(filters=dg.RunsFilter(job_name="end_to_end"))
        assert run.status == dg.DagsterRunStatus.SUCCESS
        evaluations = [
            e
            for e in instance.all_logs(run.run_id)
            if e.dagster_event and e.dagster_event.event_type_value == "ASSET_CHECK_EVALUATION"
        ]
        assert len(evaluations) >= 8
        assert all(e.dagster_event.event_specific_data.passed for e in evaluations)


@pytest.mark.slow
def test_each_table_records_its_columns_and_its_own_row_count_not_the_runs(demo):
    """The latest materialization of every table-shaped asset carries the standard metadata
    the UI shows, and its row count is the table's (read here to compare)."""
    from deltalake import DeltaTable

    _, data, _ = demo
    lake = data / "lake"
    with dg.DagsterInstance.get() as instance:
        landing = LandingMetadata.latest(instance)
        labels = LabelsMetadata.latest(instance)
        dataset = DatasetMetadata.latest(instance)
        scoring = ScoringMetadata.latest(instance)
    labels_table = DeltaTable(str(lake / "curated" / "labels"))
    assert landing.row_count == ds.dataset(lake / "landed" / "events").count_rows()
    assert labels.row_count == labels_table.to_pyarrow_dataset().count_rows()
    version = lake / "datasets" / "digits" / f"v={dataset.version}"
    assert dataset.row_count == ds.dataset(version).count_rows()
    assert scoring.row_count == ds.dataset(lake / "predictions").count_rows() > 0
    assert [c.name for c in landing.column_schema.columns] == LANDED_SCHEMA.names
    assert {c.name for c in labels.column_schema.columns} >= {"sample_id", "label"}
    assert {c.name for c in dataset.column_schema.columns} >= {"sample_id", "pixels", "label"}
    assert "predicted_class" in {c.name for c in scoring.column_schema.columns}
    assert landing.uri == f"file://{lake / 'landed' / 'events'}"
    assert dataset.uri == f"file://{version}"
    label_deps = dataset.column_lineage.deps_by_column["label"]
    assert [(d.asset_key, d.column_name) for d in label_deps] == [(LABELS, "label")]
    predicted = {d.asset_key for d in scoring.column_lineage.deps_by_column["predicted_class"]}
    assert LANDED_EVENTS in predicted and len(predicted) == 2  # the pixels, through a model
