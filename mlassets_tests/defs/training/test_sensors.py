"""`retraining_sensor`: each policy fires with its reason; cooldown and running trainings
keep it quiet."""

import json

import dagster as dg
import pytest

from mlassets.defs.quality import QualityPolicy, RetrainingPolicy
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
    resources = {
        "lake": lake,
        "retraining_policy": RetrainingPolicy.from_settings(),
        "quality": QualityPolicy.from_settings(),
    }
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


# -- the first model: once the labelled data passes training_dataset's rules -----------------


def skip(result) -> str:
    assert not result.run_requests
    return result.skip_reason.skip_message


def test_before_anything_landed_the_first_model_waits_for_events(instance, lake):
    assert skip(tick(instance, lake)) == "first model: no events have landed yet (landed_events)"


def test_before_labels_synced_the_first_model_waits_for_them(instance, lake):
    report(instance, LandingMetadata(landed_rows=100))
    assert skip(tick(instance, lake)) == "first model: no labels synced yet (sync_labels)"


def test_the_skip_reason_names_the_digits_short_of_train_split_labels(instance, lake):
    report(instance, LandingMetadata(landed_rows=100))
    counts = [30] * 10
    counts[3], counts[7] = 12, 0
    report(instance, LabelsMetadata(row_count=300, train_labels_per_class=counts))
    assert skip(tick(instance, lake)) == (
        "first model: 300 labels, but digits 3 (12), 7 (0) have fewer than 20 in the train "
        "split (MLASSETS_MIN_CLASS_ROWS)"
    )


def test_the_first_model_trains_once_every_digit_has_enough_labels(instance, lake):
    report(instance, LandingMetadata(landed_rows=9000))
    report(instance, LabelsMetadata(row_count=7823, train_labels_per_class=[620] * 9 + [25]))
    result = tick(instance, lake)
    (request,) = result.run_requests
    assert request.tags["mlassets/retrain-policy"] == "first_model"
    assert request.tags["mlassets/retrain-reason"] == (
        "first model: 7,823 labels, every class >= 20 rows in the train split (fewest: 25)"
    )
    # The same labels and landings never ask twice (a failed first training waits for more).
    again = tick(instance, lake, cursor=result.cursor)
    assert "did not produce a model" in skip(again)
    report(instance, LandingMetadata(landed_rows=100))
    (retry,) = tick(instance, lake, cursor=again.cursor).run_requests
    assert retry.tags["mlassets/retrain-policy"] == "first_model"


def test_labels_count_their_train_split_per_digit(instance):
    import pyarrow as pa

    from mlassets.defs.labels.assets import train_labels_per_class
    from mlassets.lib.datasets import split_of

    ids = pa.array([f"s{i}" for i in range(1000)])
    labels = pa.array([i % 10 if i % 50 else None for i in range(1000)], pa.int64())
    counts = train_labels_per_class(pa.table({"sample_id": ids, "label": labels}))
    train = split_of(ids) == 0
    expected = [
        sum(1 for i in range(1000) if train[i] and i % 50 and i % 10 == d) for d in range(10)
    ]
    assert counts == expected and 700 < sum(counts) < 900  # NULLs (retracted) left out


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
