"""The copy-engine role: Azure Data Factory, or its embedded twin, behind one interface.

`run_pipeline(name, parameters, timeout)` runs a pipeline of `adf/` and returns a
`PipelineRunResult` (run id, status, duration, message, and each activity's output with the
Copy metrics), or raises `PipelineRunFailed` / `PipelineRunCancelled` / `PipelineRunTimeout`
with the run id and the engine's message. `deploy()` publishes the artifacts.

- `LocalDataFactory`, the embedded twin (in the twins package, next to its copy engine), runs
  the JSON on this machine against the lake and the SQL database of this deployment, and keeps
  a record of every run under the data dir. `deploy()` validates every pipeline against the
  engine's subset.
- `AzureDataFactory` talks to a real factory with azure-mgmt-datafactory: `deploy()` creates
  or updates linked services, datasets and pipelines in dependency order (after checking every
  file against the SDK's models); a run is `pipelines.create_run`, then `pipeline_runs.get`
  with backoff until it is Succeeded, Failed or Cancelled, then
  `activity_runs.query_by_pipeline_run`. A timeout cancels the remote run before failing, and
  so does a terminated Dagster run (the interruption is re-raised once the cancel is sent and
  observed); a retry of the step starts a new run.

Secrets: the linked services hold none. The factory reaches the lake and the database with its
system-assigned managed identity, and `deploy()` fills in only the environment's addresses
(storage account from MLASSETS_LAKE_URL, SQL server and database from MLASSETS_LABELS_DB_URL;
never a password). The Azure client authenticates with DefaultAzureCredential.
"""

import logging
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlparse

import dagster as dg
from pydantic import Field, PrivateAttr

from mlassets.lib.adf import (
    ADF_DIR,
    CANCELLED,
    COPY_METRICS,
    FAILED,
    SUCCEEDED,
    TERMINAL_STATUSES,
    ActivityRunResult,
    Artifact,
    ArtifactError,
    Artifacts,
    PipelineRunCancelled,
    PipelineRunFailed,
    PipelineRunResult,
    PipelineRunTimeout,
    coerce_parameters,
    declared_parameters,
    masked,
    secure_parameter_names,
)
from mlassets.lib.metadata import ADF_ENGINE, ADF_RUN_ID
from mlassets.roles.storage import LakeLocation

__all__ = [
    "CANCELLED",
    "AzureDataFactory",
    "DataFactoryResource",
    "DeployAction",
    "lake_service_url",
    "run_metadata",
    "sdk_problems",
    "sdk_resource",
    "sql_server_and_database",
]

_log = logging.getLogger(__name__)

#: The linked services whose addresses `deploy()` sets from this deployment's settings.
LAKE_LINKED_SERVICE = "ls_lake"
SQL_LINKED_SERVICE = "ls_labels_sql"
ADF_STUDIO = "https://adf.azure.com"

#: The poll loop sleeps through this name, so a test can stand in for time passing (or for
#: Dagster interrupting the sleep).
_sleep = time.sleep


@dataclass(frozen=True)
class DeployAction:
    kind: str
    name: str
    action: str  # "created", "updated", "validated", "would deploy"

    def __str__(self) -> str:
        return f"{self.action:>12}  {self.kind} {self.name}"


