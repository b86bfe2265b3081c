"""The current state of every landed sample, kept by what changed: what dataset versions and
scoring read.

**What it holds.** One row per sample: its latest event (by capture time, then hub order, then
partition) and its current label (null while unlabelled or after a retraction). Rows live in
immutable **segments** (``datasets/digits/segments/<id>/split=<s>/part-<k>.parquet``, split
and train shard by a stable hash of the sample id) and a table of **overrides**
(segment, sample_id -> new label, or dead when a newer event superseded the row): a label
correction or a re-sent event rewrites no old file.

**How it moves.** States form a chain, ``datasets/digits/state/<n>.json``. Each step reads
only what is new since state n: landed events past its per-partition watermark (the end of
the contiguous landed prefix, so a range still being landed is waited for, never skipped) and
the CDC change batches past its applied LSN; it looks the affected ids up in the segments'
key columns, writes one segment of new rows and the overrides, and creates state n+1 with a
conditional create. Two builds at once: one creates n+1, the other builds again on top of it.
A step reads at most ``STEP_EVENTS`` events, so memory is bounded whatever the backlog; a
first build is a sequence of such steps. A process killed at any line leaves at most
unreferenced files: no state names them.

**Versions.** The dataset version is a multiset hash of the labelled rows (`row_hash`),
updated by each step's additions and removals, so an incremental build and a full rebuild of
the same inputs have the same version. Compaction (`to_compact`) merges the newest segments
size-tiered, so a state has O(log n) segments and a row is rewritten O(log n) times, and
rewrites everything once overrides reach a quarter of the rows; each merge is a state of its
own with the same version. Old segments stay, so every version can be read again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mlassets.lib import cdc, row_hash
from mlassets.lib.events import LANDED_SCHEMA, PIXELS
from mlassets.lib.incoming import INCOMING_PARTITION
from mlassets.lib.landing import EventRange, landed_ranges
from mlassets.lib.layout import DATASET_PREFIX, LABELS_PATH, LANDED_PREFIX
from mlassets.lib.splits import SPLITS, TRAIN_SHARDS, shard_of, split_of, stable_hash
from mlassets.roles.storage import LakeStorage

STATE_PREFIX = f"{DATASET_PREFIX}/state"
SEGMENT_PREFIX = f"{DATASET_PREFIX}/segments"
OVERRIDES_PREFIX = f"{DATASET_PREFIX}/overrides"
_HEAD = f"{STATE_PREFIX}/HEAD"

#: Events one step reads at most: the bound on a build's memory.
STEP_EVENTS = 500_000


SEGMENT_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        # 64 bytes a row, stored flat: it decodes ten times faster than list<uint8>.
        pa.field("pixels", pa.binary(PIXELS), nullable=False),
        pa.field("label", pa.int64()),  # null: unlabelled
        pa.field("captured_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("sequence_number", pa.int64(), nullable=False),
        pa.field("partition_id", pa.string(), nullable=False),
        pa.field("content_hash", pa.uint64(), nullable=False),
        #: `splits.stable_hash` of the id: what a step matches ids on before comparing strings.
        pa.field("id_hash", pa.uint64(), nullable=False),
        #: The state that added the row: what is new to a scoring that covered earlier states.
        pa.field("added_in", pa.int64(), nullable=False),
    ]
)
#: The columns a step looks affected ids up in (no pixels).
KEY_COLUMNS = ["sample_id", "label", "captured_at", "sequence_number", "partition_id", "added_in"]
OVERRIDE_SCHEMA = pa.schema(
    [
        pa.field("segment", pa.string(), nullable=False),
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("label", pa.int64()),
        pa.field("dead", pa.bool_(), nullable=False),
        pa.field("added_in", pa.int64(), nullable=False),  # the overridden row's
    ]
)
_EVENT_COLUMNS = ["sample_id", "pixels", "captured_at", "sequence_number", "partition_id"]


@dataclass
class Segment:
    id: str
    rows: int
    #: split -> file paths (train: one per shard that has rows)
    files: dict[str, list[str]]
    #: The segments a compaction merged into this one (empty for a step's segment).
    compacted_from: list[str] = field(default_factory=list)
    #: The first and last state that added its rows.
    added: list[int] = field(default_factory=lambda: [0, 0])


@dataclass
class State:
    number: int
    #: Per partition, the last sequence number read (the end of the contiguous landed prefix).
    landed: dict[str, int]
    #: The imported drops (`landed/events/partition=incoming/drop=<name>`) taken in.
    drops: list[str]
    #: The labels table's applied LSN (and snapshot LSN) this state reflects.
    labels_lsn: str | None
    labels_snapshot_lsn: str | None
    segments: list[Segment]
    overrides: str | None  # all overrides in force (Parquet, OVERRIDE_SCHEMA)
    override_rows: int
    #: This step's overrides only: what changed for rows of earlier segments (scoring).
    delta: str | None
    lanes: list[int]
    #: rows per class (0..9) and split, of labelled rows
    histogram: dict[str, list[int]]
    live_rows: int
    labelled_rows: int
    #: Pixel values 0..16 over the train split's rows as they were added: the reference
    #: distribution for drift (rows superseded later are not taken back out; they are few).
    pixel_counts: list[int] = field(default_factory=lambda: [0] * 17)
    compaction: bool = False
    #: This step's new events, label changes looked up, rows inserted and superseded.
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def version(self) -> str:
        return row_hash.version_of(self.lanes)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> State:
        raw = json.loads(data)
        raw["segments"] = [Segment(**s) for s in raw["segments"]]
        return cls(**raw)

    def files(self, split: str, shards: list[int] | None = None) -> list[tuple[str, str]]:
        """(segment id, path) of a split's files, oldest segment first; `shards` picks the
        train files of those shards only."""
        out = []
        for seg in self.segments:
            for path in seg.files.get(split, []):
                if shards is None or _shard_of_path(path) in shards:
                    out.append((seg.id, path))
        return out


def empty_state() -> State:
    return State(
        number=-1,
        landed={},
        drops=[],
        labels_lsn=None,
        labels_snapshot_lsn=None,
        segments=[],
        overrides=None,
        override_rows=0,
        delta=None,
        lanes=[0, 0, 0, 0],
        histogram={s: [0] * 10 for s in SPLITS},
        live_rows=0,
        labelled_rows=0,
    )


def pack_pixels(pixels: pa.Array | pa.ChunkedArray) -> pa.Array:
    """list<uint8> of PIXELS values -> binary(PIXELS), the same bytes, no copy per row."""
    if isinstance(pixels, pa.ChunkedArray):
        pixels = pixels.combine_chunks()
    values = pc.list_flatten(pixels).to_numpy(zero_copy_only=False).astype(np.uint8)
    if len(values) != PIXELS * len(pixels):
        raise ValueError(f"pixels must have {PIXELS} values each")
    return pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(PIXELS), len(pixels), [None, pa.py_buffer(values.tobytes())]
    )


def unpack_pixels(pixels: pa.Array | pa.ChunkedArray) -> pa.Array:
    """binary(PIXELS) -> list<uint8>, what training and scoring take; list input as it is."""
    if isinstance(pixels, pa.ChunkedArray):
        pixels = pixels.combine_chunks() if pixels.num_chunks else pa.array([], pixels.type)
    if not pa.types.is_fixed_size_binary(pixels.type):
        return pixels
    data = pixels.buffers()[1]
    values = np.frombuffer(data, np.uint8)[
        pixels.offset * PIXELS : (pixels.offset + len(pixels)) * PIXELS
    ]
    offsets = np.arange(0, PIXELS * (len(pixels) + 1), PIXELS, dtype=np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))


def _shard_of_path(path: str) -> int:
    return int(path.rsplit("part-", 1)[1].split(".", 1)[0])


# -- the chain ---------------------------------------------------------------------------------


def state_path(number: int) -> str:
    return f"{STATE_PREFIX}/{number:010d}.json"


def read_state(lake: LakeStorage, number: int) -> State:
    return State.from_json(lake.read_bytes(state_path(number)))


def latest(lake: LakeStorage) -> State | None:
    """The newest state: from the HEAD hint, then forward while a next one exists (the hint
    is written after each state, so it is never ahead), so finding it costs O(1) reads."""
    number = -1
    if lake.exists(_HEAD):
        number = int(lake.read_bytes(_HEAD).decode().strip() or -1)
    elif names := lake.glob(f"{STATE_PREFIX}/*.json"):
        number = int(names[-1].rsplit("/", 1)[1].split(".")[0])
    while lake.exists(state_path(number + 1)):
        number += 1
    return read_state(lake, number) if number >= 0 else None


def _commit(lake: LakeStorage, state: State) -> bool:
    """Create the state's file unless another build created that number first."""
    if not lake.create_exclusive(state_path(state.number), state.to_json()):
        return False
    lake.write_bytes(_HEAD, str(state.number).encode())
    return True


