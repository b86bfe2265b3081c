"""Fixtures the sample-state and scoring specifications share: the labels database twin and a
lake, on a local folder and on Blob Storage (Azurite). Test modules that define their own
`db` or `lake` keep theirs."""

import pytest

from mlassets.roles.storage import LakeStorage
from mlassets.twins.labels_db import SqliteLabelsDatabase
from mlassets_tests.conftest import AZURITE_ACCOUNT


@pytest.fixture
def db(tmp_path):
    database = SqliteLabelsDatabase(url=f"sqlite:///{tmp_path}/labels.db")
    yield database
    database.dispose()


@pytest.fixture(params=["local", pytest.param("blob", marks=pytest.mark.azurite)])
def lake(request, tmp_path):
    """The same specification on a local folder and on Blob Storage (Azurite)."""
    if request.param == "local":
        return LakeStorage(url=f"file://{tmp_path}/lake")
    container = request.getfixturevalue("azurite_container")
    return LakeStorage(
        url=f"abfs://{container}@{AZURITE_ACCOUNT}.dfs.core.windows.net/lake",
        connection_string=request.getfixturevalue("azurite"),
    )
