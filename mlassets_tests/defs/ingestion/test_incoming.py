"""`incoming_events`: a drop in incoming/ is a partition of its own; Data Factory copies it, its
events land like hub events, and the blocking schema check reads back what landed."""

import dataclasses
import json

import dagster as dg
import pyarrow as pa
import pytest

from mlassets.defs.ingestion.checks import validate_landed_file
from mlassets.defs.ingestion.incoming import (
    INCOMING_CHECKS,
    INCOMING_DROPS,
    drop_partition_key,
    import_incoming,
    import_incoming_run_config,
    incoming_events,
)
from mlassets.defs.resources import local_resources
from mlassets.lib import incoming as incoming_lib
from mlassets.lib.events import LANDED_SCHEMA, QUARANTINE_SCHEMA
from mlassets.lib.incoming import Drop
from mlassets.lib.landing import landed_ranges
from mlassets.lib.metadata import INCOMING_EVENTS, TRAINING_DATASET, IncomingMetadata
from mlassets.twins.adf.factory import LocalDataFactory

PIXELS = [0, 3, 9, 16] * 16


@pytest.fixture
def resources(data_dir):
    return local_resources()


def csv_drop(rows: list[str]) -> bytes:
    return ("sample_id,pixels,source,captured_at\n" + "\n".join(rows) + "\n").encode()


def good_row(i: int) -> str:
    return f'c{i},"{json.dumps(PIXELS)}",scanner-3,2026-01-05T10:{i % 60:02d}:00Z'


def partition_of(path: str) -> str:
    try:
        return drop_partition_key(path)
    except incoming_lib.DropError:
        return "not-a-drop"


def import_job(resources) -> dg.JobDefinition:
    """The import_incoming job with this test's resources."""
    return dg.Definitions(
        assets=[incoming_events],
        asset_checks=INCOMING_CHECKS,
        jobs=[import_incoming],
        resources=resources,
    ).resolve_job_def(import_incoming.name)


def run_import(resources, instance, path: str | None, ok: bool = True, key: str | None = None):
    """What the Service Bus sensor and the daemon do: add the drop's partition, run it."""
    key = key or partition_of(path)
    instance.add_dynamic_partitions(INCOMING_DROPS.name, [key])
    result = import_job(resources).execute_in_process(
        run_config=import_incoming_run_config(path) if path else None,
        partition_key=key,
        instance=instance,
        raise_on_error=False,
    )
    assert result.success is ok
    return result


def materialization(result) -> IncomingMetadata:
    (mat,) = result.get_asset_materialization_events()
    assert mat.asset_key == INCOMING_EVENTS
    return IncomingMetadata.from_metadata(mat)


def checks(result) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def test_a_csv_drop_lands_with_the_landed_schema_and_quarantines_the_rest(resources, instance):
    lake = resources["lake"]
    rows = [good_row(i) for i in range(100)]
    rows[5] = "c5,oops"  # wrong column count: the copy skips it
    rows[6] = f'c6,"{json.dumps(PIXELS[:10])}",scanner-3,2026-01-05T10:00:00Z'  # 10 pixels
    rows[7] = f'c7,"{json.dumps([17] * 64)}",scanner-3,2026-01-05T10:00:00Z'  # out of range
    rows[8] = f'c8,"{json.dumps(PIXELS)}",scanner-3,yesterday'  # not a timestamp
    rows[9] = f',"{json.dumps(PIXELS)}",scanner-3,2026-01-05T10:00:00Z'  # no sample id
    rows[10] = 'c10,"[1], ""sample_id"": ""evil""",s,2026-01-05T10:00:00Z'  # injection attempt
    lake.fs.pipe(lake.path("incoming/2026-01-05/scanner-3.csv"), csv_drop(rows))
    result = run_import(resources, instance, "incoming/2026-01-05/scanner-3.csv")
    drop = Drop.parse("incoming/2026-01-05/scanner-3.csv")
    landed = lake.read_parquet(drop.landed_path)
    assert landed.schema.equals(LANDED_SCHEMA)
    assert validate_landed_file(lake, drop.landed_path) == []  # what the landing check verifies
    assert landed.num_rows == 94
    assert set(landed["partition_id"].to_pylist()) == {"incoming"}
    assert landed["pixels"][0].as_py() == PIXELS
    quarantined = lake.read_parquet(drop.quarantine_path)
    assert quarantined.schema.equals(QUARANTINE_SCHEMA)
    reasons = dict(
        zip(quarantined["body"].to_pylist(), quarantined["reason"].to_pylist(), strict=True)
    )
    assert reasons[b"c5,oops"] == "skipped by the copy: the row has 2 columns, the header 4"
    assert sorted(r for r in reasons.values() if not r.startswith("skipped")) == [
        "captured_at is not an ISO-8601 timestamp",
        "missing field: sample_id",
        "pixel values must be within 0..16",
        "pixels has 10 values, expected 64",
        "pixels must be an array of integers",
    ]
    meta = materialization(result)
    assert (meta.landed_rows, meta.quarantined_rows, meta.copy_skipped_rows) == (94, 6, 1)
    run = {k: v.value for k, v in meta.pipeline_run.items()}
    assert run["rowsRead"] == 100 and run["rowsCopied"] == 99 and run["rowsSkipped"] == 1
    assert meta.files == [drop.landed_path]
    assert meta.row_count == 94  # the partition's table: the drop's landed file
    assert meta.uri.endswith(drop.landed_path)
    assert [c.name for c in meta.column_schema.columns] == LANDED_SCHEMA.names
    assert run["adf_engine"] == "local" and run["adf_status"] == "Succeeded"
    assert run["adf_run_url"].endswith(f"{run['adf_run_id']}.json")
    assert not lake.exists(drop.staging_path)  # staging is cleaned up
    assert landed_ranges(lake) == {}  # hub watermarks never see incoming files


