"""Landing Event Hubs ranges into the lake exactly once, whatever starts the landing.

A landed file is named by the sequence-number range it covers
(``landed/events/partition=<p>/seq=<first>-<last>.parquet``). Which run lands which range is
decided in the lake itself, so landings at the same time (sensor runs, the UI,
``dagster asset materialize``, ``dagster job execute``, ``execute_in_process``), in any
processes, on a local disk or on Blob Storage, never land an event twice and never lose one:

- A run lands a range only after claiming it: it creates
  ``landed/claims/events/partition=<p>/seq=<first>.json`` (naming first..last) with a
  conditional create (Blob: ``If-None-Match: *``; local: a hard link, refused when the name
  is taken). Of all runs that claim the same first sequence number, exactly one wins.
- The claims of a partition form a chain: the first starts at 0 and each next one right
  after the end of the one before. A run claims only at the end of the chain; a run that
  loses reads the winner's end and claims after it. So every sequence number belongs to
  exactly one claim, whatever boundaries the runs asked for, and no listing snapshot can
  go stale between deciding and writing.
- A claim is done when its landed file exists; the quarantine file is written before it.
  A run killed at any point leaves a claim without its landed file, and the next run on
  that partition lands that range again: the range's rows are determined by the hub, so
  that is safe even while the first run is still alive.
- Claims never reach past the hub's last enqueued sequence number, so an event published
  later never falls inside a range already landed. Expired events (past the hub's
  retention) are counted, not waited for.
- Local writes go through ``<name>.<uuid>.tmp`` files that no listing matches; a landing
  sweeps those older than TEMP_GRACE_SECONDS (a concurrent write's own stays). Blob writes
  are single uploads that commit whole or not at all.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import pairwise

import pyarrow as pa

from mlassets.lib.events import decode_events
from mlassets.lib.layout import CLAIMS_PREFIX, LANDED_PREFIX, QUARANTINE_PREFIX
from mlassets.roles.eventhub import EventHubResource, PartitionProperties
from mlassets.roles.storage import LakeStorage

#: Key-value metadata of a landed file: the Dagster run that wrote it.
RUN_ID_KEY = "mlassets.run_id"

#: A temporary file younger than this may belong to a write still in flight: never swept.
TEMP_GRACE_SECONDS = 600.0

_FILE = re.compile(r"partition=(?P<p>[^/]+)/seq=(?P<first>\d+)-(?P<last>\d+)\.parquet$")
_CLAIM = re.compile(r"partition=(?P<p>[^/]+)/seq=(?P<first>\d+)\.json$")


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


# -- claims ------------------------------------------------------------------------------


def claim_path(partition_id: str, first: int) -> str:
    return f"{CLAIMS_PREFIX}/partition={partition_id}/seq={first}.json"


@dataclass(frozen=True)
class Claim:
    """One link of a partition's chain: the range one run took."""

    range: EventRange
    #: Its landed file exists (or it adopts files landed before claims existed).
    done: bool


@dataclass
class Chain:
    """A partition's claims in sequence order, as read from the lake."""

    partition_id: str
    claims: list[Claim]

    @property
    def head(self) -> int:
        """The last claimed sequence number; -1 before the first claim."""
        return self.claims[-1].range.last if self.claims else -1

    @property
    def unfinished(self) -> list[EventRange]:
        return [c.range for c in self.claims if not c.done]


