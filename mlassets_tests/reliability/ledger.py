"""What the landing reliability tests check: every published event is in the lake exactly once.

`ledger(hub, lake)` counts each (partition, sequence number) across the live landed and
quarantined files (what every reader reads: `landing.live_files`, which leaves out a file
inside another's range, as a killed compaction leaves), and compares with what the hub holds;
the landed files of a partition must also form one chain (no overlap, no hole) from 0 to its
last event. And how the tests start landings in processes of their own
(`landing_process.py`), all at once.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from mlassets.lib.landing import FileRuns, landed_ranges, live_files
from mlassets.lib.layout import LANDED_PREFIX, QUARANTINE_PREFIX
from mlassets.roles.eventhub import EventHubResource
from mlassets.roles.storage import LakeStorage

LANDING_PROCESS = Path(__file__).with_name("landing_process.py")


@dataclass
class Ledger:
    published: int
    duplicated: list[tuple[str, int]]
    missing: list[tuple[str, int]]
    unknown: list[tuple[str, int]]
    #: Per partition, landed files that overlap or leave a hole.
    broken_chains: dict[str, list[tuple[int, int]]]

    @property
    def exactly_once(self) -> bool:
        return not (self.duplicated or self.missing or self.unknown or self.broken_chains)

    def __str__(self) -> str:
        return (
            f"{self.published} published; duplicated {self.duplicated[:10]} "
            f"({len(self.duplicated)}), missing {self.missing[:10]} ({len(self.missing)}), "
            f"unknown {self.unknown[:10]}, broken chains {self.broken_chains}"
        )


def ledger(hub: EventHubResource, lake: LakeStorage) -> Ledger:
    counts: Counter[tuple[str, int]] = Counter()
    for zone in (LANDED_PREFIX, QUARANTINE_PREFIX):
        for rng in live_files(lake, prefix=zone):
            path = rng.landed_path if zone == LANDED_PREFIX else rng.quarantine_path
            seqs = lake.read_parquet(path, columns=["sequence_number"])["sequence_number"]
            counts.update((rng.partition_id, s) for s in seqs.to_pylist())
    props = hub.all_partition_properties()
    expected = {
        (p.partition_id, s)
        for p in props
        for s in range(p.beginning_sequence_number, p.last_enqueued_sequence_number + 1)
    }
    broken: dict[str, list[tuple[int, int]]] = {}
    landed = landed_ranges(lake)
    for p in props:
        if p.last_enqueued_sequence_number < 0:
            continue
        ranges = landed.get(p.partition_id, [])
        starts = [0, *(r.last + 1 for r in ranges)]
        if [r.first for r in ranges] != starts[:-1] or starts[
            -1
        ] != p.last_enqueued_sequence_number + 1:
            broken[p.partition_id] = [(r.first, r.last) for r in ranges]
    return Ledger(
        published=len(expected),
        duplicated=sorted(k for k, n in counts.items() if n > 1),
        missing=sorted(expected - counts.keys()),
        unknown=sorted(counts.keys() - expected),
        broken_chains=broken,
    )


def temp_files(lake: LakeStorage) -> list[str]:
    """Every temporary file anywhere in the lake, however young."""
    if lake.is_local:
        root = lake.path()
        return sorted(
            os.path.relpath(os.path.join(folder, name), root)
            for folder, _, names in os.walk(root)
            for name in names
            if name.endswith(".tmp")
        )
    return sorted(lake.relative(p) for p in lake.fs.find(lake.path()) if p.endswith(".tmp"))


def age_temp_files(lake: LakeStorage, seconds: float) -> None:
    """Make the local temporary files look `seconds` older: time passing after a crash."""
    for rel in temp_files(lake):
        path = lake.path(rel)
        stat = os.stat(path)
        os.utime(path, (stat.st_atime - seconds, stat.st_mtime - seconds))


def landed_runs(lake: LakeStorage) -> dict[tuple[str, int], str | None]:
    """(partition, first sequence number of a landed range) -> the run that landed it, from
    the live files' footers (merged files list a run per range): claims are removed by
    compaction, the footers keep who won."""
    out: dict[tuple[str, int], str | None] = {}
    for rng in live_files(lake):
        with lake.fs.open(lake.path(rng.landed_path), "rb") as f:
            runs = FileRuns.from_footer(rng.landed_path, pq.ParquetFile(f).metadata.metadata)
        for first, _, run in runs.ranges or ((rng.first, rng.last, runs.run_id),):
            out[(rng.partition_id, first)] = run
    return out


#: The landings' compaction blocks in these tests: small lakes merge too.
COMPACT_BASE = "128"


def landing_command(*args: str) -> list[str]:
    return [sys.executable, str(LANDING_PROCESS), "--compact-base", COMPACT_BASE, *args]


def release_together(go: Path, procs: list[subprocess.Popen], timeout: float = 240) -> None:
    """Wait until every landing started with `--go go` waits at its entrance, then let
    them all go at once."""
    deadline = time.monotonic() + timeout
    while len(list(go.parent.glob(f"{go.name}.ready-*"))) < len(procs):
        dead = [p.args for p in procs if p.poll() is not None]
        if dead:
            raise AssertionError(f"a landing ended before it got to the start: {dead}")
        if time.monotonic() > deadline:
            raise AssertionError(f"the landings did not get to the start within {timeout}s")
        time.sleep(0.01)
    go.touch()
