"""`training_dataset`: landed events ⨝ current labels, split by a stable hash, versioned."""

import contextlib

import dagster as dg

from mlassets.defs.ingestion.assets import landed_events
from mlassets.defs.ingestion.incoming import incoming_events
from mlassets.defs.labels.assets import labels
from mlassets.defs.quality import QualityPolicy
from mlassets.lib.layout import LABELS_PATH
from mlassets.lib.lazy import lazy
from mlassets.lib.metadata import (
    LABELS,
    LANDED_EVENTS,
    TRAINING_DATASET,
    DatasetMetadata,
    column_lineage,
    column_schema,
    lake_uri,
)
from mlassets.roles.storage import LakeStorage

# Loaded when a run or tick needs them, not when the code location loads.
np = lazy("numpy")
pa = lazy("pyarrow")
cdc = lazy("mlassets.lib.cdc")
datasets = lazy("mlassets.lib.datasets")
sample_state = lazy("mlassets.lib.sample_state")

#: Where each column of the dataset comes from (shown as column lineage in the UI).
DATASET_LINEAGE = {
    "sample_id": [(LANDED_EVENTS, "sample_id"), (LABELS, "sample_id")],
    "pixels": [(LANDED_EVENTS, "pixels")],
    "label": [(LABELS, "label")],
    "split": [(LANDED_EVENTS, "sample_id")],  # a stable hash of it
}


@dg.asset(
    key=TRAINING_DATASET,
    deps=[landed_events, incoming_events, labels],
    group_name="training",
    description="Landed events joined with current labels (latest event per sample; retracted "
    "labels drop the sample), split 80/10/10 by a stable hash of sample_id, written as Parquet "
    "shards under `datasets/digits/v=<content hash>/`.",
    kinds={"parquet"},
)
def training_dataset(context: dg.AssetExecutionContext, lake: LakeStorage) -> dg.MaterializeResult:
    # What is new since the last build (landed events past the watermarks, label changes past
    # the applied LSN) moves the sample state on; the version is read from it, not rebuilt.
    state = sample_state.advance(lake, log=context.log.info)
    labels_table = lake.delta_table(LABELS_PATH)
    _require_inputs(state.live_rows, labels_table)
    if state.labelled_rows == 0:
        raise dg.Failure(
            description=f"none of the {state.live_rows:,} landed samples has a label: label "
            "those samples, then materialize cdc_deltas and labels",
            allow_retries=False,
        )
    manifest = datasets.write_manifest(lake, state)
    histogram = state.histogram
    rows = {name: int(sum(histogram[name])) for name in datasets.SPLITS}
    previous = DatasetMetadata.latest(context.instance)
    # What this build took in: the steps since the previous build's state (this run's, and
    # those scoring runs took in between).
    read = sample_state.taken_in(lake, previous.state if previous else -1, state.number)
    context.log.info(
        f"dataset {state.version}: {rows['train']} train, {rows['validation']} validation, "
        f"{rows['test']} test rows (state {state.number}; {read['events']:,} new events and "
        f"{read['label_changes']:,} label changes taken in by this build)"
    )
    pixel_total = sum(state.pixel_counts) or 1
    return dg.MaterializeResult(
        data_version=dg.DataVersion(state.version),
        metadata=DatasetMetadata(
            version=state.version,
            train_rows=rows["train"],
            validation_rows=rows["validation"],
            test_rows=rows["test"],
            class_histogram=dg.MetadataValue.table(
                [
                    dg.TableRecord({"class": c, **{s: histogram[s][c] for s in datasets.SPLITS}})
                    for c in range(10)
                ],
                schema=dg.TableSchema(
                    columns=[dg.TableColumn("class", "int")]
                    + [dg.TableColumn(s, "int") for s in datasets.SPLITS]
                ),
            ),
            labels_delta_version=labels_table.version() if labels_table is not None else -1,
            landed_ranges={p: [f"0-{seq}"] for p, seq in sorted(state.landed.items())},
            landed_events_read=read["events"],
            labels_read=cdc.labels_row_count(labels_table),
            files=[p for s in datasets.SPLITS for p in manifest.paths(s)],
            state=state.number,
            segments=len(state.segments),
            # The reference distribution for the retraining sensor's drift policy.
            pixel_histogram=[round(c / pixel_total, 6) for c in state.pixel_counts],
            row_count=state.labelled_rows,
            column_schema=column_schema(
                datasets.DATASET_SCHEMA.append(pa.field("split", pa.int8()))
            ),
            column_lineage=column_lineage(DATASET_LINEAGE),
            uri=lake_uri(lake.uri(datasets.manifest_path(state.version))),
        ).to_metadata(),
    )


