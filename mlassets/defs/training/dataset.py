"""`training_dataset`: landed events ⨝ current labels, split by a stable hash, versioned."""

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
pc = lazy("pyarrow.compute")
cdc = lazy("mlassets.lib.cdc")
datasets = lazy("mlassets.lib.datasets")
events = lazy("mlassets.lib.events")
landing = lazy("mlassets.lib.landing")

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
    files = lake.glob(f"{landing.LANDED_PREFIX}/partition=*/*.parquet")
    columns = ["sample_id", "pixels", "captured_at", "sequence_number"]
    landed = lake.read_parquet(files, columns=columns, schema=events.LANDED_SCHEMA)
    current = cdc.read_labels_table(lake, columns=["sample_id", "label"])
    _require_inputs(landed.num_rows, current.num_rows)
    labels_table = lake.delta_table(LABELS_PATH)
    dataset = datasets.build_dataset(landed, current)
    if dataset.table.num_rows == 0:
        raise dg.Failure(
            description=f"none of the {landed.num_rows:,} landed events has one of the "
            f"{current.num_rows:,} labels: label those samples, then materialize cdc_deltas "
            "and labels",
            allow_retries=False,
        )
    written = datasets.write_dataset(lake, dataset)
    histogram = dataset.class_histogram()
    rows = {name: int(sum(histogram[name])) for name in datasets.SPLITS}
    context.log.info(
        f"dataset {dataset.version}: {rows['train']} train, {rows['validation']} validation, "
        f"{rows['test']} test rows from {landed.num_rows} landed events and "
        f"{current.num_rows} labels"
    )
    return dg.MaterializeResult(
        data_version=dg.DataVersion(dataset.version),
        metadata=DatasetMetadata(
            version=dataset.version,
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
            landed_ranges=_ranges_read(files),
            landed_events_read=landed.num_rows,
            labels_read=current.num_rows,
            files=written,
            # The reference distribution for the retraining sensor's drift policy.
            pixel_histogram=[
                round(x, 6) for x in datasets.pixel_histogram(dataset.split("train")["pixels"])
            ],
            row_count=dataset.table.num_rows,
            column_schema=column_schema(dataset.table.schema),
            column_lineage=column_lineage(DATASET_LINEAGE),
            uri=lake_uri(lake.uri(datasets.dataset_dir(dataset.version))),
        ).to_metadata(),
    )


def _require_inputs(landed_rows: int, label_rows: int) -> None:
    """One line that says what to materialize first, instead of a dataset of 0 rows (and a
    class_balance failure listing ten zeros)."""
    if landed_rows == 0:
        raise dg.Failure(
            description="no landed events yet: materialize landed_events first",
            allow_retries=False,
        )
    if label_rows == 0:
        raise dg.Failure(
            description="no labels yet: materialize cdc_deltas and labels first",
            allow_retries=False,
        )


def _ranges_read(files: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for path in files:
        rng = landing.EventRange.from_path(path)
        key = rng.partition_id if rng else path.split("/")[-2]
        out.setdefault(key, []).append(f"{rng.first}-{rng.last}" if rng else path.split("/")[-1])
    return out


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
    version = _latest_version(context.instance)
    train = (
        datasets.read_split(lake, version, "train")
        if version
        else datasets.DATASET_SCHEMA.empty_table()
    )
    counts = np.bincount(train["label"].to_numpy(), minlength=10)
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
    description="No sample id appears in two splits.",
    blocking=True,
)
def training_dataset_splits_disjoint(
    context: dg.AssetCheckExecutionContext, lake: LakeStorage
) -> dg.AssetCheckResult:
    version = _latest_version(context.instance)
    ids = (
        {s: datasets.read_split(lake, version, s)["sample_id"] for s in datasets.SPLITS}
        if version
        else {}
    )
    overlaps = {}
    for i, a in enumerate(datasets.SPLITS):
        for b in datasets.SPLITS[i + 1 :]:
            if a in ids and b in ids:
                both = pc.is_in(ids[a], value_set=ids[b])
                n = int(pc.sum(both).as_py() or 0)
                if n:
                    overlaps[f"{a}/{b}"] = n
    return dg.AssetCheckResult(
        passed=not overlaps, metadata={"overlaps": dg.MetadataValue.json(overlaps)}
    )


DATASET_CHECKS = [training_dataset_class_balance, training_dataset_splits_disjoint]
