"""The Pipes message path of the Azure Batch client, for real against Azurite.

Dagster materializes an asset with the `AzureBatchHorovod` training compute. Its Batch calls go
through the real SDK to the local fake of the Batch service (fake_batch.py), where a subprocess
plays the task's one node: it runs the task's coordination command and then its main command
with bash, as the Batch agent would, with the task's environment settings. `docker` and
`horovodrun` on that node are small fakes standing for the container runtime: `docker exec`
passes only the variables named with `-e` (plus what the image itself would provide), and
`horovodrun` starts rank 0 of the program. The program opens Pipes with
`mlassets.training_program.pipes.open_pipes()` and `MLASSETS_PIPES_MESSAGES=azure-blob`, so its
logs and materialization travel through dagster_pipes' blob writer and Azurite to dagster-azure's
PipesAzureBlobStorageMessageReader. The Azurite connection string stands in for the managed
identity the real node would use.
"""

import json
import os
import shlex
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import dagster as dg
import pytest
from azure.storage.blob import BlobClient, BlobServiceClient

from mlassets.roles.azure_batch import AzureBatchHorovod
from mlassets.roles.training import TrainingCompute, TrainingJob
from mlassets_tests.roles.fake_batch import FakeBatchService

pytestmark = [pytest.mark.azurite, pytest.mark.timeout(120)]

IDENTITY = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/uai/batch"

TRAINER = '''
"""Plays the Horovod program: rank 0 reports through Pipes, like mlassets.training does."""
import os
import sys

from mlassets.training_program.pipes import open_pipes

epochs = int(sys.argv[sys.argv.index("--epochs") + 1])
assert os.environ["HOROVOD_RANK"] == "0"
with open_pipes() as pipes:
    for epoch in range(1, epochs + 1):
        pipes.log.info(f"epoch {epoch}/{epochs} loss={1 / epoch:.3f}")
    pipes.report_asset_materialization(
        metadata={
            "test_accuracy": 0.97,
            "epochs": epochs,
            "workers": int(os.environ["HOROVOD_SIZE"]),
            "lake": os.environ["MLASSETS_LAKE_URL"],
            "azure_client_id": os.environ.get("AZURE_CLIENT_ID", ""),
        }
    )
print("trainer finished", flush=True)
print("a warning on stderr", file=sys.stderr, flush=True)
'''

# `docker` on the fake node: records its calls; `exec ... horovodrun ...` runs horovodrun with
# only the variables named by -e (what a container would see) plus the image's own settings.
DOCKER = """
import json, os, sys
IMAGE_ENV = json.loads({image_env!r})
args = sys.argv[1:]
with open({log!r}, "a") as f:
    f.write(json.dumps(args) + "\\n")
if args[0] != "exec":
    sys.exit(0)
env, cwd, i = {{}}, None, 1
while args[i].startswith("-"):
    if args[i] == "-e":
        name, eq, value = args[i + 1].partition("=")
        if eq:
            env[name] = value
        elif name in os.environ:
            env[name] = os.environ[name]
    elif args[i] == "-w":
        cwd = args[i + 1]
    i += 2
command = args[i + 1:]
if command[0] != "horovodrun":
    sys.exit(0)  # e.g. the coordination command's sshd probe
env.update(IMAGE_ENV, PATH=os.environ["PATH"])
if cwd:
    os.chdir(cwd)
os.execvpe(command[0], command, env)
"""

# `horovodrun` in the fake container: checks its arguments and starts rank 0 of the program.
HOROVODRUN = """
import os, sys
args = sys.argv[1:]
assert args[0] == "--gloo", args
np = int(args[args.index("-np") + 1])
program = args[args.index("--ssh-identity-file") + 2:]
assert program[0] == "python", program
os.environ.update(HOROVOD_RANK="0", HOROVOD_SIZE=str(np), HOROVOD_HOSTS=args[args.index("-H") + 1])
os.execv(sys.executable, [sys.executable, *program[1:]])
"""


def _executable(path: Path, source: str) -> None:
    path.write_text(f"#!{sys.executable}\n{textwrap.dedent(source)}")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


