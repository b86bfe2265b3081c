"""AzureDataFactory with the real DataFactoryManagementClient, against a local ARM server.

There is no Data Factory emulator, so `FakeArm` answers the Azure Resource Manager endpoints
the SDK calls (over TLS, with a self-signed certificate the client is told to trust through
REQUESTS_CA_BUNDLE, and a fake bearer token), with scripted run histories: each `createRun`
takes the next `Script`, whose statuses successive `pipelineruns/<id>` GETs return. The SDK
builds every request and parses every response itself.
"""

import datetime as dt
import ipaddress
import json
import re
import ssl
import threading
import uuid
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import dagster as dg
import pytest
from azure.core.credentials import AccessToken
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import mlassets.roles.datafactory as datafactory
from mlassets.defs.ingestion.incoming import (
    INCOMING_CHECKS,
    INCOMING_DROPS,
    import_incoming,
    import_incoming_run_config,
    incoming_events,
)
from mlassets.defs.quality import QualityPolicy
from mlassets.lib.adf import (
    ArtifactError,
    Artifacts,
    PipelineRunCancelled,
    PipelineRunFailed,
    PipelineRunTimeout,
)
from mlassets.lib.events import LANDED_SCHEMA
from mlassets.lib.incoming import Drop
from mlassets.roles.datafactory import AzureDataFactory, run_metadata
from mlassets.roles.storage import LakeStorage
from mlassets.twins.adf.engine import CopyEngine

pytestmark = pytest.mark.timeout(60)

SUB, RG, FACTORY = "00000000-0000-0000-0000-000000000001", "rg-ml", "adf-mlassets"
TOKEN = "fake-arm-token"
SQL_URL = (
    "mssql+pyodbc://etl:TOPSECRET@sql-ml.database.windows.net:1433/labels"
    "?driver=ODBC+Driver+18+for+SQL+Server"
)


# -- the server side -----------------------------------------------------------------------------


@dataclass
class Script:
    """What ADF does with one run: the statuses its polls see (the last one repeats)."""

    statuses: list[str]
    message: str = ""
    activities: list[dict] = field(default_factory=list)
    #: Statuses after a cancel request; None: the run ignores cancels.
    on_cancel: list[str] | None = field(default_factory=lambda: ["Canceling", "Cancelled"])
    #: Called with (run id, parameters) when the run is created (e.g. to do the copy).
    on_create: object = None


@dataclass
class Run:
    run_id: str
    pipeline: str
    parameters: dict
    script: Script
    polls: int = 0
    cancelled: bool = False
    cancel_polls: int = 0

    def status(self) -> str:
        if self.cancelled and self.script.on_cancel is not None:
            states = self.script.on_cancel
            status = states[min(self.cancel_polls, len(states) - 1)]
            self.cancel_polls += 1
            return status
        states = self.script.statuses
        status = states[min(self.polls, len(states) - 1)]
        self.polls += 1
        return status


