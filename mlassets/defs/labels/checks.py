"""Checks on the labels and their change batches."""

from typing import TYPE_CHECKING

import dagster as dg

from mlassets.defs.labels.assets import cdc_deltas, labels
from mlassets.lib.lazy import lazy
from mlassets.lib.metadata import CaptureMetadata
from mlassets.roles.storage import LakeStorage

# Loaded when a check runs, not when the code location loads.
pa = lazy("pyarrow")
pc = lazy("pyarrow.compute")
cdc = lazy("mlassets.lib.cdc")

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.compute as pc

    from mlassets.lib import cdc


#: How many offending keys a failed check lists (all of them are counted).
MAX_LISTED_KEYS = 50


def invalid_labels(table: "pa.Table") -> "pa.Table":
    """Rows whose label is NULL or outside 0..9, sorted by sample_id."""
    label = table["label"]
    outside = pc.or_(pc.less(label, 0), pc.greater(label, 9))
    bad = table.filter(pc.fill_null(pc.or_kleene(pc.is_null(label), outside), True))
    return bad.take(pc.sort_indices(bad["sample_id"]))


def _label_text(label: int | None) -> str:
    return "NULL" if label is None else str(label)


def _keys_table(rows: list[dict], columns: list[tuple[str, str]]) -> dg.MetadataValue:
    return dg.MetadataValue.table(
        [dg.TableRecord(r) for r in rows],
        schema=dg.TableSchema(columns=[dg.TableColumn(name, kind) for name, kind in columns]),
    )


@dg.asset_check(
    asset=labels,
    name="label_domain",
    description="Every label is a digit: not NULL and within 0..9. A failure lists the "
    "offending sample ids and their labels.",
    blocking=True,
)
def labels_label_domain(lake: LakeStorage) -> dg.AssetCheckResult:
    table = cdc.read_labels_table(lake, ["sample_id", "label"])
    bad = invalid_labels(table)
    listed = bad.slice(0, MAX_LISTED_KEYS).to_pylist()
    shown = ", ".join(f"{r['sample_id']} ({_label_text(r['label'])})" for r in listed[:10])
    more = f" and {bad.num_rows - 10} more" if bad.num_rows > 10 else ""
    return dg.AssetCheckResult(
        passed=bad.num_rows == 0,
        metadata={
            "rows_checked": dg.MetadataValue.int(table.num_rows),
            "invalid_rows": dg.MetadataValue.int(bad.num_rows),
            "offending_keys": _keys_table(
                [{"sample_id": r["sample_id"], "label": _label_text(r["label"])} for r in listed],
                [("sample_id", "string"), ("label", "string")],
            ),
            "offending_sample_ids": dg.MetadataValue.json([r["sample_id"] for r in listed]),
        },
        description=(
            f"{bad.num_rows} of {table.num_rows} labels are NULL or outside 0..9: {shown}{more}"
            if bad.num_rows
            else f"all {table.num_rows} labels are digits 0..9"
        ),
    )


@dg.asset_check(
    asset=labels,
    name="unique_keys",
    description="sample_id is unique in the labels table (one current label per sample).",
    blocking=True,
)
def labels_unique_keys(lake: LakeStorage) -> dg.AssetCheckResult:
    ids = cdc.read_labels_table(lake, ["sample_id"])
    counts = ids.group_by("sample_id").aggregate([("sample_id", "count")])
    dupes = counts.filter(pc.greater(counts["sample_id_count"], 1))
    dupes = dupes.take(pc.sort_indices(dupes["sample_id"]))
    listed = dupes.slice(0, MAX_LISTED_KEYS).to_pylist()
    return dg.AssetCheckResult(
        passed=dupes.num_rows == 0,
        metadata={
            "rows_checked": dg.MetadataValue.int(ids.num_rows),
            "duplicate_keys": dg.MetadataValue.int(dupes.num_rows),
            "offending_keys": _keys_table(
                [{"sample_id": r["sample_id"], "rows": r["sample_id_count"]} for r in listed],
                [("sample_id", "string"), ("rows", "int")],
            ),
        },
        description=(
            f"{dupes.num_rows} sample ids occur more than once: "
            + ", ".join(f"{r['sample_id']} ({r['sample_id_count']}x)" for r in listed[:10])
            if dupes.num_rows
            else f"all {ids.num_rows} sample ids are unique"
        ),
    )


def validate_batch_file(lake: LakeStorage, path: str) -> list[str]:
    """Problems with one change batch: its schema, and LSNs outside the range it is named by."""
    rng = cdc.LsnRange.from_path(path)
    if rng is None:
        return [f"{path}: not named lsn=<from>-<to>.parquet"]
    schema = lake.read_schema(path)
    if not schema.equals(cdc.CHANGE_SCHEMA, check_metadata=False):
        return [f"{path}: schema differs from the change schema: {schema}"]
    lsns = lake.read_parquet(path, columns=["start_lsn"])["start_lsn"]
    if len(lsns) and (pc.min(lsns).as_py() < rng.first or pc.max(lsns).as_py() > rng.last):
        return [f"{path}: LSNs outside 0x{rng.first}..0x{rng.last}"]
    return []


@dg.asset_check(
    asset=cdc_deltas,
    name="lsn_contiguity",
    description="The change batches that the labels table depends on (all of them after its "
    "latest snapshot) cover consecutive LSN ranges with no gap, and the batches written by the "
    "latest capture hold only LSNs of their range. Overlaps (two captures at once) warn.",
    blocking=True,
)
def cdc_deltas_lsn_contiguity(
    context: dg.AssetCheckExecutionContext, lake: LakeStorage
) -> dg.AssetCheckResult:
    live, links, snapshot_lsn = cdc.live_chain(lake)
    latest = CaptureMetadata.latest(context.instance)
    files = latest.files if latest else []
    problems = [p for f in files for p in validate_batch_file(lake, f)]
    problems += [f"no batch covers LSNs 0x{a}..0x{b}" for a, b in links.gaps]
    overlaps = [f"{a} overlaps {b}" for a, b in links.overlaps]
    failed = bool(problems or overlaps)
    return dg.AssetCheckResult(
        passed=not failed,
        severity=dg.AssetCheckSeverity.ERROR if problems else dg.AssetCheckSeverity.WARN,
        metadata={
            "batches_checked": dg.MetadataValue.int(len(live)),
            "files_validated": dg.MetadataValue.int(len(files)),
            "first_lsn": dg.MetadataValue.text(f"0x{live[0].first}" if live else "-"),
            "last_lsn": dg.MetadataValue.text(f"0x{live[-1].last}" if live else "-"),
            "after_snapshot_lsn": dg.MetadataValue.text(
                f"0x{snapshot_lsn}" if snapshot_lsn else "-"
            ),
            "gaps": dg.MetadataValue.json([[f"0x{a}", f"0x{b}"] for a, b in links.gaps]),
            "problems": dg.MetadataValue.md(
                "\n".join(f"- {p}" for p in problems + overlaps) or "none"
            ),
        },
    )


LABELS_CHECKS = [labels_label_domain, labels_unique_keys, cdc_deltas_lsn_contiguity]