class DataFactoryResource(dg.ConfigurableResource, ABC):
    """Runs the pipelines of `adf/` with their parameters, and deploys them."""

    artifacts_dir: str = Field(
        default=str(ADF_DIR), description="folder of the ADF artifacts (git-integration layout)"
    )
    default_timeout_seconds: float = Field(
        default=3600.0, description="how long a run may take when the caller gives no timeout"
    )

    _artifacts: Artifacts | None = PrivateAttr(default=None)

    @property
    @abstractmethod
    def engine(self) -> str:
        """`local` or `azure`."""

    @abstractmethod
    def lake_parameters(self) -> dict[str, str]:
        """Values of `lakeFileSystem` / `lakeRoot` for this deployment's lake."""

    @abstractmethod
    def _run(
        self, artifact: Artifact, values: dict, timeout: float, log: Any
    ) -> PipelineRunResult: ...

    @abstractmethod
    def deploy(self, log: Any = None, dry_run: bool = False) -> list[DeployAction]:
        """Publish (Azure) or validate (local) every artifact; returns what was done."""

    def artifacts(self) -> Artifacts:
        if self._artifacts is None:
            self._artifacts = Artifacts.load(self.artifacts_dir)
        return self._artifacts

    def run_pipeline(
        self,
        pipeline: str,
        parameters: dict[str, Any] | None = None,
        timeout: float | None = None,
        log: Any = None,
    ) -> PipelineRunResult:
        """Run `pipeline` to the end and return what it did; raise PipelineRunFailed,
        PipelineRunCancelled or PipelineRunTimeout (with the run id) when it did not succeed.
        The lake parameters are filled in when the pipeline declares them."""
        artifact = self.artifacts().pipeline(pipeline)
        declared = declared_parameters(artifact)
        defaults = {k: v for k, v in self.lake_parameters().items() if k in declared}
        values = coerce_parameters(artifact, parameters, defaults)
        return self._run(artifact, values, timeout or self.default_timeout_seconds, log or _log)


# -- Azure --------------------------------------------------------------------------------------


def default_credential():
    """The credential the Azure client uses (tests stand in a fake one here)."""
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential()


