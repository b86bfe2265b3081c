"""`retraining_sensor`: train when the data says so, not on a timer.

The first model: once events have landed and every digit has at least the `quality`
resource's min_class_rows labels in the train split (the rule of training_dataset's blocking
class_balance check, counted by the labels asset), until then the skip reason names the
digits that are short. Then policies, each against the dataset the newest model was
trained on (thresholds: the `retraining_policy` resource, from the MLASSETS_RETRAIN_*
variables):
- new labels: the labels table grew by at least `new_labels_fraction`;
- corrections: at least `corrections` label updates arrived by CDC;
- drift: the pixel distribution of newly landed events moved away from the training split's
  (population stability index >= `psi`).
It stays quiet during a cooldown after the last training and while a training run is queued
or running. The reason travels as run tags and ends up in the model's metadata.

A tick reads event-log metadata only (through `mlassets.lib.metadata`); the drift policy
reads the Parquet of one landing, and only when a landing happened since the last tick.
"""

import json
from datetime import UTC, datetime

import dagster as dg

from mlassets.defs.quality import QualityPolicy, RetrainingPolicy
from mlassets.defs.training.model import train_model
from mlassets.lib.lazy import lazy
from mlassets.lib.metadata import (
    CaptureMetadata,
    DatasetMetadata,
    IncomingMetadata,
    LabelsMetadata,
    LandingMetadata,
    ModelMetadata,
)
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


def first_model(
    instance: dg.DagsterInstance, quality: QualityPolicy, cursor: dict
) -> tuple[str | None, str, dict]:
    """Before any digit_classifier: ("first_model", reason, cursor) once the labelled data
    passes the rules that guard training_dataset (events landed, labels synced, every digit
    with at least `min_class_rows` labels in the train split); (None, what is missing,
    cursor) until then. Metadata only: the labels asset counts its train-split labels.

    A first training that failed anyway (labels for samples that had not landed yet) is
    tried again only after new labels or a new landing, not on every tick.
    """
    landing = LandingMetadata.latest_recorded(instance)
    drop = IncomingMetadata.latest_recorded(instance)
    if landing is None and drop is None:
        return None, "first model: no events have landed yet (landed_events)", cursor
    labels = LabelsMetadata.latest_recorded(instance)
    if labels is None or not labels.metadata.row_count:
        return None, "first model: no labels synced yet (sync_labels)", cursor
    counts = labels.metadata.train_labels_per_class
    if len(counts) != 10:
        missing = "first model: the newest labels materialization has no per-class counts"
        return None, f"{missing}: materialize labels", cursor
    threshold = max(quality.min_class_rows, 1)
    short = {digit: n for digit, n in enumerate(counts) if n < threshold}
    if short:
        listed = ", ".join(f"{d} ({n})" for d, n in short.items())
        return (
            None,
            f"first model: {labels.metadata.row_count:,} labels, but digits {listed} have "
            f"fewer than {threshold} in the train split (MLASSETS_MIN_CLASS_ROWS)",
            cursor,
        )
    inputs = [labels.storage_id, max(r.storage_id for r in (landing, drop) if r is not None)]
    if cursor.get("first_model") == inputs:
        return (
            None,
            "first model: the training requested for these labels and landings did not "
            "produce a model (see the train_model run); waiting for new labels or events",
            cursor,
        )
    return (
        "first_model",
        f"first model: {labels.metadata.row_count:,} labels, every class >= {threshold} rows "
        f"in the train split (fewest: {min(counts)})",
        {**cursor, "first_model": inputs},
    )


def evaluate(
    instance: dg.DagsterInstance,
    lake: LakeStorage,
    policy: RetrainingPolicy,
    cursor: dict,
    quality: QualityPolicy | None = None,
) -> tuple[str | None, str | None, dict]:
    """(policy name, reason, new cursor); (None, why-not, cursor) when nothing fires."""
    model = ModelMetadata.latest(instance)
    if model is None:
        if quality is None:
            return None, "no digit_classifier yet", cursor
        return first_model(instance, quality, cursor)
    dataset = DatasetMetadata.of_version(instance, model.dataset_version)
    if dataset is None:
        return None, "the newest model's dataset is not in the event log", cursor
    ds = dataset.metadata

    labels_now = LabelsMetadata.latest(instance)
    if labels_now is not None:
        before = ds.labels_read
        now = labels_now.row_count or 0
        grown = (now - before) / before if before else (1.0 if now else 0.0)
        if grown >= policy.new_labels_fraction:
            return (
                "new_labels",
                f"labels grew {grown:.0%} ({before} -> {now}) since dataset {ds.version}",
                cursor,
            )

    captures = CaptureMetadata.records(instance, dataset.storage_id, limit=1000)
    corrections = sum(r.metadata.updates for r in captures)
    if corrections >= policy.corrections:
        return (
            "corrections",
            f"{corrections} label corrections since dataset {ds.version}",
            cursor,
        )

    reference = ds.pixel_histogram
    after = max(dataset.storage_id, cursor.get("landed", 0))
    landings = [  # hub landings and imported drops: both add rows to the landed table
        *LandingMetadata.records(instance, after, limit=1000),
        *IncomingMetadata.records(instance, after, limit=1000),
    ]
    cursor = {**cursor, "landed": max([cursor.get("landed", 0), *(r.storage_id for r in landings)])}
    # A landing's small files are merged by compaction and deleted 10 minutes later: the
    # recent ones are read; a sensor that fell far behind measures drift on what is left.
    files = [f for r in landings for f in r.metadata.files if lake.exists(f)]
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
    description="Requests train_model for the first model once every digit has enough "
    "labels, then when new labels, label corrections or pixel drift say the current model is "
    "stale; with a cooldown, never while a training is queued or running. The skip reason "
    "says why not.",
)
def retraining_sensor(
    context: dg.SensorEvaluationContext,
    lake: LakeStorage,
    retraining_policy: RetrainingPolicy,
    quality: QualityPolicy,
) -> dg.SensorResult:
    cursor = json.loads(context.cursor) if context.cursor else {}
    policy = retraining_policy
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
    fired, reason, cursor = evaluate(context.instance, lake, policy, cursor, quality)
    if fired is None:
        return dg.SensorResult(skip_reason=reason, cursor=json.dumps(cursor))
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=f"retrain:{fired}:{datetime.now(UTC):%Y%m%dT%H%M%S}",
                tags={
                    "mlassets/trigger": "retraining_sensor",
                    "mlassets/retrain-policy": fired,
                    "mlassets/retrain-reason": reason,
                },
            )
        ],
        cursor=json.dumps(cursor),
    )