class FakeArm:
    """The ARM endpoints of one resource group's data factory."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict, object]] = []
        self.artifacts: dict[tuple[str, str], dict] = {}
        self.scripts: deque[Script] = deque()
        self.runs: dict[str, Run] = {}
        self.factory_exists = True
        self.lock = threading.Lock()

    def calls(self, method: str, pattern: str) -> list[tuple[str, str, dict, object]]:
        return [r for r in self.requests if r[0] == method and re.search(pattern, r[1])]

    def handle(self, method: str, path: str, query: dict, body: object) -> tuple[int, object]:
        prefix = (
            f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.DataFactory/"
            f"factories/{FACTORY}"
        )
        if not path.startswith(prefix) or not self.factory_exists:
            return 404, {"error": {"code": "ResourceNotFound", "message": f"{path} not found"}}
        rest = path[len(prefix) :]
        if rest == "" and method == "GET":
            return 200, {"id": prefix, "name": FACTORY, "location": "westeurope", "properties": {}}
        m = re.fullmatch(r"/(linkedservices|datasets|pipelines|triggers)/([^/]+)", rest)
        if m:
            key = (m[1], m[2])
            if method == "PUT":
                stored = {**body, "id": f"{prefix}{rest}", "etag": uuid.uuid4().hex}
                self.artifacts[key] = stored
                return 200, stored
            if key in self.artifacts:
                return 200, self.artifacts[key]
            return 404, {"error": {"code": "NotFound", "message": f"{m[2]} not found"}}
        m = re.fullmatch(r"/pipelines/([^/]+)/createRun", rest)
        if m and method == "POST":
            run = Run(str(uuid.uuid4()), m[1], body or {}, self.scripts.popleft())
            self.runs[run.run_id] = run
            if run.script.on_create:
                run.script.on_create(run.run_id, run.parameters)
            return 200, {"runId": run.run_id}
        m = re.fullmatch(r"/pipelineruns/([^/]+)(/cancel|/queryActivityruns)?", rest)
        if m:
            run = self.runs.get(m[1])
            if run is None:
                return 404, {"error": {"code": "NotFound", "message": "no such run"}}
            if m[2] == "/cancel":
                run.cancelled = True
                return 200, None
            if m[2] == "/queryActivityruns":
                return 200, self._activity_page(run, body or {})
            return 200, self._pipeline_run(run)
        return 400, {"error": {"code": "BadRequest", "message": f"unexpected {method} {rest}"}}

    def _pipeline_run(self, run: Run) -> dict:
        status = run.status()
        start = dt.datetime(2026, 1, 5, 10, tzinfo=dt.UTC)
        doc = {
            "runId": run.run_id,
            "pipelineName": run.pipeline,
            "parameters": {
                k: json.dumps(v) if not isinstance(v, str) else v for k, v in run.parameters.items()
            },
            "invokedBy": {"name": "Manual", "invokedByType": "Manual"},
            "runStart": start.isoformat(),
            "lastUpdated": start.isoformat(),
            "status": status,
            "message": run.script.message if status in ("Failed", "Cancelled") else "",
        }
        if status in ("Succeeded", "Failed", "Cancelled"):
            doc["runEnd"] = (start + dt.timedelta(seconds=42)).isoformat()
            doc["durationInMs"] = 42_000
        return doc

    @staticmethod
    def _activity_page(run: Run, query: dict) -> dict:
        """One activity per page, so paging is exercised."""
        index = int(query.get("continuationToken") or 0)
        value = run.script.activities[index : index + 1]
        page = {"value": value}
        if index + 1 < len(run.script.activities):
            page["continuationToken"] = str(index + 1)
        return page


def _certificate(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, False, False, False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "arm.pem", folder / "arm.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture(scope="module")
def tls(tmp_path_factory) -> tuple[Path, Path]:
    return _certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def arm(tls, monkeypatch):
    """A TLS ARM server on a free port; yields (FakeArm, base URL)."""
    fake = FakeArm()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            url = urlparse(self.path)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            with fake.lock:
                fake.requests.append((self.command, url.path, query, body))
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    status, payload = 401, {"error": {"code": "Unauthorized", "message": "token"}}
                elif query.get("api-version") != "2018-06-01":
                    status, payload = 400, {"error": {"code": "BadApiVersion", "message": "?"}}
                else:
                    status, payload = fake.handle(self.command, url.path, query, body)
            data = json.dumps(payload).encode() if payload is not None else b""
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("x-ms-request-id", str(uuid.uuid4()))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_PUT = do_POST = _serve

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*tls)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls[0]))  # trust the test certificate
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setattr(datafactory, "default_credential", lambda: FakeCredential())
    try:
        yield fake, f"https://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


class FakeCredential:
    """A TokenCredential that hands out a fixed token (and records the scopes asked for)."""

    scopes: list[tuple[str, ...]] = []

    def get_token(self, *scopes, **kwargs) -> AccessToken:
        FakeCredential.scopes.append(scopes)
        return AccessToken(TOKEN, int(dt.datetime.now(dt.UTC).timestamp()) + 3600)


@pytest.fixture
def sleeps(monkeypatch) -> list[float]:
    """The poll loop's sleeps, recorded and shortened."""
    import time

    recorded: list[float] = []

    def sleep(seconds: float) -> None:
        recorded.append(round(seconds, 6))
        time.sleep(min(seconds, 0.005))

    monkeypatch.setattr(datafactory, "_sleep", sleep)
    return recorded


