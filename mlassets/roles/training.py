"""The training-compute role: where the Horovod program runs, behind one interface.

- `LocalHorovod`: `horovodrun -np N -H localhost:N --gloo` as a subprocess, through Dagster
  Pipes (PipesSubprocessClient): rank 0 streams logs and metadata over the Pipes channel.
- `AzureBatchHorovod` (mlassets.roles.azure_batch): a multi-instance task on an Azure
  Batch GPU pool, through our PipesAzureBatchClient; messages come back over Blob Storage.

Either way the asset calls `run(context, job)` and gets a PipesClientCompletedInvocation.
"""

from __future__ import annotations

import os
import shutil
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
from pydantic import Field

#: Environment every training process gets: Keras 2 (tf-keras), which Horovod 0.28 supports.
TRAINING_ENV = {"TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}


@dataclass(frozen=True)
class TrainingJob:
    """What to run: a Python module (the Horovod program), its arguments, extra environment
    (never secrets: those come from the compute's own identity or env) and Pipes extras."""

    module: str
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)


class TrainingCompute(dg.ConfigurableResource, ABC):
    """Runs a TrainingJob on N Horovod workers and returns what it reported through Pipes."""

    workers: int = Field(default=2, description="Horovod processes (ranks)")

    @abstractmethod
    def run(
        self, context: dg.AssetExecutionContext, job: TrainingJob
    ) -> dg.PipesClientCompletedInvocation: ...

    @property
    @abstractmethod
    def description(self) -> str:
        """Where it runs, for metadata and logs."""


class LocalHorovod(TrainingCompute):
    """Horovod with Gloo on this machine: N local worker processes."""

    threads_per_worker: int = Field(default=1, description="TensorFlow intra/inter-op threads")
    bind_to_cores: bool = Field(
        default=True,
        description="Pin each worker to its own cores (like `mpirun --bind-to core`) when "
        "workers x threads fit the machine's cores",
    )

    @property
    def description(self) -> str:
        return (
            f"local horovodrun --gloo, {self.workers} workers x {self.threads_per_worker} threads"
        )

    def command(self, job: TrainingJob) -> list[str]:
        horovodrun = (
            shutil.which("horovodrun", path=os.path.dirname(sys.executable)) or "horovodrun"
        )
        n = self.workers
        return [
            horovodrun,
            "-np",
            str(n),
            "-H",
            f"localhost:{n}",
            "--gloo",
            sys.executable,
            "-m",
            job.module,
            *job.args,
        ]

    def env(self, job: TrainingJob) -> dict[str, str]:
        """What the workers get on top of this process's environment."""
        threads = str(self.threads_per_worker)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0
        fits = self.workers * self.threads_per_worker <= cores  # Linux only: no affinity API
        return {
            **TRAINING_ENV,
            "OMP_NUM_THREADS": threads,
            "MLASSETS_TRAINING_THREADS": threads,
            "MLASSETS_BIND_CORES": "1" if self.bind_to_cores and fits else "0",
            **job.env,
        }

    def run(
        self, context: dg.AssetExecutionContext, job: TrainingJob
    ) -> dg.PipesClientCompletedInvocation:
        return dg.PipesSubprocessClient(env=self.env(job)).run(
            command=self.command(job), context=context, extras=job.extras
        )
