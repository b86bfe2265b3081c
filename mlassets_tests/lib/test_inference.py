"""Scoring: only approved models score, and only samples with no label and no prediction."""

import dagster as dg
import numpy as np
import pyarrow as pa
import pytest

from mlassets.lib import cdc
from mlassets.lib.events import LANDED_SCHEMA
from mlassets.lib.inference import (
    PREDICTION_SCHEMA,
    approved_models,
    predictions_dir,
    unscored_samples,
)
from mlassets.lib.metadata import ApprovalMetadata
from mlassets.roles.storage import LakeStorage


def approved(instance, version, accuracy):
    approval = ApprovalMetadata(
        model_version=version, model_path=f"/models/{version}/model.keras", test_accuracy=accuracy
    )
    instance.report_runless_asset_event(
        dg.AssetMaterialization(asset_key=approval.asset_key, metadata=approval.to_metadata())
    )


def test_the_approved_models_are_what_approved_model_recorded_newest_first_each_once(instance):
    approved(instance, "20261101T000000-aaaa", 0.95)
    approved(instance, "20261102T000000-bbbb", 0.97)
    approved(instance, "20261102T000000-bbbb", 0.97)  # approved again: listed once
    assert [(m.version, m.test_accuracy) for m in approved_models(instance)] == [
        ("20261102T000000-bbbb", 0.97),
        ("20261101T000000-aaaa", 0.95),
    ]
    assert approved_models(instance)[0].path == "/models/20261102T000000-bbbb/model.keras"


def test_without_an_approval_no_model_was_ever_allowed_to_score(instance):
    assert approved_models(instance) == []


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
