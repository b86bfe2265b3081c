"""The Horovod training program: how it places its workers, how it cuts its steps, and what it
does with little data."""

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from mlassets.lib.datasets import build_dataset, write_dataset
from mlassets.lib.events import decode_events, raw_events_table
from mlassets.roles.storage import LakeStorage
from mlassets.roles.training import LocalHorovod, TrainingJob
from mlassets.simulate import make_events
from mlassets.training_program.train import (
    choose_batch_size,
    choose_epochs,
    mean_loss_in_parts,
    micro_batch_sizes,
    parse_args,
)

CORES = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
linux_only = pytest.mark.skipif(not CORES, reason="CPU affinity is a Linux API")

#: Starts a thread, pins, starts another: prints the cores of every thread of the process.
PROBE = """
import json, os, threading, time
from mlassets.training_program.train import bind_to_cores
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
    job = TrainingJob(module="mlassets.training_program.train", args=[], env={"EXTRA": "1"})
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


def _train_two_workers(tmp_path, events: int, *args: str) -> tuple[dict, str]:
    """Real `horovodrun` with 2 workers on a fresh dataset: (metrics.json, the run's stderr)."""
    simulated = make_events(events, seed=4)
    raw = raw_events_table("0", [(i, i, 0, None, None, b) for i, b in enumerate(simulated.bodies)])
    labels = pa.table({"sample_id": simulated.sample_ids, "label": simulated.labels})
    lake = LakeStorage(url=f"file://{tmp_path}/lake")
    dataset = build_dataset(decode_events(raw).landed, labels)
    write_dataset(lake, dataset)
    job = TrainingJob(
        module="mlassets.training_program.train",
        args=[
            *("--lake-url", lake.url, "--dataset-version", dataset.version),
            *("--model-version", "m", "--epochs", "2", *args),
        ],
    )
    compute = LocalHorovod(workers=2)
    env = {**os.environ, **compute.env(job)}
    env.pop("DAGSTER_PIPES_CONTEXT", None)
    done = subprocess.run(compute.command(job), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = tmp_path / "lake" / "models" / "digit_classifier" / "m" / "metrics.json"
    return json.loads(metrics.read_text()), done.stderr


@pytest.mark.slow
def test_a_dataset_smaller_than_a_batch_per_worker_trains_on_smaller_batches(tmp_path):
    metrics, stderr = _train_two_workers(tmp_path, 300, "--batch-size", "256")
    assert 0 < metrics["batch_size"] <= metrics["train_rows"] // 2 < 256
    assert f"batch size {metrics['batch_size']} per worker instead of 256" in stderr
    assert len(metrics["history"]) == 2


@pytest.mark.slow
def test_a_large_step_runs_in_micro_batches_under_horovod_and_says_so(tmp_path):
    metrics, stderr = _train_two_workers(
        tmp_path, 3000, "--batch-size", "512", "--micro-batch", "128"
    )
    assert (metrics["batch_size"], metrics["micro_batch"]) == (512, 128)
    assert metrics["steps_per_epoch"] == metrics["train_rows"] // 2 // 512 > 0
    assert "computed in 4 micro-batches of 128" in stderr
    assert all(0 <= h["accuracy"] <= 1 and h["loss"] > 0 for h in metrics["history"])
    assert all(h["cpu_busy"] > 0 for h in metrics["history"])  # how busy the ranks were


def test_the_automatic_step_grows_with_the_data_and_leaves_every_worker_32_steps_an_epoch():
    assert choose_batch_size(950, None)[0] == 32  # 3,000 events on 2 workers: 29 steps of 32
    assert choose_batch_size(3_100, None)[0] == 64  # the demo: many updates, small steps
    assert choose_batch_size(8_200, None)[0] == 256
    assert choose_batch_size(25_000, None)[0] == 512  # 48 steps; 1024 would leave 24
    assert choose_batch_size(40_000, None)[0] == 1024
    assert choose_batch_size(80_000, None)[0] == 2048  # the scaling benchmark's 2 workers
    assert choose_batch_size(10_000_000, None)[0] == 2048  # never beyond the largest
    assert choose_batch_size(200, None)[0] == 32  # the smallest step, 6 of them an epoch
    assert choose_batch_size(20, None)[0] == 20  # fewer rows than the smallest step
    assert choose_batch_size(80_000, None)[1] == (
        "batch size 2048 per worker (automatic: 80,000 rows per worker give 39 steps an epoch)"
    )
    assert choose_batch_size(950, None)[1] == (
        "batch size 32 per worker (automatic: the smallest step; 950 rows per worker give 29 "
        "steps an epoch, fewer than 32)"
    )


@pytest.mark.parametrize("rows", [2, 31, 200, 950, 1_000, 1_900, 3_100, 16_000, 80_000, 10**7])
def test_every_automatic_run_makes_at_least_600_updates_of_a_step_no_larger_than_needed(rows):
    batch, _ = choose_batch_size(rows, None)
    steps = rows // batch
    epochs, _ = choose_epochs(steps, None)
    assert epochs >= 12
    assert epochs * steps >= 600 or epochs == 200  # a handful of rows: capped at 200 passes
    assert steps >= 32 or batch == min(32, rows)  # fewer steps only at the smallest step


def test_data_that_gives_few_steps_an_epoch_trains_more_epochs_and_says_why():
    assert choose_epochs(50, None) == (12, "12 epochs (automatic: 600 updates)")
    assert choose_epochs(488, None) == (12, "12 epochs (automatic: 5,856 updates)")
    assert choose_epochs(29, None) == (
        21,
        "21 epochs (automatic: 29 steps an epoch need 21 epochs for 600 updates; 609 updates)",
    )
    # The scaling benchmark's 2 workers: 39 steps of 2048 (it asks for its epochs itself).
    assert choose_epochs(39, None)[0] == 16
    assert choose_epochs(1, None) == (
        200,
        "200 epochs (automatic: 1 steps an epoch need 600 epochs for 600 updates, at most 200; "
        "200 updates)",
    )


def test_asked_for_epochs_are_kept_whatever_the_data():
    assert choose_epochs(3, 2) == (2, "2 epochs (6 updates)")
    assert choose_epochs(1_000, 12) == (12, "12 epochs (12,000 updates)")
    with pytest.raises(ValueError, match="no steps"):
        choose_epochs(0, None)


def test_the_command_line_takes_auto_or_a_number_for_epochs_batch_and_micro_batch():
    base = ["--lake-url", "file:///x", "--dataset-version", "d", "--model-version", "m"]
    args = parse_args(base)
    assert (args.epochs, args.batch_size, args.micro_batch) == (None, None, None)
    args = parse_args([*base, "--epochs", "3", "--batch-size", "64", "--micro-batch", "0"])
    assert (args.epochs, args.batch_size, args.micro_batch) == (3, 64, 0)
    assert parse_args([*base, "--epochs", "auto"]).epochs is None


@pytest.mark.parametrize(
    "option,value", [("--epochs", "0"), ("--batch-size", "-1"), ("--micro-batch", "x")]
)
def test_the_command_line_refuses_a_count_that_makes_no_sense(option, value, capsys):
    base = ["--lake-url", "file:///x", "--dataset-version", "d", "--model-version", "m"]
    with pytest.raises(SystemExit):
        parse_args([*base, option, value])
    assert "expected 'auto' or a number >= " in capsys.readouterr().err


def test_an_asked_for_batch_is_kept_or_cut_to_the_rows_a_worker_has():
    assert choose_batch_size(5_000, 300) == (300, "batch size 300 per worker")
    batch, why = choose_batch_size(120, 256)
    assert batch == 120
    assert why == "batch size 120 per worker instead of 256: a worker has only 120 training rows"
    with pytest.raises(ValueError, match="no training rows"):
        choose_batch_size(0, None)


def test_a_step_is_cut_into_near_equal_micro_batches_of_at_most_the_asked_size():
    assert micro_batch_sizes(2048, 256) == [256] * 8
    assert micro_batch_sizes(1000, 256) == [250] * 4
    assert micro_batch_sizes(1001, 256) == [251, 250, 250, 250]
    assert micro_batch_sizes(256, 256) == [256]
    assert micro_batch_sizes(100, 256) == [100]  # a small step is one part
    assert micro_batch_sizes(2048, 0) == [2048]  # 0: the whole step (GPUs)


@pytest.mark.parametrize("batch", [2048, 1001])
def test_a_step_computed_in_micro_batches_has_the_gradient_of_the_whole_batch(batch):
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)
    model = tf.keras.Sequential(
        [
            tf.keras.layers.Input(shape=(64,)),
            tf.keras.layers.Dense(32, "relu"),
            tf.keras.layers.Dense(10),
        ]
    )
    loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    x = tf.random.uniform((batch, 64))
    y = tf.random.uniform((batch,), maxval=10, dtype=tf.int32)

    def gradients(parts):
        with tf.GradientTape() as tape:
            loss, hits = mean_loss_in_parts(model, loss_fn, x, y, parts)
        return loss, hits, tape.gradient(loss, model.trainable_variables)

    whole_loss, whole_hits, whole = gradients([batch])
    parts = micro_batch_sizes(batch, 256)
    assert len(parts) > 1
    part_loss, part_hits, in_parts = gradients(parts)
    assert float(part_hits) == float(whole_hits)
    assert abs(float(part_loss) - float(whole_loss)) < 1e-5
    for a, b in zip(whole, in_parts, strict=True):
        assert np.allclose(a.numpy(), b.numpy(), atol=1e-6)
