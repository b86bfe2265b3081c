"""The sinks of a Copy activity and its session log: lake files written atomically (Parquet,
delimited text, JSON), SQL tables inserted into or upserted (staged in a temporary table and
merged set-based, like ADF's useTempDB) in one transaction, and the copy activity's session log
in ADF's CSV layout. A sink that fails leaves nothing behind.
"""

from __future__ import annotations

import gzip
import io
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from mlassets.lib.adf import (
    Artifact,
    UnsupportedFeatureError,
)
from mlassets.roles.storage import LakeStorage
from mlassets.twins.adf.conversion import is_complex, to_json_text
from mlassets.twins.adf.datasets import PARQUET_CODECS, LakeFiles, join_path, text_options
from mlassets.twins.adf.errors import CopyError

if TYPE_CHECKING:
    from mlassets.twins.adf.engine import CopyEngine


class FileSink:
    """Writes one file of a lake dataset atomically (a temp file renamed, or a blob upload)."""

    extension = ""

    def __init__(
        self, engine: CopyEngine, dataset: Artifact, tp: dict, sink: dict, activity_run_id: str
    ) -> None:
        self.engine = engine
        self.lake = engine.lake
        self.files = LakeFiles(engine.lake, dataset, tp)
        self.tp = tp
        self.sink = sink
        store = sink.get("storeSettings") or {}
        name = self.files.file_name
        if not name:
            if store.get("copyBehavior") not in (None, "MergeFiles"):
                raise UnsupportedFeatureError(
                    f"dataset {dataset.name!r}: a sink without a file name writes one merged file; "
                    f"copyBehavior {store.get('copyBehavior')!r} is not supported"
                )
            name = f"data_{activity_run_id}.{self.extension}"
        self.relative = join_path(self.files.folder, name)
        self.rows = 0
        self._handle: Any = None
        self._tmp: str | None = None
        self._written = False

    def _open(self) -> Any:
        target = self.lake.path(self.relative)
        if self.lake.is_local:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            self._tmp = f"{target}.{uuid.uuid4().hex}.tmp"
            self._handle = open(self._tmp, "wb")  # noqa: SIM115 - closed in close()
        else:
            self._handle = self.lake.fs.open(target, "wb")
        return self._handle

    def close(self, ok: bool) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.close()
            self._written = ok
        if self._tmp is not None:
            tmp, self._tmp = self._tmp, None
            if ok:
                Path(tmp).replace(self.lake.path(self.relative))
            else:
                Path(tmp).unlink(missing_ok=True)
        elif not ok and not self.lake.is_local and handle is not None:
            self.lake.delete(self.relative)

    @property
    def files_written(self) -> int:
        return 1 if self._written else 0

    @property
    def bytes_written(self) -> int:
        return self.lake.size(self.relative) if self._written else 0


class ParquetFileSink(FileSink):
    extension = "parquet"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        codec = str(self.tp.get("compressionCodec") or "snappy").lower()
        if codec not in PARQUET_CODECS:
            raise UnsupportedFeatureError(f"Parquet compressionCodec {codec!r} is not supported")
        self.codec = PARQUET_CODECS[codec]
        self._writer: pq.ParquetWriter | None = None

    def write(self, table: pa.Table) -> None:
        if self._writer is None:
            self._writer = pq.ParquetWriter(self._open(), table.schema, compression=self.codec)
        elif not table.schema.equals(self._writer.schema, check_metadata=False):
            try:
                table = table.cast(self._writer.schema)
            except (pa.ArrowInvalid, ValueError) as exc:
                raise CopyError(f"the source files have different schemas: {exc}") from None
        self._writer.write_table(table)
        self.rows += table.num_rows

    def close(self, ok: bool) -> None:
        if self._writer is not None:
            self._writer.close()
        super().close(ok)


