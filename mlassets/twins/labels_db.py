"""The labels database role's embedded twin: `SqliteLabelsDatabase`, CDC-shaped SQLite.

SQLite has no change data capture, so triggers on `labels` write every change into a change
table named and shaped like SQL Server's (`cdc.<instance>_CT` with `__$start_lsn`, `__$seqval`,
`__$operation`), numbered by an LSN counter in the writer's transaction. The role's reader
(`mlassets.roles.labels_db.LabelsDatabase`) then serves this twin and Azure SQL alike; only
the dialect-specific statements below differ.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field, PrivateAttr

from mlassets.lib.lazy import lazy
from mlassets.roles.labels_db import LabelsDatabase, lsn_int

# Loaded on first use: the code location defines this resource without touching a database.
sa = lazy("sqlalchemy")

if TYPE_CHECKING:
    import sqlalchemy as sa

__all__ = ["SqliteLabelsDatabase"]

#: Change table and CDC bookkeeping, named after SQL Server's (`cdc.<instance>_CT`,
#: `cdc.change_tables`, `cdc.lsn_time_mapping`); SQLite has no schemas, hence the prefix.
_LOCAL_INSTANCE = "dbo_labels"
_CT = f'"cdc_{_LOCAL_INSTANCE}_CT"'

_SQLITE_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS labels (
        sample_id TEXT NOT NULL PRIMARY KEY,
        label INTEGER,
        labeler TEXT,
        updated_at TIMESTAMP NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now'))
    )""",
    # The LSN counter: one row, incremented by every captured change (inside the writer's
    # transaction, and SQLite has one writer at a time, so LSNs follow commit order).
    """CREATE TABLE IF NOT EXISTS cdc_lsn (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        last_lsn INTEGER NOT NULL
    )""",
    "INSERT OR IGNORE INTO cdc_lsn (id, last_lsn) VALUES (1, 0)",
    """CREATE TABLE IF NOT EXISTS cdc_change_tables (
        capture_instance TEXT PRIMARY KEY,
        source_table TEXT NOT NULL,
        start_lsn INTEGER NOT NULL,
        create_date TEXT NOT NULL
    )""",
    f"""INSERT OR IGNORE INTO cdc_change_tables
        SELECT '{_LOCAL_INSTANCE}', 'labels', last_lsn + 1, strftime('%Y-%m-%d %H:%M:%f', 'now')
        FROM cdc_lsn WHERE id = 1""",
    f"""CREATE TABLE IF NOT EXISTS {_CT} (
        "__$start_lsn" INTEGER NOT NULL,
        "__$seqval" INTEGER NOT NULL,
        "__$operation" INTEGER NOT NULL,
        sample_id TEXT,
        label INTEGER,
        labeler TEXT,
        updated_at TIMESTAMP,
        PRIMARY KEY ("__$start_lsn", "__$seqval", "__$operation")
    ) WITHOUT ROWID""",
    # Each row change is its own LSN (as if every change were its own transaction), so
    # `__$seqval` equals `__$start_lsn`; an update writes its before- and after-image under
    # one LSN, like SQL Server.
    f"""CREATE TRIGGER IF NOT EXISTS labels_cdc_insert AFTER INSERT ON labels BEGIN
        UPDATE cdc_lsn SET last_lsn = last_lsn + 1 WHERE id = 1;
        INSERT INTO {_CT} SELECT last_lsn, last_lsn, 2,
            NEW.sample_id, NEW.label, NEW.labeler, NEW.updated_at FROM cdc_lsn WHERE id = 1;
    END""",
    f"""CREATE TRIGGER IF NOT EXISTS labels_cdc_delete AFTER DELETE ON labels BEGIN
        UPDATE cdc_lsn SET last_lsn = last_lsn + 1 WHERE id = 1;
        INSERT INTO {_CT} SELECT last_lsn, last_lsn, 1,
            OLD.sample_id, OLD.label, OLD.labeler, OLD.updated_at FROM cdc_lsn WHERE id = 1;
    END""",
    f"""CREATE TRIGGER IF NOT EXISTS labels_cdc_update AFTER UPDATE ON labels
        WHEN OLD.sample_id IS NEW.sample_id BEGIN
        UPDATE cdc_lsn SET last_lsn = last_lsn + 1 WHERE id = 1;
        INSERT INTO {_CT} SELECT last_lsn, last_lsn, 3,
            OLD.sample_id, OLD.label, OLD.labeler, OLD.updated_at FROM cdc_lsn WHERE id = 1;
        INSERT INTO {_CT} SELECT last_lsn, last_lsn, 4,
            NEW.sample_id, NEW.label, NEW.labeler, NEW.updated_at FROM cdc_lsn WHERE id = 1;
    END""",
    # An update of the key is a delete of the old key and an insert of the new one.
    f"""CREATE TRIGGER IF NOT EXISTS labels_cdc_update_key AFTER UPDATE ON labels
        WHEN OLD.sample_id IS NOT NEW.sample_id BEGIN
        UPDATE cdc_lsn SET last_lsn = last_lsn + 1 WHERE id = 1;
        INSERT INTO {_CT} SELECT last_lsn, last_lsn, 1,
            OLD.sample_id, OLD.label, OLD.labeler, OLD.updated_at FROM cdc_lsn WHERE id = 1;
        INSERT INTO {_CT} SELECT last_lsn, last_lsn, 2,
            NEW.sample_id, NEW.label, NEW.labeler, NEW.updated_at FROM cdc_lsn WHERE id = 1;
    END""",
]


