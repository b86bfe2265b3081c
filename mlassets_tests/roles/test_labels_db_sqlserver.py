"""The Azure SQL implementation: the exact SQL and bound parameters that reach the ODBC driver.

No SQL Server here: SQLAlchemy's real `mssql+pyodbc` dialect runs on a recording stand-in
for the pyodbc module, which answers the dialect's start-up queries and scripted CDC results.
What it records is what pyodbc would send to Azure SQL.
"""

import re
import types
from datetime import datetime

import pyarrow as pa
import pytest
import sqlalchemy as sa

from mlassets.roles.labels_db import (
    CHANGE_SCHEMA,
    AzureSqlLabelsDatabase,
    CdcNotEnabledError,
    lsn_hex,
)

URL = (
    "mssql+pyodbc://mlassets:TOPSECRET@srv.database.windows.net:1433/labels"
    "?driver=ODBC+Driver+18+for+SQL+Server&Encrypt=yes"
)
MIN, MAX = "0000002a000000100001", "0000002b000001f00003"


def _desc(*names):
    return [(n, str, None, None, None, None, True) for n in names]


class Recorder:
    """A pyodbc stand-in: records (sql, params, kind); answers from `script`."""

    def __init__(self, script):
        self.script = script  # [(regex, description, rows)]
        self.calls: list[tuple[str, tuple, str]] = []
        self.connect_kwargs: list[dict] = []
        recorder = self

        class Cursor:
            def __init__(self):
                self.description, self._rows, self.rowcount = None, [], -1

            def execute(self, sql, params=()):
                recorder.calls.append((sql, tuple(params), "execute"))
                self.description, self._rows = recorder.answer(sql)

            def executemany(self, sql, seq):
                recorder.calls.append((sql, tuple(tuple(p) for p in seq), "executemany"))
                self.description, self._rows = None, []

            def fetchone(self):
                return self._rows.pop(0) if self._rows else None

            def fetchall(self):
                rows, self._rows = self._rows, []
                return rows

            def fetchmany(self, n=1):
                rows, self._rows = self._rows[:n], self._rows[n:]
                return rows

            def nextset(self):
                return False

            def setinputsizes(self, *a):
                pass

            def close(self):
                pass

        class Connection:
            def cursor(self):
                return Cursor()

            def commit(self):
                recorder.calls.append(("COMMIT", (), "commit"))

            def rollback(self):
                pass

            def close(self):
                pass

            def getinfo(self, _):
                return "16.00.1000"

            def add_output_converter(self, *a):
                pass

        def connect(*args, **kwargs):
            recorder.connect_kwargs.append(kwargs)
            return Connection()

        errors = {n: type(n, (Exception,), {}) for n in ("Error", "DatabaseError")}
        self.module = types.SimpleNamespace(
            paramstyle="qmark",
            apilevel="2.0",
            threadsafety=1,
            version="5.2.0",
            connect=connect,
            Cursor=Cursor,
            pooling=True,
            Warning=Warning,
            InterfaceError=errors["Error"],
            OperationalError=errors["Error"],
            ProgrammingError=errors["Error"],
            IntegrityError=errors["Error"],
            DataError=errors["Error"],
            NotSupportedError=errors["Error"],
            InternalError=errors["Error"],
            **errors,
            SQL_DBMS_VER=18,
            SQL_DRIVER_NAME=6,
            SQL_WVARCHAR=-9,
            SQL_VARCHAR=12,
            SQL_VARBINARY=-3,
            SQL_BINARY=-2,
            BINARY=bytes,
            Binary=bytes,
        )

    def answer(self, sql):
        if "SERVERPROPERTY" in sql:
            return _desc("v"), [("16.0.1000.6",)]
        if "schema_name()" in sql:
            return _desc("s"), [("dbo",)]
        if "sys.system_views" in sql:
            return _desc("name"), [("dm_exec_sessions",)]
        if "TRANSACTION_ISOLATION_LEVEL" in sql:
            return _desc("level"), [("READ COMMITTED",)]
        for pattern, description, rows in self.script:
            if re.search(pattern, sql):
                return description, list(rows)
        return _desc("x"), [(None,)]

    def cdc_calls(self):
        return [(sql, params) for sql, params, kind in self.calls if "cdc" in sql.lower()]


