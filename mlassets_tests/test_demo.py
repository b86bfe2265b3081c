"""The README's demo, end to end on the embedded twins: every unlabeled valid sample ends up
in the SQL `predictions` table, predicted by a model that passed its accuracy check."""

import os
import re
import subprocess
import sys

import dagster as dg
import pyarrow.dataset as ds
import pytest
import sqlalchemy as sa

from mlassets.lib.datasets import SPLITS, read_split
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
from mlassets.roles.storage import LakeStorage
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
def test_the_demo_says_what_each_step_did_in_one_line_and_keeps_the_event_log_in_a_file(demo):
    result, data, _ = demo
    out = result.stdout
    before_summary = out.split("mlassets demo succeeded")[0]
    steps = [line.split()[1] for line in before_summary.splitlines() if line.startswith("   ")]
    # one line per finished step: each asset once, each check's own step under its asset
    assert steps.count("landed_events") == 3  # the asset and its two checks
    assert {"cdc_deltas", "labels", "training_dataset", "digit_classifier"} <= set(steps)
    assert {"approved_model", "inference_outputs"} <= set(steps)
    assert re.search(r"landed_events +4,975 rows landed, 25 quarantined", out)
    assert re.search(r"labels +first load: [\d,]+ labels at Delta version \d+", out)
    assert re.search(r"digit_classifier +test accuracy 0\.9\d+ \(2 workers, \d+ epochs", out)
    assert re.search(r"digit_classifier +check test_accuracy passed", out)
    assert re.search(r"inference_outputs +[\d,]+ rows scored", out)
    assert len(before_summary.splitlines()) < 30
    # Dagster's event log is not on the terminal but in the file the summary names
    assert "DEBUG" not in out + result.stderr and "STEP_START" not in out + result.stderr
    (log,) = (data / "logs").glob("demo-*.log")
    assert f"full log            {log}" in out
    assert "STEP_SUCCESS" in log.read_text()


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
    store = LakeStorage(url=f"file://{lake}")
    rows = sum(read_split(store, dataset.version, split).num_rows for split in SPLITS)
    assert dataset.row_count == rows
    predictions = sorted((lake / "predictions").glob("model=*/batch=*/*.parquet"))
    assert scoring.row_count == ds.dataset([str(f) for f in predictions]).count_rows() > 0
    assert [c.name for c in landing.column_schema.columns] == LANDED_SCHEMA.names
    assert {c.name for c in labels.column_schema.columns} >= {"sample_id", "label"}
    assert {c.name for c in dataset.column_schema.columns} >= {"sample_id", "pixels", "label"}
    assert "predicted_class" in {c.name for c in scoring.column_schema.columns}
    assert landing.uri == f"file://{lake / 'landed' / 'events'}"
    manifest = lake / "datasets" / "digits" / f"v={dataset.version}" / "manifest.json"
    assert dataset.uri == f"file://{manifest}"
    label_deps = dataset.column_lineage.deps_by_column["label"]
    assert [(d.asset_key, d.column_name) for d in label_deps] == [(LABELS, "label")]
    predicted = {d.asset_key for d in scoring.column_lineage.deps_by_column["predicted_class"]}
    assert LANDED_EVENTS in predicted and len(predicted) == 2  # the pixels, through a model


def _toy_run(lines: list[str]) -> dg.ExecuteInProcessResult:
    """A landing with a check, a dataset that fails, and a step it leaves skipped."""
    from mlassets.demo import with_step_lines

    @dg.asset(key=LANDED_EVENTS)
    def landed() -> dg.MaterializeResult:
        return dg.MaterializeResult(
            metadata=LandingMetadata(landed_rows=1_975, quarantined_rows=25).to_metadata()
        )

    @dg.asset_check(asset=LANDED_EVENTS)
    def quarantine_ratio() -> dg.AssetCheckResult:
        return dg.AssetCheckResult(passed=True)

    @dg.asset(key="training_dataset", deps=[LANDED_EVENTS])
    def dataset() -> None:
        raise dg.Failure(description="no labels yet: materialize cdc_deltas and labels first")

    @dg.asset(deps=["training_dataset"])
    def downstream() -> None: ...

    job = dg.define_asset_job("toy").resolve(
        asset_graph=dg.Definitions(
            assets=[landed, dataset, downstream], asset_checks=[quarantine_ratio]
        ).resolve_asset_graph()
    )
    job, run_config = with_step_lines(job, lines.append)
    with dg.DagsterInstance.ephemeral() as instance:
        return job.execute_in_process(
            run_config=run_config, instance=instance, raise_on_error=False
        )


def test_each_finished_step_is_one_line_with_its_headline_figure_or_why_it_failed():
    lines: list[str] = []
    assert not _toy_run(lines).success
    shown = [" ".join(line.split()[1:]) for line in lines]
    assert shown == [
        "landed_events 1,975 rows landed, 25 quarantined",
        "landed_events check quarantine_ratio passed",
        "training_dataset FAILED: no labels yet: materialize cdc_deltas and labels first",
        "downstream error: Dependencies for step downstream failed: ['training_dataset']. "
        "Not executing.",
    ]
    assert all(re.match(r" +\d+s  ", line) for line in lines)  # seconds since the run began


def test_while_the_run_goes_to_a_file_children_write_there_and_the_echo_reaches_the_terminal(
    tmp_path, capfd
):
    from mlassets.demo import output_to

    log = tmp_path / "logs" / "demo.log"
    with output_to(log) as terminal:
        os.write(1, b"from this process\n")
        subprocess.run([sys.executable, "-c", "import sys; sys.stderr.write('from a child')"])
        terminal("one line per step")
    print("after")
    out, err = capfd.readouterr()
    assert out == "one line per step\nafter\n" and err == ""
    assert log.read_text() == "from this process\nfrom a child"
