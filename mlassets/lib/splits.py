"""Which split and which training shard a sample belongs to: functions of its id alone.

The split (80/10/10) is a stable hash of the sample id, so a sample never changes split
between versions and no test sample leaks into a later training split; the shard is another
slice of the same hash, so a Horovod rank reads the same samples' files in every version.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

SPLITS = ("train", "validation", "test")
#: Cumulative percent boundaries of the hash buckets: [0, 80) train, [80, 90) validation.
_BOUNDS = (80, 90)
#: Files the train split is cut into, so each Horovod rank reads only its own.
TRAIN_SHARDS = 8

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


def stable_hash(ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """64-bit FNV-1a of each string, vectorized over the array (one pass per byte position).

    Python's hash() is salted per process; this is the same on every machine, forever.
    """
    ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    ids = ids.cast(pa.large_string()) if ids.type != pa.large_string() else ids
    offsets = np.frombuffer(ids.buffers()[1], np.int64)[ids.offset : ids.offset + len(ids) + 1]
    data = np.frombuffer(ids.buffers()[2], np.uint8) if len(ids) else np.zeros(0, np.uint8)
    starts, lengths = offsets[:-1], np.diff(offsets)
    h = np.full(len(ids), _FNV_OFFSET, np.uint64)
    with np.errstate(over="ignore"):
        for j in range(int(lengths.max(initial=0))):
            live = lengths > j
            byte = data[starts[live] + j].astype(np.uint64)
            h[live] = (h[live] ^ byte) * _FNV_PRIME
    return h


def split_of(ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """0 train, 1 validation, 2 test, per sample id."""
    return _split_of_hash(stable_hash(ids))


def _split_of_hash(h: np.ndarray) -> np.ndarray:
    bucket = h % np.uint64(100)
    return np.searchsorted(np.array(_BOUNDS, np.uint64), bucket, side="right").astype(np.int8)


def shard_of(ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """The train shard (0..TRAIN_SHARDS-1) of each id, from the mixed hash. Other splits have
    one shard (0)."""
    h = stable_hash(ids)
    # FNV-1a's high bits barely move between ids that differ in their last characters
    # (s-0001, s-0002, ...): mixed first (splitmix64's finalizer), for the shard only; the
    # split keeps the plain hash, so no sample ever changes split.
    with np.errstate(over="ignore"):
        x = h ^ (h >> np.uint64(30))
        x = x * np.uint64(0xBF58476D1CE4E5B9)
        x = x ^ (x >> np.uint64(27))
        x = x * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    shard = (x % np.uint64(TRAIN_SHARDS)).astype(np.int8)
    return np.where(_split_of_hash(h) == 0, shard, 0).astype(np.int8)