class DelimitedTextFileSink(FileSink):
    extension = "txt"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.opts = text_options(self.files.dataset.name, self.tp)
        if self.opts.quote not in ('"', None) or self.opts.escape not in ('"', "\\", None):
            raise UnsupportedFeatureError(
                'DelimitedText sink: only the " quote character is supported'
            )
        if self.opts.null_value:
            raise UnsupportedFeatureError(
                "DelimitedText sink: a non-empty nullValue is not supported"
            )
        fmt = self.sink.get("formatSettings") or {}
        self.quote_all = bool(fmt.get("quoteAllText", False))
        self._writer: pa_csv.CSVWriter | None = None
        self._stream: Any = None

    def write(self, table: pa.Table) -> None:
        for f in table.schema:
            if is_complex(f.type):
                raise CopyError(f"column {f.name!r} ({f.type}) cannot be written as delimited text")
        if self._writer is None:
            raw = self._open()
            self._stream = pa.CompressedOutputStream(raw, "gzip") if self.opts.gzip else raw
            self._schema = table.schema
            self._writer = pa_csv.CSVWriter(
                self._stream,
                table.schema,
                write_options=pa_csv.WriteOptions(
                    include_header=self.opts.header,
                    delimiter=self.opts.delimiter,
                    quoting_style="all_valid" if self.quote_all else "needed",
                ),
            )
        self._writer.write_table(table.cast(self._schema))
        self.rows += table.num_rows

    def close(self, ok: bool) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._stream is not None and self._stream is not self._handle:
            self._stream.close()
        super().close(ok)


class JsonFileSink(FileSink):
    extension = "json"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.opts = text_options(self.files.dataset.name, self.tp)
        fmt = self.sink.get("formatSettings") or {}
        self.array = fmt.get("filePattern", "setOfObjects") == "arrayOfObjects"
        self._stream: Any = None

    def write(self, table: pa.Table) -> None:
        if self._stream is None:
            raw = self._open()
            self._stream = gzip.GzipFile(fileobj=raw, mode="wb") if self.opts.gzip else raw
            if self.array:
                self._stream.write(b"[")
        if table.num_rows:
            struct = pa.StructArray.from_arrays(
                [c.combine_chunks() for c in table.columns], names=table.column_names
            )
            lines = to_json_text(struct)
            sep = ",\n" if self.array else "\n"
            if self.array and self.rows:
                self._stream.write(b",\n")
            ended = pc.binary_join_element_wise(lines, pa.scalar(""), sep)
            data = ended.buffers()[2]
            offsets = np.frombuffer(ended.buffers()[1], np.int32)
            body = data.to_pybytes()[
                int(offsets[ended.offset]) : int(offsets[ended.offset + len(ended)])
            ]
            self._stream.write(body[: -len(sep)] if self.array else body)
        self.rows += table.num_rows

    def close(self, ok: bool) -> None:
        if self._stream is not None:
            if self.array:
                self._stream.write(b"]")
            if self._stream is not self._handle:
                self._stream.close()
        super().close(ok)


