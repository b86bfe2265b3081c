"""The local copy engine's runner: `CopyEngine` validates a pipeline, evaluates its
expressions, runs its activities in dependency order (Copy and IfCondition, with policy
timeouts and retries and the caller's deadline for the whole run), drives each Copy from its
source through the translator into its sink, and reports the run as ADF does
(`PipelineRunResult`, with each activity's output and Copy metrics), keeping a record of it.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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
    masked,
    secure_parameter_names,
)
from mlassets.roles.storage import LakeStorage
from mlassets.twins.adf import expressions as ex
from mlassets.twins.adf.datasets import SQL_DATASETS
from mlassets.twins.adf.errors import CopyError
from mlassets.twins.adf.sinks import (
    DelimitedTextFileSink,
    FileSink,
    JsonFileSink,
    ParquetFileSink,
    SessionLog,
    SqlSink,
)
from mlassets.twins.adf.sources import Source
from mlassets.twins.adf.translator import Translator
from mlassets.twins.adf.validation import Validator, parse_timespan

ENGINE = "local"
RUNTIME = "Embedded (mlassets local copy engine)"
FACTORY = "mlassets-local"
_log = logging.getLogger(__name__)


class _PipelineDeadline(Exception):
    """The caller's timeout for the whole run passed."""


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
