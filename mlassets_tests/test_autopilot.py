"""Autopilot: with a real `dagster-daemon` on the project's workspace, publishing events and
labels is all it takes. Nobody launches, materializes or sends a command:

1. the events land and the labels sync (their sensors), the first model trains itself once
   every digit has enough labels (the retraining sensor) and is approved in that run, and
   every unlabelled valid sample gets a prediction in SQL (the automation sensor);
2. more events land and are scored by the same model, without a new training;
3. enough new labels fire the new-labels policy: one retraining, then scoring with the new
   model.

Throughout, no two trainings are ever queued or running at once, and no sample has two
predictions from one model.
"""

import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path

import dagster as dg
import pyarrow.dataset as ds
import pytest
import sqlalchemy as sa

from mlassets.lib.metadata import (
    INFERENCE_OUTPUTS,
    ApprovalMetadata,
    LabelsMetadata,
    ModelMetadata,
)
from mlassets.settings import PROJECT_ROOT
from mlassets_tests.processes import stop_group

BIN = os.path.dirname(sys.executable)
FIRST_EVENTS, MALFORMED, MORE_EVENTS = 2_500, 25, 500
#: Generous: two cores shared with other work; the first phase waits for three sensor ticks
#: (landing, labels, retraining), a training and an automation tick.
PHASE_SECONDS = 600


