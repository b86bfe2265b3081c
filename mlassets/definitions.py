"""The mlassets code location: assets, checks, sensors, jobs and the deployment's resources.

Loading it is cheap: no TensorFlow, no Horovod, no network. Those load only inside the
runs that train or score.
"""

import dagster as dg

from mlassets.assets.cdc import cdc_deltas, labels, sync_labels
from mlassets.assets.datasets import DATASET_CHECKS, training_dataset
from mlassets.assets.incoming import import_incoming
from mlassets.assets.inference import inference_outputs, score_events
from mlassets.assets.ingestion import ingest_events, landed_events, raw_events
from mlassets.assets.training import digit_classifier, digit_classifier_test_accuracy, train_model
from mlassets.checks import ASSET_CHECKS
from mlassets.deployment import build_resources
from mlassets.sensors.cdc import labels_cdc_sensor
from mlassets.sensors.eventhub import eventhub_sensor
from mlassets.sensors.retraining import retraining_sensor
from mlassets.sensors.servicebus import servicebus_sensor

#: The whole graph in one run: observe and land events, sync labels, build the dataset, train,
#: check, score and export. The README's demo runs this job.
end_to_end = dg.define_asset_job(
    "end_to_end",
    selection=dg.AssetSelection.all(include_sources=True),
    description="Land events, sync labels, build the dataset, train with Horovod, score, export.",
    tags={"mlassets/pool": "training"},
)


def build_definitions() -> dg.Definitions:
    """The code location with resources for the deployment the environment selects now."""
    return dg.Definitions(
        assets=[
            raw_events,
            landed_events,
            cdc_deltas,
            labels,
            training_dataset,
            digit_classifier,
            inference_outputs,
        ],
        asset_checks=[*ASSET_CHECKS, *DATASET_CHECKS, digit_classifier_test_accuracy],
        jobs=[ingest_events, sync_labels, train_model, import_incoming, score_events, end_to_end],
        sensors=[eventhub_sensor, labels_cdc_sensor, retraining_sensor, servicebus_sensor],
        resources=build_resources(),
        # Steps here are I/O-light or launch their own processes (Horovod through Pipes), so a
        # subprocess per step would only add seconds to every run.
        executor=dg.in_process_executor,
    )


defs = build_definitions()
