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

    try:
        return resolved(build_resources()[name])
    except settings.MissingSettingError as exc:
        _fail(str(exc))


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


@simulate.command("labels")
@click.option(
    "--unlabeled", default=0.2, show_default=True, type=click.FloatRange(0, 1),
    help="share of newly seen samples left unlabeled (for inference)",
)
@click.option(
    "--wrong", default=0.05, show_default=True, type=click.FloatRange(0, 1),
    help="share of new labels that start wrong (the next call corrects them)",
)
@click.option(
    "--retract", default=0.02, show_default=True, type=click.FloatRange(0, 1),
    help="share of existing labels retracted (deleted)",
)
@click.option(
    "--invalid", default=0, show_default=True, type=click.IntRange(0),
    help="rows to give an invalid label (11 or NULL), for the checks",
)
@click.option(
    "--corrections/--no-corrections", default=True, show_default=True,
    help="correct the wrong and invalid labels of earlier calls",
)
@click.option("--seed", type=int, default=None, help="for repeatable choices")
def simulate_labels(
    unlabeled: float, wrong: float, retract: float, invalid: int, corrections: bool,
    seed: int | None,
) -> None:
    """Label the samples `simulate events` published, in the labels database (CDC on)."""
    from mlassets.simulate import simulate_labels as run_round

    db = _resource("labels_db")
    db.ensure_schema()
    started = time.perf_counter()
    try:
        done = run_round(
            db, settings.data_dir(), unlabeled=unlabeled, wrong=wrong, retract=retract,
            invalid=invalid, corrections=corrections, seed=seed,
        )
    except ValueError as exc:
        _fail(str(exc))
    elapsed = time.perf_counter() - started
    click.echo(
        f"labeled {done.labeled:,} new samples ({done.wrong:,} wrong, {done.invalid:,} invalid), "
        f"corrected {done.corrected:,}, retracted {done.retracted:,}, kept {done.reserved:,} "
        f"unlabeled for inference in {elapsed:.2f}s; the table holds {done.total_labels:,} "
        f"labels for {done.samples:,} published samples; max LSN 0x{db.max_lsn() or '-'}"
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
    try:
        summary = run_demo(count, malformed)
    except settings.MissingSettingError as exc:
        _fail(str(exc))
    click.echo(summary.render())
    if not summary.success:
        sys.exit(1)


@main.group("labels")
def labels_group() -> None:
    """The labels database and its change data capture."""


@labels_group.command("setup")
def labels_setup() -> None:
    """Create the labels table and enable change data capture on it (idempotent)."""
    db = _resource("labels_db")
    db.ensure_schema()
    click.echo(f"labels table ready with change data capture at {db.display_url}")


@labels_group.command("status")
def labels_status() -> None:
    """Source rows and LSNs, what was captured, and where the Delta table stands."""
    from mlassets import cdc

    db, lake = _resource("labels_db"), _resource("lake")
    bounds = db.lsn_bounds()
    watermark, source = cdc.capture_watermark(lake)
    state = cdc.labels_state(lake)
    ranges = cdc.batch_ranges(lake)
    pending = [r for r in ranges if state is None or r.last > state.applied_lsn]
    lines = [
        ("source", db.display_url),
        ("source rows", f"{db.count_labels():,}"),
        ("source LSNs", f"0x{bounds.min_lsn} .. 0x{bounds.max_lsn or '-'}"),
        ("captured through", f"0x{watermark} ({source})" if watermark else "-"),
        ("change batches", f"{len(ranges)} ({len(pending)} not applied)"),
        ("labels table", lake.uri(cdc.LABELS_PATH)),
    ]
    if state is not None:
        dt = lake.delta_table(cdc.LABELS_PATH)
        lines += [
            ("delta version", str(state.version)),
            ("rows", f"{cdc.labels_row_count(dt):,}"),
            ("applied LSN", f"0x{state.applied_lsn}"),
            ("snapshot LSN", f"0x{state.snapshot_lsn}" if state.snapshot_lsn else "-"),
        ]
    if watermark and bounds.min_lsn and int(watermark, 16) + 1 < int(bounds.min_lsn, 16):
        lines.append(("WARNING", "CDC retention expired: run `mlassets labels resnapshot`"))
    for key, value in lines:
        click.echo(f"{key:>17}  {value}")


@labels_group.command("resnapshot")
def labels_resnapshot() -> None:
    """Rebuild the labels Delta table from a full snapshot (after CDC retention expired)."""
    import dagster as dg

    os.environ.setdefault("DAGSTER_HOME", str(settings.PROJECT_ROOT / "dagster_home"))
    from mlassets.assets.cdc import labels
    from mlassets.definitions import defs

    with dg.DagsterInstance.get() as instance:
        result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
            asset_selection=[labels.key],
            run_config={"ops": {"labels": {"config": {"resnapshot": True}}}},
            instance=instance,
            raise_on_error=False,
        )
    if not result.success:
        _fail(f"re-snapshot failed; see run {result.run_id} in the Dagster UI")
    meta = {
        k: v.value
        for m in result.asset_materializations_for_node("labels")
        for k, v in m.metadata.items()
    }
    click.echo(
        f"labels re-snapshot: Delta version {meta.get('delta_version')}, "
        f"{meta.get('row_count'):,} rows, {meta.get('initial_load')}; run {result.run_id}"
    )


if __name__ == "__main__":
    main()
