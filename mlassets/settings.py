"""Every environment variable mlassets reads, in one list, and one typed reader for each.

The README table, `.env.example` and the "missing variable" error all come from `SETTINGS`,
so a new setting is added here once and documented everywhere. Code reads a setting only
through its reader (`eventhub_partitions()`, `lake_url()`, ...), which checks the value where
it is read and raises `SettingError` with one line: the variable, the value and what is
accepted. `check()` reads them all, for commands that must fail before they start.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import sqlite3
import tempfile
from collections.abc import Callable
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
        "storage account connection string of an `abfs://` lake (Azurite, dev); unset: "
        "DefaultAzureCredential",
        secret=True,
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

#: What `MLASSETS_DEPLOYMENT=azure` cannot start without (a documented default counts as set).
#: A tuple inside means "one of".
AZURE_REQUIRED: tuple[str | tuple[str, ...], ...] = (
    "MLASSETS_LAKE_URL",
    ("MLASSETS_EVENTHUB_CONNECTION_STRING", "MLASSETS_EVENTHUB_NAMESPACE"),
    "MLASSETS_LABELS_DB_URL",
    ("MLASSETS_SERVICEBUS_CONNECTION_STRING", "MLASSETS_SERVICEBUS_NAMESPACE"),
    "MLASSETS_ADF_SUBSCRIPTION_ID",
    "MLASSETS_ADF_RESOURCE_GROUP",
    "MLASSETS_ADF_FACTORY_NAME",
    "MLASSETS_BATCH_ACCOUNT_URL",
    "MLASSETS_BATCH_CONTAINER_IMAGE",
    "MLASSETS_PIPES_STORAGE_ACCOUNT_URL",
)


class SettingError(ValueError):
    """A setting has a value mlassets cannot use. The message is the one line to show: the
    variable, its value (never a secret's) and what is accepted."""


class MissingSettingError(SettingError):
    """A required environment variable is not set; the message names it."""


def _setting(name: str) -> Setting | None:
    return next((s for s in SETTINGS if s.name == name), None)


def get(name: str) -> str | None:
    """The variable's value, or its documented default (None when it has none; a default like
    `<data dir>/...` only describes what the code derives, and is not returned)."""
    value = os.environ.get(name, "").strip()
    if value:
        return value
    setting = _setting(name)
    if setting and setting.default and "<" not in setting.default:
        return setting.default
    return None


def _shown(name: str, value: str) -> str:
    setting = _setting(name)
    return "(set; a secret, not shown)" if setting and setting.secret else repr(value)


def _invalid(name: str, value: str, expected: str) -> SettingError:
    setting = _setting(name)
    default = (
        f" (unset: {setting.default})" if setting and setting.default and not setting.secret else ""
    )
    return SettingError(f"{name}={_shown(name, value)} is not valid: expected {expected}{default}")


def required(name: str, expected: str = "a value") -> str:
    """The value (or default) of a variable that must have one."""
    value = get(name)
    if value is None:
        raise MissingSettingError(f"{name} is not set: expected {expected}")
    return value


def integer(name: str, least: int = 0, most: int | None = None) -> int:
    """A whole number in [least, most]."""
    expected = (
        f"a whole number from {least} to {most}"
        if most is not None
        else (f"a whole number of at least {least}")
    )
    text = required(name, expected)
    try:
        value = int(text)
    except ValueError:
        raise _invalid(name, text, expected) from None
    if value < least or (most is not None and value > most):
        raise _invalid(name, text, expected)
    return value


def positive_int(name: str, most: int | None = None) -> int:
    return integer(name, 1, most)


def number(
    name: str, least: float = 0.0, most: float | None = None, *, above_least: bool = False
) -> float:
    """A finite number in [least, most] (or (least, most] when `above_least`)."""
    low = f"above {least:g}" if above_least else f"at least {least:g}"
    expected = f"a number {low}" + (f" and at most {most:g}" if most is not None else "")
    text = required(name, expected)
    try:
        value = float(text)
    except ValueError:
        raise _invalid(name, text, expected) from None
    if (
        not math.isfinite(value)
        or value < least
        or (above_least and value == least)
        or (most is not None and value > most)
    ):
        raise _invalid(name, text, expected)
    return value


def positive_number(name: str) -> float:
    return number(name, 0.0, above_least=True)


def fraction(name: str) -> float:
    """A share: a number from 0 to 1."""
    return number(name, 0.0, 1.0)


def choice(name: str, options: tuple[str, ...]) -> str:
    """One of `options` (case-insensitive), lower-cased."""
    expected = " or ".join(repr(o) for o in options)
    text = required(name, expected)
    if text.lower() not in options:
        raise _invalid(name, text, expected)
    return text.lower()


def url_scheme(name: str, schemes: tuple[str, ...], value: str | None = None) -> str:
    """A URL whose scheme (`scheme://`, or a SQLAlchemy `dialect+driver://`) is one of
    `schemes`; a secret's message shows only its scheme."""
    expected = "a URL starting " + ", ".join(f"{s}://" for s in schemes)
    text = value if value is not None else required(name, expected)
    scheme, sep, rest = text.partition("://")
    if not sep or scheme.lower() not in schemes or not rest.strip("/"):
        setting = _setting(name)
        if setting and setting.secret:
            start = f"{scheme}://" if sep else "no scheme"
            raise SettingError(f"{name} (a secret) starts {start}: expected {expected}")
        raise _invalid(name, text, expected)
    return text


def matching(name: str, pattern: str, expected: str) -> str:
    """A value that matches `pattern` in full (names that end up in paths and URLs)."""
    text = required(name, expected)
    if not re.fullmatch(pattern, text):
        raise _invalid(name, text, expected)
    return text


#: Event Hubs, Service Bus and Batch names: letters, digits, `.`, `-` and `_`.
_NAME = r"[A-Za-z0-9][A-Za-z0-9._\-]{0,259}"
_NAME_EXPECTED = "letters, digits, '.', '-' and '_', starting with a letter or digit"


# -- every setting, typed and checked where it is read ---------------------------------------


def deployment() -> Deployment:
    return choice("MLASSETS_DEPLOYMENT", ("local", "azure"))  # type: ignore[return-value]


def data_dir() -> Path:
    value = os.environ.get("MLASSETS_DATA_DIR", "").strip()
    return Path(value).expanduser().resolve() if value else PROJECT_ROOT / "data"


def writable_data_dir() -> Path:
    """The data folder, created if need be, once a file could be written in it."""
    path = data_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise SettingError(
            f"MLASSETS_DATA_DIR={str(path)!r} is not valid: {exc.strerror or exc}; expected a "
            "folder this user can create and write"
        ) from None
    return path


LAKE_SCHEMES: dict[str, tuple[str, ...]] = {
    "local": ("file", "abfs", "abfss"),
    "azure": ("abfs", "abfss"),  # Batch nodes and Data Factory cannot see a local folder
}


def lake_url(deployment_: Deployment | None = None) -> str:
    value = get("MLASSETS_LAKE_URL")
    if value is None and (deployment_ or deployment()) == "local":
        return f"file://{data_dir() / 'lake'}"
    schemes = LAKE_SCHEMES[deployment_ or deployment()]
    url = url_scheme("MLASSETS_LAKE_URL", schemes, value)
    scheme, _, rest = url.partition("://")
    if scheme.lower() != "file" and not rest.partition("@")[0].split("/")[0]:
        raise _invalid(
            "MLASSETS_LAKE_URL", url, "abfs://<container>@<account>.dfs.core.windows.net/<prefix>"
        )
    return url


#: Dialects of the labels database: the embedded SQLite twin or Azure SQL.
LABELS_DB_SCHEMES = ("sqlite", "mssql", "mssql+pyodbc")


def labels_db_url() -> str:
    value = get("MLASSETS_LABELS_DB_URL")
    if value is None:
        return f"sqlite:///{data_dir() / 'labels.db'}"
    return url_scheme("MLASSETS_LABELS_DB_URL", LABELS_DB_SCHEMES, value)


def eventhub_name() -> str:
    return matching("MLASSETS_EVENTHUB_NAME", _NAME, f"an event hub name: {_NAME_EXPECTED}")


def eventhub_consumer_group() -> str:
    return required("MLASSETS_EVENTHUB_CONSUMER_GROUP", "a consumer group name")


def eventhub_partitions(existing_hub: Path | None = None) -> int:
    """The embedded hub's partition count; when its file exists, also the count it was created
    with (an event hub's partition count never changes)."""
    count = positive_int("MLASSETS_EVENTHUB_PARTITIONS", most=1024)
    created = _created_partitions(existing_hub) if existing_hub else None
    if created is not None and created != count:
        raise SettingError(
            f"MLASSETS_EVENTHUB_PARTITIONS={get('MLASSETS_EVENTHUB_PARTITIONS')!r} is not valid: "
            f"the embedded hub {existing_hub} was created with {created} partitions, and a "
            f"hub's partition count cannot change; expected {created} (or a new "
            "MLASSETS_DATA_DIR)"
        )
    return count


def _created_partitions(hub_file: Path) -> int | None:
    """The partition count recorded in an existing embedded hub file (stdlib sqlite3 only)."""
    if not hub_file.is_file():
        return None
    try:
        with contextlib.closing(sqlite3.connect(f"file:{hub_file}?mode=ro", uri=True)) as db:
            row = db.execute("SELECT value FROM hub_meta WHERE key='partition_count'").fetchone()
    except sqlite3.Error:
        return None  # not readable here: the twin reports it when it opens the file
    return int(row[0]) if row else None


def max_range_events() -> int:
    return positive_int("MLASSETS_MAX_RANGE_EVENTS")


def max_quarantine_ratio() -> float:
    return fraction("MLASSETS_MAX_QUARANTINE_RATIO")


def max_event_bytes() -> int:
    """The largest event body the landing reads (mlassets.lib.events quarantines larger)."""
    return positive_int("MLASSETS_MAX_EVENT_BYTES")


def labels_capture_instance() -> str:
    return matching(
        "MLASSETS_LABELS_CAPTURE_INSTANCE", r"[A-Za-z_][A-Za-z0-9_]{0,99}", "a SQL identifier"
    )


def training_workers() -> int:
    return positive_int("MLASSETS_TRAINING_WORKERS", most=1024)


def training_threads() -> int:
    return positive_int("MLASSETS_TRAINING_THREADS", most=1024)


def min_class_rows() -> int:
    return integer("MLASSETS_MIN_CLASS_ROWS", 0)


def min_test_accuracy() -> float:
    return fraction("MLASSETS_MIN_TEST_ACCURACY")


def retrain_new_labels_fraction() -> float:
    return positive_number("MLASSETS_RETRAIN_NEW_LABELS")


def retrain_corrections() -> int:
    return positive_int("MLASSETS_RETRAIN_CORRECTIONS")


def retrain_psi() -> float:
    return positive_number("MLASSETS_RETRAIN_PSI")


def retrain_cooldown_minutes() -> float:
    return number("MLASSETS_RETRAIN_COOLDOWN_MINUTES", 0.0)


def servicebus_queue() -> str:
    return matching("MLASSETS_SERVICEBUS_QUEUE", _NAME, f"a queue name: {_NAME_EXPECTED}")


def servicebus_lock_seconds() -> float:
    return positive_number("MLASSETS_SERVICEBUS_LOCK_SECONDS")


def servicebus_max_delivery_count() -> int:
    return positive_int("MLASSETS_SERVICEBUS_MAX_DELIVERY_COUNT")


def batch_account_url() -> str:
    return required("MLASSETS_BATCH_ACCOUNT_URL", "https://<account>.<region>.batch.azure.com")


def batch_pool_id() -> str:
    return matching("MLASSETS_BATCH_POOL_ID", _NAME, f"a pool id: {_NAME_EXPECTED}")


def batch_vm_size() -> str:
    return required("MLASSETS_BATCH_VM_SIZE", "a VM size such as Standard_NC4as_T4_v3")


def batch_nodes() -> int:
    return positive_int("MLASSETS_BATCH_NODES", most=100)


def batch_gpus_per_node() -> int:
    return positive_int("MLASSETS_BATCH_GPUS_PER_NODE", most=16)


def batch_container_image() -> str:
    return required("MLASSETS_BATCH_CONTAINER_IMAGE", "a container image reference")


def pipes_storage_account_url() -> str:
    return required("MLASSETS_PIPES_STORAGE_ACCOUNT_URL", "https://<account>.blob.core.windows.net")


def pipes_container() -> str:
    return matching(
        "MLASSETS_PIPES_CONTAINER", r"[a-z0-9](?:[a-z0-9-]{1,61}[a-z0-9])?", "a blob container name"
    )


def adf_arm_endpoint() -> str:
    return url_scheme("MLASSETS_ADF_ARM_ENDPOINT", ("https",))


def adf_timeout_seconds() -> float:
    return positive_number("MLASSETS_ADF_TIMEOUT_SECONDS")


#: The reader of every setting that has a form to check (connection strings, keys, ids and
#: DAGSTER_HOME are free text), so `check()` can read them all up front.
READERS: dict[str, Callable[[], object]] = {
    "MLASSETS_DEPLOYMENT": deployment,
    "MLASSETS_DATA_DIR": writable_data_dir,
    "MLASSETS_LAKE_URL": lake_url,
    "MLASSETS_EVENTHUB_NAME": eventhub_name,
    "MLASSETS_EVENTHUB_CONSUMER_GROUP": eventhub_consumer_group,
    "MLASSETS_EVENTHUB_PARTITIONS": eventhub_partitions,
    "MLASSETS_MAX_RANGE_EVENTS": max_range_events,
    "MLASSETS_MAX_QUARANTINE_RATIO": max_quarantine_ratio,
    "MLASSETS_MAX_EVENT_BYTES": max_event_bytes,
    "MLASSETS_LABELS_DB_URL": labels_db_url,
    "MLASSETS_LABELS_CAPTURE_INSTANCE": labels_capture_instance,
    "MLASSETS_TRAINING_WORKERS": training_workers,
    "MLASSETS_TRAINING_THREADS": training_threads,
    "MLASSETS_MIN_CLASS_ROWS": min_class_rows,
    "MLASSETS_MIN_TEST_ACCURACY": min_test_accuracy,
    "MLASSETS_RETRAIN_NEW_LABELS": retrain_new_labels_fraction,
    "MLASSETS_RETRAIN_CORRECTIONS": retrain_corrections,
    "MLASSETS_RETRAIN_PSI": retrain_psi,
    "MLASSETS_RETRAIN_COOLDOWN_MINUTES": retrain_cooldown_minutes,
    "MLASSETS_SERVICEBUS_QUEUE": servicebus_queue,
    "MLASSETS_SERVICEBUS_LOCK_SECONDS": servicebus_lock_seconds,
    "MLASSETS_SERVICEBUS_MAX_DELIVERY_COUNT": servicebus_max_delivery_count,
    "MLASSETS_BATCH_ACCOUNT_URL": batch_account_url,
    "MLASSETS_BATCH_POOL_ID": batch_pool_id,
    "MLASSETS_BATCH_VM_SIZE": batch_vm_size,
    "MLASSETS_BATCH_NODES": batch_nodes,
    "MLASSETS_BATCH_GPUS_PER_NODE": batch_gpus_per_node,
    "MLASSETS_BATCH_CONTAINER_IMAGE": batch_container_image,
    "MLASSETS_PIPES_STORAGE_ACCOUNT_URL": pipes_storage_account_url,
    "MLASSETS_PIPES_CONTAINER": pipes_container,
    "MLASSETS_ADF_ARM_ENDPOINT": adf_arm_endpoint,
    "MLASSETS_ADF_TIMEOUT_SECONDS": adf_timeout_seconds,
}


def check(deployment_: Deployment | None = None) -> None:
    """Read every setting the deployment uses, so a bad one stops a command (the demo) before
    it does anything, with the same one line its reader gives."""
    mode = deployment_ or deployment()
    if mode == "azure":
        require_azure_settings()
    for s in SETTINGS:
        reader = READERS.get(s.name)
        if reader is not None and s.scope in ("both", mode):
            reader()


def require_azure_settings() -> None:
    """Fail early, naming every missing variable, instead of deep inside a run."""
    missing: list[str] = []
    for need in AZURE_REQUIRED:
        names = need if isinstance(need, tuple) else (need,)
        if not any(get(n) for n in names):
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
