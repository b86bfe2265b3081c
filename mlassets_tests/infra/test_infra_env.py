"""`mlassets infra env`: stack outputs -> a .env that MLASSETS_DEPLOYMENT=azure loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner
from dotenv import dotenv_values

from mlassets.cli import main
from mlassets.lib.infra_env import STACK_OUTPUTS, InfraEnvError, env_values, render
from mlassets.settings import PROJECT_ROOT

OUTPUTS = {
    "MLASSETS_LAKE_URL": "abfs://lake@acmelake.dfs.core.windows.net/",
    "MLASSETS_EVENTHUB_NAMESPACE": "acme-eh.servicebus.windows.net",
    "MLASSETS_EVENTHUB_NAME": "digits",
    "MLASSETS_EVENTHUB_CONSUMER_GROUP": "landing",
    "MLASSETS_LABELS_DB_URL": "mssql+pyodbc://@acme-sql.database.windows.net:1433/labels"
    "?driver=ODBC+Driver+18+for+SQL+Server&Encrypt=yes",
    "MLASSETS_LABELS_CAPTURE_INSTANCE": "dbo_labels",
    "MLASSETS_SERVICEBUS_NAMESPACE": "acme-sb.servicebus.windows.net",
    "MLASSETS_SERVICEBUS_QUEUE": "mlassets-commands",
    "MLASSETS_BATCH_ACCOUNT_URL": "https://acmebatch.westeurope.batch.azure.com",
    "MLASSETS_BATCH_POOL_ID": "mlassets-gpu",
    "MLASSETS_BATCH_VM_SIZE": "Standard_NC4as_T4_v3",
    "MLASSETS_BATCH_NODES": "2",
    "MLASSETS_BATCH_GPUS_PER_NODE": "1",
    "MLASSETS_BATCH_CONTAINER_IMAGE": "acmeacr.azurecr.io/mlassets-training:latest",
    "MLASSETS_BATCH_IDENTITY_RESOURCE_ID": "/subscriptions/s/resourceGroups/rg/providers/"
    "Microsoft.ManagedIdentity/userAssignedIdentities/acme-pool",
    "MLASSETS_PIPES_STORAGE_ACCOUNT_URL": "https://acmelake.blob.core.windows.net",
    "MLASSETS_PIPES_CONTAINER": "mlassets-batch",
    "MLASSETS_ADF_SUBSCRIPTION_ID": "11111111-1111-1111-1111-111111111111",
    "MLASSETS_ADF_RESOURCE_GROUP": "acme-rg",
    "MLASSETS_ADF_FACTORY_NAME": "acme-adf",
    "MLASSETS_ADF_ARM_ENDPOINT": "https://management.azure.com",
    "registryLoginServer": "acmeacr.azurecr.io",
}


def test_every_stack_output_becomes_a_setting_with_the_azure_deployment():
    values = env_values(OUTPUTS)
    assert values["MLASSETS_DEPLOYMENT"] == "azure"
    assert list(values)[1:] == list(STACK_OUTPUTS)
    assert "registryLoginServer" not in values


def test_a_missing_output_is_named():
    outputs = {k: v for k, v in OUTPUTS.items() if k != "MLASSETS_SERVICEBUS_NAMESPACE"}
    with pytest.raises(InfraEnvError, match=r"stack output\(s\) MLASSETS_SERVICEBUS_NAMESPACE "):
        env_values(outputs)


def test_a_masked_secret_or_a_password_in_the_database_url_is_refused():
    with pytest.raises(InfraEnvError, match="MLASSETS_BATCH_POOL_ID is not a plain value"):
        env_values({**OUTPUTS, "MLASSETS_BATCH_POOL_ID": "[secret]"})
    url = "mssql+pyodbc://admin:hunter2@acme-sql.database.windows.net/labels"
    with pytest.raises(InfraEnvError, match="carries a password"):
        env_values({**OUTPUTS, "MLASSETS_LABELS_DB_URL": url})


def test_the_env_reads_the_same_in_dotenv_and_in_a_shell(tmp_path):
    values = env_values({**OUTPUTS, "MLASSETS_EVENTHUB_CONSUMER_GROUP": "$Default"})
    path = tmp_path / ".env"
    path.write_text(render(values, "test"))
    assert dotenv_values(path) == values
    shell = subprocess.run(
        ["sh", "-c", f"set -a; . {path}; set +a; env"], capture_output=True, text=True, check=True
    )
    exported = dict(line.split("=", 1) for line in shell.stdout.splitlines() if "=" in line)
    assert {k: exported[k] for k in values} == values


def test_infra_env_from_a_file_writes_the_env(tmp_path):
    source = tmp_path / "outputs.json"
    source.write_text(json.dumps(OUTPUTS))
    target = tmp_path / ".env"
    result = CliRunner().invoke(
        main, ["infra", "env", "--from", str(source), "--output", str(target)]
    )
    assert result.exit_code == 0, result.output
    assert f"wrote {len(STACK_OUTPUTS) + 1} settings" in result.output
    assert dotenv_values(target)["MLASSETS_ADF_FACTORY_NAME"] == "acme-adf"


def test_the_env_file_format_is_unquoted_for_kubectl_and_docker(tmp_path):
    source = tmp_path / "outputs.json"
    source.write_text(json.dumps(OUTPUTS))
    target = tmp_path / "mlassets.env"
    args = ["infra", "env", "--from", str(source), "--output", str(target), "--format", "env-file"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    lines = [line for line in target.read_text().splitlines() if not line.startswith("#")]
    assert dict(line.split("=", 1) for line in lines) == env_values(OUTPUTS)


def _run_cli(*args: str, cwd, path_first: str = "") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLASSETS_")}
    env["PATH"] = os.pathsep.join(
        p for p in (path_first, os.path.dirname(sys.executable), "/usr/bin:/bin") if p
    )
    return subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "mlassets"), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from", "outputs.json"], "error: stack output(s) MLASSETS_BATCH_ACCOUNT_URL missing"),
        (["--from", "nope.json"], "error: cannot read nope.json"),
        (["--stack", "dev", "--from", "outputs.json"], "error: give --stack NAME or --from FILE"),
        ([], "error: the Pulumi CLI is not installed"),
        (["--stack", "dev"], "error: the Pulumi CLI is not installed"),
    ],
)
def test_infra_env_refuses_in_one_line_without_a_traceback(tmp_path, args, message):
    outputs = {k: v for k, v in OUTPUTS.items() if k != "MLASSETS_BATCH_ACCOUNT_URL"}
    (tmp_path / "outputs.json").write_text(json.dumps(outputs))
    done = _run_cli("infra", "env", *args, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith(message), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / ".env").exists()


def test_infra_env_reads_the_stack_through_the_pulumi_cli(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / "outputs.json").write_text(json.dumps(OUTPUTS))
    fake = bin_dir / "pulumi"  # stands in for the CLI: records its arguments, prints outputs
    fake.write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/args\ncat {tmp_path}/outputs.json\n')
    fake.chmod(0o755)
    done = _run_cli("infra", "env", "--stack", "prod", cwd=tmp_path, path_first=str(bin_dir))
    assert done.returncode == 0, done.stderr
    assert "from stack prod" in done.stdout
    args = (tmp_path / "args").read_text().split()
    assert args[:5] == ["stack", "output", "--json", "--stack", "prod"]
    assert args[5:] == ["--cwd", str(PROJECT_ROOT / "infra")]
    assert dotenv_values(tmp_path / ".env")["MLASSETS_EVENTHUB_NAME"] == "digits"


def _validate(cwd) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLASSETS_")}
    env.update(MLASSETS_DEPLOYMENT="azure", DAGSTER_HOME=str(cwd / "dagster_home"))
    (cwd / "dagster_home").mkdir(exist_ok=True)
    dagster = os.path.join(os.path.dirname(sys.executable), "dagster")
    return subprocess.run(
        [dagster, "definitions", "validate", "-m", "mlassets.definitions"],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        check=False,
        timeout=300,
    )


def test_dagster_validates_the_azure_definitions_with_the_written_env(tmp_path):
    (tmp_path / "outputs.json").write_text(json.dumps(OUTPUTS))
    without = _validate(tmp_path)
    assert without.returncode != 0  # the Azure deployment cannot load without its settings
    assert "MLASSETS_LAKE_URL" in without.stdout + without.stderr
    done = _run_cli("infra", "env", "--from", "outputs.json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    validated = _validate(tmp_path)
    assert validated.returncode == 0, validated.stdout + validated.stderr
    assert "All code locations passed validation" in validated.stdout + validated.stderr
