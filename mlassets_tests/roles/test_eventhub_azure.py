"""AzureEventHub with the real azure-eventhub SDK in the loop, faked only where the network is.

There is no Event Hubs emulator, so the clients are the SDK's own classes with the AMQP round
trips replaced by `FakeEventHubsService`:

- management requests (partition ids and properties) are answered with the maps the service
  sends, and the SDK's own code turns them into its dicts;
- received events are AMQP messages encoded the way the service sends them (annotations
  x-opt-sequence-number, x-opt-offset, x-opt-enqueued-time, x-opt-partition-key) and decoded
  by the SDK's decoder into real `EventData`, exactly as its receive link does;
- published events go through the real `create_batch` and `EventDataBatch.add` (size limit
  included); the service side decodes the encoded messages of each batch it is sent.

`receive_batch` is the one behaviour the fake re-implements: it blocks until `close()` is
called from another thread, turns the starting position into the filter the SDK would send
(with the SDK's own `event_position_selector`), and reproduces the SDK's recovery paths
(re-opening a link at the last received offset, re-claiming a partition from its starting
position), which deliver events a second time.
"""

from __future__ import annotations

import inspect
import json
import re
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest
from azure.core.credentials import AzureNamedKeyCredential
from azure.eventhub import (
    EventData,
    EventDataBatch,
    EventHubConsumerClient,
    EventHubProducerClient,
    PartitionContext,
)
from azure.eventhub._client_base import EventHubSharedKeyCredential
from azure.eventhub._pyamqp._decode import decode_payload
from azure.eventhub._pyamqp._encode import encode_payload
from azure.eventhub._pyamqp.message import Message
from azure.eventhub._pyamqp.types import TYPE, VALUE, AMQPTypes
from azure.eventhub._utils import event_position_selector
from azure.eventhub.exceptions import AuthenticationError, ConnectionLostError

import mlassets.roles.eventhub as eventhub_module
from mlassets.lib.events import RAW_EVENT_SCHEMA
from mlassets.lib.landing import EventRange, land_range
from mlassets.roles.eventhub import AzureEventHub, IncompleteReadError
from mlassets.roles.storage import LakeStorage

# A read that hangs is a failure, not a stuck suite.
pytestmark = pytest.mark.timeout(30)

NAMESPACE = "fake-ns.servicebus.windows.net"
HUB = "digits"
CONNECTION_STRING = (
    f"Endpoint=sb://{NAMESPACE}/;SharedAccessKeyName=listen;SharedAccessKey=bm90LWEta2V5"
)
T0_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z, the enqueued time of sequence number 0
#: What the service reports as the last enqueued time of a partition never written to.
CE_ZERO_MS = -62_135_596_800_000


# -- the service side of the AMQP connection ------------------------------------------------


@dataclass
class StoredEvent:
    seq: int
    offset: str
    enqueued_ms: int
    wire: bytes  # the AMQP message as the service sends it to a receiver


@dataclass
class Partition:
    events: list[StoredEvent] = field(default_factory=list)
    beginning: int = 0
    next_seq: int = 0
    next_offset: int = 0
    last_offset: str = "-1"
    last_enqueued_ms: int = CE_ZERO_MS
    #: Offsets that are not numbers (geo-replicated namespaces).
    opaque_offsets: bool = False
    # How the receive link misbehaves, for the failure cases:
    stall_after: int | None = None  # nothing past this sequence number is delivered
    delay: float = 0.0  # seconds before each batch is handed over
    skip: set[int] = field(default_factory=set)  # never delivered
    drop_link_after: int | None = None  # the SDK re-opens the link (retry)
    lose_ownership_after: int | None = None  # the SDK's processor re-claims the partition
    link_error: Exception | None = None  # reported through on_error; nothing arrives
    expire_on_receive: int | None = None  # retention moves here as the receive starts


_SELECTOR = re.compile(
    r"amqp\.annotation\.x-opt-(sequence-number|offset|enqueued-time) (>=|>) '(.*)'"
)


