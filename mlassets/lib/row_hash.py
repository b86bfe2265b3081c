"""Hashes of dataset rows that make a version a property of its content, not of its files.

A dataset version is the sum, over its labelled rows, of a 64-bit hash of each row, in four
independent lanes (256 bits): a multiset hash. Adding a row adds its hash; removing or
relabelling one subtracts the old hash. So the version of the next dataset is computed from
what changed alone, and equals the version a full rebuild of the same rows computes, however
the rows are laid out in files (one segment or twenty, before or after compaction).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mlassets.lib.splits import stable_hash

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
#: One seed per lane; 4 lanes of 64 bits.
LANE_SEEDS = tuple(
    np.uint64(s)
    for s in (0x243F6A8885A308D3, 0x13198A2E03707344, 0xA4093822299F31D0, 0x082EFA98EC4E6C89)
)
_MOD = 2**64


def mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer, vectorized: every input bit reaches every output bit."""
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint64(30))
        x = x * _M1
        x = x ^ (x >> np.uint64(27))
        x = x * _M2
        return x ^ (x >> np.uint64(31))


def content_hash(ids: pa.Array | pa.ChunkedArray, pixels: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """64 bits per (sample_id, pixels): what a row is, apart from its label."""
    if isinstance(pixels, pa.ChunkedArray):
        pixels = pixels.combine_chunks()
    h = stable_hash(ids)
    if len(h) == 0:
        return h
    lengths = pc.list_value_length(pixels).to_numpy(zero_copy_only=False).astype(np.uint64)
    values = pc.list_flatten(pixels).to_numpy(zero_copy_only=False).astype(np.uint8)
    width = int(lengths[0])
    with np.errstate(over="ignore"):
        if (lengths == width).all():
            padded = -(-width // 8) * 8
            block = np.zeros((len(h), padded), np.uint8)
            block[:, :width] = values.reshape(len(h), width)
            for word in block.view("<u8").T:
                h = mix(h ^ word)
        else:  # ragged (never from a landing, which checks the length): one byte at a time
            starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
            for j in range(int(lengths.max())):
                live = lengths > j
                h[live] = mix(h[live] ^ values[starts[live] + j].astype(np.uint64))
        return mix(h ^ (lengths * _GOLDEN))


def contributions(hashes: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(rows, 4) lane values of labelled rows: a row's hash, salted per lane, with its label."""
    with np.errstate(over="ignore"):
        salted = hashes ^ ((labels.astype(np.uint64) + np.uint64(1)) * _GOLDEN)
        return np.stack([mix(salted ^ seed) for seed in LANE_SEEDS], axis=1)


def lane_sums(hashes: np.ndarray, labels: np.ndarray) -> list[int]:
    """The four lane sums (mod 2^64) of these labelled rows."""
    if len(hashes) == 0:
        return [0, 0, 0, 0]
    return [int(v) for v in contributions(hashes, labels).sum(axis=0, dtype=np.uint64)]


def add(a: list[int], b: list[int]) -> list[int]:
    return [(x + y) % _MOD for x, y in zip(a, b, strict=True)]


def subtract(a: list[int], b: list[int]) -> list[int]:
    return [(x - y) % _MOD for x, y in zip(a, b, strict=True)]


def version_of(lanes: list[int]) -> str:
    """The dataset version: 16 hex digits of a SHA-256 of the lanes."""
    data = b"".join(int(v).to_bytes(8, "little") for v in lanes)
    return hashlib.sha256(b"mlassets-dataset-v2" + data).hexdigest()[:16]
