"""The whole graph in one run: the README's demo runs this job."""

import dagster as dg

from mlassets.lib.metadata import INCOMING_EVENTS

end_to_end = dg.define_asset_job(
    "end_to_end",
    # Drops from incoming/ are imported one partition (one drop) at a time by import_incoming.
    selection=dg.AssetSelection.all(include_sources=True)
    - dg.AssetSelection.assets(INCOMING_EVENTS),
    description="Land events, sync labels, build the dataset, train with Horovod, approve the "
    "model when it passes its check, score, export.",
)
