"""The Horovod training program: how it places its workers and what it does with little data."""

import json
import os
import subprocess
import sys

import pyarrow as pa
import pytest

from mlassets.datasets import build_dataset, write_dataset
from mlassets.events import decode_events, raw_events_table
from mlassets.resources.storage import LakeStorage
from mlassets.resources.training import LocalHorovod, TrainingJob
from mlassets.simulate import make_events

CORES = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
linux_only = pytest.mark.skipif(not CORES, reason="CPU affinity is a Linux API")

#: Starts a thread, pins, starts another: prints the cores of every thread of the process.
PROBE = """
import json, os, threading, time
from mlassets.training.train import bind_to_cores
stop = threading.Event()
before = threading.Thread(target=stop.wait); before.start()
cores = bind_to_cores()
after = threading.Thread(target=stop.wait); after.start()
seen = {t: sorted(os.sched_getaffinity(int(t))) for t in os.listdir("/proc/self/task")}
stop.set()
print(json.dumps({"cores": cores, "threads": seen}))
"""


def _probe(**env: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**os.environ, **env},
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out)


@pytest.mark.skipif(len(CORES) < 2, reason="needs two cores")
def test_a_bound_rank_pins_every_thread_to_its_own_core_including_threads_started_later():
    seen = _probe(MLASSETS_BIND_CORES="1", HOROVOD_LOCAL_RANK="1", MLASSETS_TRAINING_THREADS="1")
    assert seen["cores"] == [CORES[1]]
    assert len(seen["threads"]) >= 3  # main, before, after (and any numpy/pyarrow started)
    assert all(cores == [CORES[1]] for cores in seen["threads"].values())


@linux_only
def test_an_unbound_rank_or_one_without_cores_of_its_own_is_left_to_the_scheduler():
    assert _probe()["cores"] is None
    beyond = str(len(CORES))  # rank N of a machine with N cores
    seen = _probe(MLASSETS_BIND_CORES="1", HOROVOD_LOCAL_RANK=beyond, MLASSETS_TRAINING_THREADS="1")
    assert seen["cores"] is None
    assert all(cores == CORES for cores in seen["threads"].values())


@linux_only
def test_local_horovod_binds_workers_only_when_they_fit_the_machine():
    job = TrainingJob(module="mlassets.training.train", args=[], env={"EXTRA": "1"})
    fits = LocalHorovod(workers=len(CORES), threads_per_worker=1).env(job)
    assert fits["MLASSETS_BIND_CORES"] == "1"
    assert fits["MLASSETS_TRAINING_THREADS"] == fits["OMP_NUM_THREADS"] == "1"
    assert fits["TF_USE_LEGACY_KERAS"] == "1"
    assert fits["EXTRA"] == "1"
    too_many = LocalHorovod(workers=len(CORES), threads_per_worker=2).env(job)
    assert too_many["MLASSETS_BIND_CORES"] == "0"
    off = LocalHorovod(workers=1, bind_to_cores=False).env(job)
    assert off["MLASSETS_BIND_CORES"] == "0"


def test_local_horovod_runs_horovodrun_with_gloo_on_localhost():
    command = LocalHorovod(workers=3).command(TrainingJob(module="pkg.mod", args=["--x", "1"]))
    assert os.path.basename(command[0]) == "horovodrun"
    assert command[1:6] == ["-np", "3", "-H", "localhost:3", "--gloo"]
    assert command[6:] == [sys.executable, "-m", "pkg.mod", "--x", "1"]


@pytest.mark.slow
def test_a_dataset_smaller_than_a_batch_per_worker_trains_on_smaller_batches(tmp_path):
    events = make_events(300, seed=4)
    raw = raw_events_table("0", [(i, i, 0, None, None, b) for i, b in enumerate(events.bodies)])
    labels = pa.table({"sample_id": events.sample_ids, "label": events.labels})
    lake = LakeStorage(url=f"file://{tmp_path}/lake")
    dataset = build_dataset(decode_events(raw).landed, labels)
    write_dataset(lake, dataset)
    job = TrainingJob(
        module="mlassets.training.train",
        args=[
            *("--lake-url", lake.url, "--dataset-version", dataset.version),
            *("--model-version", "small", "--epochs", "2", "--batch-size", "256"),
        ],
    )
    compute = LocalHorovod(workers=2)
    env = {**os.environ, **compute.env(job)}
    env.pop("DAGSTER_PIPES_CONTEXT", None)
    done = subprocess.run(compute.command(job), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]

    metrics = json.loads(
        (tmp_path / "lake" / "models" / "digit_classifier" / "small" / "metrics.json").read_text()
    )
    assert 0 < metrics["batch_size"] <= metrics["train_rows"] // 2 < 256
    assert f"batch size {metrics['batch_size']} per worker instead of 256" in done.stderr
    assert len(metrics["history"]) == 2
