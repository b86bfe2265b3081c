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

Compaction (`mlassets.lib.compaction`) merges small landed files into bigger ones with the
same naming and compacts the chain behind a checkpoint, so what a landing lists stays small:

- A reader sees each sequence number once because it reads only *live* files (`live_files`,
  `landed_paths`): a file whose range lies inside another's is left out. A compaction killed
  between writing its merged file and deleting the small ones, or a claim finished late
  after its range was compacted, leaves such files; both hold rows the bigger file holds.
- A claim is done when a live file covers its range, so a compacted range is never landed
  again as unfinished.
- ``checkpoint=<last>.json`` beside the claims says "0..last are claimed and done"; the
  claims inside it are then removed and the chain is read from the newest checkpoint. The
  claims are listed before the checkpoints, so a chain never starts from a checkpoint older
  than the claims it saw removed. A run whose chain was read before a checkpoint may win a
  create where a removed claim stood: `try_claim` checks, after every create, that no
  checkpoint covers the position, and a stale run removes its claim and reads the chain again.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import time
from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping
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
#: Key-value metadata of a merged file: JSON [[first, last, run id or null], ...], the run
#: that landed each range it holds (row-level lineage reads it like RUN_ID_KEY).
RUN_RANGES_KEY = "mlassets.run_ranges"

#: A temporary file younger than this may belong to a write still in flight: never swept.
TEMP_GRACE_SECONDS = 600.0

_FILE = re.compile(r"partition=(?P<p>[^/]+)/seq=(?P<first>\d+)-(?P<last>\d+)\.parquet$")
_CLAIM = re.compile(r"partition=(?P<p>[^/]+)/seq=(?P<first>\d+)\.json$")
_CHECKPOINT = re.compile(r"partition=(?P<p>[^/]+)/checkpoint=(?P<last>\d+)\.json$")
#: How often a chain is read again when a compaction removed claims while it was read.
_CHAIN_READS = 5


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


def live(ranges: Iterable[EventRange]) -> list[EventRange]:
    """`ranges` sorted, without those that lie inside another (of the same partition): the
    files a reader reads, each sequence number once. A compaction killed before deleting
    what it merged, or a claim finished after its range was compacted, leaves such files."""
    out: list[EventRange] = []
    for r in sorted(ranges, key=lambda r: (r.partition_id, r.first, -r.last)):
        if out and out[-1].partition_id == r.partition_id and r.last <= out[-1].last:
            continue  # kept ranges end ever later: the last kept one is the widest so far
        out.append(r)
    return out


def listed_files(
    lake: LakeStorage, partition_id: str | None = None, prefix: str = LANDED_PREFIX
) -> list[EventRange]:
    """Every range-named file under `prefix` (landed or quarantine), live or not, sorted."""
    pattern = f"{prefix}/partition={partition_id or '*'}/seq=*.parquet"
    return sorted(r for path in lake.glob(pattern) if (r := EventRange.from_path(path)))


def live_files(
    lake: LakeStorage, partition_id: str | None = None, prefix: str = LANDED_PREFIX
) -> list[EventRange]:
    """The files under `prefix` to read, from names alone: each sequence number once.

    Read `r.landed_path` (or `r.quarantine_path` for QUARANTINE_PREFIX) of each."""
    return live(listed_files(lake, partition_id, prefix))


def landed_paths(lake: LakeStorage) -> list[str]:
    """Every landed Parquet file a reader of the landed table reads, sorted, each event
    once: the live hub files and the drops imported from `incoming/` (not range-named)."""
    paths = lake.glob(f"{LANDED_PREFIX}/partition=*/*.parquet")
    ranges = [r for path in paths if (r := EventRange.from_path(path)) is not None]
    keep = {r.landed_path for r in live(ranges)}
    return [path for path in paths if path in keep or EventRange.from_path(path) is None]


def landed_ranges(lake: LakeStorage) -> dict[str, list[EventRange]]:
    """What has landed, per partition, sorted, read from file names alone (live files)."""
    out: dict[str, list[EventRange]] = {}
    for r in live_files(lake):
        out.setdefault(r.partition_id, []).append(r)
    return out


def covering(files: list[EventRange], rng: EventRange) -> EventRange | None:
    """The file of `files` (live, sorted, one partition) that holds all of `rng`, if any."""
    i = bisect_right([f.first for f in files], rng.first) - 1
    return files[i] if i >= 0 and files[i].last >= rng.last else None


