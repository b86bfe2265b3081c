"""The lake resource: the same calls on a local folder and on Blob Storage (Azurite)."""

import pyarrow as pa
import pytest

from mlassets.roles.storage import LakeLocation, LakeStorage, parse_connection_string

TABLE = pa.table({"sample_id": ["a", "b"], "pixels": [[1, 2], [3]]})


@pytest.fixture(params=["local", "azurite"])
def lake(request, tmp_path):
    if request.param == "local":
        return LakeStorage(url=f"file://{tmp_path}/lake")
    container = request.getfixturevalue("azurite_container")
    return LakeStorage(
        url=f"abfs://{container}/mlassets", connection_string=request.getfixturevalue("azurite")
    )


@pytest.mark.azurite
def test_parquet_round_trip(lake):
    written = lake.write_parquet("landed/events/partition=0/seq=0-1.parquet", TABLE)
    assert written > 0
    assert lake.exists("landed/events/partition=0/seq=0-1.parquet")
    assert lake.read_parquet("landed/events/partition=0/seq=0-1.parquet").equals(TABLE)


@pytest.mark.azurite
def test_glob_returns_lake_relative_paths_sorted(lake):
    for name in ["b", "a"]:
        lake.write_parquet(f"zone/partition=0/{name}.parquet", TABLE)
    lake.write_parquet("other/c.parquet", TABLE)
    assert lake.glob("zone/*/*.parquet") == [
        "zone/partition=0/a.parquet",
        "zone/partition=0/b.parquet",
    ]
    assert lake.read_parquet(lake.glob("zone/*/*.parquet")).num_rows == 4


@pytest.mark.azurite
def test_rewriting_a_file_replaces_it(lake):
    lake.write_parquet("x.parquet", TABLE)
    lake.write_parquet("x.parquet", TABLE.slice(0, 1))
    assert lake.read_parquet("x.parquet").num_rows == 1


@pytest.mark.azurite
def test_delta_tables_open_and_merge_on_either(lake):
    assert lake.delta_table("curated/t") is None
    lake.write_delta("curated/t", pa.table({"k": ["a", "b"], "v": [1, 2]}))
    table = lake.delta_table("curated/t")
    (
        table.merge(
            pa.table({"k": ["b", "c"], "v": [20, 3]}),
            "t.k = s.k",
            source_alias="s",
            target_alias="t",
        )
        .when_matched_update_all()
        .when_not_matched_insert_all()
        .execute()
    )
    rows = lake.delta_table("curated/t").to_pyarrow_table().sort_by("k").to_pylist()
    assert rows == [{"k": "a", "v": 1}, {"k": "b", "v": 20}, {"k": "c", "v": 3}]
    assert lake.delta_table("curated/t").version() == 1


def test_a_local_write_never_leaves_a_partial_file(tmp_path, monkeypatch):
    lake = LakeStorage(url=f"file://{tmp_path}/lake")
    lake.write_parquet("f.parquet", TABLE)

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("pyarrow.parquet.write_table", explode)
    with pytest.raises(OSError):
        lake.write_parquet("f.parquet", TABLE.slice(0, 1))
    monkeypatch.undo()
    assert lake.read_parquet("f.parquet").equals(TABLE)  # the old file is intact
    assert lake.glob("*") == ["f.parquet"]  # and no temporary is left behind


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("file:///data/lake", LakeLocation("file", "/data/lake")),
        (
            "abfs://lake@acct.dfs.core.windows.net/mlassets",
            LakeLocation("abfs", "lake/mlassets", "acct"),
        ),
        ("abfs://lake/mlassets/", LakeLocation("abfs", "lake/mlassets")),
        ("az://lake", LakeLocation("abfs", "lake")),
    ],
)
def test_lake_urls_parse_into_protocol_root_and_account(url, expected):
    assert LakeLocation.parse(url) == expected


def test_an_unsupported_lake_url_is_refused_with_the_schemes_that_work():
    with pytest.raises(ValueError, match="file:// or abfs://"):
        LakeLocation.parse("s3://bucket/x")


def test_delta_options_come_from_the_connection_string():
    lake = LakeStorage(
        url="abfs://lake/x",
        connection_string="AccountName=acct;AccountKey=a2V5;BlobEndpoint=http://127.0.0.1:10000/acct;",
    )
    assert lake.delta_storage_options() == {
        "account_name": "acct",
        "account_key": "a2V5",
        "endpoint": "http://127.0.0.1:10000/acct",
        "allow_http": "true",
        # bounded waits, as for the Blob client: a lake that cannot answer fails in seconds
        "connect_timeout": "5s",
        "timeout": "60s",
        "max_retries": "3",
        "retry_timeout": "30s",
    }
    assert parse_connection_string("A=1;B=x=y;")["B"] == "x=y"


@pytest.mark.azurite
def test_an_exclusive_create_succeeds_once_and_keeps_the_first_content(lake):
    assert lake.create_exclusive("claims/seq=0.json", b"first") is True
    assert lake.create_exclusive("claims/seq=0.json", b"second") is False
    assert lake.read_bytes("claims/seq=0.json") == b"first"
    assert lake.glob("claims/*") == ["claims/seq=0.json"]  # no temporary file left


@pytest.mark.azurite
def test_of_many_writers_creating_one_name_at_once_exactly_one_wins(lake):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        won = list(pool.map(lambda i: lake.create_exclusive("c.json", b"%d" % i), range(16)))
    assert won.count(True) == 1
    assert lake.read_bytes("c.json") == b"%d" % won.index(True)


@pytest.mark.azurite
def test_a_failed_write_leaves_no_file_on_either(lake, monkeypatch):
    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("pyarrow.parquet.write_table", explode)
    with pytest.raises(OSError):
        lake.write_parquet("zone/f.parquet", TABLE)
    monkeypatch.undo()
    assert not lake.exists("zone/f.parquet")


def test_temporary_files_of_interrupted_writes_are_swept_only_once_old(tmp_path):
    import os
    import time

    lake = LakeStorage(url=f"file://{tmp_path}/lake")
    lake.write_parquet("zone/p=0/f.parquet", TABLE)
    folder = tmp_path / "lake" / "zone" / "p=0"
    old, young = folder / f"f.parquet.{'1' * 32}.tmp", folder / f"f.parquet.{'2' * 32}.tmp"
    old.write_bytes(b"half")
    young.write_bytes(b"half")
    os.utime(old, (time.time() - 120, time.time() - 120))
    assert lake.glob("zone/*/*.parquet") == ["zone/p=0/f.parquet"]
    assert lake.sweep_temp_files("zone", older_than_seconds=60) == [
        f"zone/p=0/f.parquet.{'1' * 32}.tmp"
    ]
    assert not old.exists() and young.exists()
    assert lake.read_parquet("zone/p=0/f.parquet").equals(TABLE)