class SqlSink:
    """Inserts or upserts into a table, all in one transaction.

    An upsert stages the rows in a temporary table (ADF's useTempDB), then, set-based,
    deletes the target rows whose keys it holds and inserts the last staged row per key.
    """

    def __init__(self, engine: CopyEngine, dataset: Artifact, tp: dict, sink: dict) -> None:
        self.engine = engine
        self.dataset = dataset
        self.tp = tp
        self.sink = sink
        self.rows = 0
        self.bytes_written = 0
        self.files_written = 0
        self.behavior = str(sink.get("writeBehavior") or "insert").lower()
        keys = (sink.get("upsertSettings") or {}).get("keys") or []
        if self.behavior == "upsert" and not keys:
            raise CopyError("upsert needs upsertSettings.keys")
        self.keys = [str(k) for k in keys]
        self.auto_create = str(sink.get("tableOption") or "none").lower() == "autocreate"
        self.batch = int(sink.get("writeBatchSize") or 10_000)
        self._sa_engine = engine.sql_engine()
        self.dialect = self._sa_engine.dialect
        self._conn = self._sa_engine.connect()
        self._trans = self._conn.begin()
        self._table: Any = None
        self._stage: Any = None
        self._staged = 0
        if sink.get("preCopyScript"):
            import sqlalchemy as sa

            self._conn.execute(sa.text(sink["preCopyScript"]))

    @property
    def name(self) -> str:
        return self.engine.sql_name(self.tp)

    def _q(self, name: str) -> str:
        return self.dialect.identifier_preparer.quote(name)

    def _prepare(self, table: pa.Table) -> Any:
        import sqlalchemy as sa

        target = self.engine.sql_table(self._conn, self.tp, must_exist=False)
        missing_keys = [k for k in self.keys if k not in table.column_names]
        if missing_keys:
            raise CopyError(f"upsert key column(s) {missing_keys} are not in the source")
        if target is None:
            if not self.auto_create:
                raise CopyError(
                    f"table {self.name} does not exist (set tableOption autoCreate to create it)"
                )
            schema, name = self.engine.sql_schema_and_table(self.tp)
            columns = [
                sa.Column(f.name, _sql_type(f.type, f.name, key=f.name in self.keys))
                for f in table.schema
            ]
            target = sa.Table(name, sa.MetaData(), *columns, schema=schema)
            target.create(self._conn)
        missing = [n for n in table.column_names if n not in target.columns]
        if missing:
            raise CopyError(f"table {self.name} has no column(s) {missing}")
        if self.behavior == "upsert":
            self._stage = self._create_stage(target, table.column_names)
        return target

    def _create_stage(self, target: Any, columns: list[str]) -> Any:
        import sqlalchemy as sa

        suffix = uuid.uuid4().hex[:12]
        mssql = self.dialect.name == "mssql"
        stage = sa.Table(
            f"#mlassets_upsert_{suffix}" if mssql else f"mlassets_upsert_{suffix}",
            sa.MetaData(),
            *[sa.Column(c, target.columns[c].type) for c in columns],
            sa.Column("__seq", sa.BigInteger()),
            prefixes=[] if mssql else ["TEMPORARY"],
        )
        stage.create(self._conn)
        if self.dialect.name == "sqlite":  # SQL Server hash-joins without one
            keys = ", ".join(self._q(k) for k in [*self.keys, "__seq"])
            self._conn.exec_driver_sql(
                f"CREATE INDEX {self._q(f'ix_{suffix}')} ON {self._q(stage.name)} ({keys})"
            )
        return stage

    def _insert(self, table_sql: str, table: pa.Table) -> None:
        mark = "?" if self.dialect.paramstyle == "qmark" else "%s"
        columns = table.column_names
        statement = (
            f"INSERT INTO {table_sql} ({', '.join(self._q(c) for c in columns)}) "
            f"VALUES ({', '.join([mark] * len(columns))})"
        )
        values = [_python_values(table.column(c), self.dialect.name) for c in columns]
        rows = list(zip(*values, strict=True))
        for start in range(0, len(rows), self.batch):
            self._conn.exec_driver_sql(statement, rows[start : start + self.batch])

    def write(self, table: pa.Table) -> None:
        if self._table is None:
            self._table = self._prepare(table)
        if table.num_rows == 0:
            return
        if self._stage is not None:
            seq = pa.array(np.arange(self._staged, self._staged + table.num_rows, dtype=np.int64))
            self._insert(self._q(self._stage.name), table.append_column("__seq", seq))
            self._staged += table.num_rows
        else:
            target = self.engine.sql_name(self.tp, quoted=True, dialect=self.dialect)
            self._insert(target, table)
            self.rows += table.num_rows
        self.bytes_written += table.nbytes

    def _merge(self) -> None:
        """Delete the target rows the stage has keys for; insert the last staged row per key."""
        target = self.engine.sql_name(self.tp, quoted=True, dialect=self.dialect)
        stage = self._q(self._stage.name)
        columns = [c.name for c in self._stage.columns if c.name != "__seq"]
        same = " AND ".join(f"s.{self._q(k)} = {target}.{self._q(k)}" for k in self.keys)
        self._conn.exec_driver_sql(
            f"DELETE FROM {target} WHERE EXISTS (SELECT 1 FROM {stage} s WHERE {same})"
        )
        later = " AND ".join(f"l.{self._q(k)} = s.{self._q(k)}" for k in self.keys)
        listed = ", ".join(self._q(c) for c in columns)
        selected = ", ".join(f"s.{self._q(c)}" for c in columns)
        inserted = self._conn.exec_driver_sql(
            f"INSERT INTO {target} ({listed}) SELECT {selected} "
            f"FROM {stage} s WHERE NOT EXISTS (SELECT 1 FROM {stage} l WHERE {later} "
            "AND l.__seq > s.__seq)"
        )
        self.rows += max(inserted.rowcount, 0)
        self._conn.exec_driver_sql(f"DROP TABLE {stage}")

    def close(self, ok: bool) -> None:
        try:
            if ok and self._stage is not None:
                self._merge()
            if ok:
                self._trans.commit()
            else:
                self._trans.rollback()
        except BaseException:
            self._trans.rollback()
            raise
        finally:
            self._conn.close()


