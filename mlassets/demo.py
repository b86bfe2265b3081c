"""The README's demo: the main job on the embedded defaults, with a summary a person can read.

Runs go through the Dagster instance at DAGSTER_HOME, so they appear in the UI afterwards.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import dagster as dg

from mlassets import settings


@dataclass
class DemoSummary:
    published: int
    run_id: str
    success: bool
    seconds: float
    metadata: dict
    checks: dict[str, bool] = field(default_factory=dict)

    def render(self) -> str:
        m = self.metadata
        lines = [
            "",
            "mlassets demo " + ("succeeded" if self.success else "FAILED"),
            f"  deployment        {settings.deployment()}",
            f"  events published  {self.published:,}",
            f"  rows landed       {int(m.get('landed_rows', 0)):,}",
            f"  quarantined       {int(m.get('quarantined_rows', 0)):,}",
            f"  files written     {int(m.get('files_written', 0))}",
            f"  landed Parquet    {m.get('lake_path', '-')}",
            f"  quarantine        {m.get('quarantine_path', '-')}",
            f"  throughput        {float(m.get('events_per_second', 0)):,.0f} events/s",
            "  checks            "
            + (
                ", ".join(f"{k} {'passed' if v else 'FAILED'}" for k, v in self.checks.items())
                or "-"
            ),
            f"  run               {self.run_id} ({self.seconds:.1f}s)",
            "",
            "Open the UI:  make ui   (then http://127.0.0.1:3000, Runs and Assets)",
        ]
        return "\n".join(lines)


def run_demo(count: int = 10_000, malformed: int = 0) -> DemoSummary:
    from mlassets.definitions import defs
    from mlassets.deployment import build_resources, resolved
    from mlassets.simulate import EVENT_PROPERTIES, make_events, record_truth

    hub = resolved(build_resources()["event_hub"])
    events = make_events(count, malformed)
    published = hub.publish(events.bodies, events.partition_keys, EVENT_PROPERTIES)
    record_truth(settings.data_dir(), events)

    started = time.perf_counter()
    with dg.DagsterInstance.get() as instance:
        result = defs.resolve_job_def("ingest_events").execute_in_process(
            instance=instance, raise_on_error=False
        )
        materializations = result.asset_materializations_for_node("landed_events")
        metadata = (
            {k: v.value for k, v in materializations[-1].metadata.items()}
            if materializations
            else {}
        )
        checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    return DemoSummary(
        published=published,
        run_id=result.run_id,
        success=result.success and all(checks.values()),
        seconds=time.perf_counter() - started,
        metadata=metadata,
        checks=checks,
    )
