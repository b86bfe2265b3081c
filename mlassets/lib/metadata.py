"""What each asset records, typed: the one module where a metadata key is spelled.

Producers build one of these dataclasses and call `to_metadata()`; consumers (checks, sensors,
the scorer, the demo, the CLI) read it back with `latest(instance)`, `records(instance)`,
`from_run(result)` or `from_metadata(...)`, so a key renamed here is renamed everywhere.
Each field's key is its name unless it says otherwise (`dagster/...` for what the UI knows).

Only dagster and the standard library are imported, so the definitions can import this at
load; the pyarrow schema helper takes a schema object and never imports pyarrow itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Self, TypeVar

import dagster as dg

# -- asset keys: the one constant each ------------------------------------------------------

RAW_EVENTS = dg.AssetKey("raw_events")
LANDED_EVENTS = dg.AssetKey("landed_events")
INCOMING_EVENTS = dg.AssetKey("incoming_events")
CDC_DELTAS = dg.AssetKey("cdc_deltas")
LABELS = dg.AssetKey("labels")
TRAINING_DATASET = dg.AssetKey("training_dataset")
DIGIT_CLASSIFIER = dg.AssetKey("digit_classifier")
APPROVED_MODEL = dg.AssetKey("approved_model")
INFERENCE_OUTPUTS = dg.AssetKey("inference_outputs")

#: Entries of a Data Factory run (`roles.datafactory.run_metadata`) that readers look up;
#: a step that records several runs prefixes them (`snapshot_`, `export_`).
ADF_RUN_ID = "adf_run_id"
ADF_ENGINE = "adf_engine"

# -- how a field becomes a MetadataValue and back ------------------------------------------

_TO: dict[str, Any] = {
    "int": lambda v: dg.MetadataValue.int(int(v)),
    "float": lambda v: dg.MetadataValue.float(float(v)),
    "text": lambda v: dg.MetadataValue.text(str(v)),
    "bool": lambda v: dg.MetadataValue.bool(bool(v)),
    "json": dg.MetadataValue.json,
    "path": lambda v: dg.MetadataValue.path(str(v)),
    "url": lambda v: dg.MetadataValue.url(str(v)),
    "md": lambda v: dg.MetadataValue.md(str(v)),
    "schema": dg.MetadataValue.table_schema,
    "lineage": dg.MetadataValue.column_lineage,
    "table": lambda v: v,  # already a TableMetadataValue
}
_FROM: dict[str, Any] = {
    "int": int,
    "float": float,
    "text": str,
    "bool": bool,
    "path": str,
    "url": str,
    "md": str,
}
#: The Dagster Pipes type names of the kinds a Pipes process can report.
_PIPES_TYPES = {"int", "float", "text", "bool", "json", "path", "url", "md"}


def recorded_as(kind: str, key: str | None = None) -> dict[str, str | None]:
    """Field metadata: record the field as a `kind` MetadataValue under `key` (default: its
    name). Kind "extra" carries entries the contract does not name (a Data Factory run's)."""
    return {"kind": kind, "key": key}


def _key(f: dataclasses.Field) -> str:
    return f.metadata.get("key") or f.name


def _metadata_of(source: Any) -> Mapping[str, Any]:
    """The metadata of a record, event, materialization, result or plain mapping."""
    if isinstance(source, Mapping):
        return source
    if isinstance(source, dg.DagsterEvent):
        return source.step_materialization_data.materialization.metadata
    materialization = getattr(source, "asset_materialization", None)  # EventLogEntry/Record
    if materialization is not None:
        return materialization.metadata
    metadata = getattr(source, "metadata", None)  # AssetMaterialization, MaterializeResult
    if metadata is None and not hasattr(source, "metadata"):
        raise TypeError(f"no metadata on {type(source).__name__}")
    return metadata or {}


M = TypeVar("M", bound="MetadataRecord")


@dataclass(frozen=True)
class Recorded(Generic[M]):
    """One materialization from the event log: where it is, and what it recorded."""

    storage_id: int
    run_id: str
    timestamp: float
    metadata: M


@dataclass(frozen=True)
class MetadataRecord:
    """Base of the contracts: the conversions to and from Dagster metadata."""

    def to_metadata(self) -> dict[str, dg.MetadataValue]:
        """The entries to record; fields left None are omitted. Standard `dagster/` ones last."""
        own: dict[str, dg.MetadataValue] = {}
        standard: dict[str, dg.MetadataValue] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            kind = f.metadata["kind"]
            if kind == "extra":
                own.update(value)
            elif value is not None:
                key = _key(f)
                (standard if key.startswith("dagster/") else own)[key] = _TO[kind](value)
        return {**own, **standard}

    def to_pipes(self) -> dict[str, dict[str, Any]]:
        """The same entries as a Dagster Pipes process reports them (raw value and type)."""
        return {
            _key(f): {"raw_value": getattr(self, f.name), "type": f.metadata["kind"]}
            for f in dataclasses.fields(self)
            if f.metadata["kind"] in _PIPES_TYPES and getattr(self, f.name) is not None
        }

    @classmethod
    def from_metadata(cls, source: Any) -> Self:
        """From a metadata mapping, an AssetMaterialization, a MaterializeResult, an
        EventLogEntry/EventLogRecord or a DagsterEvent. Missing entries take the defaults."""
        metadata = _metadata_of(source)
        values: dict[str, Any] = {}
        claimed: set[str] = set()
        extra_field = None
        for f in dataclasses.fields(cls):
            kind = f.metadata["kind"]
            if kind == "extra":
                extra_field = f.name
                continue
            key = _key(f)
            claimed.add(key)
            if key not in metadata:
                continue
            raw = metadata[key]
            if kind != "table":
                raw = raw.value if isinstance(raw, dg.MetadataValue) else raw
            values[f.name] = _FROM[kind](raw) if kind in _FROM and raw is not None else raw
        if extra_field is not None:
            values[extra_field] = {
                k: v if isinstance(v, dg.MetadataValue) else dg.MetadataValue.text(str(v))
                for k, v in metadata.items()
                if k not in claimed
            }
        return cls(**values)


@dataclass(frozen=True)
class AssetMetadata(MetadataRecord):
    """What one asset's materializations record, and the ways to read it back."""

    asset_key: ClassVar[dg.AssetKey]

    @classmethod
    def latest(cls, instance: dg.DagsterInstance, partition: str | None = None) -> Self | None:
        """What the newest materialization of the asset (or of one partition) recorded, or
        None before the first."""
        if partition is not None:
            newest = cls.records(instance, limit=1, partition=partition)
            return newest[0].metadata if newest else None
        event = instance.get_latest_materialization_event(cls.asset_key)
        if event is None or event.asset_materialization is None:
            return None
        return cls.from_metadata(event)

    @classmethod
    def records(
        cls,
        instance: dg.DagsterInstance,
        after_storage_id: int | None = None,
        limit: int = 100,
        partition: str | None = None,
    ) -> list[Recorded[Self]]:
        """Materializations newest first, optionally only those after a storage id or of one
        partition."""
        records_filter = dg.AssetRecordsFilter(
            asset_key=cls.asset_key,
            after_storage_id=after_storage_id,
            asset_partitions=[partition] if partition is not None else None,
        )
        records = instance.fetch_materializations(records_filter, limit=limit).records
        return [
            Recorded(r.storage_id, r.run_id, r.timestamp, cls.from_metadata(r))
            for r in records
            if r.asset_materialization is not None
        ]

    @classmethod
    def latest_recorded(cls, instance: dg.DagsterInstance) -> Recorded[Self] | None:
        newest = cls.records(instance, limit=1)
        return newest[0] if newest else None

    @classmethod
    def from_run(cls, result: Any) -> Self | None:
        """The last materialization of the asset in an executed run's result, if any."""
        events = [
            e for e in result.get_asset_materialization_events() if e.asset_key == cls.asset_key
        ]
        return cls.from_metadata(events[-1]) if events else None


@dataclass(frozen=True)
class TableMetadata(AssetMetadata):
    """What the UI understands about a table: its columns, its size and where it lives."""

    #: The table's rows (all of it, not this run's).
    row_count: int | None = field(default=None, metadata=recorded_as("int", "dagster/row_count"))
    column_schema: dg.TableSchema | None = field(
        default=None, metadata=recorded_as("schema", "dagster/column_schema")
    )
    uri: str | None = field(default=None, metadata=recorded_as("text", "dagster/uri"))


# -- the contracts, one per asset ------------------------------------------------------------


@dataclass(frozen=True)
class LandingMetadata(TableMetadata):
    """`landed_events`: what one landing wrote; `files` is what its checks read back."""

    asset_key: ClassVar[dg.AssetKey] = LANDED_EVENTS

    landed_rows: int = field(default=0, metadata=recorded_as("int"))
    quarantined_rows: int = field(default=0, metadata=recorded_as("int"))
    quarantine_ratio: float = field(default=0.0, metadata=recorded_as("float"))
    expired_events: int = field(default=0, metadata=recorded_as("int"))
    files_written: int = field(default=0, metadata=recorded_as("int"))
    bytes_written: int = field(default=0, metadata=recorded_as("int"))
    events_per_second: float = field(default=0.0, metadata=recorded_as("float"))
    ranges: dg.TableMetadataValue | None = field(default=None, metadata=recorded_as("table"))
    quarantine_reasons: str = field(default="No event was quarantined.", metadata=recorded_as("md"))
    files: list[str] = field(default_factory=list, metadata=recorded_as("json"))
    quarantine_path: str | None = field(default=None, metadata=recorded_as("path"))


@dataclass(frozen=True)
class IncomingMetadata(TableMetadata):
    """The import of one drop from `incoming/`: the copy, what landed, what it replaced."""

    asset_key: ClassVar[dg.AssetKey] = INCOMING_EVENTS

    drop: str | None = field(default=None, metadata=recorded_as("path"))
    landed_rows: int = field(default=0, metadata=recorded_as("int"))
    quarantined_rows: int = field(default=0, metadata=recorded_as("int"))
    copy_skipped_rows: int = field(default=0, metadata=recorded_as("int"))
    #: Rows of an earlier import of the same drop that this one overwrote.
    replaced_rows: int = field(default=0, metadata=recorded_as("int"))
    quarantine_ratio: float = field(default=0.0, metadata=recorded_as("float"))
    rewrite: bool = field(default=False, metadata=recorded_as("bool"))
    files_written: int = field(default=0, metadata=recorded_as("int"))
    bytes_written: int = field(default=0, metadata=recorded_as("int"))
    seconds: float = field(default=0.0, metadata=recorded_as("float"))
    quarantine_reasons: str = field(default="No row was quarantined.", metadata=recorded_as("md"))
    files: list[str] = field(default_factory=list, metadata=recorded_as("json"))
    quarantine_path: str | None = field(default=None, metadata=recorded_as("path"))
    pipeline_run: Mapping[str, dg.MetadataValue] = field(
        default_factory=dict, metadata=recorded_as("extra")
    )

    @property
    def net_new_rows(self) -> int:
        """How much the landed table grew by this import."""
        return self.landed_rows - self.replaced_rows

    @property
    def copy_run(self) -> tuple[str, str]:
        """(run id, engine) of the Data Factory copy; "-" where it was not recorded."""
        run = self.pipeline_run
        return tuple(  # type: ignore[return-value]
            str(run[k].value) if k in run else "-" for k in (ADF_RUN_ID, ADF_ENGINE)
        )


@dataclass(frozen=True)
class CaptureMetadata(TableMetadata):
    """`cdc_deltas`: the change batches one capture wrote, and the LSNs around them."""

    asset_key: ClassVar[dg.AssetKey] = CDC_DELTAS

    changes: int = field(default=0, metadata=recorded_as("int"))
    inserts: int = field(default=0, metadata=recorded_as("int"))
    updates: int = field(default=0, metadata=recorded_as("int"))
    deletes: int = field(default=0, metadata=recorded_as("int"))
    update_before_images: int = field(default=0, metadata=recorded_as("int"))
    from_lsn: str = field(default="-", metadata=recorded_as("text"))
    to_lsn: str = field(default="-", metadata=recorded_as("text"))
    captured_through_lsn: str = field(default="-", metadata=recorded_as("text"))
    previous_watermark: str = field(default="-", metadata=recorded_as("text"))
    source_min_lsn: str = field(default="-", metadata=recorded_as("text"))
    source_max_lsn: str = field(default="-", metadata=recorded_as("text"))
    files_written: int = field(default=0, metadata=recorded_as("int"))
    bytes_written: int = field(default=0, metadata=recorded_as("int"))
    changes_per_second: float = field(default=0.0, metadata=recorded_as("float"))
    batches: dg.TableMetadataValue | None = field(default=None, metadata=recorded_as("table"))
    files: list[str] = field(default_factory=list, metadata=recorded_as("json"))


@dataclass(frozen=True)
class LabelsMetadata(TableMetadata):
    """`labels`: the Delta version and what the MERGE of change batches did to it."""

    asset_key: ClassVar[dg.AssetKey] = LABELS

    delta_version: int = field(default=-1, metadata=recorded_as("int"))
    changes_applied: int = field(default=0, metadata=recorded_as("int"))
    changes_read: int = field(default=0, metadata=recorded_as("int"))
    inserted: int = field(default=0, metadata=recorded_as("int"))
    updated: int = field(default=0, metadata=recorded_as("int"))
    deleted: int = field(default=0, metadata=recorded_as("int"))
    new_version: bool = field(default=False, metadata=recorded_as("bool"))
    applied_lsn: str = field(default="-", metadata=recorded_as("text"))
    snapshot_lsn: str = field(default="-", metadata=recorded_as("text"))
    initial_load: str = field(default="-", metadata=recorded_as("text"))
    batches_applied: str = field(default="none", metadata=recorded_as("md"))
    labels_per_class: dg.TableMetadataValue | None = field(
        default=None, metadata=recorded_as("table")
    )
    #: Labelled samples per digit 0..9 whose stable split is train: what the dataset's
    #: class_balance check counts once they have landed (the first model's trigger reads it).
    train_labels_per_class: list[int] = field(default_factory=list, metadata=recorded_as("json"))
    seconds: float = field(default=0.0, metadata=recorded_as("float"))
    snapshot_run: Mapping[str, dg.MetadataValue] = field(
        default_factory=dict, metadata=recorded_as("extra")
    )


@dataclass(frozen=True)
class DatasetMetadata(TableMetadata):
    """`training_dataset`: one content-hashed version, its splits and what it was built from."""

    asset_key: ClassVar[dg.AssetKey] = TRAINING_DATASET

    version: str = field(default="", metadata=recorded_as("text"))
    train_rows: int = field(default=0, metadata=recorded_as("int"))
    validation_rows: int = field(default=0, metadata=recorded_as("int"))
    test_rows: int = field(default=0, metadata=recorded_as("int"))
    class_histogram: dg.TableMetadataValue | None = field(
        default=None, metadata=recorded_as("table")
    )
    labels_delta_version: int = field(default=-1, metadata=recorded_as("int"))
    landed_ranges: dict[str, list[str]] = field(default_factory=dict, metadata=recorded_as("json"))
    landed_events_read: int = field(default=0, metadata=recorded_as("int"))
    labels_read: int = field(default=0, metadata=recorded_as("int"))
    files: list[str] = field(default_factory=list, metadata=recorded_as("json"))
    #: The sample state the version was read from, and how many segments it spans.
    state: int = field(default=-1, metadata=recorded_as("int"))
    segments: int = field(default=0, metadata=recorded_as("int"))
    #: The training split's pixel distribution: the retraining sensor's drift reference.
    pixel_histogram: list[float] = field(default_factory=list, metadata=recorded_as("json"))
    column_lineage: dg.TableColumnLineage | None = field(
        default=None, metadata=recorded_as("lineage", "dagster/column_lineage")
    )

    @classmethod
    def of_version(
        cls, instance: dg.DagsterInstance, version: str, limit: int = 200
    ) -> Recorded[Self] | None:
        """The newest materialization that built `version`, among the last `limit`."""
        return next(
            (r for r in cls.records(instance, limit=limit) if r.metadata.version == version), None
        )


@dataclass(frozen=True)
class ModelMetadata(AssetMetadata):
    """`digit_classifier`: reported by the training program over Pipes, plus where it ran."""

    asset_key: ClassVar[dg.AssetKey] = DIGIT_CLASSIFIER

    test_accuracy: float = field(default=0.0, metadata=recorded_as("float"))
    test_loss: float = field(default=0.0, metadata=recorded_as("float"))
    epochs: int = field(default=0, metadata=recorded_as("int"))
    workers: int = field(default=0, metadata=recorded_as("int"))
    batch_size_per_worker: int = field(default=0, metadata=recorded_as("int"))
    micro_batch: int = field(default=0, metadata=recorded_as("int"))
    steps_per_epoch: int = field(default=0, metadata=recorded_as("int"))
    samples_per_second: float = field(default=0.0, metadata=recorded_as("float"))
    train_rows: int = field(default=0, metadata=recorded_as("int"))
    training_seconds: float = field(default=0.0, metadata=recorded_as("float"))
    dataset_version: str = field(default="", metadata=recorded_as("text"))
    model_version: str = field(default="", metadata=recorded_as("text"))
    model_path: str = field(default="", metadata=recorded_as("path"))
    history: str = field(default="", metadata=recorded_as("md"))
    compute: str | None = field(default=None, metadata=recorded_as("text"))
    model_dir: str | None = field(default=None, metadata=recorded_as("path"))
    retrain_reason: str | None = field(default=None, metadata=recorded_as("text"))
    #: What the compute adds (e.g. the Azure Batch job and task ids).
    compute_details: Mapping[str, dg.MetadataValue] = field(
        default_factory=dict, metadata=recorded_as("extra")
    )


@dataclass(frozen=True)
class ApprovalMetadata(AssetMetadata):
    """`approved_model`: which digit_classifier scores from now on, and why it may."""

    asset_key: ClassVar[dg.AssetKey] = APPROVED_MODEL

    model_version: str = field(default="", metadata=recorded_as("text"))
    test_accuracy: float = field(default=0.0, metadata=recorded_as("float"))
    #: The bar it cleared (the `quality` resource's min_test_accuracy when it was approved).
    threshold: float = field(default=0.0, metadata=recorded_as("float"))
    dataset_version: str = field(default="", metadata=recorded_as("text"))
    model_path: str = field(default="", metadata=recorded_as("path"))
    #: The model approved before this one ("-" for the first).
    replaces: str = field(default="-", metadata=recorded_as("text"))
    #: The pointer file the scorer reads.
    pointer: str | None = field(default=None, metadata=recorded_as("path"))


@dataclass(frozen=True)
class ScoringMetadata(TableMetadata):
    """`inference_outputs`: one scoring pass; `row_count` is every prediction in the lake."""

    asset_key: ClassVar[dg.AssetKey] = INFERENCE_OUTPUTS

    rows_scored: int = field(default=0, metadata=recorded_as("int"))
    model_version: str = field(default="", metadata=recorded_as("text"))
    model_test_accuracy: float = field(default=0.0, metadata=recorded_as("float"))
    mean_confidence: float = field(default=0.0, metadata=recorded_as("float"))
    rows_per_second: float = field(default=0.0, metadata=recorded_as("float"))
    class_distribution: dg.TableMetadataValue | None = field(
        default=None, metadata=recorded_as("table")
    )
    #: The folder of this model's predictions.
    path: str | None = field(default=None, metadata=recorded_as("path"))
    column_lineage: dg.TableColumnLineage | None = field(
        default=None, metadata=recorded_as("lineage", "dagster/column_lineage")
    )
    export_run: Mapping[str, dg.MetadataValue] = field(
        default_factory=dict, metadata=recorded_as("extra")
    )


@dataclass(frozen=True)
class AccuracyCheckMetadata(MetadataRecord):
    """What `digit_classifier`'s test_accuracy check records: which model it judged."""

    test_accuracy: float = field(default=0.0, metadata=recorded_as("float"))
    threshold: float = field(default=0.0, metadata=recorded_as("float"))
    model_version: str = field(default="-", metadata=recorded_as("text"))


CONTRACTS: tuple[type[AssetMetadata], ...] = (
    LandingMetadata,
    IncomingMetadata,
    CaptureMetadata,
    LabelsMetadata,
    DatasetMetadata,
    ModelMetadata,
    ApprovalMetadata,
    ScoringMetadata,
)


# -- helpers for the standard entries --------------------------------------------------------


def column_schema(
    schema: Iterable[Any], descriptions: Mapping[str, str] | None = None
) -> dg.TableSchema:
    """A `dg.TableSchema` from a pyarrow schema (any iterable of fields with name, type and
    nullable), so the UI lists the columns a table really has."""
    descriptions = descriptions or {}
    return dg.TableSchema(
        columns=[
            dg.TableColumn(
                name=f.name,
                type=str(f.type),
                description=descriptions.get(f.name),
                constraints=dg.TableColumnConstraints(nullable=bool(f.nullable)),
            )
            for f in schema
        ]
    )


def lake_uri(location: str) -> str:
    """A URI for `dagster/uri`: abfs:// locations as they are, local paths as file://."""
    return location if "://" in location else f"file://{location}"


def column_lineage(deps: Mapping[str, Iterable[tuple[dg.AssetKey, str]]]) -> dg.TableColumnLineage:
    """`{column: [(asset key, column), ...]}` as a `dg.TableColumnLineage`."""
    return dg.TableColumnLineage(
        deps_by_column={
            column: [dg.TableColumnDep(asset_key=key, column_name=name) for key, name in sources]
            for column, sources in deps.items()
        }
    )