def advance(
    lake: LakeStorage,
    *,
    step_events: int = STEP_EVENTS,
    log: Callable[[str], None] = lambda _m: None,
) -> State:
    """Take in everything new (in steps of at most `step_events` events), compact when due,
    and return the newest state. With nothing new, the current state is returned as it is."""
    while True:
        previous = latest(lake) or empty_state()
        nxt = step(lake, previous, step_events=step_events)
        if nxt is None:
            from mlassets.lib import state_merges  # it builds on this module

            merge = state_merges.to_compact(previous, lake)
            nxt = state_merges.compact(lake, previous, merge) if merge else None
            if nxt is None:
                return previous
        if _commit(lake, nxt):
            log(describe(nxt))
        else:
            log(f"state {nxt.number} was created by another build first: building on top of it")


def taken_in(lake: LakeStorage, after: int, through: int) -> dict[str, int]:
    """New events and label changes the states after..through took in, summed (one small
    read per state)."""
    total = {"events": 0, "label_changes": 0, "inserted": 0, "superseded": 0, "relabelled": 0}
    for number in range(max(after + 1, 0), through + 1):
        stats = read_state(lake, number).stats
        for key in total:
            total[key] += max(stats.get(key, 0), 0)
    return total


def describe(state: State) -> str:
    if state.compaction:
        s = state.stats
        return (
            f"state {state.number}: merged {s.get('merged_segments', 0)} segments "
            f"({s.get('merged_rows', 0):,} rows); {len(state.segments)} segments now"
        )
    s = state.stats
    return (
        f"state {state.number}: {s.get('events', 0):,} new events, "
        f"{s.get('label_changes', 0):,} label changes; {s.get('inserted', 0):,} rows added, "
        f"{s.get('superseded', 0):,} superseded, {s.get('relabelled', 0):,} relabelled "
        f"({state.labelled_rows:,} labelled of {state.live_rows:,})"
    )


