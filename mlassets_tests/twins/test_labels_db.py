"""The embedded labels database: trigger-based change capture shaped like SQL Server CDC."""

import sqlite3
from datetime import UTC, datetime

import pyarrow as pa
import pytest

from mlassets.defs.resources import labels_database_class
from mlassets.roles.labels_db import (
    CHANGE_SCHEMA,
    LABEL_SCHEMA,
    AzureSqlLabelsDatabase,
    lsn_hex,
    next_lsn,
)
from mlassets.twins.labels_db import SqliteLabelsDatabase

ALL = ("0" * 20, lsn_hex(2**62))


@pytest.fixture
def db(tmp_path):
    database = SqliteLabelsDatabase(url=f"sqlite:///{tmp_path}/labels.db")
    yield database
    database.dispose()


def rows(sample_ids, labels, labeler="ana"):
    return pa.table(
        {
            "sample_id": pa.array(sample_ids, pa.string()),
            "label": pa.array(labels, pa.int32()),
            "labeler": pa.array([labeler] * len(sample_ids), pa.string()),
        }
    )


def changes(db, first=ALL[0], last=ALL[1]):
    return pa.concat_tables([CHANGE_SCHEMA.empty_table(), *db.read_changes(first, last)])


def ops(db, first=ALL[0], last=ALL[1]):
    t = changes(db, first, last)
    return list(
        zip(
            t["operation"].to_pylist(),
            t["sample_id"].to_pylist(),
            t["label"].to_pylist(),
            strict=True,
        )
    )


def test_a_fresh_database_has_a_capture_instance_and_no_changes(db):
    bounds = db.lsn_bounds()
    assert bounds.min_lsn == lsn_hex(1)
    assert bounds.max_lsn is None
    assert db.max_lsn() is None
    assert db.read_labels().num_rows == 0


def test_insert_update_delete_are_captured_with_sql_server_operation_codes(db):
    db.insert_labels(rows(["a", "b"], [1, 2]))
    db.update_labels(rows(["a"], [7], labeler="reviewer"))
    db.delete_labels(["b"])
    assert ops(db) == [
        (2, "a", 1),
        (2, "b", 2),
        (3, "a", 1),  # update before-image
        (4, "a", 7),  # update after-image
        (1, "b", 2),  # delete carries the deleted row
    ]
    t = changes(db)
    assert t.schema.equals(CHANGE_SCHEMA)
    # An update's two images share one LSN and seqval, as in SQL Server.
    assert t["start_lsn"][2] == t["start_lsn"][3] and t["seqval"][2] == t["seqval"][3]
    lsns = t["start_lsn"].to_pylist()
    assert lsns == sorted(lsns) and len(set(lsns)) == 4
    assert db.max_lsn() == lsns[-1] == lsn_hex(4)


def test_changes_made_by_any_client_are_captured(db, tmp_path):
    db.ensure_schema()
    with sqlite3.connect(tmp_path / "labels.db") as conn:  # not through the resource
        conn.execute("PRAGMA recursive_triggers=ON")
        conn.execute("INSERT INTO labels (sample_id, label, labeler) VALUES ('x', 3, 'cli')")
        conn.execute(
            "INSERT OR REPLACE INTO labels (sample_id, label, labeler) VALUES ('x', 5, 'cli')"
        )
        conn.execute("UPDATE labels SET sample_id = 'y' WHERE sample_id = 'x'")
    assert [(o, k, v) for o, k, v in ops(db)] == [
        (2, "x", 3),
        (1, "x", 3),  # REPLACE deletes the conflicting row first
        (2, "x", 5),
        (1, "x", 5),  # a key update is a delete of the old key ...
        (2, "y", 5),  # ... and an insert of the new one
    ]


def test_reading_a_range_is_inclusive_on_both_ends(db):
    db.insert_labels(rows(["a", "b", "c", "d"], [1, 2, 3, 4]))
    assert [k for _, k, _ in ops(db, lsn_hex(2), lsn_hex(3))] == ["b", "c"]
    assert [k for _, k, _ in ops(db, next_lsn(lsn_hex(3)), lsn_hex(4))] == ["d"]


