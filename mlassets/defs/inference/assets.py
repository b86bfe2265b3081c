"""`inference_outputs`: predictions for unlabeled samples from the approved model, as Parquet
in the lake and exported to SQL by the Data Factory `export_predictions` pipeline.

The model is the one `approved_model` points at, nothing else: a model whose blocking
accuracy check failed is never approved, so it never scores. Scoring follows each approval
and each landing on its own (declarative automation, `SCORING_CONDITION`); the `score`
message and the UI start it by hand. Whatever starts it, the `scoring` pool runs one at a
time and only samples without a label or a prediction from the model are scored, so no
sample gets two predictions from one model.
"""

import time
from datetime import UTC, datetime

import dagster as dg

from mlassets.defs.ingestion.assets import landed_events
from mlassets.defs.ingestion.incoming import incoming_events
from mlassets.defs.training.promotion import approved_model
from mlassets.lib.lazy import lazy
from mlassets.lib.metadata import (
    INFERENCE_OUTPUTS,
    ScoringMetadata,
    column_lineage,
    column_schema,
    lake_uri,
)
from mlassets.roles.datafactory import DataFactoryResource, run_metadata
from mlassets.roles.storage import LakeStorage

# Loaded when a run or tick needs them, not when the code location loads.
np = lazy("numpy")
inference = lazy("mlassets.lib.inference")
promotion = lazy("mlassets.lib.promotion")


_APPROVAL = dg.AssetSelection.assets(approved_model)

#: When the automation sensor scores: after a new approval (every unscored sample, for the new
#: model) or a new landing of the hub or of a drop (its unlabelled samples, for the approved
#: model). Like `eager()`, each update is handled once (since_last_handled) and never while a
#: dep or a scoring is in progress, so a burst of landings ends in one scoring per sensor tick
#: at most, and in one after it. Unlike `eager()`, only a missing approval holds it back: a
#: drop partition that never imported (or none at all) must not stop the hub's events from
#: being scored. A model whose test_accuracy check failed is never approved (approved_model
#: waits for that blocking check), so it never scores; drops' blocking checks guard only
#: their own run, since the rows they landed are already in the landed table.
SCORING_CONDITION = (
    (dg.AutomationCondition.newly_missing() | dg.AutomationCondition.any_deps_updated())
    .since_last_handled()
    .with_label("a new approval or landing since the last scoring")
    & ~dg.AutomationCondition.any_deps_missing()
    .allow(_APPROVAL)
    .with_label("no model approved yet")
    & ~dg.AutomationCondition.any_deps_in_progress().with_label(
        "an approval or landing in progress"
    )
    & ~dg.AutomationCondition.in_progress().with_label("a scoring queued or running")
).with_label("score what is new with the approved model")


@dg.asset(
    key=INFERENCE_OUTPUTS,
    deps=[approved_model, landed_events, incoming_events],
    group_name="inference",
    description="Predicted digit, probability and model version for every landed sample that has "
    "no label and no prediction from the current model, under `predictions/model=<version>/`, "
    "then upserted into the SQL table `predictions` by the `export_predictions` pipeline.",
    kinds={"parquet", "tensorflow", "sql"},
    # One scoring at a time (dagster_home/dagster.yaml): the samples still to score are found,
    # then scored, so two at once would score the same samples twice.
    pool="scoring",
    automation_condition=SCORING_CONDITION,
)
def inference_outputs(
    context: dg.AssetExecutionContext, lake: LakeStorage, data_factory: DataFactoryResource
) -> dg.MaterializeResult:
    try:
        model = promotion.read_pointer(lake)
    except promotion.PointerError as exc:
        raise dg.Failure(f"{exc}: materialize approved_model again", allow_retries=False) from exc
    if model is None:
        raise dg.Failure(
            "no model is approved yet: train one that passes its test_accuracy check (job "
            "train_model approves it)",
            allow_retries=False,
        )
    samples = inference.unscored_samples(lake, model.version)
    keras_model = inference.load(model, lake) if samples.num_rows else None
    started = time.perf_counter()
    predictions = inference.score(keras_model, samples, model.version, run_id=context.run_id)
    seconds = time.perf_counter() - started
    path = None
    if predictions.num_rows:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        path = f"{inference.predictions_dir(model.version)}/scored-{stamp}.parquet"
        lake.write_parquet(path, predictions)
    context.log.info(
        f"model {model.version} scored {predictions.num_rows} samples in {seconds:.2f}s"
        + (f" -> {path}" if path else " (nothing new to score)")
    )
    # The upsert is keyed by (sample_id, model_version), so exporting the model's whole
    # folder again is idempotent and also heals an export that failed after scoring.
    export_meta = {}
    if lake.glob(f"{inference.predictions_dir(model.version)}/*.parquet"):
        export = data_factory.run_pipeline(
            "export_predictions",
            {
                "sourceFolder": inference.predictions_dir(model.version),
                "targetTable": "predictions",
            },
            log=context.log,
        )
        export_meta = run_metadata(export, prefix="export_")
    classes = predictions["predicted_class"].to_numpy()
    confidence = predictions["probability"].to_numpy()
    counts = np.bincount(classes, minlength=10) if len(classes) else np.zeros(10, int)
    from mlassets.lib.tables import running_total

    previous = ScoringMetadata.latest(context.instance)
    return dg.MaterializeResult(
        metadata=ScoringMetadata(
            rows_scored=predictions.num_rows,
            model_version=model.version,
            model_test_accuracy=model.test_accuracy,
            mean_confidence=float(confidence.mean()) if len(confidence) else 0.0,
            rows_per_second=(
                round(predictions.num_rows / seconds, 1)
                if seconds and predictions.num_rows
                else 0.0
            ),
            class_distribution=dg.MetadataValue.table(
                [dg.TableRecord({"class": c, "rows": int(counts[c])}) for c in range(10)],
                schema=dg.TableSchema(
                    columns=[dg.TableColumn("class", "int"), dg.TableColumn("rows", "int")]
                ),
            ),
            path=lake.uri(inference.predictions_dir(model.version)),
            export_run=export_meta,
            # Every prediction in the lake, of every model: carried, not counted.
            row_count=running_total(
                previous.row_count if previous else None,
                predictions.num_rows,
                lake,
                f"{inference.PREDICTIONS_PREFIX}/model=*/*.parquet",
            ),
            column_schema=column_schema(inference.PREDICTION_SCHEMA),
            column_lineage=column_lineage(inference.PREDICTION_LINEAGE),
            uri=lake_uri(lake.uri(inference.PREDICTIONS_PREFIX)),
        ).to_metadata(),
    )


score_events = dg.define_asset_job(
    "score_events",
    selection=dg.AssetSelection.assets(inference_outputs),
    description="Score unlabeled samples with the approved model and export to SQL.",
)
