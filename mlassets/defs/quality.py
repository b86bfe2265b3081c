"""The bars the data and the model are held to, as resources: the UI shows their values.

The checks and the retraining sensor take these as resources instead of reading the
environment inside a run, so the Resources page says which thresholds are in force. The
environment still sets them: `from_settings()` reads the MLASSETS_* variables (their defaults
live in `mlassets.settings`).
"""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from mlassets import settings


class QualityPolicy(dg.ConfigurableResource):
    """What the asset checks accept."""

    max_quarantine_ratio: float = Field(
        description="share of quarantined events above which a landing's quarantine_ratio "
        "check fails (MLASSETS_MAX_QUARANTINE_RATIO)"
    )
    min_class_rows: int = Field(
        description="fewest training rows per digit the dataset's class_balance check accepts "
        "(MLASSETS_MIN_CLASS_ROWS)"
    )
    min_test_accuracy: float = Field(
        description="test accuracy a model needs to pass its blocking test_accuracy check, "
        "and so ever to score (MLASSETS_MIN_TEST_ACCURACY)"
    )

    @classmethod
    def from_settings(cls) -> QualityPolicy:
        return cls(
            max_quarantine_ratio=settings.max_quarantine_ratio(),
            min_class_rows=settings.min_class_rows(),
            min_test_accuracy=settings.min_test_accuracy(),
        )


class RetrainingPolicy(dg.ConfigurableResource):
    """When the retraining sensor asks for a new model."""

    new_labels_fraction: float = Field(
        description="retrain when the labels table grew by this share since the newest "
        "model's dataset (MLASSETS_RETRAIN_NEW_LABELS)"
    )
    corrections: int = Field(
        description="retrain after this many label corrections (CDC updates) since that "
        "dataset (MLASSETS_RETRAIN_CORRECTIONS)"
    )
    psi: float = Field(
        description="retrain when newly landed pixels drift from the training split by this "
        "population stability index (MLASSETS_RETRAIN_PSI)"
    )
    cooldown_minutes: float = Field(
        description="least time between two trainings the sensor starts "
        "(MLASSETS_RETRAIN_COOLDOWN_MINUTES)"
    )

    @classmethod
    def from_settings(cls) -> RetrainingPolicy:
        return cls(
            new_labels_fraction=settings.retrain_new_labels_fraction(),
            corrections=settings.retrain_corrections(),
            psi=settings.retrain_psi(),
            cooldown_minutes=settings.retrain_cooldown_minutes(),
        )


def policy_resources() -> dict[str, dg.ConfigurableResource]:
    """The two policies under the resource keys the checks and the sensor ask for."""
    return {
        "quality": QualityPolicy.from_settings(),
        "retraining_policy": RetrainingPolicy.from_settings(),
    }
