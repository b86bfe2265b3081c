"""The local copy engine runs the pipelines of adf/ and reports what it actually did."""

import gzip
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from mlassets.lib.adf import (
    ADF_DIR,
    CANCELLED,
    Artifacts,
    PipelineRunFailed,
    PipelineRunTimeout,
    UnsupportedFeatureError,
)
from mlassets.roles.storage import LakeStorage
from mlassets.twins.adf.engine import CopyEngine
from mlassets.twins.labels_db import SqliteLabelsDatabase

PIXELS = [0, 1, 5, 16] * 16


@pytest.fixture
def lake(tmp_path: Path) -> LakeStorage:
    return LakeStorage(url=f"file://{tmp_path}/lake")


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path}/labels.db"
    db = SqliteLabelsDatabase(url=url)
    db.ensure_schema()
    db.insert_labels(
        pa.table(
            {
                "sample_id": [f"s{i:03d}" for i in range(250)],
                "label": [i % 10 if i % 7 else None for i in range(250)],
                "labeler": ["ana", None, 'bo, "the" labeler', "ünï"] * 62 + ["ana", "bo"],
            }
        )
    )
    db.dispose()
    return url


def engine(lake: LakeStorage, db_url: str | None = None, root: Path = ADF_DIR, **kw) -> CopyEngine:
    return CopyEngine(Artifacts.load(root), lake, db_url, **kw)


def copy_adf(tmp_path: Path, *pipelines: dict, datasets: tuple[dict, ...] = ()) -> Path:
    """adf/ plus extra artifacts, in a temporary folder."""
    root = tmp_path / "adf"
    shutil.copytree(ADF_DIR, root)
    for doc in pipelines:
        (root / "pipeline" / f"{doc['name']}.json").write_text(json.dumps(doc))
    for doc in datasets:
        (root / "dataset" / f"{doc['name']}.json").write_text(json.dumps(doc))
    return root


def lake_dataset(name: str, kind: str, **type_properties) -> dict:
    return {
        "name": name,
        "properties": {
            "linkedServiceName": {"referenceName": "ls_lake", "type": "LinkedServiceReference"},
            "parameters": {"folder": {"type": "String"}, "file": {"type": "String"}},
            "type": kind,
            "typeProperties": {
                "location": {
                    "type": "AzureBlobFSLocation",
                    "folderPath": {"value": "@dataset().folder", "type": "Expression"},
                    "fileName": {"value": "@dataset().file", "type": "Expression"},
                },
                **type_properties,
            },
        },
    }


def copy_pipeline(name: str, source: tuple, sink: tuple, **type_properties) -> dict:
    """A pipeline with one Copy activity: source/sink are (dataset, folder, file, settings)."""

    def ref(dataset, folder, file):
        return {
            "referenceName": dataset,
            "type": "DatasetReference",
            "parameters": {"folder": folder, "file": file},
        }

    return {
        "name": name,
        "properties": {
            "activities": [
                {
                    "name": "CopyIt",
                    "type": "Copy",
                    "typeProperties": {"source": source[3], "sink": sink[3], **type_properties},
                    "inputs": [ref(*source[:3])],
                    "outputs": [ref(*sink[:3])],
                }
            ],
            "parameters": {},
        },
    }


def event_line(i: int, **changes) -> str:
    body = {
        "sample_id": f"e{i}",
        "pixels": PIXELS,
        "source": "scanner-7",
        "captured_at": "2026-01-05T10:00:00Z",
    }
    body.update(changes)
    return json.dumps(body)


# -- the three pipelines ------------------------------------------------------------------------


