"""The stack's configuration: every key with its default, checked before anything is created.

`pulumi config set mlassets:<key> <value>` sets a key. A bad value stops `pulumi up` with one
line that names the key, the value and what is accepted, before Azure is asked for anything.
The parsing is pure (`parse`) so the tests can feed it plain dictionaries.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pulumi

try:  # the Service Bus role owns the queue defaults; older trees kept them in the twin
    from mlassets.roles.servicebus import DEFAULT_LOCK_DURATION_SECONDS, DEFAULT_MAX_DELIVERY_COUNT
except ImportError:  # pragma: no cover - depends on the tree's layout
    from mlassets.twins.queue import DEFAULT_LOCK_DURATION_SECONDS, DEFAULT_MAX_DELIVERY_COUNT

NAMESPACE = "mlassets"


class ConfigError(pulumi.RunError):
    """A stack config value that cannot be used; Pulumi prints the message without a trace."""


@dataclass(frozen=True)
class Key:
    name: str
    default: Any
    parse: Callable[[str], Any]
    accepted: str


def _int(low: int, high: int) -> tuple[Callable[[str], int], str]:
    def parse(text: str) -> int:
        value = int(text.strip())
        if not low <= value <= high:
            raise ValueError
        return value

    return parse, f"an integer from {low} to {high}"


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered not in ("true", "false"):
        raise ValueError
    return lowered == "true"


def _matching(pattern: str, accepted: str) -> tuple[Callable[[str], str], str]:
    compiled = re.compile(pattern)

    def parse(text: str) -> str:
        if not compiled.fullmatch(text):
            raise ValueError
        return text

    return parse, accepted


def _choice(*options: str) -> tuple[Callable[[str], str], str]:
    def parse(text: str) -> str:
        if text not in options:
            raise ValueError
        return text

    return parse, "one of " + ", ".join(options)


_PREFIX = _matching(r"[a-z][a-z0-9-]{1,16}[a-z0-9]", "3 to 18 lowercase letters, digits, '-'")
_CONTAINER = _matching(r"[a-z0-9](?!.*--)[a-z0-9-]{1,61}[a-z0-9]", "a blob container name")
_NAME = _matching(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", "letters, digits, '.', '_', '-'")
_PATH = _matching(r"([A-Za-z0-9._=-]+(/[A-Za-z0-9._=-]+)*)?", "a folder path like 'mlassets'")
_TEXT = _matching(r"\S.{0,199}", "a non-empty text")
_GUID_RE = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_GUID = _matching(_GUID_RE, "a GUID")
_IMAGE_TAG = _matching(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", "a container image tag")
_NODE_IMAGE = _matching(r"[^:\s]+:[^:\s]+:[^:\s]+(:[^:\s]+)?", "publisher:offer:sku[:version]")
_LOCK = _int(5, 300)  # Service Bus: 5 seconds to 5 minutes

KEYS: tuple[Key, ...] = (
    Key("namePrefix", None, *_PREFIX),  # default: mlassets-<stack>
    Key("location", "westeurope", *_NAME),
    Key("resourceGroupName", None, *_NAME),  # set: use that existing group
    Key("dagsterPrincipalId", None, *_GUID),  # set: no Dagster identity is created
    Key("dagsterPrincipalType", "ServicePrincipal", *_choice("ServicePrincipal", "User", "Group")),
    Key("dagsterPrincipalName", None, *_TEXT),  # with dagsterPrincipalId: its display name
    Key("aksOidcIssuer", None, *_matching(r"https://\S+", "the AKS cluster's OIDC issuer URL")),
    Key("kubernetesNamespace", "dagster", *_NAME),
    Key("kubernetesServiceAccount", "mlassets-dagster", *_NAME),
    Key("lakeContainer", "lake", *_CONTAINER),
    Key("lakePrefix", "", *_PATH),
    Key("pipesContainer", "mlassets-batch", *_CONTAINER),
    Key("computeLogsContainer", "dagster-compute-logs", *_CONTAINER),
    Key("eventHubCapacity", 1, *_int(1, 40)),
    Key("eventHubName", "digits", *_NAME),
    Key("eventHubPartitions", 4, *_int(1, 32)),
    Key("eventHubRetentionDays", 1, *_int(1, 7)),
    Key("eventHubConsumerGroup", "landing", *_NAME),
    Key("queueName", "mlassets-commands", *_NAME),
    Key("queueLockSeconds", int(DEFAULT_LOCK_DURATION_SECONDS), *_LOCK),
    Key("queueMaxDeliveryCount", int(DEFAULT_MAX_DELIVERY_COUNT), *_int(1, 2000)),
    Key("sqlDatabaseName", "labels", *_NAME),
    Key("sqlSku", "GP_S_Gen5_1", *_NAME),
    Key("sqlAdminLogin", "mlassets-sql-admin", *_TEXT),
    Key("sqlAdminObjectId", None, *_GUID),  # default: whoever runs `pulumi up`
    # Given Dagster's data-plane roles too; default whoever runs `pulumi up`, "none" for nobody.
    Key("operatorObjectId", None, *_matching(rf"none|{_GUID_RE}", "a GUID, or none")),
    Key("operatorPrincipalType", "User", *_choice("User", "Group", "ServicePrincipal")),
    Key("sqlAdminPrincipalType", "User", *_choice("User", "Group", "Application")),
    Key("registrySku", "Standard", *_choice("Basic", "Standard", "Premium")),
    Key("trainingImageName", "mlassets-training", *_NAME),
    Key("codeLocationImageName", "mlassets-code-location", *_NAME),
    Key("imageTag", "latest", *_IMAGE_TAG),
    Key("batchPoolId", "mlassets-gpu", *_NAME),
    Key("batchVmSize", "Standard_NC4as_T4_v3", *_NAME),
    Key("batchNodes", 2, *_int(1, 100)),
    Key("batchGpusPerNode", 1, *_int(1, 8)),
    Key("batchPoolNodes", 0, *_int(0, 100)),  # nodes kept running; training grows the pool
    Key("batchNodeImage", "microsoft-dsvm:ubuntu-hpc:2204:latest", *_NODE_IMAGE),
    Key("batchNodeAgentSku", "batch.node.ubuntu 22.04", *_TEXT),
    Key("postgresEnabled", False, _bool, "true or false"),
    Key("postgresSku", "Standard_B1ms", *_NAME),
    Key("postgresTier", "Burstable", *_choice("Burstable", "GeneralPurpose", "MemoryOptimized")),
    Key("postgresVersion", "16", *_choice("14", "15", "16", "17")),
    Key("postgresStorageGb", 32, *_int(32, 16384)),
)


@dataclass(frozen=True)
class Settings:
    """Every value the program uses, parsed and checked."""

    stack: str
    name_prefix: str
    location: str
    resource_group_name: str | None
    dagster_principal_id: str | None
    dagster_principal_type: str
    dagster_principal_name: str | None
    aks_oidc_issuer: str | None
    kubernetes_namespace: str
    kubernetes_service_account: str
    lake_container: str
    lake_prefix: str
    pipes_container: str
    compute_logs_container: str
    event_hub_capacity: int
    event_hub_name: str
    event_hub_partitions: int
    event_hub_retention_days: int
    event_hub_consumer_group: str
    queue_name: str
    queue_lock_seconds: int
    queue_max_delivery_count: int
    sql_database_name: str
    sql_sku: str
    sql_admin_login: str
    sql_admin_object_id: str | None
    sql_admin_principal_type: str
    operator_object_id: str | None
    operator_principal_type: str
    registry_sku: str
    training_image_name: str
    code_location_image_name: str
    image_tag: str
    batch_pool_id: str
    batch_vm_size: str
    batch_nodes: int
    batch_gpus_per_node: int
    batch_pool_nodes: int
    batch_node_image: str
    batch_node_agent_sku: str
    postgres_enabled: bool
    postgres_sku: str
    postgres_tier: str
    postgres_version: str
    postgres_storage_gb: int

    # -- names of the globally unique resources, from the prefix ----------------------------

    @property
    def compact_prefix(self) -> str:
        return self.name_prefix.replace("-", "")

    def name(self, suffix: str) -> str:
        """`<prefix>-<suffix>`: names that may hold hyphens."""
        return f"{self.name_prefix}-{suffix}"

    def compact_name(self, suffix: str, limit: int = 24) -> str:
        """Letters and digits only (storage account, registry, Batch account)."""
        return (self.compact_prefix[: limit - len(suffix)] + suffix).lower()

    @property
    def incoming_subject_prefix(self) -> str:
        """Event Grid subject of every blob under the lake's `incoming/` folder."""
        folder = f"{self.lake_prefix.strip('/')}/" if self.lake_prefix.strip("/") else ""
        return f"/blobServices/default/containers/{self.lake_container}/blobs/{folder}incoming/"


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


