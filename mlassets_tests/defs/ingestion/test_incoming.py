"""The import_incoming job: Data Factory copies a drop, its events land like hub events."""

import json

import pytest

from mlassets.defs.ingestion.assets import landed_events
from mlassets.defs.ingestion.checks import validate_landed_file
from mlassets.defs.ingestion.incoming import import_incoming
from mlassets.defs.resources import local_resources
from mlassets.lib.events import LANDED_SCHEMA, QUARANTINE_SCHEMA
from mlassets.lib.incoming import Drop
from mlassets.lib.landing import landed_ranges
from mlassets.lib.metadata import IncomingMetadata
from mlassets.twins.adf.factory import LocalDataFactory

PIXELS = [0, 3, 9, 16] * 16


@pytest.fixture
def resources(data_dir):
    return local_resources()


def csv_drop(rows: list[str]) -> bytes:
    return ("sample_id,pixels,source,captured_at\n" + "\n".join(rows) + "\n").encode()


def good_row(i: int) -> str:
    return f'c{i},"{json.dumps(PIXELS)}",scanner-3,2026-01-05T10:{i % 60:02d}:00Z'


def run_import(resources, instance, path: str, ok: bool = True):
    result = import_incoming.execute_in_process(
        run_config={"ops": {"import_incoming_drop": {"config": {"drop_path": path}}}},
        resources=resources,
        instance=instance,
        raise_on_error=False,
    )
    assert result.success is ok
    return result


def materialization(result) -> IncomingMetadata:
    (mat,) = [
        e.step_materialization_data.materialization
        for e in result.all_events
        if e.is_step_materialization
    ]
    assert mat.asset_key == landed_events.key
    return IncomingMetadata.from_metadata(mat)


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
    assert meta.row_count == 94  # the landed table's rows
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
    # a corrected drop replaces what was landed: the running total follows
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


def test_the_job_is_in_the_code_location_with_the_landing_pool_tag():
    from mlassets.definitions import defs

    job = defs.resolve_job_def("import_incoming")
    assert job.tags.get("mlassets/pool") == "landing"
    assert isinstance(local_resources()["data_factory"], LocalDataFactory)
