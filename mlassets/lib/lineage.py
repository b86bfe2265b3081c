"""Row-level lineage: what the platform did with one sample, from its events to its predictions.

The UI shows lineage between assets; this follows one row through them. Each question is
answered where a file name or a recorded entry says the answer is, so the cost grows with what
the sample touched, not with the lake:

- events: the landed files are scanned with `sample_id = ?` pushed down into Parquet (row
  groups whose statistics exclude the id are skipped) and a few small columns projected; the
  run that landed a file is stamped in its footer (`landing.RUN_ID_KEY`), or, for a file
  without the stamp (an import from `incoming/`, an older landing), found in the `files` list
  of the landed_events / incoming_events materializations on the instance.
- label history: the CDC batches under `cdc/labels/`, searched the same way; the label in
  force now from `curated/labels` (Delta, filtered by its file statistics).
- datasets: the versions `training_dataset` recorded on the instance, and in each only the
  files of the one split the sample's stable hash puts it in.
- models: the `digit_classifier` materializations trained on those versions, and whether their
  blocking accuracy check passed.
- predictions: the Parquet under `predictions/`; `from_prediction` starts from the SQL table
  the Data Factory export writes and walks back to the model, its dataset, events and labels.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from mlassets.lib import cdc, datasets, inference, landing, scoring
from mlassets.lib.events import LANDED_SCHEMA
from mlassets.lib.layout import LABELS_PATH
from mlassets.lib.metadata import (
    DatasetMetadata,
    IncomingMetadata,
    LandingMetadata,
    ModelMetadata,
)
from mlassets.roles.labels_db import (
    CHANGE_SCHEMA,
    LABEL_SCHEMA,
    OP_UPDATE_BEFORE,
    OPERATION_NAMES,
)
from mlassets.roles.storage import LakeStorage

#: How many materializations of an asset to look through (newest first) for datasets and models.
RECORDS_LIMIT = 200
#: The SQL table the `export_predictions` pipeline writes.
PREDICTIONS_TABLE = "predictions"
_PAGE = 200
_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(\.\d{1,6})?")


# -- the result ------------------------------------------------------------------------------


@dataclass(frozen=True)
class EventRef:
    """One event that carried the sample, and where it landed."""

    partition_id: str
    sequence_number: int
    enqueued_time: datetime | None
    captured_at: datetime
    source: str
    #: The landed Parquet file (lake-relative).
    file: str
    #: The Dagster run that wrote that file, None when neither its footer nor a
    #: materialization on this instance says.
    run_id: str | None
    #: The event datasets and scoring use: the most recently captured one.
    latest: bool = False


@dataclass(frozen=True)
class LabelChange:
    """One captured change to the sample's row in the labels table."""

    lsn: str
    seqval: str
    operation: str  # insert, update (the after-image), delete (the row it removed)
    label: int | None
    labeler: str | None
    updated_at: datetime | None
    #: The CDC batch file that holds the change.
    batch: str


@dataclass(frozen=True)
class DatasetMembership:
    """A dataset version and the sample's place in it."""

    version: str
    split: str
    #: Whether the version holds the sample (False only when walking back from a prediction).
    holds: bool
    #: The label the version trained on, when it holds the sample.
    label: int | None
    run_id: str
    built_at: datetime


@dataclass(frozen=True)
class ModelRef:
    version: str
    dataset_version: str
    test_accuracy: float
    #: Its blocking test_accuracy check passed, so it may score.
    approved: bool
    run_id: str
    trained_at: datetime


@dataclass(frozen=True)
class PredictionRef:
    model_version: str
    predicted_class: int
    probability: float
    scored_at: datetime | None
    run_id: str | None
    #: The Parquet file under predictions/, or `sql:predictions`.
    source: str