def read_chain(lake: LakeStorage, partition_id: str) -> Chain:
    """The partition's chain: claims listed first, landed files second (a file that
    appears in between only makes a claim look unfinished, which costs a rewrite).

    A claim's end is read from its landed file's name when exactly one starts there, so
    only unfinished claims (and the first) cost a read.
    """
    starts = {
        int(m["first"])
        for path in lake.glob(f"{CLAIMS_PREFIX}/partition={partition_id}/seq=*.json")
        if (m := _CLAIM.search(path))
    }
    files: dict[int, list[EventRange]] = {}
    for path in lake.glob(f"{LANDED_PREFIX}/partition={partition_id}/seq=*.parquet"):
        if (r := EventRange.from_path(path)) is not None:
            files.setdefault(r.first, []).append(r)
    if 0 not in starts:
        if not files:
            return Chain(partition_id, [])
        _adopt(lake, partition_id, files)
        starts.add(0)
    claims: list[Claim] = []
    pos = 0
    while pos in starts:
        here = files.get(pos, [])
        if pos > 0 and len(here) == 1:
            claims.append(Claim(here[0], done=True))
        else:
            record = _read_claim(lake, partition_id, pos)
            rng = EventRange(partition_id, pos, record["last"])
            claims.append(Claim(rng, done=bool(record.get("adopted")) or rng in here))
        pos = claims[-1].range.last + 1
    return Chain(partition_id, claims)


def _adopt(lake: LakeStorage, partition_id: str, files: dict[int, list[EventRange]]) -> None:
    """A lake landed before claims existed: one first claim covers all its files, so they
    are neither landed again nor overlapped. Concurrent adopters see the same files."""
    last = max(r.last for rs in files.values() for r in rs)
    record = {"partition": partition_id, "first": 0, "last": last, "adopted": True}
    lake.create_exclusive(claim_path(partition_id, 0), json.dumps(record).encode())


def _read_claim(lake: LakeStorage, partition_id: str, first: int) -> dict:
    path = claim_path(partition_id, first)
    try:
        record = json.loads(lake.read_bytes(path))
        if int(record["last"]) < first:
            raise ValueError(f"last {record['last']} is before first {first}")
    except (ValueError, KeyError, TypeError) as exc:
        # Claims are created whole, so this is a file someone edited by hand.
        raise ValueError(f"claim {lake.uri(path)} is unreadable ({exc}): restore it") from exc
    return record


def try_claim(lake: LakeStorage, rng: EventRange, owner: str) -> tuple[EventRange, bool]:
    """Claim `rng` at the end of its chain: (rng, True) when this run won, else (the
    range the winner took, False)."""
    record = {
        "partition": rng.partition_id,
        "first": rng.first,
        "last": rng.last,
        "owner": owner,
        "claimed_at": datetime.now(UTC).isoformat(),
    }
    if lake.create_exclusive(claim_path(rng.partition_id, rng.first), json.dumps(record).encode()):
        return rng, True
    theirs = _read_claim(lake, rng.partition_id, rng.first)
    held = EventRange(rng.partition_id, rng.first, int(theirs["last"]))
    # A retried upload whose first attempt went through is refused as taken: it is ours.
    return held, theirs.get("owner") == owner and theirs.get("claimed_at") == record["claimed_at"]


def next_range(
    partition_id: str, head: int, wanted: EventRange, end: int, beginning: int, max_size: int
) -> EventRange:
    """The range to claim after `head` on the way to `end` (<= wanted.last): an unclaimed
    stretch before `wanted` is its own range, and `max_size` bounds the events a range
    holds (expired sequence numbers before the hub's beginning cost nothing)."""
    pos = head + 1
    stop = end if pos >= wanted.first else wanted.first - 1
    return EventRange(partition_id, pos, min(stop, max(pos, beginning) + max_size - 1))


def sweep_temp_files(lake: LakeStorage, older_than: float = TEMP_GRACE_SECONDS) -> list[str]:
    """Remove what interrupted writes left in the landing's zones."""
    return [
        path
        for prefix in (LANDED_PREFIX, QUARANTINE_PREFIX, CLAIMS_PREFIX)
        for path in lake.sweep_temp_files(prefix, older_than)
    ]


