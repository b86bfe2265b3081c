"""The embedded copy engine: importing drops and copying tables, against plain pyarrow.

- JSON-lines drop of 200k events -> landed Parquet (`import_drop` on the local engine: the
  copy to staging with its session log, then rebuild the bodies, decode and write), against
  what landing the same events costs once they are in memory (decode + write, the hub path
  without the hub). Target 0.4x: the import parses each event twice (the copy, then the
  decoder), as the two steps must on Azure, and stages through Parquet in between.
- the same events as a CSV drop, same baseline and target.
- `snapshot_labels` of 200k labels (SQLite -> Parquet through the engine) against the direct
  path it replaces (`LabelsDatabase.read_labels` + one Parquet write). Target 0.8x.
- `export_predictions` of 200k rows (Parquet -> SQLite upsert): a plain measurement.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv

from benchmarks.common import Row, best_of
from mlassets.lib.events import decode_events
from mlassets.lib.incoming import Drop, import_drop
from mlassets.roles.storage import LakeStorage
from mlassets.simulate import make_events
from mlassets.twins.adf.factory import LocalDataFactory
from mlassets.twins.labels_db import SqliteLabelsDatabase

EVENTS = 200_000


def run(events: int = EVENTS) -> list[Row]:
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        lake = LakeStorage(url=f"file://{root}/lake")
        url = f"sqlite:///{root}/labels.db"
        factory = LocalDataFactory(lake_url=lake.url, sql_url=url)
        bodies = make_events(events, seed=42).bodies
        jsonl = b"\n".join(bodies) + b"\n"
        lake.fs.pipe(lake.path("incoming/bench/drop.jsonl"), jsonl)
        drop = Drop.parse("incoming/bench/drop.jsonl")

        raw = pa.table(
            {
                "partition_id": pa.array(["0"] * events),
                "sequence_number": pa.array(range(events), pa.int64()),
                "offset": pa.array(range(events), pa.int64()),
                "enqueued_time": pa.nulls(events, pa.timestamp("us", tz="UTC")),
                "partition_key": pa.nulls(events, pa.string()),
                "properties": pa.nulls(events, pa.string()),
                "body": pa.array(bodies, pa.binary()),
            }
        )

        def decode_and_write() -> None:
            lake.write_parquet("baseline.parquet", decode_events(raw).landed)

        baseline = events / best_of(decode_and_write)

        def import_json() -> None:
            import_drop(factory, lake, drop)

        rows.append(
            Row(
                f"import {events:,}-event JSON-lines drop",
                events / best_of(import_json),
                baseline,
                "ev/s",
                0.4,
                note="baseline: decode + write in memory",
            )
        )

        decoded = [json.loads(b) for b in bodies[:events]]
        table = pa.table(
            {
                "sample_id": [d.get("sample_id") for d in decoded],
                "pixels": [json.dumps(d.get("pixels")) for d in decoded],
                "source": [d.get("source") for d in decoded],
                "captured_at": [d.get("captured_at") for d in decoded],
            }
        )
        pa_csv.write_csv(table, root / "drop.csv")
        lake.fs.pipe(lake.path("incoming/bench/drop.csv"), (root / "drop.csv").read_bytes())
        csv_drop = Drop.parse("incoming/bench/drop.csv")

        rows.append(
            Row(
                f"import {events:,}-event CSV drop",
                events / best_of(lambda: import_drop(factory, lake, csv_drop)),
                baseline,
                "ev/s",
                0.4,
                note="baseline: decode + write in memory",
            )
        )

        db = SqliteLabelsDatabase(url=url)
        db.ensure_schema()
        db.insert_labels(
            pa.table(
                {
                    "sample_id": [f"s{i:07d}" for i in range(events)],
                    "label": pa.array([i % 10 for i in range(events)], pa.int32()),
                    "labeler": ["bench"] * events,
                }
            )
        )

        def direct() -> None:
            lake.write_parquet("direct.parquet", db.read_labels())

        def snapshot() -> None:
            factory.run_pipeline("snapshot_labels", {"targetFile": "bench.parquet"})

        rows.append(
            Row(
                f"snapshot_labels {events:,} rows (SQLite -> Parquet)",
                events / best_of(snapshot),
                events / best_of(direct),
                "rows/s",
                0.8,
            )
        )

        lake.write_parquet(
            "predictions/bench/p.parquet",
            pa.table(
                {
                    "sample_id": [f"s{i:07d}" for i in range(events)],
                    "model_version": ["v1"] * events,
                    "predicted_label": pa.array([i % 10 for i in range(events)], pa.int32()),
                    "probability": [0.9] * events,
                }
            ),
        )
        started = time.perf_counter()
        factory.run_pipeline("export_predictions", {"sourceFolder": "predictions/bench"})
        rows.append(
            Row(
                f"export_predictions {events:,} rows (upsert into SQLite)",
                events / (time.perf_counter() - started),
                None,
                "rows/s",
                None,
                note="first export: creates the table",
            )
        )
        db.dispose()
    return rows