@dataclass
class Lineage:
    sample_id: str
    #: "sample" (from the lake) or "prediction" (from the SQL predictions table).
    start: str
    events: list[EventRef] = field(default_factory=list)
    labels: list[LabelChange] = field(default_factory=list)
    #: The label `curated/labels` holds now; None when the sample is unlabelled.
    current_label: int | None = None
    labels_version: int | None = None
    datasets: list[DatasetMembership] = field(default_factory=list)
    models: list[ModelRef] = field(default_factory=list)
    predictions: list[PredictionRef] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    files_read: int = 0
    seconds: float = 0.0

    @property
    def found(self) -> bool:
        if self.start == "prediction":
            return bool(self.predictions)
        return bool(
            self.events or self.labels or self.current_label is not None or self.predictions
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "found": self.found}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, default=_json_default)

    def render(self) -> str:
        """The text people read: one section per stage, in the order the data flowed, or,
        from a prediction, in the order the walk goes back."""
        sections = [
            self._events_text,
            self._labels_text,
            self._datasets_text,
            self._models_text,
            self._predictions_text,
        ]
        if self.start == "prediction":
            sections.reverse()
        title = f"sample {self.sample_id}"
        if self.start == "prediction":
            title += " (from its predictions in SQL, back to its events)"
        out = [title]
        for section in sections:
            out += section()
        out += [f"note: {n}" for n in self.notes]
        out.append(f"answered in {self.seconds:.2f}s ({self.files_read} files read)")
        return "\n".join(out)

    def _events_text(self) -> list[str]:
        out = [f"events ({len(self.events)})"]
        for e in self.events:
            out.append(
                f"  partition {e.partition_id}  seq {e.sequence_number}  enqueued "
                f"{_t(e.enqueued_time)}  captured {_t(e.captured_at)}  from {e.source}"
                + ("  [latest]" if e.latest and len(self.events) > 1 else "")
            )
            out.append(f"    landed in {e.file} by run {e.run_id or 'unknown'}")
        if not self.events:
            out.append("  none landed (a quarantined event keeps no sample id)")
        return out

    def _labels_text(self) -> list[str]:
        now = f"now {self.current_label}" if self.current_label is not None else "now unlabelled"
        if self.labels_version is not None:
            now += f" in curated/labels v{self.labels_version}"
        out = [f"label history (CDC, {len(self.labels)} changes; {now})"]
        for c in self.labels:
            label = "-" if c.label is None else str(c.label)
            what = (
                f"removed label {label} (by {c.labeler or '-'})"
                if c.operation == "delete"
                else f"label {label} by {c.labeler or '-'} at {_t(c.updated_at)}"
            )
            out.append(f"  LSN 0x{c.lsn}  {c.operation:<6}  {what}  ({c.batch})")
        return out

    def _datasets_text(self) -> list[str]:
        held = [d for d in self.datasets if d.holds]
        out = [f"datasets ({len(held)} hold it)"]
        for d in self.datasets:
            where = (
                f"split {d.split}  label {d.label}"
                if d.holds
                else f"not in it (would be split {d.split}; unlabelled when it was built)"
            )
            out.append(f"  v={d.version}  {where}  built by run {d.run_id} at {_t(d.built_at)}")
        if not self.datasets:
            out.append("  none (datasets hold labelled samples only)")
        return out

    def _models_text(self) -> list[str]:
        out = [f"models ({len(self.models)})"]
        for m in self.models:
            out.append(
                f"  {m.version}  on dataset {m.dataset_version}  test accuracy "
                f"{m.test_accuracy:.4f}  {'approved' if m.approved else 'not approved'}  "
                f"run {m.run_id}"
            )
        return out

    def _predictions_text(self) -> list[str]:
        out = [f"predictions ({len(self.predictions)})"]
        for p in self.predictions:
            out.append(
                f"  model {p.model_version}  class {p.predicted_class}  probability "
                f"{p.probability:.4f}  scored {_t(p.scored_at)}  run {p.run_id or 'unknown'}"
                f"  ({p.source})"
            )
        if not self.predictions:
            labelled = self.current_label is not None
            out.append("  none (labelled samples are not scored)" if labelled else "  none yet")
        return out


def _t(value: datetime | None) -> str:
    return "-" if value is None else value.astimezone(UTC).isoformat(timespec="milliseconds")


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


# -- lookups ---------------------------------------------------------------------------------


