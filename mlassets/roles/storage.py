"""The lakehouse: one resource addressed by URL, the same code on a laptop and on Azure.

- ``file:///path``: a local folder (the embedded default).
- ``abfs://<container>@<account>.dfs.core.windows.net/<prefix>`` (or ``abfs://<container>/<prefix>``
  with the account in the connection string): Blob Storage / ADLS Gen2 through adlfs, which
  speaks the Blob endpoint and so works on hierarchical and flat accounts and on Azurite.

Authentication is a connection string (Azurite, dev) or, when none is given,
DefaultAzureCredential (managed identity, workload identity, `az login`).

Why not dagster-azure's ADLS2Resource: it talks to the DFS endpoint, which Azurite does not
serve, and Parquet and Delta Lake need an fsspec filesystem and object_store options
respectively, which this resource derives from the same settings.
"""

from __future__ import annotations

import os
import posixpath
import re
import time
import uuid
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import dagster as dg
from pydantic import Field, PrivateAttr

from mlassets.lib.lazy import lazy
from mlassets.roles import lake_access

fsspec = lazy("fsspec")
pa = lazy("pyarrow")
pq = lazy("pyarrow.parquet")

if TYPE_CHECKING:
    import fsspec
    import pyarrow as pa

#: A local write's temporary file: `<target>.<uuid4 hex>.tmp`.
_TEMP_NAME = re.compile(r".+\.[0-9a-f]{32}\.tmp")


@dataclass(frozen=True)
class LakeLocation:
    """A parsed lake URL."""

    protocol: str  # "file" or "abfs"
    root: str  # local path, or "<container>/<prefix>"
    account_name: str | None = None

    @classmethod
    def parse(cls, url: str) -> LakeLocation:
        parsed = urlparse(url)
        scheme = parsed.scheme or "file"
        if scheme == "file":
            path = parsed.path if not parsed.netloc else f"/{parsed.netloc}{parsed.path}"
            return cls("file", path.rstrip("/") or "/")
        if scheme in ("abfs", "abfss", "az"):
            container, _, host = parsed.netloc.partition("@")
            if not container:
                raise ValueError(f"lake URL {url!r} names no container")
            account = host.split(".")[0] if host else None
            root = posixpath.join(container, parsed.path.strip("/")).rstrip("/")
            return cls("abfs", root, account)
        raise ValueError(f"lake URL {url!r}: use file:// or abfs://")


def parse_connection_string(conn: str) -> dict[str, str]:
    parts = (p.split("=", 1) for p in conn.strip().strip(";").split(";") if "=" in p)
    return {k.strip(): v.strip() for k, v in parts}