def test_snapshot_labels_copies_the_table_and_reports_the_rows_it_wrote(lake, db_url, tmp_path):
    runs = tmp_path / "runs"
    result = engine(lake, db_url, runs_dir=runs).run(
        "snapshot_labels", {"targetFolder": "snapshots/labels", "targetFile": "lsn=1.parquet"}
    )
    assert result.succeeded and result.engine == "local"
    (copy,) = result.activities
    written = lake.read_parquet("snapshots/labels/lsn=1.parquet")
    assert copy.output["rowsRead"] == copy.output["rowsCopied"] == written.num_rows == 250
    assert copy.output["rowsSkipped"] == 0
    assert copy.output["filesWritten"] == 1
    assert copy.output["dataWritten"] == lake.size("snapshots/labels/lsn=1.parquet")
    assert copy.output["dataRead"] > 0 and copy.output["throughput"] > 0
    assert "filesRead" not in copy.output  # a table source reads no files, as in ADF
    assert written.schema.names == ["sample_id", "label", "labeler", "updated_at"]
    assert written.schema.field("label").type == pa.int32()  # the mapping's interim types
    assert written.schema.field("updated_at").type == pa.timestamp("us")
    source = SqliteLabelsDatabase(url=db_url).read_labels().sort_by("sample_id")
    copied = written.sort_by("sample_id")
    assert copied["sample_id"].to_pylist() == source["sample_id"].to_pylist()
    assert copied["label"].to_pylist() == source["label"].to_pylist()
    assert copied["labeler"].to_pylist() == source["labeler"].to_pylist()
    assert copied["updated_at"].cast(pa.timestamp("us", tz="UTC")).equals(source["updated_at"])
    record = json.loads((runs / f"{result.run_id}.json").read_text())
    assert (
        record["status"] == "Succeeded" and result.url == (runs / f"{result.run_id}.json").as_uri()
    )
    assert record["activities"][0]["output"]["rowsCopied"] == 250


def test_snapshot_of_an_empty_table_writes_a_file_with_the_columns(lake, tmp_path):
    url = f"sqlite:///{tmp_path}/empty.db"
    SqliteLabelsDatabase(url=url).ensure_schema()
    result = engine(lake, url).run("snapshot_labels", {"targetFile": "empty.parquet"})
    assert result.copy_totals()["rowsCopied"] == 0
    table = lake.read_parquet("snapshots/labels/empty.parquet")
    assert table.num_rows == 0 and table.schema.names == [
        "sample_id",
        "label",
        "labeler",
        "updated_at",
    ]


def test_a_csv_drop_copies_the_good_rows_and_skips_and_logs_the_rest(lake):
    rows = [f'e{i},"{json.dumps(PIXELS)}",scanner-7,2026-01-05T10:00:00Z' for i in range(40)]
    rows[3] = "e3,1,2"  # too few columns
    rows[9] = 'e9,"[1]",s,2026-01-05,extra'  # too many
    rows[20] = 'e20,"[1, 2]","a ""quoted"", multi\nline source",2026-01-05'  # fine for the copy
    data = "sample_id,pixels,source,captured_at\n" + "\n".join(rows) + "\n"
    lake.fs.pipe(lake.path("incoming/day/scan.csv"), data.encode())
    result = engine(lake).run(
        "copy_incoming_to_landed", {"dropPath": "incoming/day/scan.csv", "stagingFile": "s.parquet"}
    )
    branch, copy = result.activities
    assert (branch.name, branch.output["ifConditionResult"]) == ("IfDelimitedText", True)
    assert copy.name == "CopyCsvDrop"
    staged = lake.read_parquet("staging/incoming/s.parquet")
    assert copy.output["rowsCopied"] == staged.num_rows == 38
    assert copy.output["rowsSkipped"] == 2
    assert copy.output["rowsRead"] == 40
    assert copy.output["filesRead"] == copy.output["filesWritten"] == 1
    assert copy.output["dataRead"] == len(data.encode())
    assert staged.schema == pa.schema(
        [(c, pa.string()) for c in ("sample_id", "pixels", "source", "captured_at")]
    )
    assert staged["source"][18].as_py() == 'a "quoted", multi\nline source'
    # ADF's session log: <path>/copyactivity-logs/<activity>/<activity run id>/<guid>.txt
    log_path = copy.output["logFilePath"]
    assert log_path.startswith(f"logs/adf/copyactivity-logs/CopyCsvDrop/{copy.activity_run_id}/")
    log = pa.csv.read_csv(lake.path(log_path))
    assert log.column_names == ["Timestamp", "Level", "OperationName", "OperationItem", "Message"]
    assert log["OperationName"].to_pylist() == ["TabularRowSkip"] * 2
    assert log["OperationItem"].to_pylist() == ["e3,1,2", 'e9,"[1]",s,2026-01-05,extra']
    assert "the row has 3 columns, the header 4" in log["Message"][0].as_py()


