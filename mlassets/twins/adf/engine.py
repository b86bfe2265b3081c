"""The embedded twin of Azure Data Factory: runs the pipelines of `adf/` on this machine.

It interprets the same JSON a factory runs, for the subset the platform uses, and reports
what ADF reports (run id, status, per-activity output with the Copy metrics), computed from
what it actually did.

**The subset.** Activities: ``Copy`` and ``IfCondition`` (with ``dependsOn`` on Succeeded /
Failed / Completed, and ``policy`` timeout and retry). Datasets: ``Parquet``, ``DelimitedText``
and ``Json`` on the lake (``AzureBlobFSLocation`` / ``AzureBlobStorageLocation``; the linked
service is the `LakeStorage` resource, a file's path is ``[fileSystem/]folderPath/fileName``
under the lake root) and ``AzureSqlTable`` / ``SqlServerTable`` (the SQLAlchemy URL the engine
is given). Copy: a table or ``sqlReaderQuery`` source, ``insert`` or ``upsert`` SQL sinks with
``preCopyScript`` and ``tableOption: autoCreate``; ``TabularTranslator`` mappings by name,
JSON path or ordinal, with interim types (String, Int16/32/64, Single, Double, Decimal,
Boolean, DateTime, DateTimeOffset, Guid, Byte[]) and ``mapComplexValuesToString``; fault
tolerance (``enableSkipIncompatibleRow``) with the session log (``logSettings``) written where
ADF writes it, in its format. Json sources are JSON lines (one object per line, read against
the dataset's schema when it declares one). An upsert stages the rows in a temporary table and
merges them set-based, like ADF's ``useTempDB``. Expressions: see `adf_expressions`. Every
property outside this
subset is rejected before anything runs, with an error naming the activity (or dataset) and
the property; performance hints (parallelCopies, dataIntegrationUnits, ...) are accepted and
ignored.

**Incompatible rows** are, as in ADF: a delimited-text row with the wrong number of columns, a
JSON line that is not an object or does not fit the dataset's schema, and a value that does not
convert to the mapped type. With ``enableSkipIncompatibleRow`` they are skipped and logged
(``TabularRowSkip``); without it the first one fails the activity.

**Data movement** is columnar: files are parsed by Arrow's readers (whole-file for text,
row group by row group for Parquet), conversions are compute kernels, and a value that fails
to convert is isolated by bisection, so only the bad rows ever take a per-row path. SQL rows
go through the DB-API in batches of ``writeBatchSize`` inside one transaction.
"""

from __future__ import annotations

import csv
import fnmatch
import gzip
import io
import json
import logging
import posixpath
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from mlassets.lib.adf import (
    CANCELLED,
    FAILED,
    SUCCEEDED,
    ActivityRunResult,
    Artifact,
    ArtifactError,
    Artifacts,
    PipelineRunFailed,
    PipelineRunResult,
    PipelineRunTimeout,
    UnsupportedFeatureError,
    coerce_parameters,
    json_quote,
    masked,
    secure_parameter_names,
)
from mlassets.roles.storage import LakeStorage
from mlassets.twins.adf import expressions as ex

ENGINE = "local"
RUNTIME = "Embedded (mlassets local copy engine)"
FACTORY = "mlassets-local"
_log = logging.getLogger(__name__)

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
_PARQUET_CODECS = {"none": "none", "snappy": "snappy", "gzip": "gzip", "lz4": "lz4", "zstd": "zstd"}
_BATCH_ROWS = 65_536
_ISOLATE_BELOW = 32  # a failing block this small is checked value by value

# -- the subset, property by property (anything else is rejected up front) -------------------

_HINTS = {"maxConcurrentConnections", "disableMetricsCollection"}
_ACTIVITY_KEYS = {
    "Copy": {
        "name",
        "type",
        "description",
        "dependsOn",
        "userProperties",
        "policy",
        "state",
        "onInactiveMarkAs",
        "typeProperties",
        "inputs",
        "outputs",
    },
    "IfCondition": {
        "name",
        "type",
        "description",
        "dependsOn",
        "userProperties",
        "state",
        "onInactiveMarkAs",
        "typeProperties",
    },
}
_TYPE_PROPERTIES = {
    "Copy": {
        "source",
        "sink",
        "translator",
        "enableStaging",
        "enableSkipIncompatibleRow",
        "logSettings",
        "parallelCopies",
        "dataIntegrationUnits",
        "validateDataConsistency",
    },
    "IfCondition": {"expression", "ifTrueActivities", "ifFalseActivities"},
}
_POLICY_KEYS = {"timeout", "retry", "retryIntervalInSeconds", "secureInput", "secureOutput"}
_SOURCE_KEYS = {
    "Parquet": {"type", "storeSettings", "formatSettings", "sourceRetryCount", "sourceRetryWait"},
    "DelimitedText": {
        "type",
        "storeSettings",
        "formatSettings",
        "sourceRetryCount",
        "sourceRetryWait",
    },
    "Json": {"type", "storeSettings", "formatSettings", "sourceRetryCount", "sourceRetryWait"},
    "sql": {
        "type",
        "sqlReaderQuery",
        "queryTimeout",
        "partitionOption",
        "isolationLevel",
        "sourceRetryCount",
        "sourceRetryWait",
    },
}
_SINK_COMMON = {"type", "writeBatchSize", "writeBatchTimeout", "sinkRetryCount", "sinkRetryWait"}
_SINK_KEYS = {
    "Parquet": _SINK_COMMON | {"storeSettings", "formatSettings"},
    "DelimitedText": _SINK_COMMON | {"storeSettings", "formatSettings"},
    "Json": _SINK_COMMON | {"storeSettings", "formatSettings"},
    "sql": _SINK_COMMON
    | {"writeBehavior", "upsertSettings", "preCopyScript", "tableOption", "sqlWriterUseTableLock"},
}
_READ_SETTINGS = {"AzureBlobFSReadSettings", "AzureBlobStorageReadSettings"}
_READ_SETTINGS_KEYS = {
    "type",
    "recursive",
    "wildcardFolderPath",
    "wildcardFileName",
    "deleteFilesAfterCompletion",
    "enablePartitionDiscovery",
}
_WRITE_SETTINGS = {"AzureBlobFSWriteSettings", "AzureBlobStorageWriteSettings"}
_WRITE_SETTINGS_KEYS = {"type", "copyBehavior", "blockSizeInMB"}
_FORMAT_SETTINGS = {
    "DelimitedTextReadSettings": {"type", "skipLineCount"},
    "JsonReadSettings": {"type"},
    "ParquetReadSettings": {"type"},
    "ParquetWriteSettings": {"type"},
    "DelimitedTextWriteSettings": {"type", "quoteAllText", "fileExtension"},
    "JsonWriteSettings": {"type", "filePattern"},
}
_DATASET_KEYS = {
    "type",
    "description",
    "linkedServiceName",
    "parameters",
    "annotations",
    "folder",
    "typeProperties",
    "schema",
    "structure",
}
_DATASET_TYPE_PROPERTIES = {
    "Parquet": {"location", "compressionCodec"},
    "DelimitedText": {
        "location",
        "columnDelimiter",
        "rowDelimiter",
        "encodingName",
        "compressionCodec",
        "compressionLevel",
        "quoteChar",
        "escapeChar",
        "firstRowAsHeader",
        "nullValue",
    },
    "Json": {"location", "encodingName", "compression"},
    "AzureSqlTable": {"schema", "table", "tableName"},
    "SqlServerTable": {"schema", "table", "tableName"},
    "AzureSqlMITable": {"schema", "table", "tableName"},
}
_LOCATION_KEYS = {"type", "folderPath", "fileName", "fileSystem", "container"}
_TRANSLATOR_KEYS = {
    "type",
    "mappings",
    "typeConversion",
    "mapComplexValuesToString",
    "collectionReference",
}
_LOG_SETTINGS_KEYS = {"enableCopyActivityLog", "copyActivityLogSettings", "logLocationSettings"}
_PIPELINE_KEYS = {
    "description",
    "activities",
    "parameters",
    "variables",
    "concurrency",
    "annotations",
    "folder",
    "policy",
}
_PARAMETER_TYPES = {"string", "securestring", "int", "float", "bool", "array", "object"}


