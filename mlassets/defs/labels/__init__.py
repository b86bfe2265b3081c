"""Labels: change batches captured from SQL and the current labels kept by MERGE."""

import dagster as dg

from mlassets.defs.labels.assets import cdc_deltas, labels, sync_labels
from mlassets.defs.labels.checks import LABELS_CHECKS
from mlassets.defs.labels.sensors import labels_cdc_sensor

defs = dg.Definitions(
    assets=[cdc_deltas, labels],
    asset_checks=LABELS_CHECKS,
    jobs=[sync_labels],
    sensors=[labels_cdc_sensor],
)