class _Reader:
    """Searches lake files for one sample id and counts what it opened."""

    def __init__(self, lake: LakeStorage) -> None:
        self.lake = lake
        self.files_read = 0

    def search(
        self, paths: list[str], schema: pa.Schema, sample_id: str, columns: list[str]
    ) -> pa.Table:
        """Rows of `sample_id` in `paths` (each file's footer is read; row groups whose
        statistics exclude the id are not), the `columns` and `file` (lake-relative)."""
        if not paths:
            empty = pa.schema([schema.field(c) for c in columns]).empty_table()
            return empty.append_column("file", pa.array([], pa.string()))
        self.files_read += len(paths)
        table = self._dataset(paths, schema).to_table(
            columns=[*columns, "__filename"], filter=ds.field("sample_id") == sample_id
        )
        files = [self.lake.relative(f) for f in table["__filename"].to_pylist()]
        return table.drop_columns(["__filename"]).append_column(
            "file", pa.array(files, pa.string())
        )

    def read(self, paths: list[str], schema: pa.Schema, columns: list[str]) -> pa.Table:
        """`columns` of whole files, cast to `schema`."""
        if not paths:
            return pa.schema([schema.field(c) for c in columns]).empty_table()
        self.files_read += len(paths)
        return self._dataset(paths, schema).to_table(columns=columns)

    def _dataset(self, paths: list[str], schema: pa.Schema) -> ds.Dataset:
        return ds.dataset(
            [self.lake.path(p) for p in paths],
            schema=schema,
            format="parquet",
            filesystem=None if self.lake.is_local else self.lake.fs,
        )

    def footer_runs(self, path: str) -> landing.FileRuns:
        """Which run landed each row of `path`, from its footer (a merged file's lists a
        run per range it holds)."""
        self.files_read += 1
        with self.lake.fs.open(self.lake.path(path), "rb") as f:
            kv = pq.ParquetFile(f).metadata.metadata
        return landing.FileRuns.from_footer(path, kv)


def find_events(reader: _Reader, instance: dg.DagsterInstance, sample_id: str) -> list[EventRef]:
    """Every landed event of the sample, oldest first, with the run that landed its file."""
    # Live files only: each event once, also while a compaction is half done.
    paths = landing.landed_paths(reader.lake)
    columns = ["partition_id", "sequence_number", "enqueued_time", "captured_at", "source"]
    rows = reader.search(paths, LANDED_SCHEMA, sample_id, columns).to_pylist()
    footers = {f: reader.footer_runs(f) for f in {r["file"] for r in rows}}
    # (the file as a landing recorded it, the run): a merged file's row was landed in a
    # smaller file, which is the one a materialization without the stamp listed.
    for r in rows:
        r["recorded_as"], r["run_id"] = footers[r["file"]].source(r["sequence_number"])
    missing = {r["recorded_as"] for r in rows if r["run_id"] is None}
    runs = _runs_from_records(instance, missing) if missing else {}
    rows.sort(
        key=lambda r: (
            r["enqueued_time"] or r["captured_at"],
            r["partition_id"],
            r["sequence_number"],
        )
    )
    latest = max(
        range(len(rows)),
        key=lambda i: (rows[i]["captured_at"], rows[i]["sequence_number"]),
        default=-1,
    )
    return [
        EventRef(
            **{c: r[c] for c in columns},
            file=r["file"],
            run_id=r["run_id"] or runs.get(r["recorded_as"]),
            latest=i == latest,
        )
        for i, r in enumerate(rows)
    ]


def _runs_from_records(instance: dg.DagsterInstance, files: set[str]) -> dict[str, str]:
    """The newest landed_events or incoming_events materialization that lists each file."""
    found: dict[str, str] = {}
    for contract in (LandingMetadata, IncomingMetadata):
        cursor = None
        while files - found.keys():
            page = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=contract.asset_key), limit=_PAGE, cursor=cursor
            )
            for record in page.records:
                for path in contract.from_metadata(record).files:
                    if path in files and path not in found:
                        found[path] = record.run_id
            if not page.has_more:
                break
            cursor = page.cursor
    return found


def label_history(reader: _Reader, sample_id: str) -> list[LabelChange]:
    """The sample's captured changes in LSN order; update before-images left out (the change
    before says what the label was)."""
    paths = [r.path for r in cdc.batch_ranges(reader.lake)]
    columns = ["start_lsn", "seqval", "operation", "label", "labeler", "updated_at"]
    table = reader.search(paths, CHANGE_SCHEMA, sample_id, columns)
    table = table.filter(pc.not_equal(table["operation"], OP_UPDATE_BEFORE))
    seen: set[tuple] = set()
    out: list[LabelChange] = []
    # Two captures that overlapped hold the same change twice: list it once.
    for r in sorted(table.to_pylist(), key=lambda r: (r["start_lsn"], r["seqval"], r["operation"])):
        key = (r["start_lsn"], r["seqval"], r["operation"])
        if key in seen:
            continue
        seen.add(key)
        out.append(
            LabelChange(
                lsn=r["start_lsn"],
                seqval=r["seqval"],
                operation=OPERATION_NAMES[r["operation"]].removesuffix("_after"),
                label=r["label"],
                labeler=r["labeler"],
                updated_at=r["updated_at"],
                batch=r["file"],
            )
        )
    return out


