"""Merging the sample state's segments (`sample_state`): size-tiered, capped, and each merge a
state of its own with the same version."""

from __future__ import annotations

import hashlib
from dataclasses import asdict

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mlassets.lib import row_hash
from mlassets.lib.sample_state import (
    OVERRIDE_SCHEMA,
    SEGMENT_PREFIX,
    SEGMENT_SCHEMA,
    Segment,
    State,
    _write_overrides,
    iter_rows,
    read_overrides,
)
from mlassets.lib.splits import SPLITS, TRAIN_SHARDS
from mlassets.roles.storage import LakeStorage

#: Merge the newest segments once this many are about the same size (see `to_compact`) ...
MERGE_FANOUT = 4
#: ... or whenever a state has more segments than this (below half MAX_SEGMENT_ROWS) ...
MAX_SEGMENTS = 24
#: No merge makes a segment bigger than this: a merge's memory stays a shard of it.
MAX_SEGMENT_ROWS = 2_000_000
#: ... and rewrite all when overrides pass this share of the rows (at least MIN_COMPACT_...).
MAX_OVERRIDE_SHARE = 0.25
MIN_COMPACT_OVERRIDES = 10_000


def to_compact(state: State, lake: LakeStorage | None = None) -> list[Segment]:
    """The segments to merge now, oldest first; none when no merge is due.

    Once the overrides pass MAX_OVERRIDE_SHARE of the rows, the segment with the most of
    them is rewritten on its own (then the next, while that holds: O(1) rewrites per change).
    Otherwise the newest run in which no segment is bigger than all newer ones in the run
    together, once it has MERGE_FANOUT segments: like a binary counter, a row is rewritten once
    per doubling of its segment, O(log n) times. No merge makes a segment of more than
    MAX_SEGMENT_ROWS, so a merge's memory (one shard of it) is bounded however big the lake.
    """
    if (
        lake is not None
        and state.overrides
        and state.override_rows >= max(MIN_COMPACT_OVERRIDES, MAX_OVERRIDE_SHARE * state.live_rows)
    ):
        held = lake.read_parquet(state.overrides, columns=["segment"])["segment"]
        counts = pc.value_counts(held)
        pairs = zip(
            counts.field("counts").to_pylist(), counts.field("values").to_pylist(), strict=True
        )
        most = max(pairs)
        return [seg for seg in state.segments if seg.id == most[1]]
    run: list[Segment] = []
    newer = 0
    for seg in reversed(state.segments):
        if (run and seg.rows > newer) or newer + seg.rows > MAX_SEGMENT_ROWS:
            break
        run.append(seg)
        newer += seg.rows
    if len(run) >= MERGE_FANOUT:
        return run[::-1]
    open_ = [seg for seg in state.segments if seg.rows < MAX_SEGMENT_ROWS // 2]
    if len(open_) > MAX_SEGMENTS and len(run) >= 2:  # too many small ones: the newest run
        return run[::-1]
    if len(open_) > MAX_SEGMENTS:
        return state.segments[-2:]
    return []


def compact(lake: LakeStorage, state: State, merge: list[Segment]) -> State:
    """The rows of `merge` as one segment, their overrides applied and dropped: a state of
    its own with the same version (the rows do not change, only their files).

    One split file at a time (train: one shard at a time), so memory is one shard's rows of
    the merged segments. A full compaction also sums the lanes again from the rows written;
    they must equal the state's: a check that the incremental bookkeeping and the files agree.
    """
    ids = [s.id for s in merge]
    full = len(merge) == len(state.segments)
    part = State(**{**asdict(state), "segments": merge})
    overrides = read_overrides(lake, state.overrides)
    seg = "c-" + hashlib.sha256(state.to_json() + ",".join(ids).encode()).hexdigest()[:16]
    lanes = [0, 0, 0, 0]
    files: dict[str, list[str]] = {}
    total = 0
    for split in SPLITS:
        for k in range(TRAIN_SHARDS) if split == "train" else [0]:
            shards = [k] if split == "train" else None
            tables = [
                rows for _, rows in iter_rows(lake, part, split, shards=shards, overrides=overrides)
            ]
            rows = pa.concat_tables(tables).cast(SEGMENT_SCHEMA) if tables else None
            if rows is None or rows.num_rows == 0:
                continue
            rows = rows.take(pc.sort_indices(rows, sort_keys=[("sample_id", "ascending")]))
            labels = rows["label"].to_numpy(zero_copy_only=False).astype(float)
            labelled = ~np.isnan(labels)
            lanes = row_hash.add(
                lanes,
                row_hash.lane_sums(
                    rows["content_hash"].to_numpy()[labelled], labels[labelled].astype(np.int64)
                ),
            )
            path = f"{SEGMENT_PREFIX}/{seg}/split={split}/part-{k:03d}.parquet"
            lake.write_parquet(path, rows, row_group_size=64 * 1024)
            files.setdefault(split, []).append(path)
            total += rows.num_rows
    if full and lanes != state.lanes:
        raise RuntimeError(
            f"state {state.number}: its rows hash to {row_hash.version_of(lanes)}, not "
            f"{state.version}: the state's bookkeeping and its files disagree"
        )
    merged = Segment(
        id=seg,
        rows=total,
        files=files,
        compacted_from=ids,
        added=[min(s.added[0] for s in merge), max(s.added[1] for s in merge)],
    )
    first = state.segments.index(merge[0])
    segments = [*state.segments[:first], merged, *state.segments[first + len(merge) :]]
    overrides_path, override_rows = None, 0
    if state.overrides is not None and not full:
        kept = lake.read_parquet(state.overrides, schema=OVERRIDE_SCHEMA)
        kept = kept.filter(pc.invert(pc.is_in(kept["segment"], value_set=pa.array(ids))))
        if kept.num_rows:
            overrides_path, override_rows = _write_overrides(lake, kept), kept.num_rows
    return State(
        **{
            **asdict(state),
            "number": state.number + 1,
            "segments": segments,
            "overrides": overrides_path,
            "override_rows": override_rows,
            "delta": None,
            "compaction": True,
            "stats": {"merged_segments": len(merge), "merged_rows": total},
        }
    )
