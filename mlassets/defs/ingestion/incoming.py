"""Importing drops from the incoming zone: Data Factory copies, we land (job `import_incoming`).

The job runs pipeline `copy_incoming_to_landed` on the configured Data Factory (the local
engine or a real factory) for one drop, lands the staged rows as landed events and quarantines
the rest (see `mlassets.lib.incoming`). It records the result as a materialization of
`landed_events`, with the copy's metrics, the run id and a link to the run.
"""

import dagster as dg
from pydantic import Field

from mlassets.defs.ingestion.assets import LANDING_POOL_TAG, landed_events
from mlassets.lib.lazy import lazy
from mlassets.roles.datafactory import DataFactoryResource, run_metadata
from mlassets.roles.storage import LakeStorage

# Loaded when a run or tick needs them, not when the code location loads.
adf = lazy("mlassets.lib.adf")
incoming = lazy("mlassets.lib.incoming")
landing = lazy("mlassets.lib.landing")


class ImportIncomingConfig(dg.Config):
    drop_path: str = Field(
        description="the drop, relative to the lake root: incoming/<...>/<file>.csv|.jsonl|"
        ".ndjson|.json"
    )
    timeout_seconds: float | None = Field(
        default=None,
        description="how long the copy may take (default: the Data Factory resource's); on "
        "timeout the remote run is cancelled",
    )


def _previous_total(instance: dg.DagsterInstance) -> int:
    event = instance.get_latest_materialization_event(landed_events.key)
    if event is None or event.asset_materialization is None:
        return 0
    value = event.asset_materialization.metadata.get("total_landed_rows")
    return int(value.value) if value is not None else 0


@dg.op(
    name="import_incoming_drop",
    description="Copy one drop from the incoming zone with Data Factory (pipeline "
    "copy_incoming_to_landed), land its events and quarantine the rest.",
    tags={"kind": "azure"},
)
def import_incoming_drop(
    context: dg.OpExecutionContext,
    config: ImportIncomingConfig,
    data_factory: DataFactoryResource,
    lake: LakeStorage,
) -> None:
    try:
        drop = incoming.Drop.parse(config.drop_path)
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
    total = _previous_total(context.instance) + result.landed_rows - result.replaced_rows
    context.log_event(
        dg.AssetMaterialization(
            asset_key=landed_events.key,
            description=f"import of {drop.path} (Data Factory run {result.run.run_id})",
            metadata=import_metadata(result, lake, total),
        )
    )


def import_metadata(result: "incoming.ImportResult", lake: LakeStorage, total: int) -> dict:
    rows = result.landed_rows + result.quarantined_rows
    reasons = result.reasons
    return {
        "drop": dg.MetadataValue.path(lake.uri(result.drop.path)),
        "landed_rows": dg.MetadataValue.int(result.landed_rows),
        "quarantined_rows": dg.MetadataValue.int(result.quarantined_rows),
        "copy_skipped_rows": dg.MetadataValue.int(result.copy_skipped),
        "quarantine_ratio": dg.MetadataValue.float(result.quarantined_rows / rows if rows else 0.0),
        "total_landed_rows": dg.MetadataValue.int(total),
        "dagster/row_count": dg.MetadataValue.int(result.landed_rows),
        "rewrite": dg.MetadataValue.bool(result.rewrite),
        "files_written": dg.MetadataValue.int(1 + (1 if result.quarantined_rows else 0)),
        "bytes_written": dg.MetadataValue.int(result.bytes_written),
        "seconds": dg.MetadataValue.float(round(result.seconds, 3)),
        "quarantine_reasons": dg.MetadataValue.md(
            "| reason | rows |\n|---|---|\n"
            + "".join(f"| {k} | {v} |\n" for k, v in sorted(reasons.items(), key=lambda kv: -kv[1]))
            if reasons
            else "No row was quarantined."
        ),
        # Read by the landed_events checks: exactly the files this import wrote.
        "files": dg.MetadataValue.json([result.drop.landed_path]),
        "lake_path": dg.MetadataValue.path(lake.uri(result.drop.landed_path)),
        "quarantine_path": dg.MetadataValue.path(lake.uri(landing.QUARANTINE_PREFIX)),
        **run_metadata(result.run),
    }


@dg.job(
    name="import_incoming",
    description="Import one drop of digit events from the incoming zone: Data Factory copies it "
    "(copy_incoming_to_landed), then its events land like hub events.",
    tags=LANDING_POOL_TAG,
)
def import_incoming() -> None:
    import_incoming_drop()