def test_a_json_lines_drop_maps_the_pixels_array_to_json_text(lake):
    lines = [event_line(i) for i in range(30)]
    lines[4] = '{"sample_id": "e4", "pixels": "not an array"}'  # does not fit the schema
    lines[7] = "not json at all"
    lines[8] = ""  # blank lines are not rows
    lines[12] = event_line(12, pixels=[1, 2])  # copies; the decoder refuses it later
    lake.fs.pipe(lake.path("incoming/a.jsonl"), ("\r\n".join(lines) + "\n").encode())
    result = engine(lake).run(
        "copy_incoming_to_landed", {"dropPath": "incoming/a.jsonl", "stagingFile": "a.parquet"}
    )
    copy = result.activity("CopyJsonDrop")
    staged = lake.read_parquet("staging/incoming/a.parquet")
    assert copy.output["rowsRead"] == 29
    assert copy.output["rowsCopied"] == staged.num_rows == 27
    assert copy.output["rowsSkipped"] == 2
    assert json.loads(staged["pixels"][0].as_py()) == PIXELS
    assert staged["pixels"][9].as_py() == "[1,2]"
    assert staged["captured_at"][0].as_py() == "2026-01-05T10:00:00Z"  # text, as in the file
    log = pa.csv.read_csv(lake.path(copy.output["logFilePath"]))
    assert log["OperationItem"].to_pylist() == [lines[4], lines[7]]
    assert "changed from array to string" in log["Message"][0].as_py()
    assert "not a JSON object" in log["Message"][1].as_py()


def test_without_fault_tolerance_the_first_bad_row_fails_the_copy(lake, tmp_path):
    root = copy_adf(tmp_path)
    path = root / "pipeline" / "copy_incoming_to_landed.json"
    doc = json.loads(path.read_text())
    branch = doc["properties"]["activities"][0]["typeProperties"]
    branch["ifTrueActivities"][0]["typeProperties"]["enableSkipIncompatibleRow"] = False
    path.write_text(json.dumps(doc))
    lake.fs.pipe(
        lake.path("incoming/b.csv"), b"sample_id,pixels,source,captured_at\na,[],s,t\nb,1\n"
    )
    with pytest.raises(PipelineRunFailed) as err:
        engine(lake, root=root).run(
            "copy_incoming_to_landed", {"dropPath": "incoming/b.csv", "stagingFile": "b.parquet"}
        )
    result = err.value.result
    assert result.status == "Failed"
    assert result.message.startswith(
        "Operation on target IfDelimitedText failed: Activity failed because an inner activity "
        "failed; Inner activity name: CopyCsvDrop, Error: the row has 2 columns, the header 4"
    )
    assert result.activity("CopyCsvDrop").error["target"] == "CopyCsvDrop"
    assert not lake.exists("staging/incoming/b.parquet")  # nothing half-written


def test_export_predictions_creates_the_table_and_upserts_by_key(lake, db_url):
    predictions = pa.table(
        {
            "sample_id": [f"s{i}" for i in range(500)],
            "model_version": ["v1"] * 500,
            "predicted_label": pa.array([i % 10 for i in range(500)], pa.int32()),
            "probability": [0.5 + (i % 50) / 100 for i in range(500)],
            "scored_at": pa.array(
                [datetime(2026, 1, 5, tzinfo=UTC)] * 500, pa.timestamp("us", tz="UTC")
            ),
        }
    )
    lake.write_parquet("predictions/v=v1/part-0.parquet", predictions.slice(0, 300))
    lake.write_parquet("predictions/v=v1/part-1.parquet", predictions.slice(300))
    lake.write_parquet("predictions/v=v1/_ignored.txt", predictions.slice(0, 1))  # not *.parquet
    eng = engine(lake, db_url)
    first = eng.run("export_predictions")
    copy = first.activities[0]
    sql = sa.create_engine(db_url)
    with sql.connect() as conn:
        count = conn.execute(sa.text("SELECT COUNT(*) FROM predictions")).scalar()
    assert copy.output["rowsRead"] == copy.output["rowsCopied"] == count == 500
    assert copy.output["filesRead"] == 2 and "filesWritten" not in copy.output
    # A second export of changed predictions updates rows instead of adding them.
    changed = predictions.set_column(2, "predicted_label", pa.array([9] * 500, pa.int32()))
    lake.write_parquet("predictions/v=v1/part-0.parquet", changed.slice(0, 300))
    lake.write_parquet("predictions/v=v1/part-1.parquet", changed.slice(300))
    eng.run("export_predictions", {"keyColumns": ["sample_id", "model_version"]})
    with sql.connect() as conn:
        rows = conn.execute(sa.text("SELECT COUNT(*), MIN(predicted_label) FROM predictions")).one()
        stamp = conn.execute(sa.text("SELECT scored_at FROM predictions LIMIT 1")).scalar()
    assert tuple(rows) == (500, 9)
    assert stamp == "2026-01-05 00:00:00.000000"  # SQLAlchemy's SQLite DATETIME format
    sql.dispose()


