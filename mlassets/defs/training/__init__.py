"""Training: the versioned dataset, the Horovod-trained model, its approval for scoring, and
automatic retraining."""

import dagster as dg

from mlassets.defs.training.dataset import DATASET_CHECKS, training_dataset
from mlassets.defs.training.model import (
    digit_classifier,
    digit_classifier_test_accuracy,
    train_model,
)
from mlassets.defs.training.promotion import approved_model
from mlassets.defs.training.sensors import retraining_sensor

defs = dg.Definitions(
    assets=[training_dataset, digit_classifier, approved_model],
    asset_checks=[*DATASET_CHECKS, digit_classifier_test_accuracy],
    jobs=[train_model],
    sensors=[retraining_sensor],
)
