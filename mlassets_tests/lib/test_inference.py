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


def test_score_predicts_each_sample_once_as_the_model_does_stamped_with_model_and_run():
    import numpy as np
    import pyarrow as pa

    from mlassets.lib.inference import PREDICTION_SCHEMA, score
    from mlassets.training_program.model import build_model, predict_classes, to_features

    model = build_model(seed=1)
    pixels = np.random.default_rng(0).integers(0, 17, size=(300, 64), dtype=np.uint8)
    samples = pa.table(
        {
            "sample_id": [f"s{i}" for i in range(300)],
            "pixels": pa.array(list(pixels), pa.list_(pa.uint8())),
        }
    )
    logits = model(to_features(pixels), training=False).numpy()
    proba = np.exp(logits - logits.max(1, keepdims=True))
    proba /= proba.sum(1, keepdims=True)

    scored = score(model, samples, "m1", run_id="run-1")
    assert scored.schema == PREDICTION_SCHEMA
    assert scored["sample_id"].to_pylist() == samples["sample_id"].to_pylist()
    assert (scored["predicted_class"].to_numpy() == proba.argmax(1)).all()
    assert np.allclose(scored["probability"].to_numpy(), proba.max(1), atol=1e-6)
    assert set(scored["model_version"].to_pylist()) == {"m1"}
    assert set(scored["run_id"].to_pylist()) == {"run-1"}
    assert scored["scored_at"].null_count == 0 and len(set(scored["scored_at"].to_pylist())) == 1
    # Outside a run the run is empty; chunks (here of 128 rows) give the same answer.
    assert score(model, samples.slice(0, 2), "m1")["run_id"].to_pylist() == [None, None]
    classes, best = predict_classes(model, pixels, chunk=128)
    assert (classes == scored["predicted_class"].to_numpy()).all()
    assert np.allclose(best, scored["probability"].to_numpy())