class NodeRun:
    """The task's one node: common resource files downloaded, coordination command, then the
    main command in the background; stdout.txt/stderr.txt in the task folder, as on Batch."""

    def __init__(self, root: Path, task: dict, node_env: dict[str, str], credential: dict):
        self.task_dir = root / "task"
        shared, wd = root / "shared", self.task_dir / "wd"
        for d in (shared, wd):
            d.mkdir(parents=True)
        multi = task["multiInstanceSettings"]
        for f in multi.get("commonResourceFiles") or []:  # Batch, with the node's identity
            target = shared / f["filePath"]
            target.parent.mkdir(parents=True, exist_ok=True)
            blob = BlobClient.from_blob_url(f["httpUrl"], credential=credential)
            target.write_bytes(blob.download_blob().readall())
        self.env = {
            **node_env,
            "AZ_BATCH_HOST_LIST": "127.0.0.1",
            "AZ_BATCH_MASTER_NODE": "127.0.0.1:6000",
            "AZ_BATCH_JOB_ID": "job",
            "AZ_BATCH_TASK_ID": task["id"],
            "AZ_BATCH_TASK_SHARED_DIR": str(shared),
            "AZ_BATCH_TASK_WORKING_DIR": str(wd),
            **{s["name"]: s["value"] for s in task.get("environmentSettings") or []},
        }
        self.coordination = subprocess.run(
            shlex.split(multi["coordinationCommandLine"]),
            env=self.env,
            cwd=wd,
            capture_output=True,
            timeout=30,
        )
        self.proc = None
        if self.coordination.returncode == 0:  # else Batch never starts the main command
            with (
                open(self.task_dir / "stdout.txt", "wb") as out,
                open(self.task_dir / "stderr.txt", "wb") as err,
            ):
                self.proc = subprocess.Popen(
                    shlex.split(task["commandLine"]), env=self.env, cwd=wd, stdout=out, stderr=err
                )

    def view(self) -> dict:
        code = self.coordination.returncode if self.proc is None else self.proc.poll()
        if code is None:
            return {"state": "running", "executionInfo": {"retryCount": 0, "requeueCount": 0}}
        info = {"exitCode": code, "result": "success" if code == 0 else "failure"}
        return {"state": "completed", "executionInfo": {**info, "retryCount": 0, "requeueCount": 0}}

    def file(self, name: str) -> bytes | None:
        path = self.task_dir / name
        return path.read_bytes() if path.exists() else None

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def node_bin(tmp_path: Path, azurite: str) -> tuple[Path, Path]:
    """The fake node's `docker` and `horovodrun`, and the log of docker calls."""
    bin_dir, log = tmp_path / "node-bin", tmp_path / "docker.jsonl"
    bin_dir.mkdir()
    (tmp_path / "image").mkdir()
    (tmp_path / "image" / "fake_trainer.py").write_text(TRAINER)
    image_env = {  # what the training image (and the node's identity) would provide
        "PYTHONPATH": str(tmp_path / "image"),
        "MLASSETS_PIPES_STORAGE_CONNECTION_STRING": azurite,
    }
    _executable(bin_dir / "docker", DOCKER.format(image_env=json.dumps(image_env), log=str(log)))
    _executable(bin_dir / "horovodrun", HOROVODRUN)
    return bin_dir, log


