"""`MLASSETS_DEPLOYMENT` -> resources: the one place where local and Azure part ways.

Assets, checks and sensors ask for roles (`lake`, `event_hub`, ...) and never learn which
implementation they got. Azure settings are passed as `dg.EnvVar`, so Dagster resolves them
at run time and shows only the variable's name in the UI, never its value.

This is the one module of the code location that imports the embedded twins (`mlassets.twins`):
the role modules hold only their interface, their contract types and the Azure implementation.
"""

from __future__ import annotations

import os
from typing import Any

import dagster as dg

from mlassets import settings
from mlassets.defs.quality import policy_resources
from mlassets.roles.datafactory import AzureDataFactory
from mlassets.roles.eventhub import AzureEventHub
from mlassets.roles.labels_db import AzureSqlLabelsDatabase, LabelsDatabase
from mlassets.roles.servicebus import AzureServiceBusQueue
from mlassets.roles.storage import LakeStorage
from mlassets.roles.training import LocalHorovod
from mlassets.twins.adf.factory import LocalDataFactory
from mlassets.twins.eventhub import EmbeddedEventHub
from mlassets.twins.labels_db import SqliteLabelsDatabase
from mlassets.twins.servicebus import EmbeddedQueue


def _env(name: str) -> dg.EnvVar | None:
    """An EnvVar when the variable is set (resolved at run time), else None."""
    return dg.EnvVar(name) if os.environ.get(name) else None


def labels_database_class(url: str) -> type[LabelsDatabase]:
    """The implementation that speaks this URL's dialect."""
    # The URL's scheme names the dialect (`dialect+driver://`): no need to load SQLAlchemy.
    backend = url.split(":", 1)[0].split("+", 1)[0].lower()
    if backend == "sqlite":
        return SqliteLabelsDatabase
    if backend == "mssql":
        return AzureSqlLabelsDatabase
    raise ValueError(
        f"MLASSETS_LABELS_DB_URL: unsupported database {backend!r}; use sqlite:/// (embedded) "
        "or mssql+pyodbc:// (Azure SQL)"
    )


def _lake_connection_string() -> dg.EnvVar | None:
    """The storage connection string of an abfs:// lake, as in azure mode: a local deployment
    with a Blob lake (Azurite, or a real account tried before moving the rest) reads it too."""
    if settings.lake_url().split(":", 1)[0].lower() in ("abfs", "abfss", "az"):
        return _env("MLASSETS_STORAGE_CONNECTION_STRING")
    return None


def local_resources() -> dict[str, Any]:
    data = settings.writable_data_dir()
    hub_file = data / "eventhub" / f"{settings.eventhub_name()}.db"
    return {
        "lake": LakeStorage(url=settings.lake_url(), connection_string=_lake_connection_string()),
        "event_hub": EmbeddedEventHub(
            path=str(hub_file),
            name=settings.eventhub_name(),
            partitions=settings.eventhub_partitions(hub_file),
        ),
        "labels_db": _local_labels_db(),
        "training_compute": LocalHorovod(
            workers=settings.training_workers(),
            threads_per_worker=settings.training_threads(),
        ),
        "message_queue": _local_queue(),
        "data_factory": _local_data_factory(),
        **policy_resources(),
    }


def _local_data_factory() -> LocalDataFactory:
    """The embedded copy engine: the pipelines of adf/ on the lake and the labels database."""
    return LocalDataFactory(
        lake_url=settings.lake_url(),
        lake_connection_string=_lake_connection_string(),
        sql_url=_env("MLASSETS_LABELS_DB_URL") or settings.labels_db_url(),
        runs_dir=str(settings.data_dir() / "adf" / "runs"),
        default_timeout_seconds=_adf_timeout(),
    )


def _adf_timeout() -> float:
    return settings.adf_timeout_seconds()


def _local_queue() -> EmbeddedQueue:
    name = settings.servicebus_queue()
    return EmbeddedQueue(
        path=str(settings.data_dir() / "servicebus" / f"{name.replace('/', '_')}.db"),
        name=name,
        lock_duration_seconds=settings.servicebus_lock_seconds(),
        max_delivery_count=settings.servicebus_max_delivery_count(),
    )


def _local_labels_db() -> dg.ConfigurableResource:
    """The embedded SQLite twin by default; any URL the variable names otherwise (its value
    stays out of the UI as an EnvVar, while its dialect picks the implementation)."""
    url = settings.labels_db_url()
    value = dg.EnvVar("MLASSETS_LABELS_DB_URL") if os.environ.get("MLASSETS_LABELS_DB_URL") else url
    return labels_database_class(url)(url=value)


def azure_resources() -> dict[str, Any]:
    # Imported here: azure-batch is only needed when the deployment is Azure.
    from mlassets.roles.azure_batch import azure_batch_horovod_from_settings

    settings.check("azure")  # every variable present and well-formed, or one line naming it
    return {
        "lake": LakeStorage(
            url=dg.EnvVar("MLASSETS_LAKE_URL"),
            connection_string=_env("MLASSETS_STORAGE_CONNECTION_STRING"),
        ),
        "event_hub": AzureEventHub(
            eventhub_name=settings.eventhub_name(),  # not a secret; has a default
            fully_qualified_namespace=_env("MLASSETS_EVENTHUB_NAMESPACE"),
            connection_string=_env("MLASSETS_EVENTHUB_CONNECTION_STRING"),
            consumer_group=settings.eventhub_consumer_group(),
        ),
        "labels_db": AzureSqlLabelsDatabase(
            url=dg.EnvVar("MLASSETS_LABELS_DB_URL"),
            capture_instance=settings.labels_capture_instance(),
        ),
        "message_queue": AzureServiceBusQueue(
            queue=settings.servicebus_queue(),
            fully_qualified_namespace=_env("MLASSETS_SERVICEBUS_NAMESPACE"),
            connection_string=_env("MLASSETS_SERVICEBUS_CONNECTION_STRING"),
        ),
        "training_compute": azure_batch_horovod_from_settings(),
        "data_factory": AzureDataFactory(
            subscription_id=dg.EnvVar("MLASSETS_ADF_SUBSCRIPTION_ID"),
            resource_group=dg.EnvVar("MLASSETS_ADF_RESOURCE_GROUP"),
            factory_name=dg.EnvVar("MLASSETS_ADF_FACTORY_NAME"),
            lake_url=dg.EnvVar("MLASSETS_LAKE_URL"),
            sql_url=_env("MLASSETS_LABELS_DB_URL"),
            arm_endpoint=settings.adf_arm_endpoint(),
            default_timeout_seconds=_adf_timeout(),
        ),
        **policy_resources(),
    }


def build_resources(deployment: settings.Deployment | None = None) -> dict[str, Any]:
    deployment = deployment or settings.deployment()
    if deployment == "local":
        settings.check("local")  # a bad setting fails loading with one line, not mid-run
    return azure_resources() if deployment == "azure" else local_resources()


def resolved(resource: dg.ConfigurableResource) -> Any:
    """A resource with its EnvVars resolved, for use outside a Dagster run (the CLI)."""
    return resource.process_config_and_initialize()