class AzureDataFactory(DataFactoryResource):
    """A real factory, through azure-mgmt-datafactory and DefaultAzureCredential."""

    subscription_id: str = Field(description="subscription of the factory")
    resource_group: str = Field(description="resource group of the factory")
    factory_name: str = Field(description="the data factory's name")
    lake_url: str = Field(description="the lake (abfs://container@account.dfs.core.windows.net/..)")
    sql_url: str | None = Field(
        default=None,
        description="the labels database's SQLAlchemy URL: deploy takes server and database "
        "from it (never the password)",
    )
    arm_endpoint: str = Field(
        default="https://management.azure.com", description="Azure Resource Manager endpoint"
    )
    poll_interval_seconds: float = Field(default=5.0, description="first wait between polls")
    max_poll_interval_seconds: float = Field(default=30.0, description="longest wait between polls")
    cancel_wait_seconds: float = Field(
        default=120.0, description="how long to wait for a cancelled run to reach Cancelled"
    )

    @property
    def engine(self) -> str:
        return "azure"

    # -- addressing -----------------------------------------------------------------------

    @property
    def factory_id(self) -> str:
        return (
            f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}"
            f"/providers/Microsoft.DataFactory/factories/{self.factory_name}"
        )

    def monitoring_url(self, run_id: str) -> str:
        """The run in ADF Studio's monitoring view."""
        return (
            f"{ADF_STUDIO}/en/monitoring/pipelineruns/{run_id}"
            f"?factory={quote(self.factory_id, safe='')}"
        )

    def lake_parameters(self) -> dict[str, str]:
        location = LakeLocation.parse(self.lake_url)
        container, _, prefix = location.root.partition("/")
        return {"lakeFileSystem": container, "lakeRoot": f"{prefix.strip('/')}/" if prefix else ""}

    def client(self):
        from azure.mgmt.datafactory import DataFactoryManagementClient

        endpoint = self.arm_endpoint.rstrip("/")
        return DataFactoryManagementClient(
            default_credential(),
            self.subscription_id,
            base_url=endpoint,
            credential_scopes=[f"{endpoint}/.default"],
        )

    # -- deploy ---------------------------------------------------------------------------

    def deployable(self, artifact: Artifact) -> dict:
        """The artifact's JSON with this environment's addresses filled in."""
        import copy

        document = copy.deepcopy(artifact.document)
        if artifact.kind != "linkedService":
            return document
        tp = document["properties"].setdefault("typeProperties", {})
        if artifact.name == LAKE_LINKED_SERVICE:
            tp["url"] = lake_service_url(self.lake_url)
        if artifact.name == SQL_LINKED_SERVICE and self.sql_url:
            server, database = sql_server_and_database(self.sql_url)
            tp["server"], tp["database"] = server, database
            for key in ("connectionString", "password", "userName"):
                tp.pop(key, None)
        return document

    def deploy(self, log: Any = None, dry_run: bool = False) -> list[DeployAction]:
        from azure.core.exceptions import ResourceNotFoundError

        log = log or _log
        order = self.artifacts().deploy_order()
        models = []
        for artifact in order:  # check every file before touching the factory
            model = sdk_resource(artifact.kind, self.deployable(artifact))
            problems = sdk_problems(model)
            if problems:
                raise ArtifactError(f"{artifact.path}: " + "; ".join(problems))
            models.append((artifact, model))
        if dry_run:
            return [DeployAction(a.kind, a.name, "would deploy") for a, _ in models]
        client = self.client()
        try:
            client.factories.get(self.resource_group, self.factory_name)
        except ResourceNotFoundError:
            raise ArtifactError(
                f"data factory {self.factory_name!r} does not exist in resource group "
                f"{self.resource_group!r} of subscription {self.subscription_id}"
            ) from None
        actions = []
        for artifact, model in models:
            ops = {
                "linkedService": client.linked_services,
                "dataset": client.datasets,
                "pipeline": client.pipelines,
                "trigger": client.triggers,
            }[artifact.kind]
            try:
                ops.get(self.resource_group, self.factory_name, artifact.name)
                action = "updated"
            except ResourceNotFoundError:
                action = "created"
            ops.create_or_update(self.resource_group, self.factory_name, artifact.name, model)
            actions.append(DeployAction(artifact.kind, artifact.name, action))
            log.info(f"{action} {artifact.kind} {artifact.name} in {self.factory_name}")
        return actions

    # -- runs -----------------------------------------------------------------------------

    def _run(self, artifact: Artifact, values: dict, timeout: float, log: Any) -> PipelineRunResult:
        client = self.client()
        secure = secure_parameter_names(artifact)
        created = datetime.now(UTC)
        response = client.pipelines.create_run(
            self.resource_group, self.factory_name, artifact.name, parameters=values
        )
        run_id = response.run_id
        url = self.monitoring_url(run_id)
        log.info(f"ADF pipeline {artifact.name!r} run {run_id} started: {url}")
        deadline = time.monotonic() + timeout
        try:
            run = self._wait(client, run_id, deadline, log)
        except (dg.DagsterExecutionInterruptedError, KeyboardInterrupt):
            log.warning(f"the Dagster run was interrupted: cancelling ADF run {run_id}")
            self._cancel(client, run_id, log)
            raise
        if run is None:
            log.warning(f"ADF run {run_id} did not finish within {timeout:g}s: cancelling it")
            run = self._cancel(client, run_id, log)
            result = self._result(client, run_id, run, artifact, values, secure, created)
            raise PipelineRunTimeout(
                f"ADF pipeline {artifact.name!r} run {run_id} did not finish within {timeout:g}s "
                f"and was cancelled (last status: {result.status}); see {url}",
                result,
            )
        result = self._result(client, run_id, run, artifact, values, secure, created)
        if result.status == SUCCEEDED:
            return result
        if result.status == FAILED:
            raise PipelineRunFailed(
                f"ADF pipeline {artifact.name!r} run {run_id} failed: {result.message}; see {url}",
                result,
            )
        raise PipelineRunCancelled(
            f"ADF pipeline {artifact.name!r} run {run_id} was cancelled outside Dagster"
            + (f": {result.message}" if result.message else "")
            + f"; see {url}",
            result,
        )

    def _wait(self, client: Any, run_id: str, deadline: float | None, log: Any) -> Any:
        """Poll until the run is terminal (returned), or until the deadline (None)."""
        interval = self.poll_interval_seconds
        last = None
        while True:
            run = client.pipeline_runs.get(self.resource_group, self.factory_name, run_id)
            if run.status != last:
                log.info(f"ADF run {run_id}: {run.status}")
                last = run.status
            if run.status in TERMINAL_STATUSES:
                return run
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            _sleep(interval if left is None else min(interval, left))
            interval = min(interval * 1.5, self.max_poll_interval_seconds)

    def _cancel(self, client: Any, run_id: str, log: Any) -> Any:
        """Cancel the run and its child runs; wait (bounded) until ADF says Cancelled."""
        from azure.core.exceptions import HttpResponseError

        try:
            client.pipeline_runs.cancel(
                self.resource_group, self.factory_name, run_id, is_recursive=True
            )
        except HttpResponseError as exc:  # e.g. it finished in the meantime
            log.warning(f"cancelling ADF run {run_id} was refused: {exc.message}")
        run = self._wait(client, run_id, time.monotonic() + self.cancel_wait_seconds, log)
        if run is None:
            log.warning(f"ADF run {run_id} was not Cancelled within {self.cancel_wait_seconds:g}s")
            return client.pipeline_runs.get(self.resource_group, self.factory_name, run_id)
        log.info(f"ADF run {run_id} ended {run.status}")
        return run

    def _result(
        self,
        client: Any,
        run_id: str,
        run: Any,
        artifact: Artifact,
        values: dict,
        secure: set[str],
        created: datetime,
    ) -> PipelineRunResult:
        return PipelineRunResult(
            pipeline=run.pipeline_name or artifact.name,
            run_id=run_id,
            status=run.status,
            engine="azure",
            duration_seconds=run.duration_in_ms / 1000 if run.duration_in_ms is not None else None,
            message=run.message or "",
            parameters=masked(values, secure),
            activities=self.activity_runs(client, run_id, created),
            url=self.monitoring_url(run_id),
        )

    def activity_runs(self, client: Any, run_id: str, since: datetime) -> list[ActivityRunResult]:
        from azure.mgmt.datafactory.models import RunFilterParameters

        out: list[ActivityRunResult] = []
        token = None
        while True:
            page = client.activity_runs.query_by_pipeline_run(
                self.resource_group,
                self.factory_name,
                run_id,
                RunFilterParameters(
                    last_updated_after=since - timedelta(hours=1),
                    last_updated_before=datetime.now(UTC) + timedelta(days=1),
                    continuation_token=token,
                ),
            )
            for a in page.value or []:
                error = a.error if isinstance(a.error, dict) and a.error.get("message") else None
                out.append(
                    ActivityRunResult(
                        name=a.activity_name,
                        type=a.activity_type,
                        status=a.status,
                        activity_run_id=a.activity_run_id,
                        duration_seconds=(
                            a.duration_in_ms / 1000 if a.duration_in_ms is not None else None
                        ),
                        output=a.output if isinstance(a.output, dict) else {},
                        error=error,
                    )
                )
            token = page.continuation_token
            if not token:
                return out


