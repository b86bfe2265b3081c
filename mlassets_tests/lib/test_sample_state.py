"""The sample state (mlassets.lib.sample_state): built step by step from what is new, it reads
the same rows, splits and version as a full rebuild of the same inputs."""

from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mlassets.lib import cdc, sample_state, state_merges
from mlassets.lib.datasets import SPLITS, build_dataset, read_split, write_manifest
from mlassets.lib.events import LANDED_SCHEMA
from mlassets.lib.landing import EventRange
from mlassets.roles.storage import LakeStorage

T0 = datetime(2026, 11, 1, tzinfo=UTC)


class Hub:
    """Lands events as the landing does: consecutive ranges per partition."""

    def __init__(self, lake: LakeStorage) -> None:
        self.lake = lake
        self.next = {"0": 0, "1": 0}
        self.all: list[pa.Table] = []

    def land(self, ids: list[str], partition: str = "0", minute: int = 0, value=None) -> None:
        first = self.next[partition]
        n = len(ids)
        rng = np.random.default_rng(first + 7 * n)
        pixels = (
            [[value] * 64 for _ in ids]
            if value is not None
            else rng.integers(0, 17, size=(n, 64)).tolist()
        )
        table = pa.table(
            {
                "sample_id": ids,
                "pixels": pixels,
                "source": ["s"] * n,
                "captured_at": [T0 + timedelta(minutes=minute, seconds=i) for i in range(n)],
                "partition_id": [partition] * n,
                "sequence_number": list(range(first, first + n)),
                "offset": [0] * n,
                "enqueued_time": [T0] * n,
            },
            schema=LANDED_SCHEMA,
        )
        rng_ = EventRange(partition, first, first + n - 1)
        self.lake.write_parquet(rng_.landed_path, table)
        self.next[partition] += n
        self.all.append(table)

    def events(self) -> pa.Table:
        return pa.concat_tables(self.all)


def labels_of(db) -> pa.Table:
    return db.read_labels().select(["sample_id", "label"])


def sync(db, lake) -> None:
    cdc.capture_changes(db, lake)
    if cdc.labels_state(lake) is None:
        cdc.load_snapshot(lake, cdc.snapshot_labels(db, lake))
    cdc.apply_pending(lake)


def label(db, pairs: dict[str, int], update: bool = False) -> None:
    table = pa.table(
        {
            "sample_id": pa.array(list(pairs), pa.string()),
            "label": pa.array(list(pairs.values()), pa.int32()),
            "labeler": pa.array(["ana"] * len(pairs), pa.string()),
        }
    )
    (db.update_labels if update else db.insert_labels)(table)


def rows_of(lake, version) -> dict[str, list[tuple]]:
    out = {}
    for split in SPLITS:
        t = read_split(lake, version, split)
        t = t.take(pc.sort_indices(t["sample_id"]))
        out[split] = list(zip(t["sample_id"].to_pylist(), t["label"].to_pylist(), strict=True))
    return out


def assert_equals_full_rebuild(lake, db, hub, state) -> None:
    full = build_dataset(hub.events(), labels_of(db))
    assert state.version == full.version
    write_manifest(lake, state)
    got = rows_of(lake, state.version)
    for split in SPLITS:
        part = full.split(split)
        want = sorted(zip(part["sample_id"].to_pylist(), part["label"].to_pylist(), strict=True))
        assert got[split] == want
    assert state.histogram == full.class_histogram()


def ids(prefix: str, n: int) -> list[str]:
    return [f"{prefix}-{i:05d}" for i in range(n)]


def test_steps_equal_a_full_rebuild_through_new_events_corrections_and_retractions(db, lake):
    hub = Hub(lake)
    first = ids("a", 400)
    hub.land(first[:250])
    hub.land(first[250:], partition="1")
    label(db, {s: i % 10 for i, s in enumerate(first[:300])})
    sync(db, lake)
    one = sample_state.advance(lake)
    assert one.live_rows == 400 and one.labelled_rows == 300
    assert_equals_full_rebuild(lake, db, hub, one)

    # +new events, a re-sent sample (newer capture), corrections, retractions, new labels for
    # samples that landed unlabelled.
    more = ids("b", 50)
    hub.land(more, minute=10)
    hub.land([first[3]], partition="1", minute=20, value=9)
    label(db, {s: 1 for s in more})
    label(db, {first[0]: 9, first[1]: 8}, update=True)
    db.delete_labels([first[2], first[5]])
    label(db, {first[350]: 4})
    sync(db, lake)
    two = sample_state.advance(lake)
    assert two.stats["events"] == 51
    assert two.stats["inserted"] == 51 and two.stats["superseded"] == 1
    assert_equals_full_rebuild(lake, db, hub, two)
    # Only the new rows were written: one segment more, the old one untouched.
    assert [s.id for s in two.segments[:-1]] == [s.id for s in one.segments]


def test_an_older_event_than_the_current_one_changes_nothing(db, lake):
    hub = Hub(lake)
    hub.land(["x", "y"], minute=30)
    label(db, {"x": 1, "y": 2})
    sync(db, lake)
    before = sample_state.advance(lake)
    hub.land(["x"], partition="1", minute=1, value=3)  # captured earlier, landed later
    after = sample_state.advance(lake)
    assert after.version == before.version and after.stats["inserted"] == 0
    assert_equals_full_rebuild(lake, db, hub, after)


