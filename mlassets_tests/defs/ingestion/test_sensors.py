"""`eventhub_sensor`: one run per new range, deterministic run keys, capped ranges, and a
cursor that moves only with a successful tick."""

import json

import dagster as dg
import pytest

from mlassets.definitions import defs
from mlassets.defs.ingestion.sensors import eventhub_sensor, plan_requests
from mlassets.defs.resources import local_resources
from mlassets.lib.landing import EventRange, land_range


@pytest.fixture
def resources(data_dir):
    return local_resources()


def tick(resources, instance, cursor=None):
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources)
    return eventhub_sensor(context)


def ranges(result):
    return [
        tuple(r.run_config["ops"]["landed_events"]["config"]["ranges"][0].values())
        for r in result.run_requests
    ]


def test_no_events_means_no_runs(resources, instance):
    result = tick(resources, instance)
    assert not result.run_requests
    assert "no new events" in result.skip_reason.skip_message


def test_one_run_per_partition_with_new_events_and_the_cursor_records_them(resources, instance):
    resources["event_hub"].publish([b"{}"] * 10, partition_keys=None)  # round robin: 4 partitions
    result = tick(resources, instance)
    assert sorted(ranges(result)) == [("0", 0, 2), ("1", 0, 2), ("2", 0, 1), ("3", 0, 1)]
    assert json.loads(result.cursor) == {"0": 2, "1": 2, "2": 1, "3": 1}


def test_run_keys_are_derived_from_the_range_so_a_repeated_tick_dedupes(resources, instance):
    resources["event_hub"].publish([b"{}"] * 4)
    first = tick(resources, instance)
    again = tick(resources, instance)  # as if the first tick's cursor had been lost
    assert [r.run_key for r in first.run_requests] == [r.run_key for r in again.run_requests]
    assert first.run_requests[0].run_key == "landed_events:digits:0:0-0"


def test_the_next_tick_requests_only_what_arrived_after_the_cursor(resources, instance):
    hub = resources["event_hub"]
    hub.publish([b"{}"] * 5, partition_keys=["k"] * 5)
    first = tick(resources, instance)
    hub.publish([b"{}"] * 3, partition_keys=["k"] * 3)
    second = tick(resources, instance, cursor=first.cursor)
    ((_, a, b),) = ranges(second)
    assert (a, b) == (5, 7)
    quiet = tick(resources, instance, cursor=second.cursor)
    assert not quiet.run_requests


def test_large_backlogs_are_cut_into_capped_ranges(resources, instance, monkeypatch):
    monkeypatch.setenv("MLASSETS_MAX_RANGE_EVENTS", "4")
    resources["event_hub"].publish([b"{}"] * 10, partition_keys=["k"] * 10)
    result = tick(resources, instance)
    assert [(a, b) for _, a, b in ranges(result)] == [(0, 3), (4, 7), (8, 9)]


def test_a_tick_requests_at_most_max_runs_and_the_cursor_stops_there():
    class Props:
        partition_id, beginning_sequence_number, last_enqueued_sequence_number = "0", 0, 99

    requests, cursor = plan_requests({}, [Props()], "hub", max_range=10, max_runs=3)
    assert len(requests) == 3 and cursor == {"0": 29}
    more, cursor = plan_requests(cursor, [Props()], "hub", max_range=10, max_runs=3)
    assert more[0].run_key == "landed_events:hub:0:30-39"


def test_the_first_tick_starts_after_what_the_lake_already_holds(resources, instance):
    hub, lake = resources["event_hub"], resources["lake"]
    hub.publish([b"{}"] * 6, partition_keys=["k"] * 6)
    p = next(x.partition_id for x in hub.all_partition_properties() if not x.is_empty)
    land_range(hub, lake, EventRange(p, 0, 3))
    assert ranges(tick(resources, instance)) == [(p, 4, 5)]


def test_the_tick_reports_an_observation_of_raw_events(resources, instance):
    resources["event_hub"].publish([b"{}"] * 3, partition_keys=["k"] * 3)
    result = tick(resources, instance)
    (event,) = result.asset_events
    assert event.asset_key == dg.AssetKey("raw_events")
    assert event.metadata["backlog"].value == 3


def test_sensor_runs_target_the_ingest_job_of_the_code_location():
    sensor = defs.resolve_sensor_def("eventhub_sensor")
    assert sensor.job_name == "ingest_events"
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
