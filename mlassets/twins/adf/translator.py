"""The `TabularTranslator` of a Copy activity: maps source columns (by name, JSON path or
ordinal) to sink columns, converts them through their interim types, and sets aside the rows
whose values do not convert, with the session-log text ADF writes for them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mlassets.lib.adf import (
    UnsupportedFeatureError,
)
from mlassets.twins.adf.conversion import complex_text, convert, is_complex, to_json_text
from mlassets.twins.adf.errors import CopyError


@dataclass
class Translated:
    table: pa.Table
    skipped_items: list[str]
    skipped_messages: list[str]


class Translator:
    def __init__(self, spec: dict | None) -> None:
        spec = spec or {}
        self.mappings = spec.get("mappings") or []
        self.complex_to_string = bool(spec.get("mapComplexValuesToString", False))

    def apply(self, table: pa.Table, source_kind: str) -> Translated:
        if not self.mappings:
            if self.complex_to_string:
                for i, f in enumerate(table.schema):
                    if is_complex(f.type):
                        table = table.set_column(i, f.name, complex_text(table.column(i)))
            return Translated(table, [], [])
        n = table.num_rows
        columns, names = [], []
        failed_any = np.zeros(n, bool)
        messages = np.full(n, None, dtype=object)
        for mapping in self.mappings:
            src, sink = mapping.get("source") or {}, mapping.get("sink") or {}
            values = self._source_column(table, src, source_kind)
            if (
                self.complex_to_string
                and is_complex(values.type)
                and sink.get("type") in (None, "String")
            ):
                values = complex_text(values)
            for interim in (src.get("type") if source_kind != "Json" else None, sink.get("type")):
                if interim is None:
                    continue
                values, failed = convert(values, interim)
                fresh = failed & ~failed_any
                if fresh.any():
                    bad_values = _display(table, src, source_kind).filter(pa.array(fresh))
                    text = pc.binary_join_element_wise(
                        f"Skipped an incompatible row: column '{sink['name']}': value '",
                        pc.fill_null(bad_values, ""),
                        f"' cannot be converted to {interim}",
                        "",
                    )
                    messages[fresh] = text.to_pylist()
                failed_any |= failed
            columns.append(values)
            names.append(sink["name"])
        out = pa.table(columns, names=names)
        if not failed_any.any():
            return Translated(out, [], [])
        keep = pa.array(~failed_any)
        rows = _row_text(table.filter(pa.array(failed_any))).to_pylist()
        return Translated(out.filter(keep), rows, messages[failed_any].tolist())

    @staticmethod
    def _source_column(table: pa.Table, src: dict, kind: str) -> pa.Array:
        if "ordinal" in src and "name" not in src:
            index = int(src["ordinal"]) - 1
            if not 0 <= index < table.num_columns:
                raise CopyError(
                    f"column ordinal {src['ordinal']} is outside the source's "
                    f"{table.num_columns} columns"
                )
            return table.column(index).combine_chunks()
        if "path" in src:
            keys = _json_path(src["path"])
            column = _column(table, keys[0])
            for key in keys[1:]:
                if not pa.types.is_struct(column.type):
                    raise CopyError(f"path {src['path']!r}: {key!r} is not inside an object")
                column = pc.struct_field(column, key)
            return column
        return _column(table, src.get("name", ""))


def _column(table: pa.Table, name: str) -> pa.Array:
    if name in table.column_names:
        return table.column(name).combine_chunks()
    for candidate in table.column_names:  # ADF matches column names case-insensitively
        if candidate.lower() == name.lower():
            return table.column(candidate).combine_chunks()
    if table.num_rows == 0 and table.num_columns == 0:
        return pa.nulls(0, pa.string())
    raise CopyError(
        f"column {name!r} is not in the source (it has: {', '.join(table.column_names)})"
    )


_PATH_PART = re.compile(r"\['((?:[^']|'')*)'\]|\.([A-Za-z_][A-Za-z0-9_]*)")


def _json_path(path: str) -> list[str]:
    text = path.strip()
    if text.startswith("$"):
        text = text[1:]
    keys, pos = [], 0
    for m in _PATH_PART.finditer(text):
        if m.start() != pos:
            break
        keys.append(m.group(1).replace("''", "'") if m.group(1) is not None else m.group(2))
        pos = m.end()
    if pos != len(text) or not keys:
        raise UnsupportedFeatureError(
            f"JSON path {path!r} is not supported (only $['a']['b'] or $.a.b)"
        )
    return keys


def _display(table: pa.Table, src: dict, kind: str) -> pa.Array:
    try:
        values = Translator._source_column(table, src, kind)
    except CopyError:
        return pa.nulls(table.num_rows, pa.string())
    return to_json_text(values) if is_complex(values.type) else pc.cast(values, pa.string())


def _row_text(table: pa.Table) -> pa.Array:
    """Rows as comma-separated text, for the session log."""
    if table.num_columns == 0:
        return pa.array([""] * table.num_rows, pa.string())
    parts = [
        pc.fill_null(
            to_json_text(c) if is_complex(c.type) else pc.cast(c.combine_chunks(), pa.string()), ""
        )
        for c in table.columns
    ]
    return pc.binary_join_element_wise(*parts, ",")
