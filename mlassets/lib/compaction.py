"""Compaction of the landed zone: small files merged, the claim chain checkpointed, so what a
landing lists (and what readers open) stays bounded however many ticks have landed.

Files. Each sensor tick lands one small file per partition. A merged file has the landed
naming (``seq=<first>-<last>.parquet``), rows in sequence order, the landed schema and, in
its footer, the run that landed each range it holds (`landing.RUN_RANGES_KEY`). Which files
merge is decided by aligned blocks of sequence numbers, tiered:

- Level L's blocks are ``[k*B_L, (k+1)*B_L)`` with ``B_L = base * fanout**L``. A block's
  group is the live files whose first sequence number lies in it. A group merges once it is
  complete: contiguous, starting right after the previous file (or at 0), and its last file
  ending at or past the block's end, so no claim can start in the block any more. The
  groups of different blocks are then disjoint or nested, whatever each compactor listed,
  so concurrent compactions never write files that partly overlap (a reader dropping the
  files inside another sees each event once: `landing.live`).
- Levels are planned from the top down, so a file merges into the biggest complete block
  it is in; a row is rewritten at most once per level (`levels` times, O(log n)), and a
  partition holds total/B_top top-level files plus, below the head, at most fanout-1
  files per lower level and the small files of the current base block
  (`Policy.live_file_bound`), however many ticks landed.

The merged file is written first (atomic: `LakeStorage.write_parquet`), its quarantine
counterpart before it, and the small files are deleted after, by the first compaction that
finds the merged file older than `Policy.keep_merged_seconds` (a reader that listed the small
files just before the merge can still read them). A compaction killed in between leaves
files that readers skip (`landing.live`) and a later compaction deletes.

Claims. Once a prefix of the chain is done (covered by live files), a checkpoint names its
end and the claims inside it are deleted (see `mlassets.lib.landing` for why that is safe for
a landing that read the chain earlier).

Quarantine files are merged with the landed files they belong to (same output range), so
their count is bounded the same way.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import groupby, pairwise

import pyarrow as pa
import pyarrow.compute as pc

from mlassets.lib import landing
from mlassets.lib.events import LANDED_SCHEMA, QUARANTINE_SCHEMA
from mlassets.lib.landing import RUN_ID_KEY, RUN_RANGES_KEY, EventRange
from mlassets.lib.layout import LANDED_PREFIX, QUARANTINE_PREFIX
from mlassets.roles.storage import LakeStorage

#: Rows per row group of a merged file: lineage's `sample_id = ?` skips groups by statistics.
ROW_GROUP_ROWS = 131_072


@dataclass(frozen=True)
class Policy:
    """Block sizes in sequence numbers (events): base * fanout**level, level < levels."""

    #: A tick's file per partition is typically smaller: a few ticks fill a base block.
    base: int = 2_048
    fanout: int = 32
    #: Top block 2,048 * 32**2 = 2,097,152 events: about 90 MB of landed Parquet (43 B an
    #: event), 300 MB in memory while merged. A row is rewritten at most `levels` times.
    levels: int = 3
    #: Events one call rewrites at most (a merge bigger than that still runs, alone).
    budget: int = 4_194_304
    #: Files inside a merged one are deleted once it is this old: readers that listed them
    #: before the merge have that long to read them.
    keep_merged_seconds: float = landing.TEMP_GRACE_SECONDS

    def __post_init__(self) -> None:
        if self.base < 1 or self.fanout < 2 or self.levels < 1:
            raise ValueError(f"invalid compaction policy {self}")

    def block(self, level: int) -> int:
        return self.base * self.fanout**level

    @property
    def top(self) -> int:
        return self.block(self.levels - 1)

    def live_file_bound(self, events: int, claim: int) -> int:
        """The most live files one partition holds after a compaction with nothing
        unfinished, `events` landed in claims of at least `claim` events: one per complete
        top block, at most fanout-1 merged blocks per lower level below the head, and the
        claims of the current base block."""
        return (
            -(-events // self.top)
            + (self.levels - 1) * (self.fanout - 1)
            + -(-self.base // claim)
            + 1
        )


@dataclass(frozen=True)
class Merge:
    """Consecutive live files of one partition, and the file they become."""

    output: EventRange
    inputs: tuple[EventRange, ...]
    level: int


def plan(files: Sequence[EventRange], policy: Policy = Policy()) -> list[Merge]:
    """The merges due among `files` (any partitions, live or not), oldest first."""
    merges: list[Merge] = []
    live = landing.live(files)
    for _, group in groupby(live, key=lambda r: r.partition_id):
        merges += _plan_partition(list(group), policy)
    return sorted(merges, key=lambda m: (m.output.partition_id, m.output.first))


def _plan_partition(files: list[EventRange], policy: Policy) -> list[Merge]:
    consumed = [False] * len(files)
    merges: list[Merge] = []
    for level in reversed(range(policy.levels)):
        size = policy.block(level)
        i = 0
        while i < len(files):
            j = i
            while j + 1 < len(files) and files[j + 1].first // size == files[i].first // size:
                j += 1
            if j > i and not consumed[i] and _complete(files, i, j, size):
                merges.append(
                    Merge(
                        EventRange(files[i].partition_id, files[i].first, files[j].last),
                        tuple(files[i : j + 1]),
                        level,
                    )
                )
                consumed[i : j + 1] = [True] * (j + 1 - i)
            i = j + 1
    return merges


def _complete(files: list[EventRange], i: int, j: int, size: int) -> bool:
    """files[i..j] start in one block: are they all the claims that ever will?"""
    after_previous = files[i].first == 0 or (i > 0 and files[i - 1].last + 1 == files[i].first)
    contiguous = all(a.last + 1 == b.first for a, b in pairwise(files[i : j + 1]))
    past_the_end = files[j].last >= (files[i].first // size + 1) * size - 1
    return after_previous and contiguous and past_the_end


# -- doing it -------------------------------------------------------------------------------


@dataclass
class PartitionCompaction:
    """What one compaction did to one partition."""

    partition_id: str
    #: Landed files listed before, and live (read by readers) after.
    files_before: int = 0
    files_after: int = 0
    merged: list[Merge] = field(default_factory=list)
    #: Landed files inside a merged one: deleted, and kept for now (younger merged file).
    stale_files_removed: int = 0
    stale_files_kept: int = 0
    #: The landed files known to exist after the compaction (for its claims step).
    files: list[EventRange] = field(default_factory=list, repr=False)
    bytes_read: int = 0
    bytes_written: int = 0
    claims_removed: int = 0
    checkpoint: int = -1
    skipped: list[str] = field(default_factory=list)


@dataclass
class Compaction:
    partitions: list[PartitionCompaction]
    seconds: float

    def total(self, attr: str) -> int:
        return sum(getattr(p, attr) for p in self.partitions)

    @property
    def merges(self) -> int:
        return sum(len(p.merged) for p in self.partitions)

    @property
    def rows_rewritten_bound(self) -> int:
        """Sequence numbers the merges spanned (an upper bound on the rows they rewrote)."""
        return sum(m.output.size for p in self.partitions for m in p.merged)


def compact(
    lake: LakeStorage,
    policy: Policy = Policy(),
    partitions: Sequence[str] | None = None,
    *,
    log: Callable[[str], None] = lambda _message: None,
    run_id: str | None = None,
) -> Compaction:
    """Merge what is due, delete what merged files hold, checkpoint done claims; per
    partition (all that have range-named landed files, or `partitions`).

    Safe beside landings and other compactions in any processes: see the module docstring.
    A file that cannot be read (edited by hand, removed by a concurrent compaction) skips
    its merge with a log line; the rest goes on.
    """
    started = time.perf_counter()
    listed = landing.listed_files(lake)
    quarantined = landing.listed_files(lake, prefix=QUARANTINE_PREFIX)
    wanted = sorted({r.partition_id for r in listed} if partitions is None else set(partitions))
    budget = [policy.budget]
    out = []
    for pid in wanted:
        done = _compact_partition(
            lake,
            pid,
            [r for r in listed if r.partition_id == pid],
            [r for r in quarantined if r.partition_id == pid],
            policy,
            budget,
            log,
        )
        done.claims_removed, done.checkpoint = compact_claims(lake, pid, run_id, done.files)
        out.append(done)
    return Compaction(out, time.perf_counter() - started)


def _compact_partition(
    lake: LakeStorage,
    pid: str,
    listed: list[EventRange],
    quarantined: list[EventRange],
    policy: Policy,
    budget: list[int],
    log: Callable[[str], None],
) -> PartitionCompaction:
    report = PartitionCompaction(pid, files_before=len(listed))
    listed, quarantined = list(listed), list(quarantined)
    live_q = landing.live(quarantined)
    for m in _plan_partition(landing.live(listed), policy):
        if budget[0] <= 0:
            break
        budget[0] -= m.output.size
        try:
            read, written, with_quarantine = merge(lake, m, live_q)
        except (OSError, ValueError, pa.ArrowException, *_gone_on_blob()) as exc:
            # A concurrent compaction deleted an input (FileNotFoundError), or a file is
            # unreadable: the merge waits; nothing was deleted, every row is still once.
            report.skipped.append(f"{m.output.file_name}: {type(exc).__name__}: {exc}")
            log(f"compaction of {m.output.file_name} skipped: {exc}")
            continue
        report.merged.append(m)
        report.bytes_read += read
        report.bytes_written += written
        listed.append(m.output)
        if with_quarantine:
            quarantined.append(m.output)
        log(
            f"partition {pid}: merged {len(m.inputs)} files into {m.output.file_name} "
            f"(level {m.level}, {written / 1e6:,.1f} MB)"
        )
    report.stale_files_removed, report.stale_files_kept = _remove_stale(
        lake, LANDED_PREFIX, listed, policy.keep_merged_seconds
    )
    _remove_stale(lake, QUARANTINE_PREFIX, quarantined, policy.keep_merged_seconds)
    report.files_after = len(landing.live(listed))
    report.files = listed
    return report


def _gone_on_blob() -> tuple[type[Exception], ...]:
    """What a Blob read raises for a blob deleted while it is read (adlfs maps it to
    FileNotFoundError when it opens a file, not when it reads one)."""
    try:
        from azure.core.exceptions import ResourceNotFoundError
    except ImportError:  # no Azure SDK: local lakes only
        return ()
    return (ResourceNotFoundError,)


def _remove_stale(
    lake: LakeStorage, prefix: str, listed: list[EventRange], keep_seconds: float
) -> tuple[int, int]:
    """Delete the files inside another (a merged file, older than `keep_seconds`); (deleted,
    kept). Nothing a reader reads is deleted: a file inside another is never read."""
    live = landing.live(listed)
    ages: dict[EventRange, float] = {}
    removed = kept = 0
    for stale in sorted(set(listed) - set(live)):
        holder = landing.covering(live, stale)
        if holder is None:  # never: the live set covers what it leaves out
            continue
        if keep_seconds > 0 and holder not in ages:
            ages[holder] = _age_seconds(lake, _path(prefix, holder))
        if keep_seconds > 0 and ages[holder] < keep_seconds:
            kept += 1
            continue
        _delete(lake, _path(prefix, stale))
        removed += 1
    return removed, kept


def _age_seconds(lake: LakeStorage, path: str) -> float:
    """Seconds since the file was written; 0 when it cannot be told (it is then kept)."""
    try:
        info = lake.fs.info(lake.path(path))
    except FileNotFoundError:
        return 0.0
    stamp = info.get("mtime") or info.get("last_modified") or info.get("LastModified")
    if isinstance(stamp, datetime):
        stamp = stamp.timestamp()
    return time.time() - float(stamp) if stamp else 0.0


def merge(
    lake: LakeStorage, m: Merge, quarantined: Sequence[EventRange] = ()
) -> tuple[int, int, bool]:
    """Write m.output, its quarantine part first (when its inputs have one); the inputs are
    left for `_remove_stale`. (bytes read, bytes written, whether a quarantine part was
    written.) `quarantined`: the partition's live quarantine files."""
    out = m.output
    q_inputs = [q for q in quarantined if out.first <= q.first and q.last <= out.last]
    if any(q.first <= out.last and out.first <= q.last for q in set(quarantined) - set(q_inputs)):
        raise ValueError("a quarantine file straddles the merged range")  # never by construction
    read = written = 0
    q_merge = bool(q_inputs) and q_inputs != [out]
    if q_merge:
        table, n = _merged(lake, [q.quarantine_path for q in q_inputs], q_inputs, QUARANTINE_SCHEMA)
        read += n
        written += lake.write_parquet(out.quarantine_path, table, row_group_size=ROW_GROUP_ROWS)
    table, n = _merged(lake, [r.landed_path for r in m.inputs], list(m.inputs), LANDED_SCHEMA)
    read += n
    written += lake.write_parquet(out.landed_path, table, row_group_size=ROW_GROUP_ROWS)
    return read, written, q_merge


