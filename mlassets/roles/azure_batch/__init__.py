"""Training on Azure Batch GPUs through Dagster Pipes: `PipesAzureBatchClient` and the
`AzureBatchHorovod` training-compute resource.

Built like dagster-azure's `PipesAzureMLClient`, on azure-batch 15.x (`azure.batch.BatchClient`,
the azure-core generation of the SDK):

- the pool is ensured: GPU VM size, node count, inter-node communication, one task slot per
  node, Docker-compatible container configuration that prefetches the training image, and a
  start task that checks the GPU and Docker on every node. A pool that exists is validated
  (inter-node communication and task slots cannot be changed later) and grown if too small;
- one Batch job per Dagster run (id `mlassets-<run id>`, `-r<n>` on step retries), with a job
  preparation task (pull the image when the pool did not prefetch it) and a job release task
  (remove the task's containers on every node);
- one multi-instance task: its coordination command starts, on every node, the training
  container with host networking, the GPUs and an sshd on a private port; its main command runs
  `horovodrun -np <workers> -H <master>:<gpus>,<node>:<gpus>,...` (from `AZ_BATCH_MASTER_NODE`
  and `AZ_BATCH_HOST_LIST`) inside the primary node's container. The SSH key pair is generated
  per task, staged in blob storage and downloaded by Batch as a common resource file with the
  pool's managed identity, and deleted when the task ends: it never appears in the task
  definition;
- the Pipes bootstrap (context and message-writer parameters) goes into the task's environment
  together with `MLASSETS_PIPES_MESSAGES=azure-blob` and the storage account URL; the training
  program (mlassets.training_program.pipes.open_pipes) writes its messages to blob storage with the
  node's managed identity and dagster-azure's PipesAzureBlobStorageMessageReader reads them;
- the task's stdout.txt/stderr.txt are forwarded to the run log while it runs (incrementally,
  by byte range), and uploaded to blob with the outputs when it completes;
- a non-zero exit raises `PipesAzureBatchTaskError` (a DagsterPipesExecutionError) with the job
  id, task id, exit code and the tail of stderr; a terminated Dagster run terminates the Batch
  job and re-raises the interruption.

Nothing secret ever goes into a task's environment or command line: storage is reached with
the pool's user-assigned managed identity (which must be able to read and write the container).
"""

import contextlib
import os
import re
import shlex
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import urlparse

import azure.batch.models as bm
import dagster as dg
import dagster._check as check
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from dagster._core.definitions.resource_annotation import TreatAsResourceParam
from dagster._core.errors import DagsterExecutionInterruptedError, DagsterPipesExecutionError
from dagster._core.pipes.client import (
    PipesClient,
    PipesClientCompletedInvocation,
    PipesContextInjector,
)
from dagster._core.pipes.utils import PipesEnvContextInjector, open_pipes_session
from dagster_azure.pipes import PipesAzureBlobStorageMessageReader
from dagster_pipes import PipesExtras
from pydantic import Field, PrivateAttr

from mlassets import settings
from mlassets.roles.training import TRAINING_ENV, TrainingCompute, TrainingJob

#: Where the training container's sshd listens on every node (host networking).
DEFAULT_SSH_PORT = 2222
#: Folder (under AZ_BATCH_TASK_SHARED_DIR) Batch downloads the task's SSH key pair to.
SSH_KEY_DIR = "mlassets-ssh"
#: Environment variable names that must never reach a Batch task: the task definition is
#: readable by anyone who can read the Batch account.
_SECRET_NAME = re.compile(r"KEY|SECRET|PASSWORD|TOKEN|CONNECTION_STRING|SAS|CREDENTIAL", re.I)
_BATCH_ID_CHARS = re.compile(r"[^A-Za-z0-9_-]")
_ADMIN = bm.UserIdentity(
    auto_user=bm.AutoUserSpecification(
        scope=bm.AutoUserScope.POOL, elevation_level=bm.ElevationLevel.ADMIN
    )
)


class PipesAzureBatchTaskError(DagsterPipesExecutionError):
    """The Batch task failed: it carries where (job, task), how (exit code, failure info) and the
    last lines the program wrote to stderr."""

    def __init__(
        self,
        *,
        job_id: str,
        task_id: str,
        exit_code: int | None,
        stderr_tail: str,
        failure: str | None = None,
    ):
        self.job_id = job_id
        self.task_id = task_id
        self.exit_code = exit_code
        self.stderr_tail = stderr_tail
        self.failure = failure
        how = f"exited with exit code {exit_code}" if exit_code is not None else "failed"
        lines = [f"Azure Batch task {task_id} of job {job_id} {how}."]
        if failure:
            lines.append(f"Failure: {failure}")
        lines.append("Tail of stderr:" if stderr_tail.strip() else "(stderr was empty)")
        if stderr_tail.strip():
            lines.append(stderr_tail.rstrip())
        super().__init__("\n".join(lines))


class PipesAzureBatchPoolError(DagsterPipesExecutionError):
    """The pool cannot run a multi-instance Horovod task and cannot be fixed from here."""


