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


#: Evaluates the assets' automation conditions (approved_model follows a model that passed its
#: checks, inference_outputs follows an approval and each landing). Dagster would add a sensor
#: of this name by itself; declaring it says that it runs from the start, with the daemon.
automation_sensor = dg.AutomationConditionSensorDefinition(
    "default_automation_condition_sensor",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Requests the assets whose automation condition is true: approval after a "
    "passing model, scoring after an approval or a landing (never without an approved model, "
    "never while a landing or a scoring is in progress).",
)


def build_definitions() -> dg.Definitions:
    """The code location with resources for the deployment the environment selects now."""
    return dg.Definitions.merge(
        *(group.defs for group in GROUPS),
        dg.Definitions(
            jobs=[end_to_end],
            sensors=[automation_sensor],
            resources=build_resources(),
            # Steps here are I/O-light or launch their own processes (Horovod through Pipes),
            # so a subprocess per step would only add seconds to every run.
            executor=dg.in_process_executor,
        ),
    )


defs = build_definitions()