def parse(values: Mapping[str, str | None], stack: str) -> Settings:
    """Settings from `mlassets:*` config values (strings, as the stack file holds them)."""
    unknown = sorted(set(values) - {k.name for k in KEYS})
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(f'{NAMESPACE}:{k}' for k in unknown)}; "
            f"known: {', '.join(k.name for k in KEYS)}"
        )
    parsed: dict[str, Any] = {}
    for key in KEYS:
        raw = values.get(key.name)
        if raw is None or raw == "":
            parsed[_snake(key.name)] = key.default
            continue
        try:
            parsed[_snake(key.name)] = key.parse(str(raw))
        except ValueError:
            raise ConfigError(
                f"config {NAMESPACE}:{key.name} is {raw!r}; accepted: {key.accepted}"
            ) from None
    if parsed["name_prefix"] is None:
        default = re.sub(r"[^a-z0-9-]", "", f"mlassets-{stack}".lower())[:18].strip("-")
        parsed["name_prefix"] = default
    if (
        parsed["postgres_enabled"]
        and parsed["dagster_principal_id"]
        and not parsed["dagster_principal_name"]
    ):
        raise ConfigError(
            f"config {NAMESPACE}:postgresEnabled is true with {NAMESPACE}:dagsterPrincipalId "
            f"set; accepted: also set {NAMESPACE}:dagsterPrincipalName (the principal's "
            "display name, which becomes its PostgreSQL role)"
        )
    return Settings(stack=stack, **parsed)


def from_pulumi() -> Settings:
    """The current stack's settings; a misspelled `mlassets:` key is an error, not ignored."""
    from pulumi.runtime import config as runtime_config

    config = pulumi.Config(NAMESPACE)
    given = {**runtime_config.get_config_env(), **runtime_config.CONFIG.get()}
    names = {k.name for k in KEYS} | {
        key.split(":", 1)[1] for key in given if key.startswith(f"{NAMESPACE}:")
    }
    return parse({name: config.get(name) for name in names}, pulumi.get_stack())