class CopyError(RuntimeError):
    """An activity failed while running (the message is what ADF would report)."""

    def __init__(self, message: str, code: str = "2200", failure_type: str = "UserError") -> None:
        super().__init__(message)
        self.code = code
        self.failure_type = failure_type


class _PipelineDeadline(Exception):
    """The caller's timeout for the whole run passed."""


# -- validation ------------------------------------------------------------------------------


def _keys(obj: Any, allowed: set[str], where: str) -> dict:
    if not isinstance(obj, dict):
        raise ArtifactError(f"{where}: expected an object, got {type(obj).__name__}")
    extra = sorted(set(obj) - allowed - _HINTS)
    if extra:
        raise UnsupportedFeatureError(
            f"{where}: property {', '.join(repr(e) for e in extra)} is not supported by the local "
            "engine"
        )
    return obj


def _static(obj: dict, key: str, where: str, default: Any = None) -> Any:
    """A property that must be a literal (not an expression) for the engine to plan."""
    value = obj.get(key, default)
    if ex.expression_text(value) is not None:
        raise UnsupportedFeatureError(f"{where}.{key}: an expression is not supported here")
    return value


class Validator:
    """Checks a pipeline (and the datasets and linked services it uses) against the subset."""

    def __init__(self, artifacts: Artifacts) -> None:
        self.artifacts = artifacts

    def pipeline(self, name: str) -> Artifact:
        artifact = self.artifacts.pipeline(name)
        props = artifact.properties
        where = f"pipeline {name!r}"
        _keys(props, _PIPELINE_KEYS, where)
        if props.get("variables"):
            raise UnsupportedFeatureError(f"{where}: pipeline variables are not supported")
        for pname, spec in (props.get("parameters") or {}).items():
            if str(spec.get("type", "")).lower() not in _PARAMETER_TYPES:
                raise ArtifactError(
                    f"{where}: parameter {pname!r} has unknown type {spec.get('type')!r}"
                )
        activities = props.get("activities") or []
        if not activities:
            raise ArtifactError(f"{where}: no activities")
        self._activities(activities, where, set())
        return artifact

    def _activities(self, activities: list, where: str, seen: set[str]) -> None:
        names = set()
        for act in activities:
            if not isinstance(act, dict) or not isinstance(act.get("name"), str):
                raise ArtifactError(f"{where}: an activity without a name")
            name = act["name"]
            if name in seen:
                raise ArtifactError(f"{where}: two activities named {name!r}")
            seen.add(name)
            names.add(name)
        for act in activities:
            self._activity(act, where, names, seen)

    def _activity(self, act: dict, where: str, siblings: set[str], seen: set[str]) -> None:
        kind = act.get("type")
        at = f"{where}, activity {act['name']!r}"
        if kind not in _ACTIVITY_KEYS:
            raise UnsupportedFeatureError(
                f"{at}: activity type {kind!r} is not supported by the local engine "
                f"(supported: {', '.join(sorted(_ACTIVITY_KEYS))})"
            )
        _keys(act, _ACTIVITY_KEYS[kind], at)
        if act.get("state", "Active") != "Active":
            raise UnsupportedFeatureError(f"{at}: inactive activities are not supported")
        for dep in act.get("dependsOn") or []:
            _keys(dep, {"activity", "dependencyConditions"}, f"{at}.dependsOn")
            if dep.get("activity") not in siblings:
                raise ArtifactError(f"{at}: depends on unknown activity {dep.get('activity')!r}")
            bad = set(dep.get("dependencyConditions") or ["Succeeded"]) - {
                "Succeeded",
                "Failed",
                "Completed",
            }
            if bad:
                raise UnsupportedFeatureError(
                    f"{at}: dependency condition(s) {sorted(bad)} are not supported"
                )
        ex.check(act.get("userProperties") or [], f"{at}.userProperties", {"pipeline", "activity"})
        tp = _keys(act.get("typeProperties") or {}, _TYPE_PROPERTIES[kind], f"{at}.typeProperties")
        if kind == "IfCondition":
            if "expression" not in tp:
                raise ArtifactError(f"{at}: IfCondition without an expression")
            ex.check(tp["expression"], f"{at}.expression", {"pipeline", "activity"})
            for branch in ("ifTrueActivities", "ifFalseActivities"):
                if tp.get(branch):
                    self._activities(tp[branch], f"{at}.{branch}", seen)
            return
        self._copy(act, at, tp)

    def _copy(self, act: dict, at: str, tp: dict) -> None:
        policy = _keys(act.get("policy") or {}, _POLICY_KEYS, f"{at}.policy")
        if "timeout" in policy:
            parse_timespan(_static(policy, "timeout", f"{at}.policy"))
        if _static(tp, "enableStaging", at, False):
            raise UnsupportedFeatureError(f"{at}: enableStaging is not supported")
        if _static(tp, "validateDataConsistency", at, False):
            raise UnsupportedFeatureError(f"{at}: validateDataConsistency is not supported")
        ex.check(tp, f"{at}.typeProperties", {"pipeline", "activity"})
        for side in ("inputs", "outputs"):
            refs = act.get(side) or []
            if len(refs) != 1:
                raise ArtifactError(f"{at}: a Copy activity needs exactly one dataset in {side}")
            ex.check(
                refs[0].get("parameters") or {},
                f"{at}.{side}[0].parameters",
                {"pipeline", "activity"},
            )
        source_ds = self.dataset(_static(act["inputs"][0], "referenceName", f"{at}.inputs[0]"))
        sink_ds = self.dataset(_static(act["outputs"][0], "referenceName", f"{at}.outputs[0]"))
        source = tp.get("source") or {}
        sink = tp.get("sink") or {}
        source_kind = SOURCES.get(_static(source, "type", f"{at}.source"))
        sink_kind = SINKS.get(_static(sink, "type", f"{at}.sink"))
        if source_kind is None:
            raise UnsupportedFeatureError(
                f"{at}: source type {source.get('type')!r} is not supported"
            )
        if sink_kind is None:
            raise UnsupportedFeatureError(f"{at}: sink type {sink.get('type')!r} is not supported")
        _keys(source, _SOURCE_KEYS[source_kind], f"{at}.source")
        _keys(sink, _SINK_KEYS[sink_kind], f"{at}.sink")
        for role, kind, ds in (("source", source_kind, source_ds), ("sink", sink_kind, sink_ds)):
            ds_kind = "sql" if ds.type in SQL_DATASETS else ds.type
            if ds_kind != kind:
                raise ArtifactError(
                    f"{at}: {role} type does not match dataset {ds.name!r} ({ds.type})"
                )
        for role, obj, settings in (
            ("source", source, _READ_SETTINGS),
            ("sink", sink, _WRITE_SETTINGS),
        ):
            store = obj.get("storeSettings")
            if store is not None:
                if _static(store, "type", f"{at}.{role}.storeSettings") not in settings:
                    raise UnsupportedFeatureError(
                        f"{at}.{role}.storeSettings: type {store.get('type')!r} is not supported"
                    )
                _keys(
                    store,
                    _READ_SETTINGS_KEYS if role == "source" else _WRITE_SETTINGS_KEYS,
                    f"{at}.{role}.storeSettings",
                )
                if _static(store, "enablePartitionDiscovery", f"{at}.{role}.storeSettings", False):
                    raise UnsupportedFeatureError(
                        f"{at}.{role}.storeSettings: enablePartitionDiscovery is not supported"
                    )
            fmt = obj.get("formatSettings")
            if fmt is not None:
                ftype = _static(fmt, "type", f"{at}.{role}.formatSettings")
                if ftype not in _FORMAT_SETTINGS:
                    raise UnsupportedFeatureError(
                        f"{at}.{role}.formatSettings: type {ftype!r} is not supported"
                    )
                _keys(fmt, _FORMAT_SETTINGS[ftype], f"{at}.{role}.formatSettings")
        if (
            source_kind == "sql"
            and _static(source, "partitionOption", f"{at}.source", "None") != "None"
        ):
            raise UnsupportedFeatureError(f"{at}.source: partitionOption is not supported")
        if sink_kind == "sql":
            behavior = _static(sink, "writeBehavior", f"{at}.sink", "insert")
            if str(behavior).lower() not in ("insert", "upsert"):
                raise UnsupportedFeatureError(
                    f"{at}.sink: writeBehavior {behavior!r} is not supported"
                )
            if sink.get("upsertSettings") is not None:
                _keys(
                    sink["upsertSettings"],
                    {"useTempDB", "interimSchemaName", "keys"},
                    f"{at}.sink.upsertSettings",
                )
            option = _static(sink, "tableOption", f"{at}.sink", "none")
            if str(option).lower() not in ("none", "autocreate"):
                raise UnsupportedFeatureError(f"{at}.sink: tableOption {option!r} is not supported")
        translator = tp.get("translator")
        if translator is not None:
            _keys(translator, _TRANSLATOR_KEYS, f"{at}.translator")
            if _static(translator, "type", f"{at}.translator") != "TabularTranslator":
                raise UnsupportedFeatureError(
                    f"{at}.translator: type {translator.get('type')!r} is not supported"
                )
            if translator.get("collectionReference"):
                raise UnsupportedFeatureError(
                    f"{at}.translator: collectionReference is not supported"
                )
            for i, mapping in enumerate(translator.get("mappings") or []):
                mw = f"{at}.translator.mappings[{i}]"
                _keys(mapping, {"source", "sink"}, mw)
                _keys(
                    mapping.get("source") or {},
                    {"name", "path", "type", "ordinal", "physicalType"},
                    f"{mw}.source",
                )
                _keys(mapping.get("sink") or {}, {"name", "type", "physicalType"}, f"{mw}.sink")
                for side in ("source", "sink"):
                    kind = (mapping.get(side) or {}).get("type")
                    if kind is not None and kind not in INTERIM_TYPES:
                        raise UnsupportedFeatureError(
                            f"{mw}.{side}: interim type {kind!r} is not supported"
                        )
                if not (mapping.get("sink") or {}).get("name"):
                    raise ArtifactError(f"{mw}: the sink column has no name")
        logs = tp.get("logSettings")
        if logs is not None:
            _keys(logs, _LOG_SETTINGS_KEYS, f"{at}.logSettings")
            _keys(
                logs.get("copyActivityLogSettings") or {},
                {"logLevel", "enableReliableLogging"},
                f"{at}.logSettings.copyActivityLogSettings",
            )
            location = _keys(
                logs.get("logLocationSettings") or {},
                {"linkedServiceName", "path"},
                f"{at}.logSettings.logLocationSettings",
            )
            ls_name = _static(
                location.get("linkedServiceName") or {},
                "referenceName",
                f"{at}.logSettings.logLocationSettings.linkedServiceName",
            )
            if (
                ls_name is None
                or self.artifacts.linked_service(ls_name).type not in LAKE_LINKED_SERVICES
            ):
                raise UnsupportedFeatureError(
                    f"{at}.logSettings: logs must go to a lake linked service"
                )

    def dataset(self, name: str) -> Artifact:
        ds = self.artifacts.dataset(name)
        where = f"dataset {name!r}"
        props = _keys(ds.properties, _DATASET_KEYS, where)
        kind = ds.type
        if kind not in _DATASET_TYPE_PROPERTIES:
            raise UnsupportedFeatureError(
                f"{where}: dataset type {kind!r} is not supported by the local engine"
            )
        tp = _keys(
            props.get("typeProperties") or {},
            _DATASET_TYPE_PROPERTIES[kind],
            f"{where}.typeProperties",
        )
        ex.check(tp, f"{where}.typeProperties", {"dataset"})
        ls = self.artifacts.linked_service(
            _static(
                props.get("linkedServiceName") or {}, "referenceName", f"{where}.linkedServiceName"
            )
        )
        if ls.properties.get("parameters"):
            raise UnsupportedFeatureError(
                f"linked service {ls.name!r}: parameters are not supported"
            )
        expected = SQL_LINKED_SERVICES if kind in SQL_DATASETS else LAKE_LINKED_SERVICES
        if ls.type not in expected:
            raise UnsupportedFeatureError(
                f"{where}: a {kind} dataset on linked service {ls.name!r} ({ls.type}) is not "
                "supported"
            )
        if kind in FILE_DATASETS:
            location = _keys(tp.get("location") or {}, _LOCATION_KEYS, f"{where}.location")
            if _static(location, "type", f"{where}.location") not in LOCATIONS:
                raise UnsupportedFeatureError(
                    f"{where}: location type {location.get('type')!r} is not supported"
                )
            codec = tp.get("compressionCodec")
            if (
                kind == "Parquet"
                and codec is not None
                and ex.expression_text(codec) is None
                and str(codec).lower() not in _PARQUET_CODECS
            ):
                raise UnsupportedFeatureError(
                    f"{where}: compressionCodec {codec!r} is not supported"
                )
            if kind in ("DelimitedText", "Json"):
                _text_options(ds.name, tp, check_only=True)
        return ds


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


