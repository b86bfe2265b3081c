"""Labels by change data capture: change batches in the lake, and the current-state Delta table.

**Capture** (`cdc_deltas`). The changes after the watermark, up to the source's max LSN,
become Parquet batches named by their LSN range, ``cdc/labels/lsn=<from>-<to>.parquet`` (20
hex digits each, so names sort in LSN order). As with landed events, the lake's listing is
the record of what was captured: the watermark is the last batch's ``to`` or, after a
(re)snapshot of ``labels``, the snapshot's LSN when that is newer. Consecutive batches are
contiguous by construction (``from`` = previous ``to`` + 1). A range in which the source
recorded no change for this table (Azure SQL's max LSN is database-wide) still gets an empty
batch, coalesced with a preceding empty one, so the watermark keeps up with the source and a
quiet table never looks "expired" to the retention check.

**Apply** (`labels`). Batches not applied yet are read together, update before-images
(operation 3) dropped, changes at or below the applied LSN dropped, and the last change per
key wins (order: LSN, seqval, operation). One MERGE then deletes (1), or updates / inserts (2,
4) each key. The applied LSN is written into the Delta commit's metadata and read back before
every apply, so a batch applied twice changes nothing, and a run with nothing new writes no
new Delta version. Capture writes each batch in change order and says so in its Parquet
footer (`write_batch`), so apply neither checks nor sorts those, and reads the LSN columns
only when a batch may hold changes already applied.

**Initial load.** When ``curated/labels`` does not exist it is built from a full snapshot of
the source, taken *after* reading the source's max LSN. Every change after that LSN is
applied on top; a change that the snapshot already contains is applied again with the same
full row image, which converges to the same state. So the snapshot need not be
transactionally consistent with its LSN, which is what lets a Data Factory copy take it (see
`snapshot_labels`).
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mlassets.lib.layout import CDC_PREFIX, LABELS_PATH, SNAPSHOT_PREFIX
from mlassets.roles.labels_db import (
    CHANGE_SCHEMA,
    LABEL_COLUMNS,
    LABEL_SCHEMA,
    OP_DELETE,
    OP_UPDATE_BEFORE,
    OPERATION_NAMES,
    LabelsDatabase,
    LsnBounds,
    lsn_int,
    next_lsn,
    previous_lsn,
)
from mlassets.roles.storage import LakeStorage

#: Keys of the Delta commit metadata that carry the CDC state of `curated/labels`.
APPLIED_LSN_KEY = "mlassets.applied_lsn"
SNAPSHOT_LSN_KEY = "mlassets.snapshot_lsn"
OPERATION_KEY = "mlassets.operation"
BATCHES_KEY = "mlassets.batches"

ZERO_LSN = "0" * 20
_BATCH = re.compile(r"lsn=(?P<first>[0-9a-f]{20})-(?P<last>[0-9a-f]{20})\.parquet$")

#: How far back in the Delta log to look for the last commit that carries the applied LSN
#: (maintenance commits such as OPTIMIZE carry none).
_HISTORY_DEPTH = 200
#: Most batch files folded into one MERGE (memory stays bounded on a large backlog).
MAX_FILES_PER_MERGE = 64
#: Change order: the order the source's changes happened in, and the order of batch rows.
_CHANGE_ORDER = [("start_lsn", "ascending"), ("seqval", "ascending"), ("operation", "ascending")]
#: Batch columns kept dictionary-encoded from file to apply: keys repeat in a batch (each
#: key's last change is then numpy over codes, not a hash of every string again), labelers
#: are few. The page limit keeps a batch's whole key dictionary (1M keys of 40 characters:
#: 44 MB); Parquet's 1 MB default falls back to plain strings after ~80k keys of 9.
_DICTIONARY_COLUMNS = ["sample_id", "labeler"]
_DICTIONARY_PAGE_BYTES = 64 << 20


class RetentionExpiredError(RuntimeError):
    """The source no longer holds the changes after the watermark: re-snapshot `labels`."""


class BatchGapError(RuntimeError):
    """Change batches are missing between the applied LSN and what is pending."""


class LabelsStateError(RuntimeError):
    """`curated/labels` exists but its commits do not say which LSN it reflects."""


# -- batches ---------------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class LsnRange:
    """LSNs first..last (inclusive), as 20 hex digits."""

    first: str
    last: str

    def __post_init__(self) -> None:
        if self.last < self.first:
            raise ValueError(f"invalid LSN range {self.first}..{self.last}")

    @property
    def path(self) -> str:
        return f"{CDC_PREFIX}/lsn={self.first}-{self.last}.parquet"

    @classmethod
    def from_path(cls, path: str) -> LsnRange | None:
        m = _BATCH.search(path)
        return cls(m["first"], m["last"]) if m else None

    def __str__(self) -> str:
        return f"{self.first}-{self.last}"


def batch_ranges(lake: LakeStorage) -> list[LsnRange]:
    """Every change batch in the lake, sorted by LSN, from file names alone."""
    ranges = (LsnRange.from_path(p) for p in lake.glob(f"{CDC_PREFIX}/lsn=*.parquet"))
    return sorted(r for r in ranges if r is not None)


def batch_rows(lake: LakeStorage, rng: LsnRange) -> int:
    """Rows of one batch, from its Parquet footer."""
    with lake.fs.open(lake.path(rng.path), "rb") as f:
        return pq.ParquetFile(f).metadata.num_rows


@dataclass(frozen=True)
class Chain:
    """How a sequence of batches lines up after a starting LSN."""

    gaps: list[tuple[str, str]]  # LSNs first..last that no batch covers
    overlaps: list[tuple[LsnRange, LsnRange]]


def chain(ranges: Iterable[LsnRange], after: str | None = None) -> Chain:
    """Gaps and overlaps of `ranges` (sorted), starting right after LSN `after` when given.

    Overlaps are harmless to `labels` (a change applied twice with last-change-wins gives the
    same state) but mean two captures ran at once; gaps lose changes.
    """
    ranges = sorted(ranges)
    gaps: list[tuple[str, str]] = []
    overlaps: list[tuple[LsnRange, LsnRange]] = []
    if not ranges:
        return Chain(gaps, overlaps)
    if after is not None and ranges[0].first > next_lsn(after):
        gaps.append((next_lsn(after), previous_lsn(ranges[0].first)))
    reach = ranges[0]
    for b in ranges[1:]:
        if b.first > next_lsn(reach.last):
            gaps.append((next_lsn(reach.last), previous_lsn(b.first)))
        elif b.first <= reach.last:
            overlaps.append((reach, b))
        if b.last > reach.last:
            reach = b
    return Chain(gaps, overlaps)


def operation_counts(changes: pa.Table) -> dict[str, int]:
    """Rows per CDC operation, named (delete, insert, update_before, update_after)."""
    counts = {name: 0 for name in OPERATION_NAMES.values()}
    if changes.num_rows:
        vc = pc.value_counts(changes["operation"])
        ops, ns = vc.field("values").to_pylist(), vc.field("counts").to_pylist()
        for op, n in zip(ops, ns, strict=True):
            counts[OPERATION_NAMES.get(op, f"operation_{op}")] = n
    return counts


# -- the state of curated/labels ---------------------------------------------------------------


@dataclass(frozen=True)
class LabelsState:
    version: int
    #: The last LSN whose changes the table reflects.
    applied_lsn: str
    #: The LSN of the snapshot the table was last (re)built from.
    snapshot_lsn: str | None


def labels_state(lake: LakeStorage, dt=None) -> LabelsState | None:
    """The table's version and CDC state, from its Delta log; None while it does not exist."""
    dt = dt if dt is not None else lake.delta_table(LABELS_PATH)
    if dt is None:
        return None
    # Usually the newest commit carries the state; look further back only when it does not
    # (each commit read is one small object GET on Blob Storage).
    for depth in (1, 20, _HISTORY_DEPTH):
        for commit in dt.history(limit=depth):  # newest first
            if APPLIED_LSN_KEY in commit:
                return LabelsState(
                    version=dt.version(),
                    applied_lsn=str(commit[APPLIED_LSN_KEY]),
                    snapshot_lsn=commit.get(SNAPSHOT_LSN_KEY),
                )
    raise LabelsStateError(
        f"{lake.uri(LABELS_PATH)} exists, but none of its last {_HISTORY_DEPTH} commits records "
        f"the applied LSN ({APPLIED_LSN_KEY}); it was not written by mlassets. Re-snapshot it: "
        "materialize `labels` with config {resnapshot: true}."
    )


