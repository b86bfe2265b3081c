"""Pools limit steps wherever their run comes from: with a real `dagster-daemon`, a landing run
launched from the CLI and the Event Hubs sensor's landing run never execute their landing
steps at the same time, and an in-process run (`execute_in_process`, `dagster asset
materialize`, the demo) waits for the pool the same way.

To make the two runs meet for certain, the landing pool starts closed (limit 0) until both
runs are waiting on it, and is then opened with the project's one slot: the second landing
step starts only once the first has finished.
"""

import os
import subprocess
import sys
import threading
import time

import dagster as dg
import pyarrow.dataset as ds
import pytest

from mlassets.defs.resources import local_resources
from mlassets.settings import PROJECT_ROOT
from mlassets.simulate import make_events

BIN = os.path.dirname(sys.executable)
BLOCKED = "Step blocked by limit for pool landing"
STEP = "landed_events"


def set_pool_limit(pool: str, limit: int) -> None:
    """What an operator does: `dagster instance concurrency set` (or the UI's Concurrency)."""
    done = subprocess.run(
        [f"{BIN}/dagster", "instance", "concurrency", "set", pool, str(limit)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]


def publish(count: int) -> int:
    """Events on one hub partition, so the sensor asks for exactly one landing run."""
    events = make_events(count, seed=3)
    local_resources()["event_hub"].publish(events.bodies, ["one-key"] * count)
    return count


def step_events(instance: dg.DagsterInstance, run_id: str) -> dict[str, float]:
    """When the landing step of a run was blocked, started and succeeded (first of each)."""
    seen: dict[str, float] = {}
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None or event.step_key != STEP:
            continue
        if event.event_type == dg.DagsterEventType.ENGINE_EVENT and entry.message == BLOCKED:
            seen.setdefault("blocked", entry.timestamp)
        elif event.event_type == dg.DagsterEventType.STEP_START:
            seen.setdefault("start", entry.timestamp)
        elif event.event_type == dg.DagsterEventType.STEP_SUCCESS:
            seen.setdefault("success", entry.timestamp)
    return seen


def wait_for(what, deadline: float, log=lambda: ""):
    while not (result := what()):
        assert time.monotonic() < deadline, log()
        time.sleep(1)
    return result


def test_the_project_instance_limits_steps_by_pool(instance):
    config = instance.get_concurrency_config().pool_config
    assert config.pool_granularity.value == "op"
    assert config.default_pool_limit == 1
    assert not instance.get_settings("run_queue").get("tag_concurrency_limits")


def test_an_in_process_landing_waits_for_its_pool_too(instance, data_dir):
    from mlassets.definitions import defs

    publish(20)
    set_pool_limit("landing", 0)
    results = []
    run = threading.Thread(
        target=lambda: results.append(
            dg.materialize(
                [*defs.assets, *defs.asset_checks],
                selection=[STEP],
                resources=local_resources(),
                instance=instance,
            )
        )
    )
    run.start()
    try:
        deadline = time.monotonic() + 60

        def blocked():
            runs = instance.get_runs(limit=1)
            return runs and step_events(instance, runs[0].run_id).get("blocked")

        wait_for(blocked, deadline)
        (waiting,) = instance.get_runs(limit=1)
        assert "start" not in step_events(instance, waiting.run_id)  # held at the pool
    finally:
        set_pool_limit("landing", 1)
        run.join(timeout=120)
    (result,) = results
    assert result.success
    seen = step_events(instance, result.run_id)
    assert seen["blocked"] <= seen["start"] < seen["success"]


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_a_cli_landing_and_the_sensors_landing_never_land_at_the_same_time(
    dagster_home, data_dir, request
):
    published = publish(40)
    set_pool_limit("landing", 0)  # closed until both runs wait on it
    request.getfixturevalue("daemon")  # the Event Hubs sensor ticks as the daemon starts
    launch = subprocess.run(
        [f"{BIN}/dagster", "job", "launch", "-j", "ingest_events"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert launch.returncode == 0, launch.stderr[-2000:]

    def log() -> str:
        return (dagster_home / "daemon.log").read_text(errors="replace")[-3000:]

    with dg.DagsterInstance.get() as instance:
        deadline = time.monotonic() + 300

        def landing_runs():
            runs = instance.get_runs(filters=dg.RunsFilter(job_name="ingest_events"))
            by_sensor = [r for r in runs if r.tags.get("dagster/sensor_name") == "eventhub_sensor"]
            return runs if len(runs) == 2 and len(by_sensor) == 1 else None

        runs = wait_for(landing_runs, deadline, log)
        # Both runs are in flight, both landing steps held at the closed pool.
        wait_for(
            lambda: all("blocked" in step_events(instance, r.run_id) for r in runs), deadline, log
        )
        set_pool_limit("landing", 1)
        wait_for(
            lambda: all(instance.get_run_by_id(r.run_id).is_finished for r in runs), deadline, log
        )
        assert all(
            instance.get_run_by_id(r.run_id).status == dg.DagsterRunStatus.SUCCESS for r in runs
        ), log()
        first, second = sorted(
            (step_events(instance, r.run_id) for r in runs), key=lambda s: s["start"]
        )
    assert first["success"] <= second["start"]  # one landing step at a time
    landed = ds.dataset(data_dir / "lake" / "landed" / "events").to_table(columns=["sample_id"])
    assert landed.num_rows == published  # and, between them, every event landed once
