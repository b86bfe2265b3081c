"""The code location: cheap to load, complete, and one switch between local and Azure."""

import os
import subprocess
import sys

import pytest

from mlassets import settings
from mlassets.defs.resources import build_resources
from mlassets.roles.eventhub import AzureEventHub
from mlassets.settings import PROJECT_ROOT, MissingSettingError, SettingError
from mlassets.twins.eventhub import EmbeddedEventHub

PY = sys.executable
BIN = os.path.dirname(PY)


def run(cmd, env=None, **kwargs):
    return subprocess.run(
        cmd,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
        **kwargs,
    )


def test_loading_the_code_location_imports_neither_tensorflow_nor_horovod():
    probe = (
        "import sys, mlassets.definitions; "
        "heavy = [m for m in ('tensorflow', 'horovod', 'tf_keras', 'keras') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    result = run([PY, "-c", probe])
    assert result.returncode == 0, result.stderr[-2000:]


def test_loading_the_code_location_leaves_data_libraries_for_the_runs_that_use_them():
    # Every Dagster process loads the code location; only runs touch rows (see benchmarks/).
    probe = (
        "import sys, mlassets.definitions; "
        "loaded = [m for m in ('pyarrow', 'numpy', 'sqlalchemy', 'fsspec', 'deltalake') "
        "if m in sys.modules]; assert not loaded, loaded"
    )
    result = run([PY, "-c", probe])
    assert result.returncode == 0, result.stderr[-2000:]


def test_dagster_validates_the_definitions_from_pyproject_and_workspace(dagster_home, data_dir):
    result = run([f"{BIN}/dagster", "definitions", "validate"])
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    result = run([f"{BIN}/dagster", "definitions", "validate", "-w", "workspace.yaml"])
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def test_the_code_location_has_the_ingestion_graph():
    from mlassets.definitions import defs

    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"raw_events", "landed_events"} <= keys
    assert defs.resolve_job_def("ingest_events") is not None
    assert defs.resolve_sensor_def("eventhub_sensor") is not None


def test_local_is_the_default_deployment_and_lives_under_the_data_dir(data_dir):
    resources = build_resources()
    assert isinstance(resources["event_hub"], EmbeddedEventHub)
    assert resources["event_hub"].path.startswith(str(data_dir))
    assert resources["lake"].url == f"file://{data_dir}/lake"


def test_the_lake_url_can_point_anywhere(data_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("MLASSETS_LAKE_URL", f"file://{tmp_path}/elsewhere")
    assert build_resources()["lake"].url == f"file://{tmp_path}/elsewhere"


def test_azure_without_its_settings_fails_to_load_naming_each_missing_variable(monkeypatch):
    monkeypatch.setenv("MLASSETS_DEPLOYMENT", "azure")
    with pytest.raises(MissingSettingError) as err:
        build_resources()
    message = str(err.value)
    assert "MLASSETS_LAKE_URL" in message
    assert "MLASSETS_EVENTHUB_CONNECTION_STRING or MLASSETS_EVENTHUB_NAMESPACE" in message


def test_azure_names_only_what_is_still_missing(monkeypatch):
    monkeypatch.setenv("MLASSETS_DEPLOYMENT", "azure")
    monkeypatch.setenv("MLASSETS_LAKE_URL", "abfs://lake@acct.dfs.core.windows.net/x")
    monkeypatch.setenv("MLASSETS_EVENTHUB_NAME", "digits")
    with pytest.raises(MissingSettingError) as err:
        build_resources()
    assert "MLASSETS_LAKE_URL" not in str(err.value)
    assert "MLASSETS_EVENTHUB_NAMESPACE" in str(err.value)


def test_loading_the_code_location_in_azure_mode_reports_the_missing_variable():
    result = run([PY, "-c", "import mlassets.definitions"], env={"MLASSETS_DEPLOYMENT": "azure"})
    assert result.returncode != 0
    assert "MLASSETS_LAKE_URL" in result.stderr


def test_azure_secrets_are_env_vars_that_dagster_resolves_at_run_time(
    monkeypatch, all_azure_settings
):
    secret = "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKey=TOPSECRET"
    monkeypatch.setenv("MLASSETS_EVENTHUB_CONNECTION_STRING", secret)
    resources = build_resources()
    hub = resources["event_hub"]
    assert isinstance(hub, AzureEventHub)
    # What Dagster stores and shows for the resource is the variable's name, not its value.
    assert "TOPSECRET" not in repr(hub._get_non_default_public_field_values())
    assert "TOPSECRET" not in repr(hub)
    assert hub.process_config_and_initialize().connection_string == secret
    for name, resource in resources.items():
        assert "TOPSECRET" not in repr(resource), name


def test_an_unknown_deployment_is_refused(monkeypatch):
    monkeypatch.setenv("MLASSETS_DEPLOYMENT", "aws")
    with pytest.raises(
        SettingError, match="MLASSETS_DEPLOYMENT='aws' is not valid: expected 'local' or 'azure'"
    ):
        settings.deployment()


def test_the_readme_and_env_example_list_exactly_the_settings_the_code_reads():
    readme = (PROJECT_ROOT / "README.md").read_text()
    block = readme.split(settings.README_START)[1].split(settings.README_END)[0]
    assert block.strip() == settings.markdown_table(), "run: python -m mlassets.settings --write"
    assert (PROJECT_ROOT / ".env.example").read_text() == settings.env_example()
