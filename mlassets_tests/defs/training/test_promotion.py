"""`approved_model`: a model that clears the accuracy bar is approved and its pointer is what
scoring reads; a model that fails never becomes approved and never scores, in the training
run or out of it; approval and scoring follow on their own (declarative automation)."""

import json
from types import SimpleNamespace

import dagster as dg
import pytest

from mlassets.defs.quality import QualityPolicy
from mlassets.defs.resources import local_resources
from mlassets.lib import promotion
from mlassets.lib.metadata import (
    APPROVED_MODEL,
    DIGIT_CLASSIFIER,
    INFERENCE_OUTPUTS,
    AccuracyCheckMetadata,
    ApprovalMetadata,
    DatasetMetadata,
    ModelMetadata,
    ScoringMetadata,
)
from mlassets.roles.training import TrainingCompute

BAR = 0.9


class ReportedTraining(TrainingCompute):
    """Stands in for Horovod: reports what a training with this test accuracy would, at once."""

    test_accuracy: float = 0.95

    @property
    def description(self) -> str:
        return "stand-in for Horovod (test)"

    def run(self, context, job):
        version = job.extras["model_version"]
        reported = ModelMetadata(
            test_accuracy=self.test_accuracy,
            model_version=version,
            dataset_version=job.extras["dataset_version"],
            model_path=f"/models/{version}/model.keras",
        )
        return SimpleNamespace(
            get_materialize_result=lambda: dg.MaterializeResult(metadata=reported.to_metadata())
        )


@pytest.fixture
def defs():
    from mlassets.definitions import defs

    return defs


def resources(accuracy: float = 0.95) -> dict:
    return {
        **local_resources(),
        "training_compute": ReportedTraining(test_accuracy=accuracy),
        "quality": QualityPolicy(
            max_quarantine_ratio=0.05, min_class_rows=1, min_test_accuracy=BAR
        ),
    }


def report(instance, recorded) -> None:
    instance.report_runless_asset_event(
        dg.AssetMaterialization(asset_key=recorded.asset_key, metadata=recorded.to_metadata())
    )


def trained(instance, version: str, accuracy: float, passed: bool | None = None) -> None:
    """A digit_classifier materialization, and its blocking check's verdict if given."""
    report(
        instance,
        ModelMetadata(
            model_version=version,
            test_accuracy=accuracy,
            dataset_version="d1",
            model_path=f"/models/{version}/model.keras",
        ),
    )
    if passed is not None:
        judged = AccuracyCheckMetadata(test_accuracy=accuracy, threshold=BAR, model_version=version)
        instance.report_runless_asset_event(
            dg.AssetCheckEvaluation(
                asset_key=DIGIT_CLASSIFIER,
                check_name="test_accuracy",
                passed=passed,
                metadata=judged.to_metadata(),
            )
        )


def materialize(defs, instance, *keys, accuracy: float = 0.95):
    return dg.materialize(
        [*defs.assets, *defs.asset_checks],
        selection=dg.AssetSelection.assets(*keys),
        resources=resources(accuracy),
        instance=instance,
        raise_on_error=False,
    )


def test_a_model_that_clears_the_bar_is_approved_and_its_pointer_written(defs, instance, data_dir):
    trained(instance, "20261101T000000-aaaa", 0.95, passed=True)
    result = materialize(defs, instance, APPROVED_MODEL)
    assert result.success
    approval = ApprovalMetadata.from_run(result)
    assert (approval.model_version, approval.test_accuracy) == ("20261101T000000-aaaa", 0.95)
    assert (approval.threshold, approval.dataset_version, approval.replaces) == (BAR, "d1", "-")
    lake = local_resources()["lake"]
    pointer = promotion.read_pointer(lake)
    assert pointer.version == "20261101T000000-aaaa"
    assert pointer.path == "/models/20261101T000000-aaaa/model.keras"
    assert pointer.run_id == result.run_id
    assert approval.pointer == lake.uri(promotion.POINTER_PATH)
    # The next approval says which model it replaces.
    trained(instance, "20261102T000000-bbbb", 0.97, passed=True)
    again = ApprovalMetadata.from_run(materialize(defs, instance, APPROVED_MODEL))
    assert (again.model_version, again.replaces) == ("20261102T000000-bbbb", "20261101T000000-aaaa")


