"""What the nodes of an Azure Batch training pool run, and the shapes that decide it.

`BatchPoolSpec` (the GPU pool) and `HorovodTask` (the program and its ranks) describe the job;
the functions below turn them into the one-line shell scripts Batch runs on the nodes: the
coordination command that starts the training container with sshd on every node, the main
command that runs horovodrun inside the primary node's container, and the job preparation and
release tasks. Kept apart from the Pipes client so the shell can be read (and tested with bash)
on its own.
"""

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import azure.batch.models as bm

#: Where the training container's sshd listens on every node (host networking).
DEFAULT_SSH_PORT = 2222
#: Folder (under AZ_BATCH_TASK_SHARED_DIR) Batch downloads the task's SSH key pair to.
SSH_KEY_DIR = "mlassets-ssh"
#: Environment variable names that must never reach a Batch task: the task definition is
#: readable by anyone who can read the Batch account.
_SECRET_NAME = re.compile(r"KEY|SECRET|PASSWORD|TOKEN|CONNECTION_STRING|SAS|CREDENTIAL", re.I)


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
