"""Horovod scaling: samples/s with 1 and 2 local Gloo workers (1 thread each), same data.

Efficiency = samples/s(2) / (2 x samples/s(1)); target >= 0.9. Both run exactly as the
product launches them (`LocalHorovod`: one core per worker, one fused allreduce per step).
A rate is the median epoch rate after the first epoch (graph tracing, variable broadcast),
best of REPEAT runs; 1- and 2-worker runs alternate so that a disturbed minute hits both.

Rows: the product's default batch, then larger ones. Every synchronous step pays a fixed
cost, the allreduce of the ~300 KB of gradients plus waiting for the slower rank (about
8 ms on a 2-core VM), so efficiency grows with the work in a step.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa

from benchmarks.common import Row
from mlassets.assets.training import TrainingConfig
from mlassets.datasets import build_dataset, write_dataset
from mlassets.events import decode_events, raw_events_table
from mlassets.resources.storage import LakeStorage
from mlassets.resources.training import LocalHorovod, TrainingJob
from mlassets.simulate import make_events

#: 40k events: ~25,600 training rows, so even 2 workers at the largest batch take 6 steps an epoch.
EVENTS = 40_000
EPOCHS = 6
REPEAT = 2
BATCHES = [TrainingConfig().batch_size, 512, 1024, 2048]


def _rate(lake: LakeStorage, version: str, workers: int, root: Path, batch: int) -> float:
    model = f"bench-{workers}-{batch}"
    job = TrainingJob(
        module="mlassets.training.train",
        args=[
            *("--lake-url", lake.url, "--dataset-version", version),
            *("--model-version", model, "--epochs", str(EPOCHS)),
            *("--batch-size", str(batch), "--threads", "1"),
        ],
    )
    compute = LocalHorovod(workers=workers, threads_per_worker=1)
    env = {**os.environ, **compute.env(job)}
    env.pop("DAGSTER_PIPES_CONTEXT", None)
    subprocess.run(compute.command(job), env=env, cwd=root, check=True, capture_output=True)
    metrics_file = root / "lake" / "models" / "digit_classifier" / model / "metrics.json"
    history = json.loads(metrics_file.read_text())["history"]
    return float(np.median([h["samples_per_second"] for h in history[1:]]))


def run() -> list[Row]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        events = make_events(EVENTS, seed=3)
        raw = raw_events_table("0", [(i, i, 0, None, None, b) for i, b in enumerate(events.bodies)])
        landed = decode_events(raw).landed
        labels = pa.table({"sample_id": events.sample_ids, "label": events.labels})
        lake = LakeStorage(url=f"file://{root}/lake")
        dataset = build_dataset(landed, labels)
        write_dataset(lake, dataset)
        rows = []
        for batch in BATCHES:
            one, two = 0.0, 0.0
            for _ in range(REPEAT):
                one = max(one, _rate(lake, dataset.version, 1, root, batch))
                two = max(two, _rate(lake, dataset.version, 2, root, batch))
            default = " (default)" if batch == BATCHES[0] else ""
            rows.append(
                Row(
                    f"horovod 2 workers vs 2 x 1, batch {batch}{default}",
                    two,
                    2 * one,
                    "sa/s",
                    0.9,
                    note=f"1 worker: {one:,.0f} samples/s; ratio = efficiency",
                )
            )
        return rows
