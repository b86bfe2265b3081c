"""The labels database role: Azure SQL with change data capture, or its embedded SQLite twin.

Both hold the table people curate,

    labels(sample_id TEXT PRIMARY KEY, label INT, labeler TEXT, updated_at TIMESTAMP)

and expose its changes the way SQL Server CDC does, so one reader serves both:

- every change is a row with a log sequence number (`__$start_lsn`, monotonic in commit
  order), `__$seqval` (order inside a transaction) and `__$operation` (1 delete, 2 insert,
  3 update before-image, 4 update after-image), followed by the row's columns;
- the minimum LSN still retained (`sys.fn_cdc_get_min_lsn`) and the newest LSN
  (`sys.fn_cdc_get_max_lsn`) bound what can be read;
- changes are read by LSN range (`cdc.fn_cdc_get_all_changes_<instance>(@from, @to, N'all')`).

LSNs are SQL Server's `binary(10)`; everywhere outside the database they are written as 20
lowercase hex digits, which sort the same way as the binary values (a file listing, a string
comparison and the database agree on order). The embedded twin numbers its changes with an
integer counter rendered the same way.

This module is the role's contract: the interface (`LabelsDatabase`), the CDC vocabulary (LSN
helpers, LABEL_SCHEMA / CHANGE_SCHEMA, operation codes) and the Azure SQL implementation. The
embedded twin (`SqliteLabelsDatabase`, with its trigger-based capture) lives with the other twins;
`defs/resources.py` picks one of the two from the URL.

The label domain (0..9, not null) is deliberately *not* a constraint: people make mistakes,
the source must be mirrored faithfully, and the asset checks report the offending keys.

Why SQLAlchemy Core and `text()` rather than an ORM: the statements are few, dialect-specific
(CDC functions) and must be inspectable; the URL is the one setting that differs.
"""

from __future__ import annotations

import atexit
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import TYPE_CHECKING, Any

import dagster as dg
from pydantic import Field, PrivateAttr

from mlassets.lib.lazy import lazy

# Loaded on first use: the code location defines this resource without touching a database.
pa = lazy("pyarrow")
pc = lazy("pyarrow.compute")
sa = lazy("sqlalchemy")

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.compute as pc
    import sqlalchemy as sa

__all__ = [  # plus CHANGE_SCHEMA and LABEL_SCHEMA, built on first use by __getattr__
    "LABEL_COLUMNS",
    "AzureSqlLabelsDatabase",
    "CdcNotEnabledError",
    "LabelsDatabase",
    "LsnBounds",
    "lsn_hex",
    "lsn_int",
    "next_lsn",
]

LABEL_COLUMNS: tuple[str, ...] = ("sample_id", "label", "labeler", "updated_at")


@cache
def _schemas() -> tuple[pa.Schema, pa.Schema]:
    """(LABEL_SCHEMA, CHANGE_SCHEMA), built on first use."""
    #: The source table's columns, in order, as they land in the lake.
    label = pa.schema(
        [
            pa.field("sample_id", pa.string(), nullable=False),
            pa.field("label", pa.int32()),
            pa.field("labeler", pa.string()),
            pa.field("updated_at", pa.timestamp("us", tz="UTC")),
        ]
    )
    #: One change row: SQL Server CDC's `__$start_lsn`, `__$seqval`, `__$operation` + columns.
    change = pa.schema(
        [
            pa.field("start_lsn", pa.string(), nullable=False),
            pa.field("seqval", pa.string(), nullable=False),
            pa.field("operation", pa.int8(), nullable=False),
            *label,
        ]
    )
    return label, change


def __getattr__(name: str) -> Any:  # PEP 562: LABEL_SCHEMA and CHANGE_SCHEMA, built lazily
    if name == "LABEL_SCHEMA":
        return _schemas()[0]
    if name == "CHANGE_SCHEMA":
        return _schemas()[1]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


OP_DELETE, OP_INSERT, OP_UPDATE_BEFORE, OP_UPDATE_AFTER = 1, 2, 3, 4
OPERATION_NAMES = {1: "delete", 2: "insert", 3: "update_before", 4: "update_after"}

