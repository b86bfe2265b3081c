"""Azure Data Factory artifacts as code, and what a pipeline run reports, for both engines.

`adf/` holds linked services, datasets and pipelines in the layout and JSON format that ADF's
git integration writes (``adf/<kind>/<name>.json``, each ``{"name": ..., "properties": ...}``).
The same files are deployed to a factory (`AzureDataFactory.deploy`) and interpreted by the
embedded copy engine (the ADF twin's engine).

This module has no Azure SDK and no Dagster in it: it loads and checks the files, orders them
for deployment, coerces run parameters to the types the pipeline declares, and defines the
run result both engines return (`PipelineRunResult`) and the errors they raise. It also
writes JSON string literals the way ADF's JSON sinks do (`json_quote`), in Arrow compute
kernels, for the engine and for the library code that writes drops in the same format.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlassets.lib.lazy import lazy
from mlassets.settings import PROJECT_ROOT

# Loaded on first use: the code location loads this module, and only copies touch columns.
pa = lazy("pyarrow")
pc = lazy("pyarrow.compute")

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.compute as pc

ADF_DIR = PROJECT_ROOT / "adf"

#: Folders of the git-integration layout, in deployment order.
KINDS: tuple[str, ...] = ("linkedService", "dataset", "pipeline", "trigger")
_REFERENCE_KINDS = {
    "LinkedServiceReference": "linkedService",
    "DatasetReference": "dataset",
    "PipelineReference": "pipeline",
}
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_\-]{0,259}$")

#: The metrics of a Copy activity's output that the platform reports (ADF's own names).
COPY_METRICS: tuple[str, ...] = (
    "rowsRead",
    "rowsCopied",
    "rowsSkipped",
    "dataRead",
    "dataWritten",
    "filesRead",
    "filesWritten",
    "copyDuration",
    "throughput",
)

#: Pipeline parameters the Data Factory resource fills in when a pipeline declares them and
#: the caller did not pass them: where the lake is (container, and prefix inside it).
SUCCEEDED, FAILED, CANCELLED = "Succeeded", "Failed", "Cancelled"
TERMINAL_STATUSES = frozenset({SUCCEEDED, FAILED, CANCELLED})


class ArtifactError(ValueError):
    """An ADF file is malformed, misnamed, or refers to something that does not exist."""


class UnsupportedFeatureError(ArtifactError):
    """The local engine does not implement a feature a pipeline uses (the message names it)."""


class ParameterError(ValueError):
    """Run parameters that do not match what the pipeline declares."""


# -- artifacts -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Artifact:
    kind: str
    name: str
    path: Path
    document: dict

    @property
    def properties(self) -> dict:
        return self.document["properties"]

    @property
    def type(self) -> str | None:
        return self.properties.get("type")

    def references(self) -> set[tuple[str, str]]:
        """(kind, name) of every artifact this one refers to, at any depth."""
        return set(_references(self.properties))

    def __str__(self) -> str:
        return f"{self.kind} {self.name!r}"


def _references(node: Any) -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        kind = _REFERENCE_KINDS.get(node.get("type")) if isinstance(node.get("type"), str) else None
        if kind and isinstance(node.get("referenceName"), str):
            yield kind, node["referenceName"]
        for value in node.values():
            yield from _references(value)
    elif isinstance(node, list):
        for value in node:
            yield from _references(value)


@dataclass
class Artifacts:
    """Every artifact under one `adf/` folder, by kind and name."""

    root: Path
    by_kind: dict[str, dict[str, Artifact]] = field(default_factory=dict)

    @classmethod
    def load(cls, root: str | Path = ADF_DIR) -> Artifacts:
        root = Path(root)
        if not root.is_dir():
            raise ArtifactError(f"no ADF artifacts folder at {root}")
        unknown = sorted(
            p.name
            for p in root.iterdir()
            if p.is_dir() and not p.name.startswith(".") and p.name not in KINDS
        )
        if unknown:
            raise ArtifactError(
                f"{root}: unknown artifact folder(s) {unknown}; the git-integration layout has "
                f"{list(KINDS)}"
            )
        found = cls(root, {kind: {} for kind in KINDS})
        for kind in KINDS:
            for path in sorted((root / kind).glob("*.json")):
                artifact = _load_file(kind, path)
                if artifact.name in found.by_kind[kind]:
                    raise ArtifactError(f"{path}: a second {kind} named {artifact.name!r}")
                found.by_kind[kind][artifact.name] = artifact
        found._check_references()
        return found

    def __iter__(self) -> Iterator[Artifact]:
        for kind in KINDS:
            yield from self.by_kind.get(kind, {}).values()

    def __len__(self) -> int:
        return sum(len(v) for v in self.by_kind.values())

    def names(self, kind: str) -> list[str]:
        return sorted(self.by_kind.get(kind, {}))

    def get(self, kind: str, name: str) -> Artifact:
        try:
            return self.by_kind[kind][name]
        except KeyError:
            known = ", ".join(self.names(kind)) or "none"
            raise ArtifactError(
                f"no {kind} named {name!r} in {self.root} (known: {known})"
            ) from None

    def pipeline(self, name: str) -> Artifact:
        return self.get("pipeline", name)

    def dataset(self, name: str) -> Artifact:
        return self.get("dataset", name)

    def linked_service(self, name: str) -> Artifact:
        return self.get("linkedService", name)

    def _check_references(self) -> None:
        for artifact in self:
            for kind, name in sorted(artifact.references()):
                if name not in self.by_kind.get(kind, {}):
                    raise ArtifactError(
                        f"{artifact.path}: {artifact} refers to {kind} {name!r}, which is not in "
                        f"{self.root / kind}"
                    )

    def deploy_order(self) -> list[Artifact]:
        """Every artifact after everything it refers to (linked services, then datasets, then
        pipelines, and inside a kind by reference: a Key Vault before the services using it,
        a pipeline before the pipelines that execute it). Cycles are an error."""
        order: list[Artifact] = []
        state: dict[tuple[str, str], str] = {}

        def visit(artifact: Artifact, trail: tuple[str, ...]) -> None:
            key = (artifact.kind, artifact.name)
            if state.get(key) == "done":
                return
            if state.get(key) == "visiting":
                raise ArtifactError(f"reference cycle: {' -> '.join((*trail, str(artifact)))}")
            state[key] = "visiting"
            for kind, name in sorted(artifact.references(), key=_kind_rank):
                visit(self.get(kind, name), (*trail, str(artifact)))
            state[key] = "done"
            order.append(artifact)

        for artifact in self:
            visit(artifact, ())
        return order


def _kind_rank(ref: tuple[str, str]) -> tuple[int, str]:
    return KINDS.index(ref[0]), ref[1]


def _load_file(kind: str, path: Path) -> Artifact:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("properties"), dict):
        raise ArtifactError(f'{path}: expected {{"name": ..., "properties": {{...}}}}')
    name = document.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ArtifactError(f"{path}: missing or invalid name {name!r}")
    if path.stem != name:
        raise ArtifactError(f"{path}: the file of {kind} {name!r} must be named {name}.json")
    if kind != "pipeline" and not isinstance(document["properties"].get("type"), str):
        raise ArtifactError(f"{path}: properties.type is missing")
    return Artifact(kind, name, path, document)


# -- run parameters ------------------------------------------------------------------------


def declared_parameters(pipeline: Artifact) -> dict[str, dict]:
    return dict(pipeline.properties.get("parameters") or {})


def secure_parameter_names(pipeline: Artifact) -> set[str]:
    return {
        name
        for name, spec in declared_parameters(pipeline).items()
        if str(spec.get("type", "")).lower() == "securestring"
    }


def coerce_parameters(
    pipeline: Artifact, given: Mapping[str, Any] | None, defaults: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The values a run gets: `given` (strings from a command line are converted to the
    declared type), else `defaults` for the parameters the pipeline declares, else the
    declared default. Unknown names and missing required parameters are errors."""
    declared = declared_parameters(pipeline)
    given = dict(given or {})
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise ParameterError(
            f"pipeline {pipeline.name!r} has no parameter(s) {unknown}; it declares "
            f"{sorted(declared) or 'none'}"
        )
    values: dict[str, Any] = {}
    missing: list[str] = []
    for name, spec in declared.items():
        kind = str(spec.get("type", "String"))
        if name in given:
            values[name] = _coerce(pipeline.name, name, kind, given[name])
        elif defaults and name in defaults:
            values[name] = _coerce(pipeline.name, name, kind, defaults[name])
        elif "defaultValue" in spec:
            values[name] = spec["defaultValue"]
        else:
            missing.append(name)
    if missing:
        raise ParameterError(
            f"pipeline {pipeline.name!r} needs parameter(s) {missing} (no default value)"
        )
    return values


