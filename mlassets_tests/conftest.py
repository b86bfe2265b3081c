"""Shared fixtures: an isolated data dir and Dagster instance per test, and Azurite.

Every test that touches the embedded twins gets its own MLASSETS_DATA_DIR and DAGSTER_HOME,
so tests never see each other's events, lake files or runs.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from mlassets.settings import PROJECT_ROOT
from mlassets_tests.processes import free_port, stop_group

AZURITE_ACCOUNT = "devstoreaccount1"
# Azurite's published development key (not a secret: it is the same for every Azurite).
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


@pytest.fixture(autouse=True)
def _no_ambient_azure(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests choose their deployment explicitly; a developer's shell must not leak in."""
    for name in list(os.environ):
        if name.startswith("MLASSETS_"):
            monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def _no_instance_left_by_an_earlier_test() -> None:
    """Each test starts with no Dagster instance context left over.

    A DagsterInstance publishes its definitions-state storage in a context variable until it
    is disposed; an earlier test's instance that was never disposed (an `ephemeral()` not
    used as a context manager) would leave a dead weakref there, and the next
    `dg.materialize` would fail to load its definitions. Dagster has no public reset.
    """
    from dagster._core.storage.defs_state.base import _current_storage

    _current_storage.set(None)


@pytest.fixture
def daemon(dagster_home: Path, data_dir: Path) -> Iterator[subprocess.Popen]:
    """A real `dagster-daemon` on the project's workspace and this test's instance."""
    log = open(dagster_home / "daemon.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [f"{os.path.dirname(sys.executable)}/dagster-daemon", "run", "-w", "workspace.yaml"],
        cwd=PROJECT_ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    yield proc
    stop_group(proc, grace=15)
    log.close()


@pytest.fixture
def all_azure_settings(monkeypatch: pytest.MonkeyPatch):
    """MLASSETS_DEPLOYMENT=azure with every required variable set to a harmless placeholder
    (nothing is contacted); returns a function that unsets one, to test its absence."""
    from mlassets import settings

    monkeypatch.setenv("MLASSETS_DEPLOYMENT", "azure")
    for need in settings.AZURE_REQUIRED:
        name = need[0] if isinstance(need, tuple) else need
        monkeypatch.setenv(name, f"placeholder-{name.lower()}")
    monkeypatch.setenv("MLASSETS_LAKE_URL", "abfs://lake@acct.dfs.core.windows.net/x")
    monkeypatch.setenv("MLASSETS_LABELS_DB_URL", "mssql+pyodbc://@srv.database.windows.net/labels")
    return monkeypatch.delenv


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh MLASSETS_DATA_DIR (embedded hub, lake, databases) for one test."""
    path = tmp_path / "data"
    path.mkdir()
    monkeypatch.setenv("MLASSETS_DATA_DIR", str(path))
    return path


@pytest.fixture
def dagster_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A DAGSTER_HOME with the project's dagster.yaml, for one test."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT_ROOT / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


@pytest.fixture
def instance(dagster_home: Path) -> Iterator[dg.DagsterInstance]:
    with dg.DagsterInstance.get() as inst:
        yield inst


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Azurite blob service on a free port; yields its connection string."""
    binary = PROJECT_ROOT / "node_modules" / ".bin" / "azurite-blob"
    if not binary.exists():
        pytest.fail("Azurite is not installed: run `make test` (it runs `npm ci`)")
    port = free_port()
    workdir = tmp_path_factory.mktemp("azurite")
    log = open(workdir / "azurite.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            str(binary),
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            str(port),
            "--location",
            str(workdir),
            "--loose",
            "--skipApiVersionCheck",
            "--silent",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"Azurite exited: {(workdir / 'azurite.log').read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("Azurite did not open its port within 30s")
                time.sleep(0.2)
        yield (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};"
            f"AccountKey={AZURITE_KEY};BlobEndpoint=http://127.0.0.1:{port}/{AZURITE_ACCOUNT};"
        )
    finally:
        stop_group(proc)
        log.close()


@pytest.fixture
def azurite_container(azurite: str) -> str:
    """A fresh, empty container on Azurite for one test; yields its name."""
    from azure.storage.blob import BlobServiceClient

    name = f"t{uuid.uuid4().hex[:12]}"
    BlobServiceClient.from_connection_string(azurite).create_container(name)
    return name
