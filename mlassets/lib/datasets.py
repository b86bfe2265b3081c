"""Versioned training datasets: landed events joined with current labels.

- The latest event per sample wins (by capture time, then hub order); a sample whose label
  was retracted is absent from `curated/labels` and so drops out.
- The split (80/10/10) is a stable hash of the sample id, so a sample never changes split
  between versions: no test sample leaks into a later training split.
- The version is a hash of the content, so the same inputs give the same version and an
  unchanged dataset is not written twice.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mlassets.lib.layout import DATASET_PREFIX
from mlassets.roles.storage import LakeStorage

SPLITS = ("train", "validation", "test")
#: Cumulative percent boundaries of the hash buckets: [0, 80) train, [80, 90) validation.
_BOUNDS = (80, 90)
TRAIN_SHARDS = 8

DATASET_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("pixels", pa.list_(pa.uint8()), nullable=False),
        pa.field("label", pa.int64(), nullable=False),
    ]
)

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


def stable_hash(ids: pa.Array) -> np.ndarray:
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


def split_of(ids: pa.Array) -> np.ndarray:
    """0 train, 1 validation, 2 test, per sample id."""
    bucket = stable_hash(ids) % np.uint64(100)
    return np.searchsorted(np.array(_BOUNDS, np.uint64), bucket, side="right").astype(np.int8)


def latest_per_sample(events: pa.Table) -> pa.Table:
    """One row per sample id: the most recently captured (ties: the later hub position)."""
    if events.num_rows == 0:
        return events
    codes = pc.dictionary_encode(events["sample_id"]).combine_chunks().indices.to_numpy()
    captured = events["captured_at"].cast(pa.int64()).to_numpy()
    sequence = events["sequence_number"].to_numpy()
    order = np.lexsort((-sequence, -captured, codes))  # last key sorts first
    first = np.concatenate([[True], codes[order][1:] != codes[order][:-1]])
    return events.take(pa.array(order[first]))


@dataclass
class Dataset:
    table: pa.Table  # DATASET_SCHEMA plus "split" (int8), sorted by sample_id
    version: str

    def split(self, name: str) -> pa.Table:
        index = SPLITS.index(name)
        mask = pc.equal(self.table["split"], index)
        return self.table.filter(mask).drop_columns(["split"])

    def class_histogram(self) -> dict[str, list[int]]:
        """Rows per class (0..9) in each split."""
        labels = self.table["label"].to_numpy()
        splits = self.table["split"].to_numpy()
        return {
            name: np.bincount(labels[splits == i], minlength=10).tolist()
            for i, name in enumerate(SPLITS)
        }


def build_dataset(events: pa.Table, labels: pa.Table) -> Dataset:
    """events (LANDED_SCHEMA) ⨝ labels (sample_id, label) -> a versioned, split dataset."""
    latest = latest_per_sample(
        events.select(["sample_id", "pixels", "captured_at", "sequence_number"])
    )
    # Acero joins no list columns: join the keys with a row index, then take the pixels.
    keys = pa.table({"sample_id": latest["sample_id"], "row": np.arange(latest.num_rows)})
    joined = keys.join(labels.select(["sample_id", "label"]), "sample_id", join_type="inner")
    joined = joined.filter(pc.is_valid(joined["label"])).sort_by("sample_id")
    table = (
        pa.table(
            {
                "sample_id": joined["sample_id"],
                "pixels": latest["pixels"].take(joined["row"]),
                "label": joined["label"],
            }
        )
        .cast(DATASET_SCHEMA)
        .combine_chunks()
    )
    table = table.append_column("split", pa.array(split_of(table["sample_id"]), pa.int8()))
    return Dataset(table=table, version=content_version(table))


def pixel_histogram(pixels: pa.Array | pa.ChunkedArray) -> list[float]:
    """Share of pixel values 0..16 over all pixels: the distribution drift is measured on."""
    flat = pc.list_flatten(pixels).to_numpy(zero_copy_only=False) if len(pixels) else np.zeros(0)
    counts = np.bincount(flat.astype(np.int64), minlength=17)[:17].astype(np.float64)
    return (counts / counts.sum()).tolist() if counts.sum() else [0.0] * 17


def population_stability_index(expected: list[float], actual: list[float]) -> float:
    """PSI = sum((a - e) * ln(a / e)); 0.1 is a shift worth watching, 0.2 a real one."""
    e = np.clip(np.asarray(expected, np.float64), 1e-4, None)
    a = np.clip(np.asarray(actual, np.float64), 1e-4, None)
    e, a = e / e.sum(), a / a.sum()
    return float(np.sum((a - e) * np.log(a / e)))


def content_version(table: pa.Table) -> str:
    """A hash of the rows (in their sorted order): equal content, equal version."""
    digest = hashlib.sha256()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    digest.update(sink.getvalue())
    return digest.hexdigest()[:16]


def dataset_dir(version: str) -> str:
    return f"{DATASET_PREFIX}/v={version}"


def write_dataset(lake: LakeStorage, dataset: Dataset) -> dict[str, list[str]]:
    """Parquet shards per split; train in TRAIN_SHARDS shards so each Horovod rank can read
    its own. A version already on storage is not written again (same content)."""
    root = dataset_dir(dataset.version)
    files: dict[str, list[str]] = {}
    for name in SPLITS:
        part = dataset.split(name)
        shards = TRAIN_SHARDS if name == "train" else 1
        files[name] = [f"{root}/split={name}/part-{k:03d}.parquet" for k in range(shards)]
        if all(lake.exists(f) for f in files[name]):
            continue
        for k, path in enumerate(files[name]):
            lake.write_parquet(path, part.take(pa.array(np.arange(k, part.num_rows, shards))))
    return files


def read_split(lake: LakeStorage, version: str, split: str) -> pa.Table:
    return lake.read_parquet(
        lake.glob(f"{dataset_dir(version)}/split={split}/part-*.parquet"), schema=DATASET_SCHEMA
    )
