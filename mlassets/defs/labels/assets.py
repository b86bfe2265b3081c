"""Labels by change data capture: `cdc_deltas` (change batches) and `labels` (current state).

The logic lives in `mlassets.lib.cdc`; these assets run it, turn failures into messages a person
can act on, and report what happened as metadata.
"""

import dagster as dg
from pydantic import Field

from mlassets.lib.layout import CDC_PREFIX, LABELS_PATH
from mlassets.lib.lazy import lazy
from mlassets.lib.metadata import (
    CDC_DELTAS,
    LABELS,
    CaptureMetadata,
    LabelsMetadata,
    column_schema,
    lake_uri,
)
from mlassets.roles.datafactory import DataFactoryResource, run_metadata
from mlassets.roles.labels_db import CdcNotEnabledError, LabelsDatabase
from mlassets.roles.storage import LakeStorage

# Loaded when a run or tick needs them, not when the code location loads.
np = lazy("numpy")
pa = lazy("pyarrow")
pc = lazy("pyarrow.compute")
cdc = lazy("mlassets.lib.cdc")
datasets = lazy("mlassets.lib.datasets")
adf = lazy("mlassets.lib.adf")


def _lsn(value: str | None) -> str:
    return f"0x{value}" if value else "-"


class CaptureConfig(dg.Config):
    max_batch_rows: int = Field(
        default=1_000_000,
        description="most changes in one Parquet batch; a larger backlog is cut at LSN "
        "boundaries into several batches",
    )


@dg.asset(
    key=CDC_DELTAS,
    group_name="labels",
    description="Changes of the labels table (Azure SQL CDC, or the embedded twin's), one "
    f"Parquet batch per LSN range under `{CDC_PREFIX}/`: operation, LSN and the row.",
    kinds={"parquet", "sql"},
    tags={"mlassets/role": "lake"},
    # One labels step at a time (dagster_home/dagster.yaml): batches are resolved against the lake.
    pool="labels",
)
def cdc_deltas(
    context: dg.AssetExecutionContext,
    config: CaptureConfig,
    labels_db: LabelsDatabase,
    lake: LakeStorage,
) -> dg.MaterializeResult:
    try:
        result = cdc.capture_changes(labels_db, lake, config.max_batch_rows)
    except cdc.RetentionExpiredError as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from exc
    except CdcNotEnabledError as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from exc
    for b in result.batches:
        context.log.info(
            f"LSN 0x{b.range.first}..0x{b.range.last}: {b.rows} changes "
            + ", ".join(f"{n} {op}" for op, n in b.operations.items() if n)
            + (" (absorbed the preceding empty batch)" if b.coalesced else "")
        )
    if not result.batches:
        context.log.info(
            f"no new changes: source max LSN {_lsn(result.bounds.max_lsn)}, "
            f"captured through {_lsn(result.watermark)}"
        )
    return dg.MaterializeResult(
        metadata=capture_metadata(
            result, lake, captured_row_count(context.instance, lake, result.rows)
        ).to_metadata(),
        data_version=dg.DataVersion(result.captured_through or "none"),
    )


def captured_row_count(instance: dg.DagsterInstance, lake: LakeStorage, added: int) -> int:
    """Change rows in all batches: the previous capture's total plus this one's (footers
    only when there is no previous total)."""
    from mlassets.lib.tables import running_total

    previous = CaptureMetadata.latest(instance)
    return running_total(
        previous.row_count if previous else None, added, lake, f"{CDC_PREFIX}/*.parquet"
    )


def capture_metadata(
    result: "cdc.CaptureResult", lake: LakeStorage, row_count: int
) -> CaptureMetadata:
    ops = result.operations()
    rows = result.rows
    first, last = (result.batches[0], result.batches[-1]) if result.batches else (None, None)
    return CaptureMetadata(
        changes=rows,
        inserts=ops["insert"],
        updates=ops["update_after"],
        deletes=ops["delete"],
        update_before_images=ops["update_before"],
        from_lsn=_lsn(first.range.first if first else None),
        to_lsn=_lsn(last.range.last if last else None),
        captured_through_lsn=_lsn(result.captured_through),
        previous_watermark=f"{_lsn(result.watermark)} ({result.watermark_source})",
        source_min_lsn=_lsn(result.bounds.min_lsn),
        source_max_lsn=_lsn(result.bounds.max_lsn),
        files_written=len(result.batches),
        bytes_written=sum(b.bytes_written for b in result.batches),
        changes_per_second=round(rows / result.seconds, 1) if result.seconds and rows else 0.0,
        batches=dg.MetadataValue.table(
            [
                dg.TableRecord(
                    {
                        "from_lsn": _lsn(b.range.first),
                        "to_lsn": _lsn(b.range.last),
                        "changes": b.rows,
                        "inserts": b.operations["insert"],
                        "updates": b.operations["update_after"],
                        "deletes": b.operations["delete"],
                        "bytes": b.bytes_written,
                    }
                )
                for b in result.batches
            ],
            schema=dg.TableSchema(
                columns=[
                    dg.TableColumn("from_lsn", "string"),
                    dg.TableColumn("to_lsn", "string"),
                    dg.TableColumn("changes", "int"),
                    dg.TableColumn("inserts", "int"),
                    dg.TableColumn("updates", "int"),
                    dg.TableColumn("deletes", "int"),
                    dg.TableColumn("bytes", "int"),
                ]
            ),
        ),
        # Read by the asset checks: exactly the batches this materialization wrote.
        files=[b.range.path for b in result.batches],
        row_count=row_count,
        column_schema=column_schema(cdc.CHANGE_SCHEMA),
        uri=lake_uri(lake.uri(CDC_PREFIX)),
    )


