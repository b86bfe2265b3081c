"""Modules imported on first use.

The code location is loaded by every Dagster process (webserver, daemon, each run), and most
of them never touch a row of data. Modules that define resources, assets and sensors refer to
pyarrow, SQLAlchemy or fsspec through these proxies, so loading the definitions costs no more
than Dagster itself; the real import happens the first time a function uses the module.
"""

from __future__ import annotations

import importlib
from typing import Any


class LazyModule:
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        object.__setattr__(self, "_name", name)

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._name), attr)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}>"


def lazy(name: str) -> Any:
    """A stand-in for `import name` that imports on first attribute access."""
    return LazyModule(name)