def current_label(reader: _Reader, sample_id: str) -> tuple[int | None, int | None]:
    """(label in curated/labels now, the table's Delta version); (None, None) before it exists.

    Only the data files whose Delta statistics (min/max sample_id) admit the id are read.
    They are filtered in memory: files a MERGE wrote type the id as string_view, on which
    pyarrow cannot push a comparison down.
    """
    dt = reader.lake.delta_table(LABELS_PATH)
    if dt is None:
        return None, None
    actions = pa.table(dt.get_add_actions(flatten=True)).to_pylist()
    files = [f"{LABELS_PATH}/{a['path']}" for a in actions if _may_hold(a, sample_id)]
    table = reader.read(files, LABEL_SCHEMA, ["sample_id", "label"])
    rows = table.filter(pc.equal(table["sample_id"], sample_id))["label"].to_pylist()
    return (rows[0] if rows else None), dt.version()


def _may_hold(action: dict[str, Any], sample_id: str) -> bool:
    low, high = action.get("min.sample_id"), action.get("max.sample_id")
    return low is None or high is None or low <= sample_id <= high


def split_of(sample_id: str) -> str:
    """The split a dataset puts the sample in: a stable hash, the same in every version."""
    return datasets.SPLITS[int(datasets.split_of(pa.array([sample_id], pa.string()))[0])]


def dataset_memberships(
    reader: _Reader,
    instance: dg.DagsterInstance,
    sample_id: str,
    versions: set[str] | None = None,
) -> list[DatasetMembership]:
    """The recorded dataset versions (all, or only `versions`) and whether each holds the
    sample; only its split's files are read. Newest first."""
    split = split_of(sample_id)
    out: list[DatasetMembership] = []
    seen: set[str] = set()
    for rec in DatasetMetadata.records(instance, limit=RECORDS_LIMIT):
        version = rec.metadata.version
        if version in seen or (versions is not None and version not in versions):
            continue
        seen.add(version)
        try:
            reader.files_read += 1
            _, label = datasets.find(reader.lake, version, sample_id)
        except FileNotFoundError:
            continue  # the version was deleted from the lake
        holds = label is not None
        if holds or versions is not None:
            out.append(
                DatasetMembership(
                    version=version,
                    split=split,
                    holds=holds,
                    label=label,
                    run_id=rec.run_id,
                    built_at=datetime.fromtimestamp(rec.timestamp, UTC),
                )
            )
    return out


def models_of(
    instance: dg.DagsterInstance,
    dataset_versions: set[str] | None = None,
    model_versions: set[str] | None = None,
) -> list[ModelRef]:
    """Models trained on any of `dataset_versions` or named in `model_versions`, newest first."""
    approved = {m.version for m in inference.approved_models(instance, limit=RECORDS_LIMIT)}
    out: list[ModelRef] = []
    seen: set[str] = set()
    for rec in ModelMetadata.records(instance, limit=RECORDS_LIMIT):
        m = rec.metadata
        wanted = m.dataset_version in (dataset_versions or set()) or m.model_version in (
            model_versions or set()
        )
        if not wanted or m.model_version in seen:
            continue
        seen.add(m.model_version)
        out.append(
            ModelRef(
                version=m.model_version,
                dataset_version=m.dataset_version,
                test_accuracy=m.test_accuracy,
                approved=m.model_version in approved,
                run_id=rec.run_id,
                trained_at=datetime.fromtimestamp(rec.timestamp, UTC),
            )
        )
    return out


def lake_predictions(reader: _Reader, sample_id: str) -> list[PredictionRef]:
    """The sample's predictions under predictions/, every model, oldest first."""
    paths = scoring.prediction_files(reader.lake)
    columns = ["model_version", "predicted_class", "probability", "scored_at", "run_id"]
    rows = reader.search(paths, inference.PREDICTION_SCHEMA, sample_id, columns).to_pylist()
    refs = [PredictionRef(**{c: r[c] for c in columns}, source=r["file"]) for r in rows]
    return sorted(refs, key=_scored_order)