class LabelsConfig(dg.Config):
    resnapshot: bool = Field(
        default=False,
        description="rebuild curated/labels from a full snapshot of the source (a new Delta "
        "version; history is kept). Use it when cdc_deltas reports that CDC retention expired.",
    )


@dg.asset(
    key=LABELS,
    deps=[cdc_deltas],
    group_name="labels",
    description=f"The current label of every sample as a Delta Lake table (`{LABELS_PATH}`), "
    "equal to the source table: built from a full snapshot, then kept equal by MERGE-ing the "
    "change batches in LSN order (last change per key wins, deletes remove).",
    kinds={"deltalake", "azure"},
    tags={"mlassets/role": "lake"},
    # One labels step at a time (dagster_home/dagster.yaml): batches are resolved against the lake.
    pool="labels",
)
def labels(
    context: dg.AssetExecutionContext,
    config: LabelsConfig,
    labels_db: LabelsDatabase,
    lake: LakeStorage,
    data_factory: DataFactoryResource,
) -> dg.MaterializeResult:
    try:
        state = cdc.labels_state(lake)
        exists = state is not None
    except cdc.LabelsStateError as exc:
        if not config.resnapshot:
            raise dg.Failure(description=str(exc), allow_retries=False) from exc
        state, exists = None, True
    snapshot: cdc.LabelsSnapshot | None = None
    if state is None or config.resnapshot:
        try:
            snapshot = cdc.snapshot_labels(labels_db, lake, data_factory, context.log)
        except adf.PipelineRunError as exc:
            raise dg.Failure(description=str(exc), metadata=run_metadata(exc.result)) from exc
        version = cdc.load_snapshot(lake, snapshot, replace=exists)
        context.log.info(
            f"{'re-snapshot' if exists else 'initial load'}: {snapshot.rows} rows from the source "
            f"at LSN {_lsn(snapshot.lsn)} via {snapshot.via} -> Delta version {version}"
        )
        state = cdc.labels_state(lake)
    try:
        applied = cdc.apply_pending(lake, state)
    except cdc.BatchGapError as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from exc
    for a, b in applied.overlaps:
        context.log.warning(f"change batches {a} and {b} overlap (harmless, applied once)")
    context.log.info(
        f"applied {applied.changes_read} changes from {len(applied.batches)} batches: "
        f"{applied.inserted} inserted, {applied.updated} updated, {applied.deleted} deleted; "
        f"Delta version {applied.version_after}"
        + ("" if applied.committed else " (no new version)")
    )
    return dg.MaterializeResult(
        metadata=labels_metadata(lake, applied, snapshot).to_metadata(),
        data_version=dg.DataVersion(str(applied.version_after)),
    )


def labels_metadata(
    lake: LakeStorage, applied: "cdc.ApplyResult", snapshot: "cdc.LabelsSnapshot | None"
) -> LabelsMetadata:
    """Row count and schema from the Delta log (no data read); the per-class figures read
    the label column only."""
    dt = lake.delta_table(LABELS_PATH)
    rows = cdc.labels_row_count(dt)
    table = dt.to_pyarrow_table(columns=["sample_id", "label"])
    counts = pc.value_counts(table["label"])
    by_label = sorted(
        zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True),
        key=lambda kv: (kv[0] is None, kv[0] if kv[0] is not None else 0),
    )
    return LabelsMetadata(
        delta_version=applied.version_after,
        changes_applied=applied.keys_changed,
        changes_read=applied.changes_read,
        inserted=applied.inserted,
        updated=applied.updated,
        deleted=applied.deleted,
        new_version=applied.committed or snapshot is not None,
        applied_lsn=_lsn(applied.applied_lsn),
        snapshot_lsn=_lsn(applied.snapshot_lsn),
        initial_load=(
            f"{snapshot.rows} rows at LSN {_lsn(snapshot.lsn)} via {snapshot.via} ({snapshot.path})"
            if snapshot
            else "-"
        ),
        batches_applied="\n".join(f"- `{r.path}`" for r in applied.batches) or "none",
        labels_per_class=dg.MetadataValue.table(
            [
                dg.TableRecord({"label": "NULL" if k is None else str(k), "rows": n})
                for k, n in by_label
            ],
            schema=dg.TableSchema(
                columns=[dg.TableColumn("label", "string"), dg.TableColumn("rows", "int")]
            ),
        ),
        train_labels_per_class=train_labels_per_class(table),
        seconds=round(applied.seconds, 3),
        snapshot_run=(
            run_metadata(snapshot.run, prefix="snapshot_")
            if snapshot is not None and snapshot.run is not None
            else {}
        ),
        row_count=rows,
        column_schema=column_schema(cdc.LABEL_SCHEMA),
        uri=lake_uri(lake.uri(LABELS_PATH)),
    )


def train_labels_per_class(table: "pa.Table") -> list[int]:
    """Labels per digit 0..9 among the samples whose stable split is train (retracted, NULL
    and out-of-range labels left out), vectorized: the class_balance check's count before a
    dataset exists."""
    labelled = table.filter(pc.is_valid(table["label"]))
    label = labelled["label"].to_numpy()
    train = datasets.split_of(labelled["sample_id"]) == 0
    digits = (label >= 0) & (label <= 9)
    return np.bincount(label[train & digits], minlength=10)[:10].astype(int).tolist()


sync_labels = dg.define_asset_job(
    "sync_labels",
    selection=dg.AssetSelection.assets(cdc_deltas, labels),
    description="Capture new label changes and MERGE them into the labels Delta table.",
)