def _coerce(pipeline: str, name: str, kind: str, value: Any) -> Any:
    lowered = kind.lower()
    where = f"parameter {name!r} of pipeline {pipeline!r} ({kind})"
    try:
        if lowered in ("string", "securestring"):
            return value if isinstance(value, str) else json.dumps(value)
        if lowered == "int":
            if isinstance(value, bool):
                raise ValueError
            return int(value)
        if lowered == "float":
            return float(value)
        if lowered == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text not in ("true", "false"):
                raise ValueError
            return text == "true"
        if lowered in ("array", "object"):
            parsed = json.loads(value) if isinstance(value, str) else value
            expected = list if lowered == "array" else dict
            if not isinstance(parsed, expected):
                raise ValueError
            return parsed
    except (TypeError, ValueError):
        raise ParameterError(f"{where}: {value!r} is not a valid {kind}") from None
    raise ParameterError(f"{where}: unknown parameter type {kind!r}")


def parse_param_options(items: tuple[str, ...] | list[str]) -> dict[str, str]:
    """``["k=v", ...]`` from the command line -> dict (the value may contain '=')."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ParameterError(f"--param {item!r}: expected NAME=VALUE")
        out[key.strip()] = value
    return out


def masked(parameters: Mapping[str, Any], secure: set[str]) -> dict[str, Any]:
    """Parameters safe to log, store and show: SecureString values replaced."""
    return {k: ("***" if k in secure else v) for k, v in parameters.items()}


# -- what a run reports ----------------------------------------------------------------------


@dataclass
class ActivityRunResult:
    """One activity run, with ADF's output object as it was reported."""

    name: str
    type: str
    status: str
    activity_run_id: str
    duration_seconds: float | None = None
    output: dict = field(default_factory=dict)
    error: dict | None = None

    @property
    def is_copy(self) -> bool:
        return self.type == "Copy"

    @property
    def copy_metrics(self) -> dict[str, float]:
        """The reported copy metrics (only those the output carries)."""
        return {
            k: self.output[k] for k in COPY_METRICS if isinstance(self.output.get(k), int | float)
        }

    @property
    def error_message(self) -> str | None:
        if not self.error:
            return None
        return self.error.get("message") or None


