"""The README's demo: the whole graph on the embedded defaults, with a summary a person can read.

Scanners publish digit events, a labelling team labels most samples (and corrects its own
mistakes), then one run of the `end_to_end` job lands the events, syncs the labels by CDC,
builds the dataset, trains with Horovod, checks the model, scores the unlabeled samples and
exports the predictions to SQL. The run goes through the Dagster instance at DAGSTER_HOME, so
it is in the UI afterwards.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import dagster as dg
import sqlalchemy as sa

from mlassets import settings
from mlassets.lib.metadata import (
    DatasetMetadata,
    LabelsMetadata,
    LandingMetadata,
    ModelMetadata,
    ScoringMetadata,
)


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


def run_demo(count: int = 10_000, malformed: int = 0, seed: int | None = None) -> DemoSummary:
    from mlassets.definitions import build_definitions
    from mlassets.defs.resources import resolved
    from mlassets.simulate import EVENT_PROPERTIES, make_events, record_truth, simulate_labels

    defs = build_definitions()  # resources for the environment as it is now
    resources = defs.resources
    hub = resolved(resources["event_hub"])
    events = make_events(count, malformed, seed)
    published = hub.publish(events.bodies, events.partition_keys, EVENT_PROPERTIES)
    record_truth(settings.data_dir(), events)
    db = resolved(resources["labels_db"])
    db.ensure_schema()
    simulate_labels(db, settings.data_dir(), seed=seed)  # first pass, with mistakes
    simulate_labels(db, settings.data_dir(), seed=None if seed is None else seed + 1)  # fixes

    started = time.perf_counter()
    with dg.DagsterInstance.get() as instance:
        result = defs.resolve_job_def("end_to_end").execute_in_process(
            instance=instance, raise_on_error=False
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
        failure = next(
            (e.message for e in result.all_events if e.event_type_value == "STEP_FAILURE"), None
        )
    return DemoSummary(
        published=published,
        run_id=result.run_id,
        success=result.success and all(checks.values()),
        seconds=time.perf_counter() - started,
        **recorded,
        checks=checks,
        predictions_in_sql=count_predictions(settings.labels_db_url()),
        error=failure,
    )