def test_messages_from_the_batch_node_reach_dagster_through_blob_storage(
    fake_batch: FakeBatchService, azurite: str, azurite_container: str, node_bin, tmp_path
):
    bin_dir, docker_log = node_bin
    parts = dict(p.split("=", 1) for p in azurite.strip(";").split(";"))
    blob_endpoint = parts["BlobEndpoint"]
    node_env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": str(tmp_path)}
    credential = {"account_name": parts["AccountName"], "account_key": parts["AccountKey"]}
    nodes: list[NodeRun] = []

    def run_task(job_id: str, task: dict) -> NodeRun:
        nodes.append(NodeRun(tmp_path / "node", task, node_env, credential))
        return nodes[-1]

    fake_batch.run_task = run_task
    fake_batch.add_pool(
        "gpu",
        targetDedicatedNodes=1,
        identity={
            "type": "UserAssigned",
            "userAssignedIdentities": [{"resourceId": IDENTITY, "clientId": "client-1"}],
        },
    )

    @dg.asset
    def digit_classifier(context: dg.AssetExecutionContext, training_compute: TrainingCompute):
        job = TrainingJob(
            module="fake_trainer",
            args=["--epochs", "3"],
            env={"MLASSETS_LAKE_URL": "abfs://lake/mlassets"},
        )
        return training_compute.run(context, job).get_materialize_result()

    compute = AzureBatchHorovod(
        workers=2,
        batch_account_url=fake_batch.url,
        batch_account_name="acct",
        batch_account_key="bm90LWEtcmVhbC1rZXk=",
        pool_id="gpu",
        nodes=1,
        gpus_per_node=2,
        container_image="mlassets-training:test",
        storage_account_url=blob_endpoint,
        storage_container=azurite_container,
        storage_connection_string=azurite,
        poll_interval_seconds=0.2,
    )
    with dg.DagsterInstance.ephemeral() as instance:
        try:
            result = dg.materialize(
                [digit_classifier],
                resources={"training_compute": compute},
                instance=instance,
                raise_on_error=False,
            )
        finally:
            for node in nodes:
                node.terminate()
        logs = [e.user_message for e in instance.all_logs(result.run_id) if e.user_message]
    assert result.success, "\n".join(logs[-30:])
    assert not fake_batch.unexpected

    # What the program reported through Pipes arrived: its materialization ...
    [materialization] = result.asset_materializations_for_node("digit_classifier")
    metadata = {k: v.value for k, v in materialization.metadata.items()}
    assert metadata["test_accuracy"] == 0.97
    assert metadata["epochs"] == 3
    assert metadata["workers"] == 2
    assert metadata["lake"] == "abfs://lake/mlassets"
    assert (
        metadata["azure_client_id"] == "client-1"
    )  # the pool identity, for DefaultAzureCredential
    assert metadata["azure_batch_job_id"] == f"mlassets-{result.run_id}"
    # ... and its log lines, one per epoch, in order; the node's stdout/stderr were forwarded.
    epochs = [m for m in logs if m.startswith("epoch ")]
    assert epochs == ["epoch 1/3 loss=1.000", "epoch 2/3 loss=0.500", "epoch 3/3 loss=0.333"]
    assert "[batch stdout] trainer finished" in logs
    assert "[batch stderr] a warning on stderr" in logs

    # The messages went through Azurite, under the prefix the reader gave the node.
    [(_, task)] = fake_batch.task_bodies.items()
    settings = {s["name"]: s["value"] for s in task["environmentSettings"]}
    assert settings["MLASSETS_PIPES_MESSAGES"] == "azure-blob"
    assert "MLASSETS_PIPES_STORAGE_CONNECTION_STRING" not in settings
    container = BlobServiceClient.from_connection_string(azurite).get_container_client(
        azurite_container
    )
    names = [b.name for b in container.list_blobs()]
    chunks = [n for n in names if n.endswith(".json")]
    assert chunks, names
    # The SSH key pair was staged for the node (which got a matching pair) and is gone now.
    shared = tmp_path / "node" / "shared" / "mlassets-ssh"
    assert (shared / "id_ed25519").read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY")
    assert (shared / "id_ed25519.pub").read_text().startswith("ssh-ed25519 ")
    assert not [n for n in names if "/ssh/" in n]

    # On the node: the coordination command started the container, the main one exec'd into it.
    calls = [json.loads(line) for line in docker_log.read_text().splitlines()]
    assert calls[1][:2] == ["run", "-d"] and "--network" in calls[1]
    [exec_call] = [c for c in calls if c[0] == "exec" and "horovodrun" in c]
    assert exec_call[exec_call.index("-H") + 1] == "127.0.0.1:2"
    assert exec_call[exec_call.index("-np") + 1] == "2"