# -- reading segments --------------------------------------------------------------------------


def read_overrides(lake: LakeStorage, path: str | None) -> dict[str, pa.Table]:
    """Overrides in force, per segment."""
    if path is None:
        return {}
    table = lake.read_parquet(path, schema=OVERRIDE_SCHEMA)
    out: dict[str, pa.Table] = {}
    for seg in pc.unique(table["segment"]).to_pylist():
        out[seg] = table.filter(pc.equal(table["segment"], seg))
    return out


def apply_overrides(rows: pa.Table, overrides: pa.Table | None) -> pa.Table:
    """The rows with their overrides applied: dead rows gone, labels replaced."""
    if overrides is None or overrides.num_rows == 0 or rows.num_rows == 0:
        return rows
    idx = pc.index_in(rows["sample_id"], value_set=overrides["sample_id"])
    hit = pc.is_valid(idx)
    dead = pc.fill_null(pc.take(overrides["dead"], idx), False)
    if "label" in rows.column_names:
        label = pc.if_else(hit, pc.take(overrides["label"], idx), rows["label"])
        rows = rows.set_column(rows.column_names.index("label"), "label", label)
    return rows.filter(pc.invert(dead))


def iter_rows(
    lake: LakeStorage,
    state: State,
    split: str,
    *,
    columns: list[str] | None = None,
    shards: list[int] | None = None,
    overrides: dict[str, pa.Table] | None = None,
) -> Iterator[tuple[str, pa.Table]]:
    """(segment id, live rows) of a split's files, one file at a time (bounded memory)."""
    overrides = read_overrides(lake, state.overrides) if overrides is None else overrides
    cols = list(dict.fromkeys(["sample_id", *(columns or SEGMENT_SCHEMA.names)]))
    for seg, path in state.files(split, shards):
        rows = lake.read_parquet(path, columns=cols, schema=SEGMENT_SCHEMA)
        yield seg, apply_overrides(rows, overrides.get(seg))


