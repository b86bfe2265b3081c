"""Scoring throughput against a bare `model.predict` on the same rows (target >= 0.8x), and
the wall time of the README's demo (the whole graph, 10,000 events).

Both sides use the same loaded model; scoring adds what it does beyond predict: Arrow ->
numpy, softmax, argmax and the predictions table.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from benchmarks.common import Row, best_of
from mlassets.settings import PROJECT_ROOT

ROWS = 200_000


def _throughput() -> Row:
    from mlassets.lib.inference import score
    from mlassets.training_program.model import build_model, to_features

    model = build_model(seed=1)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 17, size=(ROWS, 64), dtype=np.uint8)
    samples = pa.table(
        {
            "sample_id": pa.array([f"s{i}" for i in range(ROWS)]),
            "pixels": pa.ListArray.from_arrays(
                pa.array(np.arange(0, 64 * (ROWS + 1), 64, dtype=np.int32)),
                pa.array(pixels.reshape(-1)),
            ),
        }
    )
    model.predict(to_features(pixels[:1000]), verbose=0)  # warm up both paths' graph
    raw = best_of(lambda: model.predict(to_features(pixels), batch_size=4096, verbose=0))
    ours = best_of(lambda: score(model, samples, "bench"))
    return Row(
        f"scoring {ROWS:,} rows",
        ROWS / ours,
        ROWS / raw,
        "r/s",
        0.8,
        note="baseline: model.predict",
    )


def _demo_wall_time() -> Row:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "dagster_home"
        home.mkdir()
        shutil.copy(PROJECT_ROOT / "dagster_home" / "dagster.yaml", home)
        env = {
            **os.environ,
            "MLASSETS_DATA_DIR": str(Path(tmp) / "data"),
            "DAGSTER_HOME": str(home),
        }
        started = time.perf_counter()
        subprocess.run(
            [str(Path(sys.executable).parent / "mlassets"), "demo", "--seed", "1"],
            env=env,
            check=True,
            capture_output=True,
        )
        return Row(
            "demo wall time (10,000 events, whole graph)",
            time.perf_counter() - started,
            None,
            "s",
            None,
        )


def run() -> list[Row]:
    return [_throughput(), _demo_wall_time()]