def database(recorder, url=URL, **kwargs):
    db = AzureSqlLabelsDatabase(url=url, **kwargs)
    db._engine = sa.create_engine(url, module=recorder.module)
    return db


def test_min_and_max_lsn_come_from_the_cdc_functions_with_the_capture_instance_bound():
    rec = Recorder([(r"fn_cdc_get_min_lsn", _desc("min", "max"), [(MIN.upper(), MAX.upper())])])
    bounds = database(rec).lsn_bounds()
    assert (bounds.min_lsn, bounds.max_lsn) == (MIN, MAX)
    [(sql, params)] = rec.cdc_calls()
    assert sql == (
        "SELECT LOWER(CONVERT(char(20), sys.fn_cdc_get_min_lsn(?), 2)), "
        "LOWER(CONVERT(char(20), sys.fn_cdc_get_max_lsn(), 2))"
    )
    assert params == ("dbo_labels",)


def test_the_sensor_query_asks_only_for_the_max_lsn():
    rec = Recorder([(r"fn_cdc_get_max_lsn", _desc("max"), [(MAX,)])])
    assert database(rec).max_lsn() == MAX
    assert rec.cdc_calls() == [("SELECT LOWER(CONVERT(char(20), sys.fn_cdc_get_max_lsn(), 2))", ())]


def test_no_capture_instance_is_a_clear_error():
    rec = Recorder([(r"fn_cdc_get_min_lsn", _desc("min", "max"), [("0" * 20, MAX)])])
    with pytest.raises(
        CdcNotEnabledError, match=r"capture instance.*MLASSETS_LABELS_CAPTURE_INSTANCE"
    ):
        database(rec).lsn_bounds()


def test_changes_are_read_with_fn_cdc_get_all_changes_and_binary_lsn_parameters():
    change_rows = [
        (
            "0000002a000000200004",
            "0000002a000000200002",
            2,
            "s1",
            4,
            "ana",
            datetime(2024, 1, 2, 3, 4, 5, 600000),
        ),
        (
            "0000002a000000300004",
            "0000002a000000300002",
            3,
            "s1",
            4,
            "ana",
            datetime(2024, 1, 2, 3, 4, 5, 600000),
        ),
        (
            "0000002a000000300004",
            "0000002a000000300002",
            4,
            "s1",
            9,
            "bo",
            datetime(2024, 1, 2, 3, 5, 0),
        ),
        (
            "0000002a000000400004",
            "0000002a000000400002",
            1,
            "s2",
            None,
            None,
            datetime(2024, 1, 2, 3, 6, 0),
        ),
    ]
    description = _desc(
        "start_lsn", "seqval", "operation", "sample_id", "label", "labeler", "updated_at"
    )
    rec = Recorder([(r"fn_cdc_get_all_changes", description, change_rows)])
    db = database(rec, capture_instance="dbo_labels_v2", fetch_rows=3)
    chunks = list(db.read_changes(MIN, MAX))
    [(sql, params)] = rec.cdc_calls()
    assert sql == (
        "SELECT LOWER(CONVERT(char(20), __$start_lsn, 2)) AS start_lsn, "
        "LOWER(CONVERT(char(20), __$seqval, 2)) AS seqval, "
        "__$operation AS operation, sample_id, label, labeler, updated_at "
        "FROM cdc.fn_cdc_get_all_changes_dbo_labels_v2(?, ?, N'all') "
        "ORDER BY __$start_lsn, __$seqval, __$operation"
    )
    # LSNs are bound as binary(10) values, in order @from_lsn, @to_lsn.
    assert params == (bytes.fromhex(MIN), bytes.fromhex(MAX))
    assert all(len(p) == 10 for p in params)
    assert [c.num_rows for c in chunks] == [3, 1]
    table = pa.concat_tables(chunks)
    assert table.schema.equals(CHANGE_SCHEMA)
    assert table["operation"].to_pylist() == [2, 3, 4, 1]
    assert table["label"].to_pylist() == [4, 4, 9, None]
    assert str(table["updated_at"][2].as_py()) == "2024-01-02 03:05:00+00:00"  # naive = UTC