@pytest.fixture
def daemon(dagster_home: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MLASSETS_RETRAIN_COOLDOWN_MINUTES", "0")
    monkeypatch.setenv("MLASSETS_TRAINING_WORKERS", "1")
    log = open(dagster_home / "daemon.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [f"{BIN}/dagster-daemon", "run", "-w", "workspace.yaml"],
        cwd=PROJECT_ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    yield proc
    stop_group(proc, grace=15)
    log.close()


def simulate(*args: str) -> None:
    """What an operator types in another terminal."""
    done = subprocess.run(
        [f"{BIN}/mlassets", "simulate", *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]


class Watch:
    """Polls the instance, the lake and SQL; says what the daemon did when time runs out."""

    def __init__(self, instance: dg.DagsterInstance, data_dir: Path, dagster_home: Path):
        self.instance, self.data, self.home = instance, data_dir, dagster_home
        self.started, self.wall_started = time.monotonic(), time.time()
        self.milestones: list[tuple[str, float]] = []

    def until(self, what: str, check: Callable[[], object], seconds: float = PHASE_SECONDS):
        deadline = time.monotonic() + seconds
        while not (result := check()):
            if time.monotonic() > deadline:
                pytest.fail(f"not within {seconds}s: {what}\n{self.report()}")
            time.sleep(2)
        self.milestones.append((what, time.monotonic() - self.started))
        return result

    def report(self) -> str:
        runs = [
            f"{r.job_name} {r.status.value} {r.tags.get('dagster/sensor_name', '-')}"
            for r in self.instance.get_runs(limit=30)
        ]
        log = (self.home / "daemon.log").read_text(errors="replace")[-4000:]
        return "runs (newest first):\n" + "\n".join(runs) + "\n-- daemon log --\n" + log

    def timeline(self) -> str:
        """Every run, from its creation to its end, in seconds since the first event."""
        records = sorted(self.instance.get_run_records(), key=lambda r: r.create_timestamp)
        lines = []
        for r in records:
            run = r.dagster_run
            what = run.job_name
            if run.asset_selection:
                what = ",".join(sorted(k.to_user_string() for k in run.asset_selection))
            created = r.create_timestamp.timestamp() - self.wall_started
            ended = (r.end_time or time.time()) - self.wall_started
            trigger = run.tags.get("dagster/sensor_name", "-")
            lines.append(f"{created:6.0f}s -> {ended:6.0f}s  {what:<20} by {trigger}")
        return "\n".join(lines)

    def landed(self) -> set[str]:
        root = self.data / "lake" / "landed" / "events"
        if not root.exists():
            return set()
        return set(ds.dataset(root).to_table(columns=["sample_id"])["sample_id"].to_pylist())

    def sql(self, query: str, table: str = "predictions") -> list:
        """Rows of a query on the SQL database ([] before `table` exists)."""
        engine = sa.create_engine(f"sqlite:///{self.data / 'labels.db'}")
        try:
            with engine.connect() as conn:
                if not sa.inspect(conn).has_table(table):
                    return []
                return conn.execute(sa.text(query)).all()
        finally:
            engine.dispose()

    def labelled(self) -> set[str]:
        query = "SELECT sample_id FROM labels WHERE label IS NOT NULL"
        return {r[0] for r in self.sql(query, table="labels")}

    def predicted(self, version: str) -> set[str]:
        rows = self.sql(f"SELECT sample_id FROM predictions WHERE model_version = '{version}'")
        return {r[0] for r in rows}

    def trainings(self) -> list[dg.RunRecord]:
        return list(self.instance.get_run_records(filters=dg.RunsFilter(job_name="train_model")))

    def approved(self) -> str | None:
        approval = ApprovalMetadata.latest(self.instance)
        return approval.model_version if approval else None

    def all_unlabelled_scored_by(self, version: str) -> bool:
        unlabelled = self.landed() - self.labelled()
        return bool(unlabelled) and unlabelled <= self.predicted(version)

    def idle(self) -> bool:
        return all(r.is_finished for r in self.instance.get_runs(limit=100))


@pytest.mark.slow
@pytest.mark.timeout(3 * PHASE_SECONDS + 300)
def test_from_the_first_event_to_fresh_predictions_with_no_one_touching_it(
    daemon, dagster_home, data_dir
):
    with dg.DagsterInstance.get() as instance:
        watch = Watch(instance, data_dir, dagster_home)
        simulate(
            "events", "--count", str(FIRST_EVENTS), "--malformed", str(MALFORMED), "--seed", "1"
        )
        simulate("labels", "--unlabeled", "0.2", "--wrong", "0", "--retract", "0", "--seed", "1")

        # 1. landed, synced, a first model trained by itself, approved, everything scored.
        watch.until("events landed", lambda: len(watch.landed()) == FIRST_EVENTS - MALFORMED)
        watch.until(
            "labels synced",
            lambda: (
                (labels := LabelsMetadata.latest(instance)) is not None
                and labels.row_count == len(watch.labelled())
            ),
        )
        first = watch.until("first model approved", watch.approved)
        (training,) = watch.trainings()
        assert training.dagster_run.tags["mlassets/retrain-policy"] == "first_model"
        reason = ModelMetadata.latest(instance).retrain_reason
        assert reason.startswith("first model: ") and "every class >= 20 rows" in reason
        watch.until("every unlabelled sample scored", lambda: watch.all_unlabelled_scored_by(first))

        # 2. more events: scored by the same model, no new training.
        before = watch.landed()
        simulate("events", "--count", str(MORE_EVENTS), "--seed", "2")
        watch.until("more events landed", lambda: len(watch.landed()) == len(before) + MORE_EVENTS)
        watch.until(
            "the new events scored by the same model",
            lambda: watch.all_unlabelled_scored_by(first),
        )
        assert len(watch.trainings()) == 1 and watch.approved() == first

        # 3. new labels beyond the policy's share: one retraining, then the new model scores.
        simulate("labels", "--unlabeled", "0.2", "--wrong", "0", "--retract", "0", "--seed", "2")
        second = watch.until(
            "a retrained model approved", lambda: (v := watch.approved()) != first and v
        )
        watch.until(
            "every unlabelled sample scored by the new model",
            lambda: watch.all_unlabelled_scored_by(second),
        )
        watch.until("every run finished", watch.idle, seconds=120)

        trainings = sorted(watch.trainings(), key=lambda r: r.create_timestamp)
        assert len(trainings) == 2, watch.report()
        assert trainings[1].dagster_run.tags["mlassets/retrain-policy"] == "new_labels"
        assert ModelMetadata.latest(instance).retrain_reason.startswith("labels grew")
        # Never two trainings queued or running at once: each was created after the one
        # before had ended.
        for earlier, later in pairwise(trainings):
            assert earlier.end_time <= later.create_timestamp.timestamp(), watch.timeline()
        runs = instance.get_runs()
        assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs), watch.report()
        scorings = [r for r in runs if INFERENCE_OUTPUTS in (r.asset_selection or ())]
        assert 2 <= len(scorings) <= 8, watch.report()  # bounded by landings and approvals
        print("\n".join(f"{seconds:6.0f}s  {what}" for what, seconds in watch.milestones))
        print(watch.timeline())
        for recorded in reversed(ModelMetadata.records(instance)):
            model = recorded.metadata
            print(
                f"model {model.model_version}: test accuracy {model.test_accuracy:.3f}, "
                f"{model.training_seconds:.0f}s of training; {model.retrain_reason}"
            )

    # No sample has two predictions from one model, in SQL or in the lake.
    assert not watch.sql(
        "SELECT sample_id, model_version FROM predictions "
        "GROUP BY sample_id, model_version HAVING COUNT(*) > 1"
    )
    files = sorted((data_dir / "lake" / "predictions").glob("model=*/batch=*/*.parquet"))
    lake = ds.dataset([str(f) for f in files]).to_table(columns=["sample_id", "model_version"])
    pairs = Counter(
        zip(lake["sample_id"].to_pylist(), lake["model_version"].to_pylist(), strict=True)
    )
    assert max(pairs.values()) == 1
