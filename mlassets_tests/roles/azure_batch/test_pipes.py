"""PipesAzureBatchClient with the real azure-batch SDK against a local fake of the Batch service.

The SDK (`azure.batch.BatchClient`, shared-key signed) sends its real REST calls to
`FakeBatchService` (fake_batch.py), which answers them the way Batch does and records them; a
task's life is scripted per test. Blob storage (the Pipes messages and the staged SSH key) is an
in-memory stand-in here: the real blob path is tested against Azurite in
test_pipes_on_azurite.py, and the shell the nodes run in test_node_scripts.py.
"""

import base64
import json
import shlex
from datetime import timedelta

import dagster as dg
import dagster._core.pipes.utils as pipes_utils  # only to shorten a private grace period
import isodate
import pytest
from azure.batch import BatchClient
from azure.core.credentials import AzureNamedKeyCredential
from dagster_azure.pipes import PipesAzureBlobStorageMessageReader
from dagster_pipes import decode_env_var

from mlassets.roles.azure_batch import (
    BatchPoolSpec,
    HorovodTask,
    PipesAzureBatchClient,
    PipesAzureBatchError,
    PipesAzureBatchPoolError,
    PipesAzureBatchTaskError,
)
from mlassets.roles.training import TRAINING_ENV
from mlassets_tests.roles.fake_batch import FakeBatchService, ScriptedRun

pytestmark = pytest.mark.timeout(60)

ACCOUNT_URL = "https://acct.blob.core.windows.net"
IMAGE = "example.azurecr.io/mlassets-training:1"
IDENTITY = (
    "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity"
    "/userAssignedIdentities/mlassets-batch"
)
POOL_IDENTITY = {
    "type": "UserAssigned",
    "userAssignedIdentities": [
        {"resourceId": IDENTITY, "clientId": "11111111-2222-3333-4444-555555555555"}
    ],
}


class MemoryBlobs:
    """The part of BlobServiceClient the reader and the SSH-key staging use, in memory."""

    def __init__(self):
        self.blobs: dict[tuple[str, str], bytes] = {}
        self.uploaded: dict[tuple[str, str], bytes] = {}

    def get_blob_client(self, container: str, blob: str) -> "MemoryBlob":
        return MemoryBlob(self, (container, blob))


class MemoryBlob:
    def __init__(self, store: MemoryBlobs, key: tuple[str, str]):
        self.store, self.key = store, key

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def exists(self) -> bool:
        return self.key in self.store.blobs

    def upload_blob(self, data: bytes, overwrite: bool = False) -> None:
        self.store.blobs[self.key] = self.store.uploaded[self.key] = bytes(data)

    def delete_blob(self) -> None:
        del self.store.blobs[self.key]


@pytest.fixture(autouse=True)
def _no_pipes_grace_period(monkeypatch):
    """Nothing writes Pipes messages here, so don't wait Dagster's 10 s for late ones."""
    monkeypatch.setattr(pipes_utils, "WAIT_FOR_LOGS_AFTER_EXECUTION_INTERVAL", 0)


@pytest.fixture
def blobs() -> MemoryBlobs:
    return MemoryBlobs()


def make_client(fake: FakeBatchService, blobs: MemoryBlobs, nodes: int = 2, **pool):
    key = base64.b64encode(b"not-a-real-key-0123456789abcdef").decode()
    return PipesAzureBatchClient(
        client=BatchClient(fake.url, AzureNamedKeyCredential("acct", key)),
        pool=BatchPoolSpec(
            pool_id="gpu",
            vm_size="Standard_NC4as_T4_v3",
            nodes=nodes,
            gpus_per_node=1,
            container_image=IMAGE,
            **pool,
        ),
        message_reader=PipesAzureBlobStorageMessageReader(
            container="pipes", client=blobs, interval=0.1
        ),
        storage_account_url=ACCOUNT_URL,
        poll_interval_seconds=0.01,
        termination_timeout_seconds=10,
    )


def materialize(client: PipesAzureBatchClient, task: HorovodTask):
    """Materialize an asset whose body runs `task` through `client`; returns the result, the
    run log's messages and what client.run raised (re-raised to Dagster as well)."""
    raised: list[BaseException] = []

    @dg.asset
    def digit_model(context: dg.AssetExecutionContext):
        try:
            invocation = client.run(context=context, task=task, extras={"dataset": "v1"})
        except BaseException as e:
            raised.append(e)
            raise
        return invocation.get_materialize_result()

    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize([digit_model], instance=instance, raise_on_error=False)
        logs = [e.user_message for e in instance.all_logs(result.run_id) if e.user_message]
    return result, logs, raised