# -- one step ----------------------------------------------------------------------------------


@dataclass
class _New:
    events: pa.Table  # latest new event per sample (_EVENT_COLUMNS)
    landed: dict[str, int]
    drops: list[str]


def new_events(
    lake: LakeStorage, landed: dict[str, int], budget: int, drops: list[str] | None = None
) -> _New:
    """Landed events past the watermarks, up to about `budget` of them, in hub order; the
    watermarks move to the end of the contiguous prefix read. Then the imported drops
    (`partition=incoming/drop=<name>`) not taken in yet, whole, while the budget lasts."""
    marks = dict(landed)
    picked: list[tuple[EventRange, int]] = []
    total = 0
    for pid, ranges in sorted(landed_ranges(lake).items()):  # live files: each event once
        mark = marks.get(pid, -1)
        for rng in ranges:
            if rng.last <= mark:
                continue
            if rng.first > mark + 1 or total >= budget:
                break  # a gap: that range is still being landed; or enough for this step
            picked.append((rng, mark))
            total += rng.last - mark
            mark = rng.last
        marks[pid] = mark
    tables = []
    for rng, mark in picked:
        t = lake.read_parquet(rng.landed_path, columns=_EVENT_COLUMNS, schema=LANDED_SCHEMA)
        if rng.first <= mark:  # a compacted file reaching back before the watermark
            t = t.filter(pc.greater(t["sequence_number"], mark))
        tables.append(t)
    taken = list(drops or [])
    seen = set(taken)
    for path in lake.glob(f"{LANDED_PREFIX}/partition={INCOMING_PARTITION}/drop=*.parquet"):
        name = path.rsplit("/", 1)[1]
        if name in seen:
            continue
        if total >= budget:
            break
        t = lake.read_parquet(path, columns=_EVENT_COLUMNS, schema=LANDED_SCHEMA)
        tables.append(t)
        taken.append(name)
        total += t.num_rows
    events = (
        pa.concat_tables(tables) if tables else LANDED_SCHEMA.empty_table().select(_EVENT_COLUMNS)
    )
    marks = {p: m for p, m in marks.items() if m >= 0}
    return _New(latest_per_sample(events), marks, taken)