def test_a_failing_model_materialized_alone_is_refused_and_the_approved_one_stays(
    defs, instance, data_dir
):
    trained(instance, "20261101T000000-aaaa", 0.95, passed=True)
    assert materialize(defs, instance, APPROVED_MODEL).success
    trained(instance, "20261102T000000-bbbb", 0.50)  # its check never ran: the metrics decide
    result = materialize(defs, instance, APPROVED_MODEL)
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.user_failure_data.description
    assert "20261102T000000-bbbb: test accuracy 0.5000 is below the bar of 0.90" in message
    assert "20261101T000000-aaaa stays approved" in message
    assert promotion.read_pointer(local_resources()["lake"]).version == "20261101T000000-aaaa"
    assert ApprovalMetadata.latest(instance).model_version == "20261101T000000-aaaa"


def test_in_the_training_run_a_failing_check_stops_approval_and_scoring(defs, instance, data_dir):
    report(instance, DatasetMetadata(version="d1"))
    result = materialize(
        defs, instance, DIGIT_CLASSIFIER, APPROVED_MODEL, INFERENCE_OUTPUTS, accuracy=0.5
    )
    assert not result.success
    (check,) = result.get_asset_check_evaluations()
    assert (check.check_name, check.passed) == ("test_accuracy", False)
    assert {e.asset_key for e in result.get_asset_materialization_events()} == {DIGIT_CLASSIFIER}
    assert promotion.read_pointer(local_resources()["lake"]) is None
    assert ScoringMetadata.latest(instance) is None  # never scored


def test_in_the_training_run_a_passing_model_is_approved_then_scores(defs, instance, data_dir):
    report(instance, DatasetMetadata(version="d1"))
    result = materialize(defs, instance, DIGIT_CLASSIFIER, APPROVED_MODEL, INFERENCE_OUTPUTS)
    assert result.success
    model = ModelMetadata.from_run(result)
    assert ApprovalMetadata.from_run(result).model_version == model.model_version
    # Scoring took the pointer's model (nothing was landed, so nothing needed TensorFlow).
    scored = ScoringMetadata.from_run(result)
    assert (scored.model_version, scored.model_test_accuracy) == (model.model_version, 0.95)


def test_without_an_approved_model_scoring_fails_clearly(defs, instance, data_dir):
    trained(instance, "20261103T000000-cccc", 0.50, passed=False)
    result = materialize(defs, instance, INFERENCE_OUTPUTS)
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    assert "no model is approved yet" in failure.step_failure_data.user_failure_data.description


def test_scoring_reads_the_pointer_not_the_newest_model(defs, instance, data_dir):
    trained(instance, "20261101T000000-aaaa", 0.95, passed=True)
    assert materialize(defs, instance, APPROVED_MODEL).success
    trained(instance, "20261102T000000-bbbb", 0.99, passed=True)  # newer, not approved yet
    scored = ScoringMetadata.from_run(materialize(defs, instance, INFERENCE_OUTPUTS))
    assert scored.model_version == "20261101T000000-aaaa"


def test_a_pointer_that_is_not_one_stops_scoring_and_the_next_approval_replaces_it(
    defs, instance, data_dir
):
    lake = local_resources()["lake"]
    lake.write_bytes(promotion.POINTER_PATH, b"{not json")
    result = materialize(defs, instance, INFERENCE_OUTPUTS)
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    assert (
        "is not an approved-model pointer"
        in failure.step_failure_data.user_failure_data.description
    )
    trained(instance, "20261101T000000-aaaa", 0.95, passed=True)
    assert materialize(defs, instance, APPROVED_MODEL).success
    assert json.loads(lake.read_bytes(promotion.POINTER_PATH))["version"] == "20261101T000000-aaaa"


# -- declarative automation: approval follows a passing model, scoring follows an approval ----


