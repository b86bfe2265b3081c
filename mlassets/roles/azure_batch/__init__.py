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
- a non-zero exit raises `PipesAzureBatchTaskError` (a `PipesAzureBatchError`) with the job
  id, task id, exit code and the tail of stderr; a terminated Dagster run terminates the Batch
  job and re-raises the interruption.

Nothing secret ever goes into a task's environment or command line: storage is reached with
the pool's user-assigned managed identity (which must be able to read and write the container).

The package: `pipes` (the Pipes client and its errors), `resource` (the `AzureBatchHorovod`
training compute and its construction from settings) and `node_scripts` (the pool and task
shapes and the shell the nodes run).
"""

from mlassets.roles.azure_batch.node_scripts import (
    DEFAULT_SSH_PORT,
    SSH_KEY_DIR,
    BatchPoolSpec,
    HorovodTask,
    bash,
    coordination_script,
    host_list_script,
    job_preparation_script,
    job_release_script,
    main_script,
)
from mlassets.roles.azure_batch.pipes import (
    PipesAzureBatchClient,
    PipesAzureBatchError,
    PipesAzureBatchPoolError,
    PipesAzureBatchTaskError,
    batch_id,
)
from mlassets.roles.azure_batch.resource import (
    AzureBatchHorovod,
    azure_batch_horovod_from_settings,
)

__all__ = [
    "DEFAULT_SSH_PORT",
    "SSH_KEY_DIR",
    "AzureBatchHorovod",
    "BatchPoolSpec",
    "HorovodTask",
    "PipesAzureBatchClient",
    "PipesAzureBatchError",
    "PipesAzureBatchPoolError",
    "PipesAzureBatchTaskError",
    "azure_batch_horovod_from_settings",
    "bash",
    "batch_id",
    "coordination_script",
    "host_list_script",
    "job_preparation_script",
    "job_release_script",
    "main_script",
]
