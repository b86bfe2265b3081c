"""Drops in the incoming zone, landed like hub events: the `import_incoming` job's logic.

Scanners that cannot publish to the hub drop files of digit events under ``incoming/``: JSON
lines (``.jsonl``, ``.ndjson``, ``.json``: one event body v1 per line) or CSV (``.csv``: a
header ``sample_id,pixels,source,captured_at``, the 64 pixels as a JSON array in one quoted
field). Importing a drop is two steps:

1. **The heavy copy** is Data Factory's: pipeline `copy_incoming_to_landed` parses the drop
   and writes its rows as staging Parquet (``staging/incoming/<drop>.parquet``, string
   columns). Rows the copy cannot read are skipped and written to ADF's session log (fault
   tolerance), instead of failing the copy. A Copy activity cannot write Parquet LIST
   columns, which is why it stages rather than writing the landed file itself.
2. **Landing** is ours, with the same decoder as hub events (`events.decode_events`), so a
   drop's event is valid exactly when the same event from the hub would be: the staged rows
   become ``landed/events/partition=incoming/drop=<name>.parquet`` (LANDED_SCHEMA: the
   downstream assets read them like any landed events), and the rows the copy skipped plus
   the rows the decoder refused go to ``quarantine/events/partition=incoming/`` with the raw
   row and a reason.

The file name derives from the drop's path, so importing the same drop again rewrites its
files rather than adding rows twice. In those files ``partition_id`` is ``incoming``,
``sequence_number`` is the row's position among the staged rows (skipped rows are numbered
after them), ``offset`` is null and ``enqueued_time`` is when the drop was last modified.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from mlassets.lib.adf import PipelineRunResult, json_quote
from mlassets.lib.events import QUARANTINE_SCHEMA, RAW_EVENT_SCHEMA, Decoded, decode_events
from mlassets.lib.landing import LANDED_PREFIX, QUARANTINE_PREFIX
from mlassets.lib.layout import INCOMING_PREFIX
from mlassets.roles.storage import LakeStorage

INCOMING_PARTITION = "incoming"
PIPELINE = "copy_incoming_to_landed"
STAGING_FOLDER = "staging/incoming"
LOG_FOLDER = "logs/adf"
FORMATS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".ndjson": "json"}
#: A pixels text that can go into a JSON body as it is: one flat array of numbers.
_PLAIN_ARRAY = r"^\s*\[[\s0-9eE+\-.,]*\]\s*$"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_COPY_PREFIX = "Skipped an incompatible row: "


class DropError(ValueError):
    """A drop path that cannot be imported (the message says why)."""


@dataclass(frozen=True)
class Drop:
    """One file in the incoming zone, and where its import writes."""

    path: str

    @classmethod
    def parse(cls, path: str) -> Drop:
        clean = "/".join(p for p in path.strip().strip("/").split("/") if p not in ("", "."))
        if ".." in clean.split("/"):
            raise DropError(f"drop path {path!r} must not contain '..'")
        if not clean.startswith(f"{INCOMING_PREFIX}/") or clean == INCOMING_PREFIX:
            raise DropError(
                f"drop path {path!r} is not a file in the incoming zone (expected "
                f"{INCOMING_PREFIX}/<...>/<file>, relative to the lake root)"
            )
        suffix = "." + clean.rsplit(".", 1)[-1].lower() if "." in clean.rsplit("/", 1)[-1] else ""
        if suffix not in FORMATS:
            raise DropError(
                f"drop {clean!r}: unknown format {suffix or '(no extension)'!r}; drops are "
                f"{', '.join(sorted(FORMATS))}"
            )
        return cls(clean)

    @property
    def format(self) -> str:
        return FORMATS["." + self.path.rsplit(".", 1)[-1].lower()]

    @property
    def name(self) -> str:
        """A file-name-safe, unique, stable name for the drop."""
        readable = _UNSAFE.sub("_", self.path[len(INCOMING_PREFIX) + 1 :].replace("/", "__"))
        digest = hashlib.sha1(self.path.encode()).hexdigest()[:10]
        return f"{readable[:150]}-{digest}"

    @property
    def landed_path(self) -> str:
        return f"{LANDED_PREFIX}/partition={INCOMING_PARTITION}/drop={self.name}.parquet"

    @property
    def quarantine_path(self) -> str:
        return f"{QUARANTINE_PREFIX}/partition={INCOMING_PARTITION}/drop={self.name}.parquet"

    @property
    def staging_file(self) -> str:
        return f"{self.name}.parquet"

    @property
    def staging_path(self) -> str:
        return f"{STAGING_FOLDER}/{self.staging_file}"

    def run_key(self) -> str:
        return f"import_incoming:{self.path}"


# -- conforming the staged rows ---------------------------------------------------------------


def staged_bodies(staged: pa.Table) -> pa.Array:
    """Event bodies (JSON) rebuilt from the staged string columns, column by column.

    Text values are JSON-quoted; the pixels text goes in as it is when it is a flat array of
    numbers, and quoted otherwise (so the decoder reports it, and nothing can be injected).
    """

    def column(name: str) -> pa.Array:
        if name in staged.column_names:
            return staged.column(name).combine_chunks().cast(pa.string())
        return pa.nulls(staged.num_rows, pa.string())

    pixels = column("pixels")
    plain = pc.fill_null(pc.match_substring_regex(pixels, _PLAIN_ARRAY), False)
    pixels_json = pc.if_else(plain, pixels, json_quote(pixels))
    body = pc.binary_join_element_wise(
        '{"sample_id":',
        json_quote(column("sample_id")),
        ',"pixels":',
        pc.fill_null(pixels_json, "null"),
        ',"source":',
        json_quote(column("source")),
        ',"captured_at":',
        json_quote(column("captured_at")),
        "}",
        "",
    )
    return body.cast(pa.binary())


def read_skip_logs(lake: LakeStorage, result: PipelineRunResult, log_folder: str) -> pa.Table:
    """The rows the copy skipped (TabularRowSkip entries of its session logs): item, message."""
    items: list[pa.Array] = []
    messages: list[pa.Array] = []
    for activity in result.copy_activities:
        folder = (
            f"{log_folder.strip('/')}/copyactivity-logs/{activity.name}/{activity.activity_run_id}"
        )
        for path in lake.glob(f"{folder}/*"):
            with lake.fs.open(lake.path(path), "rb") as f:
                data = f.read()
            if not data.strip():
                continue
            log = pa_csv.read_csv(
                io.BytesIO(data),
                convert_options=pa_csv.ConvertOptions(
                    column_types={
                        c: pa.string()
                        for c in ("Timestamp", "Level", "OperationName", "OperationItem", "Message")
                    },
                    strings_can_be_null=False,
                ),
                parse_options=pa_csv.ParseOptions(newlines_in_values=True),
            )
            skipped = log.filter(pc.equal(log["OperationName"], "TabularRowSkip"))
            items.append(skipped["OperationItem"].combine_chunks())
            messages.append(skipped["Message"].combine_chunks())
    if not items:
        return pa.table({"item": pa.array([], pa.string()), "message": pa.array([], pa.string())})
    return pa.table({"item": pa.concat_arrays(items), "message": pa.concat_arrays(messages)})


def conform(staged: pa.Table, skipped: pa.Table, drop: Drop, enqueued_time: datetime) -> Decoded:
    """Staged rows -> landed rows and quarantined rows (the decoder's and the copy's)."""
    n = staged.num_rows
    when = pa.scalar(enqueued_time, pa.timestamp("us", tz="UTC"))
    raw = pa.table(
        [
            pa.repeat(pa.scalar(INCOMING_PARTITION), n),
            pa.array(np.arange(n, dtype=np.int64)),
            pa.nulls(n, pa.int64()),
            pa.repeat(when, n),
            pa.nulls(n, pa.string()),
            pa.repeat(pa.scalar(json.dumps({"drop": drop.path, "stage": "decode"})), n),
            staged_bodies(staged) if n else pa.array([], pa.binary()),
        ],
        schema=RAW_EVENT_SCHEMA,
    )
    decoded = decode_events(raw)
    k = skipped.num_rows
    if not k:
        return decoded
    reasons = pc.binary_join_element_wise(
        "skipped by the copy: ",
        pc.replace_substring(skipped["message"].combine_chunks(), _COPY_PREFIX, ""),
        "",
    )
    copy_rows = pa.table(
        [
            pa.repeat(pa.scalar(INCOMING_PARTITION), k),
            pa.array(np.arange(n, n + k, dtype=np.int64)),
            pa.nulls(k, pa.int64()),
            pa.repeat(when, k),
            pa.nulls(k, pa.string()),
            pa.repeat(pa.scalar(json.dumps({"drop": drop.path, "stage": "copy"})), k),
            skipped["item"].combine_chunks().cast(pa.binary()),
            reasons,
        ],
        schema=QUARANTINE_SCHEMA,
    )
    counts = pc.value_counts(reasons)
    merged = dict(decoded.reasons)
    for value, count in zip(
        counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True
    ):
        merged[value] = merged.get(value, 0) + count
    return Decoded(
        landed=decoded.landed,
        quarantined=pa.concat_tables([decoded.quarantined, copy_rows]),
        slow_path=decoded.slow_path,
        reasons=merged,
    )


def _modified(lake: LakeStorage, path: str) -> datetime:
    info = lake.fs.info(lake.path(path))
    when = info.get("last_modified") or info.get("mtime")
    if isinstance(when, datetime):
        return when if when.tzinfo else when.replace(tzinfo=UTC)
    if isinstance(when, int | float):
        return datetime.fromtimestamp(when, UTC)
    return datetime.now(UTC)


# -- the import -----------------------------------------------------------------------------


@dataclass
class ImportResult:
    drop: Drop
    run: PipelineRunResult
    staged_rows: int
    landed_rows: int
    quarantined_rows: int
    #: Rows the copy skipped (also counted in quarantined_rows).
    copy_skipped: int
    bytes_written: int
    #: True when the drop had been imported before (its files were rewritten).
    rewrite: bool
    #: Rows of the landed file this import replaced (0 when it is new).
    replaced_rows: int
    seconds: float
    reasons: dict[str, int] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return self.landed_rows + self.quarantined_rows


def import_drop(
    factory: Any, lake: LakeStorage, drop: Drop, timeout: float | None = None, log: Any = None
) -> ImportResult:
    """Run the copy on the configured Data Factory, then land what it staged."""
    started = time.perf_counter()
    if not lake.exists(drop.path):
        raise DropError(f"drop {lake.uri(drop.path)} does not exist")
    enqueued = _modified(lake, drop.path)
    run = factory.run_pipeline(
        PIPELINE,
        {
            "dropPath": drop.path,
            "stagingFolder": STAGING_FOLDER,
            "stagingFile": drop.staging_file,
            "logFolder": LOG_FOLDER,
        },
        timeout=timeout,
        log=log,
    )
    staged = lake.read_parquet(drop.staging_path)
    skipped = read_skip_logs(lake, run, LOG_FOLDER)
    decoded = conform(staged, skipped, drop, enqueued)
    rewrite = lake.exists(drop.landed_path)
    replaced = 0
    if rewrite:
        with lake.fs.open(lake.path(drop.landed_path), "rb") as f:
            replaced = pq.ParquetFile(f).metadata.num_rows
    written = lake.write_parquet(drop.landed_path, decoded.landed)
    if decoded.quarantined.num_rows:
        written += lake.write_parquet(drop.quarantine_path, decoded.quarantined)
    else:
        lake.delete(drop.quarantine_path)  # from an earlier import of a different version
    lake.delete(drop.staging_path)
    return ImportResult(
        drop=drop,
        run=run,
        staged_rows=staged.num_rows,
        landed_rows=decoded.landed.num_rows,
        quarantined_rows=decoded.quarantined.num_rows,
        copy_skipped=skipped.num_rows,
        bytes_written=written,
        rewrite=rewrite,
        replaced_rows=replaced,
        seconds=time.perf_counter() - started,
        reasons=decoded.reasons,
    )