def _complex_text(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Lists and objects as JSON text, null staying null (mapComplexValuesToString)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    return pc.if_else(values.is_valid(), to_json_text(values), pa.scalar(None, pa.string()))


def _is_complex(t: pa.DataType) -> bool:
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
        if _is_complex(arr.type):
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
    if _is_complex(arr.type):
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


# -- text formats ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TextOptions:
    delimiter: str = ","
    quote: str | None = '"'
    escape: str | None = "\\"
    header: bool = False
    null_value: str = ""
    gzip: bool = False


def _text_options(dataset: str, tp: dict, check_only: bool = False) -> TextOptions:
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


def _json_schema_to_arrow(spec: Any) -> pa.DataType | None:
    if not isinstance(spec, dict):
        return None
    kind = spec.get("type")
    if kind == "object":
        fields = [
            pa.field(name, t)
            for name, sub in (spec.get("properties") or {}).items()
            if (t := _json_schema_to_arrow(sub)) is not None
        ]
        return pa.struct(fields)
    if kind == "array":
        inner = _json_schema_to_arrow(spec.get("items") or {"type": "string"})
        return pa.list_(inner or pa.string())
    return {
        "string": pa.string(),
        "integer": pa.int64(),
        "number": pa.float64(),
        "boolean": pa.bool_(),
    }.get(kind)


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


class LakeFiles:
    """A file dataset resolved against the lake: what to read, or where to write."""

    def __init__(self, lake: LakeStorage, dataset: Artifact, tp: dict) -> None:
        self.lake = lake
        self.dataset = dataset
        self.tp = tp
        location = tp.get("location") or {}
        container = location.get(LOCATIONS[location["type"]]) or ""
        self.folder = _join(container, location.get("folderPath") or "")
        self.file_name = location.get("fileName") or ""
        self.container = container

    @property
    def path(self) -> str:
        return _join(self.folder, self.file_name)

    def list(self, store: dict) -> list[str]:
        pattern = store.get("wildcardFileName")
        folder = self.folder
        if store.get("wildcardFolderPath"):
            folder = _join(self.container, store["wildcardFolderPath"])
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


def _join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


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
            opts = _text_options(self.dataset.name, self.tp)
            with self.engine.lake.fs.open(self.engine.lake.path(path), "rb") as f:
                data = f.read()
            if opts.gzip:
                data = gzip.decompress(data)
            if self.kind == "Json":
                schema_type = _json_schema_to_arrow(self.dataset.properties.get("schema"))
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
            for batch in pf.iter_batches(batch_size=_BATCH_ROWS):
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
            while rows := result.fetchmany(_BATCH_ROWS):
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


def _sql_type(t: pa.DataType, column: str, key: bool = False) -> Any:
    import sqlalchemy as sa

    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return sa.Unicode(450) if key else sa.UnicodeText()  # 450: SQL Server's index limit
    if pa.types.is_boolean(t):
        return sa.Boolean()
    if pa.types.is_int8(t) or pa.types.is_int16(t) or pa.types.is_uint8(t):
        return sa.SmallInteger()
    if pa.types.is_int32(t) or pa.types.is_uint16(t):
        return sa.Integer()
    if pa.types.is_integer(t):
        return sa.BigInteger()
    if pa.types.is_floating(t):
        return sa.Float()
    if pa.types.is_decimal(t):
        return sa.Numeric(t.precision, t.scale)
    if pa.types.is_timestamp(t):
        return sa.DateTime()
    if pa.types.is_date(t):
        return sa.Date()
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return sa.LargeBinary()
    raise CopyError(f"column {column!r} of type {t} cannot be written to a SQL table")


# -- the translator ------------------------------------------------------------------------------


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
                    if _is_complex(f.type):
                        table = table.set_column(i, f.name, _complex_text(table.column(i)))
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
                and _is_complex(values.type)
                and sink.get("type") in (None, "String")
            ):
                values = _complex_text(values)
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
    return to_json_text(values) if _is_complex(values.type) else pc.cast(values, pa.string())


