"""Landing ranges exactly once: files named by their range, a chain of claims in the lake."""

import json
import os
import threading
import time

import pytest

from mlassets.lib.landing import (
    EventRange,
    checkpoint_path,
    claim_path,
    gaps,
    land,
    land_range,
    landed_paths,
    landed_ranges,
    live_files,
    read_chain,
    split,
    try_claim,
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


def landed_files(lake) -> list[str]:
    return lake.glob("landed/events/*/*.parquet")


def landed_sequence_numbers(lake) -> list[int]:
    return sorted(lake.read_parquet(landed_files(lake))["sequence_number"].to_pylist())


def test_a_range_lands_as_one_file_named_by_the_range(hub, lake):
    publish(hub, 100)
    p = only_partition(hub)
    result = land_range(hub, lake, EventRange(p, 0, 49))
    assert result.landed_rows == 50
    assert landed_files(lake) == [f"landed/events/partition={p}/seq=0-49.parquet"]
    assert landed_sequence_numbers(lake) == list(range(50))


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
    assert landed_ranges(lake)[p] == [EventRange(p, 0, 2)]  # the claim is done


def test_expired_events_are_counted_not_waited_for(hub, lake):
    publish(hub, 20)
    p = only_partition(hub)
    hub.log.expire_before(p, 5)
    result = land_range(hub, lake, EventRange(p, 0, 19))
    assert result.read_events == 15 and result.expired == 5


def test_landing_everything_claims_a_chain_of_capped_ranges_from_zero(hub, lake):
    publish(hub, 30)
    p = only_partition(hub)
    results = land(hub, lake, max_size=8)
    assert [r.range for r in results] == split(p, 0, 29, 8)
    assert [c.range for c in read_chain(lake, p).claims] == split(p, 0, 29, 8)
    assert all(c.done for c in read_chain(lake, p).claims)
    assert landed_sequence_numbers(lake) == list(range(30))


def test_landing_again_lands_nothing_and_new_events_land_after_the_chain(hub, lake):
    publish(hub, 30)
    p = only_partition(hub)
    land(hub, lake, max_size=100)
    assert land(hub, lake, max_size=100) == []
    publish(hub, 5, seed=1)
    assert [r.range for r in land(hub, lake, max_size=100)] == [EventRange(p, 30, 34)]
    assert landed_sequence_numbers(lake) == list(range(35))


def test_requests_with_different_boundaries_never_land_an_event_twice(hub, lake):
    publish(hub, 100)
    p = only_partition(hub)
    land(hub, lake, [EventRange(p, 0, 49)], max_size=1000)
    land(hub, lake, [EventRange(p, 0, 99)], max_size=1000)  # the sensor's and a person's
    land(hub, lake, [EventRange(p, 20, 60)], max_size=1000)
    assert landed_files(lake) == [
        f"landed/events/partition={p}/seq=0-49.parquet",
        f"landed/events/partition={p}/seq=50-99.parquet",
    ]
    assert landed_sequence_numbers(lake) == list(range(100))


def test_a_duplicate_request_of_a_landed_range_writes_nothing(hub, lake):
    publish(hub, 100)
    p = only_partition(hub)
    land(hub, lake, [EventRange(p, 0, 9)], max_size=1000)
    mtime = os.stat(lake.path(f"landed/events/partition={p}/seq=0-9.parquet")).st_mtime_ns
    assert land(hub, lake, [EventRange(p, 0, 9)], max_size=1000) == []
    # Never rewritten: a rewrite after the hub's retention expired part of it would lose rows.
    assert os.stat(lake.path(f"landed/events/partition={p}/seq=0-9.parquet")).st_mtime_ns == mtime


def test_a_request_past_the_chain_brings_the_unclaimed_stretch_before_it(hub, lake):
    publish(hub, 100)
    p = only_partition(hub)
    results = land(hub, lake, [EventRange(p, 60, 79)], max_size=1000)
    assert [r.range for r in results] == [EventRange(p, 0, 59), EventRange(p, 60, 79)]
    assert landed_sequence_numbers(lake) == list(range(80))


def test_claims_never_reach_past_the_last_published_event(hub, lake):
    publish(hub, 10)
    p = only_partition(hub)
    land(hub, lake, [EventRange(p, 0, 99)], max_size=1000)
    assert read_chain(lake, p).head == 9
    publish(hub, 10, seed=1)
    land(hub, lake, [EventRange(p, 0, 99)], max_size=1000)
    assert landed_sequence_numbers(lake) == list(range(20))


def test_events_expired_before_the_first_landing_cost_one_claim_and_are_counted(hub, lake):
    publish(hub, 50)
    p = only_partition(hub)
    hub.log.expire_before(p, 40)
    results = land(hub, lake, max_size=5)
    assert [r.range for r in results] == [EventRange(p, 0, 44), EventRange(p, 45, 49)]
    assert [r.expired for r in results] == [40, 0]
    assert landed_sequence_numbers(lake) == list(range(40, 50))


def test_a_run_that_loses_a_claim_moves_on_after_the_winners_range(hub, lake):
    publish(hub, 100)
    p = only_partition(hub)
    assert try_claim(lake, EventRange(p, 0, 29), "other run") == (EventRange(p, 0, 29), True)
    assert try_claim(lake, EventRange(p, 0, 99), "this run") == (EventRange(p, 0, 29), False)
    record = json.loads(lake.read_bytes(claim_path(p, 0)))
    assert (record["last"], record["owner"]) == (29, "other run")  # the first claim stands


def test_a_claim_whose_retried_upload_was_refused_as_taken_is_still_ours(lake, monkeypatch):
    create = LakeStorage.create_exclusive

    def first_attempt_went_through(self, relative, data):
        create(self, relative, data)
        return create(self, relative, data)  # the retry: refused, the name is taken

    monkeypatch.setattr(LakeStorage, "create_exclusive", first_attempt_went_through)
    assert try_claim(lake, EventRange("0", 0, 9), "this run") == (EventRange("0", 0, 9), True)


def test_a_claim_left_without_its_file_is_finished_by_the_next_run(hub, lake):
    publish(hub, 100, malformed=10)
    p = only_partition(hub)
    try_claim(lake, EventRange(p, 0, 29), "a run that was killed")
    results = land(hub, lake, max_size=1000)
    assert [(r.range, r.rewrite) for r in results] == [
        (EventRange(p, 0, 29), True),
        (EventRange(p, 30, 99), False),
    ]
    assert landed_sequence_numbers(lake) == [
        s for s in range(100) if s not in set(quarantined_sequence_numbers(lake))
    ]
    assert len(quarantined_sequence_numbers(lake)) == 10


def quarantined_sequence_numbers(lake) -> list[int]:
    return lake.read_parquet(lake.glob("quarantine/events/*/*.parquet"))[
        "sequence_number"
    ].to_pylist()


def test_the_quarantine_is_written_before_the_landed_file_that_marks_a_claim_done(
    hub, lake, monkeypatch
):
    publish(hub, 50, malformed=5)
    original = LakeStorage.write_parquet

    def fail_on_landed(self, relative, table, **kwargs):
        if relative.startswith("landed/"):
            raise OSError("disk full")
        return original(self, relative, table, **kwargs)

    monkeypatch.setattr(LakeStorage, "write_parquet", fail_on_landed)
    with pytest.raises(OSError):
        land(hub, lake, max_size=1000)
    assert lake.glob("quarantine/events/*/*.parquet") and not landed_files(lake)
    monkeypatch.undo()
    land(hub, lake, max_size=1000)
    assert len(landed_sequence_numbers(lake)) + len(quarantined_sequence_numbers(lake)) == 50


def test_a_lake_landed_before_claims_is_adopted_not_landed_again(hub, lake):
    publish(hub, 100)
    p = only_partition(hub)
    land_range(hub, lake, EventRange(p, 0, 39))  # written as an earlier version did
    land_range(hub, lake, EventRange(p, 0, 19))  # even its overlaps stay as they are
    results = land(hub, lake, max_size=1000)
    assert [r.range for r in results] == [EventRange(p, 40, 99)]
    assert read_chain(lake, p).head == 99


def test_stray_temporary_files_are_never_listed_and_swept_once_old(hub, lake):
    publish(hub, 20)
    p = only_partition(hub)
    folder = lake.path(f"landed/events/partition={p}")
    os.makedirs(folder)
    old = f"{folder}/seq=0-19.parquet.{'a' * 32}.tmp"
    young = f"{folder}/seq=0-19.parquet.{'b' * 32}.tmp"
    for path in (old, young):
        with open(path, "wb") as f:
            f.write(b"PAR1 half a file")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    assert landed_ranges(lake) == {}
    land(hub, lake, max_size=1000)
    assert not os.path.exists(old)
    assert os.path.exists(young)  # perhaps a concurrent write still in flight
    assert landed_files(lake) == [f"landed/events/partition={p}/seq=0-19.parquet"]


def test_many_runs_at_once_with_different_boundaries_land_each_event_once(hub, lake):
    publish(hub, 400)
    p = only_partition(hub)
    requests = [None, [EventRange(p, 0, 399)], [EventRange(p, 100, 250)], None, None]
    sizes = [7, 50, 13, 100, 31]
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            land(hub, LakeStorage(url=lake.url), requests[i], max_size=sizes[i])
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert landed_sequence_numbers(lake) == list(range(400))
    ranges = landed_ranges(lake)[p]
    assert gaps(ranges) == [] and sum(r.size for r in ranges) == 400


def test_a_request_for_a_partition_the_hub_lacks_is_refused_by_name(hub, lake):
    with pytest.raises(ValueError, match="partition '7' is not one of the hub's"):
        land(hub, lake, [EventRange("7", 0, 9)], max_size=10)


def test_split_caps_range_size():
    assert split("0", 0, 24, 10) == [
        EventRange("0", 0, 9),
        EventRange("0", 10, 19),
        EventRange("0", 20, 24),
    ]
    assert split("0", 5, 4, 10) == []


def test_gaps_between_landed_ranges_are_reported():
    assert gaps([EventRange("0", 0, 9), EventRange("0", 20, 29), EventRange("0", 10, 14)]) == [
        (15, 19)
    ]


def test_ranges_must_be_well_formed():
    with pytest.raises(ValueError):
        EventRange("0", 5, 4)


# -- with compaction: live files, checkpoints -------------------------------------------------


def test_a_file_inside_another_is_neither_listed_nor_read(hub, lake):
    publish(hub, 20)
    p = only_partition(hub)
    land(hub, lake, max_size=10)
    merged = lake.read_parquet([EventRange(p, 0, 9).landed_path, EventRange(p, 10, 19).landed_path])
    lake.write_parquet(EventRange(p, 0, 19).landed_path, merged)  # a merge, not deleted yet
    assert landed_ranges(lake)[p] == [EventRange(p, 0, 19)]
    assert live_files(lake, p) == [EventRange(p, 0, 19)]
    assert landed_paths(lake) == [EventRange(p, 0, 19).landed_path]
    drop = "landed/events/partition=incoming/drop=a.parquet"
    lake.write_parquet(drop, merged.slice(0, 1))
    assert landed_paths(lake) == [EventRange(p, 0, 19).landed_path, drop]
    assert read_chain(lake, p).unfinished == [] and read_chain(lake, p).head == 19


def test_a_claim_inside_a_merged_file_is_done_though_its_own_file_is_gone(hub, lake):
    publish(hub, 20)
    p = only_partition(hub)
    land(hub, lake, max_size=5)
    table = lake.read_parquet([r.landed_path for r in split(p, 0, 19, 5)])
    lake.write_parquet(EventRange(p, 0, 19).landed_path, table)
    for r in split(p, 0, 19, 5):
        lake.delete(r.landed_path)
    chain = read_chain(lake, p)
    assert chain.head == 19 and chain.unfinished == []
    assert land(hub, lake, max_size=5) == []


def test_the_chain_reads_on_from_its_newest_checkpoint(hub, lake):
    publish(hub, 30)
    p = only_partition(hub)
    land(hub, lake, [EventRange(p, 0, 19)], max_size=10)
    lake.write_bytes(checkpoint_path(p, 9), b"{}")
    lake.write_bytes(checkpoint_path(p, 19), b"{}")
    lake.delete(claim_path(p, 0))
    lake.delete(claim_path(p, 10))
    chain = read_chain(lake, p)
    assert (chain.base, chain.head, chain.claims) == (19, 19, [])
    assert [r.range for r in land(hub, lake, max_size=100)] == [EventRange(p, 20, 29)]
    assert landed_sequence_numbers(lake) == list(range(30))


def test_a_write_a_compaction_deleted_at_once_counts_as_done_only_if_merged(hub, lake, monkeypatch):
    publish(hub, 10)
    p = only_partition(hub)
    land(hub, lake, max_size=10)
    lake.write_parquet(EventRange(p, 0, 19).landed_path, lake.read_parquet(landed_files(lake)))
    size = LakeStorage.size

    def deleted_right_after(self, relative):
        os.remove(self.path(relative))  # a compaction removed it as soon as it was in place
        raise FileNotFoundError(relative)

    monkeypatch.setattr(LakeStorage, "size", deleted_right_after)
    assert land_range(hub, lake, EventRange(p, 0, 9), rewrite=True).bytes_written == 0
    lake.delete(EventRange(p, 0, 19).landed_path)
    with pytest.raises(FileNotFoundError):  # no merged file holds it: a real failure
        land_range(hub, lake, EventRange(p, 0, 9), rewrite=True)
    monkeypatch.setattr(LakeStorage, "size", size)