def factory(base_url: str, **kwargs) -> AzureDataFactory:
    return AzureDataFactory(
        subscription_id=SUB,
        resource_group=RG,
        factory_name=FACTORY,
        lake_url="abfs://lake@mlacct.dfs.core.windows.net/prod",
        sql_url=SQL_URL,
        arm_endpoint=base_url,
        poll_interval_seconds=0.01,
        max_poll_interval_seconds=0.04,
        cancel_wait_seconds=5,
        **kwargs,
    )


def copy_activity(run_id: str, name: str = "CopyLabelsTable", **output) -> dict:
    metrics = {
        "dataRead": 1_048_576,
        "dataWritten": 262_144,
        "filesWritten": 1,
        "rowsRead": 1000,
        "rowsCopied": 998,
        "rowsSkipped": 2,
        "copyDuration": 8,
        "throughput": 128.0,
        "errors": [],
        "effectiveIntegrationRuntime": "AutoResolveIntegrationRuntime (West Europe)",
        "usedDataIntegrationUnits": 4,
        "usedParallelCopies": 1,
    }
    metrics.update(output)
    return {
        "pipelineName": "snapshot_labels",
        "pipelineRunId": run_id,
        "activityName": name,
        "activityType": "Copy",
        "activityRunId": str(uuid.uuid4()),
        "status": "Succeeded",
        "activityRunStart": "2026-01-05T10:00:01Z",
        "activityRunEnd": "2026-01-05T10:00:09Z",
        "durationInMs": 8000,
        "input": {"source": {"type": "AzureSqlSource"}},
        "output": metrics,
        "error": {"errorCode": "", "message": "", "failureType": "", "target": name},
    }


# -- deploy ------------------------------------------------------------------------------------


def test_deploy_creates_or_updates_in_dependency_order_with_this_environments_addresses(arm):
    fake, base = arm
    fake.artifacts[("linkedservices", "ls_lake")] = {"name": "ls_lake", "properties": {}}
    actions = factory(base).deploy()
    puts = fake.calls("PUT", r"/(linkedservices|datasets|pipelines)/")
    kinds = [re.search(r"/(linkedservices|datasets|pipelines)/", p[1])[1] for p in puts]
    assert kinds == sorted(kinds, key=["linkedservices", "datasets", "pipelines"].index)
    assert len(puts) == len(Artifacts.load()) == len(actions)
    assert {(a.kind, a.name, a.action) for a in actions if a.name == "ls_lake"} == {
        ("linkedService", "ls_lake", "updated")
    }
    assert all(a.action == "created" for a in actions if a.name != "ls_lake")
    lake = fake.artifacts[("linkedservices", "ls_lake")]["properties"]
    assert lake == {
        **json.loads((Artifacts.load().linked_service("ls_lake").path).read_text())["properties"],
        "typeProperties": {"url": "https://mlacct.dfs.core.windows.net/"},
    }
    sql = fake.artifacts[("linkedservices", "ls_labels_sql")]["properties"]["typeProperties"]
    assert (sql["server"], sql["database"]) == ("sql-ml.database.windows.net", "labels")
    assert sql["authenticationType"] == "SystemAssignedManagedIdentity"
    sent = json.dumps([p[3] for p in puts])
    assert "TOPSECRET" not in sent and "etl" not in sent  # the SQL URL's credentials stay home
    pipeline = fake.artifacts[("pipelines", "copy_incoming_to_landed")]["properties"]
    local = Artifacts.load().pipeline("copy_incoming_to_landed").properties
    assert pipeline["activities"] == local["activities"]  # the same JSON the local engine runs
    assert FakeCredential.scopes[-1] == (f"{base}/.default",)


