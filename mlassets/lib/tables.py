"""Cheap facts about lake tables for the standard metadata the UI shows.

A table's size is carried from one materialization to the next as a running total; these
helpers count it from Parquet footers only when there is no previous total to carry (a fresh
Dagster instance over an existing lake), so no materialization scans table data.
"""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow.parquet as pq

from mlassets.roles.storage import LakeStorage


def parquet_rows(lake: LakeStorage, paths: Iterable[str]) -> int:
    """Rows in these Parquet files, from their footers."""
    total = 0
    for path in paths:
        with lake.fs.open(lake.path(path), "rb") as f:
            total += pq.ParquetFile(f).metadata.num_rows
    return total


def running_total(previous: int | None, added: int, lake: LakeStorage, pattern: str) -> int:
    """The table's rows now: the previous total plus what was added, or, with no previous
    total, the footers of every file matching `pattern` (which include what was added)."""
    if previous is not None:
        return previous + added
    return parquet_rows(lake, lake.glob(pattern))
