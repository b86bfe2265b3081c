"""The data path at scale: `python -m benchmarks scale` (`make bench-scale`), not part of
`make bench`.

For each size (1M and 10M landed events; `BENCH_SCALE_EVENTS=1000000,10000000` to choose), a
local lake is filled as the product would leave it: landed files of 100k events over four
partitions, labels for half of the samples in `curated/labels` (Delta, with the CDC state).
Then each step runs in a fresh process, as a run would, and reports its wall time (after
imports and TensorFlow's start-up, which cost the same at any size) and its own peak RSS
(`VmHWM`, everything included):

1. the first `training_dataset` build (the sample state from nothing, and the manifest);
2. the first scoring (`inference_outputs`' work: every unlabelled sample, an untrained model
   of the product's architecture: throughput, not accuracy, is measured);
3. +1% events (new samples, half labelled) and 1% label changes (90% corrections, 10%
   retractions) through a real CDC batch and MERGE;
4. the next build and the next scoring, against the first ones (target <= 0.1).

The landing's figures (files after a day of ticks, listing time, landing RSS and throughput)
come from `benchmarks/scale_landing.py` when it is there.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa

from benchmarks.common import Row

SIZES = [int(x) for x in os.environ.get("BENCH_SCALE_EVENTS", "1000000,10000000").split(",")]
FILE_EVENTS = 100_000
PARTITIONS = 4
RSS_BUDGET_MB = 1536.0
MODEL = "bench-scale"


# -- the lake ----------------------------------------------------------------------------------


def _pixels(n: int, rng: np.random.Generator) -> pa.Array:
    from sklearn.datasets import load_digits

    images = load_digits().data.astype(np.int16)
    noisy = images[rng.integers(0, len(images), n)] + rng.integers(-1, 2, size=(n, 64))
    values = pa.array(np.clip(noisy, 0, 16).astype(np.uint8).ravel())
    return pa.ListArray.from_arrays(
        pa.array(np.arange(0, 64 * (n + 1), 64, dtype=np.int32)), values
    )


def _events(ids: list[str], partition: str, first_seq: int, start: datetime, rng) -> pa.Table:
    from mlassets.lib.events import LANDED_SCHEMA

    n = len(ids)
    captured = np.datetime64(start.replace(tzinfo=None), "us") + np.arange(n).astype(
        "timedelta64[ms]"
    )
    return pa.table(
        {
            "sample_id": pa.array(ids, pa.string()),
            "pixels": _pixels(n, rng),
            "source": pa.array(["scanner-a"] * n),
            "captured_at": pa.array(captured, pa.timestamp("us", tz="UTC")),
            "partition_id": pa.array([partition] * n),
            "sequence_number": pa.array(np.arange(first_seq, first_seq + n), pa.int64()),
            "offset": pa.array(np.arange(first_seq, first_seq + n) * 100, pa.int64()),
            "enqueued_time": pa.array(captured, pa.timestamp("us", tz="UTC")),
        },
        schema=LANDED_SCHEMA,
    )


def _land(lake, ids: list[str], heads: dict[str, int], start: datetime, rng) -> None:
    """Write `ids` as landed files of at most FILE_EVENTS, round-robin over partitions."""
    from mlassets.lib.landing import EventRange

    for k, lo in enumerate(range(0, len(ids), FILE_EVENTS)):
        part = ids[lo : lo + FILE_EVENTS]
        pid = str(k % PARTITIONS)
        first = heads.get(pid, 0)
        table = _events(part, pid, first, start + timedelta(seconds=lo / 1000), rng)
        lake.write_parquet(EventRange(pid, first, first + len(part) - 1).landed_path, table)
        heads[pid] = first + len(part)


def _labels(ids: list[str], rng) -> pa.Table:
    from mlassets.roles.labels_db import LABEL_SCHEMA

    n = len(ids)
    return pa.table(
        {
            "sample_id": pa.array(ids, pa.string()),
            "label": pa.array(rng.integers(0, 10, n), pa.int32()),
            "labeler": pa.array(["bench"] * n),
            "updated_at": pa.array([datetime(2026, 12, 1, tzinfo=UTC)] * n),
        },
        schema=LABEL_SCHEMA,
    )


def fill(lake, n: int) -> dict:
    """n landed events (new samples), half of them labelled, the labels as a snapshot."""
    from deltalake import CommitProperties

    from mlassets.lib import cdc
    from mlassets.lib.layout import LABELS_PATH
    from mlassets.roles.labels_db import lsn_hex

    rng = np.random.default_rng(n)
    ids = [f"s{i:09d}" for i in range(n)]
    heads: dict[str, int] = {}
    _land(lake, ids, heads, datetime(2026, 12, 1, tzinfo=UTC), rng)
    labels = _labels(ids[::2], rng)
    lake.write_delta(
        LABELS_PATH,
        labels,
        commit_properties=CommitProperties(
            custom_metadata={
                cdc.APPLIED_LSN_KEY: lsn_hex(1),
                cdc.SNAPSHOT_LSN_KEY: lsn_hex(1),
                cdc.OPERATION_KEY: "snapshot",
            }
        ),
    )
    return {"heads": heads, "n": n}


def grow(lake, n: int, heads: dict[str, int]) -> None:
    """+1% events (new samples, half labelled) and 1% label changes on labelled samples
    (90% corrections, 10% retractions), through one CDC batch and the product's apply."""
    from mlassets.lib import cdc
    from mlassets.roles.labels_db import (
        CHANGE_SCHEMA,
        OP_DELETE,
        OP_INSERT,
        OP_UPDATE_AFTER,
        lsn_hex,
    )

    rng = np.random.default_rng(n + 1)
    new = [f"t{i:09d}" for i in range(n // 100)]
    _land(lake, new, heads, datetime(2026, 12, 2, tzinfo=UTC), rng)
    changed = rng.choice(np.arange(0, n, 2), size=n // 100, replace=False)
    ops = np.where(np.arange(len(changed)) % 10 == 0, OP_DELETE, OP_UPDATE_AFTER)
    rows = pa.concat_tables(
        [
            _labels(new[::2], rng).add_column(
                0, "operation", pa.array([OP_INSERT] * len(new[::2]), pa.int8())
            ),
            _labels([f"s{i:09d}" for i in changed], rng).add_column(
                0, "operation", pa.array(ops, pa.int8())
            ),
        ]
    )
    count = rows.num_rows
    rows = rows.add_column(0, "seqval", pa.array([f"{i:020x}" for i in range(count)]))
    rows = rows.add_column(0, "start_lsn", pa.array([lsn_hex(2)] * count))
    rng_ = cdc.LsnRange(lsn_hex(2), lsn_hex(2))
    lake.write_parquet(rng_.path, rows.select(CHANGE_SCHEMA.names).cast(CHANGE_SCHEMA))
    cdc.apply_pending(lake)


# -- the steps, each in its own process --------------------------------------------------------


def _build(lake, started: list[float]) -> dict:
    from mlassets.lib import datasets, sample_state

    started.append(time.perf_counter())
    state = sample_state.advance(lake)
    datasets.write_manifest(lake, state)
    return {"rows": state.labelled_rows, "segments": len(state.segments), "state": state.number}


def _score(lake, started: list[float]) -> dict:
    from mlassets.lib import inference, sample_state, scoring
    from mlassets.training_program.model import build_model

    # TensorFlow's start-up and the scoring graph's tracing cost the same at any size: untimed.
    model = build_model(seed=1)
    inference.score(model, _samples(8), MODEL)
    started.append(time.perf_counter())
    state = sample_state.advance(lake)

    def score_chunk(claim, j, chunk) -> int:
        predictions = inference.score(model, chunk, MODEL)
        lake.write_parquet(
            f"{scoring.batch_dir(MODEL, claim.number)}/part-{j:05d}.parquet", predictions
        )
        return predictions.num_rows

    return {"rows": scoring.score_new(lake, MODEL, state, score_chunk)}


def _samples(n: int) -> pa.Table:
    rng = np.random.default_rng(0)
    return pa.table({"sample_id": [f"w{i}" for i in range(n)], "pixels": _pixels(n, rng)})


def _peak_rss_mb() -> float:
    """This process's own peak RSS (VmHWM). Not `ru_maxrss`: a child started by vfork (as
    subprocess does) carries its parent's peak in it, and the parent holds the lake it made."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(step: str, url: str) -> None:
    from mlassets.roles.storage import LakeStorage

    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    lake = LakeStorage(url=url)
    started: list[float] = []
    out = {"build": _build, "score": _score}[step](lake, started)
    out["seconds"] = time.perf_counter() - started[0]
    out["rss_mb"] = _peak_rss_mb()
    print("RESULT " + json.dumps(out), flush=True)


def _run(step: str, url: str) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TF_USE_LEGACY_KERAS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_scale", step, url],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"{step} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def measure(n: int) -> list[Row]:
    from mlassets.roles.storage import LakeStorage

    tag = f"{n / 1e6:g}M"
    with tempfile.TemporaryDirectory(prefix="mlassets-scale-") as tmp:
        url = f"file://{tmp}/lake"
        lake = LakeStorage(url=url)
        print(f"scale {tag}: filling the lake ...", file=sys.stderr, flush=True)
        filled = fill(lake, n)
        print(f"scale {tag}: first build, first scoring ...", file=sys.stderr, flush=True)
        build1 = _run("build", url)
        score1 = _run("score", url)
        grow(lake, n, filled["heads"])
        print(
            f"scale {tag}: +1% events, 1% label changes: next build, next scoring ...",
            file=sys.stderr,
            flush=True,
        )
        build2 = _run("build", url)
        score2 = _run("score", url)
    rss = max(build1["rss_mb"], build2["rss_mb"])
    return [
        Row(
            f"scale {tag}: full training_dataset build",
            build1["seconds"],
            None,
            "s",
            None,
            note=f"{build1['rows']:,} labelled rows, {build1['segments']} segments",
        ),
        Row(
            f"scale {tag}: next build after +1% / full",
            build2["seconds"],
            build1["seconds"],
            "s",
            0.1,
            higher_is_better=False,
            note=f"{build2['segments']} segments after it",
        ),
        Row(
            f"scale {tag}: next scoring after +1% / first",
            score2["seconds"],
            score1["seconds"],
            "s",
            0.1,
            higher_is_better=False,
            note=f"{score1['rows']:,} then {score2['rows']:,} samples scored",
        ),
        Row(
            f"scale {tag}: peak RSS training_dataset",
            rss,
            RSS_BUDGET_MB,
            "MB",
            1.0,
            higher_is_better=False,
            note="of the 1.5 GB budget",
        ),
        Row(
            f"scale {tag}: peak RSS inference_outputs",
            max(score1["rss_mb"], score2["rss_mb"]),
            RSS_BUDGET_MB,
            "MB",
            1.0,
            higher_is_better=False,
            note="of the 1.5 GB budget, TensorFlow included",
        ),
    ]


def run() -> list[Row]:
    from benchmarks import scale_landing
    from benchmarks.common import render

    rows: list[Row] = []
    for n in SIZES:
        mine = measure(n)
        print(render(mine), file=sys.stderr, flush=True)  # in case a later size fails
        rows += mine
        if os.environ.get("BENCH_SCALE_LANDING", "1") != "0":
            rows += scale_landing.run(n)
    return rows


if __name__ == "__main__":
    worker(sys.argv[1], sys.argv[2])
