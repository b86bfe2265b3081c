"""The subset of ADF the local copy engine implements, property by property, and the
`Validator` that checks a pipeline (with its datasets and linked services) against it before
anything runs: a property outside the subset is an error naming the activity or dataset and
the property, rather than something silently ignored halfway through a copy.
"""

from __future__ import annotations

import re
from typing import Any

from mlassets.lib.adf import (
    Artifact,
    ArtifactError,
    Artifacts,
    UnsupportedFeatureError,
)
from mlassets.twins.adf import expressions as ex
from mlassets.twins.adf.conversion import INTERIM_TYPES
from mlassets.twins.adf.datasets import (
    FILE_DATASETS,
    LAKE_LINKED_SERVICES,
    LOCATIONS,
    PARQUET_CODECS,
    SINKS,
    SOURCES,
    SQL_DATASETS,
    SQL_LINKED_SERVICES,
    text_options,
)

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
                and str(codec).lower() not in PARQUET_CODECS
            ):
                raise UnsupportedFeatureError(
                    f"{where}: compressionCodec {codec!r} is not supported"
                )
            if kind in ("DelimitedText", "Json"):
                text_options(ds.name, tp, check_only=True)
        return ds


def parse_timespan(value: Any) -> float:
    """ADF's ``d.hh:mm:ss`` (or ``hh:mm:ss``) -> seconds."""
    m = re.fullmatch(r"(?:(\d+)\.)?(\d{1,2}):(\d{2}):(\d{2})(?:\.(\d+))?", str(value).strip())
    if not m:
        raise ArtifactError(f"invalid timespan {value!r}; expected d.hh:mm:ss")
    days, hours, minutes, seconds = (int(g or 0) for g in m.groups()[:4])
    return days * 86400 + hours * 3600 + minutes * 60 + seconds