class SqliteLabelsDatabase(LabelsDatabase):
    """The embedded twin: a SQLite file whose triggers capture every change, CDC-shaped.

    Durable like the rest of the twins (WAL, synchronous=FULL): a change acknowledged by a
    commit is captured in the same transaction and survives a restart. REPLACE conflicts
    fire the delete trigger too (recursive_triggers), so no change escapes capture.
    """

    capture_instance: str = Field(default=_LOCAL_INSTANCE, description="fixed for the twin")

    _ready: bool = PrivateAttr(default=False)

    def _create_engine(self) -> sa.Engine:
        url = sa.make_url(self.url)
        if url.database and url.database != ":memory:":
            from pathlib import Path

            Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection, _record) -> None:
            cur = dbapi_connection.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA recursive_triggers=ON")
            cur.close()

        return engine

    def _prepare(self) -> None:
        if not self._ready:
            self.ensure_schema()

    def ensure_schema(self) -> None:
        with self.engine.begin() as conn:
            for statement in _SQLITE_SCHEMA:
                conn.exec_driver_sql(statement)
        self._ready = True

    def lsn_bounds_statement(self) -> sa.TextClause:
        return sa.text(
            "SELECT (SELECT printf('%020x', start_lsn) FROM cdc_change_tables "
            "WHERE capture_instance = :capture_instance), "
            "(SELECT printf('%020x', last_lsn) FROM cdc_lsn WHERE id = 1)"
        ).bindparams(capture_instance=self.capture_instance)

    def max_lsn_statement(self) -> sa.TextClause:
        return sa.text("SELECT printf('%020x', last_lsn) FROM cdc_lsn WHERE id = 1")

    def changes_statement(self) -> sa.TextClause:
        return sa.text(
            "SELECT printf('%020x', \"__$start_lsn\"), printf('%020x', \"__$seqval\"), "
            '"__$operation", sample_id, label, labeler, updated_at '
            f'FROM {_CT} WHERE "__$start_lsn" BETWEEN :from_lsn AND :to_lsn '
            'ORDER BY "__$start_lsn", "__$seqval", "__$operation"'
        )

    def lsn_param(self, lsn: str) -> int:
        return min(lsn_int(lsn), (1 << 63) - 1)  # SQLite integers are 64-bit

    def cleanup_statement(self) -> sa.TextClause:
        # Two statements in SQLite; run by cleanup_changes below.
        return sa.text(f'DELETE FROM {_CT} WHERE "__$start_lsn" < :low_water_mark')

    def cleanup_changes(self, low_water_mark: str) -> None:
        self._prepare()
        low = self.lsn_param(low_water_mark)
        with self.engine.begin() as conn:
            conn.execute(self.cleanup_statement(), {"low_water_mark": low})
            conn.execute(
                sa.text(
                    "UPDATE cdc_change_tables SET start_lsn = MAX(start_lsn, :low) "
                    "WHERE capture_instance = :capture_instance"
                ),
                {"low": low, "capture_instance": self.capture_instance},
            )

    def change_rows(self) -> int:
        """Rows in the change table (tests, status)."""
        self._prepare()
        with self.engine.connect() as conn:
            return int(conn.execute(sa.text(f"SELECT COUNT(*) FROM {_CT}")).scalar())
