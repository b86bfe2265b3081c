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
        "MLASSETS_EVENTHUB_CONSUMER_GROUP",
        "consumer group the landing step reads with",
        "$Default",
        scope="azure",
    ),
    Setting(
        "MLASSETS_EVENTHUB_PARTITIONS", "partition count of the embedded hub", "4", scope="local"
    ),
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
        "MLASSETS_MAX_EVENT_BYTES",
        "largest event body the landing reads; a larger one is quarantined unread",
        "65536",
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
    Setting(
        "MLASSETS_RETRAIN_NEW_LABELS",
        "retrain when the labels table grew by this share since the model's dataset",
        "0.10",
    ),
    Setting(
        "MLASSETS_RETRAIN_CORRECTIONS",
        "retrain after this many label corrections (CDC updates) since the model's dataset",
        "50",
    ),
    Setting(
        "MLASSETS_RETRAIN_PSI",
        "retrain when new pixels drift by this population stability index",
        "0.2",
    ),
    Setting(
        "MLASSETS_RETRAIN_COOLDOWN_MINUTES",
        "least time between two trainings the retraining sensor starts",
        "30",
    ),
    Setting(
        "MLASSETS_SERVICEBUS_NAMESPACE",
        "Service Bus namespace host, e.g. `myns.servicebus.windows.net` (DefaultAzureCredential)",
        scope="azure",
    ),
    Setting(
        "MLASSETS_SERVICEBUS_CONNECTION_STRING",
        "Service Bus connection string; instead of the namespace + credential",
        secret=True,
        scope="azure",
    ),
    Setting(
        "MLASSETS_SERVICEBUS_QUEUE",
        "the queue that carries commands and Event Grid blob notifications",
        "mlassets-commands",
    ),
    Setting(
        "MLASSETS_SERVICEBUS_LOCK_SECONDS",
        "peek-lock duration of the embedded queue (on Azure: a property of the queue)",
        "60",
        scope="local",
    ),
    Setting(
        "MLASSETS_SERVICEBUS_MAX_DELIVERY_COUNT",
        "deliveries after which the embedded queue dead-letters a message (on Azure: a "
        "property of the queue)",
        "10",
        scope="local",
    ),
    Setting(
        "MLASSETS_BATCH_ACCOUNT_URL",
        "Azure Batch account endpoint for training, `https://<account>.<region>.batch.azure.com`",
        scope="azure",
    ),
    Setting(
        "MLASSETS_BATCH_ACCOUNT_KEY",
        "Batch account shared key; unset: DefaultAzureCredential (Microsoft Entra ID)",
        secret=True,
        scope="azure",
    ),
    Setting(
        "MLASSETS_BATCH_POOL_ID",
        "GPU pool the training task runs on (created when missing, see Azure Batch in the README)",
        "mlassets-gpu",
        scope="azure",
    ),
    Setting(
        "MLASSETS_BATCH_VM_SIZE", "GPU VM size of the pool", "Standard_NC4as_T4_v3", scope="azure"
    ),
    Setting(
        "MLASSETS_BATCH_NODES",
        "nodes of the multi-instance training task (and of a pool created for it)",
        "2",
        scope="azure",
    ),
    Setting(
        "MLASSETS_BATCH_GPUS_PER_NODE",
        "GPUs per node, one Horovod worker each (workers = nodes x GPUs)",
        "1",
        scope="azure",
    ),
    Setting(
        "MLASSETS_BATCH_CONTAINER_IMAGE",
        "training image on the nodes: TensorFlow, Horovod, openssh-server and mlassets",
        scope="azure",
    ),
    Setting(
        "MLASSETS_BATCH_IDENTITY_RESOURCE_ID",
        "ARM id of the pool's user-assigned managed identity, when it has several",
        scope="azure",
    ),
    Setting(
        "MLASSETS_PIPES_STORAGE_ACCOUNT_URL",
        "blob endpoint for Pipes messages, SSH keys and outputs of Batch tasks, "
        "`https://<account>.blob.core.windows.net` (nodes use the pool's managed identity)",
        scope="azure",
    ),
    Setting(
        "MLASSETS_PIPES_CONTAINER",
        "blob container for Pipes messages, SSH keys and outputs of Batch tasks",
        "mlassets-batch",
        scope="azure",
    ),
    Setting(
        "MLASSETS_PIPES_STORAGE_CONNECTION_STRING",
        "Pipes storage connection string (Azurite, dev) for Dagster's side; never sent to "
        "Batch nodes; unset: DefaultAzureCredential",
        secret=True,
        scope="azure",
    ),
    Setting(
        "MLASSETS_ADF_SUBSCRIPTION_ID",
        "subscription of the Azure Data Factory that runs the pipelines of `adf/`",
        scope="azure",
    ),
    Setting(
        "MLASSETS_ADF_RESOURCE_GROUP", "resource group of the Azure Data Factory", scope="azure"
    ),
    Setting(
        "MLASSETS_ADF_FACTORY_NAME",
        "the Azure Data Factory (its managed identity needs access to the lake and the "
        "labels database, see Data Factory in the README)",
        scope="azure",
    ),
    Setting(
        "MLASSETS_ADF_ARM_ENDPOINT",
        "Azure Resource Manager endpoint the factory is managed through (sovereign clouds)",
        "https://management.azure.com",
        scope="azure",
    ),
    Setting(
        "MLASSETS_ADF_TIMEOUT_SECONDS",
        "how long a Data Factory pipeline run may take before it is cancelled",
        "3600",
    ),
    Setting("DAGSTER_HOME", "Dagster instance folder (the Makefile sets `<project>/dagster_home`)"),
)