class FakeEventHubsService:
    """The state and behaviour of one event hub, as seen through the AMQP connection."""

    def __init__(self, partition_count: int = 2, max_message_size: int = 1024 * 1024) -> None:
        self.partitions = {str(i): Partition() for i in range(partition_count)}
        self.max_message_size = max_message_size
        self.consumers: list[FakeConsumerClient] = []
        self.producers: list[FakeProducerClient] = []
        self.receives: list[dict] = []  # the arguments of every receive_batch call
        self.selectors: list[bytes] = []  # the filter each receive link was opened with
        self.batches: list[list[Message]] = []  # what each send_batch delivered
        self._round_robin = 0

    # -- contents --------------------------------------------------------------------------

    def add(
        self,
        partition_id: str,
        body: bytes | None = None,
        *,
        key: str | None = None,
        properties: dict | None = None,
        message: Message | None = None,
    ) -> int:
        """Append one event as if a producer had sent it; returns its sequence number."""
        if message is None:
            message = Message(data=[body], application_properties=properties)
        return self._enqueue(partition_id, message, key)

    def fill(self, partition_id: str, count: int, **kwargs) -> list[int]:
        return [self.add(partition_id, b'{"n": %d}' % i, **kwargs) for i in range(count)]

    def expire(self, partition_id: str, before: int) -> None:
        """Retention: events before `before` are gone and the beginning moves."""
        p = self.partitions[partition_id]
        p.events = [e for e in p.events if e.seq >= before]
        p.beginning = before

    def _enqueue(self, partition_id: str, message: Message, key: str | None) -> int:
        p = self.partitions[partition_id]
        seq = p.next_seq
        offset = f"g{seq}:{p.next_offset}" if p.opaque_offsets else str(p.next_offset)
        enqueued_ms = T0_MS + 1000 * seq + 7
        annotations = {
            b"x-opt-sequence-number": {TYPE: AMQPTypes.long, VALUE: seq},
            b"x-opt-offset": {TYPE: AMQPTypes.string, VALUE: offset},
            b"x-opt-enqueued-time": {TYPE: AMQPTypes.timestamp, VALUE: enqueued_ms},
        }
        if key is not None:
            annotations[b"x-opt-partition-key"] = {TYPE: AMQPTypes.string, VALUE: key}
        stamped = message._replace(
            message_annotations={**(message.message_annotations or {}), **annotations}
        )
        wire = bytes(encode_payload(bytearray(), stamped))
        p.events.append(StoredEvent(seq, offset, enqueued_ms, wire))
        p.next_seq += 1
        p.next_offset += len(wire)
        p.last_offset, p.last_enqueued_ms = offset, enqueued_ms
        return seq

    def offsets(self, partition_id: str) -> dict[int, str]:
        return {e.seq: e.offset for e in self.partitions[partition_id].events}

    def received(self, partition_id: str) -> list[EventData]:
        """The stored events, as a receiver would get them."""
        return [_to_event_data(e) for e in self.partitions[partition_id].events]

    # -- management link -------------------------------------------------------------------

    def management(self, mgmt_msg, op_type: bytes) -> SimpleNamespace:
        if op_type == b"com.microsoft:eventhub":
            return SimpleNamespace(
                value={
                    b"name": HUB.encode(),
                    b"created_at": T0_MS,
                    b"partition_ids": [pid.encode() for pid in self.partitions],
                }
            )
        assert op_type == b"com.microsoft:partition", op_type
        pid = mgmt_msg.application_properties["partition"]
        p = self.partitions[pid]
        return SimpleNamespace(
            value={
                b"name": HUB.encode(),
                b"partition": pid.encode(),
                b"begin_sequence_number": p.beginning,
                b"last_enqueued_sequence_number": p.next_seq - 1,
                b"last_enqueued_offset": p.last_offset.encode(),
                b"last_enqueued_time_utc": p.last_enqueued_ms,
                b"is_partition_empty": not p.events,
            }
        )

    # -- receive link ----------------------------------------------------------------------

    def serve(self, consumer_group: str, stop: threading.Event, args: dict) -> None:
        """What `receive_batch` does for one partition, until the client is closed."""
        pid = args["partition_id"]
        p = self.partitions[pid]
        ctx = PartitionContext(NAMESPACE, HUB, consumer_group, pid)
        on_batch, on_error = args["on_event_batch"], args["on_error"]
        max_batch, max_wait = args["max_batch_size"], args["max_wait_time"]
        inclusive = args["starting_position_inclusive"]
        if p.expire_on_receive is not None:
            self.expire(pid, p.expire_on_receive)
        if p.link_error is not None:
            if on_error:
                on_error(ctx, p.link_error)
            stop.wait()
            return
        initial = event_position_selector(args["starting_position"], inclusive)
        self.selectors.append(initial)
        wanted = self._filter(p, initial)
        delivered = -1
        window = time.monotonic()
        while not stop.is_set():
            pending = [
                e
                for e in p.events
                if e.seq > delivered
                and wanted(e)
                and e.seq not in p.skip
                and (p.stall_after is None or e.seq <= p.stall_after)
            ][:max_batch]
            # The SDK hands a batch over when it is full, at once without max_wait_time,
            # else when max_wait_time has passed (then possibly empty).
            if not (
                (pending and (len(pending) >= max_batch or not max_wait))
                or (max_wait and time.monotonic() - window >= max_wait)
            ):
                stop.wait(0.005)
                continue
            if p.delay and stop.wait(p.delay):
                break
            events = [_to_event_data(e) for e in pending]
            try:
                on_batch(ctx, events)
            except Exception as exc:  # the processor reports it and re-claims the partition
                if on_error:
                    on_error(ctx, exc)
                wanted, delivered = self._filter(p, initial), -1
                continue
            window = time.monotonic()
            if not events:
                continue
            delivered = events[-1].sequence_number
            if p.drop_link_after is not None and delivered >= p.drop_link_after:
                # EventHubConsumer.receive retries a broken link from the last received
                # event's offset, with the inclusive flag of the original position.
                p.drop_link_after = None
                wanted = self._filter(p, event_position_selector(events[-1].offset, inclusive))
                delivered = -1
            if p.lose_ownership_after is not None and delivered >= p.lose_ownership_after:
                # EventProcessor._do_receive: on_error, close the consumer, claim the
                # partition again, from the starting position (no checkpoint store).
                p.lose_ownership_after = None
                if on_error:
                    on_error(ctx, ConnectionLostError("link detached"))
                wanted, delivered = self._filter(p, initial), -1

    @staticmethod
    def _filter(p: Partition, selector: bytes) -> Callable[[StoredEvent], bool]:
        """The service side of the SDK's event position filter."""
        m = _SELECTOR.fullmatch(selector.decode())
        assert m, selector
        kind, op, value = m.groups()
        if kind == "offset":  # opaque to the client: compared by position in the partition
            if value == "-1":
                return lambda e: True
            if value == "@latest":
                latest = p.next_seq
                return lambda e: e.seq >= latest
            at = next(e.seq for e in p.events if e.offset == value)
            attr, bound = "seq", at
        else:
            attr = "seq" if kind == "sequence-number" else "enqueued_ms"
            bound = int(value)
        if op == ">=":
            return lambda e: getattr(e, attr) >= bound
        return lambda e: getattr(e, attr) > bound

    # -- send link -------------------------------------------------------------------------

    def accept(self, batch: EventDataBatch) -> None:
        assert isinstance(batch, EventDataBatch)
        assert batch.size_in_bytes <= self.max_message_size, "the service refuses the batch"
        messages = [decode_payload(memoryview(bytes(d))) for d in batch._message.data]
        self.batches.append(messages)
        if not messages:
            return
        raw_key = (messages[0].message_annotations or {}).get(b"x-opt-partition-key")
        key = raw_key.decode() if raw_key is not None else None
        if key is not None:
            pid = str(zlib.crc32(key.encode()) % len(self.partitions))
        else:
            pid = str(self._round_robin % len(self.partitions))
            self._round_robin += 1
        for message in messages:
            self._enqueue(pid, message, key)


