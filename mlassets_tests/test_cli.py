"""`mlassets` on the command line: simulate, inspect the hub, run the demo."""

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


def test_in_azure_mode_a_missing_setting_is_named(monkeypatch):
    monkeypatch.setenv("MLASSETS_DEPLOYMENT", "azure")
    result = mlassets("hub", check=False)
    assert result.returncode == 2
    assert result.stderr.startswith("error: MLASSETS_DEPLOYMENT=azure needs")
    assert "MLASSETS_LAKE_URL" in result.stderr
    assert "Traceback" not in result.stderr