def sql_predictions(engine: Any, sample_id: str) -> list[PredictionRef]:
    """The sample's rows in the SQL predictions table (any columns beyond the key may be
    missing in a table an older export created)."""
    import sqlalchemy as sa

    with engine.connect() as conn:
        if not sa.inspect(conn).has_table(PREDICTIONS_TABLE):
            return []
        rows = (
            conn.execute(
                sa.text(f"SELECT * FROM {PREDICTIONS_TABLE} WHERE sample_id = :sample_id"),
                {"sample_id": sample_id},
            )
            .mappings()
            .all()
        )
    refs = [
        PredictionRef(
            model_version=str(r["model_version"]),
            predicted_class=int(r["predicted_class"]),
            probability=float(r["probability"]),
            scored_at=_sql_time(r.get("scored_at")),
            run_id=r.get("run_id"),
            source=f"sql:{PREDICTIONS_TABLE}",
        )
        for r in rows
    ]
    return sorted(refs, key=_scored_order)


def _sql_time(value: Any) -> datetime | None:
    """Drivers hand back naive UTC datetimes (SQL Server) or text (SQLite), which is read
    up to the end of its timestamp (a writer may have left a suffix after it)."""
    if value is None:
        return None
    if not isinstance(value, datetime):
        match = _TIMESTAMP.match(str(value))
        if match is None:
            return None
        value = datetime.fromisoformat(match.group(0))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _scored_order(p: PredictionRef) -> tuple:
    return (p.scored_at or datetime.min.replace(tzinfo=UTC), p.model_version)


# -- the two walks ---------------------------------------------------------------------------


def lineage(lake: LakeStorage, instance: dg.DagsterInstance, sample_id: str) -> Lineage:
    """Forward from the sample: events, label history, datasets, models, predictions."""
    started = time.perf_counter()
    reader = _Reader(lake)
    result = Lineage(sample_id=sample_id, start="sample")
    _upstream(result, reader, instance)
    result.datasets = dataset_memberships(reader, instance, sample_id)
    result.models = models_of(instance, dataset_versions={d.version for d in result.datasets})
    result.predictions = lake_predictions(reader, sample_id)
    _explain(result, instance)
    result.files_read, result.seconds = reader.files_read, time.perf_counter() - started
    return result


def from_prediction(
    lake: LakeStorage, instance: dg.DagsterInstance, engine: Any, sample_id: str
) -> Lineage:
    """Back from the sample's predictions in SQL: the models that made them, the datasets
    those were trained on (and whether they hold the sample), its events and labels."""
    started = time.perf_counter()
    reader = _Reader(lake)
    result = Lineage(sample_id=sample_id, start="prediction")
    result.predictions = sql_predictions(engine, sample_id)
    if result.predictions:
        result.models = models_of(
            instance, model_versions={p.model_version for p in result.predictions}
        )
        result.datasets = dataset_memberships(
            reader, instance, sample_id, versions={m.dataset_version for m in result.models}
        )
        _upstream(result, reader, instance)
        _explain(result, instance)
    result.files_read, result.seconds = reader.files_read, time.perf_counter() - started
    return result


def _upstream(result: Lineage, reader: _Reader, instance: dg.DagsterInstance) -> None:
    result.events = find_events(reader, instance, result.sample_id)
    result.labels = label_history(reader, result.sample_id)
    result.current_label, result.labels_version = current_label(reader, result.sample_id)


def _explain(result: Lineage, instance: dg.DagsterInstance) -> None:
    """Say why a section is empty or disagrees, where the reason is knowable."""
    newest = result.labels[-1] if result.labels else None
    if result.current_label is not None and newest is None:
        result.notes.append(
            "curated/labels holds a label that no captured change explains: it came with the "
            "snapshot the table was (re)built from"
        )
    elif newest is not None and result.current_label != (
        None if newest.operation == "delete" else newest.label
    ):
        result.notes.append(
            f"the newest captured change (LSN 0x{newest.lsn}) is not in curated/labels yet: "
            "materialize `labels` to apply it"
        )
    if not result.datasets and DatasetMetadata.latest(instance) is None:
        result.notes.append(
            "this Dagster instance records no training_dataset materialization (is DAGSTER_HOME "
            "the one the pipeline ran with?)"
        )
