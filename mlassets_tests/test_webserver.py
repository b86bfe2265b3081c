"""From the project root, the Dagster webserver (what `dagster dev` serves) loads the code
location and lists its assets, jobs and sensors; in a real browser (Debian's Chromium) the UI
shows them and launches a run."""

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import pytest

from mlassets.settings import PROJECT_ROOT
from mlassets_tests.processes import free_port, stop_group

BIN = os.path.dirname(sys.executable)
ASSETS = (
    "raw_events",
    "landed_events",
    "incoming_events",
    "cdc_deltas",
    "labels",
    "training_dataset",
    "digit_classifier",
    "approved_model",
    "inference_outputs",
)
SENSORS = (
    "eventhub_sensor",
    "labels_cdc_sensor",
    "servicebus_sensor",
    "retraining_sensor",
    "default_automation_condition_sensor",
)
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


def _graphql(port: int, query: str) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())["data"]


@pytest.fixture(scope="module")
def webserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """`dagster-webserver` started from the project root, as `dagster dev` serves it, on its
    own DAGSTER_HOME and data dir; yields its port once it serves the graph."""
    root = tmp_path_factory.mktemp("webserver")
    home, data = root / "dagster_home", root / "data"
    home.mkdir()
    data.mkdir()
    shutil.copy(PROJECT_ROOT / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLASSETS_")}
    env.update(DAGSTER_HOME=str(home), MLASSETS_DATA_DIR=str(data))
    port = free_port()
    proc = subprocess.Popen(
        [f"{BIN}/dagster-webserver", "-h", "127.0.0.1", "-p", str(port)],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if _graphql(port, QUERY)["assetNodes"]:
                    break
            except (OSError, KeyError, TypeError):
                pass
            assert proc.poll() is None, "the webserver exited"
            assert time.monotonic() < deadline, "the webserver did not serve the graph in 120s"
            time.sleep(1)
        yield port
    finally:
        stop_group(proc, grace=15)


@pytest.mark.slow
def test_the_webserver_shows_the_graph_from_the_project_root(webserver):
    data = _graphql(webserver, QUERY)
    assets = {"/".join(n["assetKey"]["path"]): n["groupName"] for n in data["assetNodes"]}
    assert set(assets) == set(ASSETS)
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
    assert {s["name"] for s in repo["sensors"]} == set(SENSORS)


CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
RUNS = "{ runsOrError { ... on Runs { results { runId status assetSelection { path } } } } }"


@pytest.fixture(scope="module")
def browser() -> Iterator:
    """Headless Chromium driven by its own ChromeDriver (both from Debian: `make setup-tests`)."""
    if not (CHROMIUM and CHROMEDRIVER):
        if os.environ.get("CI"):
            pytest.fail("chromium and chromedriver are missing: scripts/bootstrap.sh --tests")
        pytest.skip("chromium and chromedriver are not installed (scripts/bootstrap.sh --tests)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument("--window-size=1600,1200")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _open(browser, port: int, path: str, *expected: str) -> str:
    """Load a page and wait until the UI (a React app) has rendered every expected text."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"http://127.0.0.1:{port}{path}")
    body = browser.find_element(By.TAG_NAME, "body")
    try:
        WebDriverWait(browser, 60).until(lambda _: all(t in body.text for t in expected))
    except Exception:
        missing = [t for t in expected if t not in body.text]
        pytest.fail(f"{path} never showed {missing}; it shows:\n{body.text[:2000]}")
    for skip in browser.find_elements(By.XPATH, "//button[normalize-space()='Skip']"):
        skip.click()  # the first visit's "Join the Dagster community" dialog
    return body.text


@pytest.mark.slow
def test_the_catalog_lists_every_asset_with_its_description(webserver, browser):
    text = _open(browser, webserver, "/assets", *ASSETS)
    assert "A small CNN for 8x8 digits trained with Horovod" in text


@pytest.mark.slow
def test_the_lineage_page_shows_the_four_groups(webserver, browser):
    _open(browser, webserver, "/asset-groups", "ingestion", "labels", "training", "inference")


@pytest.mark.slow
def test_the_automation_page_lists_the_sensors(webserver, browser):
    _open(browser, webserver, "/automation", *SENSORS)


@pytest.mark.slow
def test_materialize_on_landed_events_queues_a_run_for_it(webserver, browser):
    from selenium.webdriver.common.by import By

    # The asset's own page: the ingestion group also holds incoming_events, one partition per
    # drop, whose Materialize asks which drop.
    _open(browser, webserver, "/assets/landed_events", "Materialize")
    deadline = time.monotonic() + 30
    while browser.find_elements(By.CSS_SELECTOR, ".bp5-overlay-backdrop"):
        for skip in browser.find_elements(By.XPATH, "//button[normalize-space()='Skip']"):
            skip.click()  # the community dialog can open after the page has rendered
        assert time.monotonic() < deadline, "a dialog stays open over the asset page"
        time.sleep(0.5)
    button = browser.find_element(
        By.XPATH, "//button[starts-with(normalize-space(), 'Materialize')]"
    )
    button.click()
    deadline = time.monotonic() + 60
    while True:
        runs = _graphql(webserver, RUNS)["runsOrError"]["results"]
        if runs and runs[0]["status"] != "NOT_STARTED":  # created, then submitted to the queue
            break
        assert time.monotonic() < deadline, "clicking Materialize launched no run"
        time.sleep(1)
    (run,) = runs
    assert run["status"] == "QUEUED"  # the run queue (dagster.yaml) holds it for the daemon
    assert [a["path"] for a in run["assetSelection"]] == [["landed_events"]]
    _open(browser, webserver, "/runs", run["runId"][:8], "Queued")