def _row_text(table: pa.Table) -> pa.Array:
    """Rows as comma-separated text, for the session log."""
    if table.num_columns == 0:
        return pa.array([""] * table.num_rows, pa.string())
    parts = [
        pc.fill_null(
            to_json_text(c) if _is_complex(c.type) else pc.cast(c.combine_chunks(), pa.string()), ""
        )
        for c in table.columns
    ]
    return pc.binary_join_element_wise(*parts, ",")


# -- sinks ---------------------------------------------------------------------------------------


class FileSink:
    """Writes one file of a lake dataset atomically (a temp file renamed, or a blob upload)."""

    extension = ""

    def __init__(
        self, engine: CopyEngine, dataset: Artifact, tp: dict, sink: dict, activity_run_id: str
    ) -> None:
        self.engine = engine
        self.lake = engine.lake
        self.files = LakeFiles(engine.lake, dataset, tp)
        self.tp = tp
        self.sink = sink
        store = sink.get("storeSettings") or {}
        name = self.files.file_name
        if not name:
            if store.get("copyBehavior") not in (None, "MergeFiles"):
                raise UnsupportedFeatureError(
                    f"dataset {dataset.name!r}: a sink without a file name writes one merged file; "
                    f"copyBehavior {store.get('copyBehavior')!r} is not supported"
                )
            name = f"data_{activity_run_id}.{self.extension}"
        self.relative = _join(self.files.folder, name)
        self.rows = 0
        self._handle: Any = None
        self._tmp: str | None = None
        self._written = False

    def _open(self) -> Any:
        target = self.lake.path(self.relative)
        if self.lake.is_local:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            self._tmp = f"{target}.{uuid.uuid4().hex}.tmp"
            self._handle = open(self._tmp, "wb")  # noqa: SIM115 - closed in close()
        else:
            self._handle = self.lake.fs.open(target, "wb")
        return self._handle

    def close(self, ok: bool) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.close()
            self._written = ok
        if self._tmp is not None:
            tmp, self._tmp = self._tmp, None
            if ok:
                Path(tmp).replace(self.lake.path(self.relative))
            else:
                Path(tmp).unlink(missing_ok=True)
        elif not ok and not self.lake.is_local and handle is not None:
            self.lake.delete(self.relative)

    @property
    def files_written(self) -> int:
        return 1 if self._written else 0

    @property
    def bytes_written(self) -> int:
        return self.lake.size(self.relative) if self._written else 0


class ParquetFileSink(FileSink):
    extension = "parquet"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        codec = str(self.tp.get("compressionCodec") or "snappy").lower()
        if codec not in _PARQUET_CODECS:
            raise UnsupportedFeatureError(f"Parquet compressionCodec {codec!r} is not supported")
        self.codec = _PARQUET_CODECS[codec]
        self._writer: pq.ParquetWriter | None = None

    def write(self, table: pa.Table) -> None:
        if self._writer is None:
            self._writer = pq.ParquetWriter(self._open(), table.schema, compression=self.codec)
        elif not table.schema.equals(self._writer.schema, check_metadata=False):
            try:
                table = table.cast(self._writer.schema)
            except (pa.ArrowInvalid, ValueError) as exc:
                raise CopyError(f"the source files have different schemas: {exc}") from None
        self._writer.write_table(table)
        self.rows += table.num_rows

    def close(self, ok: bool) -> None:
        if self._writer is not None:
            self._writer.close()
        super().close(ok)


