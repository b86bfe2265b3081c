"""`inference_outputs`: predictions for unlabeled samples from the approved model, as Parquet
in the lake and exported to SQL by the Data Factory `export_predictions` pipeline.

The model is the one `approved_model` points at, nothing else: a model whose blocking
accuracy check failed is never approved, so it never scores. Scoring follows each approval
on its own (declarative automation); the `score` message and the UI start it by hand.
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
    # Follows a new approval. Landings alone do not start a scoring here: that is the
    # `score` message's (or a policy's) decision.
    automation_condition=dg.AutomationCondition.eager().ignore(
        dg.AssetSelection.assets(landed_events, incoming_events)
    ),
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