def _to_event_data(stored: StoredEvent) -> EventData:
    """What the SDK's receive link does with an incoming message."""
    return EventData._from_message(decode_payload(memoryview(stored.wire)))


# -- the SDK clients, with the network replaced ---------------------------------------------

_RECEIVE_BATCH = inspect.signature(EventHubConsumerClient.receive_batch)
_SEND_BATCH = inspect.signature(EventHubProducerClient.send_batch)


class FakeConsumerClient(EventHubConsumerClient):
    """The real consumer client; its management and receive round trips go to the fake."""

    def __init__(self, service: FakeEventHubsService, consumer_group: str) -> None:
        super().__init__(
            fully_qualified_namespace=NAMESPACE,
            eventhub_name=HUB,
            consumer_group=consumer_group,
            credential=AzureNamedKeyCredential("fake", "fake"),
        )
        self._service = service
        self._fake_stop = threading.Event()
        self.receiving = False
        service.consumers.append(self)

    @property
    def closed(self) -> bool:
        return self._fake_stop.is_set()

    def _management_request(self, mgmt_msg, op_type):
        return self._service.management(mgmt_msg, op_type)

    def receive_batch(self, on_event_batch, **kwargs):
        bound = _RECEIVE_BATCH.bind(self, on_event_batch, **kwargs)
        # The SDK swallows unknown keywords; a misspelt one must not pass unnoticed here.
        if bound.arguments.get("kwargs"):
            raise TypeError(f"receive_batch() got unexpected {sorted(bound.arguments['kwargs'])}")
        bound.apply_defaults()
        args = {k: v for k, v in bound.arguments.items() if k not in ("self", "kwargs")}
        self._service.receives.append(args)
        self.receiving = True
        try:
            self._service.serve(self._consumer_group, self._fake_stop, args)
        finally:
            self.receiving = False

    def close(self) -> None:
        self._fake_stop.set()
        super().close()