def latest_per_sample(events: pa.Table) -> pa.Table:
    """One row per sample id: the most recently captured (ties: the later hub position, then
    the later partition id)."""
    if events.num_rows == 0:
        return events
    codes = pc.dictionary_encode(events["sample_id"]).combine_chunks().indices.to_numpy()
    captured = events["captured_at"].cast(pa.int64()).to_numpy()
    sequence = events["sequence_number"].to_numpy()
    keys: tuple = (-sequence, -captured, codes)
    if "partition_id" in events.column_names:
        part = pc.dictionary_encode(events["partition_id"]).combine_chunks()
        rank = np.argsort(np.argsort(part.dictionary.to_pylist()))  # dictionary order -> sorted
        keys = (-rank[part.indices.to_numpy()], *keys)
    order = np.lexsort(keys)  # last key sorts first
    first = np.concatenate([[True], codes[order][1:] != codes[order][:-1]])
    return events.take(pa.array(order[first]))


def _newer(a: pa.Table, b: pa.Table) -> np.ndarray:
    """Row-wise: is event a later than event b (capture time, sequence number, partition)?"""
    ka = [a["captured_at"].cast(pa.int64()).to_numpy(), a["sequence_number"].to_numpy()]
    kb = [b["captured_at"].cast(pa.int64()).to_numpy(), b["sequence_number"].to_numpy()]
    pa_, pb = (np.asarray(t["partition_id"].to_pylist(), dtype=object) for t in (a, b))
    gt = (ka[0] > kb[0]) | ((ka[0] == kb[0]) & (ka[1] > kb[1]))
    eq = (ka[0] == kb[0]) & (ka[1] == kb[1])
    return gt | (eq & (pa_ > pb))


class _Relabel:
    """Which ids' labels may have changed: all (None) or an array of ids."""

    def __init__(self, ids: pa.Array | None) -> None:
        self.ids = ids

    def mask(self, rows: pa.Table) -> pa.Array | None:
        if self.ids is None:
            return None
        return pc.is_in(rows["sample_id"], value_set=self.ids)


def label_changes(
    lake: LakeStorage, state: State, labels: cdc.LabelsState | None
) -> tuple[_Relabel, int]:
    """The ids whose labels changed since `state` (None: all may have, as after a
    re-snapshot or a gap in the change batches), and how many changes that was."""
    if labels is None or labels.applied_lsn == state.labels_lsn:
        return _Relabel(pa.array([], pa.string())), 0
    if state.number < 0:  # a first build looks every new row's label up anyway
        return _Relabel(pa.array([], pa.string())), 0
    since = state.labels_lsn
    if since is None or (labels.snapshot_lsn or "") > since:
        return _Relabel(None), -1
    ranges = [r for r in cdc.batch_ranges(lake) if r.last > since and r.first <= labels.applied_lsn]
    gaps = [g for g in cdc.chain(ranges, after=since).gaps if g[0] <= labels.applied_lsn]
    if gaps:
        return _Relabel(None), -1
    ids = []
    count = 0
    for rng in ranges:
        t = lake.read_parquet(rng.path, columns=["sample_id", "start_lsn"])
        keep = pc.and_(
            pc.greater(t["start_lsn"], since), pc.less_equal(t["start_lsn"], labels.applied_lsn)
        )
        t = t.filter(keep)
        count += t.num_rows
        ids.append(t["sample_id"].cast(pa.string()))  # batches may hold it dictionary-encoded
    if not ids:
        return _Relabel(pa.array([], pa.string())), 0
    return _Relabel(pc.unique(pa.chunked_array(ids, pa.string()).combine_chunks())), count


def current_labels(lake: LakeStorage, ids: pa.Array | None) -> pa.Table:
    """(sample_id, label) from `curated/labels` for `ids` (None: every label), streamed."""
    dt = lake.delta_table(LABELS_PATH)
    empty = pa.table({"sample_id": pa.array([], pa.string()), "label": pa.array([], pa.int64())})
    if dt is None or (ids is not None and len(ids) == 0):
        return empty
    # Batch by batch (bounded memory); the filter is applied here because deltalake's
    # datasets hold string_view columns that pushed-down `isin` filters do not compare.
    kept = []
    for batch in dt.to_pyarrow_dataset().to_batches(columns=["sample_id", "label"]):
        batch = pa.Table.from_batches([batch]).cast(empty.schema)
        mask = pc.is_valid(batch["label"])
        if ids is not None:
            mask = pc.and_(mask, pc.is_in(batch["sample_id"], value_set=ids))
        kept.append(batch.filter(mask))
    table = pa.concat_tables(kept) if kept else empty
    return table.cast(empty.schema)


