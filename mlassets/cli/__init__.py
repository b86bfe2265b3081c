"""`mlassets`: simulate scanners, look at the hub, run the demo.

Every command talks to whichever deployment MLASSETS_DEPLOYMENT selects, through the same
resources the Dagster code location uses.
"""

from __future__ import annotations

import os
import sys
import time
import warnings

import click

from mlassets import settings


def _resource(name: str):
    """A resource of the configured deployment; a bad setting is one line (see `_Main`)."""
    from mlassets.defs.resources import build_resources, resolved

    return resolved(build_resources()[name])


def _fail(message: str) -> None:
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(2)


#: A person's mistakes (a setting, a path, a file): one line and exit 2, never a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (settings.SettingError, OSError)


class _Main(click.Group):
    """The `mlassets` group: every command's user errors become one line; `--debug` shows the
    traceback instead."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except USER_ERRORS as exc:
            if ctx.params.get("debug"):
                raise
            _fail(" ".join(str(exc).split()) or type(exc).__name__)


@click.group(cls=_Main)
@click.option("--debug", is_flag=True, help="show the traceback of an error, not one line")
def main(debug: bool) -> None:
    """mlassets: an event-driven ML platform on Azure, run by Dagster."""
    # The features mlassets uses knowingly (observable source assets, Pipes) carry Dagster's
    # beta/preview notices; on a terminal they would bury the output a person came for.
    warnings.filterwarnings("ignore", message=r".*is currently in (beta|preview)")


@main.group()
def simulate() -> None:
    """Publish simulated data to the configured services."""


@simulate.command("events")
@click.option(
    "--count", default=10_000, show_default=True, type=click.IntRange(0), help="events to publish"
)
@click.option(
    "--malformed",
    default=0,
    show_default=True,
    type=click.IntRange(0),
    help="how many of them to break",
)
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
    "--unlabeled",
    default=0.2,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="share of newly seen samples left unlabeled (for inference)",
)
@click.option(
    "--wrong",
    default=0.05,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="share of new labels that start wrong (the next call corrects them)",
)
@click.option(
    "--retract",
    default=0.02,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="share of existing labels retracted (deleted)",
)
@click.option(
    "--invalid",
    default=0,
    show_default=True,
    type=click.IntRange(0),
    help="rows to give an invalid label (11 or NULL), for the checks",
)
@click.option(
    "--corrections/--no-corrections",
    default=True,
    show_default=True,
    help="correct the wrong and invalid labels of earlier calls",
)
@click.option("--seed", type=int, default=None, help="for repeatable choices")
def simulate_labels(
    unlabeled: float,
    wrong: float,
    retract: float,
    invalid: int,
    corrections: bool,
    seed: int | None,
) -> None:
    """Label the samples `simulate events` published, in the labels database (CDC on)."""
    from mlassets.simulate import simulate_labels as run_round

    db = _resource("labels_db")
    db.ensure_schema()
    started = time.perf_counter()
    try:
        done = run_round(
            db,
            settings.data_dir(),
            unlabeled=unlabeled,
            wrong=wrong,
            retract=retract,
            invalid=invalid,
            corrections=corrections,
            seed=seed,
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
@click.option("--json", "as_json", is_flag=True, help="print the partitions as JSON")
def hub_info(as_json: bool) -> None:
    """Show the event hub's partitions: sequence numbers and last enqueued time."""
    hub = _resource("event_hub")
    if as_json:
        import json

        partitions = [
            {
                "partition_id": p.partition_id,
                "beginning_sequence_number": p.beginning_sequence_number,
                "last_enqueued_sequence_number": p.last_enqueued_sequence_number,
                "last_enqueued_offset": p.last_enqueued_offset,
                "last_enqueued_time": p.last_enqueued_time.isoformat()
                if p.last_enqueued_time
                else None,
                "is_empty": p.is_empty,
            }
            for p in hub.all_partition_properties()
        ]
        click.echo(json.dumps({"hub": hub.hub_name, "partitions": partitions}, indent=2))
        return
    click.echo(f"event hub {hub.hub_name!r}")
    click.echo(f"{'partition':>9}  {'beginning':>9}  {'last seq':>9}  last enqueued")
    for p in hub.all_partition_properties():
        when = p.last_enqueued_time.isoformat() if p.last_enqueued_time else "-"
        click.echo(
            f"{p.partition_id:>9}  {p.beginning_sequence_number:>9}  "
            f"{p.last_enqueued_sequence_number:>9}  {when}"
        )


