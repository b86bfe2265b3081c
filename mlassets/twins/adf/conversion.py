"""Type conversion for the local copy engine: ADF's interim data types as Arrow types, columns
converted to them in compute kernels with the rows that fail isolated by bisection (so only
bad rows take a per-row path), and any column written as JSON text (lists, structs and
scalars; `mapComplexValuesToString` and the JSON sink use it).
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mlassets.lib.adf import (
    UnsupportedFeatureError,
    json_quote,
)
from mlassets.twins.adf.errors import CopyError

#: ADF's interim data types -> Arrow.
INTERIM_TYPES: dict[str, pa.DataType] = {
    "String": pa.string(),
    "Int16": pa.int16(),
    "Int32": pa.int32(),
    "Int64": pa.int64(),
    "Single": pa.float32(),
    "Double": pa.float64(),
    "Decimal": pa.decimal128(38, 18),
    "Boolean": pa.bool_(),
    "DateTime": pa.timestamp("us"),
    "DateTimeOffset": pa.timestamp("us", tz="UTC"),
    "Guid": pa.string(),
    "Byte[]": pa.binary(),
}
_ISOLATE_BELOW = 32  # a failing block this small is checked value by value


# -- vectorized JSON text --------------------------------------------------------------------


def to_json_text(arr: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Any column of scalars, lists and structs -> JSON text per value (null -> ``null``)."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    t = arr.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return json_quote(arr)
    if pa.types.is_boolean(t):
        return pc.fill_null(pc.if_else(arr, "true", "false"), "null")
    if pa.types.is_integer(t):
        return pc.fill_null(_integer_text(arr), "null")
    if pa.types.is_decimal(t):
        return pc.fill_null(arr.cast(pa.string()), "null")
    if pa.types.is_floating(t):
        finite = pc.is_finite(arr)
        text = arr.cast(pa.string())
        return pc.fill_null(pc.if_else(finite, text, pa.scalar(None, pa.string())), "null")
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        text = (
            pc.strftime(arr, "%Y-%m-%dT%H:%M:%S" + ("Z" if getattr(t, "tz", None) else ""))
            if pa.types.is_timestamp(t)
            else arr.cast(pa.string())
        )
        return json_quote(text)
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        inner = to_json_text(arr.values)
        rebuilt = type(arr).from_arrays(
            arr.offsets, inner, mask=arr.is_null() if arr.null_count else None
        )
        joined = pc.binary_join(rebuilt, ",")
        return pc.fill_null(pc.binary_join_element_wise("[", joined, "]", ""), "null")
    if pa.types.is_struct(t):
        parts: list[Any] = []
        for i, f in enumerate(t):
            parts += [("," if i else "") + json.dumps(f.name) + ":", to_json_text(arr.field(i))]
        body = pc.binary_join_element_wise("{", *parts, "}", "")
        if arr.null_count:
            body = pc.if_else(arr.is_valid(), body, pa.scalar(None, pa.string()))
        return pc.fill_null(body, "null")
    if pa.types.is_null(t):
        return pa.array(["null"] * len(arr), pa.string()) if len(arr) else pa.array([], pa.string())
    raise UnsupportedFeatureError(f"a column of type {t} cannot be written as JSON")


def _integer_text(arr: pa.Array) -> pa.Array:
    """Integers as text. Values in a narrow range (pixels, labels, counters) are looked up in
    a table of their texts, several times faster than formatting each one."""
    if len(arr) > 4096 and arr.null_count < len(arr):
        bounds = pc.min_max(arr)
        lo, hi = bounds["min"].as_py(), bounds["max"].as_py()
        if hi - lo < 65_536 and lo > -(2**62) and hi < 2**62:
            texts = pa.array([str(v) for v in range(lo, hi + 1)], pa.string())
            return texts.take(pc.subtract(arr.cast(pa.int64()), lo))
    return arr.cast(pa.string())


def complex_text(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Lists and objects as JSON text, null staying null (mapComplexValuesToString)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    return pc.if_else(values.is_valid(), to_json_text(values), pa.scalar(None, pa.string()))


def is_complex(t: pa.DataType) -> bool:
    return (
        pa.types.is_list(t)
        or pa.types.is_large_list(t)
        or pa.types.is_struct(t)
        or pa.types.is_map(t)
    )


# -- conversions with failure isolation -----------------------------------------------------

_OFFSET = re.compile(r"(Z|[+-]\d{2}:?\d{2})$")
_GUID = r"^\{?[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}\}?$"


def _cast_isolating(arr: pa.Array, target: pa.DataType) -> tuple[pa.Array, np.ndarray]:
    """Cast; values that fail become null and are flagged (bisection finds them)."""
    n = len(arr)
    try:
        return pc.cast(arr, target, safe=True), np.zeros(n, bool)
    except pa.ArrowNotImplementedError as exc:
        raise CopyError(f"cannot convert {arr.type} to {target}: {exc}") from None
    except (pa.ArrowInvalid, OverflowError):
        pass
    if n <= _ISOLATE_BELOW:
        pieces, failed = [], np.zeros(n, bool)
        for i in range(n):
            one = arr.slice(i, 1)
            try:
                pieces.append(pc.cast(one, target, safe=True))
            except (pa.ArrowInvalid, OverflowError):
                pieces.append(pa.nulls(1, target))
                failed[i] = True
        return pa.concat_arrays(pieces), failed
    mid = n // 2
    left, lf = _cast_isolating(arr.slice(0, mid), target)
    right, rf = _cast_isolating(arr.slice(mid), target)
    return pa.concat_arrays([left, right]), np.concatenate([lf, rf])


def convert(arr: pa.Array | pa.ChunkedArray, interim: str) -> tuple[pa.Array, np.ndarray]:
    """A column converted to an ADF interim type: (values, mask of rows that did not convert)."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks else pa.array([], arr.type)
    target = INTERIM_TYPES[interim]
    n = len(arr)
    if arr.type == target and interim != "Guid":
        return arr, np.zeros(n, bool)
    if interim == "String" or interim == "Guid":
        if is_complex(arr.type):
            values = to_json_text(arr)
            values = pc.if_else(arr.is_valid(), values, pa.scalar(None, pa.string()))
        elif pa.types.is_timestamp(arr.type):
            values = pc.strftime(arr, "%Y-%m-%dT%H:%M:%S" + ("Z" if arr.type.tz else ""))
        elif pa.types.is_binary(arr.type) or pa.types.is_large_binary(arr.type):
            values, failed = _cast_isolating(arr, pa.string())  # invalid UTF-8 fails
            return values, failed
        else:
            values = pc.cast(arr, pa.string())
        if interim == "Guid":
            ok = pc.match_substring_regex(values, _GUID)
            failed = pc.and_(values.is_valid(), pc.invert(pc.fill_null(ok, False)))
            failed = failed.to_numpy(zero_copy_only=False)
            return pc.if_else(pa.array(failed), pa.scalar(None, pa.string()), values), failed
        return values, np.zeros(n, bool)
    if is_complex(arr.type):
        raise CopyError(f"cannot convert a {arr.type} column to {interim}")
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        arr = pc.utf8_trim_whitespace(arr)
        empty = pc.equal(arr, "")
        arr = pc.if_else(empty, pa.scalar(None, arr.type), arr)  # "" is null for non-text types
        if interim == "Boolean":
            arr = pc.utf8_lower(arr)
        if pa.types.is_timestamp(target):
            return _strings_to_timestamps(arr, target)
    if pa.types.is_timestamp(target) and pa.types.is_timestamp(arr.type):
        if arr.type.tz and not target.tz:
            arr = pc.cast(arr, pa.timestamp(arr.type.unit, tz="UTC"))
            return pc.cast(pc.cast(arr, pa.timestamp(arr.type.unit)), target), np.zeros(n, bool)
        if not arr.type.tz and target.tz:
            return pc.assume_timezone(pc.cast(arr, pa.timestamp("us")), "UTC"), np.zeros(n, bool)
    return _cast_isolating(arr, target)


def _strings_to_timestamps(arr: pa.Array, target: pa.DataType) -> tuple[pa.Array, np.ndarray]:
    """ISO-8601 text, with or without a zone offset (none means UTC), -> timestamps."""
    has_offset = pc.fill_null(pc.match_substring_regex(arr, _OFFSET.pattern), False)
    aware, aware_failed = _cast_isolating(
        pc.if_else(has_offset, arr, pa.scalar(None, pa.string())), pa.timestamp("us", tz="UTC")
    )
    naive, naive_failed = _cast_isolating(
        pc.if_else(has_offset, pa.scalar(None, pa.string()), arr), pa.timestamp("us")
    )
    naive_utc = pc.assume_timezone(naive, "UTC")
    values = pc.if_else(has_offset, aware, naive_utc)
    if not target.tz:
        values = pc.cast(values, pa.timestamp("us"))
    return values, aware_failed | naive_failed