@dataclass(frozen=True)
class BatchPoolSpec:
    """The GPU pool a training task needs (and what the client creates when it is missing)."""

    pool_id: str
    vm_size: str
    nodes: int
    gpus_per_node: int
    container_image: str
    #: publisher:offer:sku:version of a Batch-supported Linux image with the NVIDIA driver,
    #: Docker and the NVIDIA container toolkit.
    node_image: str = "microsoft-dsvm:ubuntu-hpc:2204:latest"
    node_agent_sku_id: str = "batch.node.ubuntu 22.04"
    #: Runs once on every node as admin; the node is not used unless it succeeds.
    start_task_command: str | None = "nvidia-smi -L && docker info --format '{{.ServerVersion}}'"
    #: ARM id of the pool's user-assigned identity; None: the pool's only one.
    identity_resource_id: str | None = None
    docker_run_options: str = "--gpus all --ipc host --shm-size 2g"
    ssh_port: int = DEFAULT_SSH_PORT
    python: str = "python"

    @property
    def slots(self) -> int:
        return self.nodes * self.gpus_per_node

    def image_reference(self) -> bm.BatchVmImageReference:
        publisher, offer, sku, version = [*self.node_image.split(":"), "latest"][:4]
        return bm.BatchVmImageReference(publisher=publisher, offer=offer, sku=sku, version=version)


@dataclass(frozen=True)
class HorovodTask:
    """`python -m <module> <args>` on `workers` Horovod ranks, with `env` (never secrets)."""

    module: str
    args: Sequence[str] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    workers: int = 1

    def check(self, pool: BatchPoolSpec) -> None:
        secret = sorted(name for name in self.env if _SECRET_NAME.search(name))
        if secret:
            raise ValueError(
                f"refusing to put {', '.join(secret)} in an Azure Batch task's environment: "
                "task definitions are readable by anyone with access to the Batch account; "
                "the nodes authenticate with the pool's managed identity instead"
            )
        if not 1 <= self.workers <= pool.slots:
            raise ValueError(
                f"{self.workers} Horovod workers do not fit {pool.nodes} nodes x "
                f"{pool.gpus_per_node} GPUs of pool {pool.pool_id}"
            )


@dataclass(frozen=True)
class _Identity:
    resource_id: str
    client_id: str | None


def _v(value: Any) -> str | None:
    """An SDK enum (or plain string) as its wire value: str() of these enums is 'Cls.MEMBER'."""
    if value is None:
        return None
    return str(getattr(value, "value", value))


def batch_id(text: str, limit: int = 64) -> str:
    """A valid Batch job/task id: letters, digits, hyphens and underscores, at most 64."""
    return _BATCH_ID_CHARS.sub("-", text)[:limit]


def host_list_script(slots_per_host: int) -> str:
    """Shell lines that set HOSTS to horovodrun's -H list, master node first (so rank 0 runs on
    the primary, next to the launcher and the task's stdout), from the variables Batch sets for
    a multi-instance task: AZ_BATCH_MASTER_NODE (ip:port) and AZ_BATCH_HOST_LIST (ip,ip,...)."""
    n = int(slots_per_host)
    return "; ".join(
        [
            'MASTER="${AZ_BATCH_MASTER_NODE%%:*}"',
            f'HOSTS="$MASTER:{n}"',
            'for h in $(echo "$AZ_BATCH_HOST_LIST" | tr "," " "); do '
            f'if [ "$h" != "$MASTER" ]; then HOSTS="$HOSTS,$h:{n}"; fi; done',
        ]
    )


#: Both commands run in the same task on the same node, so these variables agree there.
_CONTAINER = 'C="mlassets-hvd-$AZ_BATCH_JOB_ID-$AZ_BATCH_TASK_ID"'


def coordination_script(pool: BatchPoolSpec) -> str:
    """Runs on every node of the multi-instance task before the main command: starts the
    training container (host network, GPUs, the task's shared and working folders mounted at the
    same paths) with sshd on `ssh_port`, authorizing the task's key pair, and waits for sshd."""
    sshd = " && ".join(
        [
            "mkdir -p /root/.ssh /run/sshd",
            'cp "$K/id_ed25519" /root/.ssh/id_ed25519',
            'cp "$K/id_ed25519.pub" /root/.ssh/authorized_keys',
            "chmod 700 /root/.ssh",
            "chmod 600 /root/.ssh/*",
            "ssh-keygen -A >/dev/null",
            f"exec /usr/sbin/sshd -D -p {int(pool.ssh_port)} -o PermitRootLogin=prohibit-password",
        ]
    )
    docker_run = " ".join(
        [
            f'docker run -d --name "$C" --network host {pool.docker_run_options}',
            '-e K="$K"',
            '-v "$AZ_BATCH_TASK_SHARED_DIR:$AZ_BATCH_TASK_SHARED_DIR"',
            '-v "$AZ_BATCH_TASK_WORKING_DIR:$AZ_BATCH_TASK_WORKING_DIR"',
            f"--entrypoint /bin/sh {shlex.quote(pool.container_image)} -c {shlex.quote(sshd)}",
        ]
    )
    lines = [
        "set -eu",
        _CONTAINER,
        f'K="$AZ_BATCH_TASK_SHARED_DIR/{SSH_KEY_DIR}"',
        'docker rm -f "$C" >/dev/null 2>&1 || true',
        docker_run,
        'for i in $(seq 60); do if docker exec "$C" test -s /run/sshd.pid; then exit 0; fi; '
        "sleep 2; done",
        'echo "sshd did not start in container $C" >&2',
        'docker logs "$C" >&2 || true',
        "exit 1",
    ]
    return "; ".join(lines)