def test_a_capture_instance_that_is_not_an_identifier_is_refused_before_any_sql():
    rec = Recorder([])
    db = database(rec, capture_instance="x(0,0,'all'); DROP TABLE labels; --")
    with pytest.raises(ValueError, match="not a valid SQL identifier"):
        list(db.read_changes(MIN, MAX))
    assert rec.cdc_calls() == []


def test_cleanup_calls_the_cdc_cleanup_procedure_with_a_binary_low_water_mark():
    rec = Recorder([])
    database(rec).cleanup_changes(MAX)
    [(sql, params)] = rec.cdc_calls()
    assert sql == (
        "EXEC sys.sp_cdc_cleanup_change_table @capture_instance = ?, @low_water_mark = ?"
    )
    assert params == ("dbo_labels", bytes.fromhex(MAX))


def test_setup_creates_the_table_and_enables_cdc_on_the_database_and_the_table():
    rec = Recorder([])
    database(rec).ensure_schema()
    statements = [(sql, params) for sql, params, kind in rec.calls if kind == "execute"]
    ddl = [s for s in statements if "labels" in s[0] or "cdc" in s[0]]
    assert "CREATE TABLE dbo.labels (sample_id NVARCHAR(64) NOT NULL" in ddl[0][0]
    assert "label INT NULL" in ddl[0][0] and "updated_at DATETIME2(6)" in ddl[0][0]
    assert "EXEC sys.sp_cdc_enable_db" in ddl[1][0]
    assert "EXEC sys.sp_cdc_enable_table @source_schema = ?" in ddl[2][0]
    assert "@capture_instance = ?, @supports_net_changes = 0" in ddl[2][0]
    assert ddl[2][1] == ("dbo", "dbo_labels")


def test_writes_are_parameterized_executemany_against_dbo_labels():
    rec = Recorder([])
    db = database(rec)
    db.update_labels(
        pa.table(
            {
                "sample_id": ["s1", "s2"],
                "label": pa.array([3, 4], pa.int32()),
                "labeler": ["a", "b"],
            }
        )
    )
    db.delete_labels(["s3"])
    writes = [
        (sql, params)
        for sql, params, kind in rec.calls
        if kind in ("executemany", "execute") and "labels" in sql
    ]
    update_sql, update_params = writes[0]
    assert update_sql == (
        "UPDATE dbo.labels SET label = ?, labeler = ?, updated_at = ? WHERE sample_id = ?"
    )
    assert [p[0] for p in update_params] == [3, 4] and [p[3] for p in update_params] == ["s1", "s2"]
    assert writes[1][0] == "DELETE FROM dbo.labels WHERE sample_id = ?"
    assert "s3" in repr(writes[1][1])


def test_without_credentials_in_the_url_connections_carry_an_entra_id_token(monkeypatch):
    import azure.identity

    class Credential:
        def get_token(self, scope):
            assert scope == "https://database.windows.net/.default"
            return types.SimpleNamespace(token="tok")

    monkeypatch.setattr(azure.identity, "DefaultAzureCredential", Credential)
    rec = Recorder([(r"fn_cdc_get_max_lsn", _desc("max"), [(MAX,)])])
    url = "mssql+pyodbc://@srv.database.windows.net/labels?driver=ODBC+Driver+18+for+SQL+Server"
    db = AzureSqlLabelsDatabase(url=url)
    real_create = sa.create_engine
    monkeypatch.setattr(
        sa, "create_engine", lambda u, **kw: real_create(u, module=rec.module, **kw)
    )
    assert db.max_lsn() == MAX
    token = rec.connect_kwargs[0]["attrs_before"][1256]
    assert token == len("tok".encode("utf-16-le")).to_bytes(4, "little") + "tok".encode("utf-16-le")


def test_the_lsn_helpers_round_trip_sql_server_lsns():
    assert lsn_hex(int(MAX, 16)) == MAX
    with pytest.raises(ValueError):
        lsn_hex(1 << 80)