def read_labels_table(lake: LakeStorage, columns: list[str] | None = None) -> pa.Table:
    dt = lake.delta_table(LABELS_PATH)
    if dt is None:
        fields = LABEL_SCHEMA if columns is None else [LABEL_SCHEMA.field(c) for c in columns]
        return pa.schema(fields).empty_table()
    return dt.to_pyarrow_table(columns=columns)


def labels_row_count(dt) -> int:
    """From the Delta log's file statistics (no data read); footers when stats are missing."""
    actions = pa.table(dt.get_add_actions(flatten=True))
    if "num_records" in actions.column_names and actions["num_records"].null_count == 0:
        return int(pc.sum(actions["num_records"]).as_py() or 0)
    return dt.to_pyarrow_dataset().count_rows()


# -- capture -----------------------------------------------------------------------------------


@dataclass
class Batch:
    range: LsnRange
    rows: int
    bytes_written: int
    operations: dict[str, int]
    #: True when this batch replaced a preceding empty one (coalesced quiet period).
    coalesced: bool = False


@dataclass
class CaptureResult:
    bounds: LsnBounds
    #: The last LSN captured before this run, and where that came from.
    watermark: str | None
    watermark_source: str
    batches: list[Batch] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rows(self) -> int:
        return sum(b.rows for b in self.batches)

    @property
    def captured_through(self) -> str | None:
        return self.batches[-1].range.last if self.batches else self.watermark

    def operations(self) -> dict[str, int]:
        total = {name: 0 for name in OPERATION_NAMES.values()}
        for b in self.batches:
            for k, v in b.operations.items():
                total[k] = total.get(k, 0) + v
        return total