def main_script(pool: BatchPoolSpec, task: HorovodTask, env_names: Sequence[str]) -> str:
    """Runs on the primary node once every node is coordinated: horovodrun (Gloo) inside the
    primary's container, across the task's nodes, with the task's environment passed in by name
    (`docker exec -e NAME` copies the value Batch set; horovodrun forwards it to every rank)."""
    program = [pool.python, "-m", task.module, *(str(a) for a in task.args)]
    docker_exec = " ".join(
        [
            "exec docker exec",
            *(f"-e {shlex.quote(name)}" for name in sorted(env_names)),
            '-e MLASSETS_TRAINING_OUTPUTS_DIR="$OUT"',
            '-w "$AZ_BATCH_TASK_SHARED_DIR" "$C"',
            f'horovodrun --gloo -np {int(task.workers)} -H "$HOSTS"',
            f"--ssh-port {int(pool.ssh_port)} --ssh-identity-file /root/.ssh/id_ed25519",
            shlex.join(program),
        ]
    )
    lines = [
        "set -eu",
        _CONTAINER,
        host_list_script(pool.gpus_per_node),
        'OUT="$AZ_BATCH_TASK_WORKING_DIR/outputs"',
        'mkdir -p "$OUT"',
        f'echo "horovodrun -np {int(task.workers)} -H $HOSTS"',
        docker_exec,
    ]
    return "; ".join(lines)


def job_preparation_script(pool: BatchPoolSpec) -> str:
    image = shlex.quote(pool.container_image)
    return f"docker image inspect {image} >/dev/null 2>&1 || docker pull {image}"


def job_release_script() -> str:
    return (
        'for c in $(docker ps -aq --filter "name=mlassets-hvd-$AZ_BATCH_JOB_ID-"); do '
        'docker rm -f "$c" >/dev/null; done; true'
    )


def bash(script: str) -> str:
    """A Batch command line running the one-line `script` in bash: Batch starts no shell."""
    return "/bin/bash -c " + shlex.quote(script)


class _TaskOutputForwarder:
    """Forwards the primary task's stdout.txt and stderr.txt to the run log as they grow: each
    poll asks for the file sizes and downloads only the new bytes (ocp-range)."""

    FILES = ("stdout.txt", "stderr.txt")

    def __init__(self, client, job_id: str, task_id: str, log, tail_bytes: int = 4000):
        self.client = client
        self.job_id = job_id
        self.task_id = task_id
        self.log = log
        self.tail_bytes = tail_bytes
        self.offsets = dict.fromkeys(self.FILES, 0)
        self.partial = dict.fromkeys(self.FILES, b"")
        self.stderr_tail = b""
        self._warned = False

    def poll(self, final: bool = False) -> None:
        for name in self.FILES:
            try:
                self._read(name)
            except ResourceNotFoundError:
                continue  # not written yet
            except HttpResponseError as e:
                if not self._warned:
                    self._warned = True
                    self.log.warning(f"[pipes] could not read the task's {name}: {e.message}")
            if final and self.partial[name]:
                self._emit(name, self.partial[name])
                self.partial[name] = b""

    def _read(self, name: str) -> None:
        props = self.client.get_task_file_properties(self.job_id, self.task_id, name)
        size = int(props.content_length or 0)
        start = self.offsets[name]
        if size <= start:
            return
        data = b"".join(
            self.client.download_task_file(
                self.job_id, self.task_id, name, ocp_range=f"bytes={start}-{size - 1}"
            )
        )
        self.offsets[name] = start + len(data)
        if name == "stderr.txt":
            self.stderr_tail = (self.stderr_tail + data)[-self.tail_bytes :]
        *lines, self.partial[name] = (self.partial[name] + data).split(b"\n")
        for line in lines:
            self._emit(name, line)

    def _emit(self, name: str, line: bytes) -> None:
        text = line.decode("utf-8", errors="replace").rstrip("\r")
        if text:
            self.log.info(f"[batch {name.removesuffix('.txt')}] {text}")


