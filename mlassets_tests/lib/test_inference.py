"""Scoring: only approved models score, and only samples with no label and no prediction."""

import dagster as dg
import numpy as np
import pyarrow as pa
import pytest

from mlassets.lib import cdc
from mlassets.lib.events import LANDED_SCHEMA
from mlassets.lib.inference import (
    ACCURACY_CHECK,
    PREDICTION_SCHEMA,
    approved_models,
    current_model,
    predictions_dir,
    unscored_samples,
)
from mlassets.lib.metadata import AccuracyCheckMetadata, ModelMetadata
from mlassets.roles.storage import LakeStorage


def model_trained(instance, version, accuracy, passed: bool | None):
    model = ModelMetadata(
        model_version=version, model_path=f"/models/{version}/model.keras", test_accuracy=accuracy
    )
    instance.report_runless_asset_event(
        dg.AssetMaterialization(asset_key=model.asset_key, metadata=model.to_metadata())
    )
    if passed is not None:
        judged = AccuracyCheckMetadata(test_accuracy=accuracy, threshold=0.9, model_version=version)
        instance.report_runless_asset_event(
            dg.AssetCheckEvaluation(
                asset_key=ACCURACY_CHECK.asset_key,
                check_name=ACCURACY_CHECK.name,
                passed=passed,
                metadata=judged.to_metadata(),
            )
        )


def test_the_newest_model_that_passed_its_check_is_the_one_that_scores(instance):
    model_trained(instance, "20261101T000000-aaaa", 0.95, passed=True)
    model_trained(instance, "20261102T000000-bbbb", 0.97, passed=True)
    model_trained(instance, "20261103T000000-cccc", 0.50, passed=False)  # newest, but failed
    model_trained(instance, "20261104T000000-dddd", 0.99, passed=None)  # never checked
    assert [m.version for m in approved_models(instance)] == [
        "20261102T000000-bbbb",
        "20261101T000000-aaaa",
    ]
    assert current_model(instance).path == "/models/20261102T000000-bbbb/model.keras"


def test_without_an_approved_model_nothing_can_score(instance):
    model_trained(instance, "20261103T000000-cccc", 0.50, passed=False)
    assert current_model(instance) is None


@pytest.fixture
def lake(tmp_path):
    return LakeStorage(url=f"file://{tmp_path}/lake")


def landed(lake, ids, path="landed/events/partition=0/seq=0-9.parquet"):
    n = len(ids)
    lake.write_parquet(
        path,
        pa.table(
            {
                "sample_id": ids,
                "pixels": [[1] * 64] * n,
                "source": ["s"] * n,
                "captured_at": pa.array(np.arange(n), pa.timestamp("us", tz="UTC")),
                "partition_id": ["0"] * n,
                "sequence_number": list(range(n)),
                "offset": [0] * n,
                "enqueued_time": pa.array(np.zeros(n, np.int64), pa.timestamp("us", tz="UTC")),
            },
            schema=LANDED_SCHEMA,
        ),
    )


def test_unscored_samples_are_unlabeled_and_not_yet_predicted_by_this_model(lake):
    landed(lake, ["a", "b", "c", "d", "a"])  # "a" twice: scored once
    lake.write_delta(cdc.LABELS_PATH, pa.table({"sample_id": ["b"], "label": [3]}))
    lake.write_parquet(
        f"{predictions_dir('m1')}/scored-1.parquet",
        PREDICTION_SCHEMA.empty_table().cast(PREDICTION_SCHEMA),
    )
    assert sorted(unscored_samples(lake, "m1")["sample_id"].to_pylist()) == ["a", "c", "d"]
    done = pa.table(
        {
            "sample_id": ["c"],
            "predicted_class": [1],
            "probability": [0.9],
            "model_version": ["m1"],
            "scored_at": pa.array([0], pa.timestamp("us", tz="UTC")),
            "run_id": ["r1"],
        },
        schema=PREDICTION_SCHEMA,
    )
    lake.write_parquet(f"{predictions_dir('m1')}/scored-2.parquet", done)
    assert sorted(unscored_samples(lake, "m1")["sample_id"].to_pylist()) == ["a", "d"]
    # A newer model has predicted nothing yet: it scores every unlabeled sample again.
    assert sorted(unscored_samples(lake, "m2")["sample_id"].to_pylist()) == ["a", "c", "d"]