def capture_watermark(lake: LakeStorage) -> tuple[str | None, str]:
    """(last LSN captured, its source): the newer of the last batch and the labels table."""
    ranges = batch_ranges(lake)
    from_batches = max((r.last for r in ranges), default=None)
    try:
        state = labels_state(lake)
    except LabelsStateError:  # a table mlassets did not write says nothing about capture
        state = None
    from_table = state.applied_lsn if state is not None else None
    if from_table is not None and (from_batches is None or from_table > from_batches):
        return from_table, "labels table"
    if from_batches is not None:
        return from_batches, "last batch"
    return None, "none (first capture)"


def retention_message(watermark: str, bounds: LsnBounds) -> str:
    return (
        f"CDC retention expired: the last captured LSN is 0x{watermark}, but the source now keeps "
        f"changes only from 0x{bounds.min_lsn} (its minimum LSN), so the changes in between are "
        "gone and `labels` can no longer be kept equal to the source by applying deltas. "
        "Re-snapshot: `mlassets labels resnapshot` (or materialize `labels` alone with run config "
        '{"ops": {"labels": {"config": {"resnapshot": true}}}}), then materialize cdc_deltas '
        "again. See README, Labels, 'When CDC retention expired'."
    )


def capture_changes(
    db: LabelsDatabase, lake: LakeStorage, max_batch_rows: int = 1_000_000
) -> CaptureResult:
    """Write the changes after the watermark up to the source's max LSN as batches."""
    started = time.perf_counter()
    bounds = db.lsn_bounds()
    watermark, source = capture_watermark(lake)
    result = CaptureResult(bounds, watermark, source)
    if watermark is None:
        start = bounds.min_lsn  # first capture: everything the source retains
    elif bounds.min_lsn is not None and lsn_int(watermark) + 1 < lsn_int(bounds.min_lsn):
        raise RetentionExpiredError(retention_message(watermark, bounds))
    else:
        start = next_lsn(watermark)
    if bounds.max_lsn is None or start is None or start > bounds.max_lsn:
        result.seconds = time.perf_counter() - started
        return result

    first = start
    pending: list[pa.Table] = []
    pending_rows = 0
    for chunk in db.read_changes(start, bounds.max_lsn):
        pending.append(chunk)
        pending_rows += chunk.num_rows
        if pending_rows < max_batch_rows:
            continue
        table = pa.concat_tables(pending)
        # Cut at an LSN boundary: the rows of the last LSN may continue in the next chunk.
        at_last = pc.equal(table["start_lsn"], table["start_lsn"][-1])
        head = table.filter(pc.invert(at_last))
        if head.num_rows:
            head_last = head["start_lsn"][-1].as_py()
            result.batches.append(write_batch(lake, LsnRange(first, head_last), head))
            first = next_lsn(head_last)
            table = table.filter(at_last)
        pending, pending_rows = [table], table.num_rows
    rest = pa.concat_tables(pending) if pending else CHANGE_SCHEMA.empty_table()
    if rest.num_rows or not result.batches:
        result.batches.append(_write_rest(lake, LsnRange(first, bounds.max_lsn), rest))
    result.seconds = time.perf_counter() - started
    return result


