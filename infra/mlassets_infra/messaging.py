"""Event Hubs (the digit events), Service Bus (the command queue) and Event Grid (blob-created
notifications for the lake's `incoming/` folder, delivered to that queue).

Both namespaces have local (SAS key) authentication disabled: senders and receivers use
Microsoft Entra ID, and Event Grid delivers with its system topic's managed identity.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_azure_native as azure_native

from mlassets_infra import roles
from mlassets_infra.config import Settings
from mlassets_infra.storage import Storage

BLOB_CREATED = "Microsoft.Storage.BlobCreated"


def iso_duration(seconds: int) -> str:
    """ISO 8601 duration as Service Bus reports it (90 -> PT1M30S)."""
    minutes, rest = divmod(int(seconds), 60)
    return "PT" + (f"{minutes}M" if minutes else "") + (f"{rest}S" if rest or not minutes else "")


def host_of(endpoint: str) -> str:
    """`https://ns.servicebus.windows.net:443/` -> `ns.servicebus.windows.net`."""
    return endpoint.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0]


@dataclass
class EventHubs:
    namespace: azure_native.eventhub.Namespace
    hub: azure_native.eventhub.EventHub
    consumer_group: azure_native.eventhub.ConsumerGroup

    @property
    def host(self) -> pulumi.Output[str]:
        return self.namespace.service_bus_endpoint.apply(host_of)


@dataclass
class ServiceBus:
    namespace: azure_native.servicebus.Namespace
    queue: azure_native.servicebus.Queue

    @property
    def host(self) -> pulumi.Output[str]:
        return self.namespace.service_bus_endpoint.apply(host_of)


@dataclass
class BlobEvents:
    topic: azure_native.eventgrid.SystemTopic
    sender: azure_native.authorization.RoleAssignment
    subscription: azure_native.eventgrid.SystemTopicEventSubscription


def event_hubs(settings: Settings, resource_group: pulumi.Input[str]) -> EventHubs:
    namespace = azure_native.eventhub.Namespace(
        "eventhubs",
        namespace_name=settings.name("eh"),
        resource_group_name=resource_group,
        location=settings.location,
        sku={"name": "Standard", "tier": "Standard", "capacity": settings.event_hub_capacity},
        kafka_enabled=True,
        disable_local_auth=True,
        minimum_tls_version="1.2",
    )
    hub = azure_native.eventhub.EventHub(
        "digits",
        event_hub_name=settings.event_hub_name,
        namespace_name=namespace.name,
        resource_group_name=resource_group,
        partition_count=settings.event_hub_partitions,
        retention_description={
            "cleanup_policy": "Delete",
            "retention_time_in_hours": settings.event_hub_retention_days * 24,
        },
    )
    group = azure_native.eventhub.ConsumerGroup(
        "landing",
        consumer_group_name=settings.event_hub_consumer_group,
        event_hub_name=hub.name,
        namespace_name=namespace.name,
        resource_group_name=resource_group,
        user_metadata="mlassets: the landing step reads the hub with this group",
    )
    return EventHubs(namespace, hub, group)


def service_bus(settings: Settings, resource_group: pulumi.Input[str]) -> ServiceBus:
    namespace = azure_native.servicebus.Namespace(
        "servicebus",
        namespace_name=settings.name("sb"),
        resource_group_name=resource_group,
        location=settings.location,
        sku={"name": "Standard", "tier": "Standard"},
        disable_local_auth=True,
        minimum_tls_version="1.2",
    )
    queue = azure_native.servicebus.Queue(
        "commands",
        queue_name=settings.queue_name,
        namespace_name=namespace.name,
        resource_group_name=resource_group,
        lock_duration=iso_duration(settings.queue_lock_seconds),
        max_delivery_count=settings.queue_max_delivery_count,
        dead_lettering_on_message_expiration=True,
    )
    return ServiceBus(namespace, queue)


def blob_events(
    settings: Settings,
    resource_group: pulumi.Input[str],
    storage: Storage,
    bus: ServiceBus,
    subscription_id: str,
) -> BlobEvents:
    """BlobCreated under `<lake>/<prefix>/incoming/` -> the command queue, sent with the system
    topic's own identity (no SAS key, nothing to rotate)."""
    topic = azure_native.eventgrid.SystemTopic(
        "storage-events",
        system_topic_name=settings.name("storage-events"),
        resource_group_name=resource_group,
        location=settings.location,
        source=storage.account.id,
        topic_type="Microsoft.Storage.StorageAccounts",
        identity={"type": "SystemAssigned"},
    )
    sender = roles.assign(
        "events-to-queue",
        principal_id=topic.identity.apply(lambda i: i.principal_id),
        role="Azure Service Bus Data Sender",
        scope=bus.queue.id,
        subscription_id=subscription_id,
    )
    subscription = azure_native.eventgrid.SystemTopicEventSubscription(
        "incoming-blobs",
        event_subscription_name="incoming-to-queue",
        system_topic_name=topic.name,
        resource_group_name=resource_group,
        event_delivery_schema="EventGridSchema",
        filter={
            "included_event_types": [BLOB_CREATED],
            "subject_begins_with": settings.incoming_subject_prefix,
        },
        delivery_with_resource_identity={
            "identity": {"type": "SystemAssigned"},
            # A union of destination kinds: the SDK passes its keys as written (wire names).
            "destination": {"endpointType": "ServiceBusQueue", "resourceId": bus.queue.id},
        },
        retry_policy={"max_delivery_attempts": 30, "event_time_to_live_in_minutes": 1440},
        opts=pulumi.ResourceOptions(depends_on=[sender]),
    )
    return BlobEvents(topic, sender, subscription)
