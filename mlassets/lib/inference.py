"""Scoring: which models may score, and the batch prediction itself (which samples need one
is `scoring`'s). TensorFlow is imported only inside `load` and `score`.
"""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mlassets.lib.events import PIXELS
from mlassets.lib.metadata import APPROVED_MODEL, LABELS, LANDED_EVENTS, ApprovalMetadata
from mlassets.lib.promotion import ApprovedModel
from mlassets.roles.storage import LakeStorage

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
    "predicted_class": [(LANDED_EVENTS, "pixels"), (APPROVED_MODEL, "model_version")],
    "probability": [(LANDED_EVENTS, "pixels"), (APPROVED_MODEL, "model_version")],
    "model_version": [(APPROVED_MODEL, "model_version")],
}


def approved_models(instance: dg.DagsterInstance, limit: int = 100) -> list[ApprovedModel]:
    """Every model approved for scoring (approved_model's materializations), newest first.

    The model that scores now is the pointer's (`promotion.read_pointer`); this is the
    history, for lineage: which models have ever been allowed to score.
    """
    models: dict[str, ApprovedModel] = {}
    for recorded in ApprovalMetadata.records(instance, limit=limit):
        approval = recorded.metadata
        models.setdefault(
            approval.model_version,
            ApprovedModel(
                version=approval.model_version,
                path=approval.model_path,
                test_accuracy=approval.test_accuracy,
                threshold=approval.threshold,
                dataset_version=approval.dataset_version,
                run_id=recorded.run_id,
            ),
        )
    return sorted(models.values(), key=lambda m: m.version, reverse=True)


def load(model: ApprovedModel, lake: LakeStorage):
    """The Keras model of an approved version (imports TensorFlow)."""
    from mlassets.training_program.model import load_model

    return load_model(_local_copy(model.path, lake))


def score(keras_model, samples: pa.Table, version: str, run_id: str | None = None) -> pa.Table:
    """One vectorized prediction over all samples -> PREDICTION_SCHEMA, stamped with the
    run that scored them. The model runs as one compiled graph over large chunks
    (`predict_classes`), and columns are built from numpy and `take`, never per-row Python
    objects."""
    if samples.num_rows == 0:
        return PREDICTION_SCHEMA.empty_table()
    from mlassets.training_program.model import predict_classes

    pixels = pc.list_flatten(samples["pixels"]).to_numpy(zero_copy_only=False).reshape(-1, PIXELS)
    classes, probability = predict_classes(keras_model, pixels)
    n = len(classes)
    first = pa.array(np.zeros(n, np.int32))  # row i takes the one value of a constant column
    scored_at = pa.array([datetime.now(UTC)], PREDICTION_SCHEMA.field("scored_at").type)
    return pa.table(
        {
            "sample_id": samples["sample_id"],
            "predicted_class": pa.array(classes, pa.int64()),
            "probability": pa.array(probability, pa.float64()),
            "model_version": pa.array([version], pa.string()).take(first),
            "scored_at": scored_at.take(first),
            "run_id": pa.array([run_id], pa.string()).take(first),
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
