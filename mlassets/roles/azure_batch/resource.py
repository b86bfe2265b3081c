"""The training-compute resource for Azure Batch: `AzureBatchHorovod` trains with Horovod
across the GPU nodes of a Batch pool through `PipesAzureBatchClient`, and
`azure_batch_horovod_from_settings` builds it from the MLASSETS_BATCH_* / MLASSETS_PIPES_*
settings (secrets as EnvVars, resolved at run time). The Dagster-facing half of the package:
configuration, clients and credentials; the Pipes client and the node scripts do the rest.
"""

import os
from datetime import timedelta
from typing import Any
from urllib.parse import urlparse

import dagster as dg
from dagster_azure.pipes import PipesAzureBlobStorageMessageReader
from pydantic import Field, PrivateAttr

from mlassets import settings
from mlassets.roles.azure_batch.node_scripts import BatchPoolSpec, HorovodTask
from mlassets.roles.azure_batch.pipes import PipesAzureBatchClient
from mlassets.roles.training import TrainingCompute, TrainingJob


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
    """The resource as MLASSETS_BATCH_* / MLASSETS_PIPES_* configure it (for defs/resources.py):
    secrets as EnvVars (resolved at run time, never shown), the rest as plain values."""

    def env(name: str) -> dg.EnvVar | None:
        return dg.EnvVar(name) if os.environ.get(name) else None

    def get(name: str) -> str:  # required in azure mode (settings.AZURE_REQUIRED)
        return settings.get(name) or ""

    nodes = settings.batch_nodes()
    gpus = settings.batch_gpus_per_node()
    return AzureBatchHorovod(
        workers=nodes * gpus,
        batch_account_url=get("MLASSETS_BATCH_ACCOUNT_URL"),
        batch_account_key=env("MLASSETS_BATCH_ACCOUNT_KEY"),
        pool_id=settings.batch_pool_id(),
        vm_size=settings.batch_vm_size(),
        nodes=nodes,
        gpus_per_node=gpus,
        container_image=get("MLASSETS_BATCH_CONTAINER_IMAGE"),
        identity_resource_id=settings.get("MLASSETS_BATCH_IDENTITY_RESOURCE_ID"),
        storage_account_url=get("MLASSETS_PIPES_STORAGE_ACCOUNT_URL"),
        storage_container=settings.pipes_container(),
        storage_connection_string=env("MLASSETS_PIPES_STORAGE_CONNECTION_STRING"),
    )