def test_approval_follows_a_model_whose_blocking_check_passed(defs, instance):
    first = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    assert first.get_num_requested(APPROVED_MODEL) == 0  # no model yet
    trained(instance, "20261101T000000-aaaa", 0.95, passed=True)
    after = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
    assert after.get_num_requested(APPROVED_MODEL) == 1
    # Scoring is requested with it (one run: approve, then score), and fails with it.
    assert after.get_num_requested(INFERENCE_OUTPUTS) == 1


def test_a_model_whose_blocking_check_failed_is_never_requested_for_approval(defs, instance):
    first = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    trained(instance, "20261101T000000-aaaa", 0.50, passed=False)
    after = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
    assert after.get_num_requested(APPROVED_MODEL) == 0
    assert after.get_num_requested(INFERENCE_OUTPUTS) == 0


def test_scoring_follows_an_approval(defs, instance):
    first = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    report(instance, ApprovalMetadata(model_version="20261101T000000-aaaa", test_accuracy=0.95))
    after = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
    assert after.get_num_requested(INFERENCE_OUTPUTS) == 1
    # Once: the next tick requests nothing more.
    settled = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=after.cursor)
    assert settled.get_num_requested(INFERENCE_OUTPUTS) == 0


def test_before_any_approval_a_landing_starts_no_scoring(defs, instance):
    first = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    instance.report_runless_asset_event(dg.AssetMaterialization(asset_key="landed_events"))
    landed = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
    assert landed.get_num_requested(INFERENCE_OUTPUTS) == 0


def test_with_an_approved_model_each_burst_of_landings_is_scored_once(defs, instance):
    first = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    report(instance, ApprovalMetadata(model_version="20261101T000000-aaaa", test_accuracy=0.95))
    approved = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
    assert approved.get_num_requested(INFERENCE_OUTPUTS) == 1
    instance.report_runless_asset_event(dg.AssetMaterialization(asset_key="inference_outputs"))
    scored = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=approved.cursor)
    assert scored.get_num_requested(INFERENCE_OUTPUTS) == 0
    for _ in range(3):  # three landings between two ticks: one scoring
        instance.report_runless_asset_event(dg.AssetMaterialization(asset_key="landed_events"))
    landed = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=scored.cursor)
    assert landed.get_num_requested(INFERENCE_OUTPUTS) == 1
    settled = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=landed.cursor)
    assert settled.get_num_requested(INFERENCE_OUTPUTS) == 0  # never twice for one landing


def test_an_imported_drop_is_scored_and_a_drop_never_imported_holds_nothing_up(defs, instance):
    instance.add_dynamic_partitions("incoming_drops", ["drop-a.csv", "never-imported.csv"])
    first = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    report(instance, ApprovalMetadata(model_version="20261101T000000-aaaa", test_accuracy=0.95))
    approved = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
    assert approved.get_num_requested(INFERENCE_OUTPUTS) == 1
    instance.report_runless_asset_event(dg.AssetMaterialization(asset_key="inference_outputs"))
    scored = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=approved.cursor)
    instance.report_runless_asset_event(
        dg.AssetMaterialization(asset_key="incoming_events", partition="drop-a.csv")
    )
    imported = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=scored.cursor)
    assert imported.get_num_requested(INFERENCE_OUTPUTS) == 1


def test_the_automation_sensor_runs_from_the_start_and_the_jobs_hold_approval(defs):
    sensor = defs.resolve_sensor_def("default_automation_condition_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    for job_name in ("train_model", "end_to_end"):
        keys = defs.resolve_job_def(job_name).asset_layer.selected_asset_keys
        assert {DIGIT_CLASSIFIER, APPROVED_MODEL} <= keys
    graph = defs.resolve_asset_graph()
    assert graph.get(APPROVED_MODEL).parent_keys == {DIGIT_CLASSIFIER}
    assert APPROVED_MODEL in graph.get(INFERENCE_OUTPUTS).parent_keys
    assert DIGIT_CLASSIFIER not in graph.get(INFERENCE_OUTPUTS).parent_keys
