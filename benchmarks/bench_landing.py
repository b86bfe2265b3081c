"""Landing throughput for 200k events against a plain pyarrow JSON -> Parquet conversion.

The baseline (the ceiling) converts the same events, as one newline-delimited JSON file on
disk, to one Parquet file, with no validation and no provenance. The measured path is the
real one: read the range from the embedded hub (SQLite), decode and validate, write landed
Parquet. Target: at least 0.7x the ceiling's events/s.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import pyarrow.json as pa_json
import pyarrow.parquet as pq

from benchmarks.common import Row, best_of
from mlassets.lib.events import decode_events
from mlassets.lib.landing import EventRange, land_range
from mlassets.roles.storage import LakeStorage
from mlassets.simulate import make_events
from mlassets.twins.eventhub import EmbeddedEventHub

EVENTS = 200_000


def json_to_parquet(bodies: list[bytes], root: Path) -> Callable[[], None]:
    """The ceiling: `bodies` as one newline-delimited JSON file on disk converted to one
    Parquet file by pyarrow alone (no validation, no provenance). Also the baseline of
    `benchmarks.scale_landing`."""
    ndjson = root / "events.json"
    ndjson.write_bytes(b"\n".join(bodies) + b"\n")

    def ceiling() -> None:
        pq.write_table(pa_json.read_json(ndjson), root / "ceiling.parquet", compression="zstd")

    return ceiling


def run(events: int = EVENTS) -> list[Row]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        simulated = make_events(events, seed=42)
        hub = EmbeddedEventHub(path=str(root / "hub.db"), partitions=1)
        hub.publish(simulated.bodies)
        lake = LakeStorage(url=f"file://{root}/lake")
        rng = EventRange("0", 0, events - 1)

        ceiling = json_to_parquet(simulated.bodies, root)

        def landing() -> None:
            land_range(hub, lake, rng, rewrite=True)

        raw = hub.read_range("0", 0, events - 1)

        def decode_and_write() -> None:
            lake.write_parquet("decoded.parquet", decode_events(raw).landed)

        base = events / best_of(ceiling)
        return [
            Row(
                f"landing {events:,} events (hub -> Parquet)",
                events / best_of(landing),
                base,
                "ev/s",
                0.7,
            ),
            Row(
                f"decode + write {events:,} events (in memory)",
                events / best_of(decode_and_write),
                base,
                "ev/s",
                0.7,
                note="excludes the hub read",
            ),
        ]
