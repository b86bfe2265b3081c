"""Ingestion: the Event Hubs stream (`raw_events`) and its landed Parquet (`landed_events`)."""

import hashlib
import json
from typing import TYPE_CHECKING

import dagster as dg

from mlassets import settings
from mlassets.lib.layout import LANDED_PREFIX, QUARANTINE_PREFIX
from mlassets.lib.metadata import (
    LANDED_EVENTS,
    RAW_EVENTS,
    IncomingMetadata,
    LandingMetadata,
    column_schema,
    lake_uri,
)
from mlassets.roles.eventhub import EventHubResource, PartitionProperties
from mlassets.roles.storage import LakeStorage

if TYPE_CHECKING:
    from mlassets.lib.compaction import Compaction, Policy
    from mlassets.lib.landing import LandingResult


def _hub_state_version(marks: dict[str, int]) -> dg.DataVersion:
    digest = hashlib.sha256(json.dumps(marks, sort_keys=True).encode()).hexdigest()[:16]
    return dg.DataVersion(digest)


@dg.observable_source_asset(
    key=RAW_EVENTS,
    group_name="ingestion",
    description="Digit events on Azure Event Hubs (or the embedded hub): per-partition last "
    "sequence number and the backlog not landed yet.",
    tags={"mlassets/role": "event-source"},
)
def raw_events(event_hub: EventHubResource, lake: LakeStorage) -> dg.ObserveResult:
    from mlassets.lib.landing import landed_ranges, watermarks

    return observe_hub(
        event_hub.hub_name, event_hub.all_partition_properties(), watermarks(landed_ranges(lake))
    )


def observe_hub(
    hub_name: str,
    partitions: list[PartitionProperties],
    progress: dict[str, int],
    progress_label: str = "landed_through",
) -> dg.ObserveResult:
    """From partition properties only: the cost does not grow with the backlog.

    `progress` is the last sequence number handled per partition: landed (read from the
    lake) or, from the sensor, requested (its cursor), as `progress_label` says.
    """
    rows, last_seqs, total_backlog = [], {}, 0
    for p in partitions:
        done = max(progress.get(p.partition_id, -1), p.beginning_sequence_number - 1)
        backlog_n = max(0, p.last_enqueued_sequence_number - done)
        total_backlog += backlog_n
        last_seqs[p.partition_id] = p.last_enqueued_sequence_number
        rows.append(
            dg.TableRecord(
                {
                    "partition": p.partition_id,
                    "beginning_seq": p.beginning_sequence_number,
                    "last_seq": p.last_enqueued_sequence_number,
                    progress_label: progress.get(p.partition_id, -1),
                    "backlog": backlog_n,
                    "last_enqueued": p.last_enqueued_time.isoformat()
                    if p.last_enqueued_time
                    else "",
                }
            )
        )
    return dg.ObserveResult(
        data_version=_hub_state_version(last_seqs),
        metadata={
            "hub": hub_name,
            "partitions": dg.MetadataValue.table(
                rows,
                schema=dg.TableSchema(
                    columns=[
                        dg.TableColumn("partition", "string"),
                        dg.TableColumn("beginning_seq", "int"),
                        dg.TableColumn("last_seq", "int"),
                        dg.TableColumn(progress_label, "int"),
                        dg.TableColumn("backlog", "int"),
                        dg.TableColumn("last_enqueued", "string"),
                    ]
                ),
            ),
            "backlog": dg.MetadataValue.int(total_backlog),
            "last_sequence_numbers": dg.MetadataValue.json(last_seqs),
        },
    )


class RangeConfig(dg.Config):
    partition_id: str
    first: int
    last: int


class LandingConfig(dg.Config):
    """Which ranges to land. Empty (the UI's Materialize button): everything new."""

    ranges: list[RangeConfig] = []
    #: Merge small landed files and checkpoint the claims after landing (lib/compaction).
    compact: bool = True


@dg.asset(
    key=LANDED_EVENTS,
    deps=[raw_events],
    group_name="ingestion",
    description="Validated, typed digit events as Parquet, one file per (partition, sequence "
    f"range) under `{LANDED_PREFIX}/`; refused events go to `{QUARANTINE_PREFIX}/` with a reason. "
    "After landing, small files are merged into bigger ones named the same way and the claims "
    "are checkpointed, so the file count stays bounded.",
    kinds={"parquet", "azure"},
    tags={"mlassets/role": "lake"},
    # One landing at a time, hub or drop (dagster_home/dagster.yaml): a courtesy that
    # saves duplicated work; exactly once comes from the claims in the lake (lib/landing).
    pool="landing",
)
def landed_events(
    context: dg.AssetExecutionContext,
    config: LandingConfig,
    event_hub: EventHubResource,
    lake: LakeStorage,
) -> dg.MaterializeResult:
    from mlassets.lib.landing import EventRange, land, landed_ranges, watermarks

    results = land(
        event_hub,
        lake,
        [EventRange(r.partition_id, r.first, r.last) for r in config.ranges] or None,
        max_size=settings.max_range_events(),
        run_id=context.run_id,
        log=context.log.info,
    )
    compacted = compact_after_landing(context, lake) if config.compact else {}
    landed = landed_ranges(lake)
    return dg.MaterializeResult(
        metadata={
            **landing_metadata(
                results,
                lake,
                # A rewrite finishes another run's claim: its rows may be counted already.
                landed_table_rows(
                    context.instance, lake, sum(r.landed_rows for r in results if not r.rewrite)
                ),
            ).to_metadata(),
            **compacted,
        },
        data_version=_hub_state_version(watermarks(landed)),
    )