def lake_service_url(lake_url: str) -> str:
    """The ADLS Gen2 endpoint of the lake's storage account, for the lake linked service."""
    parsed = urlparse(lake_url)
    _, _, host = parsed.netloc.partition("@")
    if parsed.scheme not in ("abfs", "abfss", "az") or not host:
        raise ArtifactError(
            f"MLASSETS_LAKE_URL {lake_url!r} names no storage account; the factory needs "
            "abfs://<container>@<account>.dfs.core.windows.net/<prefix>"
        )
    return f"https://{host}/"


def sql_server_and_database(url: str) -> tuple[str, str]:
    """(server host, database) of a SQLAlchemy URL, without any credential."""
    import sqlalchemy as sa

    parsed = sa.make_url(url)
    server, database = parsed.host, parsed.database
    odbc = {k.lower(): v for k, v in parsed.query.items()}.get("odbc_connect")
    if odbc and (not server or not database):
        text = odbc if isinstance(odbc, str) else odbc[0]
        pairs = {
            k.strip().lower(): v.strip()
            for k, _, v in (part.partition("=") for part in text.split(";"))
            if k.strip()
        }
        server = server or pairs.get("server") or pairs.get("data source")
        database = database or pairs.get("database") or pairs.get("initial catalog")
    if not server or not database:
        raise ArtifactError("MLASSETS_LABELS_DB_URL names no SQL server and database")
    server = server.removeprefix("tcp:").split(",")[0]
    return server, database


# -- the SDK's models: what deploy sends, checked strictly ---------------------------------------


def sdk_resource(kind: str, document: dict) -> Any:
    """An artifact's JSON as the azure-mgmt-datafactory resource model deploy sends."""
    from azure.mgmt.datafactory import models

    cls = {
        "linkedService": models.LinkedServiceResource,
        "dataset": models.DatasetResource,
        "pipeline": models.PipelineResource,
        "trigger": models.TriggerResource,
    }[kind]
    return cls(document)


