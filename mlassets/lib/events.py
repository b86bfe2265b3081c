"""Digit events: the wire contract (body v1), the landed and quarantine schemas, and the
vectorized decoder that splits a batch of raw events into typed rows and quarantined ones.

Body v1: ``{"sample_id": str, "pixels": [64 ints 0..16], "source": str,
"captured_at": ISO-8601}``; unknown fields are ignored.

Decoding is bulk: bodies are joined into one newline-delimited buffer and parsed by
pyarrow's JSON reader against the body schema, and the semantic checks run as array
operations. A block that the reader rejects is split in halves until the offending bodies
are isolated, and only those few go through `explain_body`, the per-event check that also
words the reason. The reason strings are the same whichever path found the problem.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

PIXELS = 64
PIXEL_MAX = 16
BODY_FIELDS = ("sample_id", "pixels", "source", "captured_at")

#: What an event source hands to the landing step, one row per event.
RAW_EVENT_SCHEMA = pa.schema(
    [
        pa.field("partition_id", pa.string(), nullable=False),
        pa.field("sequence_number", pa.int64(), nullable=False),
        pa.field("offset", pa.int64()),
        pa.field("enqueued_time", pa.timestamp("us", tz="UTC")),
        pa.field("partition_key", pa.string()),
        pa.field("properties", pa.string()),
        pa.field("body", pa.binary()),
    ]
)

BODY_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string()),
        pa.field("pixels", pa.list_(pa.int64())),
        pa.field("source", pa.string()),
        pa.field("captured_at", pa.timestamp("us", tz="UTC")),
    ]
)

#: A landed event: the typed body plus where it came from in the hub.
LANDED_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("pixels", pa.list_(pa.uint8()), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("captured_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("partition_id", pa.string(), nullable=False),
        pa.field("sequence_number", pa.int64(), nullable=False),
        pa.field("offset", pa.int64()),
        pa.field("enqueued_time", pa.timestamp("us", tz="UTC")),
    ]
)

#: A quarantined event keeps its raw body untouched, with the reason it was refused.
QUARANTINE_SCHEMA = pa.schema([*RAW_EVENT_SCHEMA, pa.field("reason", pa.string(), nullable=False)])

_PARSE = pa_json.ParseOptions(explicit_schema=BODY_SCHEMA, unexpected_field_behavior="ignore")
_READ = pa_json.ReadOptions(use_threads=True, block_size=1 << 20)
#: Blocks this small that still fail go straight to the per-event check.
_SMALL_BLOCK = 32


def raw_events_table(partition_id: str, rows: list[tuple]) -> pa.Table:
    """RAW_EVENT_SCHEMA from (sequence number, offset, enqueued time, partition key,
    properties JSON, body) tuples; the time may be a datetime or integer microseconds."""
    if not rows:
        return RAW_EVENT_SCHEMA.empty_table()
    seq, off, enq, keys, props, bodies = zip(*rows, strict=True)
    return pa.table(
        [
            pa.array([partition_id] * len(rows), pa.string()),
            pa.array(seq, pa.int64()),
            pa.array(off, pa.int64()),
            pa.array(enq, pa.timestamp("us", tz="UTC")),
            pa.array(keys, pa.string()),
            pa.array(props, pa.string()),
            pa.array(bodies, pa.binary()),
        ],
        schema=RAW_EVENT_SCHEMA,
    )


@dataclass
class Decoded:
    landed: pa.Table
    quarantined: pa.Table
    #: How many events took the per-event path (a measure of how dirty the batch was).
    slow_path: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


# -- the per-event check: the reference semantics, used only for the rare bad bodies -------


def explain_body(body: bytes | None) -> tuple[dict | None, str | None]:
    """(typed record, None) for a valid body, else (None, reason)."""
    if body is None:
        return None, "empty body"
    try:
        obj = json.loads(body.decode("utf-8"))  # bytes would let json guess UTF-16/32
    except UnicodeDecodeError:
        return None, "body is not UTF-8"
    except json.JSONDecodeError as exc:
        if not body.strip():
            return None, "empty body"
        return None, f"invalid JSON: {exc.msg}"
    if not isinstance(obj, dict):
        return None, f"body is a JSON {_json_kind(obj)}, expected an object"
    for name in BODY_FIELDS:
        if obj.get(name) is None:
            return None, f"missing field: {name}"
    sample_id, pixels, source, captured = (obj[n] for n in BODY_FIELDS)
    if not isinstance(sample_id, str) or not sample_id:
        return None, "sample_id must be a non-empty string"
    if not isinstance(pixels, list):
        return None, "pixels must be an array of integers"
    if len(pixels) != PIXELS:
        return None, f"pixels has {len(pixels)} values, expected {PIXELS}"
    if not all(type(v) is int for v in pixels):
        return None, "pixels must be an array of integers"
    if min(pixels) < 0 or max(pixels) > PIXEL_MAX:
        return None, f"pixel values must be within 0..{PIXEL_MAX}"
    if not isinstance(source, str):
        return None, "source must be a string"
    when = _parse_time(captured)
    if when is None:
        return None, "captured_at is not an ISO-8601 timestamp"
    return {"sample_id": sample_id, "pixels": pixels, "source": source, "captured_at": when}, None


def _json_kind(obj: object) -> str:
    return {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(obj), "number"
    )


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


# -- the bulk path -------------------------------------------------------------------------


def _binary_layout(bodies: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, data) of a binary array as numpy views, without copying."""
    bodies = bodies.fill_null(b"") if bodies.null_count else bodies
    offset_type = np.int64 if pa.types.is_large_binary(bodies.type) else np.int32
    offsets = np.frombuffer(bodies.buffers()[1], dtype=offset_type)[
        bodies.offset : bodies.offset + len(bodies) + 1
    ]
    data_buf = bodies.buffers()[2]
    data = (
        np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    )
    return offsets.astype(np.int64), data


