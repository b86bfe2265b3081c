"""`approved_model`: the newest digit_classifier that cleared the accuracy bar, the one that
scores.

Approval is an asset of its own, so the graph shows it, the UI says which model is approved
and why, and scoring depends on it instead of searching check records. Two guards keep a
failing model out:

- in a run with the model (`train_model`, `end_to_end`), the blocking test_accuracy check
  stops the run before `approved_model` when it fails, and the automation condition waits
  for every blocking check of digit_classifier to pass;
- the compute itself holds the model's metrics to the same bar (the `quality` resource), so
  a Materialize of `approved_model` alone cannot approve a model that check would fail: it
  fails, and the model approved before stays approved.

When it approves a model, `inference_outputs` follows (declarative automation), and the
`score` message stays as a manual trigger.
"""

from datetime import UTC, datetime

import dagster as dg

from mlassets.defs.quality import QualityPolicy
from mlassets.defs.training.model import digit_classifier
from mlassets.lib.lazy import lazy
from mlassets.lib.metadata import APPROVED_MODEL, ApprovalMetadata, ModelMetadata
from mlassets.roles.storage import LakeStorage

# Loaded when a run needs it, not when the code location loads.
promotion = lazy("mlassets.lib.promotion")


@dg.asset(
    key=APPROVED_MODEL,
    deps=[digit_classifier],
    group_name="training",
    description="The digit_classifier that scores: the newest model whose test accuracy "
    "cleared the bar of the blocking test_accuracy check. Its pointer, "
    "`models/digit_classifier/approved.json`, is what inference_outputs reads.",
    kinds={"keras"},
    tags={"mlassets/role": "lake"},
    # Follows each new model once its blocking checks have passed; never a failing one.
    automation_condition=(
        dg.AutomationCondition.eager() & dg.AutomationCondition.all_deps_blocking_checks_passed()
    ),
)
def approved_model(
    context: dg.AssetExecutionContext, lake: LakeStorage, quality: QualityPolicy
) -> dg.MaterializeResult:
    model = ModelMetadata.latest(context.instance) or ModelMetadata()
    try:
        previous = promotion.read_pointer(lake)
    except promotion.PointerError as exc:
        context.log.warning(f"{exc}: this approval replaces it")
        previous = None
    refused = promotion.refusal(model.model_version, model.test_accuracy, quality.min_test_accuracy)
    if refused:
        kept = f"; {previous.version} stays approved" if previous else "; no model is approved"
        raise dg.Failure(description=refused + kept, allow_retries=False)
    approved = promotion.ApprovedModel(
        version=model.model_version,
        path=model.model_path,
        test_accuracy=model.test_accuracy,
        threshold=quality.min_test_accuracy,
        dataset_version=model.dataset_version,
        approved_at=datetime.now(UTC).isoformat(timespec="seconds"),
        run_id=context.run_id,
    )
    promotion.write_pointer(lake, approved)
    context.log.info(
        f"approved model {approved.version} (test accuracy {approved.test_accuracy:.4f}, "
        f"bar {approved.threshold:.2f}, dataset {approved.dataset_version})"
        + (f"; it replaces {previous.version}" if previous else "")
    )
    return dg.MaterializeResult(
        metadata=ApprovalMetadata(
            model_version=approved.version,
            test_accuracy=approved.test_accuracy,
            threshold=approved.threshold,
            dataset_version=approved.dataset_version,
            model_path=approved.path,
            replaces=previous.version if previous else "-",
            pointer=lake.uri(promotion.POINTER_PATH),
        ).to_metadata(),
        # Scoring is stale exactly when the approved version changes.
        data_version=dg.DataVersion(approved.version),
    )
