"""Capture and apply (mlassets.lib.cdc): the labels Delta table stays equal to the source."""

from itertools import pairwise

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from mlassets.lib import cdc
from mlassets.roles.labels_db import (
    CHANGE_SCHEMA,
    LABEL_COLUMNS,
    LsnBounds,
    lsn_hex,
)
from mlassets.roles.storage import LakeStorage
from mlassets.twins.labels_db import SqliteLabelsDatabase


@pytest.fixture
def db(tmp_path):
    database = SqliteLabelsDatabase(url=f"sqlite:///{tmp_path}/labels.db")
    yield database
    database.dispose()


@pytest.fixture
def lake(tmp_path):
    return LakeStorage(url=f"file://{tmp_path}/lake")


def rows(sample_ids, labels, labeler="ana"):
    return pa.table(
        {
            "sample_id": pa.array(sample_ids, pa.string()),
            "label": pa.array(labels, pa.int32()),
            "labeler": pa.array([labeler] * len(sample_ids), pa.string()),
        }
    )


def sync(db, lake):
    """What `sync_labels` does: capture, then load (first time) or apply."""
    captured = cdc.capture_changes(db, lake)
    if cdc.labels_state(lake) is None:
        cdc.load_snapshot(lake, cdc.snapshot_labels(db, lake))
    return captured, cdc.apply_pending(lake)


def by_key(table):
    table = table.select(list(LABEL_COLUMNS))
    return table.take(pc.sort_indices(table["sample_id"])).to_pylist()


def assert_equal_to_source(db, lake):
    assert by_key(cdc.read_labels_table(lake)) == by_key(db.read_labels())


def seeded(db, lake, ids=("a", "b", "c"), labels=(1, 2, 3)):
    db.insert_labels(rows(list(ids), list(labels)))
    sync(db, lake)
    return cdc.labels_state(lake)


def test_insert_update_delete_of_one_key_inside_one_batch_leaves_no_row(db, lake):
    seeded(db, lake)
    db.insert_labels(rows(["k"], [4]))
    db.update_labels(rows(["k"], [5]))
    db.delete_labels(["k"])
    captured, _ = sync(db, lake)
    assert len(captured.batches) == 1
    assert captured.operations() == {
        "insert": 1,
        "update_before": 1,
        "update_after": 1,
        "delete": 1,
    }
    assert "k" not in cdc.read_labels_table(lake)["sample_id"].to_pylist()
    assert_equal_to_source(db, lake)


def test_several_updates_of_one_key_the_last_wins(db, lake):
    seeded(db, lake)
    for label in (7, 8, 9, 0):
        db.update_labels(rows(["a"], [label], labeler=f"l{label}"))
    _, applied = sync(db, lake)
    assert applied.updated == 1 and applied.keys_changed == 1
    table = cdc.read_labels_table(lake)
    row = table.filter(pc.equal(table["sample_id"], "a")).to_pylist()[0]
    assert (row["label"], row["labeler"]) == (0, "l0")
    assert_equal_to_source(db, lake)


def test_delete_then_reinsert_brings_the_key_back_with_its_new_row(db, lake):
    seeded(db, lake)
    db.delete_labels(["b"])
    db.insert_labels(rows(["b"], [6], labeler="bo"))
    sync(db, lake)
    table = cdc.read_labels_table(lake)
    assert table.filter(pc.equal(table["sample_id"], "b")).to_pylist()[0]["label"] == 6
    assert_equal_to_source(db, lake)


def test_a_delete_in_a_later_batch_removes_the_row(db, lake):
    seeded(db, lake)
    db.delete_labels(["c"])
    _, applied = sync(db, lake)
    assert applied.deleted == 1
    assert sorted(cdc.read_labels_table(lake)["sample_id"].to_pylist()) == ["a", "b"]


def test_applying_a_batch_twice_changes_nothing(db, lake):
    seeded(db, lake)
    db.update_labels(rows(["a"], [9]))
    db.insert_labels(rows(["d"], [4]))
    captured, first = sync(db, lake)
    assert first.committed
    before = by_key(cdc.read_labels_table(lake))
    again = cdc.apply_pending(lake)
    assert not again.committed and again.changes_read == 0
    # Even fed the same batch explicitly, the applied LSN in the commit stops it.
    state = cdc.labels_state(lake)
    batch = lake.read_parquet(captured.batches[0].range.path)
    assert cdc.merge_changes(lake, batch, state.applied_lsn, state.applied_lsn, None) is None
    assert cdc.labels_state(lake).version == state.version
    assert by_key(cdc.read_labels_table(lake)) == before