def step(lake: LakeStorage, state: State, *, step_events: int = STEP_EVENTS) -> State | None:
    """State n+1 from state n and what is new, or None when nothing is."""
    labels_state = cdc.labels_state(lake)
    new = new_events(lake, state.landed, step_events, state.drops)
    relabel, changes = label_changes(lake, state, labels_state)
    lsn = labels_state.applied_lsn if labels_state else None
    quiet = new.landed == state.landed and new.drops == state.drops
    if new.events.num_rows == 0 and quiet and lsn == state.labels_lsn:
        return None
    events = new.events
    nothing = relabel.ids is not None and len(relabel.ids) == 0
    ids = events["sample_id"] if nothing else None
    if relabel.ids is not None and not nothing:
        ids = pc.unique(pa.concat_arrays([events["sample_id"].combine_chunks(), relabel.ids]))
    looked_up = current_labels(lake, ids if ids is not None else None)

    lanes = list(state.lanes)
    histogram = {s: list(v) for s, v in state.histogram.items()}
    keep_event = np.ones(events.num_rows, bool)  # an older event than the row's stays out
    rows = _current_rows(lake, state, ids)  # the affected samples' rows, overrides applied
    # A newer event for the row's sample supersedes it.
    at = pc.index_in(rows["sample_id"], value_set=events["sample_id"])
    matched = np.asarray(pc.is_valid(at), bool)
    dead = np.zeros(rows.num_rows, bool)
    if matched.any():
        pos = np.asarray(at.filter(pa.array(matched))).astype(np.int64)
        newer = _newer(events.take(pa.array(pos)), rows.filter(pa.array(matched)))
        dead[np.flatnonzero(matched)[newer]] = True
        keep_event[pos[~newer]] = False
    # The label of every other affected row follows curated/labels.
    check = ~dead
    if (m := relabel.mask(rows)) is not None:
        check &= np.asarray(m, bool)
    old = rows["label"]
    new_label = pc.take(
        looked_up["label"], pc.index_in(rows["sample_id"], value_set=looked_up["sample_id"])
    )
    changed = (
        check
        & ~np.asarray(pc.fill_null(pc.equal(old, new_label), False), bool)
        & ~(np.asarray(pc.is_null(old), bool) & np.asarray(pc.is_null(new_label), bool))
    )
    gone = dead | changed
    delta_table = OVERRIDE_SCHEMA.empty_table()
    if gone.any():
        splits_ = split_of(rows["sample_id"])
        hashes = rows["content_hash"].to_numpy()
        _account(lanes, histogram, hashes, old.to_numpy(zero_copy_only=False), splits_, gone, -1)
        new_np = new_label.to_numpy(zero_copy_only=False)
        _account(lanes, histogram, hashes, new_np, splits_, changed, sign=+1)
        pick = pa.array(gone)
        delta_table = pa.table(
            {
                "segment": rows["segment"].filter(pick),
                "sample_id": rows["sample_id"].filter(pick),
                "label": pc.if_else(
                    pa.array(dead), pa.nulls(rows.num_rows, pa.int64()), new_label
                ).filter(pick),
                "dead": pa.array(dead[gone]),
                "added_in": rows["added_in"].filter(pick),
            },
            schema=OVERRIDE_SCHEMA,
        )
    superseded, relabelled = int(dead.sum()), int(changed.sum())

    inserted = events.filter(pa.array(keep_event))
    ins_label = pc.take(
        looked_up["label"], pc.index_in(inserted["sample_id"], value_set=looked_up["sample_id"])
    )
    hashes = row_hash.content_hash(inserted["sample_id"], inserted["pixels"])
    splits_ = split_of(inserted["sample_id"])
    labels_np = ins_label.to_numpy(zero_copy_only=False)
    _account(lanes, histogram, hashes, labels_np, splits_, np.ones(len(hashes), bool), sign=+1)
    segments = list(state.segments)
    pixel_counts = list(state.pixel_counts)
    train = inserted.filter(pa.array(splits_ == 0))
    if train.num_rows:
        flat = pc.list_flatten(train["pixels"]).to_numpy(zero_copy_only=False)
        counts = np.bincount(flat.astype(np.int64), minlength=17)[:17]
        pixel_counts = [int(a + b) for a, b in zip(pixel_counts, counts, strict=True)]
    if inserted.num_rows:
        rows = pa.table(
            {
                "sample_id": inserted["sample_id"],
                "pixels": pack_pixels(inserted["pixels"]),
                "label": ins_label,
                "captured_at": inserted["captured_at"],
                "sequence_number": inserted["sequence_number"],
                "partition_id": inserted["partition_id"],
                "content_hash": pa.array(hashes, pa.uint64()),
                "id_hash": pa.array(stable_hash(inserted["sample_id"]), pa.uint64()),
                "added_in": pa.array(np.full(inserted.num_rows, state.number + 1), pa.int64()),
            }
        ).cast(SEGMENT_SCHEMA)
        segments.append(write_segment(lake, rows, added=state.number + 1))
    overrides_path, override_rows = state.overrides, state.override_rows
    delta_path = None
    if delta_table.num_rows:
        delta_path = _write_overrides(lake, delta_table)
        merged = _merge_overrides(lake, state.overrides, delta_table)
        overrides_path, override_rows = _write_overrides(lake, merged), merged.num_rows
    labelled_change = int(np.count_nonzero(~np.isnan(np.asarray(labels_np, float))))
    return State(
        number=state.number + 1,
        landed=new.landed,
        drops=new.drops,
        labels_lsn=lsn,
        labels_snapshot_lsn=labels_state.snapshot_lsn if labels_state else None,
        segments=segments,
        overrides=overrides_path,
        override_rows=override_rows,
        delta=delta_path,
        lanes=lanes,
        histogram=histogram,
        live_rows=state.live_rows + inserted.num_rows - superseded,
        labelled_rows=sum(sum(v) for v in histogram.values()),
        pixel_counts=pixel_counts,
        stats={
            "events": events.num_rows,
            "label_changes": changes,
            "inserted": inserted.num_rows,
            "inserted_labelled": labelled_change,
            "superseded": superseded,
            "relabelled": relabelled,
        },
    )


