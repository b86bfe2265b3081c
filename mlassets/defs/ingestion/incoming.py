"""`incoming_events`: drops from the incoming zone, copied by Data Factory and landed like hub
events (job `import_incoming`).

Each drop is a partition of its own: the dynamic partitions `incoming_drops`, keyed by the
drop's file-name-safe name (`Drop.name`: its path with unsafe characters replaced, plus a
hash of the path, so two drops never share a key). The Service Bus sensor adds the partition
when a BlobCreated notification arrives and requests the run for it; `mlassets adf
import-incoming` does the same by hand; the UI's Materialize of a partition finds the drop
from its key.

A materialization runs pipeline `copy_incoming_to_landed` on the configured Data Factory (the
local engine or a real factory), lands the staged rows under
`landed/events/partition=incoming/` and quarantines the rest (see `mlassets.lib.incoming`).
The blocking schema check then reads back the file that partition wrote, with the landed
contract's own validation, so nothing downstream (training_dataset, inference_outputs)
reads a drop that broke it.
"""

import dagster as dg
from pydantic import Field

from mlassets.defs.ingestion.assets import reasons_markdown
from mlassets.defs.ingestion.checks import quarantine_check_result, validate_landed_file
from mlassets.defs.quality import QualityPolicy
from mlassets.lib.layout import INCOMING_PREFIX
from mlassets.lib.lazy import lazy
from mlassets.lib.metadata import INCOMING_EVENTS, IncomingMetadata, column_schema, lake_uri
from mlassets.roles.datafactory import DataFactoryResource, run_metadata
from mlassets.roles.storage import LakeStorage

# Loaded when a run or tick needs them, not when the code location loads.
adf = lazy("mlassets.lib.adf")
incoming = lazy("mlassets.lib.incoming")
landing = lazy("mlassets.lib.landing")

INCOMING_DROPS = dg.DynamicPartitionsDefinition(name="incoming_drops")


class ImportIncomingConfig(dg.Config):
    drop_path: str | None = Field(
        default=None,
        description="the drop, relative to the lake root: incoming/<...>/<file>.csv|.jsonl|"
        ".ndjson|.json. Empty: the drop in incoming/ whose partition key this run materializes",
    )
    timeout_seconds: float | None = Field(
        default=None,
        description="how long the copy may take (default: the Data Factory resource's); on "
        "timeout the remote run is cancelled",
    )


def drop_partition_key(drop_path: str) -> str:
    """The partition of a drop (raises `DropError` for a path that is not one)."""
    return incoming.Drop.parse(drop_path).name


def import_incoming_run_config(drop_path: str) -> dict:
    """Run config of the `import_incoming` job for one drop, a lake-relative path under
    `incoming/`: the one place that knows the shape of that job's config."""
    return {"ops": {INCOMING_EVENTS.to_python_identifier(): {"config": {"drop_path": drop_path}}}}


def find_drop(lake: LakeStorage, partition_key: str, drop_path: str | None) -> "incoming.Drop":
    """The drop a run imports: the configured path, which must belong to the run's partition,
    or, with none configured, the file in the drop zone whose partition key it is."""
    if drop_path:
        drop = incoming.Drop.parse(drop_path)
        if drop.name != partition_key:
            raise incoming.DropError(
                f"drop {drop.path!r} is partition {drop.name!r}, not {partition_key!r}"
            )
        return drop
    for path in lake.glob(f"{INCOMING_PREFIX}/**"):
        try:
            drop = incoming.Drop.parse(path)
        except incoming.DropError:
            continue
        if drop.name == partition_key:
            return drop
    raise incoming.DropError(
        f"no file in {lake.uri(INCOMING_PREFIX)} has partition key {partition_key!r}: it was "
        "moved or deleted"
    )


@dg.asset(
    key=INCOMING_EVENTS,
    partitions_def=INCOMING_DROPS,
    group_name="ingestion",
    description="Digit events from one drop in `incoming/` (a partition per drop): copied by the "
    "Data Factory pipeline copy_incoming_to_landed, landed with the landed schema under "
    "`landed/events/partition=incoming/`, refused rows quarantined with a reason.",
    kinds={"parquet", "azure"},
    tags={"mlassets/role": "lake"},
    # One landing at a time, hub or drop (dagster_home/dagster.yaml).
    pool="landing",
)
def incoming_events(
    context: dg.AssetExecutionContext,
    config: ImportIncomingConfig,
    data_factory: DataFactoryResource,
    lake: LakeStorage,
) -> dg.MaterializeResult:
    try:
        drop = find_drop(lake, context.partition_key, config.drop_path)
        result = incoming.import_drop(data_factory, lake, drop, config.timeout_seconds, context.log)
    except incoming.DropError as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from exc
    except adf.PipelineRunError as exc:
        raise dg.Failure(description=str(exc), metadata=run_metadata(exc.result)) from exc
    context.log.info(
        f"{drop.path}: {result.staged_rows} rows copied by run {result.run.run_id} "
        f"({result.copy_skipped} skipped by the copy); {result.landed_rows} landed, "
        f"{result.quarantined_rows} quarantined{', rewritten' if result.rewrite else ''}"
    )
    return dg.MaterializeResult(metadata=import_metadata(result, lake).to_metadata())