@main.command("demo")
@click.option("--events", "count", default=10_000, show_default=True, type=click.IntRange(1))
@click.option(
    "--malformed",
    default=0,
    show_default=True,
    type=click.IntRange(0),
    help="e.g. 50, to see the quarantine",
)
@click.option("--seed", type=int, default=None, help="for a repeatable demo")
@click.option("--verbose", is_flag=True, help="Dagster's whole event log on the terminal")
def demo(count: int, malformed: int, seed: int | None, verbose: bool) -> None:
    """The whole graph: publish events and labels, then land, sync, train, score, export.
    One line per step as it finishes, then a summary."""
    from mlassets.demo import run_demo

    if malformed > count:
        _fail(f"--malformed ({malformed}) cannot exceed --events ({count})")
    os.environ.setdefault("DAGSTER_HOME", str(settings.PROJECT_ROOT / "dagster_home"))
    summary = run_demo(count, malformed, seed, verbose=verbose, echo=click.echo)
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
    from mlassets.lib import cdc
    from mlassets.roles.labels_db import CdcNotEnabledError

    db, lake = _resource("labels_db"), _resource("lake")
    try:
        bounds = db.lsn_bounds()
    except CdcNotEnabledError as exc:
        _fail(str(exc))
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
    from mlassets.definitions import defs
    from mlassets.defs.labels.assets import labels

    with dg.DagsterInstance.get() as instance:
        result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
            asset_selection=[labels.key],
            run_config={"ops": {labels.op.name: {"config": {"resnapshot": True}}}},
            instance=instance,
            raise_on_error=False,
        )
    if not result.success:
        _fail(f"re-snapshot failed; see run {result.run_id} in the Dagster UI")
    from mlassets.lib.metadata import LabelsMetadata

    loaded = LabelsMetadata.from_run(result) or LabelsMetadata()
    click.echo(
        f"labels re-snapshot: Delta version {loaded.delta_version}, "
        f"{loaded.row_count or 0:,} rows, {loaded.initial_load}; run {result.run_id}"
    )


@main.group("send")
def send_group() -> None:
    """Enqueue a message on the command queue (Service Bus, or its embedded twin)."""


def _send(document: dict, what: str, **kwargs) -> None:
    queue = _resource("message_queue")
    message_id = queue.send_json(document, **kwargs)
    click.echo(f"sent {what} as message {message_id} to {queue.display}")


@send_group.command("retrain")
@click.option("--reason", default=None, help="why; recorded on the run and the model")
def send_retrain(reason: str | None) -> None:
    """Ask for a new model (job train_model)."""
    from mlassets.lib.messages import retrain_command

    _send(retrain_command(reason), "a retrain command", subject="retrain")


@send_group.command("score")
def send_score() -> None:
    """Ask for scoring of unlabeled samples (job score_events)."""
    from mlassets.lib.messages import score_command

    _send(score_command(), "a score command", subject="score")


@send_group.command("blob-created")
@click.argument("path")
@click.option(
    "--schema",
    type=click.Choice(["eventgrid", "cloudevents"]),
    default="eventgrid",
    show_default=True,
    help="Event Grid event schema of the subscription",
)
@click.option("--missing-ok", is_flag=True, help="send even when no blob is at the path yet")
def send_blob_created(path: str, schema: str, missing_ok: bool) -> None:
    """Announce a drop at incoming/PATH of the lake, as Event Grid would (BlobCreated)."""
    from mlassets.lib.messages import (
        DropZone,
        blob_created_event,
        event_content_type,
        normalize_drop_path,
    )

    lake = _resource("lake")
    try:
        relative = normalize_drop_path(path)
    except ValueError as exc:
        _fail(str(exc))
    exists = lake.exists(relative)
    if not exists and not missing_ok:
        _fail(f"nothing at {lake.uri(relative)}: drop the file first (or pass --missing-ok)")
    event = blob_created_event(
        DropZone.for_lake(lake),
        relative,
        schema=schema,
        content_length=lake.size(relative) if exists else 0,
    )
    _send(
        event,
        f"BlobCreated ({schema}) for {relative}",
        message_id=event["id"],
        content_type=event_content_type(schema),
    )


