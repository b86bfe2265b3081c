"""The whole stack: every Azure service mlassets uses, its identities and role assignments.

Identities and what they may do (each at the narrowest scope that works):

| identity | role | scope |
|---|---|---|
| Dagster (user-assigned, or from config) | Azure Event Hubs Data Receiver, Sender | the hub |
| | Azure Service Bus Data Receiver, Sender | the queue |
| | Storage Blob Data Contributor | the lake, Pipes and compute-log containers |
| | Data Factory Contributor | the factory |
| | Azure Batch Data Contributor | the Batch account |
| the factory (system-assigned) | Storage Blob Data Contributor | the lake container |
| the pool (user-assigned) | Storage Blob Data Contributor | the lake and Pipes containers |
| | AcrPull | the registry |
| the storage events topic (system-assigned) | Azure Service Bus Data Sender | the queue |
| the operator (whoever runs `pulumi up`, or `operatorObjectId`) | Dagster's nine roles | the same |
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_azure_native as azure_native

from mlassets_infra import batch, datafactory, messaging, roles, sql, storage
from mlassets_infra.config import Settings
from mlassets_infra.outputs import export

ARM_ENDPOINT = "https://management.azure.com"
#: The audience AKS workload identity tokens are exchanged for.
WORKLOAD_IDENTITY_AUDIENCE = "api://AzureADTokenExchange"


@dataclass
class Stack:
    """What `run` created, for the tests and for whoever extends the program."""

    settings: Settings
    resource_group_name: pulumi.Input[str]
    storage: storage.Storage
    event_hubs: messaging.EventHubs
    service_bus: messaging.ServiceBus
    blob_events: messaging.BlobEvents
    labels: sql.LabelsDatabase
    factory: datafactory.Factory
    batch: batch.Batch
    dagster_identity: azure_native.managedidentity.UserAssignedIdentity | None
    role_assignments: dict[str, azure_native.authorization.RoleAssignment] = field(
        default_factory=dict
    )
    postgres: sql.Postgres | None = None
    outputs: dict[str, Any] = field(default_factory=dict)


def run(settings: Settings) -> Stack:
    client = azure_native.authorization.get_client_config()
    subscription_id, tenant_id = client.subscription_id, client.tenant_id

    if settings.resource_group_name:
        resource_group: pulumi.Input[str] = settings.resource_group_name
    else:
        resource_group = azure_native.resources.ResourceGroup(
            "resource-group", resource_group_name=settings.name("rg"), location=settings.location
        ).name

    identity = None
    if settings.dagster_principal_id:
        dagster_principal: pulumi.Input[str] = settings.dagster_principal_id
        dagster_name: pulumi.Input[str] = settings.dagster_principal_name or ""
        dagster_type = settings.dagster_principal_type
    else:
        identity = azure_native.managedidentity.UserAssignedIdentity(
            "dagster-identity",
            resource_name_=settings.name("dagster"),
            resource_group_name=resource_group,
            location=settings.location,
        )
        dagster_principal, dagster_name, dagster_type = (
            identity.principal_id,
            identity.name,
            "ServicePrincipal",
        )
        if settings.aks_oidc_issuer:
            azure_native.managedidentity.FederatedIdentityCredential(
                "dagster-workload-identity",
                federated_identity_credential_resource_name="aks-dagster",
                resource_name_=identity.name,
                resource_group_name=resource_group,
                issuer=settings.aks_oidc_issuer,
                subject=(
                    f"system:serviceaccount:{settings.kubernetes_namespace}:"
                    f"{settings.kubernetes_service_account}"
                ),
                audiences=[WORKLOAD_IDENTITY_AUDIENCE],
            )

    lake = storage.create(settings, resource_group)
    hubs = messaging.event_hubs(settings, resource_group)
    bus = messaging.service_bus(settings, resource_group)
    events = messaging.blob_events(settings, resource_group, lake, bus, subscription_id)
    labels = sql.labels_database(
        settings, resource_group, settings.sql_admin_object_id or client.object_id, tenant_id
    )
    factory = datafactory.create(
        settings,
        resource_group,
        lake.dfs_endpoint,
        labels.server.fully_qualified_domain_name,
        labels.database.name,
    )
    compute = batch.create(settings, resource_group, lake, subscription_id)

    def grant(name: str, principal: pulumi.Input[str], role: str, scope, kind: str) -> None:
        assignments[name] = roles.assign(
            name,
            principal_id=principal,
            role=role,
            scope=scope,
            subscription_id=subscription_id,
            principal_type=kind,
        )

    assignments: dict[str, azure_native.authorization.RoleAssignment] = {
        "events-to-queue": events.sender,
        **compute.pool_roles,
    }
    grant(
        "factory-lake",
        factory.principal_id,
        "Storage Blob Data Contributor",
        lake.lake.id,
        "ServicePrincipal",
    )
    dagster_roles = (
        ("hub-receiver", "Azure Event Hubs Data Receiver", hubs.hub.id),
        ("hub-sender", "Azure Event Hubs Data Sender", hubs.hub.id),
        ("queue-receiver", "Azure Service Bus Data Receiver", bus.queue.id),
        ("queue-sender", "Azure Service Bus Data Sender", bus.queue.id),
        ("lake", "Storage Blob Data Contributor", lake.lake.id),
        ("pipes", "Storage Blob Data Contributor", lake.pipes.id),
        ("compute-logs", "Storage Blob Data Contributor", lake.compute_logs.id),
        ("factory", "Data Factory Contributor", factory.factory.id),
        ("batch", "Azure Batch Data Contributor", compute.account.id),
    )
    for name, role, scope in dagster_roles:
        grant(f"dagster-{name}", dagster_principal, role, scope, dagster_type)
    # Whoever runs `pulumi up` may run mlassets against the stack from their own shell
    # (`mlassets simulate`, `dagster dev` with the .env) with the same data-plane roles.
    if settings.operator_object_id != "none":
        operator = settings.operator_object_id or client.object_id
        for name, role, scope in dagster_roles:
            grant(f"operator-{name}", operator, role, scope, settings.operator_principal_type)

    postgres = None
    if settings.postgres_enabled:
        postgres = sql.postgres(
            settings, resource_group, tenant_id, dagster_principal, dagster_name, dagster_type
        )

    lake_folder = settings.lake_prefix.strip("/")
    lake_url = lake.dfs_endpoint.apply(
        lambda endpoint: (
            f"abfs://{settings.lake_container}@{messaging.host_of(endpoint)}/"
            + (f"{lake_folder}/" if lake_folder else "")
        )
    )
    settings_outputs: dict[str, pulumi.Input] = {
        "MLASSETS_LAKE_URL": lake_url,
        "MLASSETS_EVENTHUB_NAMESPACE": hubs.host,
        "MLASSETS_EVENTHUB_NAME": hubs.hub.name,
        "MLASSETS_EVENTHUB_CONSUMER_GROUP": hubs.consumer_group.name,
        "MLASSETS_LABELS_DB_URL": labels.url,
        "MLASSETS_LABELS_CAPTURE_INSTANCE": "dbo_labels",
        "MLASSETS_SERVICEBUS_NAMESPACE": bus.host,
        "MLASSETS_SERVICEBUS_QUEUE": bus.queue.name,
        "MLASSETS_BATCH_ACCOUNT_URL": compute.account_url,
        "MLASSETS_BATCH_POOL_ID": compute.pool.name,
        "MLASSETS_BATCH_VM_SIZE": settings.batch_vm_size,
        "MLASSETS_BATCH_NODES": str(settings.batch_nodes),
        "MLASSETS_BATCH_GPUS_PER_NODE": str(settings.batch_gpus_per_node),
        "MLASSETS_BATCH_CONTAINER_IMAGE": compute.training_image,
        "MLASSETS_BATCH_IDENTITY_RESOURCE_ID": compute.pool_identity.id,
        "MLASSETS_PIPES_STORAGE_ACCOUNT_URL": lake.blob_endpoint.apply(lambda e: e.rstrip("/")),
        "MLASSETS_PIPES_CONTAINER": lake.pipes.name,
        "MLASSETS_ADF_SUBSCRIPTION_ID": subscription_id,
        "MLASSETS_ADF_RESOURCE_GROUP": resource_group,
        "MLASSETS_ADF_FACTORY_NAME": factory.factory.name,
        "MLASSETS_ADF_ARM_ENDPOINT": ARM_ENDPOINT,
    }
    extras: dict[str, pulumi.Input] = {
        "tenantId": tenant_id,
        "storageAccountName": lake.name,
        "computeLogsContainer": lake.compute_logs.name,
        "registryLoginServer": compute.registry.login_server,
        "trainingImage": compute.training_image,
        "codeLocationImage": compute.code_location_image,
        "dagsterPrincipalId": dagster_principal,
        "kubernetesNamespace": settings.kubernetes_namespace,
        "kubernetesServiceAccount": settings.kubernetes_service_account,
    }
    if identity is not None:
        extras["dagsterIdentityClientId"] = identity.client_id
    if postgres is not None:
        extras.update(
            postgresHost=postgres.server.fully_qualified_domain_name,
            postgresDatabase=postgres.database.name,
            postgresUser=dagster_name,
        )
    export(settings_outputs, extras)
    return Stack(
        settings=settings,
        resource_group_name=resource_group,
        storage=lake,
        event_hubs=hubs,
        service_bus=bus,
        blob_events=events,
        labels=labels,
        factory=factory,
        batch=compute,
        dagster_identity=identity,
        role_assignments=assignments,
        postgres=postgres,
        outputs={**settings_outputs, **extras},
    )