def test_deploy_to_a_missing_factory_fails_before_touching_anything(arm):
    fake, base = arm
    fake.factory_exists = False
    with pytest.raises(ArtifactError, match=f"data factory '{FACTORY}' does not exist"):
        factory(base).deploy()
    assert not fake.calls("PUT", ".")


def test_a_dry_run_checks_every_file_and_sends_nothing(arm):
    fake, base = arm
    actions = factory(base).deploy(dry_run=True)
    assert {a.action for a in actions} == {"would deploy"} and not fake.requests


# -- runs -------------------------------------------------------------------------------------


def test_a_successful_run_reports_copy_metrics_run_id_and_the_monitoring_link(arm, sleeps):
    fake, base = arm
    script = Script(["Queued", "InProgress", "InProgress", "InProgress", "Succeeded"])
    fake.scripts.append(script)
    script.on_create = lambda run_id, params: script.activities.extend(
        [
            copy_activity(run_id),
            copy_activity(
                run_id,
                "SecondCopy",
                rowsCopied=2,
                rowsRead=2,
                rowsSkipped=0,
                dataRead=1024,
                copyDuration=2,
            ),
        ]
    )
    result = factory(base).run_pipeline("snapshot_labels", {"targetFile": "lsn=0a.parquet"})
    (create,) = fake.calls("POST", "/createRun")
    assert create[1].endswith("/pipelines/snapshot_labels/createRun")
    assert create[3] == {
        "lakeFileSystem": "lake",
        "lakeRoot": "prod/",
        "sourceSchema": "dbo",
        "sourceTable": "labels",
        "targetFolder": "snapshots/labels",
        "targetFile": "lsn=0a.parquet",
    }
    assert result.status == "Succeeded" and result.engine == "azure"
    assert result.run_id == next(iter(fake.runs))
    assert result.duration_seconds == 42.0
    assert [a.name for a in result.activities] == ["CopyLabelsTable", "SecondCopy"]  # two pages
    assert result.activities[0].error is None  # ADF's empty error object is no error
    totals = result.copy_totals()
    assert totals["rowsCopied"] == 1000 and totals["rowsRead"] == 1002
    assert totals["copyDuration"] == 10 and totals["throughput"] == round(
        (1_048_576 + 1024) / 1024 / 10, 3
    )
    assert result.url == (
        f"https://adf.azure.com/en/monitoring/pipelineruns/{result.run_id}?factory=%2Fsubscriptions"
        f"%2F{SUB}%2FresourceGroups%2F{RG}%2Fproviders%2FMicrosoft.DataFactory%2Ffactories%2F{FACTORY}"
    )
    meta = run_metadata(result)
    assert meta["adf_run_id"].value == result.run_id
    assert meta["adf_run_url"] == dg.MetadataValue.url(result.url)
    assert meta["rowsCopied"].value == 1000 and meta["rowsSkipped"].value == 2
    assert meta["dataRead"].value == 1_049_600
    assert len(meta["adf_copy_activities"].value.records) == 2
    assert sleeps[:4] == [0.01, 0.015, 0.0225, 0.03375]  # backoff, capped below
    assert max(sleeps) <= 0.04
    assert not fake.calls("POST", "/cancel")


def test_a_failed_run_raises_with_the_run_id_and_adfs_message(arm, sleeps):
    fake, base = arm
    message = (
        "Operation on target CopyLabelsTable failed: ErrorCode=SqlOperationFailed,'A database "
        "operation failed with the following error: 'Invalid object name 'dbo.labels'.'"
    )
    script = Script(["InProgress", "Failed"], message=message)
    script.on_create = lambda run_id, _: script.activities.append(
        {
            **copy_activity(run_id),
            "status": "Failed",
            "error": {
                "errorCode": "2200",
                "message": message,
                "failureType": "UserError",
                "target": "CopyLabelsTable",
            },
        }
    )
    fake.scripts.append(script)
    with pytest.raises(PipelineRunFailed) as err:
        factory(base).run_pipeline("snapshot_labels", {"targetFile": "x.parquet"})
    run_id = next(iter(fake.runs))
    assert err.value.run_id == run_id
    assert f"run {run_id} failed: {message}" in str(err.value)
    assert err.value.result.activities[0].error_message == message
    assert not fake.calls("POST", "/cancel")


