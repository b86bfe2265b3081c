"""The event source role: Azure Event Hubs, or its embedded twin, behind one interface.

The sensor needs partition ids and partition properties (cheap, O(partitions)); the landing
step needs "events first..last of partition p", bounded in time; the simulator needs to
publish. Both implementations return events as RAW_EVENT_SCHEMA tables.

This module holds the interface (`EventHubResource`), its error and the Azure implementation;
the embedded twin (`EmbeddedEventHub`) lives with the other twins and implements the interface.
"""

from __future__ import annotations

import json
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from datetime import UTC
from typing import TYPE_CHECKING

import dagster as dg
from pydantic import Field, PrivateAttr

from mlassets.lib.partitions import PartitionProperties
from mlassets.roles.amqp import body_bytes, text

if TYPE_CHECKING:  # the event classes load pyarrow: only the methods that move events need them
    import pyarrow as pa

__all__ = [
    "AzureEventHub",
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
        self,
        bodies: Sequence[bytes],
        partition_keys: Sequence[str | None] | None = None,
        properties: dict[str, str] | None = None,
    ) -> int:
        """Send events; returns how many were acknowledged by the hub."""

    def all_partition_properties(self) -> list[PartitionProperties]:
        return [self.partition_properties(p) for p in self.partition_ids()]


