"""The whole graph in one run: the README's demo runs this job."""

import dagster as dg

end_to_end = dg.define_asset_job(
    "end_to_end",
    selection=dg.AssetSelection.all(include_sources=True),
    description="Land events, sync labels, build the dataset, train with Horovod, score, export.",
    tags={"mlassets/pool": "training"},
)