LSN_HEX_DIGITS = 20  # binary(10)
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def lsn_hex(value: int) -> str:
    """An LSN as 20 lowercase hex digits (SQL Server's binary(10), big-endian)."""
    if value < 0 or value >= 1 << 80:
        raise ValueError(f"LSN {value} outside binary(10)")
    return f"{value:0{LSN_HEX_DIGITS}x}"


def lsn_int(lsn: str) -> int:
    return int(lsn, 16)


def next_lsn(lsn: str) -> str:
    """The smallest LSN after `lsn` (what `sys.fn_cdc_increment_lsn` is for)."""
    return lsn_hex(lsn_int(lsn) + 1)


def previous_lsn(lsn: str) -> str:
    return lsn_hex(max(lsn_int(lsn) - 1, 0))


def _normalize_lsn(value: str | bytes | None) -> str | None:
    """What a driver returns for an LSN -> canonical hex, None for NULL / all zeros."""
    if value is None:
        return None
    text = value.hex() if isinstance(value, bytes | bytearray) else str(value).strip().lower()
    text = text.removeprefix("0x").rjust(LSN_HEX_DIGITS, "0")
    return None if int(text, 16) == 0 else text


@dataclass(frozen=True)
class LsnBounds:
    """What the capture instance can serve: changes with min_lsn <= LSN <= max_lsn."""

    min_lsn: str | None
    max_lsn: str | None


class CdcNotEnabledError(RuntimeError):
    """The source table has no change capture (or the capture instance name is wrong)."""


def _column(values: Sequence, target: pa.DataType) -> pa.Array:
    """A driver's column (tuple of Python values) -> Arrow, in C, whatever the driver's types."""
    if pa.types.is_timestamp(target):
        arr = pa.array(values)
        if pa.types.is_null(arr.type):
            return arr.cast(target)
        if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
            # SQLite keeps timestamps as ISO text ("YYYY-MM-DD HH:MM:SS[.ffffff]"), in UTC.
            arr = arr.cast(pa.timestamp("us"))
        if arr.type.tz is None:
            arr = arr.cast(pa.timestamp("us")).cast(target)  # naive values are UTC
        return arr.cast(target)
    return pa.array(values, type=None).cast(target) if len(values) else pa.array([], target)


def rows_to_table(rows: Sequence[Sequence], schema: pa.Schema) -> pa.Table:
    """Driver rows -> an Arrow table of `schema`, transposed once (no per-row Python)."""
    if not rows:
        return schema.empty_table()
    columns = list(zip(*rows, strict=True))
    return pa.Table.from_arrays(
        [_column(col, field.type) for col, field in zip(columns, schema, strict=True)],
        schema=schema,
    )