class AzureEventHub(EventHubResource):
    """Azure Event Hubs through `azure-eventhub` (connection string or DefaultAzureCredential)."""

    eventhub_name: str = Field(description="the event hub")
    fully_qualified_namespace: str | None = Field(
        default=None,
        description="<namespace>.servicebus.windows.net; used with DefaultAzureCredential",
    )
    connection_string: str | None = Field(
        default=None, description="instead of namespace + credential"
    )
    consumer_group: str = "$Default"
    #: How long a range read may go without receiving any event of the range before it
    #: gives up (IncompleteReadError); a slow stream that keeps delivering is not cut off.
    max_wait_seconds: float = 60.0
    max_batch_size: int = 1000

    #: One credential per resource, created on first use: it caches its tokens, so every
    #: client of this resource reuses them instead of fetching a new token per call.
    _credential: object | None = PrivateAttr(default=None)

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
        if self._credential is None:
            from azure.identity import DefaultAzureCredential

            self._credential = DefaultAzureCredential()
        return {
            "fully_qualified_namespace": self.fully_qualified_namespace,
            "eventhub_name": self.eventhub_name,
            "credential": self._credential,
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
            return _partition_properties(client.get_partition_properties(partition_id))

    def all_partition_properties(self) -> list[PartitionProperties]:
        """One connection for the whole hub, not one per partition (the sensor calls this
        every tick)."""
        with self.consumer() as client:
            return [
                _partition_properties(client.get_partition_properties(pid))
                for pid in client.get_partition_ids()
            ]

    def read_range(self, partition_id: str, first: int, last: int) -> pa.Table:
        """Receive from `first` (inclusive) until `last` arrives, bounded by max_wait_seconds."""
        from mlassets.lib.events import RAW_EVENT_SCHEMA, raw_events_table

        begin = self.partition_properties(partition_id).beginning_sequence_number
        start = max(first, begin)
        if start > last:
            return RAW_EVENT_SCHEMA.empty_table()
        rows: list[tuple] = []
        finished = threading.Event()  # the range is complete, or the read cannot go on
        complete = [False]
        progress = [time.monotonic()]
        errors: list[str] = []

        def on_batch(_ctx, events) -> None:
            if not events:  # a wake-up without events is not progress
                return
            progress[0] = time.monotonic()
            try:
                take(events)
            except Exception as exc:
                # The SDK would hand this to on_error and deliver the same events again,
                # for ever; a failure on the events themselves ends the read at once.
                errors.append(f"{exc!r} while reading the events")
                finished.set()

        def take(events) -> None:
            for ev in events:
                seq = ev.sequence_number
                prev = rows[-1][0] if rows else None
                # The SDK re-opens a broken link at the last received offset, inclusive, and
                # a re-claimed partition starts over at `start`: an event may come twice.
                if seq < start or (prev is not None and seq <= prev):
                    continue
                # Sequence numbers are contiguous and events expire only from the front, so
                # a hole after the first received event is never expiry: landing past it
                # would lose events for good.
                if prev is not None and seq != prev + 1:
                    errors.append(f"sequence numbers {prev + 1}..{min(seq - 1, last)} missing")
                    finished.set()
                    return
                # Past `last` nothing of the range is still to come: whatever is missing
                # before the first received event expired while the read was in flight.
                if seq > last:
                    complete[0] = True
                    finished.set()
                    return
                rows.append(_event_row(ev))
                if seq == last:
                    complete[0] = True
                    finished.set()
                    return

        def on_error(_ctx, error: Exception) -> None:  # the SDK retries; keep the cause
            errors.append(repr(error))

        def receive() -> None:
            try:
                client.receive_batch(
                    on_event_batch=on_batch,
                    on_error=on_error,
                    partition_id=partition_id,
                    starting_position=start,  # an int is a sequence number to the SDK
                    starting_position_inclusive=True,
                    max_batch_size=self.max_batch_size,
                    # None: a partial batch is handed over at once, not held for a timer.
                    max_wait_time=None,
                )
            except Exception as exc:
                errors.append(repr(exc))
                finished.set()

        client = self.consumer()
        worker = threading.Thread(target=receive, daemon=True)
        worker.start()
        try:
            while not finished.wait(0.05):
                if time.monotonic() - progress[0] > self.max_wait_seconds:
                    break
        finally:
            client.close()
            worker.join(timeout=10)
        if not complete[0]:
            got = f" up to {rows[-1][0]}" if rows else ""
            cause = f"; {errors[-1]}" if errors else ""
            raise IncompleteReadError(
                f"event hub {self.eventhub_name!r} partition {partition_id}: asked for sequence "
                f"numbers {start}..{last}, received {len(rows)} events{got} "
                f"within {self.max_wait_seconds:g}s{cause}"
            )
        return raw_events_table(partition_id, rows)

    def publish(self, bodies, partition_keys=None, properties=None) -> int:
        from azure.eventhub import EventData

        if partition_keys is not None and len(partition_keys) != len(bodies):
            raise ValueError("partition_keys must have one entry per body")
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
                        if not len(batch):
                            raise ValueError(
                                f"an event of {len(body)} bytes does not fit in an Event Hubs "
                                f"batch of {batch.max_size_in_bytes} bytes"
                            ) from None
                        producer.send_batch(batch)
                        sent += len(batch)
                        batch = producer.create_batch(partition_key=key)
                        batch.add(event)
                if len(batch):
                    producer.send_batch(batch)
                    sent += len(batch)
        return sent


def _offset(value: object) -> int | None:
    """Offsets are opaque strings to the service; on geo-replicated namespaces they need not
    be numbers. Positions are sequence numbers here, so a non-numeric offset is just absent."""
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _partition_properties(p: dict) -> PartitionProperties:
    """The SDK's `get_partition_properties` dict, in the platform's terms."""
    last_seq = int(p["last_enqueued_sequence_number"])
    when = p.get("last_enqueued_time_utc")
    if last_seq < 0 or (when is not None and when.year <= 1):  # never written: no time
        when = None
    elif when is not None and when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    offset = _offset(p.get("last_enqueued_offset"))
    return PartitionProperties(
        partition_id=str(p["id"]),
        beginning_sequence_number=int(p["beginning_sequence_number"]),
        last_enqueued_sequence_number=last_seq,
        last_enqueued_offset=offset if offset is not None else -1,
        last_enqueued_time=when,
        is_empty=bool(p["is_empty"]),
    )


def _body_bytes(ev) -> bytes | None:
    """The event body as bytes, whatever AMQP body the producer chose: a data body (what the
    Event Hubs SDKs send) is joined; a value or sequence body is serialized, so a foreign
    producer's event is landed or quarantined instead of failing the whole range."""
    try:
        body = ev.body
    except ValueError:  # a message without a body section
        return None
    if body is None:
        return None
    return body_bytes(body, ev.body_type)


def _event_row(ev) -> tuple:
    enqueued = ev.enqueued_time
    if enqueued is not None and enqueued.tzinfo is None:
        enqueued = enqueued.replace(tzinfo=UTC)
    props = {str(text(k)): text(v) for k, v in (ev.properties or {}).items()}
    key = ev.partition_key
    return (
        ev.sequence_number,
        _offset(ev.offset),
        enqueued,
        text(key) if key is not None else None,
        json.dumps(props, sort_keys=True, default=str) if props else None,
        _body_bytes(ev),
    )