def write_batch(lake: LakeStorage, rng: LsnRange, changes: pa.Table) -> Batch:
    """One batch file, its rows in change order and declared so in the Parquet footer
    (`sorting_columns`): apply then trusts the order instead of checking it, and reads neither
    LSN column when the footer's statistics put every row after the applied LSN."""
    changes = changes.cast(CHANGE_SCHEMA)
    order = _change_order(changes)
    if order is not None:
        changes = changes.take(order)
    written = lake.write_parquet(
        rng.path,
        changes,
        sorting_columns=_sorting_columns(),
        dictionary_pagesize_limit=_DICTIONARY_PAGE_BYTES,
    )
    return Batch(rng, changes.num_rows, written, operation_counts(changes))


def _sorting_columns() -> tuple:
    """_CHANGE_ORDER as Parquet `sorting_columns` of CHANGE_SCHEMA."""
    return tuple(pq.SortingColumn.from_ordering(CHANGE_SCHEMA, _CHANGE_ORDER))


@dataclass(frozen=True)
class _Footer:
    rows: int
    #: Every row group declares (start_lsn, seqval, operation) ascending.
    in_change_order: bool
    #: The least and greatest start_lsn, from the column statistics; None when unknown.
    first_lsn: str | None
    last_lsn: str | None


def _footer(lake: LakeStorage, rng: LsnRange) -> _Footer:
    """What a batch's Parquet footer says about its order (a small read; no data)."""
    with lake.fs.open(lake.path(rng.path), "rb") as f:
        meta = pq.ParquetFile(f).metadata
    names = [meta.schema.column(i).name for i in range(meta.num_columns)]
    if names != CHANGE_SCHEMA.names:
        return _Footer(meta.num_rows, False, None, None)
    expected, lsn_column = _sorting_columns(), names.index("start_lsn")
    first, last = None, None
    for i in range(meta.num_row_groups):
        group = meta.row_group(i)
        if group.num_rows == 0:
            continue
        stats = group.column(lsn_column).statistics
        if tuple(group.sorting_columns) != expected or stats is None or not stats.has_min_max:
            return _Footer(meta.num_rows, False, None, None)
        first = stats.min if first is None else min(first, stats.min)
        last = stats.max if last is None else max(last, stats.max)
    return _Footer(meta.num_rows, True, first, last)


def _write_rest(lake: LakeStorage, rng: LsnRange, changes: pa.Table) -> Batch:
    """The final batch; an empty one absorbs a directly preceding empty batch."""
    if changes.num_rows == 0:
        previous = [r for r in batch_ranges(lake) if next_lsn(r.last) == rng.first]
        if previous and batch_rows(lake, previous[-1]) == 0:
            merged = LsnRange(previous[-1].first, rng.last)
            batch = write_batch(lake, merged, changes)
            lake.delete(previous[-1].path)  # after the wider file exists: never a gap
            batch.coalesced = True
            return batch
    return write_batch(lake, rng, changes)


# -- apply -------------------------------------------------------------------------------------


def collapse(
    changes: pa.Table,
    after_lsn: str | None = None,
    columns: list[str] | None = None,
    in_change_order: bool = False,
) -> pa.Table:
    """The last change per key after `after_lsn`, update before-images ignored; only
    `columns` of it when given (the MERGE needs neither LSN column). `in_change_order`: the
    caller knows the rows are in change order (then neither LSN column is needed without an
    `after_lsn`).

    Vectorized: the change order is checked rather than sorted into (captured batches are in
    it already), then one mask, each key's last rank (numpy over dictionary codes when the
    keys come dictionary-encoded, as `apply_pending` reads them; else a hash group-by), and
    one take. Dictionary columns come back decoded.
    """
    # None: the rows are in change order already.
    order = None if in_change_order else _change_order(changes)
    keep = pc.not_equal(changes["operation"], OP_UPDATE_BEFORE).to_numpy(zero_copy_only=False)
    if after_lsn is not None and changes.num_rows:
        first = changes["start_lsn"][0 if order is None else int(order[0])].as_py()
        if first <= after_lsn:  # else every row is after it
            later = pc.greater(changes["start_lsn"], after_lsn).to_numpy(zero_copy_only=False)
            keep = keep & later
    if columns is not None:
        changes = changes.select(columns)
    rows = np.flatnonzero(keep)
    if rows.size == 0:
        return _decoded(changes.slice(0, 0))
    # A row's rank is its place in change order; each key keeps its highest-ranked row.
    rank = rows if order is None else _inverse(order)[rows]
    keys = changes["sample_id"]
    if pa.types.is_dictionary(keys.type) and keys.num_chunks:
        codes, distinct = _codes(keys)
        last = np.full(distinct, -1, np.int64)
        np.maximum.at(last, codes[rows], rank)
        last = last[last >= 0]
    else:
        keyed = pa.table({"sample_id": keys.take(rows), "_rank": rank})
        last = keyed.group_by("sample_id").aggregate([("_rank", "max")])["_rank_max"].to_numpy()
    # MERGE needs no order: none imposed.
    return _decoded(changes.take(last if order is None else order[last]))


