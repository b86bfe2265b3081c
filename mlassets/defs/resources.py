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


def local_resources() -> dict[str, Any]:
    data = settings.data_dir()
    return {
        "lake": LakeStorage(url=settings.lake_url()),
        "event_hub": EmbeddedEventHub(
            path=str(data / "eventhub" / f"{settings.get('MLASSETS_EVENTHUB_NAME')}.db"),
            name=settings.get("MLASSETS_EVENTHUB_NAME") or "digits",
            partitions=int(settings.get("MLASSETS_EVENTHUB_PARTITIONS") or 4),
        ),
        "labels_db": _local_labels_db(),
        "training_compute": LocalHorovod(
            workers=int(settings.get("MLASSETS_TRAINING_WORKERS") or 2),
            threads_per_worker=int(settings.get("MLASSETS_TRAINING_THREADS") or 1),
        ),
        "message_queue": _local_queue(),
        "data_factory": _local_data_factory(),
        **policy_resources(),
    }


def _local_data_factory() -> LocalDataFactory:
    """The embedded copy engine: the pipelines of adf/ on the lake and the labels database."""
    return LocalDataFactory(
        lake_url=settings.lake_url(),
        sql_url=_env("MLASSETS_LABELS_DB_URL") or settings.labels_db_url(),
        runs_dir=str(settings.data_dir() / "adf" / "runs"),
        default_timeout_seconds=_adf_timeout(),
    )


def _adf_timeout() -> float:
    return float(settings.get("MLASSETS_ADF_TIMEOUT_SECONDS") or 3600)


def _local_queue() -> EmbeddedQueue:
    name = settings.get("MLASSETS_SERVICEBUS_QUEUE") or "mlassets-commands"
    return EmbeddedQueue(
        path=str(settings.data_dir() / "servicebus" / f"{name.replace('/', '_')}.db"),
        name=name,
        lock_duration_seconds=float(settings.get("MLASSETS_SERVICEBUS_LOCK_SECONDS") or 60),
        max_delivery_count=int(settings.get("MLASSETS_SERVICEBUS_MAX_DELIVERY_COUNT") or 10),
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

    settings.require_azure_settings()
    return {
        "lake": LakeStorage(
            url=dg.EnvVar("MLASSETS_LAKE_URL"),
            connection_string=_env("MLASSETS_STORAGE_CONNECTION_STRING"),
        ),
        "event_hub": AzureEventHub(
            eventhub_name=dg.EnvVar("MLASSETS_EVENTHUB_NAME"),
            fully_qualified_namespace=_env("MLASSETS_EVENTHUB_NAMESPACE"),
            connection_string=_env("MLASSETS_EVENTHUB_CONNECTION_STRING"),
            consumer_group=settings.get("MLASSETS_EVENTHUB_CONSUMER_GROUP") or "$Default",
        ),
        "labels_db": AzureSqlLabelsDatabase(
            url=dg.EnvVar("MLASSETS_LABELS_DB_URL"),
            capture_instance=settings.get("MLASSETS_LABELS_CAPTURE_INSTANCE") or "dbo_labels",
        ),
        "message_queue": AzureServiceBusQueue(
            queue=settings.get("MLASSETS_SERVICEBUS_QUEUE") or "mlassets-commands",
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
            arm_endpoint=settings.get("MLASSETS_ADF_ARM_ENDPOINT")
            or "https://management.azure.com",
            default_timeout_seconds=_adf_timeout(),
        ),
        **policy_resources(),
    }


def build_resources(deployment: settings.Deployment | None = None) -> dict[str, Any]:
    deployment = deployment or settings.deployment()
    return azure_resources() if deployment == "azure" else local_resources()


def resolved(resource: dg.ConfigurableResource) -> Any:
    """A resource with its EnvVars resolved, for use outside a Dagster run (the CLI)."""
    return resource.process_config_and_initialize()