class FakeProducerClient(EventHubProducerClient):
    """The real producer client; the link's size limit and send_batch go to the fake."""

    def __init__(self, service: FakeEventHubsService) -> None:
        super().__init__(
            fully_qualified_namespace=NAMESPACE,
            eventhub_name=HUB,
            credential=AzureNamedKeyCredential("fake", "fake"),
        )
        self._service = service
        # What the service announces when the send link opens; real create_batch uses it.
        self._max_message_size_on_link = service.max_message_size
        self.closed = False
        service.producers.append(self)

    def send_batch(self, event_data_batch, **kwargs) -> None:
        _SEND_BATCH.bind(self, event_data_batch, **kwargs)
        self._service.accept(event_data_batch)

    def close(self, **kwargs) -> None:
        self.closed = True
        super().close(**kwargs)


@pytest.fixture
def service(monkeypatch: pytest.MonkeyPatch) -> FakeEventHubsService:
    svc = FakeEventHubsService()
    monkeypatch.setattr(
        AzureEventHub, "consumer", lambda self: FakeConsumerClient(svc, self.consumer_group)
    )
    monkeypatch.setattr(AzureEventHub, "producer", lambda self: FakeProducerClient(svc))
    return svc


def azure_hub(**overrides) -> AzureEventHub:
    config = {"eventhub_name": HUB, "connection_string": CONNECTION_STRING, "max_wait_seconds": 5}
    return AzureEventHub(**{**config, **overrides})


def digit_body(sample_id: str) -> bytes:
    return json.dumps(
        {
            "sample_id": sample_id,
            "pixels": [i % 17 for i in range(64)],
            "source": "scanner-1",
            "captured_at": "2026-01-01T00:00:00+00:00",
        }
    ).encode()


def enqueued(seq: int) -> datetime:
    return datetime.fromtimestamp((T0_MS + 1000 * seq + 7) / 1000, UTC)


# -- partition properties -------------------------------------------------------------------


def test_partition_ids_are_the_hubs(service):
    assert azure_hub().partition_ids() == ["0", "1"]


def test_partition_properties_describe_what_the_partition_retains(service):
    service.fill("0", 5)
    service.expire("0", 2)

    props = azure_hub().partition_properties("0")

    assert props.partition_id == "0"
    assert props.beginning_sequence_number == 2
    assert props.last_enqueued_sequence_number == 4
    assert props.last_enqueued_offset == int(service.offsets("0")[4])
    assert props.last_enqueued_time == enqueued(4)
    assert props.last_enqueued_time.tzinfo is not None
    assert props.is_empty is False


def test_a_never_written_partition_is_empty_with_no_last_event(service):
    props = azure_hub().partition_properties("1")

    assert props.is_empty is True
    assert props.last_enqueued_sequence_number == -1
    assert props.last_enqueued_offset == -1
    # The service's "no time" sentinel (year 1) is not a time the sensor should show.
    assert props.last_enqueued_time is None