def _bulk_candidates(bodies: pa.Array) -> np.ndarray:
    """Bodies the JSON reader may see: one '{...}' object on one line.

    Anything else (empty, arrays, scalars, a top-level null, which crashes the reader,
    multi-line bodies, which would shift rows) takes the per-event path.
    """
    offsets, data = _binary_layout(bodies)
    starts, ends = offsets[:-1], offsets[1:]
    ok = ends > starts
    if bodies.null_count:
        ok &= bodies.is_valid().to_numpy(zero_copy_only=False)
    first = np.zeros(len(starts), np.uint8)
    last = np.zeros(len(starts), np.uint8)
    first[ok] = data[starts[ok]]
    last[ok] = data[ends[ok] - 1]
    ok &= (first == ord("{")) & (last == ord("}"))
    span = data[offsets[0] : offsets[-1]]
    breaks = np.flatnonzero((span == 10) | (span == 13)) + offsets[0]
    if len(breaks):
        ok[np.searchsorted(ends, breaks, side="right")] = False
    return ok


def _parse_block(joined: pa.Array, lo: int, hi: int) -> pa.Table | None:
    offsets, _ = _binary_layout(joined)
    buf = joined.buffers()[2].slice(int(offsets[lo]), int(offsets[hi] - offsets[lo]))
    try:
        table = pa_json.read_json(pa.BufferReader(buf), read_options=_READ, parse_options=_PARSE)
    except pa.ArrowInvalid:
        return None
    return table if table.num_rows == hi - lo else None


def _bulk_parse(bodies: pa.Array) -> tuple[list[tuple[np.ndarray, pa.Table]], np.ndarray]:
    """Parse candidate bodies; returns ([(positions, table)], positions that failed)."""
    n = len(bodies)
    if n == 0:
        return [], np.zeros(0, np.int64)
    joined = pc.binary_join_element_wise(bodies, pa.scalar(b""), pa.scalar(b"\n"))
    parsed: list[tuple[np.ndarray, pa.Table]] = []
    failed: list[np.ndarray] = []
    stack = [(0, n)]
    while stack:
        lo, hi = stack.pop()
        table = _parse_block(joined, lo, hi)
        if table is not None:
            parsed.append((np.arange(lo, hi), table))
        elif hi - lo <= _SMALL_BLOCK:
            failed.append(np.arange(lo, hi))
        else:
            mid = (lo + hi) // 2
            stack.extend([(mid, hi), (lo, mid)])
    return parsed, (np.concatenate(failed) if failed else np.zeros(0, np.int64))


