"""The event source role: Azure Event Hubs, or its embedded twin, behind one interface.

The sensor needs partition ids and partition properties (cheap, O(partitions)); the landing
step needs "events first..last of partition p", bounded in time; the simulator needs to
publish. Both implementations return events as RAW_EVENT_SCHEMA tables.
"""

from __future__ import annotations

import json
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from datetime import UTC
from pathlib import Path

import dagster as dg
import pyarrow as pa
from pydantic import Field, PrivateAttr

from mlassets.embedded.eventlog import EventLog, PartitionProperties
from mlassets.events import RAW_EVENT_SCHEMA, raw_events_table

__all__ = [
    "AzureEventHub",
    "EmbeddedEventHub",
    "EventHubResource",
    "IncompleteReadError",
    "PartitionProperties",
]


class IncompleteReadError(RuntimeError):
    """The hub did not deliver a whole requested range within the wait limit."""


class EventHubResource(dg.ConfigurableResource, ABC):
    """What the platform needs from an event hub."""

    @property
    @abstractmethod
    def hub_name(self) -> str: ...

    @abstractmethod
    def partition_ids(self) -> list[str]: ...

    @abstractmethod
    def partition_properties(self, partition_id: str) -> PartitionProperties: ...

    @abstractmethod
    def read_range(self, partition_id: str, first: int, last: int) -> pa.Table:
        """Events first..last (inclusive) of one partition, in order.

        Events already expired from the hub are simply absent; a range that is retained but
        not delivered in time raises IncompleteReadError, so a caller never mistakes a slow
        read for an empty one.
        """

    @abstractmethod
    def publish(
        self, bodies: Sequence[bytes], partition_keys: Sequence[str | None] | None = None,
        properties: dict[str, str] | None = None,
    ) -> int:
        """Send events; returns how many were acknowledged by the hub."""

    def all_partition_properties(self) -> list[PartitionProperties]:
        return [self.partition_properties(p) for p in self.partition_ids()]


class EmbeddedEventHub(EventHubResource):
    """The embedded twin: a durable partitioned log in a SQLite file (see embedded.eventlog)."""

    path: str = Field(description="SQLite file of the log")
    name: str = Field(default="digits", description="hub name, for run keys and display")
    partitions: int = Field(default=4, description="partition count, fixed when the file is created")

    _log: EventLog | None = PrivateAttr(default=None)

    @property
    def log(self) -> EventLog:
        if self._log is None:
            self._log = EventLog(Path(self.path), self.partitions)
        return self._log

    @property
    def hub_name(self) -> str:
        return self.name

    def partition_ids(self) -> list[str]:
        return self.log.partition_ids()

    def partition_properties(self, partition_id: str) -> PartitionProperties:
        return self.log.partition_properties(partition_id)

    def read_range(self, partition_id: str, first: int, last: int) -> pa.Table:
        return self.log.read(partition_id, first, last)

    def publish(self, bodies, partition_keys=None, properties=None) -> int:
        return len(self.log.append(bodies, partition_keys=partition_keys, properties=properties))