def test_an_upsert_keeps_the_last_row_per_key_across_files(lake, db_url):
    first = pa.table({"sample_id": ["a", "b", "a"], "model_version": ["v1"] * 3, "p": [1, 2, 3]})
    lake.write_parquet("predictions/x/part-0.parquet", first)
    lake.write_parquet(
        "predictions/x/part-1.parquet", first.slice(1, 1).set_column(2, "p", pa.array([9]))
    )
    result = engine(lake, db_url).run("export_predictions", {"sourceFolder": "predictions/x"})
    sql = sa.create_engine(db_url)
    with sql.connect() as conn:
        rows = dict(conn.execute(sa.text("SELECT sample_id, p FROM predictions")).fetchall())
    sql.dispose()
    assert rows == {"a": 3, "b": 9}
    assert result.activities[0].output["rowsRead"] == 4
    assert result.activities[0].output["rowsCopied"] == len(rows) == 2  # rows the table got


# -- what is outside the subset is refused before anything runs ---------------------------------


def test_an_unsupported_activity_is_rejected_with_its_name(lake, tmp_path):
    doc = {
        "name": "with_lookup",
        "properties": {
            "activities": [
                {
                    "name": "Branch",
                    "type": "IfCondition",
                    "typeProperties": {
                        "expression": {"value": "@equals(1, 1)", "type": "Expression"},
                        "ifTrueActivities": [
                            {"name": "FindLatest", "type": "Lookup", "typeProperties": {}}
                        ],
                    },
                }
            ]
        },
    }
    runs = tmp_path / "runs"
    eng = engine(lake, root=copy_adf(tmp_path, doc), runs_dir=runs)
    with pytest.raises(UnsupportedFeatureError) as err:
        eng.run("with_lookup")
    assert "activity 'FindLatest'" in str(err.value)
    assert "activity type 'Lookup' is not supported" in str(err.value)
    assert not runs.exists()  # rejected up front: no run was started


# -- conversions, formats, control flow -------------------------------------------------------


def test_values_that_do_not_convert_are_incompatible_rows(lake, tmp_path):
    csv_ds = lake_dataset("ds_csv", "DelimitedText", columnDelimiter=";", firstRowAsHeader=True)
    pq_ds = lake_dataset("ds_pq", "Parquet")
    pipeline = copy_pipeline(
        "typed",
        ("ds_csv", "in", "typed.csv", {"type": "DelimitedTextSource"}),
        ("ds_pq", "out", "typed.parquet", {"type": "ParquetSink"}),
        enableSkipIncompatibleRow=True,
        logSettings={
            "enableCopyActivityLog": True,
            "copyActivityLogSettings": {"logLevel": "Info"},
            "logLocationSettings": {
                "linkedServiceName": {"referenceName": "ls_lake", "type": "LinkedServiceReference"},
                "path": "logs",
            },
        },
        translator={
            "type": "TabularTranslator",
            "mappings": [
                {"source": {"name": "id"}, "sink": {"name": "id", "type": "Int32"}},
                {"source": {"name": "ok"}, "sink": {"name": "ok", "type": "Boolean"}},
                {"source": {"name": "at"}, "sink": {"name": "at", "type": "DateTimeOffset"}},
                {"source": {"name": "score"}, "sink": {"name": "score", "type": "Double"}},
                {"source": {"name": "ref"}, "sink": {"name": "ref", "type": "Guid"}},
            ],
        },
    )
    guid = "0f8fad5b-d9cb-469f-a165-70867728950e"
    rows = [f"{i};true;2026-01-05T10:00:00+02:00;{i}.5;{guid}" for i in range(100)]
    rows[10] = f"x10;true;2026-01-05T10:00:00Z;1;{guid}"  # not an integer
    rows[50] = f"50;maybe;2026-01-05;1;{guid}"  # not a boolean
    rows[60] = f"60;false;2026-13-45;1;{guid}"  # not a date
    rows[70] = f"99999999999;false;2026-01-05;1;{guid}"  # overflows Int32
    rows[80] = "80;False; 2026-01-05 10:00:00 ;;"  # trimmed; empty is null
    rows[90] = "90;false;2026-01-05;1;not-a-guid"
    data = "id;ok;at;score;ref\n" + "\n".join(rows)
    lake.fs.pipe(lake.path("in/typed.csv"), data.encode())
    result = engine(lake, root=copy_adf(tmp_path, pipeline, datasets=(csv_ds, pq_ds))).run("typed")
    copy = result.activities[0]
    out = lake.read_parquet("out/typed.parquet")
    assert copy.output["rowsSkipped"] == 5 and copy.output["rowsCopied"] == out.num_rows == 95
    assert out.schema == pa.schema(
        [
            ("id", pa.int32()),
            ("ok", pa.bool_()),
            ("at", pa.timestamp("us", tz="UTC")),
            ("score", pa.float64()),
            ("ref", pa.string()),
        ]
    )
    first = out.slice(0, 1).to_pylist()[0]
    assert first["at"] == datetime(2026, 1, 5, 8, tzinfo=UTC)  # the offset is honoured
    row80 = out.filter(pa.compute.equal(out["id"], 80)).to_pylist()[0]
    assert row80["ok"] is False and row80["score"] is None and row80["ref"] is None
    assert row80["at"] == datetime(2026, 1, 5, 10, tzinfo=UTC)  # no offset means UTC
    log = pa.csv.read_csv(lake.path(copy.output["logFilePath"]))
    skips = log.filter(pa.compute.equal(log["OperationName"], "TabularRowSkip"))
    messages = skips["Message"].to_pylist()
    assert "column 'id': value 'x10' cannot be converted to Int32" in messages[0]
    assert "column 'ok': value 'maybe' cannot be converted to Boolean" in messages[1]
    assert "cannot be converted to DateTimeOffset" in messages[2]
    assert "value '99999999999' cannot be converted to Int32" in messages[3]
    assert "value 'not-a-guid' cannot be converted to Guid" in messages[4]
    assert skips["OperationItem"][0].as_py() == f"x10,true,2026-01-05T10:00:00Z,1,{guid}"
    # logLevel Info also logs the files read and written
    assert set(log["OperationName"].to_pylist()) == {"TabularRowSkip", "FileRead", "FileWrite"}