@main.command("queue")
@click.option(
    "--limit",
    default=20,
    show_default=True,
    type=click.IntRange(0),
    help="dead-lettered messages to list",
)
def queue_info(limit: int) -> None:
    """Show the command queue: active, locked and dead-lettered messages, and why."""
    queue = _resource("message_queue")
    counts = queue.counts()
    bound = "" if counts.exact else " (at least)"
    click.echo(queue.display)
    locked = f" (locked {counts.locked})" if counts.locked is not None else ""
    click.echo(f"active {counts.active}{locked}, dead-lettered {counts.dead_letter}{bound}")
    for m in queue.peek_dead_letters(limit):
        when = m.enqueued_time.isoformat(timespec="seconds") if m.enqueued_time else "-"
        click.echo(
            f"  #{m.sequence_number} {m.message_id} enqueued {when} after "
            f"{m.delivery_count} deliveries: {m.dead_letter_reason}: "
            f"{m.dead_letter_error_description or ''}"
        )


@main.group("adf")
def adf_group() -> None:
    """Azure Data Factory: the pipelines of adf/, on the local engine or a real factory."""


class _EchoLog:
    """Progress lines on stderr, for resources that log through a Dagster-style logger."""

    def info(self, message: str) -> None:
        click.echo(message, err=True)

    def warning(self, message: str) -> None:
        click.secho(message, fg="yellow", err=True)

    debug = info


@adf_group.command("deploy")
@click.option("--dry-run", is_flag=True, help="check every file, show what would be deployed")
def adf_deploy(dry_run: bool) -> None:
    """Create or update the linked services, datasets and pipelines of adf/ in the factory
    (MLASSETS_DEPLOYMENT=azure), in dependency order; locally, validate them against the
    local engine."""
    from azure.core.exceptions import AzureError

    from mlassets.lib.adf import ArtifactError

    factory = _resource("data_factory")
    try:
        actions = factory.deploy(log=_EchoLog(), dry_run=dry_run)
    except ArtifactError as exc:
        _fail(str(exc))
    except AzureError as exc:
        _fail(f"Azure refused the deployment: {getattr(exc, 'message', None) or exc}")
    for action in actions:
        click.echo(str(action))
    if factory.engine == "local":
        click.echo(
            f"{len(actions)} artifacts are valid for the local engine; nothing to deploy "
            "(MLASSETS_DEPLOYMENT=local)"
        )
    else:
        verb = "would deploy" if dry_run else "deployed"
        click.echo(f"{verb} {len(actions)} artifacts to data factory {factory.factory_name}")


def _print_run(result) -> None:
    from mlassets.lib.adf import COPY_METRICS

    click.echo(result.summary())
    for a in result.activities:
        took = f" {a.duration_seconds:.1f}s" if a.duration_seconds is not None else ""
        click.echo(f"  {a.name} ({a.type}): {a.status}{took}")
        metrics = a.copy_metrics
        if metrics:
            shown = [f"{k} {metrics[k]:,}" for k in COPY_METRICS if k in metrics]
            click.echo("    " + ", ".join(shown))
        if a.error_message:
            click.echo(f"    error: {a.error_message}")
    if result.url:
        click.echo(f"  {'monitoring' if result.engine == 'azure' else 'run record'}: {result.url}")