class DelimitedTextFileSink(FileSink):
    extension = "txt"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.opts = _text_options(self.files.dataset.name, self.tp)
        if self.opts.quote not in ('"', None) or self.opts.escape not in ('"', "\\", None):
            raise UnsupportedFeatureError(
                'DelimitedText sink: only the " quote character is supported'
            )
        if self.opts.null_value:
            raise UnsupportedFeatureError(
                "DelimitedText sink: a non-empty nullValue is not supported"
            )
        fmt = self.sink.get("formatSettings") or {}
        self.quote_all = bool(fmt.get("quoteAllText", False))
        self._writer: pa_csv.CSVWriter | None = None
        self._stream: Any = None

    def write(self, table: pa.Table) -> None:
        for f in table.schema:
            if _is_complex(f.type):
                raise CopyError(f"column {f.name!r} ({f.type}) cannot be written as delimited text")
        if self._writer is None:
            raw = self._open()
            self._stream = pa.CompressedOutputStream(raw, "gzip") if self.opts.gzip else raw
            self._schema = table.schema
            self._writer = pa_csv.CSVWriter(
                self._stream,
                table.schema,
                write_options=pa_csv.WriteOptions(
                    include_header=self.opts.header,
                    delimiter=self.opts.delimiter,
                    quoting_style="all_valid" if self.quote_all else "needed",
                ),
            )
        self._writer.write_table(table.cast(self._schema))
        self.rows += table.num_rows

    def close(self, ok: bool) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._stream is not None and self._stream is not self._handle:
            self._stream.close()
        super().close(ok)


class JsonFileSink(FileSink):
    extension = "json"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.opts = _text_options(self.files.dataset.name, self.tp)
        fmt = self.sink.get("formatSettings") or {}
        self.array = fmt.get("filePattern", "setOfObjects") == "arrayOfObjects"
        self._stream: Any = None

    def write(self, table: pa.Table) -> None:
        if self._stream is None:
            raw = self._open()
            self._stream = gzip.GzipFile(fileobj=raw, mode="wb") if self.opts.gzip else raw
            if self.array:
                self._stream.write(b"[")
        if table.num_rows:
            struct = pa.StructArray.from_arrays(
                [c.combine_chunks() for c in table.columns], names=table.column_names
            )
            lines = to_json_text(struct)
            sep = ",\n" if self.array else "\n"
            if self.array and self.rows:
                self._stream.write(b",\n")
            ended = pc.binary_join_element_wise(lines, pa.scalar(""), sep)
            data = ended.buffers()[2]
            offsets = np.frombuffer(ended.buffers()[1], np.int32)
            body = data.to_pybytes()[
                int(offsets[ended.offset]) : int(offsets[ended.offset + len(ended)])
            ]
            self._stream.write(body[: -len(sep)] if self.array else body)
        self.rows += table.num_rows

    def close(self, ok: bool) -> None:
        if self._stream is not None:
            if self.array:
                self._stream.write(b"]")
            if self._stream is not self._handle:
                self._stream.close()
        super().close(ok)


class SqlSink:
    """Inserts or upserts into a table, all in one transaction.

    An upsert stages the rows in a temporary table (ADF's useTempDB), then, set-based,
    deletes the target rows whose keys it holds and inserts the last staged row per key.
    """

    def __init__(self, engine: CopyEngine, dataset: Artifact, tp: dict, sink: dict) -> None:
        self.engine = engine
        self.dataset = dataset
        self.tp = tp
        self.sink = sink
        self.rows = 0
        self.bytes_written = 0
        self.files_written = 0
        self.behavior = str(sink.get("writeBehavior") or "insert").lower()
        keys = (sink.get("upsertSettings") or {}).get("keys") or []
        if self.behavior == "upsert" and not keys:
            raise CopyError("upsert needs upsertSettings.keys")
        self.keys = [str(k) for k in keys]
        self.auto_create = str(sink.get("tableOption") or "none").lower() == "autocreate"
        self.batch = int(sink.get("writeBatchSize") or 10_000)
        self._sa_engine = engine.sql_engine()
        self.dialect = self._sa_engine.dialect
        self._conn = self._sa_engine.connect()
        self._trans = self._conn.begin()
        self._table: Any = None
        self._stage: Any = None
        self._staged = 0
        if sink.get("preCopyScript"):
            import sqlalchemy as sa

            self._conn.execute(sa.text(sink["preCopyScript"]))

    @property
    def name(self) -> str:
        return self.engine.sql_name(self.tp)

    def _q(self, name: str) -> str:
        return self.dialect.identifier_preparer.quote(name)

    def _prepare(self, table: pa.Table) -> Any:
        import sqlalchemy as sa

        target = self.engine.sql_table(self._conn, self.tp, must_exist=False)
        missing_keys = [k for k in self.keys if k not in table.column_names]
        if missing_keys:
            raise CopyError(f"upsert key column(s) {missing_keys} are not in the source")
        if target is None:
            if not self.auto_create:
                raise CopyError(
                    f"table {self.name} does not exist (set tableOption autoCreate to create it)"
                )
            schema, name = self.engine.sql_schema_and_table(self.tp)
            columns = [
                sa.Column(f.name, _sql_type(f.type, f.name, key=f.name in self.keys))
                for f in table.schema
            ]
            target = sa.Table(name, sa.MetaData(), *columns, schema=schema)
            target.create(self._conn)
        missing = [n for n in table.column_names if n not in target.columns]
        if missing:
            raise CopyError(f"table {self.name} has no column(s) {missing}")
        if self.behavior == "upsert":
            self._stage = self._create_stage(target, table.column_names)
        return target

    def _create_stage(self, target: Any, columns: list[str]) -> Any:
        import sqlalchemy as sa

        suffix = uuid.uuid4().hex[:12]
        mssql = self.dialect.name == "mssql"
        stage = sa.Table(
            f"#mlassets_upsert_{suffix}" if mssql else f"mlassets_upsert_{suffix}",
            sa.MetaData(),
            *[sa.Column(c, target.columns[c].type) for c in columns],
            sa.Column("__seq", sa.BigInteger()),
            prefixes=[] if mssql else ["TEMPORARY"],
        )
        stage.create(self._conn)
        if self.dialect.name == "sqlite":  # SQL Server hash-joins without one
            keys = ", ".join(self._q(k) for k in [*self.keys, "__seq"])
            self._conn.exec_driver_sql(
                f"CREATE INDEX {self._q(f'ix_{suffix}')} ON {self._q(stage.name)} ({keys})"
            )
        return stage

    def _insert(self, table_sql: str, table: pa.Table) -> None:
        mark = "?" if self.dialect.paramstyle == "qmark" else "%s"
        columns = table.column_names
        statement = (
            f"INSERT INTO {table_sql} ({', '.join(self._q(c) for c in columns)}) "
            f"VALUES ({', '.join([mark] * len(columns))})"
        )
        values = [_python_values(table.column(c), self.dialect.name) for c in columns]
        rows = list(zip(*values, strict=True))
        for start in range(0, len(rows), self.batch):
            self._conn.exec_driver_sql(statement, rows[start : start + self.batch])

    def write(self, table: pa.Table) -> None:
        if self._table is None:
            self._table = self._prepare(table)
        if table.num_rows == 0:
            return
        if self._stage is not None:
            seq = pa.array(np.arange(self._staged, self._staged + table.num_rows, dtype=np.int64))
            self._insert(self._q(self._stage.name), table.append_column("__seq", seq))
            self._staged += table.num_rows
        else:
            target = self.engine.sql_name(self.tp, quoted=True, dialect=self.dialect)
            self._insert(target, table)
            self.rows += table.num_rows
        self.bytes_written += table.nbytes

    def _merge(self) -> None:
        """Delete the target rows the stage has keys for; insert the last staged row per key."""
        target = self.engine.sql_name(self.tp, quoted=True, dialect=self.dialect)
        stage = self._q(self._stage.name)
        columns = [c.name for c in self._stage.columns if c.name != "__seq"]
        same = " AND ".join(f"s.{self._q(k)} = {target}.{self._q(k)}" for k in self.keys)
        self._conn.exec_driver_sql(
            f"DELETE FROM {target} WHERE EXISTS (SELECT 1 FROM {stage} s WHERE {same})"
        )
        later = " AND ".join(f"l.{self._q(k)} = s.{self._q(k)}" for k in self.keys)
        listed = ", ".join(self._q(c) for c in columns)
        selected = ", ".join(f"s.{self._q(c)}" for c in columns)
        inserted = self._conn.exec_driver_sql(
            f"INSERT INTO {target} ({listed}) SELECT {selected} "
            f"FROM {stage} s WHERE NOT EXISTS (SELECT 1 FROM {stage} l WHERE {later} "
            "AND l.__seq > s.__seq)"
        )
        self.rows += max(inserted.rowcount, 0)
        self._conn.exec_driver_sql(f"DROP TABLE {stage}")

    def close(self, ok: bool) -> None:
        try:
            if ok and self._stage is not None:
                self._merge()
            if ok:
                self._trans.commit()
            else:
                self._trans.rollback()
        except BaseException:
            self._trans.rollback()
            raise
        finally:
            self._conn.close()


