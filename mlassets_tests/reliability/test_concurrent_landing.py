"""Landings at the same time, through different paths and with different boundaries, land
every published event exactly once, on a local lake and on Blob Storage (Azurite); each
compacts after landing (`landed_events`), so merges run beside the other landings too.

Each landing runs in a process of its own with a Dagster instance of its own (no pools, no
run queue, nothing shared but the hub and the lake: the guarantee must come from the write
path), and all of them are released at the entrance of the landing at the same moment (see
`landing_process.py --go`). Rounds publish more events and land again on the same lake.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

from mlassets.defs.resources import local_resources
from mlassets.lib.landing import live_files, split
from mlassets.roles.storage import LakeStorage
from mlassets.simulate import make_events
from mlassets_tests.processes import stop_group
from mlassets_tests.reliability.ledger import (
    landed_runs,
    landing_command,
    ledger,
    release_together,
    temp_files,
)

EVENTS_PER_ROUND = 4000  # about 1,000 a partition
BACKLOG_RANGE = 150  # MLASSETS_MAX_RANGE_EVENTS: the backlog path's boundaries
EXPLICIT_RANGES = (220, 333)  # the other paths ask for other boundaries


@pytest.fixture
def hub(data_dir, monkeypatch):
    monkeypatch.setenv("MLASSETS_MAX_RANGE_EVENTS", str(BACKLOG_RANGE))
    return local_resources()["event_hub"]


def publish_round(hub, round_: int) -> dict[str, tuple[int, int]]:
    """Publish one round's events; returns each partition's new sequence numbers."""
    before = {
        p.partition_id: p.last_enqueued_sequence_number for p in hub.all_partition_properties()
    }
    events = make_events(EVENTS_PER_ROUND, 40, seed=100 + round_)
    hub.publish(events.bodies, events.partition_keys)
    return {
        p.partition_id: (before[p.partition_id] + 1, p.last_enqueued_sequence_number)
        for p in hub.all_partition_properties()
        if p.last_enqueued_sequence_number > before[p.partition_id]
    }


def explicit_ranges(new: dict[str, tuple[int, int]], size: int) -> list[list]:
    return [
        [r.partition_id, r.first, r.last] for p, (a, b) in new.items() for r in split(p, a, b, size)
    ]


def run_round(tmp: Path, commands: list[list[str]], env: dict[str, str]) -> None:
    """Start every landing, release them together, and require each to succeed."""
    go = tmp / "go"
    procs = []
    for i, command in enumerate(commands):
        home = tmp / f"dagster_home_{i}"
        home.mkdir()
        procs.append(
            subprocess.Popen(
                command,
                env={**env, "DAGSTER_HOME": str(home)},
                stdout=subprocess.DEVNULL,
                stderr=open(tmp / f"landing_{i}.log", "wb"),  # noqa: SIM115 - closed with the process
                start_new_session=True,
            )
        )
    try:
        release_together(go, procs)
        for proc in procs:
            proc.wait(timeout=300)
    finally:
        for proc in procs:
            stop_group(proc)
            proc.stderr and proc.stderr.close()
    for i, proc in enumerate(procs):
        log = (tmp / f"landing_{i}.log").read_text()[-3000:]
        assert proc.returncode == 0, f"{commands[i]} failed:\n{log}"


def winners_per_partition(lake: LakeStorage, new: dict[str, tuple[int, int]]) -> dict[str, set]:
    """Which runs (one a process) landed the claims of this round's events, per partition:
    from the landed files' footers, as compaction removes claims once done."""
    out: dict[str, set] = defaultdict(set)
    for (p, first), run in landed_runs(lake).items():
        if p in new and first >= new[p][0]:
            out[p].add(run)
    return out


def config_file(tmp: Path, ranges: list[list]) -> str:
    path = tmp / "ranges.json"
    config = {"partition_id": "", "first": 0, "last": 0}
    path.write_text(
        json.dumps(
            {
                "ops": {
                    "landed_events": {
                        "config": {
                            "ranges": [
                                {**config, "partition_id": p, "first": a, "last": b}
                                for p, a, b in ranges
                            ]
                        }
                    }
                }
            }
        )
    )
    return str(path)


def materialize_command(go: str) -> list[str]:
    """The UI's Materialize button, or a person at a shell: no config, everything new."""
    return landing_command(
        "--go", go, "cli", "asset", "materialize", "-m", "mlassets.definitions",
        "--select", "landed_events",
    )  # fmt: skip


def land_in_rounds(hub, lake, tmp_path: Path, rounds: int, env: dict, commands_for) -> None:
    """Each round publishes more events and starts `commands_for(tmp, go, new)` at once; after
    each, every event is landed exactly once. The landings must really have contended for
    claims, or the test proved nothing."""
    contended = 0
    for round_ in range(rounds):
        tmp = tmp_path / f"round{round_}"
        tmp.mkdir()
        new = publish_round(hub, round_)
        run_round(tmp, commands_for(tmp, str(tmp / "go"), new), env)
        book = ledger(hub, lake)
        assert book.exactly_once, f"round {round_}: {book}"
        contended += sum(len(w) > 1 for w in winners_per_partition(lake, new).values())
    assert temp_files(lake) == []
    assert contended, "no partition had claims won by more than one landing"
    # Each landing compacts after landing, beside the others: they must have merged files.
    assert len(landed_runs(lake)) > len(live_files(lake)), "no landing merged a file"


def test_cli_job_and_in_process_landings_at_once_land_every_event_once_on_a_local_lake(
    hub, tmp_path
):
    def commands(tmp: Path, go: str, new) -> list[list[str]]:
        return [
            materialize_command(go),
            # What the sensor's runs look like: the job with explicit ranges.
            landing_command(
                "--go",
                go,
                "cli",
                "job",
                "execute",
                "-m",
                "mlassets.definitions",
                "-j",
                "ingest_events",
                "-c",
                config_file(tmp, explicit_ranges(new, EXPLICIT_RANGES[0])),
            ),
            # execute_in_process (the demo), with yet other boundaries.
            landing_command(
                "--go", go, "in-process", json.dumps(explicit_ranges(new, EXPLICIT_RANGES[1]))
            ),
        ]

    land_in_rounds(hub, local_resources()["lake"], tmp_path, 3, os.environ.copy(), commands)


@pytest.mark.azurite
def test_landings_in_several_processes_at_once_land_every_event_once_on_blob_storage(
    hub, tmp_path, azurite, azurite_container
):
    url = f"abfs://{azurite_container}/lake"
    lake = LakeStorage(url=url, connection_string=azurite)
    env = {**os.environ, "MLASSETS_LAKE_URL": url, "MLASSETS_STORAGE_CONNECTION_STRING": azurite}

    def commands(tmp: Path, go: str, new) -> list[list[str]]:
        return [
            materialize_command(go),
            *(
                landing_command("--go", go, "in-process", json.dumps(explicit_ranges(new, size)))
                for size in EXPLICIT_RANGES
            ),
        ]

    land_in_rounds(hub, lake, tmp_path, 2, env, commands)
