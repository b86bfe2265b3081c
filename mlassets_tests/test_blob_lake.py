"""The local twins with a Blob lake: `mlassets demo` on an abfs:// lake (Azurite) runs the whole
graph with the storage connection string, and a credential that cannot work fails in seconds
with one line naming what was tried, never the secret."""

import os
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pyarrow.compute as pc
import pytest
import sqlalchemy as sa

from mlassets.defs.resources import build_resources
from mlassets.lib import scoring
from mlassets.lib.layout import (
    DATASET_PREFIX,
    LABELS_PATH,
    LANDED_PREFIX,
    MODEL_PREFIX,
)
from mlassets.roles.lake_access import LakeAccessError
from mlassets.roles.storage import LakeStorage
from mlassets.settings import PROJECT_ROOT
from mlassets_tests.conftest import AZURITE_ACCOUNT, AZURITE_KEY

BIN = os.path.dirname(sys.executable)
WRONG_KEY = "d3Jvbmcta2V5LW5vdC10aGUtYWNjb3VudHM="  # base64, so only the service can refuse it


def blob_url(container: str, prefix: str = "mlassets") -> str:
    return f"abfs://{container}@{AZURITE_ACCOUNT}.dfs.core.windows.net/{prefix}"


def connection_string(endpoint: str, key: str = AZURITE_KEY) -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={key};"
        f"BlobEndpoint={endpoint};"
    )


def endpoint_of(azurite: str) -> str:
    return azurite.split("BlobEndpoint=", 1)[1].rstrip(";")


def cli_env(root: Path, **settings: str) -> dict[str, str]:
    """The environment of an `mlassets` subprocess: this one without MLASSETS_ or AZURE_
    variables, a scratch data dir and Dagster home, then `settings`."""
    home = root / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text((PROJECT_ROOT / "dagster_home" / "dagster.yaml").read_text())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLASSETS_", "AZURE_"))}
    return {**env, "MLASSETS_DATA_DIR": str(root / "data"), "DAGSTER_HOME": str(home), **settings}


# -- the local deployment reads the connection string of a Blob lake --------------------------


