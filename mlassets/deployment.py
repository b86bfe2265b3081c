"""`MLASSETS_DEPLOYMENT` -> resources: the one place where local and Azure part ways.

Assets, checks and sensors ask for roles (`lake`, `event_hub`, ...) and never learn which
implementation they got. Azure settings are passed as `dg.EnvVar`, so Dagster resolves them
at run time and shows only the variable's name in the UI, never its value.
"""

from __future__ import annotations

import os
from typing import Any

import dagster as dg

from mlassets import settings
from mlassets.resources.eventhub import AzureEventHub, EmbeddedEventHub
from mlassets.resources.storage import LakeStorage


def _env(name: str) -> dg.EnvVar | None:
    """An EnvVar when the variable is set (resolved at run time), else None."""
    return dg.EnvVar(name) if os.environ.get(name) else None


def local_resources() -> dict[str, Any]:
    data = settings.data_dir()
    return {
        "lake": LakeStorage(url=settings.lake_url()),
        "event_hub": EmbeddedEventHub(
            path=str(data / "eventhub" / f"{settings.get('MLASSETS_EVENTHUB_NAME')}.db"),
            name=settings.get("MLASSETS_EVENTHUB_NAME") or "digits",
            partitions=int(settings.get("MLASSETS_EVENTHUB_PARTITIONS") or 4),
        ),
    }


def azure_resources() -> dict[str, Any]:
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
    }


def build_resources(deployment: settings.Deployment | None = None) -> dict[str, Any]:
    deployment = deployment or settings.deployment()
    return azure_resources() if deployment == "azure" else local_resources()


def resolved(resource: dg.ConfigurableResource) -> Any:
    """A resource with its EnvVars resolved, for use outside a Dagster run (the CLI)."""
    return resource.process_config_and_initialize()
