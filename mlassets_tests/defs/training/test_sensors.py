"""`retraining_sensor`: each policy fires with its reason; cooldown and running trainings
keep it quiet."""

import json

import dagster as dg
import pytest

from mlassets.defs.quality import RetrainingPolicy
from mlassets.defs.resources import local_resources
from mlassets.defs.training.sensors import retraining_sensor
from mlassets.lib.events import LANDED_SCHEMA
from mlassets.lib.metadata import (
    CaptureMetadata,
    DatasetMetadata,
    LabelsMetadata,
    LandingMetadata,
    ModelMetadata,
)

UNIFORM = [1 / 17] * 17


@pytest.fixture
def lake(data_dir):
    return local_resources()["lake"]


def report(instance, recorded):
    """A materialization recording `recorded` (one of the metadata contracts)."""
    instance.report_runless_asset_event(
        dg.AssetMaterialization(asset_key=recorded.asset_key, metadata=recorded.to_metadata())
    )


def trained_on(instance, labels_read=1000, histogram=UNIFORM):
    """A dataset built from `labels_read` labels, and a model trained on it."""
    report(
        instance, DatasetMetadata(version="ds1", labels_read=labels_read, pixel_histogram=histogram)
    )
    report(instance, ModelMetadata(dataset_version="ds1", model_version="m1"))


def tick(instance, lake, cursor=None):
    resources = {"lake": lake, "retraining_policy": RetrainingPolicy.from_settings()}
    return retraining_sensor(
        dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources)
    )


def land(lake, instance, pixel_value, rows=200):
    import pyarrow as pa

    path = f"landed/events/partition=0/seq=0-{rows - 1}.parquet"
    table = pa.table(
        {
            "sample_id": [f"s{i}" for i in range(rows)],
            "pixels": [[pixel_value] * 64] * rows,
            "source": ["x"] * rows,
            "captured_at": pa.array([0] * rows, pa.timestamp("us", tz="UTC")),
            "partition_id": ["0"] * rows,
            "sequence_number": list(range(rows)),
            "offset": [0] * rows,
            "enqueued_time": pa.array([0] * rows, pa.timestamp("us", tz="UTC")),
        },
        schema=LANDED_SCHEMA,
    )
    lake.write_parquet(path, table)
    report(instance, LandingMetadata(files=[path]))


def test_nothing_fires_without_a_model(instance, lake):
    result = tick(instance, lake)
    assert not result.run_requests
    assert "no digit_classifier yet" in result.skip_reason.skip_message


def test_nothing_fires_when_the_data_has_not_changed(instance, lake):
    trained_on(instance)
    report(instance, LabelsMetadata(row_count=1050))  # +5% only
    assert not tick(instance, lake).run_requests


def test_new_labels_beyond_the_fraction_fire_with_their_reason(instance, lake):
    trained_on(instance, labels_read=1000)
    report(instance, LabelsMetadata(row_count=1150))
    (request,) = tick(instance, lake).run_requests
    assert request.tags["mlassets/retrain-policy"] == "new_labels"
    assert (
        request.tags["mlassets/retrain-reason"]
        == "labels grew 15% (1000 -> 1150) since dataset ds1"
    )
    assert request.tags["mlassets/trigger"] == "retraining_sensor"


def test_label_corrections_since_the_dataset_fire(instance, lake):
    report(instance, CaptureMetadata(updates=500))  # before the dataset: does not count
    trained_on(instance)
    report(instance, CaptureMetadata(updates=30))
    report(instance, CaptureMetadata(updates=25))
    (request,) = tick(instance, lake).run_requests
    assert request.tags["mlassets/retrain-policy"] == "corrections"
    assert request.tags["mlassets/retrain-reason"].startswith("55 label corrections")


def test_pixel_drift_fires_and_similar_pixels_do_not(instance, lake):
    trained_on(instance, histogram=UNIFORM)
    land(lake, instance, pixel_value=16)  # every pixel saturated: far from uniform
    (request,) = tick(instance, lake).run_requests
    assert request.tags["mlassets/retrain-policy"] == "drift"
    assert "PSI" in request.tags["mlassets/retrain-reason"]


def test_drift_is_measured_once_per_landing(instance, lake):
    trained_on(instance, histogram=[1.0] + [0.0] * 16)
    land(lake, instance, pixel_value=0)  # matches the reference: no drift
    first = tick(instance, lake)
    assert not first.run_requests
    assert json.loads(first.cursor)["landed"] > 0


def test_cooldown_keeps_it_quiet_after_a_recent_training(instance, lake):
    trained_on(instance, labels_read=1000)
    report(instance, LabelsMetadata(row_count=5000))
    instance.add_run(
        dg.DagsterRun(job_name="train_model", run_id="r1", status=dg.DagsterRunStatus.SUCCESS)
    )
    result = tick(instance, lake)
    assert not result.run_requests
    assert "cooldown" in result.skip_reason.skip_message


# (A QUEUED run needs a code-location origin to exist; NOT_STARTED and STARTED go through the
# same status filter.)
@pytest.mark.parametrize("status", [dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTED])
def test_never_while_a_training_is_queued_or_running(instance, lake, status):
    trained_on(instance, labels_read=1000)
    report(instance, LabelsMetadata(row_count=5000))
    instance.add_run(dg.DagsterRun(job_name="train_model", run_id="r2", status=status))
    result = tick(instance, lake)
    assert not result.run_requests
    assert "queued or running" in result.skip_reason.skip_message


def test_after_the_cooldown_it_fires_again(instance, lake, monkeypatch):
    monkeypatch.setenv("MLASSETS_RETRAIN_COOLDOWN_MINUTES", "0")
    trained_on(instance, labels_read=1000)
    report(instance, LabelsMetadata(row_count=5000))
    instance.add_run(
        dg.DagsterRun(job_name="train_model", run_id="r3", status=dg.DagsterRunStatus.SUCCESS)
    )
    assert tick(instance, lake).run_requests
