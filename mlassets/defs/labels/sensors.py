"""`labels_cdc_sensor`: a `sync_labels` run whenever the source's max LSN moves.

Each tick asks the labels database one thing, its max LSN (`sys.fn_cdc_get_max_lsn()` on
Azure SQL, the change counter on the twin), and compares it with the cursor: the seed's
1-minute recurrence without polling the data. The run key is the LSN, so Dagster drops a
repeated request, and the cursor moves only with a successful tick. On its first tick the
cursor starts from what the lake already captured, so turning the sensor on after manual
materializations does not request a sync for nothing.

On Azure SQL the max LSN is database-wide: changes to other CDC-tracked tables also move it,
and the run they trigger captures an empty batch (cheap, and it keeps the watermark current).
"""

import dagster as dg

from mlassets.defs.labels.assets import sync_labels
from mlassets.lib.lazy import lazy
from mlassets.roles.labels_db import LabelsDatabase
from mlassets.roles.storage import LakeStorage

# Loaded when a run or tick needs them, not when the code location loads.
cdc = lazy("mlassets.lib.cdc")


def plan_request(cursor: str | None, max_lsn: str | None) -> tuple[dg.RunRequest | None, str]:
    """(the run to request or None, why not), for the source's current max LSN."""
    if max_lsn is None:
        return None, "the labels table has no captured change yet"
    if cursor is not None and max_lsn == cursor:
        return None, f"source max LSN 0x{max_lsn} has not moved"
    if cursor is not None and max_lsn < cursor:
        return None, (
            f"source max LSN 0x{max_lsn} is behind what was captured (0x{cursor}): the source "
            "was reset or restored; re-snapshot `labels` (see README, Labels)"
        )
    return (
        dg.RunRequest(
            run_key=f"sync_labels:{max_lsn}",
            tags={"mlassets/max_lsn": max_lsn},
        ),
        "",
    )


@dg.sensor(
    name="labels_cdc_sensor",
    job=sync_labels,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Requests sync_labels when the labels database's max LSN moves.",
)
def labels_cdc_sensor(
    context: dg.SensorEvaluationContext, labels_db: LabelsDatabase, lake: LakeStorage
) -> dg.SensorResult:
    cursor = context.cursor or cdc.capture_watermark(lake)[0]
    max_lsn = labels_db.max_lsn()
    request, reason = plan_request(cursor, max_lsn)
    if request is None:
        return dg.SensorResult(skip_reason=reason, cursor=cursor or None)
    return dg.SensorResult(run_requests=[request], cursor=max_lsn)
