"""`cdc_deltas` and `labels` through Dagster: the Delta table equals the source, row for row."""

import os
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from mlassets.defs.labels.assets import cdc_deltas, labels
from mlassets.defs.labels.checks import LABELS_CHECKS as ASSET_CHECKS
from mlassets.defs.resources import local_resources
from mlassets.lib import cdc
from mlassets.lib.metadata import CaptureMetadata, LabelsMetadata
from mlassets.settings import PROJECT_ROOT
from mlassets.simulate import make_events, record_truth, simulate_labels

BIN = os.path.dirname(sys.executable)


@pytest.fixture
def resources(data_dir):
    return local_resources()


def publish(data_dir, count=1000, seed=3):
    record_truth(data_dir, make_events(count, seed=seed))


def materialize(resources, instance, selection=(cdc_deltas, labels), run_config=None, ok=True):
    result = dg.materialize(
        [cdc_deltas, labels, *ASSET_CHECKS],
        resources=resources,
        instance=instance,
        selection=list(selection),
        run_config=run_config,
        raise_on_error=False,
    )
    if ok:
        assert result.success, [e.message for e in result.all_events if e.is_failure]
    return result


def metadata(result, node):
    contract = {"cdc_deltas": CaptureMetadata, "labels": LabelsMetadata}[node]
    return contract.from_run(result)


def checks(result):
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def source_rows(data_dir):
    """`SELECT * FROM labels` with sqlite3 itself, typed for comparison."""
    with sqlite3.connect(data_dir / "labels.db") as conn:
        raw = conn.execute("SELECT * FROM labels ORDER BY sample_id").fetchall()
    return [
        (s, label, who, datetime.fromisoformat(ts).replace(tzinfo=UTC)) for s, label, who, ts in raw
    ]


def delta_rows(data_dir):
    from deltalake import DeltaTable

    table = DeltaTable(str(data_dir / "lake" / "curated" / "labels")).to_pyarrow_table()
    table = table.take(pc.sort_indices(table["sample_id"]))
    return [tuple(r.values()) for r in table.to_pylist()]


def delta_version(data_dir):
    from deltalake import DeltaTable

    return DeltaTable(str(data_dir / "lake" / "curated" / "labels")).version()


