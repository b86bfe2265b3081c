"""Versioned training datasets: landed events joined with current labels.

- The latest event per sample wins (by capture time, then hub order); a sample whose label
  was retracted is absent from `curated/labels` and so drops out.
- The split (80/10/10) is a stable hash of the sample id (`splits`), so a sample never
  changes split between versions: no test sample leaks into a later training split.
- The version is a hash of the content (a multiset hash of the rows, `row_hash`), so the same
  inputs give the same version however the rows are laid out in files, and an incremental
  build (`sample_state`) has the version a full rebuild would.

A version is read through its manifest (``datasets/digits/v=<version>/manifest.json``): the
segment files of each split and the overrides to apply to them. Versions share files, so a
new version costs what changed, and every version can be read again.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mlassets.lib import row_hash
from mlassets.lib.layout import DATASET_PREFIX
from mlassets.lib.sample_state import (
    SEGMENT_PREFIX,
    State,
    apply_overrides,
    latest_per_sample,
    read_overrides,
    unpack_pixels,
)
from mlassets.lib.splits import SPLITS, TRAIN_SHARDS, shard_of, split_of, stable_hash
from mlassets.roles.storage import LakeStorage

__all__ = [
    "DATASET_SCHEMA",
    "SPLITS",
    "TRAIN_SHARDS",
    "Dataset",
    "Manifest",
    "build_dataset",
    "latest_per_sample",
    "read_split",
    "shard_of",
    "split_of",
    "stable_hash",
    "write_dataset",
]

DATASET_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("pixels", pa.list_(pa.uint8()), nullable=False),
        pa.field("label", pa.int64(), nullable=False),
    ]
)


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
    """events (LANDED_SCHEMA) ⨝ labels (sample_id, label) -> a versioned, split dataset, all
    in memory: the reference a full rebuild is, which `sample_state` builds incrementally."""
    columns = ["sample_id", "pixels", "captured_at", "sequence_number"]
    if "partition_id" in events.column_names:
        columns.append("partition_id")
    latest = latest_per_sample(events.select(columns))
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


def content_version(table: pa.Table) -> str:
    """The version of these rows (sample_id, pixels, label): file layout and order do not
    count, so it equals the version `sample_state` keeps for the same rows."""
    hashes = row_hash.content_hash(table["sample_id"], table["pixels"])
    return row_hash.version_of(row_hash.lane_sums(hashes, table["label"].to_numpy()))


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


# -- versions on storage -----------------------------------------------------------------------


def dataset_dir(version: str) -> str:
    return f"{DATASET_PREFIX}/v={version}"


def manifest_path(version: str) -> str:
    return f"{dataset_dir(version)}/manifest.json"


@dataclass(frozen=True)
class Manifest:
    """What a dataset version reads: per split, [segment, file] pairs, and the overrides."""

    version: str
    files: dict[str, list[list[str]]]
    overrides: str | None
    rows: dict[str, int]
    #: Rows per class (0..9) of each split.
    histogram: dict[str, list[int]]
    #: The sample state it was taken from (None: written from memory, `write_dataset`).
    state: int | None = None

    def paths(self, split: str) -> list[str]:
        return [path for _, path in self.files.get(split, [])]


def write_manifest(lake: LakeStorage, state: State) -> Manifest:
    """The version of `state` as a manifest, written once per version: the same rows, by
    whatever state they were reached, read the same."""
    manifest = Manifest(
        version=state.version,
        files={s: [list(pair) for pair in state.files(s)] for s in SPLITS},
        overrides=state.overrides,
        rows={s: int(sum(state.histogram[s])) for s in SPLITS},
        histogram=state.histogram,
        state=state.number,
    )
    _write_once(lake, manifest)
    return read_manifest(lake, state.version)


def _write_once(lake: LakeStorage, manifest: Manifest) -> None:
    data = json.dumps(asdict(manifest), sort_keys=True).encode()
    lake.create_exclusive(manifest_path(manifest.version), data)


def read_manifest(lake: LakeStorage, version: str) -> Manifest:
    try:
        raw = json.loads(lake.read_bytes(manifest_path(version)))
    except FileNotFoundError:
        raise FileNotFoundError(
            f"dataset {version} has no manifest at {lake.uri(manifest_path(version))}"
        ) from None
    return Manifest(**raw)


def write_dataset(lake: LakeStorage, dataset: Dataset) -> dict[str, list[str]]:
    """An in-memory dataset as a version of its own (one segment; train in TRAIN_SHARDS
    shards by id). A version already on storage is not written again (same content)."""
    segment = f"d-{dataset.version}"
    shards = shard_of(dataset.table["sample_id"])
    splits = dataset.table["split"].to_numpy()
    files: dict[str, list[list[str]]] = {}
    for i, name in enumerate(SPLITS):
        for k in range(TRAIN_SHARDS if name == "train" else 1):
            path = f"{SEGMENT_PREFIX}/{segment}/split={name}/part-{k:03d}.parquet"
            if not lake.exists(path):
                mask = pa.array((splits == i) & (shards == k))
                lake.write_parquet(path, dataset.table.filter(mask).drop_columns(["split"]))
            files.setdefault(name, []).append([segment, path])
    hist = dataset.class_histogram()
    rows = {s: int(sum(hist[s])) for s in SPLITS}
    _write_once(lake, Manifest(dataset.version, files, None, rows, hist))
    return {s: [p for _, p in pairs] for s, pairs in files.items()}


def read_split(
    lake: LakeStorage, version: str, split: str, shards: list[int] | None = None
) -> pa.Table:
    """The rows of one split of a version (DATASET_SCHEMA); `shards` reads only those train
    shards' files (one Horovod rank's)."""
    manifest = read_manifest(lake, version)
    overrides = read_overrides(lake, manifest.overrides)
    tables = []
    for segment, path in manifest.files.get(split, []):
        if shards is not None and shard_of_path(path) not in shards:
            continue
        rows = lake.read_parquet(path, columns=["sample_id", "pixels", "label"])
        rows = apply_overrides(rows, overrides.get(segment))
        rows = rows.filter(pc.is_valid(rows["label"]))
        rows = rows.set_column(1, "pixels", unpack_pixels(rows["pixels"]))
        tables.append(rows.cast(DATASET_SCHEMA))
    return pa.concat_tables(tables) if tables else DATASET_SCHEMA.empty_table()


def shard_of_path(path: str) -> int:
    """The shard number in a `.../part-<k>.parquet` name."""
    return int(path.rsplit("part-", 1)[1].split(".", 1)[0])


def find(lake: LakeStorage, version: str, sample_id: str) -> tuple[str, int | None]:
    """(split, label) of one sample in a version; label None when the version lacks it.

    Reads only the files of the sample's split and shard, filtered on the id (segment files
    are sorted by id, so row-group statistics skip most of each file).
    """
    import pyarrow.dataset as ds

    ids = pa.array([sample_id], pa.string())
    split = SPLITS[int(split_of(ids)[0])]
    shard = int(shard_of(ids)[0])
    manifest = read_manifest(lake, version)
    overrides = read_overrides(lake, manifest.overrides)
    label = None
    for segment, path in manifest.files.get(split, []):
        if shard_of_path(path) != shard:
            continue
        fs = None if lake.is_local else lake.fs
        rows = ds.dataset(lake.path(path), filesystem=fs, format="parquet").to_table(
            columns=["sample_id", "label"], filter=ds.field("sample_id") == sample_id
        )
        rows = apply_overrides(rows, overrides.get(segment))
        if rows.num_rows and rows["label"][0].is_valid:
            label = rows["label"][0].as_py()
    return split, label