def _current_rows(lake: LakeStorage, state: State, ids: pa.Array | None) -> pa.Table:
    """The live rows of `ids` (None: of every sample) in the state's segments, overrides
    applied, with their segment: KEY_COLUMNS, content_hash, segment.

    Per file, the 8-byte id hashes are matched first against the ids' (sorted, one
    binary search per row: no hash table of the ids built per file), and only a file with a
    match has its other key columns read; the exact ids are checked once, at the end.
    """
    import pyarrow.parquet as pq

    columns = [*KEY_COLUMNS, "content_hash"]
    wanted = np.sort(stable_hash(ids)) if ids is not None else None
    overrides = read_overrides(lake, state.overrides)
    found: list[pa.Table] = []
    for split in SPLITS if ids is None or len(ids) else ():
        for seg, path in state.files(split):
            with lake.fs.open(lake.path(path), "rb") as f:
                pf = pq.ParquetFile(f)
                if wanted is None:
                    rows = pf.read(columns=columns)
                else:
                    h = pf.read(columns=["id_hash"])["id_hash"].to_numpy()
                    at = np.minimum(np.searchsorted(wanted, h), len(wanted) - 1)
                    hit = wanted[at] == h
                    if not hit.any():
                        continue
                    rows = pf.read(columns=columns).filter(pa.array(hit))
            rows = apply_overrides(rows, overrides.get(seg))
            found.append(
                rows.append_column("segment", pa.array([seg] * rows.num_rows, pa.string()))
            )
    empty = pa.schema(
        [*(SEGMENT_SCHEMA.field(c) for c in columns), pa.field("segment", pa.string())]
    ).empty_table()
    rows = pa.concat_tables([empty, *(t.cast(empty.schema) for t in found)])
    if ids is not None and rows.num_rows:
        rows = rows.filter(pc.is_in(rows["sample_id"], value_set=ids))
    return rows


