"""Scoring: only approved models score (which samples they score: test_scoring)."""

import dagster as dg

from mlassets.lib.inference import approved_models
from mlassets.lib.metadata import ApprovalMetadata


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
