"""From the project root, `dagster job launch -j ingest_events` queues a run that a real
`dagster-daemon` runs to SUCCESS, alongside the Event Hubs sensor, without duplicating rows."""

import os
import subprocess
import sys
import time

import dagster as dg
import pyarrow.dataset as ds
import pytest

from mlassets.settings import PROJECT_ROOT

BIN = os.path.dirname(sys.executable)


@pytest.mark.slow
def test_a_launched_ingest_job_is_run_by_the_daemon_to_success(daemon, dagster_home, data_dir):
    env = {**os.environ}
    subprocess.run(
        [f"{BIN}/mlassets", "simulate", "events", "--count", "800", "--malformed", "8"],
        cwd=PROJECT_ROOT,
        check=True,
        env=env,
        capture_output=True,
    )
    launch = subprocess.run(
        [f"{BIN}/dagster", "job", "launch", "-j", "ingest_events"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert launch.returncode == 0, launch.stderr[-2000:]

    with dg.DagsterInstance.get() as instance:
        launched = [r for r in instance.get_runs() if "dagster/sensor_name" not in r.tags]
        assert len(launched) == 1
        run_id = launched[0].run_id
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            run = instance.get_run_by_id(run_id)
            if run.is_finished:
                break
            time.sleep(1)
        log = (dagster_home / "daemon.log").read_text(errors="replace")[-3000:]
        assert run.status == dg.DagsterRunStatus.SUCCESS, log
        # The sensor's runs may land some ranges first: together they land each event once.
        while any(not r.is_finished for r in instance.get_runs()):
            assert time.monotonic() < deadline, log
            time.sleep(1)

    landed = ds.dataset(data_dir / "lake" / "landed" / "events").to_table()
    assert landed.num_rows == 792
    assert len(set(landed["sample_id"].to_pylist())) == 792