TASK = HorovodTask(
    module="mlassets.training_program.train",
    args=("--dataset", "datasets/digits/v=abc", "--epochs", "3"),
    env={"MLASSETS_LAKE_URL": "abfs://lake@acct.dfs.core.windows.net/mlassets"},
    workers=2,
)


def steps(*states: str) -> list[tuple[str, bytes, bytes]]:
    return [(s, b"", b"") for s in states]


def test_a_missing_pool_is_created_for_multi_instance_horovod(fake_batch, blobs):
    fake_batch.run_task = lambda job, task: ScriptedRun(steps("running", "completed"))
    result, logs, raised = materialize(make_client(fake_batch, blobs, nodes=3), TASK)
    assert result.success, raised

    [created] = fake_batch.calls("POST", "/pools")
    pool = created.body
    assert pool["id"] == "gpu"
    assert pool["vmSize"] == "Standard_NC4as_T4_v3"
    assert pool["targetDedicatedNodes"] == 3
    assert pool["enableInterNodeCommunication"] is True
    assert pool["taskSlotsPerNode"] == 1
    vm = pool["virtualMachineConfiguration"]
    assert vm["containerConfiguration"] == {
        "type": "dockerCompatible",
        "containerImageNames": [IMAGE],
    }
    assert vm["nodeAgentSKUId"] == "batch.node.ubuntu 22.04"
    assert vm["imageReference"]["offer"] == "ubuntu-hpc"
    start = pool["startTask"]
    assert start["waitForSuccess"] is True
    assert "nvidia-smi" in start["commandLine"]
    assert start["userIdentity"]["autoUser"]["elevationLevel"] == "admin"
    # A pool made through the data plane has no identity: the run log says what that means.
    assert any("no user-assigned managed identity" in m for m in logs)
    # Every request was signed with the account's shared key.
    assert all(
        r.headers["authorization"].startswith("SharedKey acct:") for r in fake_batch.requests
    )
    assert not fake_batch.unexpected


def test_the_multi_instance_task_carries_the_pipes_bootstrap_and_succeeds(fake_batch, blobs):
    fake_batch.add_pool("gpu", identity=POOL_IDENTITY)
    fake_batch.run_task = lambda job, task: ScriptedRun(steps("active", "running", "completed"))
    result, logs, raised = materialize(make_client(fake_batch, blobs), TASK)
    assert result.success, raised
    assert not fake_batch.calls("POST", "/pools")  # the existing pool is used as it is

    [job_req] = fake_batch.calls("POST", "/jobs")
    job_id = job_req.body["id"]
    assert job_id == f"mlassets-{result.run_id}"  # one Batch job per Dagster run
    assert job_req.body["poolInfo"] == {"poolId": "gpu"}
    # The job's time limit: the task's 4 h plus 2 h of waiting for nodes.
    assert isodate.parse_duration(job_req.body["constraints"]["maxWallClockTime"]) == timedelta(
        hours=6
    )
    assert "docker rm -f" in job_req.body["jobReleaseTask"]["commandLine"]
    assert "docker pull" in job_req.body["jobPreparationTask"]["commandLine"]

    [(key, task)] = fake_batch.task_bodies.items()
    assert key[0] == job_id
    multi = task["multiInstanceSettings"]
    assert multi["numberOfInstances"] == 2
    assert "sshd" in multi["coordinationCommandLine"]
    assert "horovodrun --gloo -np 2" in task["commandLine"]
    assert task["userIdentity"]["autoUser"] == {"scope": "pool", "elevationLevel": "admin"}
    assert task["constraints"]["maxTaskRetryCount"] == 0

    env = {s["name"]: s["value"] for s in task["environmentSettings"]}
    context = decode_env_var(env["DAGSTER_PIPES_CONTEXT"])["data"]
    assert context["run_id"] == result.run_id
    assert context["asset_keys"] == ["digit_model"]
    assert context["extras"] == {"dataset": "v1"}
    messages = decode_env_var(env["DAGSTER_PIPES_MESSAGES"])
    assert messages["bucket"] == "pipes" and messages["key_prefix"]
    assert env["MLASSETS_PIPES_MESSAGES"] == "azure-blob"
    assert env["MLASSETS_PIPES_STORAGE_ACCOUNT_URL"] == ACCOUNT_URL
    assert env["AZURE_CLIENT_ID"] == "11111111-2222-3333-4444-555555555555"
    assert env["MLASSETS_LAKE_URL"] == TASK.env["MLASSETS_LAKE_URL"]
    assert TRAINING_ENV.items() <= env.items()
    # ... and every variable is passed into the container by name.
    command = shlex.split(task["commandLine"])[2]
    for name in env:
        assert f"-e {name} " in command, name

    # The SSH key pair reaches the nodes as common resource files read with the pool identity,
    # never in the task definition, and is deleted from storage once the task is over.
    files = multi["commonResourceFiles"]
    assert {f["filePath"] for f in files} == {
        "mlassets-ssh/id_ed25519",
        "mlassets-ssh/id_ed25519.pub",
    }
    assert all(f["identityReference"] == {"resourceId": IDENTITY} for f in files)
    assert all(f["httpUrl"].startswith(f"{ACCOUNT_URL}/pipes/batch/{job_id}/") for f in files)
    [private_url] = [f["httpUrl"] for f in files if f["filePath"].endswith("id_ed25519")]
    private_key = blobs.uploaded[("pipes", private_url.split("/pipes/", 1)[1])]
    assert private_key.startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    every_request = json.dumps([r.body for r in fake_batch.requests])
    assert private_key.decode().splitlines()[1] not in every_request
    assert not [name for _, name in blobs.blobs if "/ssh/" in name]

    # stdout, stderr and outputs are uploaded to blob with the pool's identity.
    uploads = {o["filePattern"]: o["destination"]["container"] for o in task["outputFiles"]}
    assert set(uploads) == {"../std*.txt", "outputs/**/*"}
    assert all(d["containerUrl"] == f"{ACCOUNT_URL}/pipes" for d in uploads.values())
    assert all(d["identityReference"] == {"resourceId": IDENTITY} for d in uploads.values())

    # Success: the job is terminated (so the release task cleans the nodes), metadata says where.
    assert fake_batch.calls("POST", f"/jobs/{job_id}/terminate")
    metadata = result.asset_materializations_for_node("digit_model")[0].metadata
    assert metadata["azure_batch_job_id"].value == job_id
    assert metadata["azure_batch_task_id"].value == key[1]
    assert any(m.endswith(" is running") for m in logs)
    assert not fake_batch.unexpected