#: What `MLASSETS_DEPLOYMENT=azure` cannot start without. A tuple inside means "one of".
AZURE_REQUIRED: tuple[str | tuple[str, ...], ...] = (
    "MLASSETS_LAKE_URL",
    "MLASSETS_EVENTHUB_NAME",
    ("MLASSETS_EVENTHUB_CONNECTION_STRING", "MLASSETS_EVENTHUB_NAMESPACE"),
    "MLASSETS_LABELS_DB_URL",
    ("MLASSETS_SERVICEBUS_CONNECTION_STRING", "MLASSETS_SERVICEBUS_NAMESPACE"),
    "MLASSETS_ADF_SUBSCRIPTION_ID",
    "MLASSETS_ADF_RESOURCE_GROUP",
    "MLASSETS_ADF_FACTORY_NAME",
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
        raise MissingSettingError(f"MLASSETS_DEPLOYMENT must be 'local' or 'azure', not {value!r}")
    return value  # type: ignore[return-value]


def data_dir() -> Path:
    value = os.environ.get("MLASSETS_DATA_DIR")
    return Path(value).expanduser().resolve() if value else PROJECT_ROOT / "data"


def lake_url() -> str:
    return os.environ.get("MLASSETS_LAKE_URL") or f"file://{data_dir() / 'lake'}"


def max_range_events() -> int:
    return int(_number("MLASSETS_MAX_RANGE_EVENTS", int))


def max_event_bytes() -> int:
    value = int(_number("MLASSETS_MAX_EVENT_BYTES", int))
    if value < 1:
        raise MissingSettingError(f"MLASSETS_MAX_EVENT_BYTES must be at least 1, not {value}")
    return value


# -- quality bars and the retraining policy: typed, defaults only in SETTINGS -----------------


def _number(name: str, cast: type[int] | type[float]) -> int | float:
    value = get(name)
    try:
        return cast(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise MissingSettingError(
            f"{name} must be {'an integer' if cast is int else 'a number'}, not {value!r}"
        ) from None


def max_quarantine_ratio() -> float:
    return float(_number("MLASSETS_MAX_QUARANTINE_RATIO", float))


def min_class_rows() -> int:
    return int(_number("MLASSETS_MIN_CLASS_ROWS", int))


def min_test_accuracy() -> float:
    return float(_number("MLASSETS_MIN_TEST_ACCURACY", float))


def retrain_new_labels_fraction() -> float:
    return float(_number("MLASSETS_RETRAIN_NEW_LABELS", float))


def retrain_corrections() -> int:
    return int(_number("MLASSETS_RETRAIN_CORRECTIONS", int))


def retrain_psi() -> float:
    return float(_number("MLASSETS_RETRAIN_PSI", float))


def retrain_cooldown_minutes() -> float:
    return float(_number("MLASSETS_RETRAIN_COOLDOWN_MINUTES", float))


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


README_START = "<!-- settings:start (python -m mlassets.settings --write) -->"
README_END = "<!-- settings:end -->"


def write_docs() -> None:
    """Regenerate the README's settings table and .env.example from SETTINGS."""
    readme = PROJECT_ROOT / "README.md"
    text = readme.read_text()
    head, _, rest = text.partition(README_START)
    _, _, tail = rest.partition(README_END)
    readme.write_text(f"{head}{README_START}\n{markdown_table()}\n{README_END}{tail}")
    (PROJECT_ROOT / ".env.example").write_text(env_example())


if __name__ == "__main__":  # python -m mlassets.settings [--write]
    import sys

    if "--write" in sys.argv:
        write_docs()
    else:
        print(markdown_table())