def test_data_survives_json_and_delimited_text_sinks_and_sources(lake, tmp_path):
    text = [
        "plain",
        'a "quote", a comma',
        "line\nbreak",
        "tab\tand \\ backslash",
        "ünïcødé ✓",
        None,
        "ctrl\x01char",
    ]
    table = pa.table(
        {
            "s": text,
            "n": pa.array([1, None, 3, 4, 5, 6, 7], pa.int64()),
            "f": [0.5, 1.25, None, -2.0, 1e-9, 3.0, 4.0],
            "b": [True, False, None, True, True, False, True],
            "l": [[1, 2], [], None, [3], [4, 5, 6], [7], [8]],
        }
    )
    lake.write_parquet("src/t.parquet", table)
    datasets = (
        lake_dataset("ds_pq", "Parquet"),
        lake_dataset("ds_js", "Json", compression={"type": "gzip"}),
        lake_dataset(
            "ds_csv", "DelimitedText", firstRowAsHeader=True, quoteChar='"', escapeChar='"'
        ),
    )
    pipelines = (
        copy_pipeline(
            "to_json",
            ("ds_pq", "src", "t.parquet", {"type": "ParquetSource"}),
            ("ds_js", "mid", "t.json.gz", {"type": "JsonSink"}),
        ),
        copy_pipeline(
            "from_json",
            ("ds_js", "mid", "t.json.gz", {"type": "JsonSource"}),
            ("ds_pq", "back", "t.parquet", {"type": "ParquetSink"}),
        ),
        copy_pipeline(
            "to_csv",
            ("ds_pq", "src", "t.parquet", {"type": "ParquetSource"}),
            ("ds_csv", "mid", "t.csv", {"type": "DelimitedTextSink"}),
            translator={"type": "TabularTranslator", "mapComplexValuesToString": True},
        ),
        copy_pipeline(
            "from_csv",
            ("ds_csv", "mid", "t.csv", {"type": "DelimitedTextSource"}),
            ("ds_pq", "back", "c.parquet", {"type": "ParquetSink"}),
        ),
    )
    eng = engine(lake, root=copy_adf(tmp_path, *pipelines, datasets=datasets))
    for name in ("to_json", "from_json", "to_csv", "from_csv"):
        result = eng.run(name)
        assert result.copy_totals()["rowsCopied"] == 7, name
    lines = gzip.decompress(lake.fs.cat(lake.path("mid/t.json.gz"))).decode().splitlines()
    assert [json.loads(line) for line in lines] == table.to_pylist()
    assert lake.read_parquet("back/t.parquet").to_pylist() == table.to_pylist()
    back = lake.read_parquet("back/c.parquet")  # delimited text is text: every value a string
    assert back["s"].to_pylist() == [t if t else None for t in text]
    assert back["l"].to_pylist() == ["[1,2]", "[]", None, "[3]", "[4,5,6]", "[7]", "[8]"]
    assert back["n"].to_pylist() == ["1", None, "3", "4", "5", "6", "7"]


