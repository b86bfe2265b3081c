"""`mlassets`: simulate scanners, look at the hub, run the demo.

Every command talks to whichever deployment MLASSETS_DEPLOYMENT selects, through the same
resources the Dagster code location uses.
"""

from __future__ import annotations

import os
import sys
import time

import click

from mlassets import settings


def _resource(name: str):
    from mlassets.deployment import build_resources, resolved

    return resolved(build_resources()[name])


def _fail(message: str) -> None:
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(2)


@click.group()
def main() -> None:
    """mlassets: an event-driven ML platform on Azure, run by Dagster."""


@main.group()
def simulate() -> None:
    """Publish simulated data to the configured services."""


@simulate.command("events")
@click.option("--count", default=10_000, show_default=True, help="events to publish")
@click.option("--malformed", default=0, show_default=True, help="how many of them to break")
@click.option("--seed", type=int, default=None, help="for a repeatable stream")
def simulate_events(count: int, malformed: int, seed: int | None) -> None:
    """Publish digit events (scikit-learn's 8x8 digits) to the event hub."""
    from mlassets.simulate import EVENT_PROPERTIES, make_events, record_truth

    try:
        events = make_events(count, malformed, seed)
    except ValueError as exc:
        _fail(str(exc))
    hub = _resource("event_hub")
    started = time.perf_counter()
    sent = hub.publish(events.bodies, events.partition_keys, EVENT_PROPERTIES)
    elapsed = time.perf_counter() - started
    record_truth(settings.data_dir(), events)
    broken = ", ".join(f"{n} {k}" for k, n in events.malformed.items()) or "none"
    click.echo(
        f"published {sent:,} events to {hub.hub_name!r} in {elapsed:.2f}s "
        f"({sent / max(elapsed, 1e-9):,.0f}/s); malformed: {broken}"
    )


@main.command("hub")
def hub_info() -> None:
    """Show the event hub's partitions: sequence numbers and last enqueued time."""
    hub = _resource("event_hub")
    click.echo(f"event hub {hub.hub_name!r}")
    click.echo(f"{'partition':>9}  {'beginning':>9}  {'last seq':>9}  last enqueued")
    for p in hub.all_partition_properties():
        when = p.last_enqueued_time.isoformat() if p.last_enqueued_time else "-"
        click.echo(
            f"{p.partition_id:>9}  {p.beginning_sequence_number:>9}  "
            f"{p.last_enqueued_sequence_number:>9}  {when}"
        )


@main.command("demo")
@click.option("--events", "count", default=10_000, show_default=True)
@click.option("--malformed", default=0, show_default=True)
def demo(count: int, malformed: int) -> None:
    """Publish events to the hub, run `ingest_events`, and say what landed where."""
    from mlassets.demo import run_demo

    os.environ.setdefault("DAGSTER_HOME", str(settings.PROJECT_ROOT / "dagster_home"))
    summary = run_demo(count, malformed)
    click.echo(summary.render())
    if not summary.success:
        sys.exit(1)


if __name__ == "__main__":
    main()
