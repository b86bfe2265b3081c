"""deploy/ and docker/: the production instance passes Dagster's own config schema, the Helm
values say the same, and the images' pins are those the tests install."""

from __future__ import annotations

import re
import shutil
import tomllib

import pytest
import yaml

from mlassets.settings import PROJECT_ROOT

DEPLOY = PROJECT_ROOT / "deploy"
DOCKER = PROJECT_ROOT / "docker"
DOCKERFILES = ("training.Dockerfile", "code-location.Dockerfile")
INSTANCE_ENV = {
    "DAGSTER_PG_USERNAME": "mlassets-prod-dagster",
    "DAGSTER_PG_HOST": "mlassets-prod-pg.postgres.database.azure.com",
    "DAGSTER_PG_DB": "dagster",
    "MLASSETS_COMPUTE_LOGS_ACCOUNT": "mlassetsprodlake",
    "MLASSETS_COMPUTE_LOGS_CONTAINER": "dagster-compute-logs",
}


def _load(path):
    return yaml.safe_load(path.read_text())


# -- the production instance -------------------------------------------------------------------


@pytest.fixture
def instance_config(tmp_path, monkeypatch):
    """deploy/dagster.yaml as Dagster validates it when an instance starts."""
    from dagster._core.instance.config import dagster_instance_config  # internal: tests only

    for name, value in INSTANCE_ENV.items():
        monkeypatch.setenv(name, value)
    shutil.copy(DEPLOY / "dagster.yaml", tmp_path / "dagster.yaml")
    config, custom_class = dagster_instance_config(str(tmp_path))
    assert custom_class is None
    return config


def _process(config_type, value):
    from dagster._config import process_config
    from dagster._config.field_utils import convert_potential_field

    result = process_config(convert_potential_field(config_type).config_type, value)
    assert result.success, [e.message for e in result.errors]
    return result.value


def test_the_instance_config_passes_dagsters_schema(instance_config):
    assert set(instance_config["storage"]) == {"postgres"}
    assert instance_config["compute_logs"]["class"] == "AzureBlobComputeLogManager"


def test_postgres_storage_signs_in_with_entra_tokens_and_no_password(instance_config):
    storage = pytest.importorskip("dagster_postgres").DagsterPostgresStorage
    postgres = _process(storage.config_type(), instance_config["storage"]["postgres"])
    assert postgres["postgres_db"]["password"] == ""
    assert postgres["postgres_db"]["hostname"] == INSTANCE_ENV["DAGSTER_PG_HOST"]
    assert postgres["postgres_db"]["params"] == {"sslmode": "require"}
    assert "azure_wif" in postgres["auth_provider"]


def test_compute_logs_go_to_blob_with_default_azure_credential(instance_config):
    from dagster_azure.blob.compute_log_manager import AzureBlobComputeLogManager

    logs = _process(
        AzureBlobComputeLogManager.config_type(), instance_config["compute_logs"]["config"]
    )
    assert logs["storage_account"] == INSTANCE_ENV["MLASSETS_COMPUTE_LOGS_ACCOUNT"]
    assert logs["container"] == INSTANCE_ENV["MLASSETS_COMPUTE_LOGS_CONTAINER"]
    assert logs["default_azure_credential"] == {"exclude_shared_token_cache_credential": True}
    assert not logs.get("access_key_or_sas_token") and not logs.get("secret_credential")
    manager = AzureBlobComputeLogManager(**logs)  # builds its clients; nothing is sent yet
    assert manager._container_client.container_name == "dagster-compute-logs"


def test_a_misspelled_key_fails_the_same_schema():
    from dagster._config import process_config
    from dagster._config.field_utils import convert_potential_field
    from dagster_azure.blob.compute_log_manager import AzureBlobComputeLogManager

    config = {"storage_acount": "x", "container": "c"}
    schema = convert_potential_field(AzureBlobComputeLogManager.config_type()).config_type
    assert not process_config(schema, config).success


def test_production_has_the_local_instances_pools_run_queue_and_sensors():
    local = _load(PROJECT_ROOT / "dagster_home" / "dagster.yaml")
    production = _load(DEPLOY / "dagster.yaml")
    for key in ("concurrency", "run_queue", "run_coordinator", "sensors"):
        assert production.get(key) == local.get(key), key
    assert production["concurrency"]  # the pools and the run limit are really there


def test_no_secret_is_written_into_the_instance_config():
    text = (DEPLOY / "dagster.yaml").read_text().lower()
    assert not re.search(
        r"^\s*(password|secret_key|access_key_or_sas_token|client_secret):", text, re.M
    )


# -- the Helm values -------------------------------------------------------------------------


