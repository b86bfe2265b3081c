"""The metadata contract: what each asset records survives the trip through Dagster's event
log, and the readers find the newest one."""

import dataclasses

import dagster as dg
import pyarrow as pa
import pytest

from mlassets.lib.metadata import (
    CONTRACTS,
    DIGIT_CLASSIFIER,
    INCOMING_EVENTS,
    LABELS,
    LANDED_EVENTS,
    AccuracyCheckMetadata,
    ApprovalMetadata,
    AssetMetadata,
    CaptureMetadata,
    DatasetMetadata,
    IncomingMetadata,
    LabelsMetadata,
    LandingMetadata,
    ModelMetadata,
    ScoringMetadata,
    column_lineage,
    column_schema,
    lake_uri,
)

SCHEMA = column_schema(pa.schema([pa.field("sample_id", pa.string(), nullable=False)]))
TABLE = dg.MetadataValue.table(
    [dg.TableRecord({"class": 1, "rows": 3})],
    schema=dg.TableSchema(columns=[dg.TableColumn("class", "int"), dg.TableColumn("rows", "int")]),
)
RUN = {"adf_run_id": dg.MetadataValue.text("run-1")}

#: One filled-in example of every contract (no field left at its default where it matters).
EXAMPLES: dict[type, AssetMetadata] = {
    LandingMetadata: LandingMetadata(
        landed_rows=990,
        quarantined_rows=10,
        quarantine_ratio=0.01,
        expired_events=2,
        files_written=1,
        bytes_written=4096,
        events_per_second=1234.5,
        ranges=TABLE,
        quarantine_reasons="| reason | events |",
        files=["landed/events/partition=0/seq=0-999.parquet"],
        quarantine_path="/lake/quarantine/events",
        row_count=5000,
        column_schema=SCHEMA,
        uri="file:///lake/landed/events",
    ),
    IncomingMetadata: IncomingMetadata(
        drop="/lake/incoming/a.csv",
        landed_rows=94,
        quarantined_rows=6,
        copy_skipped_rows=1,
        replaced_rows=90,
        rewrite=True,
        files=["landed/events/partition=incoming/drop=a.parquet"],
        pipeline_run=RUN,
        row_count=94,
    ),
    CaptureMetadata: CaptureMetadata(
        changes=7, updates=3, deletes=1, to_lsn="0x0a", files=["cdc/labels/lsn=01-0a.parquet"]
    ),
    LabelsMetadata: LabelsMetadata(
        delta_version=3, updated=2, new_version=True, labels_per_class=TABLE, snapshot_run=RUN
    ),
    DatasetMetadata: DatasetMetadata(
        version="abc123",
        train_rows=80,
        validation_rows=10,
        test_rows=10,
        landed_ranges={"0": ["0-99"]},
        pixel_histogram=[0.5, 0.5],
        row_count=100,
        column_lineage=column_lineage({"label": [(LABELS, "label")]}),
    ),
    ModelMetadata: ModelMetadata(
        test_accuracy=0.97,
        workers=2,
        dataset_version="abc123",
        model_version="20261101T000000-abc123",
        model_path="/lake/models/m/model.keras",
        history="| epoch |",
        retrain_reason="drift",
        compute_details={"azure_batch_job_id": dg.MetadataValue.text("job-1")},
    ),
    ApprovalMetadata: ApprovalMetadata(
        model_version="20261101T000000-abc123",
        test_accuracy=0.97,
        threshold=0.9,
        dataset_version="abc123",
        model_path="/lake/models/m/model.keras",
        replaces="20261031T000000-abc000",
        pointer="/lake/models/digit_classifier/approved.json",
    ),
    ScoringMetadata: ScoringMetadata(
        rows_scored=12, model_version="m1", mean_confidence=0.9, export_run=RUN, row_count=40
    ),
}


def report(instance, recorded: AssetMetadata) -> None:
    instance.report_runless_asset_event(
        dg.AssetMaterialization(asset_key=recorded.asset_key, metadata=recorded.to_metadata())
    )


