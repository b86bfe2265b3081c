"""From the project root, the Dagster webserver (what `dagster dev` serves) loads the code
location and lists its assets, jobs and sensors, as the UI shows them."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from mlassets.settings import PROJECT_ROOT

BIN = os.path.dirname(sys.executable)
QUERY = """
{
  assetNodes { assetKey { path } groupName }
  workspaceOrError {
    ... on Workspace {
      locationEntries {
        name
        locationOrLoadError {
          ... on RepositoryLocation {
            repositories { jobs { name } sensors { name } }
          }
          ... on PythonError { message }
        }
      }
    }
  }
}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _graphql(port: int) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": QUERY}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())["data"]


@pytest.mark.slow
def test_the_webserver_shows_the_graph_from_the_project_root(dagster_home, data_dir):
    port = _free_port()
    proc = subprocess.Popen(
        [f"{BIN}/dagster-webserver", "-h", "127.0.0.1", "-p", str(port)],
        cwd=PROJECT_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                data = _graphql(port)
                if data["assetNodes"]:
                    break
            except (OSError, KeyError, TypeError):
                pass
            assert proc.poll() is None, "the webserver exited"
            assert time.monotonic() < deadline, "the webserver did not serve the graph in 120s"
            time.sleep(1)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    assets = {"/".join(n["assetKey"]["path"]): n["groupName"] for n in data["assetNodes"]}
    assert set(assets) == {
        "raw_events",
        "landed_events",
        "cdc_deltas",
        "labels",
        "training_dataset",
        "digit_classifier",
        "inference_outputs",
    }
    (location,) = data["workspaceOrError"]["locationEntries"]
    assert location["name"] == "mlassets"
    (repo,) = location["locationOrLoadError"]["repositories"]
    jobs = {j["name"] for j in repo["jobs"]}
    assert {
        "ingest_events",
        "sync_labels",
        "train_model",
        "score_events",
        "import_incoming",
        "end_to_end",
    } <= jobs
    assert {s["name"] for s in repo["sensors"]} == {
        "eventhub_sensor",
        "labels_cdc_sensor",
        "servicebus_sensor",
        "retraining_sensor",
    }