def test_helm_values_run_the_code_location_with_k8s_runs_and_workload_identity():
    values = _load(DEPLOY / "helm" / "values.yaml")
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    assert deployment["dagsterApiGrpcArgs"] == ["-m", "mlassets.definitions"]
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["global"]["postgresqlAuthWifEnabled"] is True
    assert values["postgresql"]["enabled"] is False
    assert values["postgresql"]["authProvider"]["type"] == "azure_wif"
    assert values["generatePostgresqlPasswordSecret"] is False
    account = values["serviceAccount"]
    assert account["name"] == values["global"]["serviceAccountName"] == "mlassets-dagster"
    assert "azure.workload.identity/client-id" in account["annotations"]
    for pod in (
        values["dagsterWebserver"],
        values["dagsterDaemon"],
        deployment,
        values["runLauncher"]["config"]["k8sRunLauncher"],
    ):
        assert pod["labels"]["azure.workload.identity/use"] == "true"
        assert {"name": "mlassets-settings"} in pod["envConfigMaps"]


def test_helm_values_mirror_the_instance_config_and_the_stack():
    from mlassets_infra import config

    from mlassets_tests.infra.conftest import run_program  # noqa: F401 - puts infra/ on sys.path

    values = _load(DEPLOY / "helm" / "values.yaml")
    production = _load(DEPLOY / "dagster.yaml")
    pools, runs = production["concurrency"]["pools"], production["concurrency"]["runs"]
    assert values["concurrency"]["pools"] == {
        "defaultLimit": pools["default_limit"],
        "granularity": pools["granularity"],
    }
    assert values["concurrency"]["runs"] == {"maxConcurrentRuns": runs["max_concurrent_runs"]}
    daemon = values["dagsterDaemon"]
    assert daemon["sensors"] == {
        "useThreads": production["sensors"]["use_threads"],
        "numWorkers": production["sensors"]["num_workers"],
    }
    logs = values["computeLogManager"]["config"]["azureBlobComputeLogManager"]
    defaults = config.parse({}, "prod")
    assert logs["container"] == defaults.compute_logs_container
    instance_logs = production["compute_logs"]["config"]
    assert logs["prefix"] == instance_logs["prefix"]
    assert logs["defaultAzureCredential"] == instance_logs["default_azure_credential"]
    assert logs["uploadInterval"] == instance_logs["upload_interval"]
    assert values["serviceAccount"]["name"] == defaults.kubernetes_service_account


# -- the images ------------------------------------------------------------------------------


def _pins() -> dict[str, str]:
    """name -> exact version from constraints.txt and pyproject.toml (which must agree)."""
    pins: dict[str, str] = {}
    constraints = (PROJECT_ROOT / "constraints.txt").read_text().splitlines()
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    for line in [*constraints, *project["dependencies"]]:
        match = re.match(r"^\s*([A-Za-z0-9_.-]+)==([^\s;#]+)", line)
        if match:
            name, version = match.group(1).lower(), match.group(2)
            assert pins.setdefault(name, version) == version, f"{name}: two pins"
    return pins


def _args(dockerfile: str) -> dict[str, str]:
    text = (DOCKER / dockerfile).read_text()
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.M))


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_the_images_pin_tensorflow_tf_keras_and_horovod_as_the_tests_install_them(dockerfile):
    pins, args = _pins(), _args(dockerfile)
    assert args["TENSORFLOW_VERSION"] == pins["tensorflow"] == "2.17.1"
    assert args["TF_KERAS_VERSION"] == pins["tf-keras"]
    assert args["HOROVOD_VERSION"] == pins["horovod"] == "0.28.1"


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_every_pip_install_in_the_images_is_held_by_constraints_txt(dockerfile):
    text = (DOCKER / dockerfile).read_text().replace("\\\n", " ")
    assert re.search(r"^COPY constraints\.txt ", text, re.M)
    installs = re.findall(r"pip (?:install|wheel) [^&\n]*", text)
    assert installs
    for command in installs:
        if "-U pip" in command:  # the build tools themselves
            continue
        assert "-c constraints.txt" in command or "--no-deps" in command, command
    for version in re.findall(r"==\$\{(\w+)\}", text):
        assert version in _args(dockerfile), version


def test_the_training_image_has_nccl_gloo_and_an_ssh_server():
    text = (DOCKER / "training.Dockerfile").read_text()
    assert "HOROVOD_GPU_OPERATIONS=NCCL" in text
    assert "HOROVOD_WITH_GLOO=1" in text
    assert "openssh-server" in text
    assert "tensorflow[and-cuda]==${TENSORFLOW_VERSION}" in text


def test_the_code_location_image_serves_the_definitions_with_the_deploy_extras():
    text = (DOCKER / "code-location.Dockerfile").read_text()
    assert '"dagster", "api", "grpc", "-m", "mlassets.definitions"' in text
    assert '-e ".[deploy]"' in text
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    # The libraries' release line is the one dagster-azure is pinned to (0.29.x with 1.13.x).
    azure = next(d for d in project["dependencies"] if d.startswith("dagster-azure=="))
    line = azure.split("==", 1)[1]
    deploy = project["optional-dependencies"]["deploy"]
    assert deploy and all(d.endswith(f"=={line}") for d in deploy)
