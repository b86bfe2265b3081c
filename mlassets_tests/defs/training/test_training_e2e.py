"""Events to a trained model through Dagster: land, label by CDC, build the dataset, train
`digit_classifier` with 2 real Horovod workers, and gate it on test accuracy."""

import re
import shutil

import dagster as dg
import numpy as np
import pytest

from mlassets import settings
from mlassets.definitions import defs
from mlassets.defs.resources import local_resources
from mlassets.lib.metadata import ModelMetadata
from mlassets.simulate import make_events, record_truth, simulate_labels


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One training for the whole module: it takes a while."""
    root = tmp_path_factory.mktemp("e2e")
    home = root / "dagster_home"
    home.mkdir()
    shutil.copy(settings.PROJECT_ROOT / "dagster_home" / "dagster.yaml", home)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLASSETS_DATA_DIR", str(root / "data"))
        mp.setenv("DAGSTER_HOME", str(home))
        with dg.DagsterInstance.get() as instance:
            yield _train(instance)


def _train(instance):
    resources = local_resources()
    events = make_events(6000, seed=11)
    resources["event_hub"].publish(events.bodies, events.partition_keys)
    record_truth(settings.data_dir(), events)
    db = resources["labels_db"]
    db.ensure_schema()
    simulate_labels(db, settings.data_dir(), seed=11)  # ~5% of the labels are wrong...
    simulate_labels(db, settings.data_dir(), seed=12)  # ...until the team corrects them (CDC)
    # `defs` bound its resources when it was imported; bind this test's own.
    everything = [*defs.assets, *defs.asset_checks]
    upstream = dg.materialize(
        everything,
        resources=resources,
        instance=instance,
        selection=["landed_events", "cdc_deltas", "labels"],
    )
    assert upstream.success
    result = dg.materialize(
        everything,
        resources=resources,
        instance=instance,
        selection=dg.AssetSelection.assets("training_dataset", "digit_classifier"),
    )
    return result, resources, instance


@pytest.mark.slow
def test_training_end_to_end_reaches_the_accuracy_bar_and_passes_the_blocking_check(trained):
    result, _, _ = trained
    assert result.success
    meta = ModelMetadata.from_run(result)
    assert meta.test_accuracy >= 0.90
    assert meta.workers == 2
    assert meta.samples_per_second > 0
    # A few thousand rows: the automatic step stays small, so every epoch has 32 updates or more
    # and the run makes at least 600.
    assert meta.batch_size_per_worker == 32
    assert meta.steps_per_epoch >= 32
    assert meta.epochs == 12
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {"class_balance": True, "splits_disjoint": True, "test_accuracy": True}


@pytest.mark.slow
def test_the_run_log_holds_one_line_per_epoch_from_the_training_program(trained):
    result, _, instance = trained
    messages = [
        e.message
        for e in instance.all_logs(result.run_id)
        if e.message and re.match(r"epoch \d+/12: loss", e.message)
    ]
    assert [int(m.split()[1].split("/")[0]) for m in messages] == list(range(1, 13))


@pytest.mark.slow
def test_the_saved_model_loads_and_predicts(trained):
    result, _, _ = trained
    meta = ModelMetadata.from_run(result)
    from mlassets.training_program.model import load_model, predict_proba

    model = load_model(meta.model_path)
    from sklearn.datasets import load_digits

    digits = load_digits()
    proba = predict_proba(model, digits.data[:200].astype(np.uint8))
    assert proba.shape == (200, 10)
    assert np.allclose(proba.sum(axis=1), 1.0, atol=1e-4)
    assert (proba.argmax(axis=1) == digits.target[:200]).mean() > 0.85
    assert meta.model_version.endswith(meta.dataset_version[:8])
