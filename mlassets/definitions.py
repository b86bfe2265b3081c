"""The mlassets code location: assets, checks, sensors, jobs and the deployment's resources.

Loading it is cheap: no TensorFlow, no Horovod, no network. Those load only inside the
runs that train or score.
"""

import dagster as dg

from mlassets.assets.cdc import cdc_deltas, labels, sync_labels
from mlassets.assets.datasets import DATASET_CHECKS, training_dataset
from mlassets.assets.incoming import import_incoming
from mlassets.assets.ingestion import ingest_events, landed_events, raw_events
from mlassets.assets.training import digit_classifier, digit_classifier_test_accuracy, train_model
from mlassets.checks import ASSET_CHECKS
from mlassets.deployment import build_resources
from mlassets.sensors.cdc import labels_cdc_sensor
from mlassets.sensors.eventhub import eventhub_sensor

defs = dg.Definitions(
    assets=[raw_events, landed_events, cdc_deltas, labels, training_dataset, digit_classifier],
    asset_checks=[*ASSET_CHECKS, *DATASET_CHECKS, digit_classifier_test_accuracy],
    jobs=[ingest_events, sync_labels, train_model, import_incoming],
    sensors=[eventhub_sensor, labels_cdc_sensor],
    resources=build_resources(),
    # Steps here are I/O-light or launch their own processes (Horovod through Pipes), so a
    # subprocess per step would only add seconds to every run.
    executor=dg.in_process_executor,
)
