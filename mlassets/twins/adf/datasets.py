"""What a dataset is to the local copy engine: the dataset, source, sink and linked-service
types the subset knows, the options of its text formats (delimited text and JSON lines), and
a file dataset resolved against the lake. The validator, the sources, the sinks and the engine
all read datasets through these, so a format rule is written once.
"""

from __future__ import annotations

import fnmatch
import posixpath
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from mlassets.lib.adf import (
    Artifact,
    UnsupportedFeatureError,
)
from mlassets.roles.storage import LakeStorage
from mlassets.twins.adf.errors import CopyError

LAKE_LINKED_SERVICES = {"AzureBlobFS", "AzureBlobStorage"}
SQL_LINKED_SERVICES = {"AzureSqlDatabase", "SqlServer", "AzureSqlMI"}
LOCATIONS = {"AzureBlobFSLocation": "fileSystem", "AzureBlobStorageLocation": "container"}
FILE_DATASETS = {"Parquet", "DelimitedText", "Json"}
SQL_DATASETS = {"AzureSqlTable", "SqlServerTable", "AzureSqlMITable"}
SOURCES = {
    "ParquetSource": "Parquet",
    "DelimitedTextSource": "DelimitedText",
    "JsonSource": "Json",
    "AzureSqlSource": "sql",
    "SqlServerSource": "sql",
    "SqlSource": "sql",
    "SqlMISource": "sql",
}
SINKS = {
    "ParquetSink": "Parquet",
    "DelimitedTextSink": "DelimitedText",
    "JsonSink": "Json",
    "AzureSqlSink": "sql",
    "SqlServerSink": "sql",
    "SqlSink": "sql",
    "SqlMISink": "sql",
}

PARQUET_CODECS = {"none": "none", "snappy": "snappy", "gzip": "gzip", "lz4": "lz4", "zstd": "zstd"}


@dataclass(frozen=True)
class TextOptions:
    delimiter: str = ","
    quote: str | None = '"'
    escape: str | None = "\\"
    header: bool = False
    null_value: str = ""
    gzip: bool = False


def text_options(dataset: str, tp: dict, check_only: bool = False) -> TextOptions:
    where = f"dataset {dataset!r}"
    encoding = tp.get("encodingName", "UTF-8")
    if isinstance(encoding, str) and encoding.upper().replace("-", "") not in ("UTF8",):
        raise UnsupportedFeatureError(
            f"{where}: encodingName {encoding!r} is not supported (UTF-8 only)"
        )
    codec = tp.get("compressionCodec")
    if isinstance(tp.get("compression"), dict):
        codec = tp["compression"].get("type")
    if codec is not None and isinstance(codec, str) and codec.lower() not in ("none", "gzip", ""):
        raise UnsupportedFeatureError(
            f"{where}: compression {codec!r} is not supported (gzip only)"
        )
    row = tp.get("rowDelimiter")
    if row is not None and isinstance(row, str) and row not in ("\n", "\r\n", ""):
        raise UnsupportedFeatureError(f"{where}: rowDelimiter {row!r} is not supported")
    delimiter = tp.get("columnDelimiter", ",")
    if isinstance(delimiter, str) and len(delimiter) != 1:
        raise UnsupportedFeatureError(
            f"{where}: a multi-character columnDelimiter is not supported"
        )
    if check_only:
        return TextOptions()
    quote = tp.get("quoteChar", '"')
    escape = tp.get("escapeChar", "\\")
    return TextOptions(
        delimiter=delimiter or ",",
        quote=quote or None,
        escape=escape or None,
        header=bool(tp.get("firstRowAsHeader", False)),
        null_value=tp.get("nullValue", "") or "",
        gzip=isinstance(codec, str) and codec.lower() == "gzip",
    )


def json_schema_to_arrow(spec: Any) -> pa.DataType | None:
    if not isinstance(spec, dict):
        return None
    kind = spec.get("type")
    if kind == "object":
        fields = [
            pa.field(name, t)
            for name, sub in (spec.get("properties") or {}).items()
            if (t := json_schema_to_arrow(sub)) is not None
        ]
        return pa.struct(fields)
    if kind == "array":
        inner = json_schema_to_arrow(spec.get("items") or {"type": "string"})
        return pa.list_(inner or pa.string())
    return {
        "string": pa.string(),
        "integer": pa.int64(),
        "number": pa.float64(),
        "boolean": pa.bool_(),
    }.get(kind)


class LakeFiles:
    """A file dataset resolved against the lake: what to read, or where to write."""

    def __init__(self, lake: LakeStorage, dataset: Artifact, tp: dict) -> None:
        self.lake = lake
        self.dataset = dataset
        self.tp = tp
        location = tp.get("location") or {}
        container = location.get(LOCATIONS[location["type"]]) or ""
        self.folder = join_path(container, location.get("folderPath") or "")
        self.file_name = location.get("fileName") or ""
        self.container = container

    @property
    def path(self) -> str:
        return join_path(self.folder, self.file_name)

    def list(self, store: dict) -> list[str]:
        pattern = store.get("wildcardFileName")
        folder = self.folder
        if store.get("wildcardFolderPath"):
            folder = join_path(self.container, store["wildcardFolderPath"])
        if self.file_name and not pattern:
            if not self.lake.exists(self.path):
                raise CopyError(
                    f"the source file {self.lake.uri(self.path)} does not exist", code="2200"
                )
            if self.lake.fs.isdir(self.lake.path(self.path)):
                folder, pattern = self.path, "*"
            else:
                return [self.path]
        pattern = pattern or "*"
        recursive = bool(store.get("recursive", True))
        fs = self.lake.fs
        root = self.lake.path(folder)
        folder_has_glob = any(c in folder for c in "*?[")
        if folder_has_glob:
            dirs = [p for p in fs.glob(root) if fs.isdir(p)]
        else:
            if not fs.exists(root):
                return []
            dirs = [root]
        found: list[str] = []
        for d in dirs:
            if recursive:
                paths = fs.find(d)
            else:
                paths = [e["name"] for e in fs.ls(d, detail=True) if e.get("type") == "file"]
            found += [
                self.lake.relative(p)
                for p in paths
                if fnmatch.fnmatchcase(posixpath.basename(p), pattern)
            ]
        return sorted(set(found))


def join_path(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))
