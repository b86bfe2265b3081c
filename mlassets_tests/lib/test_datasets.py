"""Training datasets: latest event per sample, current labels only, stable splits, content
versions."""

from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pytest

from mlassets.lib.datasets import (
    SPLITS,
    TRAIN_SHARDS,
    build_dataset,
    read_split,
    split_of,
    stable_hash,
    write_dataset,
)
from mlassets.lib.events import LANDED_SCHEMA
from mlassets.roles.storage import LakeStorage

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def events(rows: list[tuple[str, int, int, int]]) -> pa.Table:
    """(sample_id, pixel value, minutes after T0, sequence number) -> landed rows."""
    return pa.table(
        {
            "sample_id": [r[0] for r in rows],
            "pixels": [[r[1]] * 64 for r in rows],
            "source": ["s"] * len(rows),
            "captured_at": [T0 + timedelta(minutes=r[2]) for r in rows],
            "partition_id": ["0"] * len(rows),
            "sequence_number": [r[3] for r in rows],
            "offset": [0] * len(rows),
            "enqueued_time": [T0] * len(rows),
        },
        schema=LANDED_SCHEMA,
    )


def labels(pairs: dict[str, int]) -> pa.Table:
    return pa.table({"sample_id": list(pairs), "label": list(pairs.values())})


def fnv1a_64(text: str) -> int:
    """The reference implementation, one byte at a time."""
    h = 0xCBF29CE484222325
    for byte in text.encode():
        h = ((h ^ byte) * 0x100000001B3) % 2**64
    return h


def test_the_hash_is_fnv1a_64_so_splits_never_move_between_machines_or_releases():
    # Published FNV-1a 64 test vectors, then a reference on ids of varied lengths.
    assert stable_hash(pa.array(["", "a", "foobar"])).tolist() == [
        0xCBF29CE484222325,
        0xAF63DC4C8601EC8C,
        0x85944171F73967E8,
    ]
    ids = ["s-1", "9f4bcadf-0000012", "ü-unicode", "x" * 40]
    assert stable_hash(pa.array(ids)).tolist() == [fnv1a_64(i) for i in ids]


def test_splits_are_roughly_80_10_10():
    ids = pa.array([f"s-{i}" for i in range(20_000)])
    share = np.bincount(split_of(ids), minlength=3) / 20_000
    assert share == pytest.approx([0.8, 0.1, 0.1], abs=0.015)


def test_a_sample_keeps_its_split_when_the_dataset_grows():
    few = build_dataset(
        events([(f"s-{i}", 1, 0, i) for i in range(200)]),
        labels({f"s-{i}": i % 10 for i in range(200)}),
    )
    many = build_dataset(
        events([(f"s-{i}", 1, 0, i) for i in range(1000)]),
        labels({f"s-{i}": i % 10 for i in range(1000)}),
    )
    before = dict(
        zip(few.table["sample_id"].to_pylist(), few.table["split"].to_pylist(), strict=True)
    )
    after = dict(
        zip(many.table["sample_id"].to_pylist(), many.table["split"].to_pylist(), strict=True)
    )
    assert all(after[k] == v for k, v in before.items())


def test_the_latest_event_of_a_sample_wins():
    table = build_dataset(
        events([("a", 1, 0, 0), ("a", 9, 5, 1), ("a", 3, 2, 2), ("b", 4, 0, 3)]),
        labels({"a": 1, "b": 2}),
    ).table
    pixels = dict(
        zip(
            table["sample_id"].to_pylist(), [p[0] for p in table["pixels"].to_pylist()], strict=True
        )
    )
    assert pixels == {"a": 9, "b": 4}


def test_equal_capture_times_fall_back_to_hub_order():
    table = build_dataset(events([("a", 1, 0, 7), ("a", 2, 0, 8)]), labels({"a": 0})).table
    assert table["pixels"][0].as_py()[0] == 2


def test_unlabeled_and_retracted_samples_are_left_out():
    # A retracted label is deleted from curated/labels, so it is simply absent here.
    table = build_dataset(
        events([("a", 1, 0, 0), ("b", 1, 0, 1), ("c", 1, 0, 2)]), labels({"a": 3})
    ).table
    assert table["sample_id"].to_pylist() == ["a"]
    assert table["label"].to_pylist() == [3]


def test_the_version_is_a_content_hash():
    ev = events([(f"s-{i}", i % 17, 0, i) for i in range(50)])
    lab = {f"s-{i}": i % 10 for i in range(50)}
    first, same = (
        build_dataset(ev, labels(lab)),
        build_dataset(ev.take(np.arange(49, -1, -1)), labels(lab)),
    )
    assert first.version == same.version  # order of arrival does not matter
    corrected = build_dataset(ev, labels({**lab, "s-7": 1}))
    assert corrected.version != first.version  # a label correction is a new dataset


def test_written_datasets_have_train_shards_and_no_sample_in_two_splits(tmp_path):
    lake = LakeStorage(url=f"file://{tmp_path}/lake")
    n = 2000
    dataset = build_dataset(
        events([(f"s-{i}", 1, 0, i) for i in range(n)]),
        labels({f"s-{i}": i % 10 for i in range(n)}),
    )
    files = write_dataset(lake, dataset)
    assert len(files["train"]) == TRAIN_SHARDS
    parts = {s: set(read_split(lake, dataset.version, s)["sample_id"].to_pylist()) for s in SPLITS}
    assert sum(len(p) for p in parts.values()) == n
    assert not (parts["train"] & parts["validation"]) and not (parts["train"] & parts["test"])
    assert not (parts["validation"] & parts["test"])


def test_writing_an_existing_version_again_writes_nothing(tmp_path):
    lake = LakeStorage(url=f"file://{tmp_path}/lake")
    dataset = build_dataset(
        events([(f"s-{i}", 1, 0, i) for i in range(100)]), labels({f"s-{i}": 1 for i in range(100)})
    )
    files = write_dataset(lake, dataset)
    stamps = {f: lake.fs.info(lake.path(f))["mtime"] for fs in files.values() for f in fs}
    write_dataset(lake, dataset)
    assert stamps == {f: lake.fs.info(lake.path(f))["mtime"] for fs in files.values() for f in fs}
