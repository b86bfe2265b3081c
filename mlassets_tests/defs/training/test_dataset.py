"""`training_dataset` with nothing to build from: one line that says what to materialize first,
not a dataset of 0 rows and a class_balance failure listing ten zeros."""

import dagster as dg

from mlassets.definitions import defs
from mlassets.defs.resources import local_resources
from mlassets.simulate import make_events


def _build_dataset(instance, resources, *selection: str) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [*defs.assets, *defs.asset_checks],
        resources=resources,
        instance=instance,
        selection=dg.AssetSelection.assets(*selection),
        raise_on_error=False,
    )


def _failure(result: dg.ExecuteInProcessResult) -> str:
    (failed,) = [e for e in result.all_events if e.is_step_failure]
    return failed.step_failure_data.user_failure_data.description


def test_without_landed_events_the_dataset_asks_for_landed_events_first(data_dir, instance):
    result = _build_dataset(instance, local_resources(), "training_dataset")
    assert not result.success
    assert _failure(result) == "no landed events yet: materialize landed_events first"
    assert not result.get_asset_materialization_events()


def test_with_events_but_no_labels_the_dataset_asks_for_the_labels_first(data_dir, instance):
    resources = local_resources()
    events = make_events(200, seed=3)
    resources["event_hub"].publish(events.bodies, events.partition_keys)
    assert _build_dataset(instance, resources, "landed_events").success
    result = _build_dataset(instance, resources, "training_dataset")
    assert not result.success
    assert _failure(result) == "no labels yet: materialize cdc_deltas and labels first"
