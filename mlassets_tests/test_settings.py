"""Every setting is checked where it is read: a bad one is one line that names the variable,
the value and what is accepted, and a non-zero exit; never a traceback from `mlassets`."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlassets import settings
from mlassets.settings import PROJECT_ROOT, SettingError

BIN = Path(sys.executable).parent

#: Settings that are free text (names, ids, keys, connection strings): nothing to check but
#: their presence, which azure mode requires (AZURE_REQUIRED).
FREE_TEXT = {
    "MLASSETS_STORAGE_CONNECTION_STRING",
    "MLASSETS_EVENTHUB_NAMESPACE",
    "MLASSETS_EVENTHUB_CONNECTION_STRING",
    "MLASSETS_SERVICEBUS_NAMESPACE",
    "MLASSETS_SERVICEBUS_CONNECTION_STRING",
    "MLASSETS_BATCH_ACCOUNT_KEY",
    "MLASSETS_BATCH_IDENTITY_RESOURCE_ID",
    "MLASSETS_PIPES_STORAGE_CONNECTION_STRING",
    "MLASSETS_ADF_SUBSCRIPTION_ID",
    "MLASSETS_ADF_RESOURCE_GROUP",
    "MLASSETS_ADF_FACTORY_NAME",
    "DAGSTER_HOME",
}

#: Everything azure mode needs except the Batch settings (and the event hub's name, which has
#: a default).
AZURE_WITHOUT_BATCH = {
    "MLASSETS_DEPLOYMENT": "azure",
    "MLASSETS_LAKE_URL": "abfs://lake@acct.dfs.core.windows.net/mlassets",
    "MLASSETS_EVENTHUB_NAMESPACE": "ns.servicebus.windows.net",
    "MLASSETS_LABELS_DB_URL": "mssql+pyodbc://@srv.database.windows.net/labels",
    "MLASSETS_SERVICEBUS_NAMESPACE": "ns.servicebus.windows.net",
    "MLASSETS_ADF_SUBSCRIPTION_ID": "00000000-0000-0000-0000-000000000000",
    "MLASSETS_ADF_RESOURCE_GROUP": "rg",
    "MLASSETS_ADF_FACTORY_NAME": "factory",
}
BATCH = {
    "MLASSETS_BATCH_ACCOUNT_URL": "https://acct.westeurope.batch.azure.com",
    "MLASSETS_BATCH_CONTAINER_IMAGE": "acr.azurecr.io/mlassets-training:1",
    "MLASSETS_PIPES_STORAGE_ACCOUNT_URL": "https://acct.blob.core.windows.net",
}


@pytest.fixture
def run(tmp_path):
    """Runs a command with a clean environment: no MLASSETS_* but a fresh data dir."""

    def run(*command: str, **env: str) -> subprocess.CompletedProcess:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("MLASSETS_")}
        clean |= {"MLASSETS_DATA_DIR": str(tmp_path / "data"), "DAGSTER_HOME": str(tmp_path)}
        return subprocess.run(
            command,
            cwd=PROJECT_ROOT,
            env=clean | env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    return run


def _one_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


BAD_SETTINGS = [
    (
        {"MLASSETS_EVENTHUB_PARTITIONS": "0"},
        "MLASSETS_EVENTHUB_PARTITIONS='0' is not valid: expected a whole number from 1 to 1024",
    ),
    (
        {"MLASSETS_EVENTHUB_PARTITIONS": "four"},
        "MLASSETS_EVENTHUB_PARTITIONS='four' is not valid: expected a whole number from 1 to 1024",
    ),
    (
        {"MLASSETS_TRAINING_WORKERS": "two"},
        "MLASSETS_TRAINING_WORKERS='two' is not valid: expected a whole number from 1 to 1024",
    ),
    (
        {"MLASSETS_SERVICEBUS_LOCK_SECONDS": "0"},
        "MLASSETS_SERVICEBUS_LOCK_SECONDS='0' is not valid: expected a number above 0",
    ),
    (
        {"MLASSETS_DATA_DIR": "/proc/mlassets/data"},
        "MLASSETS_DATA_DIR='/proc/mlassets/data' is not valid: No such file or directory; "
        "expected a folder this user can create and write",
    ),
    (
        {"MLASSETS_LAKE_URL": "s3://bucket/lake"},
        "MLASSETS_LAKE_URL='s3://bucket/lake' is not valid: expected a URL starting file://, "
        "abfs://, abfss://",
    ),
    (
        {"MLASSETS_DEPLOYMENT": "aws"},
        "MLASSETS_DEPLOYMENT='aws' is not valid: expected 'local' or 'azure'",
    ),
    (
        AZURE_WITHOUT_BATCH,
        "MLASSETS_DEPLOYMENT=azure needs these environment variables, which are not set: "
        "MLASSETS_BATCH_ACCOUNT_URL; MLASSETS_BATCH_CONTAINER_IMAGE; "
        "MLASSETS_PIPES_STORAGE_ACCOUNT_URL.",
    ),
]


@pytest.mark.parametrize(("env", "line"), BAD_SETTINGS, ids=lambda v: str(v)[:40])
def test_a_bad_setting_is_one_line_from_the_cli_naming_the_variable_and_value(run, env, line):
    shown = _one_line(run(f"{BIN}/mlassets", "hub", **env))
    assert shown.startswith(f"error: {line}")


@pytest.mark.parametrize(("env", "line"), BAD_SETTINGS[:1] + BAD_SETTINGS[-1:])
def test_a_bad_setting_fails_loading_the_code_location_with_that_line(run, env, line):
    result = run(sys.executable, "-c", "import mlassets.definitions", **env)
    assert result.returncode != 0
    assert f"SettingError: {line}" in result.stderr or f"MissingSettingError: {line}" in (
        result.stderr
    )


def test_dagster_shows_the_line_when_it_loads_the_code_location(run):
    result = run(
        f"{BIN}/dagster",
        "definitions",
        "validate",
        "-m",
        "mlassets.definitions",
        MLASSETS_EVENTHUB_PARTITIONS="0",
    )
    assert result.returncode != 0
    assert "MLASSETS_EVENTHUB_PARTITIONS='0' is not valid" in result.stdout + result.stderr


def test_azure_mode_counts_defaults_as_set_and_loads_with_every_required_setting(run):
    result = run(
        sys.executable, "-c", "import mlassets.definitions", **AZURE_WITHOUT_BATCH, **BATCH
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_a_partition_count_that_differs_from_the_existing_hubs_is_one_line(run, tmp_path):
    assert run(f"{BIN}/mlassets", "simulate", "events", "--count", "10").returncode == 0
    shown = _one_line(run(f"{BIN}/mlassets", "hub", MLASSETS_EVENTHUB_PARTITIONS="6"))
    hub = tmp_path / "data" / "eventhub" / "digits.db"
    assert shown == (
        f"error: MLASSETS_EVENTHUB_PARTITIONS='6' is not valid: the embedded hub {hub} was "
        "created with 4 partitions, and a hub's partition count cannot change; expected 4 (or "
        "a new MLASSETS_DATA_DIR)"
    )


def test_the_demo_checks_its_settings_before_it_publishes_anything(run, tmp_path):
    shown = _one_line(
        run(f"{BIN}/mlassets", "demo", "--events", "100", MLASSETS_LAKE_URL="s3://bucket/lake")
    )
    assert "MLASSETS_LAKE_URL='s3://bucket/lake' is not valid" in shown
    assert not (tmp_path / "data" / "eventhub").exists()  # nothing was published


@pytest.mark.parametrize(
    ("command", "option"),
    [
        (("simulate", "events", "--count", "-5"), "--count"),
        (("simulate", "events", "--malformed", "-1"), "--malformed"),
        (("demo", "--events", "0"), "--events"),
        (("adf", "run", "copy_landed_to_sql", "--timeout", "-1"), "--timeout"),
        (("queue", "--limit", "-3"), "--limit"),
    ],
)
def test_a_bad_option_blames_that_option_without_a_traceback(run, command, option):
    result = run(f"{BIN}/mlassets", *command)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"Error: Invalid value for '{option}'" in result.stderr
    # the message names only the option at fault
    others = {"--count", "--malformed", "--events", "--timeout", "--limit"} - {option}
    assert not any(f"'{other}'" in result.stderr for other in others)


def test_debug_shows_the_traceback_of_a_setting_error(run):
    result = run(f"{BIN}/mlassets", "--debug", "hub", MLASSETS_EVENTHUB_PARTITIONS="0")
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "SettingError" in result.stderr


# -- the readers themselves ------------------------------------------------------------------


def test_every_setting_with_a_form_has_a_reader_that_check_reads():
    names = {s.name for s in settings.SETTINGS}
    assert set(settings.READERS) <= names
    assert names - set(settings.READERS) == FREE_TEXT


def test_defaults_come_from_the_settings_list_and_are_typed(monkeypatch, data_dir):
    for s in settings.SETTINGS:
        monkeypatch.delenv(s.name, raising=False)
    monkeypatch.setenv("MLASSETS_DATA_DIR", str(data_dir))
    assert settings.eventhub_partitions() == 4
    assert settings.training_workers() == 2
    assert settings.servicebus_lock_seconds() == 60.0
    assert settings.min_test_accuracy() == 0.90
    assert settings.lake_url() == f"file://{data_dir / 'lake'}"
    assert settings.labels_db_url() == f"sqlite:///{data_dir / 'labels.db'}"
    settings.check("local")


@pytest.mark.parametrize(
    ("name", "value", "accepted"),
    [
        ("MLASSETS_MAX_QUARANTINE_RATIO", "1.5", "a number at least 0 and at most 1"),
        ("MLASSETS_MIN_TEST_ACCURACY", "nan", "a number at least 0 and at most 1"),
        ("MLASSETS_RETRAIN_PSI", "-0.1", "a number above 0"),
        ("MLASSETS_MAX_RANGE_EVENTS", "1e5", "a whole number of at least 1"),
        ("MLASSETS_ADF_TIMEOUT_SECONDS", "0", "a number above 0"),
        ("MLASSETS_SERVICEBUS_MAX_DELIVERY_COUNT", "0", "a whole number of at least 1"),
        ("MLASSETS_EVENTHUB_NAME", "a/b", "an event hub name"),
        ("MLASSETS_ADF_ARM_ENDPOINT", "management.azure.com", "a URL starting https://"),
    ],
)
def test_a_reader_names_the_variable_the_value_and_what_it_accepts(
    monkeypatch, name, value, accepted
):
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingError) as err:
        settings.READERS[name]()
    assert str(err.value).startswith(f"{name}={value!r} is not valid: expected {accepted}")


def test_a_secret_setting_is_never_shown_in_its_error(monkeypatch):
    monkeypatch.setenv("MLASSETS_LABELS_DB_URL", "postgresql://user:TOPSECRET@host/labels")
    with pytest.raises(SettingError) as err:
        settings.labels_db_url()
    assert str(err.value) == (
        "MLASSETS_LABELS_DB_URL (a secret) starts postgresql://: expected a URL starting "
        "sqlite://, mssql://, mssql+pyodbc://"
    )


def test_azure_mode_needs_an_abfs_lake(monkeypatch):
    monkeypatch.setenv("MLASSETS_LAKE_URL", "file:///tmp/lake")
    with pytest.raises(SettingError, match="expected a URL starting abfs://, abfss://"):
        settings.lake_url("azure")
    monkeypatch.setenv("MLASSETS_LAKE_URL", "abfs://@acct.dfs.core.windows.net/x")
    with pytest.raises(SettingError, match="abfs://<container>@<account>"):
        settings.lake_url("azure")