def test_every_contract_has_an_example():
    assert set(EXAMPLES) == set(CONTRACTS)


@pytest.mark.parametrize("contract", CONTRACTS, ids=lambda c: c.__name__)
def test_what_is_recorded_reads_back_equal(contract):
    example = EXAMPLES[contract]
    assert contract.from_metadata(example.to_metadata()) == example


@pytest.mark.parametrize("contract", CONTRACTS, ids=lambda c: c.__name__)
def test_it_reads_back_equal_through_the_event_log(contract, instance):
    example = EXAMPLES[contract]
    report(instance, example)
    assert contract.latest(instance) == example


@pytest.mark.parametrize("contract", CONTRACTS, ids=lambda c: c.__name__)
def test_no_field_hides_a_reader(contract):
    readers = {name for name in dir(AssetMetadata) if not name.startswith("_")}
    assert not readers & {f.name for f in dataclasses.fields(contract)}


def test_entries_it_does_not_name_are_kept_as_they_came():
    recorded = ScoringMetadata(rows_scored=1, export_run=RUN).to_metadata()
    assert recorded["adf_run_id"] == RUN["adf_run_id"]
    assert ScoringMetadata.from_metadata(recorded).export_run == RUN


def test_entries_left_unset_are_not_recorded_and_missing_ones_read_as_defaults():
    recorded = ModelMetadata(model_version="m1").to_metadata()
    assert "retrain_reason" not in recorded and "model_dir" not in recorded
    old = ModelMetadata.from_metadata({"model_version": dg.MetadataValue.text("m1")})
    assert old.test_accuracy == 0.0 and old.retrain_reason is None
    assert LandingMetadata.from_metadata({}).row_count is None  # nothing to carry forward


def test_table_contracts_record_what_the_ui_understands_under_its_keys():
    recorded = EXAMPLES[LandingMetadata].to_metadata()
    assert recorded["dagster/row_count"] == dg.MetadataValue.int(5000)
    assert recorded["dagster/column_schema"] == dg.MetadataValue.table_schema(SCHEMA)
    assert recorded["dagster/uri"] == dg.MetadataValue.text("file:///lake/landed/events")
    lineage = EXAMPLES[DatasetMetadata].to_metadata()["dagster/column_lineage"]
    assert lineage.value.deps_by_column["label"] == [dg.TableColumnDep(LABELS, "label")]
    assert list(recorded)[-3:] == ["dagster/row_count", "dagster/column_schema", "dagster/uri"]


def test_figures_are_recorded_as_numbers_so_the_ui_plots_them():
    recorded = EXAMPLES[ModelMetadata].to_metadata()
    assert isinstance(recorded["test_accuracy"], dg.FloatMetadataValue)
    assert isinstance(recorded["workers"], dg.IntMetadataValue)


def test_it_reads_from_every_shape_dagster_hands_out(instance):
    example = EXAMPLES[LandingMetadata]
    materialization = dg.AssetMaterialization(LANDED_EVENTS, metadata=example.to_metadata())
    assert LandingMetadata.from_metadata(materialization) == example
    assert LandingMetadata.from_metadata(dg.MaterializeResult(metadata=example.to_metadata()))
    instance.report_runless_asset_event(materialization)
    assert (
        LandingMetadata.from_metadata(instance.get_latest_materialization_event(LANDED_EVENTS))
        == example
    )
    (record,) = instance.fetch_materializations(LANDED_EVENTS, limit=1).records
    assert LandingMetadata.from_metadata(record) == example


def test_latest_is_none_before_the_first_materialization_then_the_newest(instance):
    assert ModelMetadata.latest(instance) is None
    assert ModelMetadata.latest_recorded(instance) is None
    report(instance, ModelMetadata(model_version="m1"))
    report(instance, ModelMetadata(model_version="m2"))
    assert ModelMetadata.latest(instance).model_version == "m2"
    assert LandingMetadata.latest(instance) is None  # other assets are not mixed in