def _codes(keys: pa.ChunkedArray) -> tuple[np.ndarray, int]:
    """Every row's dictionary code, and how many codes there are, under one dictionary.

    The chunks read from one column chunk share its dictionary (comparing them is then
    instant); chunks from several files are unified, which hashes their dictionaries.
    """
    chunks = keys.chunks
    if not all(c.dictionary.equals(chunks[0].dictionary) for c in chunks[1:]):
        chunks = pa.table({"k": keys}).unify_dictionaries()["k"].chunks
    codes = np.concatenate([c.indices.to_numpy(zero_copy_only=False) for c in chunks])
    return codes, len(chunks[0].dictionary)


def _decoded(table: pa.Table) -> pa.Table:
    """Dictionary columns as their plain value type."""
    fields = [
        pa.field(f.name, f.type.value_type, f.nullable) if pa.types.is_dictionary(f.type) else f
        for f in table.schema
    ]
    return table.cast(pa.schema(fields)) if fields != list(table.schema) else table


def _inverse(order: np.ndarray) -> np.ndarray:
    inverse = np.empty_like(order)
    inverse[order] = np.arange(order.size, dtype=order.dtype)
    return inverse


def _change_order(changes: pa.Table) -> np.ndarray | None:
    """Row indices in change order (LSN, seqval, operation), or None when the rows are in it
    already, as captured batches are: checking is far cheaper than sorting."""
    if _in_change_order(changes):
        return None
    return pc.sort_indices(changes, sort_keys=_CHANGE_ORDER).to_numpy()


def _in_change_order(table: pa.Table) -> bool:
    """Whether rows are already ordered by (LSN, seqval, operation), as captured batches are.

    Checked pairwise, vectorized: far cheaper than sorting what is already sorted.
    """
    n = table.num_rows
    if n < 2:
        return True

    def pair(name: str) -> tuple:
        col = table[name]
        return col.slice(0, n - 1), col.slice(1)

    (la, lb), (sa, sb), (oa, ob) = pair("start_lsn"), pair("seqval"), pair("operation")
    ordered = pc.or_(
        pc.less(la, lb),
        pc.and_(
            pc.equal(la, lb),
            pc.or_(pc.less(sa, sb), pc.and_(pc.equal(sa, sb), pc.less_equal(oa, ob))),
        ),
    )
    return bool(pc.all(ordered).as_py())