def _merged(
    lake: LakeStorage, paths: list[str], ranges: list[EventRange], schema: pa.Schema
) -> tuple[pa.Table, int]:
    """The files' rows in sequence order, with the run of each range in the footer."""
    tables, runs, read = [], [], 0
    metadata: dict[bytes, bytes] = {}
    for path, rng in zip(paths, ranges, strict=True):
        read += lake.size(path)
        t = lake.read_parquet(path)
        kv = dict(t.schema.metadata or {})
        footer = landing.FileRuns.from_footer(path, kv)
        runs += [list(r) for r in footer.ranges] or [[rng.first, rng.last, footer.run_id]]
        for key in (RUN_ID_KEY.encode(), RUN_RANGES_KEY.encode()):
            kv.pop(key, None)
        metadata = {**kv, **metadata}
        tables.append(t.replace_schema_metadata(None).cast(schema))
    table = pa.concat_tables(tables)
    seq = table["sequence_number"]
    if len(seq) > 1 and not pc.all(pc.greater_equal(seq[1:], seq[:-1])).as_py():
        table = table.sort_by("sequence_number")
    metadata[RUN_RANGES_KEY.encode()] = json.dumps(sorted(runs)).encode()
    return table.replace_schema_metadata(metadata), read


def compact_claims(
    lake: LakeStorage,
    partition_id: str,
    run_id: str | None = None,
    files: list[EventRange] | None = None,
) -> tuple[int, int]:
    """Checkpoint the chain's done prefix, then delete the claims (and older checkpoints)
    inside it; (claim files removed, checkpoint). `files`: the partition's landed files as
    listed by the compaction (one missing only holds the checkpoint back)."""
    chain = landing.read_chain(lake, partition_id, files)
    end = chain.base
    for claim in chain.claims:
        if not claim.done:
            break
        end = claim.range.last
    if end > chain.base:
        record = {
            "partition": partition_id,
            "last": end,
            "by": run_id,
            "at": datetime.now(UTC).isoformat(),
        }
        lake.write_bytes(landing.checkpoint_path(partition_id, end), json.dumps(record).encode())
    # The listings the chain was read from: a claim created since is inside `end` only if
    # it is stale, and its run removes it (or the next compaction does).
    inside = [first for first in chain.claim_starts if first <= end]
    for first in inside:
        _delete(lake, landing.claim_path(partition_id, first))
    for last in chain.checkpoints:
        if last < end:
            _delete(lake, landing.checkpoint_path(partition_id, last))
    return len(inside), end


def _path(prefix: str, rng: EventRange) -> str:
    return rng.landed_path if prefix == LANDED_PREFIX else rng.quarantine_path


def _delete(lake: LakeStorage, path: str) -> None:
    landing.remove_file(lake, path)