def cli(*args):
    result = subprocess.run(
        args, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300, env=dict(os.environ)
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def test_the_labels_table_equals_the_source_after_each_sync_and_an_idle_sync_writes_nothing(
    data_dir, dagster_home
):
    """The issue's must-show, with the commands a user types."""
    materialize_cmd = (
        f"{BIN}/dagster",
        "asset",
        "materialize",
        "-m",
        "mlassets.definitions",
        "--select",
        "cdc_deltas,labels",
    )
    cli(f"{BIN}/mlassets", "simulate", "events", "--count", "3000", "--seed", "11")
    out = cli(f"{BIN}/mlassets", "simulate", "labels", "--seed", "1")
    assert "labeled" in out
    cli(*materialize_cmd)
    first = source_rows(data_dir)
    assert 2000 < len(first) < 2800  # about 20% kept back for inference
    assert delta_rows(data_dir) == first

    out = cli(f"{BIN}/mlassets", "simulate", "labels", "--seed", "2", "--retract", "0.05")
    assert "retracted 0" not in out and "corrected 0," not in out
    cli(*materialize_cmd)
    second = source_rows(data_dir)
    assert second != first and len(second) < len(first)
    assert delta_rows(data_dir) == second
    version = delta_version(data_dir)

    cli(*materialize_cmd)
    assert delta_version(data_dir) == version
    assert delta_rows(data_dir) == second


def test_metadata_reports_counts_lsns_and_the_delta_version(resources, instance, data_dir):
    publish(data_dir)
    simulate_labels(resources["labels_db"], data_dir, seed=1)
    first = materialize(resources, instance)
    capture = metadata(first, "cdc_deltas")
    assert capture.changes == capture.inserts == resources["labels_db"].count_labels()
    assert capture.files_written == 1 and capture.deletes == 0
    assert capture.to_lsn == "0x" + resources["labels_db"].max_lsn()
    loaded = metadata(first, "labels")
    assert loaded.delta_version == 0
    assert loaded.row_count == capture.changes == len(delta_rows(data_dir))
    assert [c.name for c in loaded.column_schema.columns] == cdc.LABEL_SCHEMA.names
    assert loaded.uri == f"file://{data_dir / 'lake' / 'curated' / 'labels'}"
    assert capture.row_count == capture.changes  # every change batch so far
    assert [c.name for c in capture.column_schema.columns] == cdc.CHANGE_SCHEMA.names
    assert "rows at LSN" in loaded.initial_load
    assert set(checks(first)) == {"lsn_contiguity", "label_domain", "unique_keys"}
    assert all(e.passed for e in checks(first).values())

    done = simulate_labels(resources["labels_db"], data_dir, seed=2)
    second = materialize(resources, instance)
    capture = metadata(second, "cdc_deltas")
    assert capture.updates == done.corrected and capture.deletes == done.retracted
    assert capture.from_lsn == "0x" + cdc.next_lsn(metadata(first, "cdc_deltas").to_lsn[2:])
    loaded = metadata(second, "labels")
    assert loaded.delta_version == 1
    # A label corrected and then retracted in the same round is one delete.
    assert loaded.deleted == done.retracted and loaded.updated <= done.corrected
    assert loaded.changes_applied == loaded.updated + loaded.deleted
    assert loaded.applied_lsn == capture.to_lsn
    counts = {r.data["label"]: r.data["rows"] for r in loaded.labels_per_class.records}
    assert sum(counts.values()) == loaded.row_count

    assert capture.row_count == metadata(first, "cdc_deltas").changes + capture.changes
    assert loaded.row_count == len(delta_rows(data_dir))

    third = materialize(resources, instance)
    assert metadata(third, "cdc_deltas").files_written == 0
    assert metadata(third, "labels").delta_version == 1
    assert metadata(third, "labels").new_version is False


def test_invalid_labels_fail_the_domain_check_listing_the_offending_keys(
    resources, instance, data_dir
):
    db = resources["labels_db"]
    db.insert_labels(
        pa.table(
            {
                "sample_id": ["ok-1", "bad-11", "bad-null", "ok-2"],
                "label": pa.array([3, 11, None, 9], pa.int32()),
                "labeler": ["ana"] * 4,
            }
        )
    )
    result = materialize(resources, instance, ok=False)
    domain = checks(result)["label_domain"]
    assert not domain.passed
    assert domain.metadata["invalid_rows"].value == 2
    assert domain.metadata["offending_sample_ids"].value == ["bad-11", "bad-null"]
    listed = {
        r.data["sample_id"]: r.data["label"] for r in domain.metadata["offending_keys"].records
    }
    assert listed == {"bad-11": "11", "bad-null": "NULL"}
    assert "bad-11 (11)" in domain.description and "bad-null (NULL)" in domain.description
    # Mirroring the source is still right: the table holds what the source holds.
    assert sorted(cdc.read_labels_table(resources["lake"])["sample_id"].to_pylist()) == sorted(
        ["ok-1", "bad-11", "bad-null", "ok-2"]
    )

    db.update_labels(
        pa.table(
            {
                "sample_id": ["bad-11", "bad-null"],
                "label": pa.array([1, 2], pa.int32()),
                "labeler": ["r", "r"],
            }
        )
    )
    assert checks(materialize(resources, instance))["label_domain"].passed


def test_the_simulator_can_inject_invalid_rows_for_the_check(resources, instance, data_dir):
    publish(data_dir, 500)
    simulate_labels(resources["labels_db"], data_dir, invalid=4, seed=5)
    result = materialize(resources, instance, ok=False)
    assert checks(result)["label_domain"].metadata["invalid_rows"].value == 4


def test_duplicate_keys_fail_the_unique_keys_check(resources, instance):
    resources["labels_db"].insert_labels(
        pa.table(
            {"sample_id": ["a", "b"], "label": pa.array([1, 2], pa.int32()), "labeler": ["x", "x"]}
        )
    )
    materialize(resources, instance)
    lake = resources["lake"]
    # Someone appended to the table behind the pipeline's back.
    lake.write_delta(cdc.LABELS_PATH, cdc.read_labels_table(lake).slice(0, 1), mode="append")
    result = materialize(resources, instance, selection=[labels], ok=False)
    unique = checks(result)["unique_keys"]
    assert not unique.passed
    assert [r.data["sample_id"] for r in unique.metadata["offending_keys"].records] == ["a"]


def test_a_gap_between_batches_fails_the_contiguity_check_and_the_apply(
    resources, instance, data_dir
):
    db, lake = resources["labels_db"], resources["lake"]
    db.insert_labels(
        pa.table({"sample_id": ["a"], "label": pa.array([1], pa.int32()), "labeler": ["x"]})
    )
    materialize(resources, instance)
    for key in ("b", "c"):
        db.insert_labels(
            pa.table({"sample_id": [key], "label": pa.array([2], pa.int32()), "labeler": ["x"]})
        )
        materialize(resources, instance, selection=[cdc_deltas])
    missing = cdc.batch_ranges(lake)[1]
    lake.delete(missing.path)
    result = materialize(resources, instance, ok=False)
    contiguity = checks(result)["lsn_contiguity"]
    assert not contiguity.passed
    assert contiguity.severity == dg.AssetCheckSeverity.ERROR
    assert contiguity.metadata["gaps"].value == [[f"0x{missing.first}", f"0x{missing.last}"]]
    # Blocking: `labels` did not apply past the gap.
    assert cdc.labels_state(lake).version == 0


def test_expired_retention_fails_clearly_and_a_resnapshot_recovers(resources, instance):
    db = resources["labels_db"]
    db.insert_labels(
        pa.table(
            {"sample_id": ["a", "b"], "label": pa.array([1, 2], pa.int32()), "labeler": ["x", "x"]}
        )
    )
    materialize(resources, instance)
    db.update_labels(
        pa.table({"sample_id": ["a"], "label": pa.array([5], pa.int32()), "labeler": ["y"]})
    )
    db.insert_labels(
        pa.table({"sample_id": ["c"], "label": pa.array([3], pa.int32()), "labeler": ["y"]})
    )
    db.cleanup_changes(db.max_lsn())  # the update to "a" is gone from the source's CDC
    failed = materialize(resources, instance, ok=False)
    assert not failed.success
    failure = next(e for e in failed.all_events if e.is_step_failure)
    message = failure.step_failure_data.error.message + str(
        failure.step_failure_data.user_failure_data
    )
    assert "retention expired" in message and "resnapshot" in message

    resnap = materialize(
        resources,
        instance,
        selection=[labels],
        run_config={"ops": {"labels": {"config": {"resnapshot": True}}}},
    )
    assert metadata(resnap, "labels").delta_version == 1
    assert by_key_rows(resources) == by_key_source(resources)
    db.delete_labels(["b"])
    materialize(resources, instance)
    assert by_key_rows(resources) == by_key_source(resources)


def by_key_rows(resources):
    t = cdc.read_labels_table(resources["lake"])
    return t.take(pc.sort_indices(t["sample_id"])).to_pylist()


def by_key_source(resources):
    t = resources["labels_db"].read_labels()
    return t.take(pc.sort_indices(t["sample_id"])).to_pylist()


def test_sync_labels_is_the_job_of_both_assets_in_the_labels_pool():
    from mlassets.definitions import defs

    job = defs.resolve_job_def("sync_labels")
    # A pool, not a run tag: a step from the UI, the CLI or a sensor waits the same way.
    pools = {node.name: node.definition.pool for node in job.graph.nodes}
    assert (pools["cdc_deltas"], pools["labels"]) == ("labels", "labels")
    keys = {k.to_user_string() for k in job.asset_layer.selected_asset_keys}
    assert keys == {"cdc_deltas", "labels"}