@dataclass(frozen=True)
class FileRuns:
    """Which run landed each row of one landed file, from its footer."""

    path: str
    #: The run stamped on a file as landed (RUN_ID_KEY).
    run_id: str | None = None
    #: A merged file's ranges: (first, last, run id or None).
    ranges: tuple[tuple[int, int, str | None], ...] = ()

    @classmethod
    def from_footer(cls, path: str, kv: Mapping[bytes, bytes] | None) -> FileRuns:
        kv = kv or {}
        if raw := kv.get(RUN_RANGES_KEY.encode()):
            try:
                ranges = tuple((int(a), int(b), r) for a, b, r in json.loads(raw))
            except (ValueError, TypeError):
                ranges = ()  # a footer edited by hand: say "unknown", do not fail lineage
            return cls(path, None, tuple(sorted(ranges)))
        run = kv.get(RUN_ID_KEY.encode())
        return cls(path, run.decode() if run else None)

    def source(self, sequence_number: int) -> tuple[str, str | None]:
        """(the file that row was landed in, as a landing recorded it; the run, if known)."""
        if not self.ranges:
            return self.path, self.run_id
        i = bisect_right([r[0] for r in self.ranges], sequence_number) - 1
        rng = EventRange.from_path(self.path)
        if i < 0 or rng is None or self.ranges[i][1] < sequence_number:
            return self.path, None
        first, last, run = self.ranges[i]
        return EventRange(rng.partition_id, first, last).landed_path, run


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


def checkpoint_path(partition_id: str, last: int) -> str:
    """ "0..last of the partition are claimed and done": claims inside it may be removed."""
    return f"{CLAIMS_PREFIX}/partition={partition_id}/checkpoint={last}.json"


def checkpoints(lake: LakeStorage, partition_id: str) -> list[int]:
    """The partition's checkpoints (their `last`), oldest first."""
    pattern = f"{CLAIMS_PREFIX}/partition={partition_id}/checkpoint=*.json"
    return sorted(int(m["last"]) for path in lake.glob(pattern) if (m := _CHECKPOINT.search(path)))


def claim_starts(lake: LakeStorage, partition_id: str) -> list[int]:
    """Where the partition's claim files start (inside a checkpoint or after), sorted."""
    pattern = f"{CLAIMS_PREFIX}/partition={partition_id}/seq=*.json"
    return sorted(int(m["first"]) for path in lake.glob(pattern) if (m := _CLAIM.search(path)))


class StaleChain(RuntimeError):
    """A claim was tried where a compaction had checkpointed: the chain read is stale."""


@dataclass(frozen=True)
class Claim:
    """One link of a partition's chain: the range one run took."""

    range: EventRange
    #: Its landed file exists (or it adopts files landed before claims existed).
    done: bool


@dataclass
class Chain:
    """A partition's claims in sequence order after its newest checkpoint, as read."""

    partition_id: str
    claims: list[Claim]
    #: The newest checkpoint: 0..base are claimed and done; -1 when there is none.
    base: int = -1
    #: The claim files and checkpoints listed (compaction deletes those inside a new one).
    claim_starts: list[int] = field(default_factory=list)
    checkpoints: list[int] = field(default_factory=list)

    @property
    def head(self) -> int:
        """The last claimed sequence number; -1 before the first claim."""
        return self.claims[-1].range.last if self.claims else self.base

    @property
    def unfinished(self) -> list[EventRange]:
        return [c.range for c in self.claims if not c.done]


def read_chain(
    lake: LakeStorage, partition_id: str, files: list[EventRange] | None = None
) -> Chain:
    """The partition's chain from its newest checkpoint: claims listed first, checkpoints
    second (so none the claims listing missed was removed inside a newer checkpoint than the
    one the chain starts from), landed files last (a file that appears in between only makes
    a claim look unfinished, which costs a rewrite).

    A claim is done when a live file covers it. Its end is read from the live file starting
    where it does, so only unfinished claims (and the first) cost a read. `files`: the
    partition's landed files as listed earlier (a compaction's), saving a listing: one
    missing there only makes a claim look unfinished.
    """
    for _ in range(_CHAIN_READS - 1):
        try:
            return _read_chain(lake, partition_id, files)
        except FileNotFoundError:  # a compaction removed a claim while it was read
            continue
    return _read_chain(lake, partition_id, files)


