"""The mlassets code location: assets, checks, sensors, jobs and the deployment's resources.

Each asset group lives in its own folder under `mlassets/defs/`; this module gathers them and
binds the resources the deployment selects. Loading it is cheap: no TensorFlow, no Horovod, no
pyarrow, no network. Those load only inside the runs that train or score.
"""

import dagster as dg

from mlassets.defs import commands, inference, ingestion, labels, training
from mlassets.defs.end_to_end import end_to_end
from mlassets.defs.resources import build_resources

GROUPS = (ingestion, labels, training, inference, commands)


def build_definitions() -> dg.Definitions:
    """The code location with resources for the deployment the environment selects now."""
    return dg.Definitions.merge(
        *(group.defs for group in GROUPS),
        dg.Definitions(
            jobs=[end_to_end],
            resources=build_resources(),
            # Steps here are I/O-light or launch their own processes (Horovod through Pipes),
            # so a subprocess per step would only add seconds to every run.
            executor=dg.in_process_executor,
        ),
    )


defs = build_definitions()
