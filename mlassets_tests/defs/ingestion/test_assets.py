"""`raw_events` and `landed_events` through Dagster, on the embedded hub and local lake."""

import dagster as dg
import pytest

from mlassets.defs.ingestion.assets import landed_events, raw_events
from mlassets.defs.ingestion.checks import INGESTION_CHECKS as ASSET_CHECKS
from mlassets.defs.resources import local_resources
from mlassets.lib.events import LANDED_SCHEMA
from mlassets.lib.landing import EventRange, landed_paths, live_files
from mlassets.lib.metadata import LandingMetadata
from mlassets.simulate import make_events


@pytest.fixture
def resources(data_dir):
    return local_resources()


def publish(resources, count, malformed=0, seed=7):
    events = make_events(count, malformed, seed)
    resources["event_hub"].publish(events.bodies, events.partition_keys)
    return events


def materialize(resources, instance, run_config=None):
    result = dg.materialize(
        [raw_events, landed_events, *ASSET_CHECKS],
        resources=resources,
        instance=instance,
        selection=[landed_events],
        run_config=run_config,
    )
    assert result.success
    meta = LandingMetadata.from_run(result)
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    return meta, checks


def landed_rows(resources):
    lake = resources["lake"]
    return lake.read_parquet(landed_paths(lake))  # the live files: each event once


def test_materializing_lands_valid_events_and_quarantines_the_rest(resources, instance):
    publish(resources, 5000, malformed=50)
    meta, checks = materialize(resources, instance)
    assert meta.landed_rows == 4950
    assert meta.quarantined_rows == 50
    assert meta.row_count == 4950
    assert checks == {"schema_and_ranges": True, "quarantine_ratio": True}
    assert landed_rows(resources).num_rows == 4950


def test_a_landing_records_the_landed_tables_schema_size_and_location(resources, instance):
    publish(resources, 300)
    meta, _ = materialize(resources, instance)
    assert [c.name for c in meta.column_schema.columns] == LANDED_SCHEMA.names
    assert meta.row_count == landed_rows(resources).num_rows == 300
    assert meta.uri == f"file://{resources['lake'].uri('landed/events')}"
    assert LandingMetadata.latest(instance) == meta


def test_the_row_count_is_the_tables_not_the_runs_even_on_a_fresh_instance(resources, instance):
    publish(resources, 200, seed=1)
    materialize(resources, instance)
    publish(resources, 50, seed=2)
    with dg.DagsterInstance.ephemeral() as fresh:
        meta, _ = materialize(resources, fresh)  # no previous total: counted from footers
    assert meta.landed_rows == 50
    assert meta.row_count == 250


def test_materializing_again_lands_nothing_new_and_duplicates_nothing(resources, instance):
    publish(resources, 1000, malformed=10)
    materialize(resources, instance)
    meta, _ = materialize(resources, instance)
    assert meta.landed_rows == 0 and meta.files_written == 0
    assert meta.row_count == 990
    table = landed_rows(resources)
    assert table.num_rows == 990
    assert len(set(table["sample_id"].to_pylist())) == 990


def test_new_events_land_in_new_files_after_the_watermark(resources, instance):
    publish(resources, 400, seed=1)
    materialize(resources, instance)
    publish(resources, 100, seed=2)
    meta, _ = materialize(resources, instance)
    assert meta.landed_rows == 100
    assert meta.row_count == 500
    assert landed_rows(resources).num_rows == 500


def test_a_requested_range_lands_exactly_that_range_and_a_duplicate_run_adds_nothing(
    resources, instance
):
    publish(resources, 300)
    config = {
        "ops": {
            "landed_events": {"config": {"ranges": [{"partition_id": "1", "first": 0, "last": 9}]}}
        }
    }
    meta, _ = materialize(resources, instance, config)
    assert meta.files == ["landed/events/partition=1/seq=0-9.parquet"]
    meta, _ = materialize(resources, instance, config)
    assert meta.files == [] and meta.landed_rows == 0
    assert landed_rows(resources).num_rows == 10


def test_a_high_quarantine_ratio_fails_its_check_but_not_the_run(resources, instance):
    publish(resources, 100, malformed=30)
    meta, checks = materialize(resources, instance)
    assert meta.quarantine_ratio == pytest.approx(0.3)
    assert checks["quarantine_ratio"] is False
    assert checks["schema_and_ranges"] is True


def test_observing_raw_events_reports_per_partition_sequence_numbers_and_backlog(
    resources, instance
):
    publish(resources, 200)
    result = dg.materialize(
        [raw_events], resources=resources, instance=instance, selection=[raw_events.key]
    )
    assert result.success
    observation = instance.fetch_observations(raw_events.key, limit=1).records[0].asset_observation
    records = observation.metadata["partitions"].records
    assert sum(r.data["backlog"] for r in records) == 200
    assert sum(r.data["last_seq"] + 1 for r in records) == 200


def test_a_landing_compacts_small_files_and_its_check_reads_the_merged_file(resources, instance):
    publish(resources, 12_000, malformed=40)
    p = max(
        resources["event_hub"].all_partition_properties(),
        key=lambda x: x.last_enqueued_sequence_number,
    ).partition_id  # about 3,000 events: 2,400 land in eight files of 300
    ranges = [{"partition_id": p, "first": a, "last": a + 299} for a in range(0, 2400, 300)]
    result = dg.materialize(
        [raw_events, landed_events, *ASSET_CHECKS],
        resources=resources,
        instance=instance,
        selection=[landed_events],
        run_config={"ops": {"landed_events": {"config": {"ranges": ranges}}}},
    )
    assert result.success
    meta = LandingMetadata.from_run(result)
    assert len(meta.files) == 8
    # Block 0..2047 is complete once 1800..2099 has landed: its seven files became one.
    assert live_files(resources["lake"], p) == [EventRange(p, 0, 2099), EventRange(p, 2100, 2399)]
    recorded = result.get_asset_materialization_events()[0].materialization.metadata
    assert recorded["compaction_merges"].value == 1
    assert recorded["landed_files"].value == 2
    assert f"| {p} | 8 | 2 | 1 |" in recorded["compaction"].value
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks["schema_and_ranges"] is True
    rows = landed_rows(resources)
    assert rows.num_rows == len(set(rows["sample_id"].to_pylist()))