def test_the_applied_lsn_is_recorded_in_the_delta_commit(db, lake):
    seeded(db, lake)
    db.update_labels(rows(["a"], [9]))
    captured, _ = sync(db, lake)
    commit = lake.delta_table(cdc.LABELS_PATH).history(1)[0]
    assert commit[cdc.APPLIED_LSN_KEY] == captured.batches[-1].range.last == db.max_lsn()
    assert commit[cdc.OPERATION_KEY] == "cdc"


def test_the_watermark_continues_across_runs_with_no_gap_and_no_overlap(db, lake):
    seeded(db, lake)
    for round_ in range(3):
        db.insert_labels(rows([f"n{round_}-{i}" for i in range(5)], [i for i in range(5)]))
        db.update_labels(rows(["a"], [round_]))
        captured, _ = sync(db, lake)
        assert captured.watermark_source == "last batch"
        assert captured.batches[0].range.first == lsn_hex(int(captured.watermark, 16) + 1)
    ranges = cdc.batch_ranges(lake)
    assert len(ranges) == 4
    assert all(int(b.first, 16) == int(a.last, 16) + 1 for a, b in pairwise(ranges))
    assert cdc.chain(ranges) == cdc.Chain([], [])
    assert_equal_to_source(db, lake)


def test_changes_committed_after_the_max_lsn_was_read_wait_for_the_next_run(db, lake):
    seeded(db, lake)
    db.insert_labels(rows(["late"], [1]))
    bounds = db.lsn_bounds()
    db.insert_labels(rows(["later"], [2]))  # after the max LSN this run reads

    class Frozen(SqliteLabelsDatabase):  # the bounds as they were when the run read them
        def lsn_bounds(self):
            return bounds

    frozen = Frozen(url=db.url)
    captured = cdc.capture_changes(frozen, lake)
    assert captured.batches[-1].range.last == bounds.max_lsn
    cdc.apply_pending(lake)
    assert "later" not in cdc.read_labels_table(lake)["sample_id"].to_pylist()
    assert db.lsn_bounds().max_lsn > bounds.max_lsn
    sync(db, lake)
    assert_equal_to_source(db, lake)


def test_a_large_backlog_is_cut_into_batches_at_lsn_boundaries(db, lake):
    seeded(db, lake)
    db.update_labels(rows(["a", "b", "c"] * 10, list(range(30))))  # 60 change rows, 30 LSNs
    captured = cdc.capture_changes(
        SqliteLabelsDatabase(url=db.url, fetch_rows=7), lake, max_batch_rows=16
    )
    assert len(captured.batches) > 3
    for batch in captured.batches:
        table = lake.read_parquet(batch.range.path)
        # An update's before- and after-image never end up in different batches.
        assert table.num_rows % 2 == 0
        assert table["start_lsn"][0].as_py() >= batch.range.first
        assert table["start_lsn"][-1].as_py() <= batch.range.last
    assert cdc.chain(cdc.batch_ranges(lake), after=None).gaps == []
    cdc.apply_pending(lake)
    assert_equal_to_source(db, lake)


def test_an_expired_watermark_fails_with_a_message_that_says_how_to_resnapshot(db, lake):
    seeded(db, lake)
    db.insert_labels(rows(["d", "e"], [4, 5]))
    db.cleanup_changes(db.max_lsn())  # retention removed the change to "d"
    with pytest.raises(cdc.RetentionExpiredError, match=r"[Rr]e-snapshot") as err:
        cdc.capture_changes(db, lake)
    assert "mlassets labels resnapshot" in str(err.value)
    assert "README" in str(err.value)