def test_a_run_cancelled_outside_dagster_raises_cancelled(arm, sleeps):
    fake, base = arm
    fake.scripts.append(
        Script(["InProgress", "Canceling", "Cancelled"], message="Cancelled by a@b.c")
    )
    with pytest.raises(
        PipelineRunCancelled, match="was cancelled outside Dagster: Cancelled by"
    ) as err:
        factory(base).run_pipeline("snapshot_labels", {"targetFile": "x.parquet"})
    assert err.value.result.status == "Cancelled"
    assert not fake.calls("POST", "/cancel")


def test_a_run_that_never_finishes_is_cancelled_on_timeout(arm, sleeps):
    fake, base = arm
    fake.scripts.append(Script(["Queued", "InProgress"]))  # InProgress forever
    with pytest.raises(
        PipelineRunTimeout, match=r"did not finish within 0\.3s and was cancelled"
    ) as err:
        factory(base).run_pipeline("snapshot_labels", {"targetFile": "x.parquet"}, timeout=0.3)
    run_id = next(iter(fake.runs))
    (cancel,) = fake.calls("POST", "/cancel")
    assert cancel[1].endswith(f"/pipelineruns/{run_id}/cancel")
    assert cancel[2]["isRecursive"] == "true"  # child pipeline runs are cancelled too
    assert err.value.result.status == "Cancelled"  # it waited for ADF to say so
    assert err.value.run_id == run_id
    # it kept polling after the cancel until the run was Cancelled
    assert fake.runs[run_id].cancel_polls >= 2


def test_an_interrupted_dagster_run_cancels_the_adf_run_and_reraises(arm, monkeypatch):
    fake, base = arm
    fake.scripts.append(Script(["InProgress"]))
    calls = []

    def sleep(seconds: float) -> None:
        calls.append(seconds)
        if len(calls) == 2:  # Dagster's termination lands while the poll loop sleeps
            raise dg.DagsterExecutionInterruptedError()

    monkeypatch.setattr(datafactory, "_sleep", sleep)
    with pytest.raises(dg.DagsterExecutionInterruptedError):
        factory(base).run_pipeline("snapshot_labels", {"targetFile": "x.parquet"})
    run_id = next(iter(fake.runs))
    (cancel,) = fake.calls("POST", "/cancel")
    assert (
        cancel[1].endswith(f"/pipelineruns/{run_id}/cancel") and cancel[2]["isRecursive"] == "true"
    )
    assert fake.runs[run_id].cancel_polls >= 2  # the cancel was seen through to Cancelled


def test_a_terminated_dagster_step_cancels_the_adf_run(arm, monkeypatch, instance):
    """The same, through Dagster: the labels snapshot step is interrupted mid-poll."""
    fake, base = arm
    fake.scripts.append(Script(["InProgress"]))
    monkeypatch.setattr(
        datafactory,
        "_sleep",
        lambda s: (_ for _ in ()).throw(dg.DagsterExecutionInterruptedError()),
    )

    @dg.op
    def snapshot(data_factory: datafactory.DataFactoryResource) -> None:
        data_factory.run_pipeline("snapshot_labels", {"targetFile": "x.parquet"})

    @dg.job
    def job() -> None:
        snapshot()

    result = job.execute_in_process(
        resources={"data_factory": factory(base)}, instance=instance, raise_on_error=False
    )
    assert not result.success
    assert len(fake.calls("POST", "/cancel")) == 1