def test_reading_in_chunks_returns_every_change_in_order(tmp_path):
    db = SqliteLabelsDatabase(url=f"sqlite:///{tmp_path}/labels.db", fetch_rows=7)
    db.insert_labels(rows([f"s{i:03d}" for i in range(50)], [i % 10 for i in range(50)]))
    chunks = list(db.read_changes(*ALL))
    assert [c.num_rows for c in chunks] == [7] * 7 + [1]
    assert pa.concat_tables(chunks)["sample_id"].to_pylist() == [f"s{i:03d}" for i in range(50)]


def test_cleanup_forgets_old_changes_and_moves_the_minimum_lsn(db):
    db.insert_labels(rows(["a", "b", "c"], [1, 2, 3]))
    db.cleanup_changes(lsn_hex(3))
    assert db.lsn_bounds().min_lsn == lsn_hex(3)
    assert [k for _, k, _ in ops(db)] == ["c"]
    assert db.change_rows() == 1


def test_lsns_and_changes_survive_a_restart(tmp_path):
    url = f"sqlite:///{tmp_path}/labels.db"
    first = SqliteLabelsDatabase(url=url)
    first.insert_labels(rows(["a"], [1]))
    first.dispose()
    again = SqliteLabelsDatabase(url=url)
    again.insert_labels(rows(["b"], [2]))
    assert again.max_lsn() == lsn_hex(2)
    assert [k for _, k, _ in ops(again)] == ["a", "b"]


def test_invalid_labels_are_stored_as_given_for_the_checks_to_find(db):
    db.insert_labels(rows(["a", "b"], [11, None]))
    assert sorted(db.read_labels()["label"].to_pylist(), key=str) == [11, None]


def test_timestamps_come_back_as_utc_microseconds(db):
    when = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    db.insert_labels(
        rows(["a"], [1]).append_column(
            "updated_at", pa.array([when], LABEL_SCHEMA.field("updated_at").type)
        )
    )
    db.insert_labels(rows(["b"], [2]))  # defaults to now
    table = db.read_labels()
    assert table.schema.equals(LABEL_SCHEMA, check_metadata=False)
    got = dict(zip(table["sample_id"].to_pylist(), table["updated_at"].to_pylist(), strict=True))
    assert got["a"] == when
    assert abs((got["b"] - datetime.now(UTC)).total_seconds()) < 60


def test_the_url_picks_the_implementation_and_the_password_never_shows(tmp_path):
    assert labels_database_class(f"sqlite:///{tmp_path}/x.db") is SqliteLabelsDatabase
    url = "mssql+pyodbc://user:TOPSECRET@srv.database.windows.net/labels?driver=ODBC+Driver+18+for+SQL+Server"
    assert labels_database_class(url) is AzureSqlLabelsDatabase
    assert "TOPSECRET" not in AzureSqlLabelsDatabase(url=url).display_url
    with pytest.raises(ValueError, match="unsupported database"):
        labels_database_class("postgresql://h/db")


def test_local_deployment_keeps_the_labels_database_under_the_data_dir(data_dir):
    from mlassets.defs.resources import local_resources

    db = local_resources()["labels_db"]
    assert isinstance(db, SqliteLabelsDatabase)
    assert db.url == f"sqlite:///{data_dir}/labels.db"


def test_azure_reads_the_labels_url_as_a_secret_env_var(monkeypatch, all_azure_settings):
    from mlassets import settings
    from mlassets.defs.resources import build_resources

    all_azure_settings("MLASSETS_LABELS_DB_URL")
    with pytest.raises(settings.MissingSettingError, match="MLASSETS_LABELS_DB_URL"):
        build_resources()
    url = "mssql+pyodbc://u:TOPSECRET@srv.database.windows.net/labels?driver=ODBC+Driver+18+for+SQL+Server"
    monkeypatch.setenv("MLASSETS_LABELS_DB_URL", url)
    monkeypatch.setenv("MLASSETS_LABELS_CAPTURE_INSTANCE", "dbo_labels_v2")
    db = build_resources()["labels_db"]
    assert isinstance(db, AzureSqlLabelsDatabase)
    assert "TOPSECRET" not in repr(db._get_non_default_public_field_values())
    assert "TOPSECRET" not in repr(db)
    resolved = db.process_config_and_initialize()
    assert resolved.url == url and resolved.capture_instance == "dbo_labels_v2"