def test_a_resnapshot_rebuilds_the_table_and_capture_resumes_after_it(db, lake):
    seeded(db, lake)
    db.insert_labels(rows(["d", "e"], [4, 5]))
    db.cleanup_changes(db.max_lsn())
    snap = cdc.snapshot_labels(db, lake)
    version = cdc.load_snapshot(lake, snap, replace=True)
    state = cdc.labels_state(lake)
    assert state.version == version and state.applied_lsn == state.snapshot_lsn == snap.lsn
    assert_equal_to_source(db, lake)
    db.update_labels(rows(["e"], [0]))
    captured, _ = sync(db, lake)
    assert captured.watermark_source == "labels table"
    assert_equal_to_source(db, lake)
    live, links, after = cdc.live_chain(lake)
    assert after == snap.lsn and links.gaps == [] and len(live) == 1
    # The batches before the snapshot do not chain to the new one, and need not.
    assert cdc.chain(cdc.batch_ranges(lake)).gaps


def test_a_missing_batch_stops_the_apply_instead_of_losing_changes(db, lake):
    seeded(db, lake)
    db.insert_labels(rows(["d"], [4]))
    cdc.capture_changes(db, lake)
    db.insert_labels(rows(["e"], [5]))
    cdc.capture_changes(db, lake)
    lake.delete(cdc.batch_ranges(lake)[-2].path)
    with pytest.raises(cdc.BatchGapError, match="missing"):
        cdc.apply_pending(lake)


def test_overlapping_batches_are_reported_and_applied_once(db, lake):
    seeded(db, lake)
    db.insert_labels(rows(["d", "e"], [4, 5]))
    wm = cdc.labels_state(lake).applied_lsn
    all_changes = pa.concat_tables(list(db.read_changes(cdc.ZERO_LSN, db.max_lsn())))
    later = all_changes.filter(pc.greater(all_changes["start_lsn"], wm))
    # Two captures that raced: the same changes under two names.
    first = cdc.LsnRange(lsn_hex(int(wm, 16) + 1), db.max_lsn())
    lake.write_parquet(first.path, later)
    lake.write_parquet(cdc.LsnRange(first.first, first.last[:-1] + "f").path, later)
    applied = cdc.apply_pending(lake)
    assert applied.overlaps and applied.inserted == 2
    assert_equal_to_source(db, lake)


def test_collapse_keeps_the_last_change_per_key_and_drops_before_images():
    def change(lsn, op, key, label):
        return {
            "start_lsn": lsn_hex(lsn),
            "seqval": lsn_hex(lsn),
            "operation": op,
            "sample_id": key,
            "label": label,
            "labeler": None,
            "updated_at": None,
        }

    changes = pa.Table.from_pylist(
        [
            change(5, 4, "a", 3),  # out of order on purpose
            change(2, 2, "a", 1),
            change(5, 3, "a", 1),
            change(3, 2, "b", 7),
            change(6, 1, "b", 7),
            change(1, 2, "c", 0),  # at or below the applied LSN: ignored
        ],
        schema=CHANGE_SCHEMA,
    )
    out = cdc.collapse(changes, after_lsn=lsn_hex(1))
    assert sorted((r["sample_id"], r["operation"], r["label"]) for r in out.to_pylist()) == [
        ("a", 4, 3),
        ("b", 1, 7),
    ]


class QuietSource:
    """A source whose max LSN moves for other tables (Azure SQL's is database-wide)."""

    def __init__(self, max_lsn):
        self.max = max_lsn

    def lsn_bounds(self):
        return LsnBounds(lsn_hex(1), lsn_hex(self.max))

    def read_changes(self, first, last):
        return iter([CHANGE_SCHEMA.empty_table()])


def test_quiet_ranges_are_captured_as_one_coalesced_empty_batch(lake):
    source = QuietSource(10)
    first = cdc.capture_changes(source, lake)
    assert [str(b.range) for b in first.batches] == [f"{lsn_hex(1)}-{lsn_hex(10)}"]
    source.max = 20
    second = cdc.capture_changes(source, lake)
    assert second.batches[0].coalesced
    assert [str(r) for r in cdc.batch_ranges(lake)] == [f"{lsn_hex(1)}-{lsn_hex(20)}"]
    # The watermark kept up, so retention moving the minimum to 21 is not an expiry.
    source.max = 30
    cdc.capture_changes(source, lake)
    assert cdc.capture_watermark(lake)[0] == lsn_hex(30)


