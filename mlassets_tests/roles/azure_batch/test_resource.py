"""AzureBatchHorovod from the MLASSETS_BATCH_* settings: secrets stay EnvVars, and a missing
setting is named."""

import pytest

from mlassets.roles.azure_batch import AzureBatchHorovod, azure_batch_horovod_from_settings

ACCOUNT_URL = "https://acct.blob.core.windows.net"
IMAGE = "example.azurecr.io/mlassets-training:1"


def test_the_resource_takes_its_secrets_from_env_vars(monkeypatch):
    monkeypatch.setenv("MLASSETS_BATCH_ACCOUNT_URL", "https://acct.westeurope.batch.azure.com")
    monkeypatch.setenv("MLASSETS_BATCH_ACCOUNT_KEY", "VE9QU0VDUkVU")
    monkeypatch.setenv("MLASSETS_BATCH_CONTAINER_IMAGE", IMAGE)
    monkeypatch.setenv("MLASSETS_BATCH_NODES", "3")
    monkeypatch.setenv("MLASSETS_BATCH_GPUS_PER_NODE", "2")
    monkeypatch.setenv("MLASSETS_PIPES_STORAGE_ACCOUNT_URL", ACCOUNT_URL)
    resource = azure_batch_horovod_from_settings()
    assert isinstance(resource, AzureBatchHorovod)
    assert "VE9QU0VDUkVU" not in repr(resource)
    live = resource.process_config_and_initialize()
    assert live.batch_account_key == "VE9QU0VDUkVU"
    assert (live.nodes, live.gpus_per_node, live.workers) == (3, 2, 6)
    assert live.pool_spec().slots == 6
    assert "Standard_NC4as_T4_v3" in live.description


def test_the_resource_names_the_settings_it_misses(monkeypatch):
    from mlassets.settings import MissingSettingError

    resource = azure_batch_horovod_from_settings()
    with pytest.raises(MissingSettingError, match=r"MLASSETS_BATCH_ACCOUNT_URL.*IMAGE"):
        resource.check_settings()