@dataclass
class LandingResult:
    range: EventRange
    #: True when this run finished a claim made earlier (by a run that was killed, or one
    #: still writing it): its rows may have landed, and been counted, before.
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
    """Read one range, decode it, write its quarantine file (when anything was refused)
    and then its landed file (always, even empty: it marks the range's claim done).

    `run_id` (the Dagster run landing it) is stamped in the files' key-value metadata, so
    row-level lineage reads which run wrote a file from its footer alone.
    """
    started = time.perf_counter()
    raw = hub.read_range(rng.partition_id, rng.first, rng.last)
    decoded = decode_events(raw)
    stamp = {RUN_ID_KEY: run_id} if run_id else None
    written = 0
    if decoded.quarantined.num_rows:
        written += lake.write_parquet(rng.quarantine_path, _stamped(decoded.quarantined, stamp))
    written += lake.write_parquet(rng.landed_path, _stamped(decoded.landed, stamp))
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


# -- landing -------------------------------------------------------------------------------


def land(
    hub: EventHubResource,
    lake: LakeStorage,
    requested: list[EventRange] | None = None,
    *,
    max_size: int,
    run_id: str | None = None,
    log: Callable[[str], None] = lambda _message: None,
) -> list[LandingResult]:
    """Land `requested` (None: everything the hub holds), each event exactly once across
    all runs at the same time; returns what this run wrote.

    Per partition: finish the claims an interrupted run left unfinished, then claim and
    land, at the end of the chain, up to the end of each requested range. What another run
    claimed first is left to it. A requested range starting past the chain's end brings
    the unclaimed stretch before it along, as its own range (else its events would be lost).
    """
    if swept := sweep_temp_files(lake):
        log(f"removed {len(swept)} temporary files left by interrupted writes")
    props = {p.partition_id: p for p in hub.all_partition_properties()}
    wanted = _targets(requested, props)
    owner = f"{run_id or 'no-run'}@{socket.gethostname()}:{os.getpid()}"
    results: list[LandingResult] = []

    def land_one(rng: EventRange, rewrite: bool) -> None:
        result = land_range(hub, lake, rng, rewrite=rewrite, run_id=run_id)
        results.append(result)
        log(describe(result))

    for pid, ranges in wanted.items():
        chain = read_chain(lake, pid)
        for rng in chain.unfinished:
            land_one(rng, rewrite=True)
        last_enqueued = props[pid].last_enqueued_sequence_number
        for want in ranges:
            end = min(want.last, last_enqueued)
            if end < want.last:
                log(f"partition {pid} {want.first}..{want.last}: published only through {end}")
            if chain.head >= end:
                log(f"partition {pid} {want.first}..{end}: already claimed")
            while chain.head < end:
                rng = next_range(
                    pid, chain.head, want, end, props[pid].beginning_sequence_number, max_size
                )
                held, won = try_claim(lake, rng, owner)
                chain.claims.append(Claim(held, done=False))
                if won:
                    land_one(held, rewrite=False)
                else:
                    log(f"partition {pid} seq {held.first}..{held.last}: claimed by another run")
    return results


def _targets(
    requested: list[EventRange] | None, props: dict[str, PartitionProperties]
) -> dict[str, list[EventRange]]:
    if requested is None:
        return {
            pid: [EventRange(pid, 0, p.last_enqueued_sequence_number)]
            for pid, p in props.items()
            if p.last_enqueued_sequence_number >= 0
        }
    out: dict[str, list[EventRange]] = {}
    for rng in requested:
        if rng.partition_id not in props:
            raise ValueError(
                f"partition {rng.partition_id!r} is not one of the hub's ({', '.join(props)})"
            )
        out.setdefault(rng.partition_id, []).append(rng)
    return {pid: sorted(rs) for pid, rs in out.items()}


def describe(result: LandingResult) -> str:
    """One log line for one landed range."""
    rng = result.range
    return (
        f"partition {rng.partition_id} seq {rng.first}..{rng.last}: "
        f"{result.landed_rows} landed, {result.quarantined_rows} quarantined"
        f"{', finishing an earlier claim' if result.rewrite else ''}"
        f"{f', {result.expired} expired from the hub' if result.expired else ''}"
        f" ({result.read_events / max(result.seconds, 1e-9):,.0f} events/s)"
    )
