"""The README's demo: the whole graph on the embedded defaults, with a summary a person can read.

Scanners publish digit events, a labelling team labels most samples (and corrects its own
mistakes), then one run of the `end_to_end` job lands the events, syncs the labels by CDC,
builds the dataset, trains with Horovod, checks the model, scores the unlabeled samples and
exports the predictions to SQL. The run goes through the Dagster instance at DAGSTER_HOME, so
it is in the UI afterwards.

It says what happened, briefly: one line per step as the step finishes, with its headline
figure, read from the run's own event stream (`StepLines`), then the summary. Dagster's whole
event log and the Horovod workers' output go to a log file instead (`--verbose`: the terminal).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import sqlalchemy as sa

from mlassets import settings
from mlassets.lib.metadata import (
    APPROVED_MODEL,
    CDC_DELTAS,
    DIGIT_CLASSIFIER,
    INCOMING_EVENTS,
    INFERENCE_OUTPUTS,
    LABELS,
    LANDED_EVENTS,
    TRAINING_DATASET,
    ApprovalMetadata,
    CaptureMetadata,
    DatasetMetadata,
    IncomingMetadata,
    LabelsMetadata,
    LandingMetadata,
    ModelMetadata,
    ScoringMetadata,
)

Echo = Callable[[str], None]


@dataclass
class DemoSummary:
    published: int
    run_id: str
    success: bool
    seconds: float
    # What each asset recorded in this run (empty when it did not materialize).
    landing: LandingMetadata = field(default_factory=LandingMetadata)
    labels: LabelsMetadata = field(default_factory=LabelsMetadata)
    dataset: DatasetMetadata = field(default_factory=DatasetMetadata)
    model: ModelMetadata = field(default_factory=ModelMetadata)
    scoring: ScoringMetadata = field(default_factory=ScoringMetadata)
    checks: dict[str, bool] = field(default_factory=dict)
    predictions_in_sql: int = 0
    error: str | None = None
    #: Where Dagster's event log and the workers' output went (None: to the terminal).
    log_path: str | None = None

    def render(self) -> str:
        failed = [k for k, ok in self.checks.items() if not ok]
        lines = [
            "",
            "mlassets demo " + ("succeeded" if self.success else "FAILED"),
            f"  deployment          {settings.deployment()}",
            f"  events published    {self.published:,}",
            f"  rows landed         {self.landing.landed_rows:,}"
            f" ({self.landing.quarantined_rows:,} quarantined)",
            f"  labels (Delta)      {self.labels.row_count or 0:,}"
            f" at version {self.labels.delta_version if self.labels.delta_version >= 0 else '-'}",
            f"  training dataset    {self.dataset.version or '-'}: "
            f"{self.dataset.train_rows:,} train / "
            f"{self.dataset.validation_rows:,} validation / "
            f"{self.dataset.test_rows:,} test",
            f"  model               {self.model.model_version or '-'}: "
            f"test accuracy {self.model.test_accuracy:.4f} with "
            f"{self.model.workers} Horovod workers",
            f"  rows scored         {self.scoring.rows_scored:,} "
            f"(mean confidence {self.scoring.mean_confidence:.3f})",
            f"  predictions in SQL  {self.predictions_in_sql:,} rows in table `predictions`",
            f"  checks              {len(self.checks) - len(failed)} of {len(self.checks)} passed"
            + (f"; failed: {', '.join(failed)}" if failed else ""),
            f"  data                {settings.data_dir()}",
            f"  run                 {self.run_id} ({self.seconds:.0f}s)",
        ]
        if self.error:
            lines.append(f"  error               {self.error}")
        if self.log_path:
            lines.append(f"  full log            {self.log_path}")
        lines += [
            "",
            "Open the UI:  make ui   (then http://127.0.0.1:3000: Runs, Assets, Automation)",
        ]
        return "\n".join(lines)


def count_predictions(url: str) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table("predictions"):
                return 0
            return int(conn.execute(sa.text("SELECT COUNT(*) FROM predictions")).scalar_one())
    finally:
        engine.dispose()


def headline(event: dg.DagsterEvent) -> str:
    """An asset's headline figure in this run, from what its materialization recorded."""
    key = event.asset_key
    if key == LANDED_EVENTS:
        m = LandingMetadata.from_metadata(event)
        return f"{m.landed_rows:,} rows landed, {m.quarantined_rows:,} quarantined"
    if key == INCOMING_EVENTS:
        return f"{IncomingMetadata.from_metadata(event).landed_rows:,} rows imported"
    if key == CDC_DELTAS:
        c = CaptureMetadata.from_metadata(event)
        return (
            f"{c.changes:,} changes captured ({c.inserts:,} inserts, {c.updates:,} updates, "
            f"{c.deletes:,} deletes)"
        )
    if key == LABELS:
        lb = LabelsMetadata.from_metadata(event)
        what = "first load" if lb.initial_load != "-" else f"{lb.changes_applied:,} changes applied"
        return f"{what}: {lb.row_count or 0:,} labels at Delta version {lb.delta_version}"
    if key == TRAINING_DATASET:
        d = DatasetMetadata.from_metadata(event)
        return (
            f"{d.train_rows:,} train / {d.validation_rows:,} validation / {d.test_rows:,} test rows"
        )
    if key == DIGIT_CLASSIFIER:
        mo = ModelMetadata.from_metadata(event)
        return (
            f"test accuracy {mo.test_accuracy:.4f} ({mo.workers} workers, {mo.epochs} epochs of "
            f"{mo.steps_per_epoch} steps of {mo.batch_size_per_worker})"
        )
    if key == APPROVED_MODEL:
        return f"model {ApprovalMetadata.from_metadata(event).model_version} approved for scoring"
    if key == INFERENCE_OUTPUTS:
        sc = ScoringMetadata.from_metadata(event)
        return f"{sc.rows_scored:,} rows scored (mean confidence {sc.mean_confidence:.3f})"
    return "materialized"


