"""The sources of a Copy activity: lake files (Parquet row group by row group, delimited text
and JSON lines parsed whole by Arrow's readers) and SQL tables or queries (fetched in batches),
each read as chunks of Arrow rows together with the rows skipped as incompatible while reading
them, and counted the way ADF reports a copy (bytes and files read).
"""

from __future__ import annotations

import csv
import gzip
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from mlassets.lib.adf import (
    Artifact,
)
from mlassets.twins.adf.datasets import (
    SQL_DATASETS,
    LakeFiles,
    TextOptions,
    json_schema_to_arrow,
    text_options,
)
from mlassets.twins.adf.errors import CopyError

if TYPE_CHECKING:
    from mlassets.twins.adf.engine import CopyEngine

BATCH_ROWS = 65_536


# -- sources -----------------------------------------------------------------------------------


@dataclass
class Chunk:
    """Rows read from a source, and the rows skipped as incompatible while reading them."""

    table: pa.Table
    rows_read: int
    skipped_items: list[str] = field(default_factory=list)
    skipped_messages: list[str] = field(default_factory=list)


@dataclass
class SourceStats:
    bytes_read: int = 0
    files: list[str] = field(default_factory=list)


def _lines(data: bytes) -> pa.Array:
    """The lines of a text file as one string array (without their line breaks)."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    buf = np.frombuffer(data, np.uint8)
    breaks = np.flatnonzero(buf == 10)
    starts = np.concatenate([[0], breaks + 1])
    ends = np.concatenate([breaks + 1, [len(buf)]])
    if len(starts) and starts[-1] == len(buf):
        starts, ends = starts[:-1], ends[:-1]
    offsets = (
        np.concatenate([starts, ends[-1:]]).astype(np.int64)
        if len(starts)
        else np.zeros(1, np.int64)
    )
    raw = pa.Array.from_buffers(
        pa.large_binary(), len(starts), [None, pa.py_buffer(offsets), pa.py_buffer(data)]
    )
    try:
        text = raw.cast(pa.large_string())
    except pa.ArrowInvalid:
        raise CopyError("the file is not valid UTF-8") from None
    return pc.utf8_rtrim(text, characters="\r\n").cast(pa.string())


def _read_json_lines(data: bytes, schema: pa.Schema | None) -> Chunk:
    lines = _lines(data)
    trimmed = pc.utf8_trim_whitespace(lines)
    blank = pc.equal(pc.utf8_length(trimmed), 0).to_numpy(zero_copy_only=False)
    lines, trimmed = lines.filter(pa.array(~blank)), trimmed.filter(pa.array(~blank))
    n = len(lines)
    objects = pc.and_(pc.starts_with(trimmed, "{"), pc.ends_with(trimmed, "}")).to_numpy(
        zero_copy_only=False
    )
    items: list[tuple[int, str]] = [
        (int(i), "the line is not a JSON object") for i in np.flatnonzero(~objects)
    ]
    candidates = np.flatnonzero(objects)
    cand = (
        trimmed.take(pa.array(candidates, pa.int64()))
        if len(candidates)
        else pa.array([], pa.string())
    )
    joined = pc.binary_join_element_wise(cand.cast(pa.binary()), pa.scalar(b""), pa.scalar(b"\n"))
    offsets = np.frombuffer(joined.buffers()[1], np.int32)[
        joined.offset : joined.offset + len(joined) + 1
    ].astype(np.int64)
    payload = joined.buffers()[2]
    parse = pa_json.ParseOptions(
        explicit_schema=schema,
        unexpected_field_behavior="ignore" if schema is not None else "infer",
    )
    read = pa_json.ReadOptions(use_threads=True, block_size=1 << 22)

    def attempt(lo: int, hi: int) -> tuple[pa.Table | None, str | None]:
        buf = (
            payload.slice(int(offsets[lo]), int(offsets[hi] - offsets[lo]))
            if payload
            else pa.py_buffer(b"")
        )
        try:
            table = pa_json.read_json(pa.BufferReader(buf), read_options=read, parse_options=parse)
        except pa.ArrowInvalid as exc:
            return None, str(exc).split("\n")[0]
        return (
            (table, None)
            if table.num_rows == hi - lo
            else (None, "the line holds more than one value")
        )

    pieces: list[tuple[int, pa.Table]] = []
    stack = [(0, len(candidates))] if len(candidates) else []
    while stack:
        lo, hi = stack.pop()
        table, error = attempt(lo, hi)
        if table is not None:
            pieces.append((lo, table))
        elif hi - lo == 1:
            items.append((int(candidates[lo]), error or "invalid JSON"))
        else:
            mid = (lo + hi) // 2
            stack += [(mid, hi), (lo, mid)]
    pieces.sort(key=lambda p: p[0])
    tables = [t for _, t in pieces]
    if tables:
        try:
            table = pa.concat_tables(tables, promote_options="permissive")
        except pa.ArrowInvalid as exc:
            raise CopyError(
                f"the JSON lines disagree on their types ({exc}); declare the dataset's schema"
            ) from None
    else:
        table = (schema or pa.schema([])).empty_table()
    items.sort()
    texts = lines.take(pa.array([i for i, _ in items], pa.int64())).to_pylist() if items else []
    return Chunk(table, n, texts, [f"Skipped an incompatible row: {m}" for _, m in items])


_NON_BLANK = re.compile(rb"\S")


def _read_delimited(data: bytes, opts: TextOptions, skip_lines: int, skip_rows: bool) -> Chunk:
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    pos = 0
    for _ in range(skip_lines):
        pos = data.find(b"\n", pos) + 1
        if pos == 0:
            return Chunk(pa.table({}), 0)
    if not _NON_BLANK.search(data, pos):
        return Chunk(pa.table({}), 0)
    end = data.find(b"\n", pos)
    first = (
        data[pos : end if end >= 0 else len(data)].rstrip(b"\r").decode("utf-8", errors="replace")
    )
    fields = next(csv.reader([first], delimiter=opts.delimiter, quotechar=opts.quote or '"'))
    names = fields if opts.header else [f"Prop_{i}" for i in range(len(fields))]
    if len(set(names)) != len(names):
        raise CopyError(f"the header has duplicate column names: {names}")
    bad: list[tuple[str, str]] = []

    def on_invalid(row: pa_csv.InvalidRow) -> str:
        bad.append(
            (
                row.text,
                f"Skipped an incompatible row: the row has {row.actual_columns} "
                f"columns, the header {row.expected_columns}",
            )
        )
        return "skip" if skip_rows else "error"

    try:
        table = pa_csv.read_csv(
            io.BytesIO(data),
            read_options=pa_csv.ReadOptions(
                column_names=names,
                skip_rows=skip_lines + (1 if opts.header else 0),
                block_size=1 << 24,
            ),
            parse_options=pa_csv.ParseOptions(
                delimiter=opts.delimiter,
                quote_char=opts.quote or False,
                double_quote=opts.escape == opts.quote,
                escape_char=opts.escape if opts.escape and opts.escape != opts.quote else False,
                newlines_in_values=True,
                invalid_row_handler=on_invalid,
            ),
            convert_options=pa_csv.ConvertOptions(
                column_types={n: pa.string() for n in names},
                null_values=[opts.null_value],
                strings_can_be_null=True,
                quoted_strings_can_be_null=opts.null_value == "",
            ),
        )
    except pa.ArrowInvalid as exc:
        message = bad[-1][1] if bad else str(exc).split("\n")[0]
        raise CopyError(message.replace("Skipped an incompatible row: ", "")) from None
    return Chunk(table, table.num_rows + len(bad), [b[0] for b in bad], [b[1] for b in bad])


class Source:
    """Reads a dataset in chunks; counts what it read."""

    def __init__(
        self, engine: CopyEngine, dataset: Artifact, tp: dict, source: dict, skip: bool
    ) -> None:
        self.engine = engine
        self.dataset = dataset
        self.tp = tp
        self.source = source
        self.skip = skip
        self.stats = SourceStats()
        self.kind = "sql" if dataset.type in SQL_DATASETS else dataset.type
        self.files: LakeFiles | None = None
        if self.kind != "sql":
            self.files = LakeFiles(engine.lake, dataset, tp)

    def chunks(self) -> Iterator[Chunk]:
        if self.kind == "sql":
            yield from self._sql()
            return
        assert self.files is not None
        store = self.source.get("storeSettings") or {}
        paths = self.files.list(store)
        fmt = self.source.get("formatSettings") or {}
        for path in paths:
            self.stats.bytes_read += self.engine.lake.size(path)
            self.stats.files.append(path)
            if self.kind == "Parquet":
                yield from self._parquet(path)
                continue
            opts = text_options(self.dataset.name, self.tp)
            with self.engine.lake.fs.open(self.engine.lake.path(path), "rb") as f:
                data = f.read()
            if opts.gzip:
                data = gzip.decompress(data)
            if self.kind == "Json":
                schema_type = json_schema_to_arrow(self.dataset.properties.get("schema"))
                schema = (
                    pa.schema(list(schema_type))
                    if isinstance(schema_type, pa.StructType) and len(schema_type)
                    else None
                )
                chunk = _read_json_lines(data, schema)
            else:
                chunk = _read_delimited(data, opts, int(fmt.get("skipLineCount") or 0), self.skip)
            if chunk.skipped_items and not self.skip:
                raise CopyError(
                    f"{chunk.skipped_messages[0].replace('Skipped an incompatible row: ', '')} "
                    f"in {path}: {chunk.skipped_items[0][:200]!r}"
                )
            yield chunk

    def _parquet(self, path: str) -> Iterator[Chunk]:
        with self.engine.lake.fs.open(self.engine.lake.path(path), "rb") as f:
            pf = pq.ParquetFile(f)
            if pf.metadata.num_rows == 0:
                yield Chunk(pf.schema_arrow.empty_table(), 0)
                return
            for batch in pf.iter_batches(batch_size=BATCH_ROWS):
                table = pa.Table.from_batches([batch])
                yield Chunk(table, table.num_rows)

    def _sql(self) -> Iterator[Chunk]:
        import sqlalchemy as sa

        engine = self.engine.sql_engine()
        query = self.source.get("sqlReaderQuery")
        types: list[pa.DataType | None] | None = None
        if query:
            statement = sa.text(query)
        else:
            table = self.engine.sql_table(engine, self.tp, must_exist=True)
            statement = sa.select(table)
            types = [_arrow_type(c.type) for c in table.columns]
        with engine.connect() as conn:
            result = conn.execution_options(stream_results=True).execute(statement)
            names = list(result.keys())
            types = types or [None] * len(names)
            emitted = False
            while rows := result.fetchmany(BATCH_ROWS):
                columns = list(zip(*rows, strict=True))
                table = pa.table(
                    [pa.array(col, type=t) for col, t in zip(columns, types, strict=True)],
                    names=names,
                )
                self.stats.bytes_read += table.nbytes
                emitted = True
                yield Chunk(table, table.num_rows)
            if not emitted:
                yield Chunk(
                    pa.schema(
                        [(n, t or pa.string()) for n, t in zip(names, types, strict=True)]
                    ).empty_table(),
                    0,
                )


def _arrow_type(sql_type: Any) -> pa.DataType | None:
    import sqlalchemy as sa

    if isinstance(sql_type, sa.Boolean):
        return pa.bool_()
    if isinstance(sql_type, sa.SmallInteger):
        return pa.int16()
    if isinstance(sql_type, sa.Integer):
        return pa.int64()
    if isinstance(sql_type, sa.Numeric):
        if isinstance(sql_type, sa.Float) or not sql_type.precision:
            return pa.float64()
        return pa.decimal128(sql_type.precision, sql_type.scale or 0)
    if isinstance(sql_type, sa.DateTime):
        return pa.timestamp("us", tz="UTC" if getattr(sql_type, "timezone", False) else None)
    if isinstance(sql_type, sa.Date):
        return pa.date32()
    if isinstance(sql_type, sa.String):
        return pa.string()
    if isinstance(sql_type, sa.LargeBinary | sa.BINARY | sa.VARBINARY):
        return pa.binary()
    return None
