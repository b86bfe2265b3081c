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


@dataclass
class DemoSummary:
    published: int
    run_id: str
    success: bool
    seconds: float
    metadata: dict[str, dict]  # asset -> its materialization metadata in this run
    checks: dict[str, bool] = field(default_factory=dict)
    predictions_in_sql: int = 0
    error: str | None = None

    def _m(self, asset: str, key: str, default=0):
        return self.metadata.get(asset, {}).get(key, default)

    def render(self) -> str:
        failed = [k for k, ok in self.checks.items() if not ok]
        lines = [
            "",
            "mlassets demo " + ("succeeded" if self.success else "FAILED"),
            f"  deployment          {settings.deployment()}",
            f"  events published    {self.published:,}",
            f"  rows landed         {int(self._m('landed_events', 'landed_rows')):,}"
            f" ({int(self._m('landed_events', 'quarantined_rows')):,} quarantined)",
            f"  labels (Delta)      {int(self._m('labels', 'row_count')):,}"
            f" at version {self._m('labels', 'delta_version', '-')}",
            f"  training dataset    {self._m('training_dataset', 'version', '-')}: "
            f"{int(self._m('training_dataset', 'train_rows')):,} train / "
            f"{int(self._m('training_dataset', 'validation_rows')):,} validation / "
            f"{int(self._m('training_dataset', 'test_rows')):,} test",
            f"  model               {self._m('digit_classifier', 'model_version', '-')}: "
            f"test accuracy {float(self._m('digit_classifier', 'test_accuracy')):.4f} with "
            f"{int(self._m('digit_classifier', 'workers'))} Horovod workers",
            f"  rows scored         {int(self._m('inference_outputs', 'rows_scored')):,} "
            f"(mean confidence {float(self._m('inference_outputs', 'mean_confidence')):.3f})",
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
        metadata = {
            event.asset_key.to_user_string(): {k: v.value for k, v in event.metadata.items()}
            for event in (
                e.event_specific_data.materialization
                for e in result.get_asset_materialization_events()
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
        metadata=metadata,
        checks=checks,
        predictions_in_sql=count_predictions(settings.labels_db_url()),
        error=failure,
    )