def test_an_empty_source_loads_an_empty_table(db, lake):
    _, applied = sync(db, lake)
    assert cdc.read_labels_table(lake).num_rows == 0
    assert applied.applied_lsn == cdc.ZERO_LSN
    db.insert_labels(rows(["a"], [1]))
    sync(db, lake)
    assert_equal_to_source(db, lake)


@pytest.mark.azurite
def test_capture_and_apply_on_blob_storage(db, azurite, azurite_container):
    lake = LakeStorage(url=f"abfs://{azurite_container}/mlassets", connection_string=azurite)
    seeded(db, lake)
    db.update_labels(rows(["a"], [5]))
    db.delete_labels(["b"])
    db.insert_labels(rows(["z"], [9]))
    _, applied = sync(db, lake)
    assert (applied.inserted, applied.updated, applied.deleted) == (1, 1, 1)
    assert_equal_to_source(db, lake)
    assert not cdc.apply_pending(lake).committed


def _change_rows(lsns_ops_keys):
    return pa.Table.from_pylist(
        [
            {
                "start_lsn": lsn_hex(lsn),
                "seqval": lsn_hex(lsn),
                "operation": op,
                "sample_id": key,
                "label": lsn % 10,
                "labeler": "ana",
                "updated_at": None,
            }
            for lsn, op, key in lsns_ops_keys
        ],
        schema=CHANGE_SCHEMA,
    )


def test_a_batch_is_written_in_change_order_and_says_so_in_its_footer(lake):
    import pyarrow.parquet as pq

    shuffled = _change_rows([(7, 4, "a"), (3, 2, "a"), (7, 3, "a"), (5, 2, "b")])
    rng = cdc.LsnRange(lsn_hex(3), lsn_hex(7))
    cdc.write_batch(lake, rng, shuffled)
    written = lake.read_parquet(rng.path)
    assert [(r["start_lsn"][-1], r["operation"]) for r in written.to_pylist()] == [
        ("3", 2),
        ("5", 2),
        ("7", 3),
        ("7", 4),
    ]
    meta = pq.ParquetFile(lake.path(rng.path)).metadata
    assert [c.column_index for c in meta.row_group(0).sorting_columns] == [0, 1, 2]


def test_declared_batches_are_read_without_lsn_columns_unless_some_rows_are_applied(db, lake):
    state = seeded(db, lake)  # a, b, c inserted at or below the applied LSN
    db.delete_labels(["b"])
    db.update_labels(rows(["a"], [9]))
    everything = pa.concat_tables(list(db.read_changes(cdc.ZERO_LSN, db.max_lsn())))
    later = everything.filter(pc.greater(everything["start_lsn"], state.applied_lsn))
    pending = cdc.LsnRange(cdc.next_lsn(state.applied_lsn), db.max_lsn())

    cdc.write_batch(lake, pending, later)
    changes, ordered = cdc._read_changes(lake, [pending], state.applied_lsn)
    assert ordered and "start_lsn" not in changes.column_names
    assert "seqval" not in changes.column_names

    # The same range, but holding changes the table already has (a capture re-run from
    # further back): the LSN is read, and those changes are not applied again.
    cdc.write_batch(lake, pending, everything)
    changes, ordered = cdc._read_changes(lake, [pending], state.applied_lsn)
    assert ordered and "start_lsn" in changes.column_names
    applied = cdc.apply_pending(lake)
    assert applied.keys_changed == 2  # a updated, b deleted; c's old insert skipped
    assert_equal_to_source(db, lake)


def test_batches_written_by_hand_are_checked_for_order_and_applied_the_same(db, lake):
    state = seeded(db, lake)
    db.update_labels(rows(["a"], [9]))
    db.update_labels(rows(["a"], [7]))
    later = pa.concat_tables(list(db.read_changes(cdc.next_lsn(state.applied_lsn), db.max_lsn())))
    reversed_rows = later.take(pa.array(range(later.num_rows - 1, -1, -1)))
    rng = cdc.LsnRange(cdc.next_lsn(state.applied_lsn), db.max_lsn())
    lake.write_parquet(rng.path, reversed_rows)  # no declared order, rows backwards
    changes, ordered = cdc._read_changes(lake, [rng], state.applied_lsn)
    assert not ordered and changes.num_rows == later.num_rows
    cdc.apply_pending(lake)
    assert_equal_to_source(db, lake)