class PipesAzureBatchClient(PipesClient, TreatAsResourceParam):
    """Pipes client for Azure Batch: a Horovod program as a multi-instance task on a GPU pool.

    Args:
        client (azure.batch.BatchClient): the Batch account's data-plane client.
        pool (BatchPoolSpec): the pool to run on, created as specified when missing.
        message_reader (PipesAzureBlobStorageMessageReader): reads the program's Pipes messages
            from blob storage; its container (and client) also hold the task's SSH key pair and
            receive the task's stdout/stderr and outputs.
        storage_account_url (str): the blob endpoint of that storage account as the nodes reach
            it (with the pool's managed identity), e.g. https://<account>.blob.core.windows.net.
        context_injector (PipesContextInjector): defaults to the environment (the context goes
            into the task's environment settings).
        poll_interval_seconds (float): between two looks at the task (and its output files).
        forward_termination (bool): terminate the Batch job when the Dagster run is terminated.
        termination_timeout_seconds (float): how long to wait for the job to finish terminating.
        task_timeout (timedelta): the task's max wall clock time, from its start.
        queue_timeout (timedelta): how much longer the job may live, waiting for nodes.
    """

    def __init__(
        self,
        client: Any,
        pool: BatchPoolSpec,
        message_reader: PipesAzureBlobStorageMessageReader,
        storage_account_url: str,
        context_injector: PipesContextInjector | None = None,
        job_prefix: str = "mlassets",
        poll_interval_seconds: float = 10,
        forward_termination: bool = True,
        termination_timeout_seconds: float = 120,
        task_timeout: timedelta = timedelta(hours=4),
        queue_timeout: timedelta = timedelta(hours=2),
    ):
        self.client = client
        self.pool = check.inst_param(pool, "pool", BatchPoolSpec)
        self.message_reader = check.inst_param(
            message_reader, "message_reader", PipesAzureBlobStorageMessageReader
        )
        self.storage_account_url = check.str_param(
            storage_account_url, "storage_account_url"
        ).rstrip("/")
        self.context_injector = check.opt_inst_param(
            context_injector, "context_injector", PipesContextInjector, PipesEnvContextInjector()
        )
        self.job_prefix = batch_id(job_prefix, 16)
        self.poll_interval_seconds = check.numeric_param(
            poll_interval_seconds, "poll_interval_seconds"
        )
        self.forward_termination = check.bool_param(forward_termination, "forward_termination")
        self.termination_timeout_seconds = termination_timeout_seconds
        self.task_timeout = task_timeout
        self.queue_timeout = queue_timeout

    @classmethod
    def _is_dagster_maintained(cls) -> bool:
        return False

    @property
    def container(self) -> str:
        return self.message_reader.bucket

    @property
    def container_url(self) -> str:
        return f"{self.storage_account_url}/{self.container}"

    def _sleep(self, seconds: float) -> None:
        # Where a terminated run's DagsterExecutionInterruptedError normally surfaces.
        time.sleep(seconds)

    # -- pool ---------------------------------------------------------------------------------

    def pool_create_options(self) -> bm.BatchPoolCreateOptions:
        p = self.pool
        start_task = None
        if p.start_task_command:
            start_task = bm.BatchStartTask(
                command_line=bash(p.start_task_command),
                user_identity=_ADMIN,
                wait_for_success=True,
                max_task_retry_count=1,
            )
        return bm.BatchPoolCreateOptions(
            id=p.pool_id,
            display_name="mlassets Horovod training (GPU)",
            vm_size=p.vm_size,
            target_dedicated_nodes=p.nodes,
            enable_inter_node_communication=True,
            task_slots_per_node=1,
            virtual_machine_configuration=bm.VirtualMachineConfiguration(
                image_reference=p.image_reference(),
                node_agent_sku_id=p.node_agent_sku_id,
                container_configuration=bm.BatchContainerConfiguration(
                    type=bm.ContainerType.DOCKER_COMPATIBLE,
                    container_image_names=[p.container_image],
                ),
            ),
            start_task=start_task,
        )

    def ensure_pool(self, context) -> _Identity | None:
        """Create the pool when it is missing, validate it when it exists (grow it when it is
        too small); returns the user-assigned identity its nodes use for storage."""
        p = self.pool
        try:
            pool = self.client.get_pool(p.pool_id)
        except ResourceNotFoundError:
            try:
                self.client.create_pool(self.pool_create_options())
                context.log.info(
                    f"[pipes] created Azure Batch pool {p.pool_id}: {p.nodes} x {p.vm_size}, "
                    "inter-node communication, 1 task slot per node; nodes take minutes to start"
                )
            except ResourceExistsError:  # created by a concurrent run
                pass
            pool = self.client.get_pool(p.pool_id)
        self._validate_pool(context, pool)
        return self._identity(context, pool)

    def _validate_pool(self, context, pool) -> None:
        p = self.pool
        if _v(pool.state) == "deleting":
            raise PipesAzureBatchPoolError(f"Azure Batch pool {p.pool_id} is being deleted")
        if not pool.enable_inter_node_communication:
            raise PipesAzureBatchPoolError(
                f"Azure Batch pool {p.pool_id} has inter-node communication disabled, which "
                "multi-instance tasks need and which cannot be changed on an existing pool: "
                "delete it (it is re-created) or set MLASSETS_BATCH_POOL_ID to another pool"
            )
        if (pool.task_slots_per_node or 1) != 1:
            raise PipesAzureBatchPoolError(
                f"Azure Batch pool {p.pool_id} has {pool.task_slots_per_node} task slots per "
                "node; multi-instance tasks need exactly 1"
            )
        if pool.vm_size and pool.vm_size.lower() != p.vm_size.lower():
            context.log.warning(
                f"[pipes] pool {p.pool_id} has VM size {pool.vm_size}, not {p.vm_size}: using it"
            )
        target = (pool.target_dedicated_nodes or 0) + (pool.target_low_priority_nodes or 0)
        if target < p.nodes:
            if pool.enable_auto_scale or (_v(pool.allocation_state) or "steady") != "steady":
                context.log.warning(
                    f"[pipes] pool {p.pool_id} targets {target} nodes, the task needs {p.nodes}; "
                    "it waits until the pool has them"
                )
            else:
                self.client.begin_resize_pool(
                    p.pool_id,
                    bm.BatchPoolResizeOptions(target_dedicated_nodes=p.nodes),
                    polling_interval=max(1, int(self.poll_interval_seconds)),
                )
                context.log.info(f"[pipes] resizing pool {p.pool_id} to {p.nodes} nodes")

    def _identity(self, context, pool) -> _Identity | None:
        identities = list(getattr(pool.identity, "user_assigned_identities", None) or [])
        wanted = self.pool.identity_resource_id
        if wanted:
            for ident in identities:
                if ident.resource_id.lower() == wanted.lower():
                    return _Identity(ident.resource_id, ident.client_id)
            raise PipesAzureBatchPoolError(
                f"Azure Batch pool {self.pool.pool_id} does not have the managed identity "
                f"{wanted}; assign it to the pool (ARM/Bicep) or fix "
                "MLASSETS_BATCH_IDENTITY_RESOURCE_ID"
            )
        if len(identities) == 1:
            return _Identity(identities[0].resource_id, identities[0].client_id)
        if len(identities) > 1:
            raise PipesAzureBatchPoolError(
                f"Azure Batch pool {self.pool.pool_id} has {len(identities)} managed identities: "
                "set MLASSETS_BATCH_IDENTITY_RESOURCE_ID to the one that reaches storage"
            )
        context.log.warning(
            f"[pipes] Azure Batch pool {self.pool.pool_id} has no user-assigned managed "
            "identity, so its nodes cannot reach blob storage for Pipes messages, the SSH key "
            "and outputs. Pools with an identity are created through ARM (see README, Azure "
            "Batch); the Batch data plane used here cannot assign one."
        )
        return None

    # -- job and task -------------------------------------------------------------------------

    def job_id_for(self, context) -> str:
        job_id = f"{self.job_prefix}-{context.run_id}"
        retry = getattr(context, "retry_number", 0) or 0
        return batch_id(f"{job_id}-r{retry}" if retry else job_id)

    def ensure_job(self, context, job_id: str) -> None:
        job = bm.BatchJobCreateOptions(
            id=job_id,
            display_name=f"Dagster run {context.run_id}",
            pool_info=bm.BatchPoolInfo(pool_id=self.pool.pool_id),
            # A safety net for a task that never gets nodes (its own limit counts from its
            # start): Batch terminates the job, and the task with it.
            constraints=bm.BatchJobConstraints(
                max_wall_clock_time=self.task_timeout + self.queue_timeout
            ),
            job_preparation_task=bm.BatchJobPreparationTask(
                command_line=bash(job_preparation_script(self.pool)),
                user_identity=_ADMIN,
                wait_for_success=True,
            ),
            job_release_task=bm.BatchJobReleaseTask(
                command_line=bash(job_release_script()), user_identity=_ADMIN
            ),
            metadata=[bm.BatchMetadataItem(name="dagster_run_id", value=str(context.run_id))],
        )
        try:
            self.client.create_job(job)
            context.log.info(f"[pipes] created Azure Batch job {job_id}")
        except ResourceExistsError:
            context.log.info(f"[pipes] reusing Azure Batch job {job_id}")

    def task_environment(
        self, task: HorovodTask, bootstrap: Mapping[str, str], identity: _Identity | None
    ) -> dict[str, str]:
        env = {
            **TRAINING_ENV,
            **task.env,
            **bootstrap,
            "MLASSETS_PIPES_MESSAGES": "azure-blob",
            "MLASSETS_PIPES_STORAGE_ACCOUNT_URL": self.storage_account_url,
        }
        if identity and identity.client_id:
            # DefaultAzureCredential on the node picks this user-assigned identity.
            env["AZURE_CLIENT_ID"] = identity.client_id
        return env

    def task_create_options(
        self,
        task_id: str,
        task: HorovodTask,
        env: Mapping[str, str],
        key_blobs: Sequence[str],
        identity: _Identity | None,
        job_id: str,
    ) -> bm.BatchTaskCreateOptions:
        ref = bm.BatchNodeIdentityReference(resource_id=identity.resource_id) if identity else None
        key_files = [
            bm.ResourceFile(
                http_url=f"{self.container_url}/{blob}",
                file_path=f"{SSH_KEY_DIR}/{blob.rsplit('/', 1)[-1]}",
                file_mode="0600",
                identity_reference=ref,
            )
            for blob in key_blobs
        ]
        outputs = None
        if ref is not None:
            prefix = self.outputs_prefix(job_id, task_id)
            outputs = [
                bm.OutputFile(
                    file_pattern=pattern,
                    destination=bm.OutputFileDestination(
                        container=bm.OutputFileBlobContainerDestination(
                            container_url=self.container_url,
                            path=f"{prefix}/{folder}",
                            identity_reference=ref,
                        )
                    ),
                    upload_options=bm.OutputFileUploadConfiguration(
                        upload_condition=bm.OutputFileUploadCondition.TASK_COMPLETION
                    ),
                )
                for pattern, folder in (("../std*.txt", "logs"), ("outputs/**/*", "outputs"))
            ]
        return bm.BatchTaskCreateOptions(
            id=task_id,
            display_name=f"horovodrun -np {task.workers} python -m {task.module}"[:1024],
            command_line=bash(main_script(self.pool, task, list(env))),
            multi_instance_settings=bm.MultiInstanceSettings(
                number_of_instances=self.pool.nodes,
                coordination_command_line=bash(coordination_script(self.pool)),
                common_resource_files=key_files,
            ),
            environment_settings=[bm.EnvironmentSetting(name=k, value=v) for k, v in env.items()],
            user_identity=_ADMIN,
            constraints=bm.BatchTaskConstraints(
                max_wall_clock_time=self.task_timeout, max_task_retry_count=0
            ),
            output_files=outputs,
        )

    def outputs_prefix(self, job_id: str, task_id: str) -> str:
        return f"batch/{job_id}/{task_id}"

    @contextmanager
    def _staged_ssh_key(self, job_id: str, task_id: str) -> Iterator[list[str]]:
        """A fresh key pair for the task's nodes, in blob storage only while the task runs."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        key = Ed25519PrivateKey.generate()
        files = {
            "id_ed25519": key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.OpenSSH,
                serialization.NoEncryption(),
            ),
            "id_ed25519.pub": key.public_key().public_bytes(
                serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
            )
            + b" mlassets-horovod\n",
        }
        prefix = f"{self.outputs_prefix(job_id, task_id)}/ssh"
        blobs = []
        blob_service = self.message_reader.client
        try:
            for name, data in files.items():
                blob = f"{prefix}/{name}"
                blob_service.get_blob_client(self.container, blob).upload_blob(data, overwrite=True)
                blobs.append(blob)
            yield blobs
        finally:
            for blob in blobs:
                with contextlib.suppress(Exception):  # useless once the task is gone
                    blob_service.get_blob_client(self.container, blob).delete_blob()

    def _wait_for_task(self, context, job_id: str, task_id: str, forwarder) -> Any:
        last_state = None
        while True:
            task = self.client.get_task(job_id, task_id)
            state = _v(task.state)
            if state != last_state:
                context.log.info(f"[pipes] Azure Batch task {job_id}/{task_id} is {state}")
                last_state = state
            if state == "completed":
                forwarder.poll(final=True)
                return task
            if state == "running":
                forwarder.poll()
            else:  # waiting for nodes: a job that ended meanwhile never runs the task
                self._check_job_still_active(job_id, task_id)
            self._sleep(self.poll_interval_seconds)

    def _check_job_still_active(self, job_id: str, task_id: str) -> None:
        job = self.client.get_job(job_id)
        state = _v(job.state)
        if state in ("terminating", "completed", "deleting", "disabled"):
            info = job.execution_info
            reason = (info.termination_reason if info else None) or "no reason given"
            raise PipesAzureBatchTaskError(
                job_id=job_id,
                task_id=task_id,
                exit_code=None,
                stderr_tail="",
                failure=f"the job is {state} ({reason}) and the task never started",
            )

    def _terminate_job(self, context, job_id: str, reason: str, wait: bool) -> None:
        """Terminate the job: Batch stops its running task on every node and runs the job
        release task there. Never raises: the caller has a more important outcome to report."""
        try:
            poller = self.client.begin_terminate_job(
                job_id,
                # The request body (BatchJobTerminateOptions is not exported by 15.1, whose
                # terminate call also fails without a body).
                {"terminateReason": reason},
                polling_interval=max(1, int(self.poll_interval_seconds)),
            )
            if wait:
                poller.result(timeout=self.termination_timeout_seconds)
                if not poller.done():
                    context.log.warning(
                        f"[pipes] Azure Batch job {job_id} still terminating after "
                        f"{self.termination_timeout_seconds}s"
                    )
                else:
                    context.log.info(f"[pipes] Azure Batch job {job_id} terminated")
        except ResourceNotFoundError:
            pass
        except Exception as e:
            context.log.warning(f"[pipes] could not terminate Azure Batch job {job_id}: {e}")

    @staticmethod
    def _raise_on_failure(job_id: str, task_id: str, task, stderr_tail: str) -> None:
        info = task.execution_info
        exit_code = info.exit_code if info else None
        failure = info.failure_info if info else None
        result = _v(info.result) if info else None
        if exit_code == 0 and failure is None and result != "failure":
            return
        failure_text = None
        if failure is not None:
            failure_text = f"{_v(failure.category)}: {failure.code}: {failure.message}"
        raise PipesAzureBatchTaskError(
            job_id=job_id,
            task_id=task_id,
            exit_code=exit_code,
            stderr_tail=stderr_tail,
            failure=failure_text,
        )

    def run(  # type: ignore[override]
        self,
        *,
        context: dg.OpExecutionContext | dg.AssetExecutionContext,
        extras: PipesExtras | None = None,
        task: HorovodTask,
    ) -> PipesClientCompletedInvocation:
        """Run `task` as a multi-instance task with the Pipes protocol and wait for it.

        The program calls `mlassets.training_program.pipes.open_pipes()` (rank 0 only), which finds the
        context and the blob message-writer parameters in its environment.
        """
        task.check(self.pool)
        identity = self.ensure_pool(context)
        job_id = self.job_id_for(context)
        task_id = batch_id(f"train-{uuid.uuid4().hex[:12]}")
        self.ensure_job(context, job_id)
        terminated = False

        def terminate(reason: str, wait: bool) -> None:
            nonlocal terminated
            if not terminated:
                terminated = True
                self._terminate_job(context, job_id, reason, wait)

        try:
            with open_pipes_session(
                context=context,
                extras=extras,
                context_injector=self.context_injector,
                message_reader=self.message_reader,
            ) as session:
                env = self.task_environment(task, session.get_bootstrap_env_vars(), identity)
                with self._staged_ssh_key(job_id, task_id) as key_blobs:
                    self.client.create_task(
                        job_id,
                        self.task_create_options(task_id, task, env, key_blobs, identity, job_id),
                    )
                    context.log.info(
                        f"[pipes] submitted Azure Batch task {job_id}/{task_id}: "
                        f"{self.pool.nodes} nodes, horovodrun -np {task.workers}"
                    )
                    forwarder = _TaskOutputForwarder(self.client, job_id, task_id, context.log)
                    try:
                        batch_task = self._wait_for_task(context, job_id, task_id, forwarder)
                    except DagsterExecutionInterruptedError:
                        # Right away, before the Pipes session winds down.
                        if self.forward_termination:
                            context.log.info(
                                "[pipes] execution interrupted, terminating Azure Batch job "
                                f"{job_id}"
                            )
                            terminate("DagsterRunTerminated", wait=True)
                        raise
                    # The job holds one task: terminating it runs the release task (which
                    # removes the task's containers) on every node.
                    terminate("TaskCompleted", wait=False)
                    self._raise_on_failure(
                        job_id,
                        task_id,
                        batch_task,
                        forwarder.stderr_tail.decode("utf-8", errors="replace"),
                    )
        except DagsterExecutionInterruptedError:
            if self.forward_termination:
                terminate("DagsterRunTerminated", wait=True)
            raise
        except BaseException:
            terminate("DagsterStepFailed", wait=False)  # e.g. the task could not be added
            raise
        metadata: dict[str, Any] = {
            "azure_batch_job_id": job_id,
            "azure_batch_task_id": task_id,
            "azure_batch_pool_id": self.pool.pool_id,
        }
        if identity is not None:
            metadata["azure_batch_outputs_url"] = dg.MetadataValue.url(
                f"{self.container_url}/{self.outputs_prefix(job_id, task_id)}/"
            )
        return PipesClientCompletedInvocation(session, metadata=metadata)


class AzureBatchHorovod(TrainingCompute):
    """Horovod across the GPU nodes of an Azure Batch pool, through PipesAzureBatchClient.

    Secrets (the account key, a storage connection string) come only through dg.EnvVar and never
    leave the orchestrator; the nodes use the pool's managed identity.
    """

    batch_account_url: str = Field(
        description="Batch account endpoint, https://<account>.<region>.batch.azure.com"
    )
    batch_account_key: str | None = Field(
        default=None, description="shared key (secret, from an EnvVar); unset: Entra ID"
    )
    batch_account_name: str | None = Field(
        default=None, description="account name for the shared key; default: from the URL"
    )
    pool_id: str = Field(default="mlassets-gpu", description="the training pool")
    vm_size: str = Field(default="Standard_NC4as_T4_v3", description="GPU VM size")
    nodes: int = Field(default=2, description="nodes of the multi-instance task")
    gpus_per_node: int = Field(default=1, description="GPUs, and Horovod slots, per node")
    container_image: str = Field(
        description="training image: TensorFlow, Horovod, openssh-server and mlassets"
    )
    node_image: str = Field(
        default="microsoft-dsvm:ubuntu-hpc:2204:latest",
        description="publisher:offer:sku:version of the nodes' OS image (GPU driver + Docker)",
    )
    node_agent_sku_id: str = Field(default="batch.node.ubuntu 22.04")
    identity_resource_id: str | None = Field(
        default=None, description="the pool's user-assigned identity; default: its only one"
    )
    storage_account_url: str = Field(
        description="blob endpoint for Pipes messages, the SSH key and outputs"
    )
    storage_container: str = Field(default="mlassets-batch", description="blob container")
    storage_connection_string: str | None = Field(
        default=None,
        description="orchestrator side only (Azurite, dev): instead of DefaultAzureCredential",
    )
    poll_interval_seconds: float = Field(default=10.0)
    task_timeout_minutes: int = Field(default=240)

    _credential: Any = PrivateAttr(default=None)

    @property
    def description(self) -> str:
        return (
            f"Azure Batch pool {self.pool_id}: {self.nodes} x {self.vm_size} "
            f"({self.gpus_per_node} GPU each), horovodrun -np {self.workers}"
        )

    def pool_spec(self) -> BatchPoolSpec:
        return BatchPoolSpec(
            pool_id=self.pool_id,
            vm_size=self.vm_size,
            nodes=self.nodes,
            gpus_per_node=self.gpus_per_node,
            container_image=self.container_image,
            node_image=self.node_image,
            node_agent_sku_id=self.node_agent_sku_id,
            identity_resource_id=self.identity_resource_id,
        )

    def _default_credential(self):
        if self._credential is None:
            from azure.identity import DefaultAzureCredential

            self._credential = DefaultAzureCredential()
        return self._credential

    def batch_client(self):
        from azure.batch import BatchClient

        if self.batch_account_key:
            from azure.core.credentials import AzureNamedKeyCredential

            host = urlparse(self.batch_account_url).hostname or ""
            name = self.batch_account_name or host.split(".")[0]
            credential = AzureNamedKeyCredential(name, self.batch_account_key)
        else:
            credential = self._default_credential()
        return BatchClient(self.batch_account_url, credential)

    def blob_service_client(self):
        from azure.storage.blob import BlobServiceClient

        if self.storage_connection_string:
            return BlobServiceClient.from_connection_string(self.storage_connection_string)
        return BlobServiceClient(self.storage_account_url, credential=self._default_credential())

    def pipes_client(self) -> PipesAzureBatchClient:
        return PipesAzureBatchClient(
            client=self.batch_client(),
            pool=self.pool_spec(),
            message_reader=PipesAzureBlobStorageMessageReader(
                container=self.storage_container,
                client=self.blob_service_client(),
                interval=max(1.0, self.poll_interval_seconds / 2),
            ),
            storage_account_url=self.storage_account_url,
            poll_interval_seconds=self.poll_interval_seconds,
            task_timeout=timedelta(minutes=self.task_timeout_minutes),
        )

    def check_settings(self) -> None:
        missing = [
            variable
            for variable, value in (
                ("MLASSETS_BATCH_ACCOUNT_URL", self.batch_account_url),
                ("MLASSETS_BATCH_CONTAINER_IMAGE", self.container_image),
                ("MLASSETS_PIPES_STORAGE_ACCOUNT_URL", self.storage_account_url),
            )
            if not value
        ]
        if missing:
            raise settings.MissingSettingError(
                "training on Azure Batch needs these environment variables, which are not set: "
                + ", ".join(missing)
                + ". See README.md (Azure Batch)."
            )

    def run(
        self, context: dg.AssetExecutionContext, job: TrainingJob
    ) -> dg.PipesClientCompletedInvocation:
        self.check_settings()
        task = HorovodTask(
            module=job.module, args=tuple(job.args), env=dict(job.env), workers=self.workers
        )
        return self.pipes_client().run(context=context, extras=job.extras, task=task)


def azure_batch_horovod_from_settings() -> AzureBatchHorovod:
    """The resource as MLASSETS_BATCH_* / MLASSETS_PIPES_* configure it (for deployment.py):
    secrets as EnvVars (resolved at run time, never shown), the rest as plain values."""

    def env(name: str) -> dg.EnvVar | None:
        return dg.EnvVar(name) if os.environ.get(name) else None

    def get(name: str, default: str) -> str:
        return settings.get(name) or default

    nodes = int(get("MLASSETS_BATCH_NODES", "2"))
    gpus = int(get("MLASSETS_BATCH_GPUS_PER_NODE", "1"))
    return AzureBatchHorovod(
        workers=nodes * gpus,
        batch_account_url=get("MLASSETS_BATCH_ACCOUNT_URL", ""),
        batch_account_key=env("MLASSETS_BATCH_ACCOUNT_KEY"),
        pool_id=get("MLASSETS_BATCH_POOL_ID", "mlassets-gpu"),
        vm_size=get("MLASSETS_BATCH_VM_SIZE", "Standard_NC4as_T4_v3"),
        nodes=nodes,
        gpus_per_node=gpus,
        container_image=get("MLASSETS_BATCH_CONTAINER_IMAGE", ""),
        identity_resource_id=settings.get("MLASSETS_BATCH_IDENTITY_RESOURCE_ID"),
        storage_account_url=get("MLASSETS_PIPES_STORAGE_ACCOUNT_URL", ""),
        storage_container=get("MLASSETS_PIPES_CONTAINER", "mlassets-batch"),
        storage_connection_string=env("MLASSETS_PIPES_STORAGE_CONNECTION_STRING"),
    )