class LabelsDatabase(dg.ConfigurableResource, ABC):
    """What the platform needs from the labels database: its rows, its changes, its LSNs."""

    url: str = Field(description="SQLAlchemy URL of the labels database (may hold a secret)")
    fetch_rows: int = Field(default=50_000, description="rows fetched per round trip")

    _engine: Any = PrivateAttr(default=None)  # sqlalchemy.Engine, created on first use
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    # -- dialect-specific ----------------------------------------------------------------

    @property
    def table_sql(self) -> str:
        """The source table as SQL names it."""
        return "labels"

    @abstractmethod
    def _create_engine(self) -> sa.Engine: ...

    @abstractmethod
    def ensure_schema(self) -> None:
        """Create the table and enable change capture on it, when missing (idempotent)."""

    @abstractmethod
    def lsn_bounds_statement(self) -> sa.TextClause:
        """One row: (min LSN, max LSN), as hex text or binary."""

    @abstractmethod
    def max_lsn_statement(self) -> sa.TextClause:
        """One row: the max LSN, as hex text or binary."""

    @abstractmethod
    def changes_statement(self) -> sa.TextClause:
        """Change rows with from_lsn <= LSN <= to_lsn (binds :from_lsn, :to_lsn), ordered by
        (LSN, seqval, operation), columns as CHANGE_SCHEMA."""

    @abstractmethod
    def lsn_param(self, lsn: str) -> object:
        """How this dialect binds an LSN."""

    @abstractmethod
    def cleanup_statement(self) -> sa.TextClause:
        """Drop changes below :low_water_mark and move the minimum LSN there."""

    # -- shared ----------------------------------------------------------------------------

    @property
    def engine(self) -> sa.Engine:
        with self._lock:
            if self._engine is None:
                self._engine = self._create_engine()
                # Close its connections before the interpreter dismantles the sqlite3 module
                # (a teardown hook would stop the CLI from initializing the resource).
                atexit.register(self._engine.dispose)
            return self._engine

    @property
    def display_url(self) -> str:
        """The URL without its password: safe for logs and metadata."""
        return sa.make_url(self.url).render_as_string(hide_password=True)

    def _prepare(self) -> None:
        """Hook before every use (the embedded twin creates its schema here)."""

    def lsn_bounds(self) -> LsnBounds:
        self._prepare()
        with self.engine.connect() as conn:
            row = conn.execute(self.lsn_bounds_statement()).one()
        bounds = LsnBounds(_normalize_lsn(row[0]), _normalize_lsn(row[1]))
        if bounds.min_lsn is None:
            raise CdcNotEnabledError(self._not_enabled_message())
        return bounds

    def max_lsn(self) -> str | None:
        """The newest LSN, None while nothing was ever captured. One cheap query."""
        self._prepare()
        with self.engine.connect() as conn:
            return _normalize_lsn(conn.execute(self.max_lsn_statement()).scalar())

    def read_changes(self, from_lsn: str, to_lsn: str) -> Iterator[pa.Table]:
        """Changes with from_lsn <= LSN <= to_lsn, in order, as CHANGE_SCHEMA chunks."""
        self._prepare()
        params = {"from_lsn": self.lsn_param(from_lsn), "to_lsn": self.lsn_param(to_lsn)}
        with self.engine.connect() as conn:
            result = conn.execute(self.changes_statement(), params)
            while rows := result.fetchmany(self.fetch_rows):
                yield rows_to_table(rows, _schemas()[1])

    def read_labels(self) -> pa.Table:
        """`SELECT * FROM labels` as LABEL_SCHEMA (a full snapshot, unordered)."""
        self._prepare()
        chunks = []
        with self.engine.connect() as conn:
            result = conn.execute(
                sa.text(f"SELECT {', '.join(LABEL_COLUMNS)} FROM {self.table_sql}")
            )
            while rows := result.fetchmany(self.fetch_rows):
                chunks.append(rows_to_table(rows, _schemas()[0]))
        return pa.concat_tables(chunks) if chunks else _schemas()[0].empty_table()

    def count_labels(self) -> int:
        self._prepare()
        with self.engine.connect() as conn:
            return int(conn.execute(sa.text(f"SELECT COUNT(*) FROM {self.table_sql}")).scalar())

    def cleanup_changes(self, low_water_mark: str) -> None:
        """Forget changes below `low_water_mark`, as CDC's retention cleanup does."""
        self._prepare()
        with self.engine.begin() as conn:
            conn.execute(
                self.cleanup_statement(), {"low_water_mark": self.lsn_param(low_water_mark)}
            )

    # -- writes (the simulator and tests; people use their own tools) ----------------------

    def _write(self, sql: str, table: pa.Table, columns: Sequence[str]) -> int:
        if table.num_rows == 0:
            return 0
        self._prepare()
        table = table.select(list(columns))
        if "updated_at" in table.column_names:  # drivers want naive UTC datetimes
            utc = table["updated_at"].cast(pa.timestamp("us", tz="UTC"))
            table = table.set_column(
                table.schema.get_field_index("updated_at"),
                "updated_at",
                utc.cast(pa.timestamp("us")),
            )
        rows = table.to_pylist()
        with self.engine.begin() as conn:
            for start in range(0, len(rows), self.fetch_rows):
                conn.execute(sa.text(sql), rows[start : start + self.fetch_rows])
        return len(rows)

    def insert_labels(self, table: pa.Table) -> int:
        """Insert new rows (LABEL_SCHEMA columns); `updated_at` defaults to now."""
        table = _with_updated_at(table)
        return self._write(
            f"INSERT INTO {self.table_sql} (sample_id, label, labeler, updated_at) "
            "VALUES (:sample_id, :label, :labeler, :updated_at)",
            table,
            LABEL_COLUMNS,
        )

    def update_labels(self, table: pa.Table) -> int:
        """Set label and labeler of existing rows by sample_id."""
        table = _with_updated_at(table)
        return self._write(
            f"UPDATE {self.table_sql} SET label = :label, labeler = :labeler, "
            "updated_at = :updated_at WHERE sample_id = :sample_id",
            table,
            LABEL_COLUMNS,
        )

    def delete_labels(self, sample_ids: Sequence[str] | pa.Array) -> int:
        ids = pa.table({"sample_id": pa.array(sample_ids, pa.string())})
        return self._write(
            f"DELETE FROM {self.table_sql} WHERE sample_id = :sample_id", ids, ["sample_id"]
        )

    def _not_enabled_message(self) -> str:
        return f"change data capture is not enabled on {self.table_sql} of {self.display_url}"

    def dispose(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


def _with_updated_at(table: pa.Table) -> pa.Table:
    if "updated_at" in table.column_names and table["updated_at"].null_count == 0:
        return table
    now = pa.scalar(datetime.now(UTC), pa.timestamp("us", tz="UTC"))
    filled = (
        pc.fill_null(table["updated_at"].cast(now.type), now)
        if "updated_at" in table.column_names
        else pa.repeat(now, table.num_rows)
    )
    if "updated_at" in table.column_names:
        return table.set_column(table.schema.get_field_index("updated_at"), "updated_at", filled)
    return table.append_column("updated_at", filled)


# -- Azure SQL (SQL Server CDC) ----------------------------------------------------------------

#: SQL_COPT_SS_ACCESS_TOKEN: the ODBC driver's pre-connect attribute for an Entra ID token.
_SQL_COPT_SS_ACCESS_TOKEN = 1256


class AzureSqlLabelsDatabase(LabelsDatabase):
    """Azure SQL Database (or SQL Server) through `mssql+pyodbc`, reading CDC functions.

    The URL carries the server, database, ODBC driver and either SQL credentials or an ODBC
    `Authentication=` mode (e.g. ActiveDirectoryMsi). With neither, the connection is
    authenticated with an Entra ID token from DefaultAzureCredential.
    """

    capture_instance: str = Field(
        default="dbo_labels", description="CDC capture instance of dbo.labels"
    )
    schema_name: str = Field(default="dbo", description="schema of the labels table")

    @property
    def table_sql(self) -> str:
        return f"{self._identifier(self.schema_name)}.labels"

    def _identifier(self, name: str) -> str:
        # Function and schema names cannot be bound as parameters: allow identifiers only.
        if not _IDENTIFIER.match(name):
            raise ValueError(f"{name!r} is not a valid SQL identifier")
        return name

    def _create_engine(self) -> sa.Engine:
        url = sa.make_url(self.url)
        engine = sa.create_engine(url, fast_executemany=True, pool_pre_ping=True)
        query = {k.lower() for k in url.query}
        if not url.password and "authentication" not in query and "odbc_connect" not in query:
            _use_entra_token(engine)
        return engine

    def ensure_schema(self) -> None:
        """Create dbo.labels and enable CDC on the database and the table (needs db_owner)."""
        schema = self._identifier(self.schema_name)
        instance = self._identifier(self.capture_instance)
        with self.engine.begin() as conn:
            for statement, params in self.schema_statements(schema, instance):
                conn.execute(statement, params)

    @staticmethod
    def schema_statements(schema: str, instance: str) -> list[tuple[sa.TextClause, dict]]:
        return [
            (
                sa.text(
                    f"IF OBJECT_ID(N'{schema}.labels', N'U') IS NULL "
                    f"CREATE TABLE {schema}.labels ("
                    "sample_id NVARCHAR(64) NOT NULL CONSTRAINT pk_labels PRIMARY KEY, "
                    "label INT NULL, labeler NVARCHAR(128) NULL, "
                    "updated_at DATETIME2(6) NOT NULL "
                    "CONSTRAINT df_labels_updated_at DEFAULT SYSUTCDATETIME())"
                ),
                {},
            ),
            (
                sa.text(
                    "IF (SELECT is_cdc_enabled FROM sys.databases WHERE name = DB_NAME()) = 0 "
                    "EXEC sys.sp_cdc_enable_db"
                ),
                {},
            ),
            (
                sa.text(
                    "IF NOT EXISTS (SELECT 1 FROM sys.tables WHERE object_id = "
                    f"OBJECT_ID(N'{schema}.labels') AND is_tracked_by_cdc = 1) "
                    "EXEC sys.sp_cdc_enable_table @source_schema = :schema, "
                    "@source_name = N'labels', @role_name = NULL, "
                    "@capture_instance = :capture_instance, @supports_net_changes = 0"
                ),
                {"schema": schema, "capture_instance": instance},
            ),
        ]

    def lsn_bounds_statement(self) -> sa.TextClause:
        return sa.text(
            "SELECT LOWER(CONVERT(char(20), sys.fn_cdc_get_min_lsn(:capture_instance), 2)), "
            "LOWER(CONVERT(char(20), sys.fn_cdc_get_max_lsn(), 2))"
        ).bindparams(
            sa.bindparam("capture_instance", self._identifier(self.capture_instance), sa.Unicode)
        )

    def max_lsn_statement(self) -> sa.TextClause:
        return sa.text("SELECT LOWER(CONVERT(char(20), sys.fn_cdc_get_max_lsn(), 2))")

    def changes_statement(self) -> sa.TextClause:
        instance = self._identifier(self.capture_instance)
        return sa.text(
            "SELECT LOWER(CONVERT(char(20), __$start_lsn, 2)) AS start_lsn, "
            "LOWER(CONVERT(char(20), __$seqval, 2)) AS seqval, "
            "__$operation AS operation, sample_id, label, labeler, updated_at "
            f"FROM cdc.fn_cdc_get_all_changes_{instance}(:from_lsn, :to_lsn, N'all') "
            "ORDER BY __$start_lsn, __$seqval, __$operation"
        ).bindparams(
            sa.bindparam("from_lsn", type_=sa.LargeBinary),
            sa.bindparam("to_lsn", type_=sa.LargeBinary),
        )

    def lsn_param(self, lsn: str) -> bytes:
        return bytes.fromhex(lsn)

    def cleanup_statement(self) -> sa.TextClause:
        return sa.text(
            "EXEC sys.sp_cdc_cleanup_change_table @capture_instance = :capture_instance, "
            "@low_water_mark = :low_water_mark"
        ).bindparams(
            sa.bindparam("capture_instance", self._identifier(self.capture_instance), sa.Unicode),
            sa.bindparam("low_water_mark", type_=sa.LargeBinary),
        )

    def _not_enabled_message(self) -> str:
        return (
            f"sys.fn_cdc_get_min_lsn('{self.capture_instance}') returned nothing: change data "
            f"capture is not enabled on {self.table_sql} (or the capture instance is named "
            f"differently; set MLASSETS_LABELS_CAPTURE_INSTANCE). Enable it with "
            "`mlassets labels setup` or sys.sp_cdc_enable_table."
        )


def _use_entra_token(engine: sa.Engine) -> None:
    """Authenticate each new ODBC connection with a fresh Entra ID access token."""
    import struct

    @sa.event.listens_for(engine, "do_connect")
    def _token(_dialect, _record, _cargs, cparams) -> None:
        from azure.identity import DefaultAzureCredential

        token = DefaultAzureCredential().get_token("https://database.windows.net/.default").token
        raw = token.encode("utf-16-le")
        cparams["attrs_before"] = {_SQL_COPT_SS_ACCESS_TOKEN: struct.pack("<I", len(raw)) + raw}