@adf_group.command("run")
@click.argument("pipeline")
@click.option("--param", "params", multiple=True, metavar="NAME=VALUE", help="a pipeline parameter")
@click.option(
    "--timeout",
    type=click.FloatRange(0, min_open=True),
    default=None,
    help="seconds before the run is cancelled",
)
@click.option("--json", "as_json", is_flag=True, help="print the whole result as JSON")
def adf_run(pipeline: str, params: tuple[str, ...], timeout: float | None, as_json: bool) -> None:
    """Run PIPELINE of adf/ on the configured engine and print what it did."""
    import json

    from azure.core.exceptions import AzureError

    from mlassets.lib.adf import (
        ArtifactError,
        ParameterError,
        PipelineRunError,
        parse_param_options,
    )

    try:
        values = parse_param_options(params)
    except ParameterError as exc:
        _fail(str(exc))
    factory = _resource("data_factory")
    try:
        result = factory.run_pipeline(pipeline, values, timeout=timeout, log=_EchoLog())
    except (ParameterError, ArtifactError) as exc:
        _fail(str(exc))
    except AzureError as exc:
        _fail(f"Azure refused the run: {getattr(exc, 'message', None) or exc}")
    except PipelineRunError as exc:
        if as_json:
            click.echo(json.dumps(exc.result.to_dict(), indent=2, default=str))
        else:
            _print_run(exc.result)
        click.secho(f"error: {exc}", fg="red", err=True)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2, default=str))
    else:
        _print_run(result)


@adf_group.command("import-incoming")
@click.argument("drop_path")
def adf_import_incoming(drop_path: str) -> None:
    """Run the import_incoming job for DROP_PATH (lake-relative, under incoming/): its
    partition of incoming_events, then the checks on what landed."""
    import dagster as dg

    os.environ.setdefault("DAGSTER_HOME", str(settings.PROJECT_ROOT / "dagster_home"))
    from mlassets.definitions import defs
    from mlassets.defs.ingestion.incoming import INCOMING_DROPS, import_incoming_run_config
    from mlassets.lib.incoming import Drop, DropError

    try:
        drop = Drop.parse(drop_path)
    except DropError as exc:
        _fail(str(exc))
    lake = _resource("lake")
    if not lake.exists(drop.path):
        _fail(f"drop {lake.uri(drop.path)} does not exist")
    with dg.DagsterInstance.get() as instance:
        if not instance.has_dynamic_partition(INCOMING_DROPS.name, drop.name):
            instance.add_dynamic_partitions(INCOMING_DROPS.name, [drop.name])
        result = defs.resolve_job_def("import_incoming").execute_in_process(
            run_config=import_incoming_run_config(drop.path),
            partition_key=drop.name,
            instance=instance,
            raise_on_error=False,
        )
    failed_checks = [c for c in result.get_asset_check_evaluations() if not c.passed]
    for check in failed_checks:
        click.secho(f"check {check.check_name} failed: {check.description}", fg="red", err=True)
    if not result.success:
        failure = next(
            (
                e.step_failure_data.error.message.strip().split("Failure: ", 1)[-1]
                for e in result.all_events
                if e.is_step_failure and e.step_failure_data.error
            ),
            "see the run in the Dagster UI",
        )
        _fail(f"import of {drop.path} failed (run {result.run_id}): {failure}")
    from mlassets.lib.metadata import IncomingMetadata

    recorded = [e for e in result.all_events if e.is_step_materialization]
    imported = IncomingMetadata.from_metadata(recorded[-1]) if recorded else IncomingMetadata()
    copy_run, engine = imported.copy_run
    click.echo(
        f"{drop.path}: {imported.landed_rows:,} events landed, {imported.quarantined_rows:,} "
        f"quarantined ({imported.copy_skipped_rows:,} skipped by the copy) by Data Factory run "
        f"{copy_run} on {engine}; Dagster run {result.run_id}"
    )


from mlassets.cli.publish import publish  # noqa: E402 - a command module that imports main's helpers

main.add_command(publish)

from mlassets.cli.infra import infra_group  # noqa: E402 - a command module registered on main

main.add_command(infra_group)

from mlassets.cli.lineage import lineage  # noqa: E402 - a command module registered on main

main.add_command(lineage)

if __name__ == "__main__":
    main()