def test_all_partition_properties_share_one_connection(service):
    service.fill("1", 3)

    props = azure_hub().all_partition_properties()

    assert [(p.partition_id, p.last_enqueued_sequence_number) for p in props] == [
        ("0", -1),
        ("1", 2),
    ]
    assert len(service.consumers) == 1
    assert service.consumers[0].closed


# -- reading a range ------------------------------------------------------------------------


def test_read_range_returns_first_to_last_in_order_with_their_metadata(service):
    for i in range(6):
        service.add(
            "0",
            digit_body(f"s{i}"),
            key="scanner-1",
            properties={"source": "simulator", "schema": "digits/v1"},
        )

    table = azure_hub().read_range("0", 1, 4)

    assert table.schema == RAW_EVENT_SCHEMA
    rows = table.to_pylist()
    assert [r["sequence_number"] for r in rows] == [1, 2, 3, 4]
    assert [r["body"] for r in rows] == [digit_body(f"s{i}") for i in (1, 2, 3, 4)]
    assert [r["offset"] for r in rows] == [int(service.offsets("0")[i]) for i in (1, 2, 3, 4)]
    assert [r["enqueued_time"] for r in rows] == [enqueued(i) for i in (1, 2, 3, 4)]
    assert all(r["enqueued_time"].utcoffset() == timedelta(0) for r in rows)
    assert {r["partition_id"] for r in rows} == {"0"}
    assert {r["partition_key"] for r in rows} == {"scanner-1"}
    assert {r["properties"] for r in rows} == {
        json.dumps({"schema": "digits/v1", "source": "simulator"}, sort_keys=True)
    }


def test_read_range_positions_the_receiver_by_sequence_number_inclusive(service):
    service.fill("0", 6)

    azure_hub(consumer_group="landing").read_range("0", 3, 5)

    (call,) = service.receives
    assert call["partition_id"] == "0"
    assert call["starting_position"] == 3
    assert service.selectors == [b"amqp.annotation.x-opt-sequence-number >= '3'"]
    assert service.consumers[-1]._consumer_group == "landing"


def test_read_range_below_the_beginning_starts_at_the_beginning(service):
    service.fill("0", 8)
    service.expire("0", 3)  # retention took 0..2

    table = azure_hub().read_range("0", 0, 5)

    assert table["sequence_number"].to_pylist() == [3, 4, 5]
    assert service.selectors == [b"amqp.annotation.x-opt-sequence-number >= '3'"]


def test_read_range_of_an_expired_range_is_empty_without_receiving(service):
    service.fill("0", 8)
    service.expire("0", 6)

    table = azure_hub().read_range("0", 0, 5)

    assert table.num_rows == 0
    assert table.schema == RAW_EVENT_SCHEMA
    assert service.receives == []


def test_events_that_expire_while_the_read_is_under_way_are_absent_not_an_error(service):
    for pid in ("0", "1"):
        service.fill(pid, 10)
        # Retention moves on after the properties said "from 0", before events arrive.
        service.partitions[pid].expire_on_receive = 4

    assert azure_hub().read_range("0", 1, 6)["sequence_number"].to_pylist() == [4, 5, 6]
    assert azure_hub().read_range("1", 1, 3).num_rows == 0


def test_read_range_stops_when_last_arrives_and_closes_the_client(service):
    service.fill("0", 20)

    started = time.monotonic()
    table = azure_hub(max_wait_seconds=30).read_range("0", 2, 5)

    assert table["sequence_number"].to_pylist() == [2, 3, 4, 5]
    assert time.monotonic() - started < 5
    assert service.consumers and all(c.closed for c in service.consumers)
    assert not any(c.receiving for c in service.consumers)  # receive_batch returned


def test_a_range_not_delivered_in_time_raises_incomplete_read(service):
    service.fill("0", 10)
    service.partitions["0"].stall_after = 5

    started = time.monotonic()
    with pytest.raises(IncompleteReadError) as err:
        azure_hub(max_wait_seconds=0.3).read_range("0", 2, 9)

    message = str(err.value)
    assert "partition 0" in message
    assert "2..9" in message
    assert "received 4 events up to 5" in message
    assert time.monotonic() - started < 3
    assert all(c.closed for c in service.consumers)


