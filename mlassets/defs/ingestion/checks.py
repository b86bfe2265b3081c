"""Checks on the landed events.

The landed-events checks read back exactly the files the latest materialization wrote (its
`LandingMetadata.files`), so they verify what is on storage, at a cost that does not grow with
the lake. Thresholds come from the `quality` resource (QualityPolicy), shown in the UI.
"""

from typing import TYPE_CHECKING

import dagster as dg

from mlassets.defs.ingestion.assets import landed_events
from mlassets.defs.quality import QualityPolicy
from mlassets.lib.lazy import lazy
from mlassets.lib.metadata import LandingMetadata
from mlassets.roles.storage import LakeStorage

# Loaded when a check runs, not when the code location loads.
np = lazy("numpy")
pc = lazy("pyarrow.compute")
events = lazy("mlassets.lib.events")
landing = lazy("mlassets.lib.landing")

if TYPE_CHECKING:
    import numpy as np
    import pyarrow.compute as pc

    from mlassets.lib import events, landing


def validate_landed_file(
    lake: LakeStorage, path: str, only: tuple[int, int] | None = None
) -> list[str]:
    """Problems with one landed file (with `only`, its rows of sequence numbers first..last);
    empty when it honours the landed contract."""
    problems: list[str] = []
    schema = lake.read_schema(path)
    if not schema.equals(events.LANDED_SCHEMA, check_metadata=False):
        expected = {f.name: str(f.type) for f in events.LANDED_SCHEMA}
        actual = {f.name: str(f.type) for f in schema}
        diff = {
            k: (expected.get(k), actual.get(k))
            for k in expected.keys() | actual.keys()
            if expected.get(k) != actual.get(k)
        }
        return [f"{path}: schema differs (expected, actual): {diff}"]
    t = lake.read_parquet(path)
    if only is not None:
        seq_all = t["sequence_number"]
        t = t.filter(pc.and_(pc.greater_equal(seq_all, only[0]), pc.less_equal(seq_all, only[1])))
    if t.num_rows == 0:
        return problems
    rng = landing.EventRange.from_path(path)
    seq = t["sequence_number"].to_numpy()
    if rng is not None and (seq.min() < rng.first or seq.max() > rng.last):
        problems.append(f"{path}: sequence numbers outside {rng.first}..{rng.last}")
    if len(np.unique(seq)) != len(seq):
        problems.append(f"{path}: duplicate sequence numbers")
    lengths = pc.list_value_length(t["pixels"]).to_numpy()
    if (bad := np.flatnonzero(lengths != events.PIXELS)).size:
        problems.append(
            f"{path}: {bad.size} rows without {events.PIXELS} pixels (seq {seq[bad[:5]].tolist()})"
        )
    flat = pc.list_flatten(t["pixels"]).to_numpy()
    if flat.size and flat.max() > events.PIXEL_MAX:
        problems.append(f"{path}: pixel values above {events.PIXEL_MAX}")
    empty = pc.equal(pc.utf8_length(t["sample_id"]), 0).to_numpy(zero_copy_only=False)
    if empty.any():
        problems.append(f"{path}: {int(empty.sum())} empty sample ids")
    return problems


def recorded_files_now(lake: LakeStorage, files: list[str]) -> dict[str, tuple[int, int] | None]:
    """Where the rows of the files a landing recorded are now: the file itself, or, once a
    compaction merged it, the live file holding its range (with the span to read of it)."""
    live = landing.live_files(lake)
    live_paths = {r.landed_path for r in live}
    out: dict[str, tuple[int, int] | None] = {}
    for path in files:
        rng = landing.EventRange.from_path(path)
        if rng is None or path in live_paths:
            out[path] = None
            continue
        held = landing.covering([r for r in live if r.partition_id == rng.partition_id], rng)
        if held is None:
            out[path] = None  # gone and not merged: reading it reports the problem
            continue
        if held.landed_path in out and out[held.landed_path] is None:
            continue  # read whole already
        span = out.get(held.landed_path) or (rng.first, rng.last)
        out[held.landed_path] = (min(span[0], rng.first), max(span[1], rng.last))
    return out


@dg.asset_check(
    asset=landed_events,
    name="schema_and_ranges",
    description="The files written by the latest landing have the landed schema, 64 pixels in "
    "0..16 per row, non-empty sample ids, and unique sequence numbers inside their file's range.",
    blocking=True,
)
def landed_events_schema_and_ranges(
    context: dg.AssetCheckExecutionContext, lake: LakeStorage
) -> dg.AssetCheckResult:
    latest = LandingMetadata.latest(context.instance)
    files = latest.files if latest else []
    problems = [
        p
        for path, only in recorded_files_now(lake, files).items()
        for p in validate_landed_file(lake, path, only)
    ]
    partition_gaps = {
        p: g for p, rs in landing.landed_ranges(lake).items() if (g := landing.gaps(rs))
    }
    return dg.AssetCheckResult(
        passed=not problems,
        metadata={
            "files_checked": dg.MetadataValue.int(len(files)),
            "problems": dg.MetadataValue.md("\n".join(f"- {p}" for p in problems) or "none"),
            # Gaps are legitimate when the hub's retention expired events before landing,
            # so they are reported here rather than failing the check.
            "sequence_gaps": dg.MetadataValue.json(
                {p: [list(g) for g in gs] for p, gs in partition_gaps.items()}
            ),
        },
    )


@dg.asset_check(
    asset=landed_events,
    name="quarantine_ratio",
    description="Share of events quarantined by the latest landing stays at or below the "
    "`quality` resource's max_quarantine_ratio (MLASSETS_MAX_QUARANTINE_RATIO).",
)
def landed_events_quarantine_ratio(
    context: dg.AssetCheckExecutionContext, quality: QualityPolicy
) -> dg.AssetCheckResult:
    latest = LandingMetadata.latest(context.instance) or LandingMetadata()
    return quarantine_check_result(
        latest.quarantined_rows, latest.landed_rows, quality.max_quarantine_ratio, "events"
    )


def quarantine_check_result(
    quarantined: int, landed: int, limit: float, unit: str
) -> dg.AssetCheckResult:
    """The quarantine-ratio verdict, recorded the same way for hub landings and drops."""
    total = landed + quarantined
    ratio = quarantined / total if total else 0.0
    return dg.AssetCheckResult(
        passed=ratio <= limit,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "quarantine_ratio": dg.MetadataValue.float(round(ratio, 6)),
            "threshold": dg.MetadataValue.float(limit),
            "quarantined_rows": dg.MetadataValue.int(quarantined),
            unit: dg.MetadataValue.int(total),
        },
        description=f"{quarantined} of {total} {unit} quarantined ({ratio:.2%}; limit {limit:.0%})",
    )


INGESTION_CHECKS = [landed_events_schema_and_ranges, landed_events_quarantine_ratio]