def _require_inputs(live_rows: int, labels_table) -> None:
    """One line that says what to materialize first, instead of a dataset of 0 rows (and a
    class_balance failure listing ten zeros)."""
    if live_rows == 0:
        raise dg.Failure(
            description="no landed events yet: materialize landed_events first",
            allow_retries=False,
        )
    if labels_table is None:
        raise dg.Failure(
            description="no labels yet: materialize cdc_deltas and labels first",
            allow_retries=False,
        )


def _latest_version(instance: dg.DagsterInstance) -> str | None:
    latest = DatasetMetadata.latest(instance)
    return latest.version if latest and latest.version else None


@dg.asset_check(
    asset=training_dataset,
    name="class_balance",
    description="Every digit has at least the `quality` resource's min_class_rows training rows "
    "(MLASSETS_MIN_CLASS_ROWS).",
    blocking=True,
)
def training_dataset_class_balance(
    context: dg.AssetCheckExecutionContext, lake: LakeStorage, quality: QualityPolicy
) -> dg.AssetCheckResult:
    # The version's class counts are kept with it (the sample state adds and takes away each
    # row's label), so the check reads one small manifest, not the training rows.
    version = _latest_version(context.instance)
    counts = np.array(
        datasets.read_manifest(lake, version).histogram["train"] if version else [0] * 10
    )
    threshold = quality.min_class_rows
    short = {int(c): int(n) for c, n in enumerate(counts) if n < threshold}
    return dg.AssetCheckResult(
        passed=not short,
        metadata={
            "min_rows": dg.MetadataValue.int(int(counts.min())),
            "threshold": dg.MetadataValue.int(threshold),
            "classes_below_threshold": dg.MetadataValue.json(short),
        },
        description=f"classes below {threshold} training rows: {short}" if short else None,
    )


@dg.asset_check(
    asset=training_dataset,
    name="splits_disjoint",
    description="Every row added since the previous version lies in the split its sample id "
    "hashes to, so no sample id is in two splits (rows of earlier versions were checked then).",
    blocking=True,
)
def training_dataset_splits_disjoint(
    context: dg.AssetCheckExecutionContext, lake: LakeStorage
) -> dg.AssetCheckResult:
    records = DatasetMetadata.records(context.instance, limit=2)
    if not records or not records[0].metadata.version:
        return dg.AssetCheckResult(passed=True, metadata={"files_checked": 0})
    manifest = datasets.read_manifest(lake, records[0].metadata.version)
    seen: set[str] = set()
    if len(records) > 1 and records[1].metadata.version:
        with contextlib.suppress(FileNotFoundError):
            earlier = datasets.read_manifest(lake, records[1].metadata.version)
            seen = {seg for pairs in earlier.files.values() for seg, _ in pairs}
    misplaced: dict[str, int] = {}
    checked = 0
    for index, split in enumerate(datasets.SPLITS):
        for segment, path in manifest.files.get(split, []):
            if segment in seen:
                continue
            ids = lake.read_parquet(path, columns=["sample_id"])["sample_id"]
            checked += 1
            if wrong := int((datasets.split_of(ids) != index).sum()):
                misplaced[path] = wrong
    return dg.AssetCheckResult(
        passed=not misplaced,
        metadata={
            "files_checked": dg.MetadataValue.int(checked),
            "misplaced_rows": dg.MetadataValue.json(misplaced),
        },
        description=f"rows in the wrong split's files: {misplaced}" if misplaced else None,
    )


DATASET_CHECKS = [training_dataset_class_balance, training_dataset_splits_disjoint]