def _account(
    lanes: list[int],
    histogram: dict[str, list[int]],
    hashes: np.ndarray,
    labels: np.ndarray,
    splits: np.ndarray,
    where: np.ndarray,
    sign: int,
) -> None:
    """Add (sign +1) or take away (-1) these rows' labelled ones from the version's lanes and
    the class histogram, in place."""
    labels = np.asarray(labels, dtype=float)
    live = where & ~np.isnan(labels)
    if not live.any():
        return
    lab = labels[live].astype(np.int64)
    sums = row_hash.lane_sums(hashes[live], lab)
    lanes[:] = row_hash.add(lanes, sums) if sign > 0 else row_hash.subtract(lanes, sums)
    for i, name in enumerate(SPLITS):
        counts = np.bincount(lab[splits[live] == i], minlength=10)[:10]
        histogram[name] = [int(a + sign * b) for a, b in zip(histogram[name], counts, strict=True)]


def write_segment(lake: LakeStorage, rows: pa.Table, added: int) -> Segment:
    """Rows (SEGMENT_SCHEMA) as one segment: files per split and train shard, sorted by
    sample id, named by their content so writing the same rows twice writes the same files."""
    digest = hashlib.sha256()
    order = pc.sort_indices(rows, sort_keys=[("sample_id", "ascending")])
    rows = rows.take(order)
    digest.update(rows["content_hash"].to_numpy().tobytes())
    digest.update(pc.fill_null(rows["label"], -1).to_numpy().tobytes())
    seg = digest.hexdigest()[:16]
    splits_ = split_of(rows["sample_id"])
    shards = shard_of(rows["sample_id"])
    files: dict[str, list[str]] = {}
    for i, name in enumerate(SPLITS):
        for k in range(TRAIN_SHARDS if name == "train" else 1):
            mask = (splits_ == i) & (shards == k)
            if not mask.any():
                continue
            path = f"{SEGMENT_PREFIX}/{seg}/split={name}/part-{k:03d}.parquet"
            if not lake.exists(path):
                lake.write_parquet(path, rows.filter(pa.array(mask)), row_group_size=64 * 1024)
            files.setdefault(name, []).append(path)
    return Segment(id=seg, rows=rows.num_rows, files=files, added=[added, added])


def _merge_overrides(lake: LakeStorage, path: str | None, delta: pa.Table) -> pa.Table:
    """Overrides in force after `delta`: the last override per (segment, sample_id)."""
    if path is None:
        return delta
    both = pa.concat_tables([lake.read_parquet(path, schema=OVERRIDE_SCHEMA), delta])
    key = pc.binary_join_element_wise(both["segment"], both["sample_id"], "\x00")
    keyed = pa.table({"k": key, "pos": np.arange(both.num_rows)})
    return both.take(keyed.group_by("k").aggregate([("pos", "max")])["pos_max"])


def _write_overrides(lake: LakeStorage, table: pa.Table) -> str:
    digest = hashlib.sha256()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    digest.update(sink.getvalue())
    path = f"{OVERRIDES_PREFIX}/{digest.hexdigest()[:16]}.parquet"
    if not lake.exists(path):
        lake.write_parquet(path, table)
    return path