def test_reimporting_a_drop_rewrites_its_files_instead_of_adding_rows(resources, instance):
    lake = resources["lake"]
    path = "incoming/again.jsonl"
    body = {"pixels": PIXELS, "source": "s", "captured_at": "2026-01-05T10:00:00Z"}
    lines = [json.dumps({"sample_id": f"j{i}", **body}) for i in range(30)] + ["not json"]
    lake.fs.pipe(lake.path(path), "\n".join(lines).encode())
    first = materialization(run_import(resources, instance, path))
    second = materialization(run_import(resources, instance, path))
    assert first.row_count == second.row_count == 30
    assert (first.rewrite, second.rewrite) == (False, True)
    drop = Drop.parse(path)
    assert lake.glob("landed/events/partition=incoming/*") == [drop.landed_path]
    assert lake.read_parquet(drop.landed_path).num_rows == 30
    assert second.pipeline_run["adf_run_id"] != first.pipeline_run["adf_run_id"]  # a new copy
    # a corrected drop replaces what was landed
    lake.fs.pipe(lake.path(path), "\n".join(lines[:20]).encode())
    third = materialization(run_import(resources, instance, path))
    assert third.row_count == 20 and third.quarantined_rows == 0
    assert not lake.exists(drop.quarantine_path)  # the old quarantine file went with it


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("elsewhere/x.csv", "is not a file in the incoming zone"),
        ("incoming/x.parquet", "unknown format '.parquet'"),
        ("incoming/missing.csv", "does not exist"),
    ],
)
def test_a_drop_that_cannot_be_imported_fails_clearly(resources, instance, path, message):
    result = run_import(resources, instance, path, ok=False)
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    assert message in failure.step_failure_data.error.message
    assert not any(e.is_step_materialization for e in result.all_events)


def test_a_failed_copy_fails_the_step_with_the_run_id_and_message(resources, instance):
    lake = resources["lake"]
    lake.fs.pipe(lake.path("incoming/bad.csv"), b"sample_id,pixels\na,[]\n")  # no source column
    result = run_import(resources, instance, "incoming/bad.csv", ok=False)
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    data = failure.step_failure_data
    assert "column 'source' is not in the source (it has: sample_id, pixels)" in data.error.message
    meta = {k: v.value for k, v in data.user_failure_data.metadata.items()}
    assert meta["adf_status"] == "Failed" and meta["adf_run_id"] in data.error.message


def test_the_import_is_a_partition_of_incoming_events_and_its_blocking_check_reads_it(
    resources, instance
):
    lake = resources["lake"]
    lake.fs.pipe(lake.path("incoming/a b/scan?1.csv"), csv_drop([good_row(i) for i in range(20)]))
    key = drop_partition_key("incoming/a b/scan?1.csv")
    assert key == Drop.parse("incoming/a b/scan?1.csv").name  # safe characters only
    assert all(c.isalnum() or c in "._-" for c in key)
    result = run_import(resources, instance, "incoming/a b/scan?1.csv")
    (mat,) = result.get_asset_materialization_events()
    assert mat.partition == key
    schema = checks(result)["schema_and_ranges"]
    assert schema.passed and schema.blocking
    assert schema.metadata["files_checked"].value == 1
    assert checks(result)["quarantine_ratio"].passed


