"""A landing killed at any point and run again lands every event exactly once, and what the
killed write left behind is never read and is swept.

The kills are real: a landing in its own process SIGKILLs itself at a chosen point (see
`landing_process.py`), so no `finally`, no atexit and no Dagster cleanup runs, as with the
OOM killer or a lost node; and a `dagster asset materialize` is killed from outside on a timer.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import dagster as dg
import pytest

from mlassets.defs.ingestion.assets import landed_events, raw_events
from mlassets.defs.resources import local_resources
from mlassets.lib.landing import TEMP_GRACE_SECONDS, landed_ranges, listed_files, live_files
from mlassets.simulate import make_events
from mlassets_tests.processes import stop_group
from mlassets_tests.reliability.ledger import (
    age_temp_files,
    landing_command,
    ledger,
    release_together,
    temp_files,
)

EVENTS = 3000
MALFORMED = 30  # so that most ranges have a quarantine file as well
RANGE = 250  # 12 ranges over 4 partitions: kills land between and inside them


@pytest.fixture
def resources(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MLASSETS_MAX_RANGE_EVENTS", str(RANGE))
    # No pools: what is tested is the write path, not the scheduling courtesy.
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    (tmp_path / "dagster_home").mkdir()
    res = local_resources()
    events = make_events(EVENTS, MALFORMED, seed=3)
    res["event_hub"].publish(events.bodies, events.partition_keys)
    return res


def land_again(resources) -> None:
    result = dg.materialize(
        [raw_events, landed_events], resources=resources, selection=[landed_events]
    )
    assert result.success


def assert_exactly_once_and_nothing_stray(resources) -> None:
    hub, lake = resources["event_hub"], resources["lake"]
    book = ledger(hub, lake)
    assert book.exactly_once, str(book)
    assert book.published == EVENTS
    # A crash's temporary files are swept once older than the grace period (a younger one
    # may be a concurrent write in flight): let that time pass, and land once more.
    age_temp_files(lake, TEMP_GRACE_SECONDS + 1)
    land_again(resources)
    assert temp_files(lake) == []
    assert ledger(hub, lake).exactly_once


@pytest.mark.parametrize(
    ("point", "after"),
    [
        ("mid-claim", 3),
        ("after-claim", 5),
        ("mid-write", 2),
        ("after-quarantine", 4),
        ("after-landed", 6),
        ("after-merge", 0),
        ("after-merge", 2),
        ("before-metadata", 0),
    ],
)
def test_a_landing_killed_at_any_point_then_run_again_lands_every_event_once(
    resources, point, after
):
    lake = resources["lake"]
    killed = subprocess.run(
        landing_command("--kill-at", point, "--after", str(after), "in-process"),
        env=os.environ.copy(),
        capture_output=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-3000:]
    crashed = ledger(resources["event_hub"], lake)
    assert not crashed.duplicated
    # It died with work left to do, except in the compaction after landing, or after that.
    assert bool(crashed.missing) == (point not in ("after-merge", "before-metadata"))
    if point == "after-merge":  # a merged file and the files it merged: each read once
        assert len(listed_files(lake)) > len(live_files(lake))
    if point in ("mid-claim", "mid-write"):
        assert temp_files(lake)  # the half-written file is there...
    listed = [str(r) for rs in landed_ranges(lake).values() for r in rs]
    assert not any(".tmp" in r for r in listed)  # ...and no reader sees it
    land_again(resources)
    assert_exactly_once_and_nothing_stray(resources)


def test_a_cli_landing_killed_on_a_timer_twice_then_run_again_lands_every_event_once(
    resources, tmp_path
):
    for delay in (0.05, 0.25):  # wherever that falls: the invariant holds at any moment
        go = tmp_path / f"go-{delay}"
        proc = subprocess.Popen(
            landing_command(
                "--go",
                str(go),
                "cli",
                "asset",
                "materialize",
                "-m",
                "mlassets.definitions",
                "--select",
                "landed_events",
            ),
            env=os.environ.copy(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            release_together(go, [proc])
            time.sleep(delay)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            stop_group(proc)
        assert not ledger(resources["event_hub"], resources["lake"]).duplicated
    land_again(resources)
    assert_exactly_once_and_nothing_stray(resources)