def _semantic_reasons(t: pa.Table) -> tuple[np.ndarray, pa.Array]:
    """Vectorized checks on parsed bodies: (reason per row or None, pixels as list<uint8>)."""
    n = t.num_rows
    reasons = np.full(n, None, dtype=object)
    pixels = t["pixels"].combine_chunks()
    lengths = pc.list_value_length(pixels).fill_null(0).to_numpy(zero_copy_only=False)
    ok64 = lengths == PIXELS
    grid = np.zeros((n, PIXELS), np.uint8)
    if ok64.any():
        # Every list holds 64 values in the common case: flatten is then zero-copy.
        rows64 = pixels if ok64.all() else pixels.filter(pa.array(ok64))
        flat = pc.list_flatten(rows64)
        values = flat.fill_null(-1).to_numpy(zero_copy_only=False).reshape(-1, PIXELS)
        lo, hi = values.min(), values.max()
        if lo < 0 or hi > PIXEL_MAX:  # per-row work only when something is out of range
            has_null = np.zeros(n, bool)
            if flat.null_count:
                has_null[ok64] = (values == -1).any(axis=1)
            out_of_range = np.zeros(n, bool)
            out_of_range[ok64] = (values < 0).any(axis=1) | (values > PIXEL_MAX).any(axis=1)
            reasons[out_of_range & ~has_null] = f"pixel values must be within 0..{PIXEL_MAX}"
            reasons[has_null] = "pixels must be an array of integers"
            values = np.clip(values, 0, PIXEL_MAX)
        grid[ok64] = values.astype(np.uint8)
    bad_len = ~ok64
    if bad_len.any():
        reasons[bad_len] = [f"pixels has {k} values, expected {PIXELS}" for k in lengths[bad_len]]
    empty_id = pc.equal(t["sample_id"], "").fill_null(False).to_numpy(zero_copy_only=False)
    reasons[empty_id] = "sample_id must be a non-empty string"
    for name in reversed(BODY_FIELDS):  # the first missing field is the one reported
        missing = t[name].is_null().to_numpy(zero_copy_only=False)
        reasons[missing] = f"missing field: {name}"
    typed = pa.ListArray.from_arrays(
        pa.array(np.arange(0, (n + 1) * PIXELS, PIXELS, dtype=np.int32)),
        pa.array(grid.reshape(-1)),
    )
    return reasons, typed


def decode_events(raw: pa.Table) -> Decoded:
    """Split raw events (RAW_EVENT_SCHEMA) into landed rows and quarantined rows."""
    raw = raw.combine_chunks()
    n = raw.num_rows
    if n == 0:
        return Decoded(LANDED_SCHEMA.empty_table(), QUARANTINE_SCHEMA.empty_table())
    bodies = raw["body"].chunk(0) if raw["body"].num_chunks else pa.array([], pa.binary())
    reasons = np.full(n, None, dtype=object)

    bulk = _bulk_candidates(bodies)
    candidates = np.flatnonzero(bulk)
    pieces, failed = _bulk_parse(
        bodies if len(candidates) == n else bodies.take(pa.array(candidates))
    )
    pieces = [(candidates[pos], table) for pos, table in pieces]
    # The per-event path: bodies the reader must not see, and those in blocks it refused.
    slow = np.sort(np.concatenate([np.flatnonzero(~bulk), candidates[failed]]))

    records, slow_rows = [], []
    slow_bodies = bodies.take(pa.array(slow, pa.int64())).to_pylist()
    for row, body in zip(slow, slow_bodies, strict=True):
        record, reason = explain_body(body)
        if record is None:
            reasons[row] = reason
        else:
            records.append(record)
            slow_rows.append(row)
    if records:
        pieces.append((np.array(slow_rows), pa.Table.from_pylist(records, schema=BODY_SCHEMA)))

    if pieces:
        rows = np.concatenate([p for p, _ in pieces])
        parsed = pa.concat_tables([t for _, t in pieces])
        order = np.argsort(rows, kind="stable")
        if not np.array_equal(order, np.arange(len(order))):
            rows, parsed = rows[order], parsed.take(pa.array(order))
        semantic, pixels = _semantic_reasons(parsed)
        reasons[rows] = semantic
        good = semantic == None  # noqa: E711 - elementwise on an object array
        keep = pa.array(rows[good])
        good_mask = pa.array(good)
        landed = pa.table(
            {
                "sample_id": parsed["sample_id"].filter(good_mask),
                "pixels": pixels.filter(good_mask),
                "source": parsed["source"].filter(good_mask),
                "captured_at": parsed["captured_at"].filter(good_mask),
                "partition_id": raw["partition_id"].take(keep),
                "sequence_number": raw["sequence_number"].take(keep),
                "offset": raw["offset"].take(keep),
                "enqueued_time": raw["enqueued_time"].take(keep),
            }
        ).cast(LANDED_SCHEMA)
    else:
        landed = LANDED_SCHEMA.empty_table()

    bad = np.flatnonzero(reasons != None)  # noqa: E711
    quarantined = raw.take(pa.array(bad, pa.int64())).append_column(
        "reason", pa.array(reasons[bad].tolist(), pa.string())
    )
    counts = dict(zip(*np.unique(reasons[bad].astype(str), return_counts=True), strict=True))
    return Decoded(
        landed=landed,
        quarantined=quarantined.cast(QUARANTINE_SCHEMA),
        slow_path=len(slow),
        reasons={str(k): int(v) for k, v in counts.items()},
    )