def test_a_materialize_of_a_partition_without_config_finds_its_drop(resources, instance):
    lake = resources["lake"]
    lake.fs.pipe(lake.path("incoming/ui/drop.csv"), csv_drop([good_row(i) for i in range(5)]))
    lake.fs.pipe(lake.path("incoming/ui/other.csv"), csv_drop([good_row(9)]))
    result = run_import(resources, instance, None, key=drop_partition_key("incoming/ui/drop.csv"))
    assert materialization(result).landed_rows == 5
    # A path that is not the run's partition is refused rather than imported under it.
    key = result.dagster_run.tags["dagster/partition"]
    wrong = run_import(resources, instance, "incoming/ui/other.csv", ok=False, key=key)
    (failure,) = [e for e in wrong.all_events if e.is_step_failure]
    assert "not 'ui__drop.csv-" in failure.step_failure_data.error.message


def test_a_drop_with_many_rows_of_the_wrong_shape_fails_its_quarantine_check(resources, instance):
    lake = resources["lake"]
    rows = [good_row(i) for i in range(10)]
    rows += [f'w{i},"{json.dumps(PIXELS[:10])}",scanner-3,2026-01-05T10:00:00Z' for i in range(5)]
    lake.fs.pipe(lake.path("incoming/short.csv"), csv_drop(rows))
    result = run_import(resources, instance, "incoming/short.csv")
    assert materialization(result).quarantined_rows == 5  # the decoder refused them...
    assert checks(result)["schema_and_ranges"].passed  # ...so the landed file is sound
    ratio = checks(result)["quarantine_ratio"]
    assert not ratio.passed and "5 of 15 rows quarantined" in ratio.description


def test_rows_of_the_wrong_shape_that_reach_the_landed_file_fail_the_blocking_check(
    resources, instance, monkeypatch
):
    """The check is the landing's safety net: should a defect let rows of the wrong shape into
    the landed file, the import fails on them and nothing downstream runs."""
    real = incoming_lib.conform

    def defective(*args):
        decoded = real(*args)
        pixels = decoded.landed["pixels"].to_pylist()
        pixels[0], pixels[1] = pixels[0][:10], [17] * 64
        column = pa.array(pixels, LANDED_SCHEMA.field("pixels").type)
        landed = decoded.landed.set_column(1, LANDED_SCHEMA.field("pixels"), column)
        return dataclasses.replace(decoded, landed=landed)

    monkeypatch.setattr(incoming_lib, "conform", defective)
    lake = resources["lake"]
    lake.fs.pipe(lake.path("incoming/bad-shape.csv"), csv_drop([good_row(i) for i in range(8)]))
    key = drop_partition_key("incoming/bad-shape.csv")
    instance.add_dynamic_partitions(INCOMING_DROPS.name, [key])
    from mlassets.definitions import defs

    result = dg.materialize(
        [*defs.assets, *defs.asset_checks],
        selection=dg.AssetSelection.assets(INCOMING_EVENTS, TRAINING_DATASET),
        partition_key=key,
        run_config=import_incoming_run_config("incoming/bad-shape.csv"),
        resources=resources,
        instance=instance,
        raise_on_error=False,
    )
    assert not result.success
    schema = checks(result)["schema_and_ranges"]
    assert not schema.passed
    problems = schema.metadata["problems"].value
    assert "1 rows without 64 pixels" in problems and "pixel values above 16" in problems
    materialized = {e.asset_key for e in result.get_asset_materialization_events()}
    assert materialized == {INCOMING_EVENTS}  # training_dataset never read the drop


def test_the_job_and_its_checks_are_in_the_code_location_in_the_landing_pool():
    from mlassets.definitions import defs

    job = defs.resolve_job_def("import_incoming")
    assert job.partitions_def == INCOMING_DROPS
    (asset_node,) = [node for node in job.graph.nodes if node.name == "incoming_events"]
    assert asset_node.definition.pool == "landing"
    graph = defs.resolve_asset_graph()
    assert incoming_events.key in graph.get(TRAINING_DATASET).parent_keys
    assert incoming_events.key in graph.get(dg.AssetKey("inference_outputs")).parent_keys
    check_keys = {key for check in INCOMING_CHECKS for key in check.check_keys}
    assert dg.AssetCheckKey(INCOMING_EVENTS, "schema_and_ranges") in check_keys
    assert isinstance(local_resources()["data_factory"], LocalDataFactory)
