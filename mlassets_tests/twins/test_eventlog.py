"""The embedded Event Hubs twin keeps Event Hubs' semantics and survives restarts."""

import multiprocessing
from datetime import UTC, datetime

import pytest

from mlassets.twins.eventlog import EventLog, partition_for_key


@pytest.fixture
def log(tmp_path):
    return EventLog(tmp_path / "hub.db", partition_count=4)


def test_a_new_hub_has_empty_partitions(log):
    assert log.partition_ids() == ["0", "1", "2", "3"]
    props = log.partition_properties("2")
    assert props.is_empty
    assert props.beginning_sequence_number == 0
    assert props.last_enqueued_sequence_number == -1
    assert props.last_enqueued_time is None


def test_sequence_numbers_start_at_zero_and_are_consecutive_per_partition(log):
    acks = log.append([b"a", b"b", b"c"], partition_id="1")
    acks += log.append([b"d"], partition_id="1")
    assert acks == [("1", 0), ("1", 1), ("1", 2), ("1", 3)]
    assert log.partition_properties("1").last_enqueued_sequence_number == 3
    assert log.partition_properties("0").is_empty


def test_offsets_are_byte_positions_within_the_partition(log):
    log.append([b"abc", b"de", b"f"], partition_id="0")
    table = log.read("0", 0, 2)
    assert table["offset"].to_pylist() == [0, 3, 5]
    assert log.partition_properties("0").last_enqueued_offset == 5


def test_the_same_partition_key_always_lands_in_the_same_partition(log):
    acks = log.append([b"x"] * 20, partition_keys=["scanner-07"] * 20)
    assert {p for p, _ in acks} == {str(partition_for_key("scanner-07", 4))}


def test_partition_key_hashing_is_stable_across_processes():
    # crc32-based, unlike hash(): these values must never change or keys would move.
    assert partition_for_key("scanner-01", 4) == partition_for_key("scanner-01", 4)
    assert [partition_for_key(f"scanner-{i:02d}", 4) for i in range(1, 9)] == [
        partition_for_key(f"scanner-{i:02d}", 4) for i in range(1, 9)
    ]
    assert len({partition_for_key(f"k{i}", 4) for i in range(100)}) == 4


def test_events_without_key_are_spread_round_robin(log):
    acks = log.append([b"e"] * 8)
    assert sorted(p for p, _ in acks) == ["0", "0", "1", "1", "2", "2", "3", "3"]


def test_read_returns_the_inclusive_range_with_enqueued_time_key_and_properties(log):
    before = datetime.now(UTC)
    log.append([b"a", b"b", b"c", b"d"], partition_keys=["k"] * 4, properties={"schema": "v1"})
    p = str(partition_for_key("k", 4))
    table = log.read(p, 1, 2)
    assert table["sequence_number"].to_pylist() == [1, 2]
    assert table["body"].to_pylist() == [b"b", b"c"]
    assert table["partition_key"].to_pylist() == ["k", "k"]
    assert table["properties"].to_pylist() == ['{"schema": "v1"}'] * 2
    assert table["partition_id"].to_pylist() == [p, p]
    assert table["enqueued_time"][0].as_py() >= before.replace(microsecond=0)


def test_reading_past_the_end_returns_what_exists(log):
    log.append([b"a", b"b"], partition_id="3")
    assert log.read("3", 1, 100)["sequence_number"].to_pylist() == [1]
    assert log.read("3", 5, 9).num_rows == 0


def test_the_log_survives_a_restart(tmp_path):
    first = EventLog(tmp_path / "hub.db", partition_count=2)
    first.append([b"one", b"two"], partition_id="0")
    first.checkpoint("$Default", "0", 1)
    first.close()
    again = EventLog(tmp_path / "hub.db", partition_count=2)
    assert again.read("0", 0, 1)["body"].to_pylist() == [b"one", b"two"]
    assert again.append([b"three"], partition_id="0") == [("0", 2)]
    assert again.checkpoints("$Default") == {"0": 1}


def test_the_partition_count_of_an_existing_hub_cannot_change(tmp_path):
    EventLog(tmp_path / "hub.db", partition_count=2)
    with pytest.raises(ValueError, match="created with 2 partitions"):
        EventLog(tmp_path / "hub.db", partition_count=4)


def test_a_failed_append_leaves_no_partial_batch(log):
    with pytest.raises(KeyError):
        log.append([b"a", b"b"], partition_id="9")
    assert all(log.partition_properties(p).is_empty for p in log.partition_ids())


def test_retention_moves_the_beginning_sequence_number(log):
    log.append([b"a", b"b", b"c", b"d"], partition_id="0")
    assert log.expire_before("0", 2) == 2
    props = log.partition_properties("0")
    assert props.beginning_sequence_number == 2
    assert props.last_enqueued_sequence_number == 3
    assert log.read("0", 0, 3)["sequence_number"].to_pylist() == [2, 3]


def _append_from_another_process(path: str, n: int) -> None:
    log = EventLog(path, partition_count=1)
    for _ in range(n):
        log.append([b"x"], partition_id="0")


def test_concurrent_writers_in_other_processes_never_reuse_a_sequence_number(tmp_path):
    path = str(tmp_path / "hub.db")
    EventLog(path, partition_count=1)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_from_another_process, args=(path, 50)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    table = EventLog(path, partition_count=1).read("0", 0, 1000)
    assert table["sequence_number"].to_pylist() == list(range(100))


@pytest.mark.parametrize("bad", [None, "text", {"sample_id": "s"}, 42])
def test_a_body_that_is_not_bytes_is_refused_at_publish_and_nothing_is_written(log, bad):
    with pytest.raises(TypeError, match=rf"event body 1 is {type(bad).__name__}, not bytes"):
        log.append([b"fine", bad, b"also fine"])
    assert all(log.partition_properties(p).is_empty for p in log.partition_ids())


def test_bytes_like_bodies_are_stored_as_their_bytes(log):
    log.append([bytearray(b"ab"), memoryview(b"cd"), b""], partition_id="0")
    assert log.read("0", 0, 2)["body"].to_pylist() == [b"ab", b"cd", b""]