def test_a_local_deployment_with_an_abfs_lake_takes_the_connection_string_as_an_env_var(
    monkeypatch, tmp_path
):
    monkeypatch.setenv("MLASSETS_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("MLASSETS_LAKE_URL", blob_url("lake"))
    monkeypatch.setenv("MLASSETS_STORAGE_CONNECTION_STRING", connection_string("http://h:1/a"))
    resources = build_resources("local")
    wanted = dg.EnvVar("MLASSETS_STORAGE_CONNECTION_STRING")
    assert resources["lake"].connection_string == wanted
    assert resources["data_factory"].lake_connection_string == wanted  # the ADF twin's lake


def test_a_local_folder_lake_ignores_a_storage_connection_string(monkeypatch, tmp_path):
    monkeypatch.setenv("MLASSETS_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("MLASSETS_STORAGE_CONNECTION_STRING", connection_string("http://h:1/a"))
    resources = build_resources("local")
    assert resources["lake"].connection_string is None
    assert resources["data_factory"].lake_connection_string is None


# -- a credential that cannot work fails in seconds, in one line ---------------------------------


def refused(lake: LakeStorage, within: float = 15.0) -> str:
    started = time.monotonic()
    with pytest.raises(LakeAccessError) as raised:
        lake.check_access()
    assert time.monotonic() - started < within
    message = str(raised.value)
    assert "\n" not in message and AZURITE_KEY not in message and WRONG_KEY not in message
    return message


@pytest.mark.azurite
def test_a_wrong_account_key_is_refused_by_the_service_in_one_line(azurite, azurite_container):
    lake = LakeStorage(
        url=blob_url(azurite_container),
        connection_string=connection_string(endpoint_of(azurite), WRONG_KEY),
    )
    message = refused(lake, within=5)
    assert message.startswith(f"lake {blob_url(azurite_container)}: connection string from ")
    assert "MLASSETS_STORAGE_CONNECTION_STRING refused: Authorization" in message


@pytest.mark.azurite
def test_a_missing_container_is_named(azurite):
    lake = LakeStorage(url=blob_url("nosuchcontainer"), connection_string=azurite)
    assert "container 'nosuchcontainer' not found" in refused(lake, within=5)


@pytest.mark.azurite
def test_a_working_connection_string_passes_the_probe(azurite, azurite_container):
    LakeStorage(url=blob_url(azurite_container), connection_string=azurite).check_access()


def test_an_unreachable_endpoint_is_named_within_seconds():
    from mlassets_tests.processes import free_port

    endpoint = f"http://127.0.0.1:{free_port()}/{AZURITE_ACCOUNT}"
    lake = LakeStorage(url=blob_url("lake"), connection_string=connection_string(endpoint))
    assert f"endpoint {endpoint} unreachable" in refused(lake)


def test_a_malformed_connection_string_says_what_it_lacks_without_echoing_it():
    lake = LakeStorage(url=blob_url("lake"), connection_string="Endpoint=sb://x;SharedKey=hunter2")
    message = refused(lake, within=2)
    assert "not a storage connection string" in message and "AccountKey" in message
    assert "hunter2" not in message


def test_with_no_connection_string_it_names_the_credentials_default_azure_credential_tried(
    monkeypatch,
):
    for name in list(os.environ):
        if name.startswith("AZURE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PATH", "/nonexistent")  # no az, azd or pwsh to ask
    message = refused(LakeStorage(url=blob_url("lake")))
    assert "no credential: tried MLASSETS_STORAGE_CONNECTION_STRING (unset), " in message
    assert "DefaultAzureCredential (EnvironmentCredential, " in message
    assert "AzureCliCredential" in message and message.endswith("none available)")


@pytest.mark.azurite
def test_a_run_with_a_refused_credential_stops_at_resource_setup_in_seconds(
    azurite, azurite_container, instance
):
    @dg.asset
    def touches_the_lake(lake: LakeStorage) -> None:
        lake.glob("*")

    lake = LakeStorage(
        url=blob_url(azurite_container),
        connection_string=connection_string(endpoint_of(azurite), WRONG_KEY),
    )
    started = time.monotonic()
    result = dg.materialize(
        [touches_the_lake], resources={"lake": lake}, instance=instance, raise_on_error=False
    )
    assert time.monotonic() - started < 15
    assert not result.success
    assert any("refused: Authorization" in str(e.event_specific_data) for e in result.all_events)


@pytest.mark.azurite
def test_the_demo_with_a_refused_key_exits_with_one_line_and_no_traceback(
    azurite, azurite_container, tmp_path
):
    env = cli_env(
        tmp_path,
        MLASSETS_LAKE_URL=blob_url(azurite_container),
        MLASSETS_STORAGE_CONNECTION_STRING=connection_string(endpoint_of(azurite), WRONG_KEY),
    )
    started = time.monotonic()
    result = subprocess.run(
        [f"{BIN}/mlassets", "demo", "--events", "100"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert time.monotonic() - started < 30  # the CLI's own start-up is most of it
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""  # nothing published before the lake answered
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: lake {blob_url(azurite_container)}: connection string")
    assert "Traceback" not in result.stderr and WRONG_KEY not in result.stderr


def test_the_demo_with_no_credential_at_all_exits_with_one_line(tmp_path):
    env = cli_env(tmp_path, MLASSETS_LAKE_URL=blob_url("lake"), PATH="/nonexistent")
    result = subprocess.run(
        [f"{BIN}/mlassets", "demo", "--events", "100"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stderr.splitlines()
    assert "no credential: tried MLASSETS_STORAGE_CONNECTION_STRING (unset)" in line


# -- the whole demo on Azurite ------------------------------------------------------------------


@pytest.fixture(scope="module")
def blob_demo(azurite, tmp_path_factory):
    from azure.storage.blob import BlobServiceClient

    container = "demolake"
    BlobServiceClient.from_connection_string(azurite).create_container(container)
    root = tmp_path_factory.mktemp("blob_demo")
    env = cli_env(
        root,
        MLASSETS_LAKE_URL=blob_url(container),
        MLASSETS_STORAGE_CONNECTION_STRING=azurite,
    )
    started = time.monotonic()
    result = subprocess.run(
        [f"{BIN}/mlassets", "demo", "--events", "2500", "--malformed", "10", "--seed", "3"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    seconds = time.monotonic() - started
    print(f"demo on Azurite: {seconds:.0f}s")
    lake = LakeStorage(url=blob_url(container), connection_string=azurite)
    return result, root, lake


@pytest.mark.azurite
@pytest.mark.slow
def test_the_demo_runs_the_whole_graph_on_a_blob_lake(blob_demo):
    result, _, _ = blob_demo
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "mlassets demo succeeded" in result.stdout
    assert "rows landed         2,490 (10 quarantined)" in result.stdout
    assert "checks              8 of 8 passed" in result.stdout


@pytest.mark.azurite
@pytest.mark.slow
def test_everything_the_demo_wrote_to_the_lake_is_on_blob_not_in_the_data_dir(blob_demo):
    _, root, lake = blob_demo
    assert not (root / "data" / "lake").exists()
    landed = lake.read_parquet(lake.glob(f"{LANDED_PREFIX}/partition=*/*.parquet"))
    assert landed.num_rows == 2490
    assert lake.delta_table(LABELS_PATH) is not None  # labels synced as Delta on Blob
    assert lake.glob(f"{DATASET_PREFIX}/v=*/manifest.json")  # the dataset's version
    assert lake.glob(f"{DATASET_PREFIX}/segments/*/split=train/part-*.parquet")  # its rows
    assert lake.glob(f"{MODEL_PREFIX}/*/model.keras")  # the model the Horovod workers wrote
    assert scoring.prediction_files(lake)  # scoring's output


@pytest.mark.azurite
@pytest.mark.slow
def test_every_unlabeled_sample_on_the_blob_lake_has_its_prediction_in_sql(blob_demo):
    _, root, lake = blob_demo
    landed = lake.read_parquet(
        lake.glob(f"{LANDED_PREFIX}/partition=*/*.parquet"), columns=["sample_id"]
    )
    scored = lake.read_parquet(scoring.prediction_files(lake), columns=["sample_id"])
    engine = sa.create_engine(f"sqlite:///{root / 'data' / 'labels.db'}")
    with engine.connect() as conn:
        labeled = {r[0] for r in conn.execute(sa.text("SELECT sample_id FROM labels"))}
        predictions = conn.execute(
            sa.text("SELECT sample_id, predicted_class, probability FROM predictions")
        ).all()
    engine.dispose()
    unlabeled = set(pc.unique(landed["sample_id"]).to_pylist()) - labeled
    assert unlabeled
    assert {p.sample_id for p in predictions} == unlabeled == set(scored["sample_id"].to_pylist())
    assert len(predictions) == len(unlabeled)
    assert all(0 <= p.predicted_class <= 9 and 0.0 < p.probability <= 1.0 for p in predictions)


@pytest.mark.azurite
@pytest.mark.slow
def test_the_connection_string_appears_in_no_output_log_or_run_record(blob_demo, azurite):
    result, root, _ = blob_demo
    key = AZURITE_KEY
    assert key not in result.stdout + result.stderr
    for path in root.rglob("*"):
        if path.is_file() and path.stat().st_size < 50_000_000:
            assert key.encode() not in path.read_bytes(), path
