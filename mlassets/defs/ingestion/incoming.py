"""Importing drops from the incoming zone: Data Factory copies, we land (job `import_incoming`).

The job runs pipeline `copy_incoming_to_landed` on the configured Data Factory (the local
engine or a real factory) for one drop, lands the staged rows as landed events and quarantines
the rest (see `mlassets.lib.incoming`). It records the result as a materialization of
`landed_events`, with the copy's metrics, the run id and a link to the run.
"""

import dagster as dg
from pydantic import Field

from mlassets.defs.ingestion.assets import (
    LANDING_POOL_TAG,
    landed_events,
    landed_table_rows,
    reasons_markdown,
)
from mlassets.lib.lazy import lazy
from mlassets.lib.metadata import IncomingMetadata, column_schema, lake_uri
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
    total = landed_table_rows(context.instance, lake, result.landed_rows - result.replaced_rows)
    context.log_event(
        dg.AssetMaterialization(
            asset_key=landed_events.key,
            description=f"import of {drop.path} (Data Factory run {result.run.run_id})",
            metadata=import_metadata(result, lake, total).to_metadata(),
        )
    )


def import_metadata(
    result: "incoming.ImportResult", lake: LakeStorage, total: int
) -> IncomingMetadata:
    """`total`: the landed table's rows after this import (its `dagster/row_count`)."""
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
        # Read by the landed_events checks: exactly the files this import wrote.
        files=[result.drop.landed_path],
        quarantine_path=lake.uri(landing.QUARANTINE_PREFIX),
        pipeline_run=run_metadata(result.run),
        row_count=total,
        column_schema=column_schema(LANDED_SCHEMA),
        uri=lake_uri(lake.uri(result.drop.landed_path)),
    )


@dg.job(
    name="import_incoming",
    description="Import one drop of digit events from the incoming zone: Data Factory copies it "
    "(copy_incoming_to_landed), then its events land like hub events.",
    tags=LANDING_POOL_TAG,
)
def import_incoming() -> None:
    import_incoming_drop()