def test_a_slow_stream_that_keeps_delivering_is_not_cut_off(service):
    service.fill("0", 6)
    service.partitions["0"].delay = 0.1  # per event: 0.6 s in all, each gap under the limit

    started = time.monotonic()
    table = azure_hub(max_wait_seconds=0.35, max_batch_size=1).read_range("0", 0, 5)

    assert table["sequence_number"].to_pylist() == [0, 1, 2, 3, 4, 5]
    assert time.monotonic() - started > 0.35


@pytest.mark.parametrize(
    "recovery",
    ["drop_link_after", "lose_ownership_after"],
    ids=["link-reopened-at-last-offset", "partition-claimed-again-from-start"],
)
def test_events_the_sdk_delivers_twice_are_read_once(service, recovery):
    service.fill("0", 10)
    setattr(service.partitions["0"], recovery, 4)

    table = azure_hub(max_batch_size=3).read_range("0", 0, 9)

    assert table["sequence_number"].to_pylist() == list(range(10))


def test_a_hole_inside_the_range_is_an_error_not_a_silent_loss(service):
    service.fill("0", 10)
    service.partitions["0"].skip = {4}

    with pytest.raises(IncompleteReadError, match=r"sequence numbers 4\.\.4 missing"):
        azure_hub().read_range("0", 2, 7)


def test_an_incomplete_read_names_the_error_the_sdk_reported(service):
    service.fill("0", 3)
    service.partitions["0"].link_error = AuthenticationError("Unauthorized: token expired")

    with pytest.raises(IncompleteReadError, match=r"received 0 events.*token expired"):
        azure_hub(max_wait_seconds=0.3).read_range("0", 0, 2)


def test_a_failure_on_the_events_ends_the_read_at_once(service, monkeypatch):
    service.fill("0", 3)

    def broken(ev):
        raise RuntimeError("cannot convert event")

    monkeypatch.setattr(eventhub_module, "_event_row", broken)
    started = time.monotonic()
    with pytest.raises(IncompleteReadError, match="cannot convert event"):
        azure_hub(max_wait_seconds=30).read_range("0", 0, 2)
    assert time.monotonic() - started < 5


def test_opaque_offsets_of_geo_replicated_hubs_are_absent_not_fatal(service):
    service.partitions["0"].opaque_offsets = True
    service.fill("0", 3)
    assert not service.offsets("0")[2].isdigit()

    hub = azure_hub()
    table = hub.read_range("0", 0, 2)

    assert table["sequence_number"].to_pylist() == [0, 1, 2]
    assert table["offset"].to_pylist() == [None, None, None]
    assert hub.partition_properties("0").last_enqueued_offset == -1


def test_events_from_foreign_amqp_producers_are_read_not_fatal(service):
    """A value body, a binary property that is not UTF-8, no body at all: the decoder
    quarantines what is wrong, the read must not wedge the partition."""
    service.add("0", message=Message(value=digit_body("v0").decode()))
    service.add("0", b"{}", properties={"blob": b"\xff\xfe"})
    service.add("0", message=Message())

    rows = azure_hub().read_range("0", 0, 2).to_pylist()

    assert [r["body"] for r in rows] == [digit_body("v0"), b"{}", None]
    assert json.loads(rows[1]["properties"]) == {"blob": "\ufffd\ufffd"}


# -- publishing -----------------------------------------------------------------------------


def test_publish_groups_by_key_splits_full_batches_and_counts_what_was_sent(service):
    service.max_message_size = 700
    bodies = [digit_body(f"p{i}")[:90] for i in range(12)]
    keys = ["a", "b", None] * 4

    sent = azure_hub().publish(bodies, keys, {"source": "simulator"})

    assert sent == 12
    assert len(service.batches) > 3  # three groups, and at least one was split
    assert all(service.batches)
    received = {pid: service.received(pid) for pid in service.partitions}
    events = [ev for evs in received.values() for ev in evs]
    assert sorted(b"".join(ev.body) for ev in events) == sorted(bodies)
    assert all(ev.properties == {b"source": b"simulator"} for ev in events)
    for key in ("a", "b"):
        holders = {
            pid for pid, evs in received.items() for e in evs if e.partition_key == key.encode()
        }
        assert len(holders) == 1  # one key, one partition
        in_order = [
            b"".join(e.body) for e in received[holders.pop()] if e.partition_key == key.encode()
        ]
        assert in_order == [b for b, k in zip(bodies, keys, strict=True) if k == key]
    assert service.producers and all(p.closed for p in service.producers)