def test_the_tasks_stdout_and_stderr_are_forwarded_to_the_run_log_as_they_grow(fake_batch, blobs):
    fake_batch.add_pool("gpu", identity=POOL_IDENTITY)
    chunks = [b"epoch 1 loss=0.9\nepoch 2 lo", b"ss=0.5\n", b"done without newline"]
    fake_batch.run_task = lambda job, task: ScriptedRun(
        [
            ("running", b"", b""),
            ("running", chunks[0], b"TF warning\n"),
            ("running", b"", b""),
            ("running", chunks[1], b""),
            ("completed", chunks[2], b""),
        ]
    )
    result, logs, raised = materialize(make_client(fake_batch, blobs), TASK)
    assert result.success, raised
    forwarded = [m for m in logs if m.startswith("[batch ")]
    assert forwarded == [
        "[batch stdout] epoch 1 loss=0.9",
        "[batch stderr] TF warning",
        "[batch stdout] epoch 2 loss=0.5",
        "[batch stdout] done without newline",
    ]
    # Each download asked only for the bytes not read yet.
    ranges = [r.headers["ocp-range"] for r in fake_batch.calls("GET", r".*/files/stdout\.txt")]
    a, b, c = (len(chunk) for chunk in chunks)
    assert ranges == [
        f"bytes=0-{a - 1}",
        f"bytes={a}-{a + b - 1}",
        f"bytes={a + b}-{a + b + c - 1}",
    ]


def test_a_non_zero_exit_raises_with_the_exit_code_and_the_tail_of_stderr(fake_batch, blobs):
    fake_batch.add_pool("gpu", identity=POOL_IDENTITY)
    noise = b"".join(b"warning line %d\n" % i for i in range(1000))
    fake_batch.run_task = lambda job, task: ScriptedRun(
        [
            ("running", b"epoch 1\n", noise),
            ("completed", b"", b"Traceback (most recent call last):\nValueError: boom\n"),
        ],
        exit_code=3,
    )
    result, _, raised = materialize(make_client(fake_batch, blobs), TASK)
    assert not result.success
    [error] = raised
    assert isinstance(error, PipesAzureBatchTaskError)
    assert isinstance(error, PipesAzureBatchError)
    [(job_id, task_id)] = fake_batch.tasks
    assert error.exit_code == 3
    assert (error.job_id, error.task_id) == (job_id, task_id)
    message = str(error)
    assert "exit code 3" in message and job_id in message and task_id in message
    assert message.rstrip().endswith("ValueError: boom")
    assert "warning line 999" in message  # the tail ...
    assert "warning line 0\n" not in message  # ... only
    assert fake_batch.calls("POST", f"/jobs/{job_id}/terminate")
    # Dagster's step failure carries the same message.
    failure = result.failure_data_for_node("digit_model")
    assert "exit code 3" in failure.error.to_string()


