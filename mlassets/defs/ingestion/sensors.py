"""`eventhub_sensor`: one landing run per new sequence-number range, exactly once.

Each tick reads partition properties only (O(partitions), whatever the backlog), compares
the last sequence number of each partition with the cursor (the last one already requested)
and yields one RunRequest per new range, capped in size, with a run key derived from the
range. Dagster drops a RunRequest whose run key it has seen, and the cursor is committed
only with a successful tick, so a crashed tick is simply repeated.

On its first tick the cursor starts from what the lake has already landed, so turning the
sensor on after manual materializations does not re-request their ranges.
"""

import json

import dagster as dg

from mlassets import settings
from mlassets.defs.ingestion.assets import (
    ingest_events,
    landed_events,
    observe_hub,
    raw_events,
)
from mlassets.lib.lazy import lazy
from mlassets.roles.eventhub import EventHubResource
from mlassets.roles.storage import LakeStorage

# Loaded when a run or tick needs them, not when the code location loads.
landing = lazy("mlassets.lib.landing")

#: Enough to drain a large backlog in a few ticks without flooding the run queue.
MAX_RUNS_PER_TICK = 32


def plan_requests(
    cursor: dict[str, int],
    partitions: list,
    hub_name: str,
    max_range: int,
    max_runs: int = MAX_RUNS_PER_TICK,
) -> tuple[list[dg.RunRequest], dict[str, int]]:
    """(run requests, new cursor) for the given partition properties."""
    requests: list[dg.RunRequest] = []
    new_cursor = dict(cursor)
    for props in partitions:
        start = max(cursor.get(props.partition_id, -1) + 1, props.beginning_sequence_number)
        for rng in landing.split(
            props.partition_id, start, props.last_enqueued_sequence_number, max_range
        ):
            if len(requests) >= max_runs:
                return requests, new_cursor
            requests.append(
                dg.RunRequest(
                    run_key=rng.run_key(hub_name),
                    run_config={
                        "ops": {
                            landed_events.op.name: {
                                "config": {
                                    "ranges": [
                                        {
                                            "partition_id": rng.partition_id,
                                            "first": rng.first,
                                            "last": rng.last,
                                        }
                                    ]
                                }
                            }
                        }
                    },
                    tags={
                        "mlassets/hub": hub_name,
                        "mlassets/partition": rng.partition_id,
                        "mlassets/range": f"{rng.first}-{rng.last}",
                    },
                )
            )
            new_cursor[props.partition_id] = rng.last
    return requests, new_cursor


@dg.sensor(
    name="eventhub_sensor",
    job=ingest_events,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Requests one ingest_events run per new Event Hubs sequence range.",
)
def eventhub_sensor(
    context: dg.SensorEvaluationContext, event_hub: EventHubResource, lake: LakeStorage
) -> dg.SensorResult:
    if context.cursor:
        cursor = {str(k): int(v) for k, v in json.loads(context.cursor).items()}
    else:
        cursor = landing.watermarks(landing.landed_ranges(lake))
    partitions = event_hub.all_partition_properties()
    requests, new_cursor = plan_requests(
        cursor, partitions, event_hub.hub_name, settings.max_range_events()
    )
    if not requests:
        return dg.SensorResult(
            skip_reason=f"no new events on {event_hub.hub_name!r} after {cursor or 'the start'}",
            cursor=json.dumps(new_cursor, sort_keys=True),
        )
    observation = observe_hub(event_hub.hub_name, partitions, cursor, "requested_through")
    return dg.SensorResult(
        run_requests=requests,
        cursor=json.dumps(new_cursor, sort_keys=True),
        asset_events=[
            dg.AssetObservation(
                asset_key=raw_events.key,
                metadata=observation.metadata,
                tags={"dagster/data_version": observation.data_version.value},
            )
        ],
    )
