"""Landing Event Hubs ranges into the lake exactly once.

A landed file is named by the sequence-number range it covers
(``landed/events/partition=<p>/seq=<first>-<last>.parquet``), so the lake's own listing is
the record of what has landed; there is no second bookkeeping store to drift out of step.

- A retry or a duplicate run of the same range rewrites the same file with the same rows.
- A range that overlaps what has landed is clipped to what is new, so two runs that
  disagree about boundaries (a sensor run and a manual materialization) never land an event
  twice.
- A range is written only once all of it was read; expired events (past the hub's
  retention) are counted, not waited for.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import pairwise

import pyarrow as pa

from mlassets.lib.events import decode_events
from mlassets.lib.layout import LANDED_PREFIX, QUARANTINE_PREFIX
from mlassets.roles.eventhub import EventHubResource
from mlassets.roles.storage import LakeStorage

#: Key-value metadata of a landed file: the Dagster run that wrote it.
RUN_ID_KEY = "mlassets.run_id"

_FILE = re.compile(r"partition=(?P<p>[^/]+)/seq=(?P<first>\d+)-(?P<last>\d+)\.parquet$")


@dataclass(frozen=True, order=True)
class EventRange:
    """Sequence numbers first..last (inclusive) of one partition."""

    partition_id: str
    first: int
    last: int

    def __post_init__(self) -> None:
        if self.first < 0 or self.last < self.first:
            raise ValueError(f"invalid range {self.first}..{self.last}")

    @property
    def size(self) -> int:
        return self.last - self.first + 1

    @property
    def file_name(self) -> str:
        return f"partition={self.partition_id}/seq={self.first}-{self.last}.parquet"

    @property
    def landed_path(self) -> str:
        return f"{LANDED_PREFIX}/{self.file_name}"

    @property
    def quarantine_path(self) -> str:
        return f"{QUARANTINE_PREFIX}/{self.file_name}"

    def run_key(self, hub_name: str) -> str:
        return f"landed_events:{hub_name}:{self.partition_id}:{self.first}-{self.last}"

    @classmethod
    def from_path(cls, path: str) -> EventRange | None:
        m = _FILE.search(path)
        return cls(m["p"], int(m["first"]), int(m["last"])) if m else None


def split(partition_id: str, first: int, last: int, max_size: int) -> list[EventRange]:
    """first..last cut into consecutive ranges of at most max_size events."""
    return [
        EventRange(partition_id, start, min(start + max_size - 1, last))
        for start in range(first, last + 1, max_size)
    ]


def landed_ranges(lake: LakeStorage) -> dict[str, list[EventRange]]:
    """What has landed, per partition, sorted, read from file names alone."""
    out: dict[str, list[EventRange]] = {}
    for path in lake.glob(f"{LANDED_PREFIX}/partition=*/seq=*.parquet"):
        if (r := EventRange.from_path(path)) is not None:
            out.setdefault(r.partition_id, []).append(r)
    return {p: sorted(rs) for p, rs in out.items()}


def watermarks(landed: dict[str, list[EventRange]]) -> dict[str, int]:
    """Last landed sequence number per partition."""
    return {p: max(r.last for r in rs) for p, rs in landed.items() if rs}


def gaps(landed: Iterable[EventRange]) -> list[tuple[int, int]]:
    """Sequence numbers missing between consecutive landed ranges of one partition."""
    ranges = sorted(landed)
    return [(a.last + 1, b.first - 1) for a, b in pairwise(ranges) if b.first > a.last + 1]


def resolve(requested: EventRange, landed: list[EventRange]) -> EventRange | None:
    """What of `requested` to land now: itself if it landed before (rewrite), the part
    above the watermark otherwise, or None when all of it has landed."""
    if requested in landed:
        return requested
    high = max((r.last for r in landed), default=-1)
    start = max(requested.first, high + 1)
    return (
        EventRange(requested.partition_id, start, requested.last)
        if start <= requested.last
        else None
    )


def backlog(
    hub: EventHubResource, landed: dict[str, list[EventRange]], max_size: int
) -> list[EventRange]:
    """Everything the hub holds after the watermark of each partition, in capped ranges."""
    marks = watermarks(landed)
    out: list[EventRange] = []
    for props in hub.all_partition_properties():
        start = max(marks.get(props.partition_id, -1) + 1, props.beginning_sequence_number)
        if start <= props.last_enqueued_sequence_number:
            out += split(props.partition_id, start, props.last_enqueued_sequence_number, max_size)
    return out


@dataclass
class LandingResult:
    range: EventRange
    #: True when the range had landed before and its file was written again.
    rewrite: bool
    read_events: int
    landed_rows: int
    quarantined_rows: int
    bytes_written: int
    seconds: float
    reasons: dict[str, int] = field(default_factory=dict)

    @property
    def expired(self) -> int:
        """Events of the range that the hub no longer retained."""
        return self.range.size - self.read_events


def land_range(
    hub: EventHubResource,
    lake: LakeStorage,
    rng: EventRange,
    *,
    rewrite: bool = False,
    run_id: str | None = None,
) -> LandingResult:
    """Read one range, decode it, write its landed file (always, even empty, so the
    watermark moves) and its quarantine file (when anything was refused).

    `run_id` (the Dagster run landing it) is stamped in the files' key-value metadata, so
    row-level lineage reads which run wrote a file from its footer alone.
    """
    started = time.perf_counter()
    raw = hub.read_range(rng.partition_id, rng.first, rng.last)
    decoded = decode_events(raw)
    stamp = {RUN_ID_KEY: run_id} if run_id else None
    written = lake.write_parquet(rng.landed_path, _stamped(decoded.landed, stamp))
    if decoded.quarantined.num_rows:
        written += lake.write_parquet(rng.quarantine_path, _stamped(decoded.quarantined, stamp))
    return LandingResult(
        range=rng,
        rewrite=rewrite,
        read_events=raw.num_rows,
        landed_rows=decoded.landed.num_rows,
        quarantined_rows=decoded.quarantined.num_rows,
        bytes_written=written,
        seconds=time.perf_counter() - started,
        reasons=decoded.reasons,
    )


def _stamped(table: pa.Table, stamp: dict[str, str] | None) -> pa.Table:
    """The table with `stamp` added to its schema metadata (Parquet key-value metadata)."""
    if not stamp:
        return table
    return table.replace_schema_metadata({**(table.schema.metadata or {}), **stamp})