def _read_chain(lake: LakeStorage, partition_id: str, listed: list[EventRange] | None) -> Chain:
    listed_starts = claim_starts(lake, partition_id)
    marks = checkpoints(lake, partition_id)
    starts, base = set(listed_starts), max(marks, default=-1)
    files = live_files(lake, partition_id) if listed is None else live(listed)
    if base < 0 and 0 not in starts:
        if not files:
            return Chain(partition_id, [], base, listed_starts, marks)
        _adopt(lake, partition_id, files)
        starts.add(0)
    by_first = {r.first: r for r in files}
    claims: list[Claim] = []
    pos = base + 1
    while pos in starts:
        here = by_first.get(pos)
        if pos > 0 and here is not None:
            # A file (landed, or merged from whole claims) starts here: all of it is claimed.
            claims.append(Claim(here, done=True))
        else:
            record = _read_claim(lake, partition_id, pos)
            rng = EventRange(partition_id, pos, record["last"])
            done = bool(record.get("adopted")) or covering(files, rng) is not None
            claims.append(Claim(rng, done=done))
        pos = claims[-1].range.last + 1
    return Chain(partition_id, claims, base, listed_starts, marks)


def _adopt(lake: LakeStorage, partition_id: str, files: list[EventRange]) -> None:
    """A lake landed before claims existed: one first claim covers all its files, so they
    are neither landed again nor overlapped. Concurrent adopters see the same files."""
    last = max(r.last for r in files)
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
    range the winner took, False). Raises StaleChain when a checkpoint covers rng.first:
    the chain was read before a compaction, and the position is not the chain's end."""
    record = {
        "partition": rng.partition_id,
        "first": rng.first,
        "last": rng.last,
        "owner": owner,
        "claimed_at": datetime.now(UTC).isoformat(),
    }
    path = claim_path(rng.partition_id, rng.first)
    if lake.create_exclusive(path, json.dumps(record).encode()):
        # Checked after the create: a claim removed inside a checkpoint was removed after the
        # checkpoint was written, so a create that took its place sees the checkpoint here.
        if _checkpointed(lake, rng):
            remove_file(lake, path)  # inside a checkpoint nothing reads a claim: any is stale
            raise StaleChain(f"partition {rng.partition_id} seq {rng.first}: checkpointed")
        return rng, True
    try:
        theirs = _read_claim(lake, rng.partition_id, rng.first)
    except FileNotFoundError:  # a stale claim its run removed, or a compaction did
        raise StaleChain(f"partition {rng.partition_id} seq {rng.first}: removed") from None
    if _checkpointed(lake, rng):  # the claim we lost to may be another stale run's
        raise StaleChain(f"partition {rng.partition_id} seq {rng.first}: checkpointed")
    held = EventRange(rng.partition_id, rng.first, int(theirs["last"]))
    # A retried upload whose first attempt went through is refused as taken: it is ours.
    return held, theirs.get("owner") == owner and theirs.get("claimed_at") == record["claimed_at"]


def _checkpointed(lake: LakeStorage, rng: EventRange) -> bool:
    return max(checkpoints(lake, rng.partition_id), default=-1) >= rng.first


def remove_file(lake: LakeStorage, path: str) -> None:
    """Delete one file; gone already (another run or compaction removed it) is fine."""
    with contextlib.suppress(FileNotFoundError):
        lake.fs.rm_file(lake.path(path))


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
        written += _write(lake, rng, rng.quarantine_path, _stamped(decoded.quarantined, stamp))
    written += _write(lake, rng, rng.landed_path, _stamped(decoded.landed, stamp))
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


def _write(lake: LakeStorage, rng: EventRange, path: str, table: pa.Table) -> int:
    """Write one of a range's files; 0 bytes when a compaction deleted it as soon as it was
    in place (this run finished a claim another had finished and a merged file holds)."""
    try:
        return lake.write_parquet(path, table)
    except FileNotFoundError:
        prefix = QUARANTINE_PREFIX if path == rng.quarantine_path else LANDED_PREFIX
        if covering(live_files(lake, rng.partition_id, prefix), rng) is None:
            raise
        return 0


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
                try:
                    held, won = try_claim(lake, rng, owner)
                except StaleChain as stale:
                    log(f"{stale}: reading the chain again")
                    chain = read_chain(lake, pid)
                    continue
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
