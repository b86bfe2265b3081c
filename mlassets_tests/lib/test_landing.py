"""Landing ranges exactly once: the file name is the range, the lake listing is the record."""

import pytest

from mlassets.lib.landing import (
    EventRange,
    backlog,
    gaps,
    land_range,
    landed_ranges,
    resolve,
    split,
)
from mlassets.roles.storage import LakeStorage
from mlassets.simulate import make_events
from mlassets.twins.eventhub import EmbeddedEventHub


@pytest.fixture
def hub(tmp_path):
    return EmbeddedEventHub(path=str(tmp_path / "hub.db"), partitions=2)


@pytest.fixture
def lake(tmp_path):
    return LakeStorage(url=f"file://{tmp_path}/lake")


def publish(hub, n, malformed=0, seed=0):
    events = make_events(n, malformed, seed)
    hub.publish(events.bodies, partition_keys=["same-key"] * n)
    return events


def only_partition(hub) -> str:
    return next(p.partition_id for p in hub.all_partition_properties() if not p.is_empty)


def test_a_range_lands_as_one_file_named_by_the_range(hub, lake):
    publish(hub, 100)
    p = only_partition(hub)
    result = land_range(hub, lake, EventRange(p, 0, 49))
    assert result.landed_rows == 50
    assert lake.glob("landed/events/*/*.parquet") == [
        f"landed/events/partition={p}/seq=0-49.parquet"
    ]
    assert lake.read_parquet(f"landed/events/partition={p}/seq=0-49.parquet")[
        "sequence_number"
    ].to_pylist() == list(range(50))


def test_landing_the_same_range_twice_rewrites_the_same_file_and_duplicates_nothing(hub, lake):
    publish(hub, 100, malformed=5)
    p = only_partition(hub)
    first = land_range(hub, lake, EventRange(p, 0, 99))
    again = land_range(hub, lake, EventRange(p, 0, 99), rewrite=True)
    files = lake.glob("landed/events/*/*.parquet")
    assert len(files) == 1
    table = lake.read_parquet(files)
    assert table.num_rows == first.landed_rows == again.landed_rows == 95
    assert lake.read_parquet(lake.glob("quarantine/events/*/*.parquet")).num_rows == 5


def test_quarantined_events_keep_body_and_reason_beside_the_landed_file(hub, lake):
    publish(hub, 40, malformed=4, seed=1)
    p = only_partition(hub)
    land_range(hub, lake, EventRange(p, 0, 39))
    q = lake.read_parquet(f"quarantine/events/partition={p}/seq=0-39.parquet")
    assert q.num_rows == 4
    assert all(q["reason"].to_pylist()) and all(q["body"].to_pylist())


def test_a_range_of_only_bad_events_still_writes_an_empty_landed_file(hub, lake):
    hub.publish([b"junk"] * 3, partition_keys=["k"] * 3)
    p = only_partition(hub)
    result = land_range(hub, lake, EventRange(p, 0, 2))
    assert result.landed_rows == 0 and result.quarantined_rows == 3
    assert landed_ranges(lake)[p] == [EventRange(p, 0, 2)]  # the watermark moved


def test_expired_events_are_counted_not_waited_for(hub, lake):
    publish(hub, 20)
    p = only_partition(hub)
    hub.log.expire_before(p, 5)
    result = land_range(hub, lake, EventRange(p, 0, 19))
    assert result.read_events == 15 and result.expired == 5


def test_resolve_rewrites_an_exact_range_and_clips_an_overlapping_one():
    landed = [EventRange("0", 0, 99), EventRange("0", 100, 199)]
    assert resolve(EventRange("0", 100, 199), landed) == EventRange("0", 100, 199)
    assert resolve(EventRange("0", 150, 300), landed) == EventRange("0", 200, 300)
    assert resolve(EventRange("0", 0, 150), landed) is None
    assert resolve(EventRange("1", 0, 9), []) == EventRange("1", 0, 9)


def test_split_caps_range_size():
    assert split("0", 0, 24, 10) == [
        EventRange("0", 0, 9),
        EventRange("0", 10, 19),
        EventRange("0", 20, 24),
    ]
    assert split("0", 5, 4, 10) == []


def test_backlog_starts_after_each_partitions_watermark(hub, lake):
    publish(hub, 30)
    p = only_partition(hub)
    land_range(hub, lake, EventRange(p, 0, 9))
    assert backlog(hub, landed_ranges(lake), max_size=8) == [
        EventRange(p, 10, 17),
        EventRange(p, 18, 25),
        EventRange(p, 26, 29),
    ]


def test_gaps_between_landed_ranges_are_reported():
    assert gaps([EventRange("0", 0, 9), EventRange("0", 20, 29), EventRange("0", 10, 14)]) == [
        (15, 19)
    ]


def test_ranges_must_be_well_formed():
    with pytest.raises(ValueError):
        EventRange("0", 5, 4)