def import_metadata(result: "incoming.ImportResult", lake: LakeStorage) -> IncomingMetadata:
    """What one import recorded. Its `dagster/row_count` is the partition's table, the drop's
    landed file; the landed table's total is landed_events' (imports add `net_new_rows`)."""
    from mlassets.lib.events import LANDED_SCHEMA

    rows = result.landed_rows + result.quarantined_rows
    return IncomingMetadata(
        drop=lake.uri(result.drop.path),
        landed_rows=result.landed_rows,
        quarantined_rows=result.quarantined_rows,
        copy_skipped_rows=result.copy_skipped,
        replaced_rows=result.replaced_rows,
        quarantine_ratio=result.quarantined_rows / rows if rows else 0.0,
        rewrite=result.rewrite,
        files_written=1 + (1 if result.quarantined_rows else 0),
        bytes_written=result.bytes_written,
        seconds=round(result.seconds, 3),
        quarantine_reasons=reasons_markdown(result.reasons, "rows", "No row was quarantined."),
        # Read by the checks below: exactly the file this import wrote.
        files=[result.drop.landed_path],
        quarantine_path=lake.uri(landing.QUARANTINE_PREFIX),
        pipeline_run=run_metadata(result.run),
        row_count=result.landed_rows,
        column_schema=column_schema(LANDED_SCHEMA),
        uri=lake_uri(lake.uri(result.drop.landed_path)),
    )


def latest_import(instance: dg.DagsterInstance, partition_key: str) -> IncomingMetadata | None:
    """What the newest import of one drop recorded."""
    return IncomingMetadata.latest(instance, partition=partition_key)


@dg.asset_check(
    asset=incoming_events,
    name="schema_and_ranges",
    description="The file the run's drop (its partition) landed has the landed schema, 64 "
    "pixels in 0..16 per row, non-empty sample ids and unique sequence numbers: landed_events' "
    "own check. Blocking: a drop that fails it fails its run, and nothing downstream reads it.",
    blocking=True,
)
def incoming_events_schema_and_ranges(
    context: dg.AssetCheckExecutionContext, lake: LakeStorage
) -> dg.AssetCheckResult:
    imported = latest_import(context.instance, context.partition_key)
    if imported is None:
        return dg.AssetCheckResult(
            passed=False, description=f"drop {context.partition_key!r} has not been imported"
        )
    problems = [p for f in imported.files for p in validate_landed_file(lake, f)]
    return dg.AssetCheckResult(
        passed=not problems,
        metadata={
            "drop": dg.MetadataValue.path(imported.drop or "-"),
            "files_checked": dg.MetadataValue.int(len(imported.files)),
            "problems": dg.MetadataValue.md("\n".join(f"- {p}" for p in problems) or "none"),
        },
        description=f"{len(problems)} problem(s) in the landed file" if problems else None,
    )


@dg.asset_check(
    asset=incoming_events,
    name="quarantine_ratio",
    description="Share of this drop's rows quarantined (by the copy or the decoder) stays at or "
    "below the `quality` resource's max_quarantine_ratio (MLASSETS_MAX_QUARANTINE_RATIO).",
)
def incoming_events_quarantine_ratio(
    context: dg.AssetCheckExecutionContext, quality: QualityPolicy
) -> dg.AssetCheckResult:
    imported = latest_import(context.instance, context.partition_key) or IncomingMetadata()
    return quarantine_check_result(
        imported.quarantined_rows, imported.landed_rows, quality.max_quarantine_ratio, "rows"
    )


INCOMING_CHECKS = [incoming_events_schema_and_ranges, incoming_events_quarantine_ratio]

import_incoming = dg.define_asset_job(
    "import_incoming",
    selection=dg.AssetSelection.assets(incoming_events),
    description="Import one drop of digit events from the incoming zone (one partition of "
    "incoming_events): Data Factory copies it (copy_incoming_to_landed), then its events land "
    "like hub events and the blocking schema check reads back what landed.",
)
