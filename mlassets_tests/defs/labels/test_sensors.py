"""`labels_cdc_sensor`: a sync_labels run when, and only when, the source's max LSN moves."""

import dagster as dg
import pyarrow as pa
import pytest

from mlassets.definitions import defs
from mlassets.defs.labels.sensors import labels_cdc_sensor, plan_request
from mlassets.defs.resources import local_resources
from mlassets.lib import cdc
from mlassets.roles.labels_db import lsn_hex
from mlassets.twins.labels_db import SqliteLabelsDatabase


@pytest.fixture
def resources(data_dir):
    return local_resources()


def tick(resources, instance, cursor=None):
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources)
    return labels_cdc_sensor(context)


def label(resources, *keys):
    resources["labels_db"].insert_labels(
        pa.table(
            {
                "sample_id": list(keys),
                "label": pa.array([1] * len(keys), pa.int32()),
                "labeler": ["ana"] * len(keys),
            }
        )
    )


def test_no_change_yet_means_no_run(resources, instance):
    result = tick(resources, instance)
    assert not result.run_requests
    assert "no captured change" in result.skip_reason.skip_message


def test_a_change_requests_sync_labels_keyed_by_the_max_lsn(resources, instance):
    label(resources, "a", "b")
    result = tick(resources, instance)
    [request] = result.run_requests
    assert request.run_key == f"sync_labels:{lsn_hex(2)}"
    assert result.cursor == lsn_hex(2)
    assert labels_cdc_sensor.job_name == "sync_labels"


def test_an_unmoved_max_lsn_requests_nothing_and_a_new_change_requests_again(resources, instance):
    label(resources, "a")
    first = tick(resources, instance)
    again = tick(resources, instance, cursor=first.cursor)
    assert not again.run_requests and "has not moved" in again.skip_reason.skip_message
    assert again.cursor == first.cursor
    label(resources, "b")
    third = tick(resources, instance, cursor=again.cursor)
    assert [r.run_key for r in third.run_requests] == [f"sync_labels:{lsn_hex(2)}"]


def test_the_first_tick_starts_from_what_the_lake_already_captured(resources, instance):
    label(resources, "a")
    cdc.capture_changes(resources["labels_db"], resources["lake"])
    result = tick(resources, instance)  # no cursor: turned on after a manual sync
    assert not result.run_requests
    assert result.cursor == lsn_hex(1)


def test_the_tick_reads_only_the_max_lsn(resources, instance, monkeypatch):
    label(resources, "a")
    calls = []
    for name in ("lsn_bounds", "read_changes", "read_labels", "count_labels"):
        monkeypatch.setattr(SqliteLabelsDatabase, name, lambda *a, _n=name, **k: calls.append(_n))
    assert tick(resources, instance).run_requests
    assert calls == []


def test_a_source_behind_the_cursor_is_reported_not_synced():
    request, reason = plan_request(lsn_hex(9), lsn_hex(3))
    assert request is None and "re-snapshot" in reason


def test_the_sensor_is_in_the_code_location_and_runs_every_minute():
    sensor = defs.resolve_sensor_def("labels_cdc_sensor")
    assert sensor.minimum_interval_seconds == 60
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
