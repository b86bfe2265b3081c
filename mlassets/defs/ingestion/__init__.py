"""Ingestion: the hub observed, events landed exactly once, drops imported from `incoming/`."""

import dagster as dg

from mlassets.defs.ingestion.assets import ingest_events, landed_events, raw_events
from mlassets.defs.ingestion.checks import INGESTION_CHECKS
from mlassets.defs.ingestion.incoming import INCOMING_CHECKS, import_incoming, incoming_events
from mlassets.defs.ingestion.sensors import eventhub_sensor

defs = dg.Definitions(
    assets=[raw_events, landed_events, incoming_events],
    asset_checks=[*INGESTION_CHECKS, *INCOMING_CHECKS],
    jobs=[ingest_events, import_incoming],
    sensors=[eventhub_sensor],
)
