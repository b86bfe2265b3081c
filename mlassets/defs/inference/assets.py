"""`inference_outputs`: predictions for unlabeled samples from the approved model, as Parquet
in the lake and exported to SQL by the Data Factory `export_predictions` pipeline.

The model is the one `approved_model` points at, nothing else: a model whose blocking
accuracy check failed is never approved, so it never scores. Scoring follows each approval
and each landing on its own (declarative automation, `SCORING_CONDITION`); the `score`
message and the UI start it by hand. Whatever starts it, the `scoring` pool runs one at a
time, and each batch of samples is claimed in the lake (`lib/scoring`), so no sample gets two
predictions from one model even when two scorings overlap or one is killed.
"""

import time
from dataclasses import dataclass, field

import dagster as dg

from mlassets.defs.ingestion.assets import landed_events
from mlassets.defs.ingestion.incoming import incoming_events
from mlassets.defs.training.promotion import approved_model
from mlassets.lib.layout import PREDICTIONS_PREFIX
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
sample_state = lazy("mlassets.lib.sample_state")
scoring = lazy("mlassets.lib.scoring")
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
    # One scoring at a time (dagster_home/dagster.yaml), as a courtesy to the cores: the
    # guarantee that a sample is scored once is the claim chain in the lake (`scoring`).
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
    # New landings and label changes move the sample state on; then each claim of this
    # model's chain scores what is new since the one before it (module `scoring`).
    state = sample_state.advance(lake, log=context.log.info)
    tally = _Tally()
    loaded: list = []

    def keras_model():
        if not loaded:
            loaded.append(inference.load(model, lake))
        return loaded[0]

    def score_chunk(claim, j: int, chunk) -> int:
        started = time.perf_counter()
        predictions = inference.score(keras_model(), chunk, model.version, run_id=context.run_id)
        tally.seconds += time.perf_counter() - started
        lake.write_parquet(
            f"{scoring.batch_dir(model.version, claim.number)}/part-{j:05d}.parquet", predictions
        )
        tally.add(predictions)
        return predictions.num_rows

    scoring.score_new(
        lake, model.version, state, score_chunk, run_id=context.run_id, log=context.log.info
    )
    context.log.info(
        f"model {model.version} scored {tally.rows} samples in {tally.seconds:.2f}s"
        + ("" if tally.rows else " (nothing new to score)")
    )
    # Each batch is exported once it is done; one whose export failed is exported again by
    # the next scoring (the upsert is keyed by (sample_id, model_version): idempotent).
    export_meta: dict = {}
    for claim in scoring.read_claims(lake, model.version):
        if claim.done and not claim.exported:
            export = data_factory.run_pipeline(
                "export_predictions",
                {
                    "sourceFolder": scoring.batch_dir(model.version, claim.number),
                    "targetTable": "predictions",
                },
                log=context.log,
            )
            scoring.mark_exported(lake, model.version, claim.number)
            export_meta = run_metadata(export, prefix="export_")
    counts = tally.counts
    seconds = tally.seconds
    from mlassets.lib.tables import running_total

    previous = ScoringMetadata.latest(context.instance)
    return dg.MaterializeResult(
        metadata=ScoringMetadata(
            rows_scored=tally.rows,
            model_version=model.version,
            model_test_accuracy=model.test_accuracy,
            mean_confidence=tally.confidence / tally.rows if tally.rows else 0.0,
            rows_per_second=round(tally.rows / seconds, 1) if seconds and tally.rows else 0.0,
            class_distribution=dg.MetadataValue.table(
                [dg.TableRecord({"class": c, "rows": int(counts[c])}) for c in range(10)],
                schema=dg.TableSchema(
                    columns=[dg.TableColumn("class", "int"), dg.TableColumn("rows", "int")]
                ),
            ),
            path=lake.uri(scoring.model_dir(model.version)),
            export_run=export_meta,
            # Every prediction in the lake, of every model: carried, not counted.
            row_count=running_total(
                previous.row_count if previous else None,
                tally.rows,
                lake,
                f"{PREDICTIONS_PREFIX}/model=*/batch=*/*.parquet",
            ),
            column_schema=column_schema(inference.PREDICTION_SCHEMA),
            column_lineage=column_lineage(inference.PREDICTION_LINEAGE),
            uri=lake_uri(lake.uri(PREDICTIONS_PREFIX)),
        ).to_metadata(),
    )


@dataclass
class _Tally:
    """What a scoring run scored, over all its batches and chunks."""

    rows: int = 0
    seconds: float = 0.0
    confidence: float = 0.0
    counts: list[int] = field(default_factory=lambda: [0] * 10)

    def add(self, predictions) -> None:
        classes = predictions["predicted_class"].to_numpy()
        self.counts = (np.array(self.counts) + np.bincount(classes, minlength=10)).tolist()
        self.confidence += float(predictions["probability"].to_numpy().sum())
        self.rows += predictions.num_rows


score_events = dg.define_asset_job(
    "score_events",
    selection=dg.AssetSelection.assets(inference_outputs),
    description="Score unlabeled samples with the approved model and export to SQL.",
)