def test_a_terminated_dagster_run_terminates_the_batch_job_and_reraises(fake_batch, blobs):
    fake_batch.add_pool("gpu", identity=POOL_IDENTITY)
    runs: list[ScriptedRun] = []

    def run_task(job_id, task):
        runs.append(ScriptedRun(steps("active", *["running"] * 1000, "completed")))
        return runs[-1]

    fake_batch.run_task = run_task
    client = make_client(fake_batch, blobs)

    def sleep(seconds):  # where Dagster's interruption surfaces in a terminated run
        if runs and runs[0].position >= 2:  # the task has been seen running
            raise dg.DagsterExecutionInterruptedError()

    client._sleep = sleep
    result, logs, raised = materialize(client, TASK)

    assert not result.success
    assert [type(e) for e in raised] == [dg.DagsterExecutionInterruptedError]
    [(job_id, _)] = fake_batch.tasks
    terminate = fake_batch.calls("POST", f"/jobs/{job_id}/terminate")
    assert len(terminate) == 1
    assert terminate[0].body == {"terminateReason": "DagsterRunTerminated"}
    # The client waited for the job to leave the terminating state before re-raising.
    assert fake_batch.calls("GET", f"/jobs/{job_id}")
    assert fake_batch.jobs[job_id]["state"] == "completed"
    assert runs[0].terminated
    assert any(f"terminating Azure Batch job {job_id}" in m for m in logs)


def test_a_job_that_ends_before_its_task_got_nodes_fails_the_step(fake_batch, blobs):
    fake_batch.add_pool("gpu", identity=POOL_IDENTITY)

    def run_task(job_id, task):  # no node ever comes; Batch ends the job at its time limit
        fake_batch.jobs[job_id].update(
            state="completed",
            executionInfo={
                "startTime": "2026-01-01T00:00:00Z",
                "terminateReason": "MaxWallClockTimeExpiry",
            },
        )
        return ScriptedRun(steps(*["active"] * 1000))

    fake_batch.run_task = run_task
    result, _, raised = materialize(make_client(fake_batch, blobs), TASK)
    assert not result.success
    [error] = raised
    assert isinstance(error, PipesAzureBatchTaskError)
    assert error.exit_code is None
    assert "MaxWallClockTimeExpiry" in str(error) and "never started" in str(error)


def test_a_pool_without_inter_node_communication_is_refused(fake_batch, blobs):
    fake_batch.add_pool("gpu", enableInterNodeCommunication=False, identity=POOL_IDENTITY)
    result, _, raised = materialize(make_client(fake_batch, blobs), TASK)
    assert not result.success
    [error] = raised
    assert isinstance(error, PipesAzureBatchPoolError)
    assert "inter-node communication" in str(error)
    assert not fake_batch.calls("POST", "/jobs") and not fake_batch.tasks


def test_a_pool_too_small_for_the_task_is_resized(fake_batch, blobs):
    fake_batch.add_pool("gpu", targetDedicatedNodes=1, identity=POOL_IDENTITY)
    fake_batch.run_task = lambda job, task: ScriptedRun(steps("running", "completed"))
    result, _, raised = materialize(make_client(fake_batch, blobs, nodes=2), TASK)
    assert result.success, raised
    [resize] = fake_batch.calls("POST", "/pools/gpu/resize")
    assert resize.body == {"targetDedicatedNodes": 2}


def test_secrets_never_go_into_a_task_environment(fake_batch, blobs):
    task = HorovodTask(
        module="m", env={"MLASSETS_STORAGE_CONNECTION_STRING": "AccountKey=TOPSECRET"}, workers=2
    )
    result, _, raised = materialize(make_client(fake_batch, blobs), task)
    assert not result.success
    assert "MLASSETS_STORAGE_CONNECTION_STRING" in str(raised[0])
    assert "TOPSECRET" not in json.dumps([r.body for r in fake_batch.requests])
    assert not fake_batch.requests