class LakeStorage(dg.ConfigurableResource):
    """Reads and writes the lakehouse: Parquet files and Delta Lake tables, by relative path."""

    url: str = Field(
        description="lake root: file:///path or abfs://container@account.dfs.core.windows.net/prefix"
    )
    connection_string: str | None = Field(
        default=None, description="storage connection string; unset means DefaultAzureCredential"
    )

    _cache: dict = PrivateAttr(default_factory=dict)

    @cached_property
    def location(self) -> LakeLocation:
        return LakeLocation.parse(self.url)

    @property
    def is_local(self) -> bool:
        return self.location.protocol == "file"

    # -- addressing ----------------------------------------------------------------------

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        if "fs" not in self._cache:
            if self.is_local:
                self._cache["fs"] = fsspec.filesystem("file", auto_mkdir=True)
            else:  # bounded retries and timeouts: a lake that cannot answer fails in seconds
                self._cache["fs"] = lake_access.blob_filesystem(
                    self.connection_string, self._account_name()
                )
        return self._cache["fs"]

    def check_access(self) -> None:
        """Prove the credential with one cheap listing, in seconds; a `LakeAccessError` (one
        line naming what was tried) otherwise. A local lake always answers."""
        if self.is_local or self._cache.get("checked"):
            return
        container, _, prefix = self.location.root.partition("/")
        lake_access.check_access(
            self.url, self.connection_string, self._account_name(), container, prefix
        )
        self._cache["checked"] = True

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        # Before the run's first lake operation, so a credential that cannot work stops the
        # run with one line instead of minutes of retries deep inside an asset.
        self.check_access()

    def path(self, relative: str = "") -> str:
        """The filesystem path of a lake-relative path (what `fs` methods take)."""
        return (
            posixpath.join(self.location.root, relative.lstrip("/"))
            if relative
            else self.location.root
        )

    def uri(self, relative: str = "") -> str:
        """A full URL for people and for engines that take URLs (Delta Lake, links)."""
        if self.is_local:
            return self.path(relative)
        return f"abfs://{self.path(relative)}"

    def relative(self, path: str) -> str:
        """Inverse of `path` for what `fs` returns from listings."""
        root = self.location.root.rstrip("/") + "/"
        path = path if not self.is_local else "/" + path.lstrip("/")
        return path[len(root) :] if path.startswith(root) else path

    def _account_name(self) -> str:
        if self.connection_string and (
            name := parse_connection_string(self.connection_string).get("AccountName")
        ):
            return name
        if self.location.account_name:
            return self.location.account_name
        raise ValueError(
            "the lake URL names no storage account: use abfs://<container>@<account>.dfs.core."
            "windows.net/<prefix> or set MLASSETS_STORAGE_CONNECTION_STRING"
        )

    # -- files ---------------------------------------------------------------------------

    def exists(self, relative: str) -> bool:
        return self.fs.exists(self.path(relative))

    def glob(self, pattern: str) -> list[str]:
        """Lake-relative paths matching a glob, sorted."""
        return sorted(self.relative(p) for p in self.fs.glob(self.path(pattern)))

    def size(self, relative: str) -> int:
        return int(self.fs.info(self.path(relative))["size"])

    def delete(self, relative: str, recursive: bool = False) -> None:
        if self.exists(relative):
            self.fs.rm(self.path(relative), recursive=recursive)

    def write_parquet(self, relative: str, table: pa.Table, **kwargs) -> int:
        """Write one Parquet file atomically (readers never see half a file); returns bytes.

        Blob uploads commit on close, so they are atomic already; a local file is written
        beside its target and renamed into place.
        """
        kwargs.setdefault("compression", "zstd")
        target = self.path(relative)
        if self.is_local:
            os.makedirs(posixpath.dirname(target), exist_ok=True)
            tmp = f"{target}.{uuid.uuid4().hex}.tmp"
            try:
                pq.write_table(table, tmp, **kwargs)
                os.replace(tmp, target)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
        else:
            # Whole in memory, then one upload: a failed write commits nothing (a streamed
            # upload would commit its partial blocks on close). A range file is a few MB.
            buffer = pa.BufferOutputStream()
            pq.write_table(table, buffer, **kwargs)
            data = buffer.getvalue().to_pybytes()
            self.fs.pipe_file(target, data)
            return len(data)
        return self.size(relative)

    def write_bytes(self, relative: str, data: bytes) -> None:
        """Write one small file atomically, as `write_parquet` does: readers see the old
        content or the new, never a torn file (a pointer that says which model scores)."""
        target = self.path(relative)
        if not self.is_local:
            self.fs.pipe_file(target, data)  # a blob upload commits whole or not at all
            return
        os.makedirs(posixpath.dirname(target), exist_ok=True)
        tmp = f"{target}.{uuid.uuid4().hex}.tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def read_bytes(self, relative: str) -> bytes:
        return self.fs.cat_file(self.path(relative))

    def create_exclusive(self, relative: str, data: bytes) -> bool:
        """Create a small file only when nothing exists at `relative`; False when something
        did. The one atomic decision that writers in any processes share without a lock.

        Blob: an upload with `If-None-Match: *`. Local: the bytes go to a temporary file
        (fsynced) that is hard-linked to the name, which fails when the name is taken; the
        file appears whole or not at all.
        """
        target = self.path(relative)
        if not self.is_local:
            try:
                self.fs.pipe_file(target, data, overwrite=False)
            except FileExistsError:
                return False
            return True
        os.makedirs(posixpath.dirname(target), exist_ok=True)
        tmp = f"{target}.{uuid.uuid4().hex}.tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.link(tmp, target)
            return True
        except FileExistsError:
            return False
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def sweep_temp_files(self, prefix: str, older_than_seconds: float) -> list[str]:
        """Remove the temporary files that interrupted local writes left under `prefix`
        (`<name>.<uuid>.tmp`, which no listing by extension matches); returns them.

        Only those older than `older_than_seconds`, so a write still in flight keeps its
        own. Blob writes are single uploads that commit whole or not at all: they leave none.
        """
        if not self.is_local:
            return []
        cutoff = time.time() - older_than_seconds
        removed: list[str] = []
        for folder, _, names in os.walk(self.path(prefix)):
            for name in names:
                if not _TEMP_NAME.fullmatch(name):
                    continue
                path = os.path.join(folder, name)
                try:
                    if os.stat(path).st_mtime < cutoff:
                        os.remove(path)
                        removed.append(self.relative(path))
                except FileNotFoundError:  # its writer finished, or another sweep won
                    continue
        return sorted(removed)

    def read_parquet(
        self,
        relative: str | list[str],
        columns: list[str] | None = None,
        schema: pa.Schema | None = None,
    ) -> pa.Table:
        """One file or several (concatenated in the order given)."""
        paths = [relative] if isinstance(relative, str) else list(relative)
        if not paths:
            if schema is None:
                raise ValueError("reading no files needs a schema")
            return schema.empty_table() if columns is None else schema.empty_table().select(columns)
        tables = [
            pq.read_table(self.path(p), columns=columns, filesystem=self.fs, schema=schema)
            for p in paths
        ]
        return pa.concat_tables(tables) if len(tables) > 1 else tables[0]

    def read_schema(self, relative: str) -> pa.Schema:
        with self.fs.open(self.path(relative), "rb") as f:
            return pq.read_schema(f)

    # -- Delta Lake ----------------------------------------------------------------------

    def delta_storage_options(self) -> dict[str, str]:
        """object_store options for deltalake, derived from the same settings."""
        if self.is_local:
            return {}
        if self.connection_string:
            cs = parse_connection_string(self.connection_string)
            options = {"account_name": cs["AccountName"], "account_key": cs["AccountKey"]}
            if endpoint := cs.get("BlobEndpoint"):
                options["endpoint"] = endpoint.rstrip("/")
                if endpoint.startswith("http://"):
                    options["allow_http"] = "true"
            return {**lake_access.delta_options(), **options}
        token = lake_access.default_credential_token()
        return {
            **lake_access.delta_options(),
            "account_name": self._account_name(),
            "bearer_token": token,
        }

    def delta_table(self, relative: str):
        """The Delta table at a lake path, or None when none exists yet."""
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError

        try:
            return DeltaTable(self.uri(relative), storage_options=self.delta_storage_options())
        except TableNotFoundError:
            return None

    def write_delta(self, relative: str, data: pa.Table, **kwargs) -> None:
        from deltalake import write_deltalake

        write_deltalake(
            self.uri(relative), data, storage_options=self.delta_storage_options(), **kwargs
        )