@dataclass
class PipelineRunResult:
    """One pipeline run, whichever engine ran it."""

    pipeline: str
    run_id: str
    status: str
    engine: str  # "local" or "azure"
    duration_seconds: float | None = None
    message: str = ""
    parameters: dict = field(default_factory=dict)  # secure values masked
    activities: list[ActivityRunResult] = field(default_factory=list)
    #: Where a person looks at the run: ADF Studio monitoring, or the local run record.
    url: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.status == SUCCEEDED

    def activity(self, name: str) -> ActivityRunResult:
        for a in self.activities:
            if a.name == name:
                return a
        raise KeyError(f"run {self.run_id} has no activity {name!r}")

    @property
    def copy_activities(self) -> list[ActivityRunResult]:
        return [a for a in self.activities if a.is_copy]

    def copy_totals(self) -> dict[str, float]:
        """Metrics summed over the Copy activities; copyDuration is the sum of the copies'
        durations and throughput is recomputed from the totals (KB/s of data read)."""
        totals: dict[str, float] = {}
        for a in self.copy_activities:
            for key, value in a.copy_metrics.items():
                if key != "throughput":
                    totals[key] = totals.get(key, 0) + value
        if self.copy_activities:
            for key in COPY_METRICS:
                if key != "throughput":
                    totals.setdefault(key, 0)
            duration = totals.get("copyDuration") or 0
            totals["throughput"] = (
                round(totals.get("dataRead", 0) / 1024 / duration, 3) if duration else 0.0
            )
        return totals

    def summary(self) -> str:
        took = f" in {self.duration_seconds:.1f}s" if self.duration_seconds is not None else ""
        line = f"pipeline {self.pipeline!r} run {self.run_id} on {self.engine}: {self.status}{took}"
        return f"{line}: {self.message}" if self.message else line

    def to_dict(self) -> dict:
        return {
            "pipeline": self.pipeline,
            "runId": self.run_id,
            "status": self.status,
            "engine": self.engine,
            "durationInSeconds": self.duration_seconds,
            "message": self.message,
            "parameters": self.parameters,
            "url": self.url,
            "activities": [
                {
                    "activityName": a.name,
                    "activityType": a.type,
                    "activityRunId": a.activity_run_id,
                    "status": a.status,
                    "durationInSeconds": a.duration_seconds,
                    "output": a.output,
                    "error": a.error,
                }
                for a in self.activities
            ],
        }


class PipelineRunError(RuntimeError):
    """A run that did not succeed; carries the run id and what the engine reported."""

    def __init__(self, message: str, result: PipelineRunResult) -> None:
        super().__init__(message)
        self.result = result

    @property
    def run_id(self) -> str:
        return self.result.run_id


class PipelineRunFailed(PipelineRunError):
    """The run ended Failed; the message is the engine's error message."""


class PipelineRunCancelled(PipelineRunError):
    """The run was cancelled by someone else (ADF Studio, another client)."""


class PipelineRunTimeout(PipelineRunError):
    """The run did not finish in time; it was cancelled before this was raised."""


# -- JSON text, vectorized ----------------------------------------------------------------

_ESCAPES = [
    ("\\", "\\\\"),
    ('"', '\\"'),
    ("\n", "\\n"),
    ("\r", "\\r"),
    ("\t", "\\t"),
    ("\b", "\\b"),
    ("\f", "\\f"),
]


def json_quote(arr: pa.Array) -> pa.Array:
    """Strings -> their JSON string literals (null -> ``null``), all in compute kernels."""
    arr = arr.cast(pa.string()) if not pa.types.is_string(arr.type) else arr
    text = arr
    # One scan decides whether any value needs escaping at all (ids, names and timestamps
    # rarely do); only then the replacement passes run.
    if pc.any(pc.match_substring_regex(arr, r'["\\\x00-\x1f]')).as_py():
        for raw, escaped in _ESCAPES:
            text = pc.replace_substring(text, raw, escaped)
        if pc.any(pc.match_substring_regex(text, r"[\x00-\x1f]")).as_py():
            for code in range(32):  # the rare remaining control characters
                char = chr(code)
                if char not in "\n\r\t\b\f":
                    text = pc.replace_substring(text, char, f"\\u{code:04x}")
    quoted = pc.binary_join_element_wise('"', text, '"', "")
    return pc.fill_null(quoted, "null")