def test_nothing_new_makes_no_new_state(db, lake):
    hub = Hub(lake)
    hub.land(["x"])
    label(db, {"x": 1})
    sync(db, lake)
    state = sample_state.advance(lake)
    assert sample_state.advance(lake).number == state.number


def test_a_range_still_being_landed_is_waited_for_not_skipped(db, lake):
    hub = Hub(lake)
    hub.land(ids("a", 10))
    label(db, {s: 1 for s in ids("a", 10) + ids("c", 10)})
    sync(db, lake)
    # 10..19 is claimed but not landed yet; 20..29 landed first.
    table = hub.events()
    late = table.set_column(0, "sample_id", pa.array(ids("c", 10))).set_column(
        5, "sequence_number", pa.array(range(20, 30), pa.int64())
    )
    lake.write_parquet(EventRange("0", 20, 29).landed_path, late)
    state = sample_state.advance(lake)
    assert state.landed == {"0": 9} and state.live_rows == 10
    middle = table.set_column(0, "sample_id", pa.array(ids("m", 10))).set_column(
        5, "sequence_number", pa.array(range(10, 20), pa.int64())
    )
    lake.write_parquet(EventRange("0", 10, 19).landed_path, middle)
    state = sample_state.advance(lake)
    assert state.landed == {"0": 29} and state.live_rows == 30


def test_small_steps_and_compaction_keep_the_version_and_the_rows(db, lake, monkeypatch):
    monkeypatch.setattr(state_merges, "MAX_SEGMENTS", 3)
    hub = Hub(lake)
    for k in range(5):
        batch = ids(f"p{k}", 60)
        hub.land(batch, minute=k)
        label(db, {s: (i + k) % 10 for i, s in enumerate(batch)})
    label(db, {ids("p0", 60)[0]: 7}, update=True)
    sync(db, lake)
    state = sample_state.advance(lake, step_events=60)  # one landed file per step
    assert any(s.compacted_from for s in state.segments)
    assert len(state.segments) <= 3
    assert_equals_full_rebuild(lake, db, hub, state)


def test_a_lost_race_builds_on_the_winner(db, lake):
    hub = Hub(lake)
    hub.land(ids("a", 20))
    label(db, {s: 2 for s in ids("a", 20)})
    sync(db, lake)
    base = sample_state.latest(lake) or sample_state.empty_state()
    mine = sample_state.step(lake, base)
    assert sample_state.advance(lake).number == 0  # another build created state 0 first
    assert not sample_state._commit(lake, mine)
    hub.land(ids("b", 5))
    state = sample_state.advance(lake)
    assert state.number == 1 and state.live_rows == 25


def test_many_small_steps_keep_few_segments_and_rewrite_each_row_a_few_times(db, lake):
    hub = Hub(lake)
    for k in range(32):
        hub.land(ids(f"t{k}", 10), minute=k)
        label(db, {s: k % 10 for s in ids(f"t{k}", 10)})
    sync(db, lake)
    state = sample_state.advance(lake, step_events=10)  # one tick's file per step
    merged = [
        sample_state.read_state(lake, n).stats.get("merged_rows", 0)
        for n in range(state.number + 1)
    ]
    assert len(state.segments) <= 6  # O(log n): 32 steps of 10 rows
    assert sum(merged) <= 320 * 5  # each row rewritten at most log2(32) times
    assert_equals_full_rebuild(lake, db, hub, state)


def test_imported_drops_are_taken_in_once_each(db, lake):
    from mlassets.lib.incoming import INCOMING_PARTITION
    from mlassets.lib.layout import LANDED_PREFIX

    hub = Hub(lake)
    hub.land(ids("h", 5))
    drop = hub.events().set_column(0, "sample_id", pa.array(ids("d", 5)))
    drop = drop.set_column(4, "partition_id", pa.array([INCOMING_PARTITION] * 5))
    drop = drop.cast(LANDED_SCHEMA)
    lake.write_parquet(f"{LANDED_PREFIX}/partition={INCOMING_PARTITION}/drop=a.parquet", drop)
    label(db, {s: 3 for s in ids("h", 5) + ids("d", 5)})
    sync(db, lake)
    state = sample_state.advance(lake)
    assert state.drops == ["drop=a.parquet"] and state.labelled_rows == 10
    assert sample_state.advance(lake).number == state.number  # not taken in twice
    hub.all.append(drop)
    assert_equals_full_rebuild(lake, db, hub, state)


def test_merges_stop_at_the_segment_cap_and_many_overrides_rewrite_a_segment(db, lake, monkeypatch):
    monkeypatch.setattr(state_merges, "MAX_SEGMENT_ROWS", 100)
    monkeypatch.setattr(state_merges, "MIN_COMPACT_OVERRIDES", 1)
    hub = Hub(lake)
    for k in range(16):
        hub.land(ids(f"t{k}", 10), minute=k)
        label(db, {s: k % 10 for s in ids(f"t{k}", 10)})
    sync(db, lake)
    state = sample_state.advance(lake, step_events=10)
    assert max(s.rows for s in state.segments) <= 100
    label(db, {s: 9 for s in ids("t0", 10) + ids("t1", 10)}, update=True)  # 20 of 160: 12%
    monkeypatch.setattr(state_merges, "MAX_OVERRIDE_SHARE", 0.1)
    sync(db, lake)
    state = sample_state.advance(lake)
    assert state.compaction and state.override_rows < 16  # the segment that held them, rewritten
    assert_equals_full_rebuild(lake, db, hub, state)