def merge_changes(
    lake: LakeStorage,
    changes: pa.Table,
    applied_lsn: str,
    through_lsn: str,
    snapshot_lsn: str | None,
    batches: list[LsnRange] | None = None,
    dt=None,
    in_change_order: bool = False,
) -> dict | None:
    """MERGE the changes after `applied_lsn` into curated/labels and record `through_lsn`.

    Changes without a start_lsn column must all be after `applied_lsn` and in change order
    (`in_change_order`): `apply_pending` knows when from the batch footers. Returns
    deltalake's merge metrics, or None when nothing was left to apply (no commit).
    """
    from deltalake import CommitProperties

    after = applied_lsn if "start_lsn" in changes.column_names else None
    collapsed = collapse(
        changes, after, columns=["operation", *LABEL_COLUMNS], in_change_order=in_change_order
    )
    if collapsed.num_rows == 0:
        return None
    source = collapsed.cast(pa.schema([CHANGE_SCHEMA.field("operation"), *LABEL_SCHEMA]))
    dt = dt if dt is not None else lake.delta_table(LABELS_PATH)
    if dt is None:
        raise LabelsStateError(f"{lake.uri(LABELS_PATH)} does not exist: load a snapshot first")
    metadata = {
        APPLIED_LSN_KEY: through_lsn,
        OPERATION_KEY: "cdc",
        BATCHES_KEY: f"{batches[0].first}-{batches[-1].last}" if batches else "",
    }
    if snapshot_lsn is not None:
        metadata[SNAPSHOT_LSN_KEY] = snapshot_lsn
    values = {c: f"s.{c}" for c in LABEL_COLUMNS}
    metrics = (
        dt.merge(
            source,
            predicate="t.sample_id = s.sample_id",
            source_alias="s",
            target_alias="t",
            # The source is in memory already: streaming it only hides it from the planner
            # (100k rows into 500k: 0-25% slower streamed in our runs, never faster).
            streamed_exec=False,
            commit_properties=CommitProperties(custom_metadata=metadata),
        )
        .when_matched_delete(predicate=f"s.operation = {OP_DELETE}")
        .when_matched_update(
            updates={c: v for c, v in values.items() if c != "sample_id"},
            predicate=f"s.operation <> {OP_DELETE}",
        )
        .when_not_matched_insert(updates=values, predicate=f"s.operation <> {OP_DELETE}")
        .execute()
    )
    metrics["keys"] = collapsed.num_rows
    return metrics


