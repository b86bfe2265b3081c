"""The Pipes client for Azure Batch: `PipesAzureBatchClient` runs a `HorovodTask` as a
multi-instance task on a GPU pool with the Dagster Pipes protocol.

It ensures the pool and the job, stages the task's SSH key pair in blob storage, submits the task
with the Pipes bootstrap in its environment, forwards the task's stdout/stderr to the run log
while it runs, terminates the job when the Dagster run is terminated, and raises
`PipesAzureBatchTaskError` (with job, task, exit code and the tail of stderr) when it fails.
"""

import contextlib
import re
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import azure.batch.models as bm
import dagster as dg
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from dagster_azure.pipes import PipesAzureBlobStorageMessageReader
from dagster_pipes import PipesExtras

from mlassets.roles.azure_batch.node_scripts import (
    SSH_KEY_DIR,
    BatchPoolSpec,
    HorovodTask,
    bash,
    coordination_script,
    job_preparation_script,
    job_release_script,
    main_script,
)
from mlassets.roles.training import TRAINING_ENV

_BATCH_ID_CHARS = re.compile(r"[^A-Za-z0-9_-]")
_ADMIN = bm.UserIdentity(
    auto_user=bm.AutoUserSpecification(
        scope=bm.AutoUserScope.POOL, elevation_level=bm.ElevationLevel.ADMIN
    )
)


class PipesAzureBatchError(RuntimeError):
    """Running the external program on Azure Batch failed (what Dagster's own Pipes clients
    call a Pipes execution error)."""


class PipesAzureBatchTaskError(PipesAzureBatchError):
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


class PipesAzureBatchPoolError(PipesAzureBatchError):
    """The pool cannot run a multi-instance Horovod task and cannot be fixed from here."""


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


class PipesAzureBatchClient(dg.PipesClient):
    """Pipes client for Azure Batch: a Horovod program as a multi-instance task on a GPU pool.

    Args:
        client (azure.batch.BatchClient): the Batch account's data-plane client.
        pool (BatchPoolSpec): the pool to run on, created as specified when missing.
        message_reader (PipesAzureBlobStorageMessageReader): reads the program's Pipes messages
            from blob storage; its container (and client) also hold the task's SSH key pair and
            receive the task's stdout/stderr and outputs.
        storage_account_url (str): the blob endpoint of that storage account as the nodes reach
            it (with the pool's managed identity), e.g. https://<account>.blob.core.windows.net.
        context_injector (dg.PipesContextInjector): defaults to the environment (the context goes
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
        context_injector: dg.PipesContextInjector | None = None,
        job_prefix: str = "mlassets",
        poll_interval_seconds: float = 10,
        forward_termination: bool = True,
        termination_timeout_seconds: float = 120,
        task_timeout: timedelta = timedelta(hours=4),
        queue_timeout: timedelta = timedelta(hours=2),
    ):
        if not isinstance(pool, BatchPoolSpec):
            raise TypeError(f"pool must be a BatchPoolSpec, not {type(pool).__name__}")
        if not isinstance(message_reader, PipesAzureBlobStorageMessageReader):
            raise TypeError(
                "message_reader must be a PipesAzureBlobStorageMessageReader (the nodes write "
                f"their Pipes messages to blob storage), not {type(message_reader).__name__}"
            )
        self.client = client
        self.pool = pool
        self.message_reader = message_reader
        self.storage_account_url = str(storage_account_url).rstrip("/")
        self.context_injector = context_injector or dg.PipesEnvContextInjector()
        self.job_prefix = batch_id(job_prefix, 16)
        self.poll_interval_seconds = float(poll_interval_seconds)
        self.forward_termination = bool(forward_termination)
        self.termination_timeout_seconds = termination_timeout_seconds
        self.task_timeout = task_timeout
        self.queue_timeout = queue_timeout

    @property
    def container(self) -> str:
        return self.message_reader.bucket

    @property
    def container_url(self) -> str:
        return f"{self.storage_account_url}/{self.container}"

    def _sleep(self, seconds: float) -> None:
        # Where a terminated run's dg.DagsterExecutionInterruptedError normally surfaces.
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
    ) -> dg.PipesClientCompletedInvocation:
        """Run `task` as a multi-instance task with the Pipes protocol and wait for it.

        The program calls `mlassets.training_program.pipes.open_pipes()` (rank 0 only), which
        finds the context and the blob message-writer parameters in its environment.
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
            with dg.open_pipes_session(
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
                    except dg.DagsterExecutionInterruptedError:
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
        except dg.DagsterExecutionInterruptedError:
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
        return dg.PipesClientCompletedInvocation(session, metadata=metadata)
