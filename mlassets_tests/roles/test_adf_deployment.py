"""The data_factory resource per deployment: the local engine, or a factory by EnvVars."""

from mlassets import settings
from mlassets.defs.resources import build_resources
from mlassets.roles.datafactory import AzureDataFactory
from mlassets.twins.adf.factory import LocalDataFactory


def test_local_is_the_embedded_engine_on_the_lake_and_labels_database(data_dir):
    adf = build_resources()["data_factory"]
    assert isinstance(adf, LocalDataFactory)
    assert adf.lake_url == f"file://{data_dir}/lake"
    assert adf.sql_url == f"sqlite:///{data_dir}/labels.db"
    assert adf.runs_dir == str(data_dir / "adf" / "runs")
    assert adf.default_timeout_seconds == 3600


def test_azure_needs_the_factory_and_reads_it_from_env_vars(monkeypatch):
    monkeypatch.setenv("MLASSETS_DEPLOYMENT", "azure")
    for need in settings.AZURE_REQUIRED:
        name = need[0] if isinstance(need, tuple) else need
        monkeypatch.setenv(name, f"placeholder-{name.lower()}")
    monkeypatch.setenv("MLASSETS_LAKE_URL", "abfs://lake@acct.dfs.core.windows.net/x")
    secret = "mssql+pyodbc://u:TOPSECRET@srv.database.windows.net/labels"
    monkeypatch.setenv("MLASSETS_LABELS_DB_URL", secret)
    monkeypatch.setenv("MLASSETS_ADF_TIMEOUT_SECONDS", "120")
    adf = build_resources()["data_factory"]
    assert isinstance(adf, AzureDataFactory)
    assert "TOPSECRET" not in repr(adf) and "TOPSECRET" not in repr(
        adf._get_non_default_public_field_values()
    )
    resolved = adf.process_config_and_initialize()
    assert resolved.factory_name == "placeholder-mlassets_adf_factory_name"
    assert resolved.sql_url == secret and resolved.default_timeout_seconds == 120
    assert resolved.arm_endpoint == "https://management.azure.com"
    monkeypatch.delenv("MLASSETS_ADF_FACTORY_NAME")
    try:
        build_resources()
    except settings.MissingSettingError as exc:
        assert "MLASSETS_ADF_FACTORY_NAME" in str(exc)
    else:
        raise AssertionError("a missing factory name must fail the code location")


def test_every_adf_setting_is_documented():
    names = {s.name: s for s in settings.SETTINGS}
    for name in (
        "MLASSETS_ADF_SUBSCRIPTION_ID",
        "MLASSETS_ADF_RESOURCE_GROUP",
        "MLASSETS_ADF_FACTORY_NAME",
        "MLASSETS_ADF_ARM_ENDPOINT",
        "MLASSETS_ADF_TIMEOUT_SECONDS",
    ):
        assert names[name].description, name
    assert {
        "MLASSETS_ADF_SUBSCRIPTION_ID",
        "MLASSETS_ADF_RESOURCE_GROUP",
        "MLASSETS_ADF_FACTORY_NAME",
    } <= set(settings.AZURE_REQUIRED)