class StepLines(logging.Handler):
    """One line per finished step, from the run's event stream: each asset it materialized
    with its headline figure, and how its checks went; a failed step says why in one line."""

    def __init__(self, echo: Echo) -> None:
        super().__init__(logging.DEBUG)
        self.echo = echo
        self.started = time.perf_counter()
        self.parts: dict[str, list[str]] = {}  # step key -> what it did so far
        self.labels: dict[str, str] = {}  # step key -> the asset a check step judged

    def emit(self, record: logging.LogRecord) -> None:
        try:
            meta = getattr(record, "dagster_meta", None) or {}
            event = meta.get("dagster_event")
            if event is None:  # a plain log line: only warnings and errors are shown
                if record.levelno >= logging.WARNING:
                    message = str(meta.get("orig_message") or record.getMessage()).strip()
                    level = "warning" if record.levelno == logging.WARNING else "error"
                    first = message.splitlines()[0] if message else ""
                    self._line(meta.get("step_key") or "run", f"{level}: {first}")
                return
            self.on_event(event)
        except Exception:  # a summary line is never worth failing the run over
            pass

    def on_event(self, event: dg.DagsterEvent) -> None:
        kind, step = event.event_type_value, event.step_key or "run"
        if kind == "ASSET_MATERIALIZATION":
            text = headline(event)
            named = event.asset_key.to_user_string()
            self.parts.setdefault(step, []).append(text if named == step else f"{named}: {text}")
        elif kind == "ASSET_CHECK_EVALUATION":
            check = event.event_specific_data
            verdict = "passed" if check.passed else "FAILED"
            self.parts.setdefault(step, []).append(f"check {check.check_name} {verdict}")
            if step != check.asset_key.to_user_string():  # a check's own step: by its asset
                self.labels[step] = check.asset_key.to_user_string()
        elif kind == "STEP_SUCCESS":
            self._line(step, "; ".join(self.parts.pop(step, [])) or "done")
        elif kind == "STEP_FAILURE":
            self._line(step, f"FAILED: {_failure_message(event)}")
        elif kind == "STEP_SKIPPED":
            self._line(step, "skipped (an upstream step failed or a blocking check did not pass)")

    def _line(self, step: str, text: str) -> None:
        label = self.labels.pop(step, step)
        self.echo(f"  {time.perf_counter() - self.started:>5.0f}s  {label:<18} {text}")


def _failure_message(event: dg.DagsterEvent) -> str:
    """A failed step in one line: a dg.Failure's description, else the innermost error's."""
    data = event.step_failure_data
    user = data.user_failure_data if data else None
    if user is not None and user.description:
        return user.description.strip().splitlines()[0]
    error = data.error if data else None
    while error is not None and error.cause is not None:
        error = error.cause
    message = (error.message if error else event.message) or "failed"
    return (message.strip().splitlines() or ["failed"])[0][:300]


