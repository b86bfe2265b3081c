"""The shell the Batch nodes run, run by bash with a recording `docker`: what horovodrun gets."""

import json
import os
import shlex
import stat
import subprocess
import sys
from pathlib import Path

from mlassets.roles.azure_batch import BatchPoolSpec, HorovodTask, bash, main_script

IMAGE = "example.azurecr.io/mlassets-training:1"


def _recording_docker(tmp_path: Path) -> tuple[Path, Path]:
    bin_dir, log = tmp_path / "bin", tmp_path / "docker.jsonl"
    bin_dir.mkdir()
    docker = bin_dir / "docker"
    docker.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        f"with open({str(log)!r}, 'a') as f:\n"
        "    env = {k: os.environ.get(k) for k in ('DAGSTER_PIPES_CONTEXT', 'ZZ')}\n"
        "    f.write(json.dumps({'argv': sys.argv[1:], 'env': env}) + '\\n')\n"
    )
    docker.chmod(docker.stat().st_mode | stat.S_IEXEC)
    return bin_dir, log


def test_the_main_command_runs_horovodrun_across_the_batch_host_list(tmp_path):
    """The command line Batch runs on the primary node, run by bash: -H lists the master node
    first and every node with its GPU slots, the task's variables go into the container by
    name, and the program's arguments arrive intact."""
    pool = BatchPoolSpec(
        pool_id="gpu", vm_size="v", nodes=3, gpus_per_node=4, container_image=IMAGE
    )
    task = HorovodTask(
        module="mlassets.training_program.train", args=("--note", "it's a 'test'"), workers=12
    )
    command_line = bash(main_script(pool, task, ["DAGSTER_PIPES_CONTEXT", "ZZ"]))
    bin_dir, log = _recording_docker(tmp_path)
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "AZ_BATCH_HOST_LIST": "10.0.0.4,10.0.0.5,10.0.0.6",
        "AZ_BATCH_MASTER_NODE": "10.0.0.5:6000",
        "AZ_BATCH_JOB_ID": "mlassets-run1",
        "AZ_BATCH_TASK_ID": "train-1",
        "AZ_BATCH_TASK_SHARED_DIR": str(tmp_path / "shared"),
        "AZ_BATCH_TASK_WORKING_DIR": str(tmp_path / "wd"),
        "DAGSTER_PIPES_CONTEXT": "ctx",
    }
    done = subprocess.run(
        shlex.split(command_line), env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert "horovodrun -np 12 -H 10.0.0.5:4,10.0.0.4:4,10.0.0.6:4" in done.stdout
    [call] = [json.loads(line) for line in log.read_text().splitlines()]
    argv = call["argv"]
    assert argv[:2] == ["exec", "-e"]
    container = argv.index("mlassets-hvd-mlassets-run1-train-1")
    assert argv[container - 2 : container] == ["-w", str(tmp_path / "shared")]
    assert {"DAGSTER_PIPES_CONTEXT", "ZZ"} <= set(argv[1:container])
    assert f"MLASSETS_TRAINING_OUTPUTS_DIR={tmp_path / 'wd' / 'outputs'}" in argv
    assert argv[container + 1 :] == [
        "horovodrun", "--gloo", "-np", "12", "-H", "10.0.0.5:4,10.0.0.4:4,10.0.0.6:4",
        "--ssh-port", "2222", "--ssh-identity-file", "/root/.ssh/id_ed25519",
        "python", "-m", "mlassets.training_program.train", "--note", "it's a 'test'",
    ]  # fmt: skip
    assert call["env"]["DAGSTER_PIPES_CONTEXT"] == "ctx"
    assert (tmp_path / "wd" / "outputs").is_dir()