def sdk_problems(model: Any, where: str = "") -> list[str]:
    """Properties the SDK's models do not know, and polymorphic types it cannot resolve.

    The 10.x models keep unknown JSON keys silently, and resolve only one level of
    discriminators (an activity of type Copy stays a plain Activity, as Copy is registered
    under ExecutionActivity); both are resolved here, so a typo is an error before deploy.
    """
    from azure.mgmt.datafactory._utils.model_base import Model

    problems: list[str] = []

    def walk(obj: Any, path: str) -> None:
        if isinstance(obj, Model):
            cls = type(obj)
            resolved = _resolve_polymorphic(cls, obj)
            if resolved is None:
                problems.append(f"{path}: unknown {cls.__name__} type {obj.get('type')!r}")
                return
            if resolved is not cls:
                obj = resolved(obj.as_dict())
                cls = resolved
            known = {rf._rest_name: attr for attr, rf in cls._attr_to_rest_field.items()}
            for key in sorted(set(obj.keys()) - set(known)):
                problems.append(f"{path}: {cls.__name__} has no property {key!r}")
            for rest, attr in known.items():
                if rest in obj:
                    walk(getattr(obj, attr), f"{path}.{rest}" if path else rest)
        elif isinstance(obj, list):
            for i, value in enumerate(obj):
                walk(value, f"{path}[{i}]")
        elif isinstance(obj, dict):
            for key, value in obj.items():
                walk(value, f"{path}.{key}")

    walk(model, where)
    return problems


def _resolve_polymorphic(cls: type, obj: Any) -> type | None:
    """The most derived model class for obj's discriminator (None when it is unknown)."""
    mapping = cls.__dict__.get("__mapping__")
    if not mapping:
        return cls
    value = obj.get("type")
    if value is None:
        return cls

    def find(c: type) -> type | None:
        m = c.__dict__.get("__mapping__") or {}
        if value in m:
            return m[value]
        for sub in set(m.values()):  # one level down: Activity -> ExecutionActivity -> Copy
            if sub is not c and (hit := find(sub)) is not None:
                return hit
        return None

    return find(cls)


# -- Dagster metadata -----------------------------------------------------------------------------


def run_metadata(result: PipelineRunResult, prefix: str = "") -> dict[str, dg.MetadataValue]:
    """A run as Dagster metadata: run id, link, status, and the Copy metrics (summed over its
    copies, and one row per copy)."""
    meta: dict[str, dg.MetadataValue] = {
        f"{prefix}adf_pipeline": dg.MetadataValue.text(result.pipeline),
        f"{prefix}{ADF_RUN_ID}": dg.MetadataValue.text(result.run_id),
        f"{prefix}{ADF_ENGINE}": dg.MetadataValue.text(result.engine),
        f"{prefix}adf_status": dg.MetadataValue.text(result.status),
    }
    if result.duration_seconds is not None:
        meta[f"{prefix}adf_duration_seconds"] = dg.MetadataValue.float(
            round(result.duration_seconds, 3)
        )
    if result.url:
        meta[f"{prefix}adf_run_url"] = (
            dg.MetadataValue.url(result.url)
            if result.url.startswith("http")
            else dg.MetadataValue.path(result.url.removeprefix("file://"))
        )
    for key, value in result.copy_totals().items():
        meta[f"{prefix}{key}"] = (
            dg.MetadataValue.int(int(value))
            if key not in ("copyDuration", "throughput")
            else dg.MetadataValue.float(float(value))
        )
    copies = result.copy_activities
    if copies:
        meta[f"{prefix}adf_copy_activities"] = dg.MetadataValue.table(
            [
                dg.TableRecord(
                    {
                        "activity": a.name,
                        "status": a.status,
                        **{k: float(a.copy_metrics.get(k, 0)) for k in COPY_METRICS},
                    }
                )
                for a in copies
            ],
            schema=dg.TableSchema(
                columns=[dg.TableColumn("activity", "string"), dg.TableColumn("status", "string")]
                + [dg.TableColumn(k, "float") for k in COPY_METRICS]
            ),
        )
    return meta
