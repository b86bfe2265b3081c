"""`digit_classifier`: a Keras model trained with Horovod, through Dagster Pipes, gated by a
blocking accuracy check."""

import dataclasses
from datetime import UTC, datetime

import dagster as dg
from pydantic import Field

from mlassets.defs.quality import QualityPolicy
from mlassets.defs.training.dataset import training_dataset
from mlassets.lib.layout import MODEL_PREFIX
from mlassets.lib.metadata import (
    APPROVED_MODEL,
    DIGIT_CLASSIFIER,
    AccuracyCheckMetadata,
    DatasetMetadata,
    ModelMetadata,
)
from mlassets.roles.storage import LakeStorage
from mlassets.roles.training import TrainingCompute, TrainingJob


class TrainingConfig(dg.Config):
    epochs: int | None = Field(
        default=None,
        description="passes over the training split. Empty: 12, or more when the data is too "
        "small for 600 updates in 12 (a few thousand rows)",
    )
    batch_size: int | None = Field(
        default=None,
        description="samples per worker per step (one gradient allreduce). Empty: grows with "
        "the data, from 32 up to 2048 while every worker keeps at least 32 steps an epoch; "
        "larger steps scale better across workers",
    )
    learning_rate: float = Field(
        default=0.002, description="Adam learning rate for one worker, scaled by the worker count"
    )
    seed: int = Field(default=1234, description="same dataset, config and workers: same model")
    micro_batch: int | None = Field(
        default=None,
        description="rows computed at once inside a step (0: the whole step). Empty: 256 on "
        "CPUs, whose caches hold that much, the whole step on GPUs",
    )


def _auto(value: int | None) -> str:
    return "auto" if value is None else str(value)


def model_version(dataset_version: str, now: datetime | None = None) -> str:
    """Sortable by time, and says which dataset it saw."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S")
    return f"{stamp}-{dataset_version[:8]}"


@dg.asset(
    key=DIGIT_CLASSIFIER,
    deps=[training_dataset],
    group_name="training",
    description="A small CNN for 8x8 digits trained with Horovod (local Gloo workers or an Azure "
    "Batch GPU pool); the model and its metrics under `models/digit_classifier/<version>/`.",
    kinds={"tensorflow", "keras"},
    # One training at a time (dagster_home/dagster.yaml): it takes every core it is given.
    pool="training",
)
def digit_classifier(
    context: dg.AssetExecutionContext,
    config: TrainingConfig,
    lake: LakeStorage,
    training_compute: TrainingCompute,
) -> dg.MaterializeResult:
    upstream = DatasetMetadata.latest(context.instance)
    if upstream is None or not upstream.version:
        raise dg.Failure("training_dataset has never been materialized: build it first")
    dataset_version = upstream.version
    version = model_version(dataset_version)
    context.log.info(
        f"training model {version} on dataset {dataset_version} ({training_compute.description})"
    )
    job = TrainingJob(
        module="mlassets.training_program.train",
        args=[
            "--lake-url",
            lake.url,
            "--dataset-version",
            dataset_version,
            "--model-version",
            version,
            "--epochs",
            _auto(config.epochs),
            "--batch-size",
            _auto(config.batch_size),
            "--micro-batch",
            _auto(config.micro_batch),
            "--learning-rate",
            str(config.learning_rate),
            "--seed",
            str(config.seed),
        ],
        env=(
            {"MLASSETS_STORAGE_CONNECTION_STRING": lake.connection_string}
            if lake.connection_string
            else {}
        ),
        extras={"dataset_version": dataset_version, "model_version": version},
    )
    reason = context.run.tags.get("mlassets/retrain-reason")
    result = training_compute.run(context, job).get_materialize_result()
    reported = dataclasses.replace(
        ModelMetadata.from_metadata(result),
        compute=training_compute.description,
        model_dir=lake.uri(f"{MODEL_PREFIX}/{version}"),
        retrain_reason=reason or None,
    )
    return dg.MaterializeResult(
        asset_key=result.asset_key,
        metadata=reported.to_metadata(),
        data_version=result.data_version,
    )


@dg.asset_check(
    asset=digit_classifier,
    name="test_accuracy",
    description="Test accuracy of the newest model is at least the `quality` resource's "
    "min_test_accuracy (MLASSETS_MIN_TEST_ACCURACY). Blocking: a model that fails it is never "
    "used for scoring.",
    blocking=True,
)
def digit_classifier_test_accuracy(
    context: dg.AssetCheckExecutionContext, quality: QualityPolicy
) -> dg.AssetCheckResult:
    model = ModelMetadata.latest(context.instance) or ModelMetadata()
    accuracy = model.test_accuracy
    threshold = quality.min_test_accuracy
    version = model.model_version or None
    return dg.AssetCheckResult(
        passed=accuracy >= threshold,
        metadata=AccuracyCheckMetadata(
            test_accuracy=accuracy, threshold=threshold, model_version=version or "-"
        ).to_metadata(),
        description=f"model {version}: test accuracy {accuracy:.4f} (threshold {threshold:.2f})",
    )


train_model = dg.define_asset_job(
    "train_model",
    # approved_model by key: its module imports this one.
    selection=dg.AssetSelection.assets(training_dataset, digit_classifier, APPROVED_MODEL),
    description="Build the training dataset, train the digit classifier with Horovod and, "
    "when it passes its blocking accuracy check, approve it for scoring.",
)