def with_step_lines(job: dg.JobDefinition, echo: Echo) -> tuple[dg.JobDefinition, dict]:
    """The job with two loggers, Dagster's console log (at DEBUG) and `StepLines` on `echo`,
    and the run config that turns both on."""

    @dg.logger(description="one line per finished step (the demo's progress)")
    def step_lines(_init_context) -> logging.Logger:
        log = logging.Logger("mlassets.demo.steps", logging.DEBUG)
        log.addHandler(StepLines(echo))
        return log

    loggers = {"console": dg.colored_console_logger, "steps": step_lines}
    run_config = {"loggers": {"console": {"config": {"log_level": "DEBUG"}}, "steps": {}}}
    return job.with_logger_defs(loggers), run_config


@contextlib.contextmanager
def output_to(path: Path | None) -> Iterator[Echo]:
    """While open, everything this process and its children (the Horovod workers) write to
    stdout and stderr goes to `path` (None: stays on the terminal); yields an echo that still
    reaches the terminal."""
    if path is None:
        yield lambda line: print(line, flush=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    terminal = os.fdopen(os.dup(saved_out), "w", buffering=1)
    try:
        with open(path, "wb") as log:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            try:
                yield lambda line: print(line, file=terminal, flush=True)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved_out, 1)
                os.dup2(saved_err, 2)
    finally:
        terminal.close()
        os.close(saved_out)
        os.close(saved_err)


def run_demo(
    count: int = 10_000,
    malformed: int = 0,
    seed: int | None = None,
    *,
    verbose: bool = False,
    echo: Echo = print,
) -> DemoSummary:
    """Publish, label, then run `end_to_end`, echoing one line per step. Every setting is
    checked first: a bad one stops the demo before anything is published."""
    settings.check()
    from mlassets.definitions import build_definitions
    from mlassets.defs.resources import resolved
    from mlassets.simulate import EVENT_PROPERTIES, make_events, record_truth, simulate_labels

    defs = build_definitions()  # resources for the environment as it is now
    resources = defs.resources
    # A lake the credential cannot reach stops here, in seconds and one line, not at landing.
    resolved(resources["lake"]).check_access()
    hub = resolved(resources["event_hub"])
    events = make_events(count, malformed, seed)
    published = hub.publish(events.bodies, events.partition_keys, EVENT_PROPERTIES)
    record_truth(settings.data_dir(), events)
    echo(f"published {published:,} events to {hub.hub_name!r} ({malformed:,} malformed)")
    db = resolved(resources["labels_db"])
    db.ensure_schema()
    first = simulate_labels(db, settings.data_dir(), seed=seed)  # with mistakes
    fixes = simulate_labels(db, settings.data_dir(), seed=None if seed is None else seed + 1)
    echo(
        f"labelled {first.labeled:,} samples ({first.wrong:,} wrong, {first.reserved:,} kept "
        f"unlabelled for scoring), then corrected {fixes.corrected:,}"
    )

    run_id = str(uuid.uuid4())
    log_path = None if verbose else settings.data_dir() / "logs" / f"demo-{run_id[:8]}.log"
    started = time.perf_counter()
    with dg.DagsterInstance.get() as instance, output_to(log_path) as terminal:
        terminal(f"running job end_to_end (run {run_id}); one line per step as it finishes:")
        job, run_config = with_step_lines(defs.resolve_job_def("end_to_end"), terminal)
        result = job.execute_in_process(
            run_config=run_config,
            instance=instance,
            raise_on_error=False,
            run_id=run_id,
        )
        recorded = {
            name: contract.from_run(result) or contract()
            for name, contract in (
                ("landing", LandingMetadata),
                ("labels", LabelsMetadata),
                ("dataset", DatasetMetadata),
                ("model", ModelMetadata),
                ("scoring", ScoringMetadata),
            )
        }
        checks = {
            f"{e.asset_key.to_user_string()}:{e.check_name}": e.passed
            for e in result.get_asset_check_evaluations()
        }
        failure = next((_failure_message(e) for e in result.all_events if e.is_step_failure), None)
    return DemoSummary(
        published=published,
        run_id=result.run_id,
        success=result.success and all(checks.values()),
        seconds=time.perf_counter() - started,
        **recorded,
        checks=checks,
        predictions_in_sql=count_predictions(settings.labels_db_url()),
        error=failure,
        log_path=str(log_path) if log_path else None,
    )