def test_a_retry_starts_a_new_run(arm, sleeps):
    fake, base = arm
    fake.scripts.extend([Script(["Failed"], message="transient"), Script(["Succeeded"])])
    adf = factory(base)
    with pytest.raises(PipelineRunFailed):
        adf.run_pipeline("snapshot_labels", {"targetFile": "x.parquet"})
    second = adf.run_pipeline("snapshot_labels", {"targetFile": "x.parquet"})
    runs = list(fake.runs)
    assert len(fake.calls("POST", "/createRun")) == 2 and len(set(runs)) == 2
    assert second.run_id == runs[1]


# -- the import job on Azure, end to end --------------------------------------------------------


def test_the_import_job_lands_a_drop_that_adf_copied(arm, sleeps, tmp_path, instance):
    """The factory's side runs the same pipeline JSON with the local engine against the lake
    (standing in for ADF's integration runtime), and reports its activity runs."""
    fake, base = arm
    lake = LakeStorage(url=f"file://{tmp_path}/lake")
    lines = [
        json.dumps(
            {
                "sample_id": f"d{i}",
                "pixels": [i % 18] * 64,
                "source": "scanner-9",
                "captured_at": "2026-01-05T09:00:00Z",
            }
        )
        for i in range(20)
    ] + ["{oops"]
    lake.fs.pipe(lake.path("incoming/2026-01-05/scanner-9.jsonl"), "\n".join(lines).encode())
    script = Script(["Queued", "InProgress", "Succeeded"])

    def adf_copies(run_id: str, parameters: dict) -> None:
        local = {**parameters, "lakeFileSystem": "", "lakeRoot": ""}  # the container is the lake
        done = CopyEngine(Artifacts.load(), lake).run(
            "copy_incoming_to_landed", local, run_id=run_id
        )
        for a in done.activities:
            script.activities.append(
                {
                    "pipelineName": "copy_incoming_to_landed",
                    "pipelineRunId": run_id,
                    "activityName": a.name,
                    "activityType": a.type,
                    "activityRunId": a.activity_run_id,
                    "status": a.status,
                    "durationInMs": 5,
                    "output": a.output,
                    "error": {},
                }
            )

    script.on_create = adf_copies
    fake.scripts.append(script)
    adf = factory(base)
    drop = Drop.parse("incoming/2026-01-05/scanner-9.jsonl")
    instance.add_dynamic_partitions(INCOMING_DROPS.name, [drop.name])
    job = dg.Definitions(
        assets=[incoming_events],
        asset_checks=INCOMING_CHECKS,
        jobs=[import_incoming],
        resources={"data_factory": adf, "lake": lake, "quality": QualityPolicy.from_settings()},
    ).resolve_job_def(import_incoming.name)
    result = job.execute_in_process(
        run_config=import_incoming_run_config(drop.path), partition_key=drop.name, instance=instance
    )
    assert result.success
    (create,) = fake.calls("POST", "/createRun")
    assert create[3]["lakeFileSystem"] == "lake" and create[3]["lakeRoot"] == "prod/"
    landed = lake.read_parquet(drop.landed_path)
    assert landed.schema.equals(LANDED_SCHEMA) and landed.num_rows == 19  # pixel 17 is refused
    (mat,) = [
        e.step_materialization_data.materialization
        for e in result.all_events
        if e.is_step_materialization
    ]
    assert mat.asset_key == incoming_events.key
    meta = {k: v.value for k, v in mat.metadata.items()}
    assert meta["adf_engine"] == "azure"
    assert meta["adf_run_url"].startswith("https://adf.azure.com/en/monitoring/pipelineruns/")
    assert meta["rowsCopied"] == 20 and meta["rowsSkipped"] == 1
    assert (meta["landed_rows"], meta["quarantined_rows"], meta["copy_skipped_rows"]) == (19, 2, 1)
    quarantined = lake.read_parquet(drop.quarantine_path)
    assert quarantined["reason"][-1].as_py().startswith("skipped by the copy: ")
    assert quarantined["body"][-1].as_py() == b"{oops"