def _python_values(column: pa.ChunkedArray, dialect: str) -> list:
    arr = column.combine_chunks()
    if pa.types.is_timestamp(arr.type):
        if arr.type.tz:
            arr = pc.cast(
                pc.cast(arr, pa.timestamp(arr.type.unit, tz="UTC")), pa.timestamp(arr.type.unit)
            )
        if dialect == "sqlite":  # SQLAlchemy's SQLite DATETIME storage format
            return pc.strftime(arr, "%Y-%m-%d %H:%M:%S.%f").to_pylist()
    return arr.to_pylist()


# -- the session log -------------------------------------------------------------------------


class SessionLog:
    """ADF's copy activity session log: CSV at <path>/copyactivity-logs/<activity>/<run id>/."""

    def __init__(
        self, lake: LakeStorage, path: str, activity: str, activity_run_id: str, level: str
    ) -> None:
        self.lake = lake
        self.folder = _join(path, "copyactivity-logs", activity, activity_run_id)
        self.level = level
        self.columns: dict[str, list] = {
            k: [] for k in ("Timestamp", "Level", "OperationName", "OperationItem", "Message")
        }

    def add(self, level: str, operation: str, items: list[str], messages: list[str]) -> None:
        if level == "Info" and self.level != "Info":
            return
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f") + "0"
        self.columns["Timestamp"] += [stamp] * len(items)
        self.columns["Level"] += [level] * len(items)
        self.columns["OperationName"] += [operation] * len(items)
        self.columns["OperationItem"] += items
        self.columns["Message"] += messages

    def write(self) -> str | None:
        if not self.columns["Timestamp"]:
            return None
        relative = _join(self.folder, f"{uuid.uuid4()}.txt")
        table = pa.table({k: pa.array(v, pa.string()) for k, v in self.columns.items()})
        sink = io.BytesIO()
        pa_csv.write_csv(table, sink, write_options=pa_csv.WriteOptions(quoting_style="needed"))
        with self.lake.fs.open(self.lake.path(relative), "wb") as f:
            f.write(sink.getvalue())
        return relative


# -- the engine ------------------------------------------------------------------------------------


def parse_timespan(value: Any) -> float:
    """ADF's ``d.hh:mm:ss`` (or ``hh:mm:ss``) -> seconds."""
    m = re.fullmatch(r"(?:(\d+)\.)?(\d{1,2}):(\d{2}):(\d{2})(?:\.(\d+))?", str(value).strip())
    if not m:
        raise ArtifactError(f"invalid timespan {value!r}; expected d.hh:mm:ss")
    days, hours, minutes, seconds = (int(g or 0) for g in m.groups()[:4])
    return days * 86400 + hours * 3600 + minutes * 60 + seconds


def _now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


@dataclass
class _Run:
    run_id: str
    pipeline: Artifact
    scope: ex.Scope
    deadline: float | None
    results: list[ActivityRunResult] = field(default_factory=list)
    status: dict[str, str] = field(default_factory=dict)


