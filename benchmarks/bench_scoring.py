"""Scoring throughput against a bare `model.predict` on the same rows (target >= 0.8x), and
the wall time of the README's demo (the whole graph, 10,000 events).

Both sides use the same loaded model; scoring adds what it does beyond predict: Arrow ->
numpy, softmax, argmax and the predictions table. The two alternate REPEAT times; the row has
their median rates, the note the spread of the per-run ratios.
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

from benchmarks.common import Row, alternating
from mlassets.settings import PROJECT_ROOT

ROWS = 200_000
REPEAT = 5


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
    # Warm up both paths (each traces its own graph once).
    model.predict(to_features(pixels[:1000]), verbose=0)
    score(model, samples.slice(0, 1000), "bench")
    times = alternating(
        {
            "raw": lambda: model.predict(to_features(pixels), batch_size=4096, verbose=0),
            "ours": lambda: score(model, samples, "bench"),
        },
        REPEAT,
    )
    raw, ours = times["raw"], times["ours"]
    return Row(
        f"scoring {ROWS:,} rows",
        ROWS / ours.median,
        ROWS / raw.median,
        "r/s",
        0.8,
        note=f"baseline: model.predict; ratio per run: {ours.ratio_to(raw).describe()}",
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