def test_publish_refuses_an_event_too_large_for_any_batch(service):
    service.max_message_size = 300

    with pytest.raises(ValueError, match="does not fit"):
        azure_hub().publish([b"x" * 1000])
    assert not any(batch == [] for batch in service.batches)


def test_publish_needs_one_partition_key_per_body(service):
    with pytest.raises(ValueError, match="one entry per body"):
        azure_hub().publish([b"a", b"b"], ["k"])
    assert service.batches == []


# -- connecting -----------------------------------------------------------------------------


def test_a_connection_string_builds_sdk_clients_for_the_hub():
    hub = AzureEventHub(
        eventhub_name=HUB,
        connection_string=CONNECTION_STRING,
        fully_qualified_namespace="other.servicebus.windows.net",
        consumer_group="landing",
    )

    with hub.consumer() as consumer, hub.producer() as producer:
        assert isinstance(consumer, EventHubConsumerClient)
        assert isinstance(producer, EventHubProducerClient)
        for client in (consumer, producer):
            assert client.eventhub_name == HUB
            assert client._address.hostname == NAMESPACE  # the string wins over the namespace
            assert isinstance(client._credential, EventHubSharedKeyCredential)
        assert consumer._consumer_group == "landing"


def test_a_namespace_uses_one_default_azure_credential_created_on_first_use(monkeypatch):
    import azure.identity
    from azure.identity import DefaultAzureCredential

    for name in (
        "AZURE_CLIENT_ID",
        "AZURE_TENANT_ID",
        "AZURE_CLIENT_SECRET",
        "AZURE_FEDERATED_TOKEN_FILE",
        "AZURE_USERNAME",
        "IDENTITY_ENDPOINT",
        "MSI_ENDPOINT",
    ):
        monkeypatch.delenv(name, raising=False)
    created = []

    class CountedCredential(DefaultAzureCredential):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            created.append(self)

        def get_token(self, *scopes, **kwargs):
            raise AssertionError("building a client must not ask Azure for a token")

        get_token_info = get_token

    monkeypatch.setattr(azure.identity, "DefaultAzureCredential", CountedCredential)
    hub = AzureEventHub(eventhub_name=HUB, fully_qualified_namespace=NAMESPACE)
    assert created == []

    with hub.consumer() as consumer, hub.producer() as producer:
        assert len(created) == 1
        assert isinstance(created[0], DefaultAzureCredential)
        assert consumer._credential is created[0] and producer._credential is created[0]
        assert consumer._address.hostname == NAMESPACE
        assert consumer.eventhub_name == HUB


def test_neither_connection_string_nor_namespace_is_a_clear_error():
    with pytest.raises(
        ValueError, match="MLASSETS_EVENTHUB_CONNECTION_STRING or MLASSETS_EVENTHUB_NAMESPACE"
    ):
        AzureEventHub(eventhub_name=HUB).partition_ids()


# -- end to end -----------------------------------------------------------------------------


def test_land_range_lands_the_valid_events_and_quarantines_the_invalid_one(service, tmp_path):
    for i in range(8):
        service.add("0", b"not json" if i == 3 else digit_body(f"e{i}"), key="scanner-1")
    lake = LakeStorage(url=f"file://{tmp_path}/lake")
    rng = EventRange("0", 1, 5)

    result = land_range(azure_hub(), lake, rng)

    assert (result.read_events, result.landed_rows, result.quarantined_rows) == (5, 4, 1)
    assert result.expired == 0
    landed = pq.read_table(tmp_path / "lake" / rng.landed_path).to_pylist()
    assert [r["sequence_number"] for r in landed] == [1, 2, 4, 5]
    assert [r["sample_id"] for r in landed] == ["e1", "e2", "e4", "e5"]
    assert [r["offset"] for r in landed] == [int(service.offsets("0")[i]) for i in (1, 2, 4, 5)]
    assert [r["enqueued_time"] for r in landed] == [enqueued(i) for i in (1, 2, 4, 5)]
    (bad,) = pq.read_table(tmp_path / "lake" / rng.quarantine_path).to_pylist()
    assert (bad["sequence_number"], bad["body"]) == (3, b"not json")
    assert bad["reason"].startswith("invalid JSON")
