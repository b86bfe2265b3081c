"""`retraining_sensor`: retrain when the data says so, not on a timer.

Policies, each against the dataset the newest model was trained on:
- new labels: the labels table grew by at least MLASSETS_RETRAIN_NEW_LABELS (10%);
- corrections: at least MLASSETS_RETRAIN_CORRECTIONS label updates arrived by CDC;
- drift: the pixel distribution of newly landed events moved away from the training split's
  (population stability index >= MLASSETS_RETRAIN_PSI, 0.2).
It stays quiet during a cooldown after the last training and while a training run is queued
or running. The reason travels as run tags and ends up in the model's metadata.

A tick reads event-log metadata only; the drift policy reads the Parquet of one landing, and
only when a landing happened since the last tick.
"""

import json
from dataclasses import dataclass
from datetime import UTC, datetime

import dagster as dg

from mlassets import settings
from mlassets.defs.training.model import TRAINING_POOL_TAG, train_model
from mlassets.lib.lazy import lazy
from mlassets.roles.storage import LakeStorage

# Loaded when a run or tick needs them, not when the code location loads.
datasets = lazy("mlassets.lib.datasets")
events = lazy("mlassets.lib.events")

ACTIVE = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


@dataclass(frozen=True)
class Policy:
    new_labels_fraction: float = 0.10
    corrections: int = 50
    psi: float = 0.2
    cooldown_minutes: float = 30.0

    @classmethod
    def from_settings(cls) -> "Policy":
        return cls(
            new_labels_fraction=float(settings.get("MLASSETS_RETRAIN_NEW_LABELS") or 0.10),
            corrections=int(settings.get("MLASSETS_RETRAIN_CORRECTIONS") or 50),
            psi=float(settings.get("MLASSETS_RETRAIN_PSI") or 0.2),
            cooldown_minutes=float(settings.get("MLASSETS_RETRAIN_COOLDOWN_MINUTES") or 30),
        )


def _meta(record) -> dict:
    return {k: v.value for k, v in record.asset_materialization.metadata.items()}


def _latest(instance: dg.DagsterInstance, key: str):
    records = instance.fetch_materializations(dg.AssetKey(key), limit=1).records
    return records[0] if records else None


def _since(instance: dg.DagsterInstance, key: str, after_storage_id: int, limit: int = 1000):
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(key), after_storage_id=after_storage_id),
        limit=limit,
    ).records
    return records


def _dataset_of(instance: dg.DagsterInstance, version: str):
    for record in instance.fetch_materializations(
        dg.AssetKey("training_dataset"), limit=200
    ).records:
        if _meta(record).get("version") == version:
            return record
    return None


def evaluate(
    instance: dg.DagsterInstance, lake: LakeStorage, policy: Policy, cursor: dict
) -> tuple[str | None, str | None, dict]:
    """(policy name, reason, new cursor); (None, why-not, cursor) when nothing fires."""
    model = _latest(instance, "digit_classifier")
    if model is None:
        return None, "no digit_classifier yet: the first one is trained on demand", cursor
    dataset = _dataset_of(instance, _meta(model).get("dataset_version", ""))
    if dataset is None:
        return None, "the newest model's dataset is not in the event log", cursor
    ds = _meta(dataset)

    labels_now = _latest(instance, "labels")
    if labels_now is not None:
        before = int(ds.get("labels_read") or 0)
        now = int(_meta(labels_now).get("row_count") or 0)
        grown = (now - before) / before if before else (1.0 if now else 0.0)
        if grown >= policy.new_labels_fraction:
            return (
                "new_labels",
                f"labels grew {grown:.0%} ({before} -> {now}) since dataset {ds['version']}",
                cursor,
            )

    corrections = sum(
        int(_meta(r).get("updates") or 0)
        for r in _since(instance, "cdc_deltas", dataset.storage_id)
    )
    if corrections >= policy.corrections:
        return (
            "corrections",
            f"{corrections} label corrections since dataset {ds['version']}",
            cursor,
        )

    reference = ds.get("pixel_histogram")
    landings = _since(instance, "landed_events", max(dataset.storage_id, cursor.get("landed", 0)))
    cursor = {**cursor, "landed": max([cursor.get("landed", 0), *(r.storage_id for r in landings)])}
    files = [f for r in landings for f in (_meta(r).get("files") or [])]
    if reference and files:
        recent = lake.read_parquet(files, columns=["pixels"], schema=events.LANDED_SCHEMA)
        if recent.num_rows:
            psi = datasets.population_stability_index(
                reference, datasets.pixel_histogram(recent["pixels"])
            )
            if psi >= policy.psi:
                return (
                    "drift",
                    f"pixel drift PSI {psi:.3f} over {recent.num_rows} new events "
                    f"(threshold {policy.psi})",
                    cursor,
                )
    return None, "no policy fired", cursor


@dg.sensor(
    name="retraining_sensor",
    job=train_model,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Requests train_model when new labels, label corrections or pixel drift say "
    "the current model is stale; with a cooldown, never while training runs.",
)
def retraining_sensor(context: dg.SensorEvaluationContext, lake: LakeStorage) -> dg.SensorResult:
    cursor = json.loads(context.cursor) if context.cursor else {}
    policy = Policy.from_settings()
    training = context.instance.get_runs(
        filters=dg.RunsFilter(job_name=train_model.name, statuses=ACTIVE), limit=1
    )
    if training:
        return dg.SensorResult(skip_reason="a train_model run is queued or running")
    last = context.instance.get_run_records(
        filters=dg.RunsFilter(job_name=train_model.name), limit=1
    )
    if last:
        age = (datetime.now(UTC) - last[0].create_timestamp).total_seconds() / 60
        if age < policy.cooldown_minutes:
            return dg.SensorResult(
                skip_reason=f"cooldown: the last training started {age:.0f} min ago "
                f"(cooldown {policy.cooldown_minutes:.0f} min)"
            )
    fired, reason, cursor = evaluate(context.instance, lake, policy, cursor)
    if fired is None:
        return dg.SensorResult(skip_reason=reason, cursor=json.dumps(cursor))
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=f"retrain:{fired}:{datetime.now(UTC):%Y%m%dT%H%M%S}",
                tags={
                    **TRAINING_POOL_TAG,
                    "mlassets/trigger": "retraining_sensor",
                    "mlassets/retrain-policy": fired,
                    "mlassets/retrain-reason": reason,
                },
            )
        ],
        cursor=json.dumps(cursor),
    )
