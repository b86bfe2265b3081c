"""The mlassets code location: assets, checks, sensors, jobs and the deployment's resources.

Loading it is cheap: no TensorFlow, no Horovod, no network. Those load only inside the
runs that train or score.
"""

import dagster as dg

from mlassets.assets.ingestion import ingest_events, landed_events, raw_events
from mlassets.checks import ASSET_CHECKS
from mlassets.deployment import build_resources
from mlassets.sensors.eventhub import eventhub_sensor

defs = dg.Definitions(
    assets=[raw_events, landed_events],
    asset_checks=ASSET_CHECKS,
    jobs=[ingest_events],
    sensors=[eventhub_sensor],
    resources=build_resources(),
)
