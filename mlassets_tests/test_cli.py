"""`mlassets` on the command line: simulate, inspect the hub, run the demo."""

import json
import os
import subprocess
import sys

import pyarrow.parquet as pq

from mlassets.settings import PROJECT_ROOT

BIN = os.path.dirname(sys.executable)


def mlassets(*args, check=True):
    result = subprocess.run(
        [f"{BIN}/mlassets", *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ),
    )
    if check:
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result


def test_simulate_events_publishes_to_the_hub_and_records_the_truth(data_dir):
    out = mlassets("simulate", "events", "--count", "300", "--malformed", "8").stdout
    assert "published 300 events" in out
    assert "2 bad_json, 2 wrong_pixel_count, 2 out_of_range, 2 missing_field" in out
    hub = mlassets("hub").stdout
    sequence_total = sum(int(line.split()[2]) + 1 for line in hub.splitlines()[2:])
    assert sequence_total == 300
    truth = pq.read_table(data_dir / "simulated" / "truth.parquet")
    assert truth.num_rows == 292 and set(truth["label"].to_pylist()) <= set(range(10))


def test_asking_for_more_malformed_than_events_is_a_clear_error(data_dir):
    result = mlassets("simulate", "events", "--count", "5", "--malformed", "9", check=False)
    assert result.returncode == 2
    assert "--malformed (9) cannot exceed --count (5)" in result.stderr


def test_the_demo_refuses_more_malformed_than_events_before_it_starts(data_dir):
    result = mlassets("demo", "--events", "5", "--malformed", "9", check=False)
    assert result.returncode == 2
    assert result.stderr == "error: --malformed (9) cannot exceed --events (5)\n"
    assert not (data_dir / "eventhub").exists()


def test_in_azure_mode_a_missing_setting_is_named(monkeypatch):
    monkeypatch.setenv("MLASSETS_DEPLOYMENT", "azure")
    result = mlassets("hub", check=False)
    assert result.returncode == 2
    assert result.stderr.startswith("error: MLASSETS_DEPLOYMENT=azure needs")
    assert "MLASSETS_LAKE_URL" in result.stderr
    assert "Traceback" not in result.stderr


def hub_events(data_dir) -> list[tuple[str, int, bytes]]:
    """(partition, sequence number, body) of every event on the embedded hub."""
    from mlassets.defs.resources import local_resources

    hub = local_resources()["event_hub"]
    out = []
    for p in hub.all_partition_properties():
        table = hub.read_range(p.partition_id, 0, p.last_enqueued_sequence_number)
        out += zip(
            table["partition_id"].to_pylist(),
            table["sequence_number"].to_pylist(),
            table["body"].to_pylist(),
            strict=True,
        )
    return out


def test_publish_sends_each_line_of_a_file_as_one_body_byte_for_byte(data_dir, tmp_path):
    lines = [b'{"sample_id": "a"}', b"null", b"", b"\xff\xfe not UTF-8", b"  spaced\t", b"\r"]
    capture = tmp_path / "capture.jsonl"
    # \r\n and \n both end a line; a last line without a terminator is still an event.
    capture.write_bytes(b"\r\n".join(lines[:3]) + b"\r\n" + b"\n".join(lines[3:]))
    out = mlassets("publish", str(capture)).stdout
    assert f"published 6 events from {capture} to 'digits'" in out
    assert sorted(body for _, _, body in hub_events(data_dir)) == sorted(lines)


def test_publish_with_a_partition_key_sends_every_line_to_its_partition(data_dir, tmp_path):
    capture = tmp_path / "capture.jsonl"
    capture.write_bytes(b"one\ntwo\nthree\n")
    mlassets("publish", str(capture), "--partition-key", "scanner-03")
    events = hub_events(data_dir)
    assert [body for _, _, body in events] == [b"one", b"two", b"three"]
    assert len({partition for partition, _, _ in events}) == 1
    state = json.loads(mlassets("hub", "--json").stdout)
    assert state["hub"] == "digits"
    by_id = {p["partition_id"]: p for p in state["partitions"]}
    assert sorted(by_id) == ["0", "1", "2", "3"]
    (partition, *_) = events[0]
    assert by_id[partition]["last_enqueued_sequence_number"] == 2
    assert by_id[partition]["beginning_sequence_number"] == 0
    assert [p["is_empty"] for i, p in by_id.items() if i != partition] == [True] * 3
    assert all(p["last_enqueued_sequence_number"] == -1 for i, p in by_id.items() if i != partition)


def test_publish_of_a_missing_file_is_one_clear_line(data_dir, tmp_path):
    result = mlassets("publish", str(tmp_path / "nope.jsonl"), check=False)
    assert result.returncode == 2
    assert "No such file or directory" in result.stderr
    assert "Traceback" not in result.stderr