def test_records_are_newest_first_and_can_start_after_a_storage_id(instance):
    for n in (1, 2, 3):
        report(instance, CaptureMetadata(updates=n))
    records = CaptureMetadata.records(instance)
    assert [r.metadata.updates for r in records] == [3, 2, 1]
    after = CaptureMetadata.records(instance, after_storage_id=records[-1].storage_id)
    assert [r.metadata.updates for r in after] == [3, 2]
    assert CaptureMetadata.latest_recorded(instance).storage_id == records[0].storage_id


def test_a_dataset_version_is_found_among_the_recent_ones(instance):
    report(instance, DatasetMetadata(version="v1", labels_read=10))
    report(instance, DatasetMetadata(version="v2", labels_read=20))
    assert DatasetMetadata.of_version(instance, "v1").metadata.labels_read == 10
    assert DatasetMetadata.of_version(instance, "nope") is None


def test_a_run_result_gives_the_last_materialization_of_the_asset(instance):
    @dg.asset(key=DIGIT_CLASSIFIER)
    def model() -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata=ModelMetadata(model_version="m9").to_metadata())

    result = dg.materialize([model], instance=instance)
    assert ModelMetadata.from_run(result).model_version == "m9"
    assert LandingMetadata.from_run(result) is None


def test_a_pipes_process_reports_the_same_keys_and_types():
    reported = EXAMPLES[ModelMetadata].to_pipes()
    assert reported["test_accuracy"] == {"raw_value": 0.97, "type": "float"}
    assert reported["model_path"] == {"raw_value": "/lake/models/m/model.keras", "type": "path"}
    assert "compute_details" not in reported and "compute" not in reported  # Dagster's side adds
    assert set(reported) <= set(EXAMPLES[ModelMetadata].to_metadata())


def test_check_results_have_a_contract_too():
    judged = AccuracyCheckMetadata(test_accuracy=0.95, threshold=0.9, model_version="m1")
    assert AccuracyCheckMetadata.from_metadata(judged.to_metadata()) == judged


def test_the_column_schema_is_the_pyarrow_schemas():
    schema = column_schema(
        pa.schema([pa.field("sample_id", pa.string(), nullable=False), pa.field("n", pa.int64())]),
        descriptions={"n": "how many"},
    )
    assert [(c.name, c.type) for c in schema.columns] == [("sample_id", "string"), ("n", "int64")]
    assert [c.constraints.nullable for c in schema.columns] == [False, True]
    assert schema.columns[1].description == "how many"


def test_lake_uris_name_their_scheme():
    assert lake_uri("/data/lake/landed/events") == "file:///data/lake/landed/events"
    assert lake_uri("abfs://lake@acct.dfs.core.windows.net/x") == (
        "abfs://lake@acct.dfs.core.windows.net/x"
    )


def test_every_contract_belongs_to_an_asset_of_the_code_location():
    from mlassets.definitions import defs

    keys = {spec.key for spec in defs.resolve_all_asset_specs()}
    missing = {c.asset_key for c in CONTRACTS} - keys
    # incoming_events is the import of a drop as its own asset (being built separately).
    assert missing <= {INCOMING_EVENTS}


def test_an_import_says_which_copy_run_landed_it_and_how_much_the_table_grew():
    imported = EXAMPLES[IncomingMetadata]
    assert imported.copy_run == ("run-1", "-")  # the engine was not recorded in the example
    assert imported.net_new_rows == 94 - 90  # a re-import replaced 90 rows


def test_latest_of_one_partition_is_that_partitions_newest(instance):
    for drop, rows in (("a.csv", 1), ("b.csv", 2), ("a.csv", 3)):
        instance.report_runless_asset_event(
            dg.AssetMaterialization(
                asset_key=INCOMING_EVENTS,
                partition=drop,
                metadata=IncomingMetadata(landed_rows=rows).to_metadata(),
            )
        )
    assert IncomingMetadata.latest(instance, partition="a.csv").landed_rows == 3
    assert IncomingMetadata.latest(instance, partition="b.csv").landed_rows == 2
    assert IncomingMetadata.latest(instance, partition="c.csv") is None
    assert IncomingMetadata.latest(instance).landed_rows == 3