class CopyEngine:
    """Runs the pipelines of an `adf/` folder against the lake and a SQL database."""

    def __init__(
        self,
        artifacts: Artifacts,
        lake: LakeStorage,
        sql_url: str | None = None,
        runs_dir: str | Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.artifacts = artifacts
        self.lake = lake
        self.sql_url = sql_url
        self.runs_dir = Path(runs_dir) if runs_dir else None
        self.clock = clock
        self.validator = Validator(artifacts)
        self._sql_engine: Any = None

    # -- validation --------------------------------------------------------------------------

    def validate(self, pipeline: str) -> Artifact:
        """Check everything the pipeline uses against the subset, before anything runs."""
        return self.validator.pipeline(pipeline)

    # -- SQL -----------------------------------------------------------------------------------

    def sql_engine(self) -> Any:
        if self._sql_engine is None:
            if not self.sql_url:
                raise CopyError(
                    "no SQL database is configured for the local engine (MLASSETS_LABELS_DB_URL)"
                )
            # The URL's dialect picks the implementation, as for the labels assets.
            from mlassets.defs.resources import labels_database_class

            self._sql_engine = labels_database_class(self.sql_url)(url=self.sql_url).engine
        return self._sql_engine

    def sql_schema_and_table(self, tp: dict) -> tuple[str | None, str]:
        schema, table = tp.get("schema"), tp.get("table")
        if not table and tp.get("tableName"):
            schema, _, table = (
                str(tp["tableName"]).replace("[", "").replace("]", "").rpartition(".")
            )
        if not table:
            raise CopyError("the SQL dataset names no table")
        if self.sql_engine().dialect.name == "sqlite" and (schema or "").lower() in (
            "",
            "dbo",
            "main",
        ):
            schema = None  # SQLite has one schema: dbo maps onto it
        return (schema or None), str(table)

    def sql_name(self, tp: dict, quoted: bool = False, dialect: Any = None) -> str:
        schema, table = self.sql_schema_and_table(tp)
        if not quoted:
            return f"{schema}.{table}" if schema else table
        q = dialect.identifier_preparer.quote
        return f"{q(schema)}.{q(table)}" if schema else q(table)

    def sql_table(self, bind: Any, tp: dict, must_exist: bool) -> Any:
        import sqlalchemy as sa

        schema, table = self.sql_schema_and_table(tp)
        if not sa.inspect(bind).has_table(table, schema=schema):
            if must_exist:
                raise CopyError(f"table {self.sql_name(tp)} does not exist")
            return None
        return sa.Table(table, sa.MetaData(), schema=schema, autoload_with=bind)

    def dispose(self) -> None:
        if self._sql_engine is not None:
            self._sql_engine.dispose()
            self._sql_engine = None

    # -- running -------------------------------------------------------------------------------

    def run(
        self,
        pipeline: str,
        parameters: dict | None = None,
        timeout: float | None = None,
        run_id: str | None = None,
    ) -> PipelineRunResult:
        """Run a pipeline to the end; returns the result, or raises PipelineRunFailed /
        PipelineRunTimeout (the result is on the exception)."""
        artifact = self.validate(pipeline)
        values = coerce_parameters(artifact, parameters)
        run_id = run_id or str(uuid.uuid4())
        started_at = _now_iso()
        scope = ex.Scope(
            pipeline={
                "parameters": values,
                "RunId": run_id,
                "Pipeline": pipeline,
                "DataFactory": FACTORY,
                "TriggerTime": started_at,
                "TriggerType": "Manual",
                "TriggerName": "Manual",
                "TriggerId": run_id,
                "GroupId": run_id,
            }
        )
        run = _Run(run_id, artifact, scope, self.clock() + timeout if timeout else None)
        result = PipelineRunResult(
            pipeline=pipeline,
            run_id=run_id,
            status="InProgress",
            engine=ENGINE,
            parameters=masked(values, secure_parameter_names(artifact)),
            activities=run.results,
            url=self._record_url(run_id),
        )
        began = time.perf_counter()
        _log.info("pipeline %s run %s started", pipeline, run_id)
        try:
            message = self._activities(run, artifact.properties["activities"], "pipeline")
            result.status = FAILED if message else SUCCEEDED
            result.message = message or ""
        except _PipelineDeadline:
            result.status = CANCELLED
            result.message = f"the run did not finish within {timeout:g}s and was cancelled"
        except BaseException:  # an interrupted Dagster run, Ctrl-C: record, then re-raise
            result.status = CANCELLED
            result.message = "the run was interrupted"
            result.duration_seconds = time.perf_counter() - began
            self._record(result)
            raise
        finally:
            self.dispose()
        result.duration_seconds = time.perf_counter() - began
        self._record(result)
        _log.info("pipeline %s run %s: %s", pipeline, run_id, result.status)
        if result.status == CANCELLED:
            raise PipelineRunTimeout(
                f"pipeline {pipeline!r} run {run_id} did not finish within {timeout:g}s; it was "
                "cancelled",
                result,
            )
        if result.status == FAILED:
            raise PipelineRunFailed(
                f"pipeline {pipeline!r} run {run_id} failed: {result.message}", result
            )
        return result

    def _record_url(self, run_id: str) -> str | None:
        return (self.runs_dir / f"{run_id}.json").as_uri() if self.runs_dir else None

    def _record(self, result: PipelineRunResult) -> None:
        if self.runs_dir is None:
            return
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        target = self.runs_dir / f"{result.run_id}.json"
        tmp = target.with_suffix(".tmp")
        tmp.write_text(json.dumps(result.to_dict(), indent=2, default=str))
        tmp.replace(target)

    def _check_deadline(self, run: _Run) -> None:
        if run.deadline is not None and self.clock() > run.deadline:
            raise _PipelineDeadline

    def _activities(self, run: _Run, activities: list[dict], container: str) -> str | None:
        """Run a list of activities in dependency order; returns the failure message, if any
        activity failed and no dependent activity handled the failure."""
        pending = {a["name"]: a for a in activities}
        unhandled: dict[str, str] = {}
        while pending:
            ready = [
                a
                for a in pending.values()
                if all(d["activity"] in run.status for d in a.get("dependsOn") or [])
            ]
            if not ready:
                raise ArtifactError(f"{container}: dependency cycle among {sorted(pending)}")
            for act in ready:
                del pending[act["name"]]
                deps = act.get("dependsOn") or []
                if not all(_condition_met(run.status[d["activity"]], d) for d in deps):
                    run.status[act["name"]] = "Skipped"
                    continue
                for d in deps:
                    if run.status[d["activity"]] == FAILED:
                        unhandled.pop(d["activity"], None)
                self._check_deadline(run)
                status, message = self._activity(run, act)
                run.status[act["name"]] = status
                if status == FAILED:
                    unhandled[act["name"]] = message
        if unhandled:
            name, message = next(iter(unhandled.items()))
            return f"Operation on target {name} failed: {message}"
        return None

    def _activity(self, run: _Run, act: dict) -> tuple[str, str]:
        policy = act.get("policy") or {}
        attempts = 1 + int(policy.get("retry") or 0)
        interval = float(policy.get("retryIntervalInSeconds", 30))
        limit = parse_timespan(policy["timeout"]) if policy.get("timeout") else None
        message = ""
        for attempt in range(attempts):
            if attempt:
                self._sleep(run, interval)
            status, message = self._attempt(run, act, limit)
            if status == SUCCEEDED:
                return status, message
            if status == "Fatal":
                return FAILED, message
        return FAILED, message

    def _sleep(self, run: _Run, seconds: float) -> None:
        end = self.clock() + seconds
        while self.clock() < end:
            self._check_deadline(run)
            time.sleep(min(0.5, max(0.0, end - self.clock())))

    def _attempt(self, run: _Run, act: dict, limit: float | None) -> tuple[str, str]:
        activity_run_id = str(uuid.uuid4())
        began = time.perf_counter()
        result = ActivityRunResult(act["name"], act["type"], "InProgress", activity_run_id)
        run.results.append(result)
        try:
            user = ex.evaluate(act.get("userProperties") or [], run.scope, act["name"])
            if act["type"] == "IfCondition":
                result.output = self._if_condition(run, act)
                inner = result.output.pop("_failure", None)
                if inner:
                    raise CopyError(inner, code="ActionFailed")
            else:
                deadline = self.clock() + limit if limit else None
                result.output = self._copy(run, act, activity_run_id, deadline)
            if user:
                result.output["userProperties"] = {u.get("name"): u.get("value") for u in user}
            result.status = SUCCEEDED
        except _PipelineDeadline:
            result.status = CANCELLED
            result.duration_seconds = time.perf_counter() - began
            raise
        except Exception as exc:
            # Configuration errors fail the same way on every attempt: no retry for them.
            fatal = isinstance(exc, ArtifactError | ex.ExpressionError)
            known = isinstance(exc, CopyError | ArtifactError | ex.ExpressionError)
            result.status = FAILED
            result.error = {
                "errorCode": exc.code
                if isinstance(exc, CopyError)
                else ("Unsupported" if isinstance(exc, UnsupportedFeatureError) else "2200"),
                "message": str(exc) if known else f"{type(exc).__name__}: {exc}",
                "failureType": getattr(
                    exc, "failure_type", "UserError" if known else "SystemError"
                ),
                "target": act["name"],
                "details": "",
            }
            result.duration_seconds = time.perf_counter() - began
            run.scope.activities[act["name"]] = {"output": result.output, "status": FAILED}
            _log.info("activity %s failed: %s", act["name"], result.error["message"])
            return ("Fatal" if fatal else FAILED), result.error["message"]
        except BaseException:
            result.status = CANCELLED
            result.duration_seconds = time.perf_counter() - began
            raise
        result.duration_seconds = time.perf_counter() - began
        run.scope.activities[act["name"]] = {"output": result.output, "status": result.status}
        return result.status, ""

    def _if_condition(self, run: _Run, act: dict) -> dict:
        tp = act["typeProperties"]
        value = ex.evaluate(tp["expression"], run.scope, f"{act['name']}.expression")
        if not isinstance(value, bool):
            raise CopyError(f"the expression evaluated to {value!r}, not a boolean")
        branch = tp.get("ifTrueActivities" if value else "ifFalseActivities") or []
        message = self._activities(run, branch, act["name"]) if branch else None
        out: dict = {"ifConditionResult": value}
        if message:
            inner = message.removeprefix("Operation on target ").split(" failed: ", 1)
            out["_failure"] = (
                f"Activity failed because an inner activity failed; Inner activity name: "
                f"{inner[0]}, Error: {inner[1] if len(inner) > 1 else message}"
            )
        return out

    def _dataset(self, run: _Run, ref: dict) -> tuple[Artifact, dict]:
        ds = self.artifacts.dataset(ref["referenceName"])
        declared = ds.properties.get("parameters") or {}
        given = ex.evaluate(
            ref.get("parameters") or {}, run.scope, f"dataset {ds.name!r} parameters"
        )
        unknown = sorted(set(given) - set(declared))
        if unknown:
            raise CopyError(f"dataset {ds.name!r} has no parameter(s) {unknown}")
        values = {}
        for name, spec in declared.items():
            if name in given:
                values[name] = given[name]
            elif "defaultValue" in spec:
                values[name] = spec["defaultValue"]
            else:
                raise CopyError(f"dataset {ds.name!r} needs parameter {name!r}")
        scope = ex.Scope(dataset=values)
        tp = ex.evaluate(ds.properties.get("typeProperties") or {}, scope, f"dataset {ds.name!r}")
        return ds, tp

    def _copy(self, run: _Run, act: dict, activity_run_id: str, deadline: float | None) -> dict:
        started_at = _now_iso()
        began = time.perf_counter()
        where = f"activity {act['name']!r}"
        tp = ex.evaluate(act["typeProperties"], run.scope, where)
        source_ds, source_tp = self._dataset(run, act["inputs"][0])
        sink_ds, sink_tp = self._dataset(run, act["outputs"][0])
        skip = bool(tp.get("enableSkipIncompatibleRow", False))
        log = self._session_log(tp, act["name"], activity_run_id)
        source = Source(self, source_ds, source_tp, tp["source"], skip)
        translator = Translator(tp.get("translator"))
        sink = self._sink(sink_ds, sink_tp, tp["sink"], activity_run_id)
        rows_read = rows_skipped = 0
        ok = False
        try:
            for chunk in source.chunks():
                self._check_deadline(run)
                if deadline is not None and self.clock() > deadline:
                    raise CopyError("the activity timed out (policy.timeout)", code="2103")
                rows_read += chunk.rows_read
                translated = translator.apply(chunk.table, source.kind)
                items = chunk.skipped_items + translated.skipped_items
                messages = chunk.skipped_messages + translated.skipped_messages
                if items and not skip:
                    raise CopyError(
                        f"{messages[0].replace('Skipped an incompatible row: ', '')}: "
                        f"{items[0][:200]!r}"
                    )
                rows_skipped += len(items)
                if log is not None and items:
                    log.add("Warning", "TabularRowSkip", items, messages)
                sink.write(translated.table)
            ok = True
        finally:
            sink.close(ok)
        store = tp["source"].get("storeSettings") or {}
        if store.get("deleteFilesAfterCompletion") and source.files is not None:
            for path in source.stats.files:
                self.lake.delete(path)
        duration = time.perf_counter() - began
        output: dict[str, Any] = {
            "dataRead": int(source.stats.bytes_read),
            "dataWritten": int(sink.bytes_written),
            "rowsRead": int(rows_read),
            "rowsCopied": int(sink.rows),
            "rowsSkipped": int(rows_skipped),
            "copyDuration": round(duration, 3),
            "throughput": round(source.stats.bytes_read / 1024 / duration, 3) if duration else 0.0,
            "errors": [],
            "effectiveIntegrationRuntime": RUNTIME,
            "usedParallelCopies": 1,
            "executionDetails": [
                {
                    "source": {"type": tp["source"]["type"]},
                    "sink": {"type": tp["sink"]["type"]},
                    "status": SUCCEEDED,
                    "start": started_at,
                    "duration": round(duration, 3),
                    "usedParallelCopies": 1,
                }
            ],
        }
        if source.files is not None:
            output["filesRead"] = len(source.stats.files)
        if isinstance(sink, FileSink):
            output["filesWritten"] = sink.files_written
        if log is not None:
            for path in source.stats.files:
                log.add("Info", "FileRead", [path], ["Complete reading the file"])
            if isinstance(sink, FileSink):
                log.add("Info", "FileWrite", [sink.relative], ["Complete writing the file"])
            written = log.write()
            if written:
                output["logFilePath"] = written
        return output

    def _session_log(self, tp: dict, activity: str, activity_run_id: str) -> SessionLog | None:
        settings = tp.get("logSettings")
        if not settings or not settings.get("enableCopyActivityLog"):
            return None
        level = (settings.get("copyActivityLogSettings") or {}).get("logLevel", "Warning")
        path = (settings.get("logLocationSettings") or {}).get("path") or ""
        return SessionLog(self.lake, str(path), activity, activity_run_id, str(level))

    def _sink(self, dataset: Artifact, tp: dict, sink: dict, activity_run_id: str) -> Any:
        if dataset.type in SQL_DATASETS:
            return SqlSink(self, dataset, tp, sink)
        cls = {
            "Parquet": ParquetFileSink,
            "DelimitedText": DelimitedTextFileSink,
            "Json": JsonFileSink,
        }[dataset.type]
        return cls(self, dataset, tp, sink, activity_run_id)


def _condition_met(status: str, dep: dict) -> bool:
    conditions = dep.get("dependencyConditions") or ["Succeeded"]
    return any(
        c == status or (c == "Completed" and status in (SUCCEEDED, FAILED)) for c in conditions
    )
