"""The quality bars are resources the UI shows, set from the environment, and the checks
hold the data to the values the resource carries."""

import dagster as dg
import pytest

from mlassets import settings
from mlassets.defs.ingestion.assets import landed_events, raw_events
from mlassets.defs.ingestion.checks import INGESTION_CHECKS
from mlassets.defs.quality import QualityPolicy, RetrainingPolicy
from mlassets.defs.resources import local_resources
from mlassets.simulate import make_events


def test_the_defaults_are_the_documented_ones():
    assert QualityPolicy.from_settings() == QualityPolicy(
        max_quarantine_ratio=0.05, min_class_rows=20, min_test_accuracy=0.90
    )
    assert RetrainingPolicy.from_settings() == RetrainingPolicy(
        new_labels_fraction=0.10, corrections=50, psi=0.2, cooldown_minutes=30.0
    )


def test_the_environment_still_sets_them(monkeypatch):
    monkeypatch.setenv("MLASSETS_MIN_TEST_ACCURACY", "0.8")
    monkeypatch.setenv("MLASSETS_RETRAIN_CORRECTIONS", "5")
    assert QualityPolicy.from_settings().min_test_accuracy == 0.8
    assert RetrainingPolicy.from_settings().corrections == 5


def test_a_value_that_is_not_a_number_is_one_clear_line(monkeypatch):
    monkeypatch.setenv("MLASSETS_MIN_CLASS_ROWS", "many")
    with pytest.raises(settings.SettingError, match="MLASSETS_MIN_CLASS_ROWS='many' is not"):
        QualityPolicy.from_settings()


def test_the_code_location_binds_both_policies_so_the_ui_lists_their_values():
    from mlassets.definitions import defs

    resources = defs.resources
    assert isinstance(resources["quality"], QualityPolicy)
    assert isinstance(resources["retraining_policy"], RetrainingPolicy)


def test_the_quarantine_check_applies_the_resources_threshold(data_dir, instance):
    resources = local_resources()
    events = make_events(100, malformed=30, seed=3)
    resources["event_hub"].publish(events.bodies, events.partition_keys)
    lenient = QualityPolicy(max_quarantine_ratio=0.5, min_class_rows=20, min_test_accuracy=0.9)
    result = dg.materialize(
        [raw_events, landed_events, *INGESTION_CHECKS],
        resources={**resources, "quality": lenient},
        instance=instance,
        selection=[landed_events],
    )
    (ratio,) = [
        e for e in result.get_asset_check_evaluations() if e.check_name == "quarantine_ratio"
    ]
    assert ratio.passed  # 30% quarantined: over the default 5%, under this resource's 50%
    assert ratio.metadata["threshold"].value == 0.5