def test_a_failed_activity_can_be_handled_by_a_dependent_activity(lake, tmp_path):
    ds = (lake_dataset("ds_pq", "Parquet"),)
    doc = copy_pipeline(
        "with_fallback",
        ("ds_pq", "missing", "x.parquet", {"type": "ParquetSource"}),
        ("ds_pq", "out", "x.parquet", {"type": "ParquetSink"}),
    )
    fallback = json.loads(json.dumps(doc["properties"]["activities"][0]))
    fallback["name"] = "Fallback"
    fallback["inputs"][0]["parameters"] = {"folder": "src", "file": "t.parquet"}
    fallback["dependsOn"] = [{"activity": "CopyIt", "dependencyConditions": ["Failed"]}]
    never = json.loads(json.dumps(fallback))
    never["name"] = "OnlyOnSuccess"
    never["dependsOn"] = [{"activity": "CopyIt", "dependencyConditions": ["Succeeded"]}]
    doc["properties"]["activities"] += [fallback, never]
    lake.write_parquet("src/t.parquet", pa.table({"a": [1, 2]}))
    result = engine(lake, root=copy_adf(tmp_path, doc, datasets=ds)).run("with_fallback")
    assert result.status == "Succeeded"  # the failure was handled
    assert [(a.name, a.status) for a in result.activities] == [
        ("CopyIt", "Failed"),
        ("Fallback", "Succeeded"),
    ]
    assert "missing/x.parquet does not exist" in result.activity("CopyIt").error["message"]


def test_retries_follow_the_activity_policy(lake, tmp_path):
    doc = json.loads((ADF_DIR / "pipeline" / "snapshot_labels.json").read_text())
    doc["properties"]["activities"][0]["policy"].update(retry=2, retryIntervalInSeconds=0)
    root = copy_adf(tmp_path)
    (root / "pipeline" / "snapshot_labels.json").write_text(json.dumps(doc))
    url = f"sqlite:///{tmp_path}/none.db"
    SqliteLabelsDatabase(url=url).ensure_schema()
    with pytest.raises(PipelineRunFailed, match="table nope does not exist") as err:
        engine(lake, url, root=root).run(
            "snapshot_labels", {"sourceTable": "nope", "targetFile": "x"}
        )
    attempts = err.value.result.activities
    assert [a.status for a in attempts] == ["Failed"] * 3
    assert len({a.activity_run_id for a in attempts}) == 3  # each attempt is its own activity run


def test_a_run_past_its_timeout_is_cancelled(lake, db_url, tmp_path):
    ticks = iter(range(0, 10_000, 50))  # every look at the clock moves it 50 s on
    runs = tmp_path / "runs"
    eng = engine(lake, db_url, runs_dir=runs, clock=lambda: next(ticks))
    with pytest.raises(PipelineRunTimeout, match="did not finish within 60s") as err:
        eng.run("snapshot_labels", {"targetFile": "late.parquet"}, timeout=60)
    result = err.value.result
    assert result.status == CANCELLED
    assert json.loads((runs / f"{result.run_id}.json").read_text())["status"] == CANCELLED
    assert not lake.exists("snapshots/labels/late.parquet")


@pytest.mark.azurite
def test_the_engine_copies_on_blob_storage(azurite, azurite_container):
    lake = LakeStorage(url=f"abfs://{azurite_container}/ml", connection_string=azurite)
    lines = [event_line(i) for i in range(50)] + ["{broken"]
    lake.fs.pipe(lake.path("incoming/2026/drop.ndjson"), "\n".join(lines).encode())
    result = engine(lake).run(
        "copy_incoming_to_landed",
        {"dropPath": "incoming/2026/drop.ndjson", "stagingFile": "d.parquet"},
    )
    copy = result.activity("CopyJsonDrop")
    assert (
        copy.output["rowsCopied"] == lake.read_parquet("staging/incoming/d.parquet").num_rows == 50
    )
    assert copy.output["rowsSkipped"] == 1
    assert lake.exists(copy.output["logFilePath"])
    assert pq.read_schema(lake.fs.open(lake.path("staging/incoming/d.parquet"))).names == [
        "sample_id",
        "pixels",
        "source",
        "captured_at",
    ]