#: None: `compaction.Policy()`'s defaults (the reliability tests set smaller blocks).
COMPACTION_POLICY: "Policy | None" = None


def compact_after_landing(
    context: dg.AssetExecutionContext, lake: LakeStorage
) -> dict[str, dg.MetadataValue]:
    """Compaction's metadata. Maintenance: a failure is logged and recorded, and the landing,
    already written, still succeeds (the next run compacts what this one left)."""
    from mlassets.lib import compaction

    try:
        done = compaction.compact(
            lake,
            COMPACTION_POLICY or compaction.Policy(),
            log=context.log.info,
            run_id=context.run_id,
        )
    except Exception as exc:  # reported below: compaction never fails a landing
        context.log.warning(f"compaction failed, left to the next landing: {exc!r}")
        return {"compaction": dg.MetadataValue.md(f"Compaction failed: `{exc!r}`")}
    return compaction_metadata(done)


def compaction_metadata(done: "Compaction") -> dict[str, dg.MetadataValue]:
    """What a person reads: live landed files per partition before and after, and the cost."""
    rows = "".join(
        f"| {p.partition_id} | {p.files_before} | {p.files_after} | {len(p.merged)} "
        f"| {p.bytes_read / 1e6:,.1f} | {p.bytes_written / 1e6:,.1f} | {p.claims_removed} "
        f"| {p.checkpoint} |\n"
        for p in done.partitions
    )
    skipped = [s for p in done.partitions for s in p.skipped]
    return {
        "compaction": dg.MetadataValue.md(
            "| partition | files before | files after | merges | MB read | MB written "
            "| claims removed | checkpoint |\n|---|---|---|---|---|---|---|---|\n"
            + rows
            + (f"\nSkipped (retried next landing): {'; '.join(skipped)}" if skipped else "")
        ),
        "landed_files": dg.MetadataValue.int(done.total("files_after")),
        "compaction_merges": dg.MetadataValue.int(done.merges),
        "compaction_bytes_written": dg.MetadataValue.int(done.total("bytes_written")),
        "compaction_seconds": dg.MetadataValue.float(round(done.seconds, 3)),
    }


def landed_table_rows(instance: dg.DagsterInstance, lake: LakeStorage, added: int) -> int:
    """Rows in the landed table once `added` more have landed (a hub landing or a drop's
    import): the newest landing's total plus the drops imported since, carried through the
    event log; counted from Parquet footers only when there is no previous total."""
    from mlassets.lib.landing import landed_paths
    from mlassets.lib.tables import parquet_rows

    previous = LandingMetadata.latest_recorded(instance)
    if previous is not None and previous.metadata.row_count is not None:
        imports = IncomingMetadata.records(instance, previous.storage_id, limit=10_000)
        added += sum(i.metadata.net_new_rows for i in imports)
        return previous.metadata.row_count + added
    # Live files only: a killed compaction's small files hold rows its merged file holds.
    return parquet_rows(lake, landed_paths(lake))


def landing_metadata(
    results: list["LandingResult"], lake: LakeStorage, row_count: int
) -> LandingMetadata:
    from mlassets.lib.events import LANDED_SCHEMA

    landed = sum(r.landed_rows for r in results)
    quarantined = sum(r.quarantined_rows for r in results)
    seconds = sum(r.seconds for r in results)
    events = sum(r.read_events for r in results)
    reasons: dict[str, int] = {}
    for r in results:
        for reason, n in r.reasons.items():
            reasons[reason] = reasons.get(reason, 0) + n
    return LandingMetadata(
        landed_rows=landed,
        quarantined_rows=quarantined,
        quarantine_ratio=quarantined / events if events else 0.0,
        expired_events=sum(r.expired for r in results),
        files_written=len(results),
        bytes_written=sum(r.bytes_written for r in results),
        events_per_second=round(events / seconds, 1) if seconds else 0.0,
        ranges=dg.MetadataValue.table(
            [
                dg.TableRecord(
                    {
                        "partition": r.range.partition_id,
                        "first_seq": r.range.first,
                        "last_seq": r.range.last,
                        "landed": r.landed_rows,
                        "quarantined": r.quarantined_rows,
                        "bytes": r.bytes_written,
                        "rewrite": r.rewrite,
                    }
                )
                for r in results
            ],
            schema=dg.TableSchema(
                columns=[
                    dg.TableColumn("partition", "string"),
                    dg.TableColumn("first_seq", "int"),
                    dg.TableColumn("last_seq", "int"),
                    dg.TableColumn("landed", "int"),
                    dg.TableColumn("quarantined", "int"),
                    dg.TableColumn("bytes", "int"),
                    dg.TableColumn("rewrite", "bool"),
                ]
            ),
        ),
        quarantine_reasons=reasons_markdown(reasons, "events", "No event was quarantined."),
        # Read by the asset checks: exactly the files this materialization wrote.
        files=[r.range.landed_path for r in results],
        quarantine_path=lake.uri(QUARANTINE_PREFIX),
        row_count=row_count,
        column_schema=column_schema(LANDED_SCHEMA),
        uri=lake_uri(lake.uri(LANDED_PREFIX)),
    )


def reasons_markdown(reasons: dict[str, int], unit: str, none: str) -> str:
    """Quarantine reasons as a table, most frequent first."""
    if not reasons:
        return none
    rows = sorted(reasons.items(), key=lambda kv: -kv[1])
    return f"| reason | {unit} |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in rows)


ingest_events = dg.define_asset_job(
    "ingest_events",
    selection=dg.AssetSelection.assets(raw_events.key, landed_events),
    description="Observe the event hub, then land its new events as Parquet (the sensor "
    "passes exact ranges).",
)