class AzureEventHub(EventHubResource):
    """Azure Event Hubs through `azure-eventhub` (connection string or DefaultAzureCredential)."""

    eventhub_name: str = Field(description="the event hub")
    fully_qualified_namespace: str | None = Field(
        default=None, description="<namespace>.servicebus.windows.net; used with DefaultAzureCredential"
    )
    connection_string: str | None = Field(default=None, description="instead of namespace + credential")
    consumer_group: str = "$Default"
    #: How long a range read may wait for events that the partition says exist.
    max_wait_seconds: float = 60.0
    max_batch_size: int = 1000

    @property
    def hub_name(self) -> str:
        return self.eventhub_name

    def _client_kwargs(self) -> dict:
        if self.connection_string:
            return {"conn_str": self.connection_string, "eventhub_name": self.eventhub_name}
        if not self.fully_qualified_namespace:
            raise ValueError(
                "set MLASSETS_EVENTHUB_CONNECTION_STRING or MLASSETS_EVENTHUB_NAMESPACE"
            )
        from azure.identity import DefaultAzureCredential

        return {
            "fully_qualified_namespace": self.fully_qualified_namespace,
            "eventhub_name": self.eventhub_name,
            "credential": DefaultAzureCredential(),
        }

    def consumer(self):
        from azure.eventhub import EventHubConsumerClient

        kwargs = self._client_kwargs()
        if "conn_str" in kwargs:
            return EventHubConsumerClient.from_connection_string(
                consumer_group=self.consumer_group, **kwargs
            )
        return EventHubConsumerClient(consumer_group=self.consumer_group, **kwargs)

    def producer(self):
        from azure.eventhub import EventHubProducerClient

        kwargs = self._client_kwargs()
        if "conn_str" in kwargs:
            return EventHubProducerClient.from_connection_string(**kwargs)
        return EventHubProducerClient(**kwargs)

    def partition_ids(self) -> list[str]:
        with self.consumer() as client:
            return list(client.get_partition_ids())

    def partition_properties(self, partition_id: str) -> PartitionProperties:
        with self.consumer() as client:
            p = client.get_partition_properties(partition_id)
        return PartitionProperties(
            partition_id=str(p["id"]),
            beginning_sequence_number=int(p["beginning_sequence_number"]),
            last_enqueued_sequence_number=int(p["last_enqueued_sequence_number"]),
            last_enqueued_offset=int(p["last_enqueued_offset"] or -1),
            last_enqueued_time=p.get("last_enqueued_time_utc"),
            is_empty=bool(p["is_empty"]),
        )

    def read_range(self, partition_id: str, first: int, last: int) -> pa.Table:
        """Receive from `first` (inclusive) until `last` arrives, bounded by max_wait_seconds."""
        begin = self.partition_properties(partition_id).beginning_sequence_number
        start = max(first, begin)
        if start > last:
            return RAW_EVENT_SCHEMA.empty_table()
        rows: list[tuple] = []
        done = threading.Event()
        progress = [time.monotonic()]

        def on_batch(_ctx, events) -> None:
            for ev in events:
                seq = ev.sequence_number
                if seq > last:
                    done.set()
                    return
                if seq >= start:
                    rows.append(_event_row(ev))
                    if seq == last:
                        done.set()
                        return
            progress[0] = time.monotonic()

        client = self.consumer()
        worker = threading.Thread(
            target=client.receive_batch,
            kwargs={
                "on_event_batch": on_batch,
                "partition_id": partition_id,
                "starting_position": start,
                "starting_position_inclusive": True,
                "max_batch_size": self.max_batch_size,
                "max_wait_time": 1.0,
            },
            daemon=True,
        )
        worker.start()
        try:
            while not done.wait(0.2):
                if time.monotonic() - progress[0] > self.max_wait_seconds:
                    break
        finally:
            client.close()
            worker.join(timeout=10)
        got_last = rows[-1][0] if rows else None
        if got_last != last:
            raise IncompleteReadError(
                f"event hub {self.eventhub_name!r} partition {partition_id}: asked for sequence "
                f"numbers {start}..{last}, received {len(rows)} events"
                f"{f' up to {got_last}' if rows else ''} within {self.max_wait_seconds:.0f}s"
            )
        return raw_events_table(partition_id, rows)

    def publish(self, bodies, partition_keys=None, properties=None) -> int:
        from azure.eventhub import EventData

        groups: dict[str | None, list[bytes]] = {}
        for i, body in enumerate(bodies):
            groups.setdefault(partition_keys[i] if partition_keys else None, []).append(body)
        sent = 0
        with self.producer() as producer:
            for key, group in groups.items():
                batch = producer.create_batch(partition_key=key)
                for body in group:
                    event = EventData(body)
                    if properties:
                        event.properties = dict(properties)
                    try:
                        batch.add(event)
                    except ValueError:  # batch full: send it and start another
                        producer.send_batch(batch)
                        sent += len(batch)
                        batch = producer.create_batch(partition_key=key)
                        batch.add(event)
                if len(batch):
                    producer.send_batch(batch)
                    sent += len(batch)
        return sent


def _event_row(ev) -> tuple:
    enqueued = ev.enqueued_time
    if enqueued is not None and enqueued.tzinfo is None:
        enqueued = enqueued.replace(tzinfo=UTC)
    props = ev.properties or {}
    props = {
        (k.decode() if isinstance(k, bytes) else str(k)): (v.decode() if isinstance(v, bytes) else v)
        for k, v in props.items()
    }
    offset = ev.offset
    return (
        ev.sequence_number,
        int(offset) if offset is not None else None,
        enqueued,
        ev.partition_key.decode() if isinstance(ev.partition_key, bytes) else ev.partition_key,
        json.dumps(props, sort_keys=True, default=str) if props else None,
        b"".join(ev.body) if not isinstance(ev.body, bytes | bytearray) else bytes(ev.body),
    )

