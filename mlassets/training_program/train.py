"""The Horovod training program: `horovodrun -np N ... python -m mlassets.training_program.train`.

Every rank reads its own shards of the train split (or all of it, keeping every N-th row, when
the shards split it unevenly), the learning rate scales with the number of workers (and
decays along a cosine over the run), rank 0's initial variables are broadcast, gradients are
averaged by `hvd.DistributedGradientTape`, and epoch metrics are averaged across ranks with
`hvd.allreduce` (Horovod's MetricAverageCallback does not work with
tf-keras here). Rank 0 opens Dagster Pipes: one log line per epoch, then the materialization
metadata. Seeded, so the same dataset, settings and worker count give the same model.

Built for throughput: a step's gradients go in one fused allreduce, an epoch runs as one
graph, and local ranks are bound to their own cores (bind_to_cores). Every step pays a fixed
synchronous cost (the allreduce, waiting for the slowest rank), so by default the step grows
with the data (`choose_batch_size`) while small data keeps small steps and, below 32 steps an
epoch, trains more epochs (`choose_epochs`): every model makes enough updates to learn. On CPUs
a large step is computed in cache-sized micro-batches under one gradient tape
(`micro_batch_sizes`), so a sample costs about what it does in a small step and the gradient is
still that of the whole batch.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mlassets import settings


@dataclass
class Args:
    lake_url: str
    dataset_version: str
    model_version: str
    #: Passes over the train split; None: `choose_epochs`.
    epochs: int | None = None
    #: Samples per worker per step (one gradient allreduce); None: `choose_batch_size`.
    batch_size: int | None = None
    learning_rate: float = 0.002
    seed: int = 1234
    threads: int = 1
    #: Rows computed at once inside a step; 0: the whole step; None: `CPU_MICRO_BATCH` on a
    #: CPU, the whole step on a GPU (which wants large kernels).
    micro_batch: int | None = None


@dataclass
class Metrics:
    dataset_version: str
    model_version: str
    model_path: str
    workers: int
    epochs: int
    batch_size: int
    micro_batch: int
    steps_per_epoch: int
    test_accuracy: float
    test_loss: float
    train_rows: int
    samples_per_second: float
    seconds: float
    history: list[dict] = field(default_factory=list)


def parse_args(argv: list[str]) -> Args:
    p = argparse.ArgumentParser(prog="mlassets.training_program.train")
    p.add_argument("--lake-url", required=True)
    p.add_argument("--dataset-version", required=True)
    p.add_argument("--model-version", required=True)
    p.add_argument(
        "--epochs",
        type=_optional_positive_int,
        default=None,
        help=f"passes over the train split, or 'auto' (default): {DEFAULT_EPOCHS}, more when "
        f"that would make fewer than {MIN_UPDATES} updates",
    )
    p.add_argument(
        "--batch-size",
        type=_optional_int,
        default=None,
        help="samples per worker per step, or 'auto' (default): grows with the data",
    )
    p.add_argument("--learning-rate", type=float, default=0.002, help="for one worker")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--threads", type=int, default=settings.training_threads())
    p.add_argument(
        "--micro-batch",
        type=_optional_int,
        default=None,
        help="rows computed at once inside a step; 0: the whole step; 'auto' (default): "
        "256 on a CPU, the whole step on a GPU",
    )
    return Args(**vars(p.parse_args(argv)))


def _optional_int(text: str, least: int = 0) -> int | None:
    if text == "auto":
        return None
    try:
        value = int(text)
    except ValueError:
        value = least - 1
    if value < least:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number >= {least}, got {text!r}")
    return value


def _optional_positive_int(text: str) -> int | None:
    return _optional_int(text, least=1)


#: The automatic step sizes per worker, largest first.
AUTO_BATCH_SIZES = (2048, 1024, 512, 256, 128, 64, 32)
#: Fewest steps an epoch the automatic step size leaves each worker: enough updates to learn.
MIN_STEPS_PER_EPOCH = 32
#: Epochs when the data gives every worker MIN_STEPS_PER_EPOCH steps an epoch.
DEFAULT_EPOCHS = 12
#: Fewest optimizer updates an automatic run makes: data that gives fewer than 50 steps an
#: epoch trains more epochs instead. With 3,000 events (about 950 rows per worker, 29 steps of
#: 32) 12 epochs left the model at 0.88-0.93 test accuracy, 21 epochs at 0.92-0.93.
MIN_UPDATES = 600
#: The learning rate decays along a cosine to this share of itself by the last update, so the
#: model that is kept is a settled one, not a snapshot of the noisy steps of a small batch.
FINAL_LEARNING_RATE_SHARE = 0.05
#: Most epochs the automatic choice makes (a few dozen rows: each epoch is one tiny step).
MAX_AUTO_EPOCHS = 200
#: Shards are slices of a hash of the sample id, and a few thousand ids can fall unevenly
#: (3,000 events: 956 and 1,455 train rows on 2 ranks). Steps are cut to the smallest rank's
#: rows, so when it holds less than this share of the mean every rank reads the whole split
#: and keeps every size-th row instead of leaving the rest of the larger ranks' rows unused.
MIN_SHARD_BALANCE = 0.9
#: Rows a CPU computes at once: a 256-row layer's activations stay in the core's cache; a
#: 2048-row one does not, and the same samples take ~10% longer.
CPU_MICRO_BATCH = 256


def choose_batch_size(rows_per_worker: int, requested: int | None) -> tuple[int, str]:
    """The batch per worker per step, and why, for the run log.

    Asked for: that, or the worker's rows when it has fewer. Automatic: the largest of
    AUTO_BATCH_SIZES that still gives every worker MIN_STEPS_PER_EPOCH steps an epoch (or the
    smallest when none does). Small datasets keep small steps (many updates an epoch, the
    accuracy they need); large ones get large steps, whose fixed synchronous cost is amortized
    over more samples, so adding workers keeps paying off as the data grows and the retraining
    sensor trains again and again.
    """
    if rows_per_worker <= 0:
        raise ValueError("a worker has no training rows")
    if requested is not None:
        if requested <= rows_per_worker:
            return requested, f"batch size {requested} per worker"
        return rows_per_worker, (
            f"batch size {rows_per_worker} per worker instead of {requested}: "
            f"a worker has only {rows_per_worker} training rows"
        )
    for size in AUTO_BATCH_SIZES:
        if rows_per_worker // size >= MIN_STEPS_PER_EPOCH:
            return size, (
                f"batch size {size} per worker (automatic: {rows_per_worker:,} rows per worker "
                f"give {rows_per_worker // size} steps an epoch)"
            )
    size = min(AUTO_BATCH_SIZES[-1], rows_per_worker)
    return size, (
        f"batch size {size} per worker (automatic: the smallest step; {rows_per_worker:,} rows "
        f"per worker give {rows_per_worker // size} steps an epoch, fewer than "
        f"{MIN_STEPS_PER_EPOCH})"
    )


def choose_epochs(steps_per_epoch: int, requested: int | None) -> tuple[int, str]:
    """The number of epochs, and why, for the run log.

    Asked for: that. Automatic: DEFAULT_EPOCHS, or as many more (up to MAX_AUTO_EPOCHS) as it
    takes to make MIN_UPDATES updates: a small dataset learns from the number of updates, not
    of passes, and a few thousand rows cut into steps make too few of them in 12 passes.
    """
    if steps_per_epoch <= 0:
        raise ValueError("an epoch has no steps")
    if requested is not None:
        return requested, f"{requested} epochs ({requested * steps_per_epoch:,} updates)"
    needed = -(-MIN_UPDATES // steps_per_epoch)
    epochs = min(max(DEFAULT_EPOCHS, needed), MAX_AUTO_EPOCHS)
    if epochs == DEFAULT_EPOCHS:
        return epochs, f"{epochs} epochs (automatic: {epochs * steps_per_epoch:,} updates)"
    return epochs, (
        f"{epochs} epochs (automatic: {steps_per_epoch} steps an epoch need {needed} epochs "
        f"for {MIN_UPDATES} updates"
        + (f", at most {MAX_AUTO_EPOCHS}" if needed > MAX_AUTO_EPOCHS else "")
        + f"; {epochs * steps_per_epoch:,} updates)"
    )


def mean_loss_in_parts(model, loss_fn, x, y, parts: list[int]):
    """The batch's mean loss and its count of correct predictions, computed part by part.

    Under one gradient tape this gives the gradient of the whole batch (each part's mean loss
    weighted by its share of the rows), while every layer works on a part at a time.
    """
    import tensorflow as tf

    loss, hits = 0.0, 0.0
    total = sum(parts)
    for xb, yb, n in zip(tf.split(x, parts), tf.split(y, parts), parts, strict=True):
        logits = model(xb, training=True)
        loss += loss_fn(yb, logits) * (n / total)
        predicted = tf.argmax(logits, 1, output_type=tf.int32)
        hits += tf.reduce_sum(tf.cast(tf.equal(predicted, yb), tf.float64))
    return loss, hits


def micro_batch_sizes(batch_size: int, micro_batch: int) -> list[int]:
    """Split a step of `batch_size` rows into near-equal parts of at most `micro_batch` rows
    (0: one part), for `mean_loss_in_parts`."""
    if micro_batch <= 0 or micro_batch >= batch_size:
        return [batch_size]
    parts = -(-batch_size // micro_batch)
    base, extra = divmod(batch_size, parts)
    return [base + 1] * extra + [base] * (parts - extra)


class Reporter:
    """Rank 0 talks to Dagster through Pipes; outside Dagster (benchmarks) it prints."""

    def __init__(self, rank: int) -> None:
        self.pipes = None
        self._cm = None
        if rank == 0 and os.environ.get("DAGSTER_PIPES_CONTEXT"):
            from mlassets.training_program.pipes import open_pipes

            self._cm = open_pipes()
            self.pipes = self._cm.__enter__()
        self.rank = rank

    def log(self, message: str) -> None:
        if self.rank != 0:
            return
        if self.pipes is not None:
            self.pipes.log.info(message)
        else:
            print(message, file=sys.stderr, flush=True)

    def report(self, metrics: Metrics) -> None:
        if self.pipes is None:
            return
        # The metadata contract spells the keys (imported here: rank 0, under Pipes only).
        from mlassets.lib.metadata import ModelMetadata

        reported = ModelMetadata(
            test_accuracy=metrics.test_accuracy,
            test_loss=metrics.test_loss,
            epochs=metrics.epochs,
            workers=metrics.workers,
            batch_size_per_worker=metrics.batch_size,
            micro_batch=metrics.micro_batch,
            steps_per_epoch=metrics.steps_per_epoch,
            samples_per_second=metrics.samples_per_second,
            train_rows=metrics.train_rows,
            training_seconds=round(metrics.seconds, 2),
            dataset_version=metrics.dataset_version,
            model_version=metrics.model_version,
            model_path=metrics.model_path,
            history=_history_markdown(metrics.history),
        )
        self.pipes.report_asset_materialization(
            metadata=reported.to_pipes(), data_version=metrics.model_version
        )

    def close(self, exc: BaseException | None = None) -> None:
        if self._cm is not None:
            self._cm.__exit__(type(exc) if exc else None, exc, exc.__traceback__ if exc else None)


def _history_markdown(history: list[dict]) -> str:
    rows = "".join(
        f"| {h['epoch']} | {h['loss']:.4f} | {h['accuracy']:.4f} | {h['val_accuracy']:.4f} "
        f"| {h['samples_per_second']:,.0f} |\n"
        for h in history
    )
    return "| epoch | loss | accuracy | val accuracy | samples/s |\n|---|---|---|---|---|\n" + rows


def _arrays(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    from mlassets.training_program.model import to_features

    pixels = pc.list_flatten(table["pixels"]).to_numpy(zero_copy_only=False)
    return to_features(pixels), table["label"].to_numpy().astype(np.int32)


def bind_to_cores() -> list[int] | None:
    """Pin this rank to its own cores when the launcher asks (MLASSETS_BIND_CORES=1), like
    `mpirun --bind-to core`.

    Unpinned, the ranks' threads and Horovod's background threads migrate onto each other's
    cores and every synchronous step waits for the slowest; pinned, each rank keeps a core
    warm. Every thread that exists now is pinned, and threads started later (TensorFlow's,
    Horovod's, Gloo's) inherit it, so call this before importing TensorFlow.
    """
    if os.environ.get("MLASSETS_BIND_CORES") != "1" or not hasattr(os, "sched_setaffinity"):
        return None
    local_rank = int(os.environ.get("HOROVOD_LOCAL_RANK", "0"))
    threads = settings.training_threads()
    available = sorted(os.sched_getaffinity(0))
    cores = available[local_rank * threads : (local_rank + 1) * threads]
    if len(cores) < threads:  # more ranks than cores: leave the scheduler to it
        return None
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            os.sched_setaffinity(int(tid), cores)
    return cores


def train(args: Args) -> Metrics | None:
    from mlassets.lib.datasets import read_manifest, read_split, shard_of_path
    from mlassets.roles.storage import LakeStorage
    from mlassets.training_program.model import build_model

    cores = bind_to_cores()
    import horovod.tensorflow as hvd
    import tensorflow as tf

    hvd.init()
    rank, size = hvd.rank(), hvd.size()
    # One GPU per rank on multi-GPU nodes (Azure Batch); on CPU this finds none.
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        tf.config.set_visible_devices(gpus[hvd.local_rank() % len(gpus)], "GPU")
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    tf.keras.utils.set_random_seed(args.seed)
    reporter = Reporter(rank)
    try:
        reporter.log(
            f"{size} workers x {args.threads} threads"
            + (f", rank 0 bound to cores {cores}" if cores else "")
        )
        lake = LakeStorage(
            url=args.lake_url,
            connection_string=os.environ.get("MLASSETS_STORAGE_CONNECTION_STRING"),
        )
        manifest = read_manifest(lake, args.dataset_version)
        shards = sorted({shard_of_path(p) for p in manifest.paths("train")})
        if not shards:
            raise FileNotFoundError(f"no train split for dataset {args.dataset_version}")

        def row_counts(rows: int) -> tuple[int, int]:
            """(fewest rows on a rank, rows on all ranks): the same on every rank."""
            n = tf.constant(rows)
            return int(hvd.allreduce(n, op=hvd.Min)), int(hvd.allreduce(n, op=hvd.Sum))

        local = None
        if len(shards) >= size:  # each rank reads only its own shards' files
            local = read_split(lake, args.dataset_version, "train", shards=shards[rank::size])
            fewest, train_rows = row_counts(local.num_rows)
            if fewest * size < MIN_SHARD_BALANCE * train_rows:  # every rank decides alike
                reporter.log(
                    f"the train shards split {train_rows:,} rows unevenly ({fewest:,} on the "
                    f"smallest of {size} ranks): every rank reads them all, keeps every "
                    f"{size}th row"
                )
                local = None
        if local is None:  # every rank reads all, keeps every size-th row
            everything = read_split(lake, args.dataset_version, "train")
            local = everything.take(pa.array(np.arange(rank, everything.num_rows, size)))
            fewest, train_rows = row_counts(local.num_rows)
        x, y = _arrays(local)
        val = read_split(lake, args.dataset_version, "validation")
        x_val, y_val = _arrays(val.take(pa.array(np.arange(rank, val.num_rows, size))))

        model = build_model(args.seed)
        loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)

        # Equal step counts on every rank (`fewest`), or the allreduce of the longest one never
        # returns; a dataset smaller than a batch per rank trains on smaller batches instead.
        if fewest == 0:
            raise ValueError(
                f"a worker has no training rows ({train_rows} rows for {size} workers)"
            )
        batch_size, why = choose_batch_size(fewest, args.batch_size)
        auto_micro = 0 if gpus else CPU_MICRO_BATCH  # a GPU wants large kernels, a CPU its cache
        micro = auto_micro if args.micro_batch is None else args.micro_batch
        parts = micro_batch_sizes(batch_size, micro)
        steps = fewest // batch_size
        epochs, epochs_why = choose_epochs(steps, args.epochs)
        reporter.log(
            f"{why}, {steps} steps an epoch"
            + (f", computed in {len(parts)} micro-batches of {parts[0]}" if len(parts) > 1 else "")
            + f"; {epochs_why}"
        )
        rate = args.learning_rate * size
        optimizer = tf.keras.optimizers.Adam(
            tf.keras.optimizers.schedules.CosineDecay(
                rate, decay_steps=epochs * steps, alpha=FINAL_LEARNING_RATE_SHARE
            )
        )
        reporter.log(
            f"learning rate {rate:g} ({args.learning_rate:g} x {size} workers), decaying along "
            f"a cosine to {rate * FINAL_LEARNING_RATE_SHARE:g} by update {epochs * steps:,}"
        )

        # Running sums stay on the device: a step never waits for Python to read a number,
        # so the ranks' steps and allreduces overlap instead of queueing behind each other.
        loss_sum = tf.Variable(0.0, dtype=tf.float64, trainable=False)
        correct_sum = tf.Variable(0.0, dtype=tf.float64, trainable=False)
        x_all, y_all = tf.constant(x), tf.constant(y)

        @tf.function
        def step(idx, first: bool):
            xb, yb = tf.gather(x_all, idx), tf.gather(y_all, idx)
            with tf.GradientTape() as tape:
                loss, hits = mean_loss_in_parts(model, loss_fn, xb, yb, parts)
            # One group: all gradients travel in one fused allreduce, one negotiation per step.
            tape = hvd.DistributedGradientTape(tape, num_groups=1)
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
            if first:  # after the first step, so the optimizer's slots exist too
                hvd.broadcast_variables(model.variables, root_rank=0)
                hvd.broadcast_variables(optimizer.variables(), root_rank=0)
            loss_sum.assign_add(tf.cast(loss, tf.float64))
            correct_sum.assign_add(hits)

        x_val_all, y_val_all = tf.constant(x_val), tf.constant(y_val)
        val_parts = micro_batch_sizes(len(x_val), micro)

        @tf.function
        def validation_hits():
            """Correct validation predictions, in one graph and in the same parts as training."""
            hits = tf.constant(0.0, tf.float64)
            xs, ys = tf.split(x_val_all, val_parts), tf.split(y_val_all, val_parts)
            for xb, yb in zip(xs, ys, strict=True):
                predicted = tf.argmax(model(xb, training=False), 1, output_type=tf.int32)
                hits += tf.reduce_sum(tf.cast(tf.equal(predicted, yb), tf.float64))
            return hits

        @tf.function(input_signature=[tf.TensorSpec([None, batch_size], tf.int64)])
        def train_steps(batches):
            """A whole epoch in one graph: no trip through Python between steps."""
            for i in tf.range(tf.shape(batches)[0]):
                step(batches[i], False)

        rng = np.random.default_rng(args.seed + rank)
        history: list[dict] = []
        started = time.perf_counter()
        first = True
        for epoch in range(1, epochs + 1):
            t0, cpu0 = time.perf_counter(), time.process_time()
            batches = rng.permutation(len(x))[: steps * batch_size].reshape(steps, -1)
            loss_sum.assign(0.0)
            correct_sum.assign(0.0)
            batches = tf.constant(batches)
            if first:  # the first step also broadcasts rank 0's variables
                step(batches[0], True)
                batches, first = batches[1:], False
            train_steps(batches)
            val_correct = float(validation_hits())
            totals = hvd.allreduce(
                tf.constant(
                    [
                        float(loss_sum.numpy()),
                        float(correct_sum.numpy()),
                        float(steps * batch_size),
                        val_correct,
                        float(len(x_val)),
                        time.process_time() - cpu0,
                    ],
                    tf.float64,
                ),
                op=hvd.Sum,
            ).numpy()
            elapsed = time.perf_counter() - t0
            record = {
                "epoch": epoch,
                "loss": totals[0] / (steps * size),
                "accuracy": totals[1] / totals[2],
                "val_accuracy": totals[3] / max(totals[4], 1.0),
                "samples_per_second": totals[2] / elapsed,
                # CPU seconds per rank per second of the epoch: below 1 (one thread each),
                # ranks waited (for each other, or for a core other processes held).
                "cpu_busy": totals[5] / (size * elapsed),
            }
            history.append(record)
            reporter.log(
                f"epoch {epoch}/{epochs}: loss {record['loss']:.4f} accuracy "
                f"{record['accuracy']:.4f} val_accuracy {record['val_accuracy']:.4f} "
                f"samples/s {record['samples_per_second']:,.0f}"
            )
        seconds = time.perf_counter() - started

        metrics = None
        if rank == 0:
            shape = {
                "workers": size,
                "epochs": epochs,
                "train_rows": train_rows,
                "batch_size": batch_size,
                "micro_batch": parts[0],
                "steps_per_epoch": steps,
            }
            metrics = _finish(args, lake, model, loss_fn, history, seconds, shape)
            reporter.log(
                f"test accuracy {metrics.test_accuracy:.4f} (loss {metrics.test_loss:.4f}); "
                f"model saved to {metrics.model_path}"
            )
            reporter.report(metrics)
        hvd.join()
        reporter.close()
        return metrics
    except BaseException as exc:
        reporter.close(exc)
        raise


def _finish(args, lake, model, loss_fn, history, seconds, shape: dict) -> Metrics:
    """Rank 0: test-set evaluation, then the model and its metrics into the lake. `shape`:
    workers, train_rows and how the steps were cut (epochs, batch_size, micro_batch,
    steps_per_epoch).
    """
    from mlassets.lib.datasets import read_split

    x_test, y_test = _arrays(read_split(lake, args.dataset_version, "test"))
    logits = model(x_test, training=False)
    test_loss = float(loss_fn(y_test, logits))
    test_accuracy = float(np.mean(np.argmax(logits.numpy(), 1) == y_test)) if len(y_test) else 0.0
    model_dir = f"models/digit_classifier/{args.model_version}"
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, "model.keras")
        model.save(local)
        lake.fs.put(local, lake.path(f"{model_dir}/model.keras"))
    rate = float(np.mean([h["samples_per_second"] for h in history]))
    metrics = Metrics(
        dataset_version=args.dataset_version,
        model_version=args.model_version,
        model_path=lake.uri(f"{model_dir}/model.keras"),
        test_accuracy=test_accuracy,
        test_loss=test_loss,
        samples_per_second=rate,
        **shape,
        seconds=seconds,
        history=history,
    )
    with lake.fs.open(lake.path(f"{model_dir}/metrics.json"), "w") as f:
        json.dump({**asdict(metrics), "args": asdict(args)}, f, indent=2)
    return metrics


def main(argv: list[str] | None = None) -> None:
    train(parse_args(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
