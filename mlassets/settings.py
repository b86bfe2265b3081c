"""Every environment variable mlassets reads, in one list.

The README table, `.env.example` and the "missing variable" error all come from `SETTINGS`,
so a new setting is added here once and documented everywhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

PROJECT_ROOT = Path(__file__).resolve().parent.parent

Deployment = Literal["local", "azure"]


@dataclass(frozen=True)
class Setting:
    name: str
    description: str
    default: str | None = None
    secret: bool = False
    #: "local", "azure" or "both": where the setting is read.
    scope: str = "both"


SETTINGS: tuple[Setting, ...] = (
    Setting("MLASSETS_DEPLOYMENT", "`local` (embedded twins) or `azure` (real services)", "local"),
    Setting("MLASSETS_DATA_DIR", "folder for everything the embedded twins keep", "<project>/data"),
    Setting(
        "MLASSETS_LAKE_URL",
        "lakehouse root: `file:///path` or `abfs://<container>@<account>.dfs.core.windows.net/<prefix>`",
        "file://<data dir>/lake",
    ),
    Setting(
        "MLASSETS_STORAGE_CONNECTION_STRING",
        "storage account connection string (Azurite, dev); unset: DefaultAzureCredential",
        secret=True,
        scope="azure",
    ),
    Setting(
        "MLASSETS_EVENTHUB_NAMESPACE",
        "Event Hubs namespace host, e.g. `myns.servicebus.windows.net` (DefaultAzureCredential)",
        scope="azure",
    ),
    Setting(
        "MLASSETS_EVENTHUB_CONNECTION_STRING",
        "Event Hubs connection string; instead of the namespace + credential",
        secret=True,
        scope="azure",
    ),
    Setting("MLASSETS_EVENTHUB_NAME", "the event hub that carries digit events", "digits"),
    Setting(
        "MLASSETS_EVENTHUB_CONSUMER_GROUP", "consumer group the landing step reads with", "$Default",
        scope="azure",
    ),
    Setting("MLASSETS_EVENTHUB_PARTITIONS", "partition count of the embedded hub", "4", scope="local"),
    Setting(
        "MLASSETS_MAX_RANGE_EVENTS",
        "largest sequence-number range one landing run (and one Parquet file) covers",
        "50000",
    ),
    Setting(
        "MLASSETS_MAX_QUARANTINE_RATIO",
        "share of quarantined events above which the landing check fails",
        "0.05",
    ),
    Setting(
        "MLASSETS_LABELS_DB_URL",
        "SQLAlchemy URL of the labels database: `sqlite:///path` (embedded twin) or "
        "`mssql+pyodbc://...` (Azure SQL, see Labels in the README)",
        "sqlite:///<data dir>/labels.db",
        secret=True,
    ),
    Setting(
        "MLASSETS_LABELS_CAPTURE_INSTANCE",
        "change data capture instance of the labels table on Azure SQL",
        "dbo_labels",
        scope="azure",
    ),
    Setting("MLASSETS_TRAINING_WORKERS", "Horovod workers for local training", "2", scope="local"),
    Setting(
        "MLASSETS_TRAINING_THREADS",
        "TensorFlow threads per local Horovod worker",
        "1",
        scope="local",
    ),
    Setting(
        "MLASSETS_MIN_CLASS_ROWS",
        "fewest training rows per digit the dataset check accepts",
        "20",
    ),
    Setting(
        "MLASSETS_MIN_TEST_ACCURACY",
        "test accuracy a model needs to pass its blocking check (and ever score)",
        "0.90",
    ),
    Setting("DAGSTER_HOME", "Dagster instance folder (the Makefile sets `<project>/dagster_home`)"),
)

#: What `MLASSETS_DEPLOYMENT=azure` cannot start without. A tuple inside means "one of".
AZURE_REQUIRED: tuple[str | tuple[str, ...], ...] = (
    "MLASSETS_LAKE_URL",
    "MLASSETS_EVENTHUB_NAME",
    ("MLASSETS_EVENTHUB_CONNECTION_STRING", "MLASSETS_EVENTHUB_NAMESPACE"),
    "MLASSETS_LABELS_DB_URL",
)


class MissingSettingError(RuntimeError):
    """A required environment variable is not set; the message names it."""


def get(name: str) -> str | None:
    """The variable's value, or its documented default (None when it has none)."""
    value = os.environ.get(name)
    if value:
        return value
    return next((s.default for s in SETTINGS if s.name == name and s.default), None)


def deployment() -> Deployment:
    value = (os.environ.get("MLASSETS_DEPLOYMENT") or "local").strip().lower()
    if value not in ("local", "azure"):
        raise MissingSettingError(
            f"MLASSETS_DEPLOYMENT must be 'local' or 'azure', not {value!r}"
        )
    return value  # type: ignore[return-value]


def data_dir() -> Path:
    value = os.environ.get("MLASSETS_DATA_DIR")
    return Path(value).expanduser().resolve() if value else PROJECT_ROOT / "data"


def lake_url() -> str:
    return os.environ.get("MLASSETS_LAKE_URL") or f"file://{data_dir() / 'lake'}"


def max_range_events() -> int:
    return int(get("MLASSETS_MAX_RANGE_EVENTS") or 50_000)


def labels_db_url() -> str:
    return os.environ.get("MLASSETS_LABELS_DB_URL") or f"sqlite:///{data_dir() / 'labels.db'}"


def require_azure_settings() -> None:
    """Fail early, naming every missing variable, instead of deep inside a run."""
    missing: list[str] = []
    for need in AZURE_REQUIRED:
        names = need if isinstance(need, tuple) else (need,)
        if not any(os.environ.get(n) for n in names):
            missing.append(" or ".join(names))
    if missing:
        raise MissingSettingError(
            "MLASSETS_DEPLOYMENT=azure needs these environment variables, which are not set: "
            + "; ".join(missing)
            + ". See README.md (Azure settings) and .env.example."
        )


def markdown_table() -> str:
    """The README's settings table."""
    rows = ["| variable | used in | default | meaning |", "|---|---|---|---|"]
    for s in SETTINGS:
        default = f"`{s.default}`" if s.default else ("secret" if s.secret else "-")
        rows.append(f"| `{s.name}` | {s.scope} | {default} | {s.description} |")
    return "\n".join(rows)


def env_example() -> str:
    """`.env.example`: every variable, commented out, with what it is for."""
    lines = ["# mlassets settings. Copy to .env (git-ignored) or export them in your shell."]
    for s in SETTINGS:
        if s.name == "DAGSTER_HOME":
            continue
        lines.append(f"\n# {s.description.replace('`', '')} [{s.scope}]")
        lines.append(f"# {s.name}={s.default or ''}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # python -m mlassets.settings: regenerate the README table
    print(markdown_table())
