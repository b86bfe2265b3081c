"""Scoring: which model may score, which samples still need a prediction, and the batch
prediction itself. TensorFlow is imported only inside `score`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mlassets.lib import cdc
from mlassets.lib.datasets import latest_per_sample
from mlassets.lib.events import LANDED_SCHEMA, PIXELS
from mlassets.lib.landing import LANDED_PREFIX
from mlassets.lib.layout import PREDICTIONS_PREFIX
from mlassets.lib.metadata import (
    DIGIT_CLASSIFIER,
    LABELS,
    LANDED_EVENTS,
    AccuracyCheckMetadata,
    ModelMetadata,
)
from mlassets.roles.storage import LakeStorage

ACCURACY_CHECK = dg.AssetCheckKey(DIGIT_CLASSIFIER, "test_accuracy")

PREDICTION_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("predicted_class", pa.int64(), nullable=False),
        pa.field("probability", pa.float64(), nullable=False),
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("scored_at", pa.timestamp("us", tz="UTC"), nullable=False),
        # The Dagster run that scored it (row-level lineage); empty when scored outside a run.
        pa.field("run_id", pa.string()),
    ]
)

#: Where each prediction column comes from: the sample's pixels, through the model.
PREDICTION_LINEAGE = {
    "sample_id": [(LANDED_EVENTS, "sample_id"), (LABELS, "sample_id")],  # unlabelled ones
    "predicted_class": [(LANDED_EVENTS, "pixels"), (DIGIT_CLASSIFIER, "model_version")],
    "probability": [(LANDED_EVENTS, "pixels"), (DIGIT_CLASSIFIER, "model_version")],
    "model_version": [(DIGIT_CLASSIFIER, "model_version")],
}


@dataclass(frozen=True)
class ApprovedModel:
    version: str
    path: str
    test_accuracy: float


def approved_models(instance: dg.DagsterInstance, limit: int = 100) -> list[ApprovedModel]:
    """Models whose blocking accuracy check passed, newest first.

    The check records the model version it judged, which ties each passing evaluation to one
    materialization; a model whose check failed (or never ran) is never returned.
    """
    history = instance.event_log_storage.get_asset_check_execution_history(
        ACCURACY_CHECK, limit=limit
    )
    versions: set[str] = set()
    for record in history:
        evaluation = record.event.dagster_event.event_specific_data if record.event else None
        if isinstance(evaluation, dg.AssetCheckEvaluation) and evaluation.passed:
            versions.add(AccuracyCheckMetadata.from_metadata(evaluation.metadata).model_version)
    models = []
    for recorded in ModelMetadata.records(instance, limit=limit):
        model = recorded.metadata
        if model.model_version in versions:
            models.append(ApprovedModel(model.model_version, model.model_path, model.test_accuracy))
            versions.discard(model.model_version)
    return sorted(models, key=lambda m: m.version, reverse=True)


def current_model(instance: dg.DagsterInstance) -> ApprovedModel | None:
    models = approved_models(instance)
    return models[0] if models else None


def predictions_dir(version: str) -> str:
    return f"{PREDICTIONS_PREFIX}/model={version}"


def unscored_samples(lake: LakeStorage, version: str) -> pa.Table:
    """Landed samples (latest event each) with no label and no prediction from `version`."""
    files = lake.glob(f"{LANDED_PREFIX}/partition=*/*.parquet")
    events = lake.read_parquet(
        files,
        columns=["sample_id", "pixels", "captured_at", "sequence_number"],
        schema=LANDED_SCHEMA,
    )
    latest = latest_per_sample(events)
    labeled = cdc.read_labels_table(lake, columns=["sample_id"])["sample_id"]
    scored_files = lake.glob(f"{predictions_dir(version)}/*.parquet")
    scored = lake.read_parquet(scored_files, columns=["sample_id"], schema=PREDICTION_SCHEMA)[
        "sample_id"
    ]
    known = pa.chunked_array([*labeled.chunks, *scored.chunks], pa.string())
    keep = pc.invert(pc.is_in(latest["sample_id"], value_set=known.combine_chunks()))
    return latest.filter(keep).select(["sample_id", "pixels"])


def load(model: ApprovedModel, lake: LakeStorage):
    """The Keras model of an approved version (imports TensorFlow)."""
    from mlassets.training_program.model import load_model

    return load_model(_local_copy(model.path, lake))


def score(keras_model, samples: pa.Table, version: str, run_id: str | None = None) -> pa.Table:
    """One vectorized prediction over all samples -> PREDICTION_SCHEMA, stamped with the
    run that scored them."""
    if samples.num_rows == 0:
        return PREDICTION_SCHEMA.empty_table()
    from mlassets.training_program.model import predict_proba

    pixels = pc.list_flatten(samples["pixels"]).to_numpy(zero_copy_only=False).reshape(-1, PIXELS)
    proba = predict_proba(keras_model, pixels)
    classes = proba.argmax(axis=1)
    now = datetime.now(UTC)
    return pa.table(
        {
            "sample_id": samples["sample_id"],
            "predicted_class": pa.array(classes, pa.int64()),
            "probability": pa.array(proba[np.arange(len(classes)), classes].astype(np.float64)),
            "model_version": pa.array(np.full(len(classes), version, dtype=object), pa.string()),
            "scored_at": pa.array(np.full(len(classes), now), pa.timestamp("us", tz="UTC")),
            "run_id": pa.array([run_id] * len(classes), pa.string()),
        },
        schema=PREDICTION_SCHEMA,
    )


def _local_copy(model_path: str, lake: LakeStorage) -> str:
    """Keras loads from a local file; a model in Blob Storage is downloaded once."""
    if lake.is_local:
        return model_path
    import os
    import tempfile

    target = os.path.join(tempfile.mkdtemp(prefix="mlassets-model-"), "model.keras")
    lake.fs.get(lake.path(lake.relative(model_path.removeprefix("abfs://"))), target)
    return target