@dataclass
class ApplyResult:
    version_before: int
    version_after: int
    applied_lsn: str
    snapshot_lsn: str | None
    batches: list[LsnRange] = field(default_factory=list)
    changes_read: int = 0
    keys_changed: int = 0
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    overlaps: list[tuple[LsnRange, LsnRange]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def committed(self) -> bool:
        return self.version_after != self.version_before


def apply_pending(lake: LakeStorage, state: LabelsState | None = None) -> ApplyResult:
    """Apply every batch after the table's applied LSN, in LSN order; idempotent."""
    started = time.perf_counter()
    dt = lake.delta_table(LABELS_PATH)
    state = state or labels_state(lake, dt)
    if state is None or dt is None:
        raise LabelsStateError(f"{lake.uri(LABELS_PATH)} does not exist: load a snapshot first")
    pending = [r for r in batch_ranges(lake) if r.last > state.applied_lsn]
    links = chain(pending, after=state.applied_lsn)
    if links.gaps:
        gaps = ", ".join(f"0x{a}..0x{b}" for a, b in links.gaps)
        raise BatchGapError(
            f"change batches are missing for LSNs {gaps} (the table is at 0x{state.applied_lsn}); "
            f"applying later batches would lose those changes. Check {lake.uri(CDC_PREFIX)}; "
            "if the batches are gone for good, re-snapshot `labels`."
        )
    result = ApplyResult(
        state.version, state.version, state.applied_lsn, state.snapshot_lsn, overlaps=links.overlaps
    )
    applied = state.applied_lsn
    for start in range(0, len(pending), MAX_FILES_PER_MERGE):
        group = pending[start : start + MAX_FILES_PER_MERGE]
        changes, ordered = _read_changes(lake, group, applied)
        result.changes_read += changes.num_rows
        through = max(r.last for r in group)
        before = dt.version()
        metrics = merge_changes(
            lake, changes, applied, through, state.snapshot_lsn, group, dt, in_change_order=ordered
        )
        result.batches += group
        if metrics is None:
            continue
        result.keys_changed += metrics["keys"]
        result.inserted += int(metrics.get("num_target_rows_inserted", 0))
        result.updated += int(metrics.get("num_target_rows_updated", 0))
        result.deleted += int(metrics.get("num_target_rows_deleted", 0))
        if dt.version() != before:  # a MERGE that changes nothing commits nothing
            applied = through
    result.version_after = dt.version()  # the merges moved this table object along
    if result.committed:
        result.applied_lsn = applied
    result.seconds = time.perf_counter() - started
    return result


def _read_changes(
    lake: LakeStorage, group: list[LsnRange], applied_lsn: str
) -> tuple[pa.Table, bool]:
    """The changes of `group` (sorted by LSN) and whether they are known to be in change order.

    Batches that declare their order (`write_batch`) and whose LSNs do not overlap are in
    change order read one after another: no order check is needed, nor the seqval column;
    and when their footers put every row after `applied_lsn`, not start_lsn either (the two
    LSN strings are half the decoding). Other batches (older ones, or written by hand) are
    read whole and checked.
    """
    footers = {r: _footer(lake, r) for r in group}
    holding = [r for r in group if footers[r].rows]  # empty batches have nothing to read
    ordered = all(footers[r].in_change_order for r in holding) and all(
        footers[a].last_lsn < footers[b].first_lsn for a, b in itertools.pairwise(holding)
    )
    if not ordered:
        return lake.read_parquet([r.path for r in group], schema=CHANGE_SCHEMA), False
    columns = ["operation", *LABEL_COLUMNS]
    if any(footers[r].first_lsn <= applied_lsn for r in holding):
        columns.insert(0, "start_lsn")
    # Keys and labelers as written, dictionary-encoded (`write_batch`): no string per row.
    tables = [
        pq.read_table(
            lake.path(r.path),
            columns=columns,
            filesystem=lake.fs,
            read_dictionary=_DICTIONARY_COLUMNS,
        )
        for r in holding
    ]
    changes = pa.concat_tables(tables) if tables else _decoded(CHANGE_SCHEMA.empty_table())
    return changes.select(columns), True


# -- initial load: the snapshot seam -----------------------------------------------------------


@dataclass(frozen=True)
class LabelsSnapshot:
    """A full copy of the source table in the lake, and the LSN it is at least as new as."""

    path: str
    lsn: str
    rows: int
    via: str
    #: The Data Factory run that copied it (a PipelineRunResult), when one did.
    run: Any = None


def snapshot_labels(
    db: LabelsDatabase, lake: LakeStorage, data_factory: Any = None, log: Any = None
) -> LabelsSnapshot:
    """Copy `SELECT * FROM labels` into the lake as Parquet: the initial load's source.

    With a Data Factory resource (the `labels` asset passes one), its `snapshot_labels`
    pipeline copies the table (SQL table -> Parquet at `path`); without one, this reads
    through SQLAlchemy. Whatever copies, the LSN is read *before* the copy starts (see the
    module docstring for why that is enough).
    """
    lsn = db.max_lsn() or ZERO_LSN
    path = f"{SNAPSHOT_PREFIX}/lsn={lsn}.parquet"
    if data_factory is None:
        table = db.read_labels()
        lake.write_parquet(path, table)
        return LabelsSnapshot(path=path, lsn=lsn, rows=table.num_rows, via="sqlalchemy")
    # Data Factory's `snapshot_labels` pipeline (the local engine or a real factory) copies
    # the table; a failed, cancelled or timed-out run raises with its run id.
    folder, _, file_name = path.rpartition("/")
    run = data_factory.run_pipeline(
        "snapshot_labels",
        {
            "sourceSchema": getattr(db, "schema_name", "dbo"),
            "sourceTable": "labels",
            "targetFolder": folder,
            "targetFile": file_name,
        },
        log=log,
    )
    rows = lake.read_parquet(path, columns=["sample_id"]).num_rows
    via = f"Data Factory pipeline snapshot_labels ({run.engine}) run {run.run_id}"
    return LabelsSnapshot(path=path, lsn=lsn, rows=rows, via=via, run=run)


def load_snapshot(lake: LakeStorage, snapshot: LabelsSnapshot, *, replace: bool = False) -> int:
    """Write the snapshot as curated/labels (a new version when `replace`); returns the version."""
    from deltalake import CommitProperties

    table = lake.read_parquet(snapshot.path, columns=list(LABEL_COLUMNS)).cast(LABEL_SCHEMA)
    table = table.take(pc.sort_indices(table["sample_id"]))
    lake.write_delta(
        LABELS_PATH,
        table,
        mode="overwrite" if replace else "error",
        schema_mode="overwrite" if replace else None,
        commit_properties=CommitProperties(
            custom_metadata={
                APPLIED_LSN_KEY: snapshot.lsn,
                SNAPSHOT_LSN_KEY: snapshot.lsn,
                OPERATION_KEY: "snapshot",
            }
        ),
    )
    return lake.delta_table(LABELS_PATH).version()


def live_chain(lake: LakeStorage) -> tuple[list[LsnRange], Chain, str | None]:
    """The batches the current table depends on (after its latest snapshot) and how they
    line up; before any snapshot, all batches."""
    ranges = batch_ranges(lake)
    state = labels_state(lake)
    after = state.snapshot_lsn if state is not None else None
    live = [r for r in ranges if after is None or r.last > after]
    return live, chain(live, after=after), after