def _python_values(column: pa.ChunkedArray, dialect: str) -> list:
    arr = column.combine_chunks()
    if pa.types.is_timestamp(arr.type):
        if arr.type.tz:
            arr = pc.cast(
                pc.cast(arr, pa.timestamp(arr.type.unit, tz="UTC")), pa.timestamp(arr.type.unit)
            )
        if dialect == "sqlite":  # SQLAlchemy's SQLite DATETIME storage format
            # Arrow's %S already carries the fraction in the array's unit: microseconds here.
            arr = pc.cast(arr, pa.timestamp("us"))
            return pc.strftime(arr, "%Y-%m-%d %H:%M:%S").to_pylist()
    return arr.to_pylist()


# -- the session log -------------------------------------------------------------------------


class SessionLog:
    """ADF's copy activity session log: CSV at <path>/copyactivity-logs/<activity>/<run id>/."""

    def __init__(
        self, lake: LakeStorage, path: str, activity: str, activity_run_id: str, level: str
    ) -> None:
        self.lake = lake
        self.folder = join_path(path, "copyactivity-logs", activity, activity_run_id)
        self.level = level
        self.columns: dict[str, list] = {
            k: [] for k in ("Timestamp", "Level", "OperationName", "OperationItem", "Message")
        }

    def add(self, level: str, operation: str, items: list[str], messages: list[str]) -> None:
        if level == "Info" and self.level != "Info":
            return
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f") + "0"
        self.columns["Timestamp"] += [stamp] * len(items)
        self.columns["Level"] += [level] * len(items)
        self.columns["OperationName"] += [operation] * len(items)
        self.columns["OperationItem"] += items
        self.columns["Message"] += messages

    def write(self) -> str | None:
        if not self.columns["Timestamp"]:
            return None
        relative = join_path(self.folder, f"{uuid.uuid4()}.txt")
        table = pa.table({k: pa.array(v, pa.string()) for k, v in self.columns.items()})
        sink = io.BytesIO()
        pa_csv.write_csv(table, sink, write_options=pa_csv.WriteOptions(quoting_style="needed"))
        with self.lake.fs.open(self.lake.path(relative), "wb") as f:
            f.write(sink.getvalue())
        return relative


def _sql_type(t: pa.DataType, column: str, key: bool = False) -> Any:
    import sqlalchemy as sa

    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return sa.Unicode(450) if key else sa.UnicodeText()  # 450: SQL Server's index limit
    if pa.types.is_boolean(t):
        return sa.Boolean()
    if pa.types.is_int8(t) or pa.types.is_int16(t) or pa.types.is_uint8(t):
        return sa.SmallInteger()
    if pa.types.is_int32(t) or pa.types.is_uint16(t):
        return sa.Integer()
    if pa.types.is_integer(t):
        return sa.BigInteger()
    if pa.types.is_floating(t):
        return sa.Float()
    if pa.types.is_decimal(t):
        return sa.Numeric(t.precision, t.scale)
    if pa.types.is_timestamp(t):
        return sa.DateTime()
    if pa.types.is_date(t):
        return sa.Date()
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return sa.LargeBinary()
    raise CopyError(f"column {column!r} of type {t} cannot be written to a SQL table")
