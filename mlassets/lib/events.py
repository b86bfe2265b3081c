"""Digit events: the wire contract (body v1), the landed and quarantine schemas, and the
vectorized decoder that splits a batch of raw events into typed rows and quarantined ones.

Body v1: ``{"sample_id": str, "pixels": [64 ints 0..16], "source": str,
"captured_at": ISO-8601}``, UTF-8, at most MLASSETS_MAX_EVENT_BYTES; unknown fields are
ignored; a contract field given twice, text with a lone surrogate escape, or a time outside
years 1..9999 once in UTC is refused.

Decoding is bulk: bodies are joined into one newline-delimited buffer and parsed by
pyarrow's JSON reader against the body schema, and the semantic checks run as array
operations. A block that the reader rejects is split in halves until the offending bodies
are isolated, and only those few go through `explain_body`, the per-event check that also
words the reason. The reason strings are the same whichever path found the problem.

No body can stop a landing: a body above MLASSETS_MAX_EVENT_BYTES is quarantined unread,
bodies the reader must not see (a top-level `null` crashes it; invalid UTF-8 it would let
through into string columns) are screened out first with array operations, and an
unexpected error on one body quarantines that body with the error as its reason. Should the
bulk path itself fail, the batch is decoded event by event instead.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

from mlassets import settings

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
#: Reasons that are Python's limits rather than the body's faults (the reader has neither):
#: a one-line body refused for one of them is given to the reader alone, so whether it lands
#: never depends on the bodies next to it.
_PYTHON_LIMITS = ("invalid JSON: nested too deeply", "invalid JSON: Exceeds the limit")
#: What every reader of the landed files can represent: years 1..9999, in UTC (microseconds).
_MIN_TIME_US = -62_135_596_800_000_000
_MAX_TIME_US = 253_402_300_799_999_999
TIME_RANGE_REASON = "captured_at is outside years 1..9999 once in UTC"
#: The most body bytes joined into one buffer for the reader.
_JOIN_BYTES = 256 << 20
#: Reasons quote an exception's message; this keeps a hostile one short.
_REASON_CHARS = 300


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
    #: Set when the bulk path failed on this batch and it was decoded event by event: why.
    fallback: str | None = None


# -- the per-event check: the reference semantics, used only for the rare bad bodies -------


def explain_body(body: bytes | None) -> tuple[dict | None, str | None]:
    """(typed record, None) for a valid body, else (None, reason)."""
    if body is None:
        return None, "empty body"
    try:
        text = body.decode("utf-8")  # bytes would let json guess UTF-16/32
    except UnicodeDecodeError:
        return None, "body is not UTF-8"
    try:
        obj = json.loads(text, object_pairs_hook=_JsonObject.from_pairs)
    except RecursionError:
        return None, "invalid JSON: nested too deeply"
    except json.JSONDecodeError as exc:
        if not body.strip():
            return None, "empty body"
        return None, f"invalid JSON: {exc.msg}"
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        return None, f"invalid JSON: {str(exc).split(':')[0]}"
    if not isinstance(obj, dict):
        return None, f"body is a JSON {_json_kind(obj)}, expected an object"
    for name in BODY_FIELDS:
        if name in obj.repeated:
            return None, f"duplicate field: {name}"
    for name in BODY_FIELDS:
        if obj.get(name) is None:
            return None, f"missing field: {name}"
    sample_id, pixels, source, captured = (obj[n] for n in BODY_FIELDS)
    if not isinstance(sample_id, str) or not sample_id:
        return None, "sample_id must be a non-empty string"
    if not _is_unicode(sample_id):
        return None, "sample_id is not valid Unicode (a lone surrogate escape)"
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
    if not _is_unicode(source):
        return None, "source is not valid Unicode (a lone surrogate escape)"
    when, reason = _parse_time(captured)
    if when is None:
        return None, reason
    return {"sample_id": sample_id, "pixels": pixels, "source": source, "captured_at": when}, None


class _JsonObject(dict):
    """A JSON object that remembers the keys it had more than once (json keeps the last)."""

    repeated: frozenset[str] = frozenset()

    @classmethod
    def from_pairs(cls, pairs: list[tuple[str, Any]]) -> _JsonObject:
        obj = cls(pairs)
        if len(obj) < len(pairs):
            obj.repeated = frozenset(k for k, n in Counter(k for k, _ in pairs).items() if n > 1)
        return obj


def _is_unicode(text: str) -> bool:
    """False for text holding a lone surrogate (JSON's \\ud800 escape), which no UTF-8
    column can store."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _json_kind(obj: object) -> str:
    return {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(obj), "number"
    )


def _parse_time(value: object) -> tuple[datetime | None, str | None]:
    """(UTC time, None), or (None, reason): not ISO-8601, or beyond what UTC can hold (year
    1 or 9999 pushed over the edge by its offset)."""
    if not isinstance(value, str):
        return None, "captured_at is not an ISO-8601 timestamp"
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        if value.startswith("0000-"):  # ISO-8601's year 0, which the bulk reader parses
            return None, TIME_RANGE_REASON
        return None, "captured_at is not an ISO-8601 timestamp"
    if when.tzinfo is None:
        return when.replace(tzinfo=UTC), None
    try:
        return when.astimezone(UTC), None
    except OverflowError:
        return None, TIME_RANGE_REASON


def _unexpected(exc: BaseException) -> str:
    """The reason for a body that raised where nothing should have: the error, briefly."""
    text = f"could not be decoded: {type(exc).__name__}: {exc}"[:_REASON_CHARS]
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _explain_safely(body: bytes | None) -> tuple[dict | None, str | None]:
    try:
        return explain_body(body)
    except Exception as exc:  # one hostile body must never stop the batch
        return None, _unexpected(exc)


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


def _bulk_candidates(bodies: pa.Array, offsets: np.ndarray, data: np.ndarray) -> np.ndarray:
    """Bodies the JSON reader may see: one '{...}' object on one line.

    Anything else (empty, arrays, scalars, a top-level null, which crashes the reader,
    multi-line bodies, which would shift rows) takes the per-event path.
    """
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


def _not_utf8(
    bodies: pa.Array, offsets: np.ndarray, data: np.ndarray, among: np.ndarray
) -> np.ndarray:
    """Rows (of those `among` marks) that are not valid UTF-8, which the reader would let
    through into string columns. ASCII bodies, nearly all of them, cost one comparison per
    byte; the others one cast together, and a check each only when that cast fails."""
    span = data[offsets[0] : offsets[-1]]
    high = np.flatnonzero(span >= 0x80) + offsets[0]
    if not len(high):
        return np.zeros(0, np.int64)
    rows = np.unique(np.searchsorted(offsets, high, side="right") - 1)
    rows = rows[among[rows]]
    if not len(rows):
        return rows
    suspects = bodies.take(pa.array(rows))
    try:
        suspects.cast(pa.string())
        return np.zeros(0, np.int64)
    except pa.ArrowInvalid:
        pass
    bad = [r for r, b in zip(rows, suspects.to_pylist(), strict=True) if not _is_utf8(b)]
    return np.array(bad, np.int64)


def _is_utf8(body: bytes) -> bool:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _parse_block(joined: pa.Array, lo: int, hi: int) -> pa.Table | None:
    offsets, _ = _binary_layout(joined)
    buf = joined.buffers()[2].slice(int(offsets[lo]), int(offsets[hi] - offsets[lo]))
    try:
        table = pa_json.read_json(pa.BufferReader(buf), read_options=_READ, parse_options=_PARSE)
    except Exception:  # whatever the reader refuses, the split isolates
        return None
    return table if table.num_rows == hi - lo else None


def _read_one(body: bytes) -> pa.Table | None:
    """The reader's typed row for one body, or None when it refuses it."""
    joined = pa.array([body], pa.binary())
    return _parse_block(joined, 0, 1)


def _bulk_parse(bodies: pa.Array) -> tuple[list[tuple[np.ndarray, pa.Table]], np.ndarray]:
    """Parse candidate bodies; returns ([(positions, table)], positions that failed).

    Bodies are joined in groups of at most _JOIN_BYTES, so the joined buffer stays within
    what a binary array can address whatever the batch holds.
    """
    n = len(bodies)
    if n == 0:
        return [], np.zeros(0, np.int64)
    offsets, _ = _binary_layout(bodies)
    cuts = np.searchsorted(
        offsets - offsets[0], np.arange(_JOIN_BYTES, offsets[-1] - offsets[0], _JOIN_BYTES)
    )
    bounds = [0, *sorted({int(c) for c in cuts if 0 < c < n}), n]
    parsed: list[tuple[np.ndarray, pa.Table]] = []
    failed: list[np.ndarray] = []
    for start, stop in itertools.pairwise(bounds):
        joined = pc.binary_join_element_wise(
            bodies.slice(start, stop - start), pa.scalar(b""), pa.scalar(b"\n")
        )
        stack = [(0, stop - start)]
        while stack:
            lo, hi = stack.pop()
            table = _parse_block(joined, lo, hi)
            if table is not None:
                parsed.append((np.arange(start + lo, start + hi), table))
            elif hi - lo <= _SMALL_BLOCK:
                failed.append(np.arange(start + lo, start + hi))
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
    when = t["captured_at"].combine_chunks().cast(pa.int64()).fill_null(0)
    micros = when.to_numpy(zero_copy_only=False)
    reasons[(micros < _MIN_TIME_US) | (micros > _MAX_TIME_US)] = TIME_RANGE_REASON
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


def decode_events(raw: pa.Table, max_body_bytes: int | None = None) -> Decoded:
    """Split raw events (RAW_EVENT_SCHEMA) into landed rows and quarantined rows.

    Whatever the bodies hold, every event comes back either landed or quarantined with a
    reason; nothing a body holds makes this raise. `max_body_bytes` defaults to
    MLASSETS_MAX_EVENT_BYTES.
    """
    limit = settings.max_event_bytes() if max_body_bytes is None else max_body_bytes
    raw = raw.combine_chunks()
    if raw.num_rows == 0:
        return Decoded(LANDED_SCHEMA.empty_table(), QUARANTINE_SCHEMA.empty_table())
    try:
        return _decode(raw, limit, bulk=True)
    except Exception as exc:
        # The array code met an input it was not written for: decode the same batch body by
        # body instead (slower, and each body's error stays with that body).
        decoded = _decode(raw, limit, bulk=False)
        decoded.fallback = _unexpected(exc).removeprefix("could not be decoded: ")
        return decoded


def _decode(raw: pa.Table, limit: int, *, bulk: bool) -> Decoded:
    n = raw.num_rows
    bodies = raw["body"].chunk(0) if raw["body"].num_chunks else pa.array([], pa.binary())
    reasons = np.full(n, None, dtype=object)
    offsets, data = _binary_layout(bodies)
    sizes = np.diff(offsets)
    oversized = sizes > limit
    if oversized.any():  # quarantined unread
        big = np.flatnonzero(oversized)
        reasons[big] = [
            f"body is {k:,} bytes, above the limit of {limit:,} (MLASSETS_MAX_EVENT_BYTES)"
            for k in sizes[big].tolist()
        ]
    if bulk:
        bulk_ok = _bulk_candidates(bodies, offsets, data) & ~oversized
        bulk_ok[_not_utf8(bodies, offsets, data, bulk_ok)] = False
    else:
        bulk_ok = np.zeros(n, bool)
    candidates = np.flatnonzero(bulk_ok)
    pieces, failed = _bulk_parse(
        bodies if len(candidates) == n else bodies.take(pa.array(candidates, pa.int64()))
    )
    pieces = [(candidates[pos], table) for pos, table in pieces]
    # The per-event path: bodies the reader must not see, and those in blocks it refused.
    slow = np.sort(np.concatenate([np.flatnonzero(~bulk_ok & ~oversized), candidates[failed]]))

    records, slow_rows = [], []
    slow_bodies = bodies.take(pa.array(slow, pa.int64())).to_pylist()
    for row, body in zip(slow.tolist(), slow_bodies, strict=True):
        record, reason = _explain_safely(body)
        if record is not None:
            records.append(record)
            slow_rows.append(row)
        elif (
            bulk_ok[row]
            and reason.startswith(_PYTHON_LIMITS)
            and (alone := _read_one(body)) is not None
        ):
            pieces.append((np.array([row]), alone))
        else:
            reasons[row] = reason
    if records:
        table, refused = _records_table(records)
        for i, reason in refused.items():
            reasons[slow_rows[i]] = reason
        kept = [row for i, row in enumerate(slow_rows) if i not in refused]
        if kept:
            pieces.append((np.array(kept, np.int64), table))

    if pieces:
        rows = np.concatenate([p for p, _ in pieces])
        parsed = pa.concat_tables([t for _, t in pieces])
        order = np.argsort(rows, kind="stable")
        if not np.array_equal(order, np.arange(len(order))):
            rows, parsed = rows[order], parsed.take(pa.array(order))
        if bulk:
            semantic, pixels = _semantic_reasons(parsed)
        else:  # explain_body passed each of them: only the pixel type is left to change
            semantic = np.full(len(rows), None, dtype=object)
            pixels = parsed["pixels"].combine_chunks().cast(pa.list_(pa.uint8()))
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
    counts = Counter(reasons[bad].tolist())
    return Decoded(
        landed=landed,
        quarantined=quarantined.cast(QUARANTINE_SCHEMA),
        slow_path=len(slow),
        reasons=dict(counts),
    )


def _records_table(records: list[dict]) -> tuple[pa.Table, dict[int, str]]:
    """The typed records as one BODY_SCHEMA table, and the reason for each record (by
    position) that would not convert; those are left out of the table."""
    try:
        return pa.Table.from_pylist(records, schema=BODY_SCHEMA), {}
    except Exception:  # find the record(s) that did it
        pass
    tables, refused = [], {}
    for i, record in enumerate(records):
        try:
            tables.append(pa.Table.from_pylist([record], schema=BODY_SCHEMA))
        except Exception as exc:
            refused[i] = _unexpected(exc)
    return (pa.concat_tables(tables) if tables else BODY_SCHEMA.empty_table()), refused
