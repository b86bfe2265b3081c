"""AzureServiceBusQueue with the real azure-servicebus SDK in the loop, faked only where the
network is.

There is no Service Bus emulator here, so the clients, senders and receivers are the SDK's
own; only the two factories that open AMQP links (`PyamqpTransport.create_send_client` and
`create_receive_client`) are replaced, by links to `FakeServiceBus`, a broker that keeps the
service's semantics:

- a send link hands over the pyamqp `Message` the SDK built from a real `ServiceBusMessage`;
  the broker encodes it as it travels on the wire and stores the decoded copy;
- a receive link delivers what its link credit allows, as (transfer frame, message): the
  message carries the annotations the service adds (x-opt-sequence-number,
  x-opt-enqueued-time, x-opt-locked-until, the header's delivery count, which the service
  sends as DeliveryCount - 1) and the delivery tag is the lock token; the SDK's own code turns
  it into a real `ServiceBusReceivedMessage`;
- settlement comes back as AMQP outcomes on the link (accepted, modified, rejected with the
  com.microsoft:dead-letter error), and the broker refuses a delivery tag that is not on that
  link, as the service does;
- peeks are management requests answered with the encoded messages, decoded by the SDK;
- locks expire, count a delivery, and dead-letter after the max delivery count.
"""

import itertools
import json
import queue as stdlib_queue
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from types import SimpleNamespace

import dagster as dg
import pytest
from azure.servicebus import ServiceBusReceivedMessage
from azure.servicebus._pyamqp._decode import decode_payload
from azure.servicebus._pyamqp._encode import encode_payload
from azure.servicebus._pyamqp.message import BatchMessage, Header, Message
from azure.servicebus._pyamqp.types import TYPE, VALUE, AMQPTypes
from azure.servicebus._transport._pyamqp_transport import PyamqpTransport

from mlassets.roles.servicebus import (
    AzureServiceBusQueue,
    MessageLockLostError,
    ReceivedMessage,
)
from mlassets.roles.storage import LakeStorage

pytestmark = pytest.mark.timeout(60)

NAMESPACE = "fake-sb.servicebus.windows.net"
QUEUE = "mlassets-commands"
DLQ_SUFFIX = "/$deadletterqueue"
CONNECTION_STRING = (
    f"Endpoint=sb://{NAMESPACE}/;SharedAccessKeyName=send-listen;SharedAccessKey=bm90LWEta2V5"
)


# -- the service side ------------------------------------------------------------------------


@dataclass
class Stored:
    seq: int
    message: Message  # as the sender put it on the wire (decoded)
    enqueued_ms: int
    delivery_count: int = 0  # the service's DeliveryCount
    lock_token: uuid.UUID | None = None
    locked_until_ms: int | None = None
    link: object | None = None  # the receive link that holds the lock
    dead: bool = False
    reason: str | None = None
    description: str | None = None


def _ms() -> int:
    return int(time.time() * 1000)


class FakeServiceBus:
    """One queue (and its dead-letter sub-queue) of one namespace."""

    def __init__(self, lock_seconds: float = 30.0, max_delivery_count: int = 10) -> None:
        self.lock_ms = int(lock_seconds * 1000)
        self.max_delivery_count = max_delivery_count
        self.messages: dict[int, Stored] = {}
        self.sequence = itertools.count(1)
        self.wire: list[bytes] = []  # every message a sender put on the wire
        self.outcomes: list[tuple[str, str]] = []  # (outcome, message id) per settlement
        self.links: Counter[str] = Counter()  # links opened per entity
        self.refused: list[str] = []
        self.lock = threading.Lock()

    @staticmethod
    def entity(path: str) -> bool:
        """True for the dead-letter sub-queue; only QUEUE exists in this namespace."""
        name = path.split(f"{NAMESPACE}/")[-1].lower()
        assert name in (QUEUE, QUEUE + DLQ_SUFFIX), f"no entity {path!r}"
        return name.endswith(DLQ_SUFFIX)

    # sending

    def accept(self, message: Message | BatchMessage) -> None:
        parts = (
            [decode_payload(memoryview(bytes(d))) for d in message.data]
            if isinstance(message, BatchMessage)
            else [message]
        )
        for part in parts:
            wire = bytes(encode_payload(bytearray(), part))
            self.wire.append(wire)
            with self.lock:
                seq = next(self.sequence)
                self.messages[seq] = Stored(seq, decode_payload(memoryview(wire)), _ms())

    # locks

    def _expire(self) -> None:
        now = _ms()
        for s in self.messages.values():
            if s.lock_token is not None and s.locked_until_ms <= now:
                s.lock_token, s.locked_until_ms, s.link = None, None, None
                if not s.dead and s.delivery_count >= self.max_delivery_count:
                    self._dead_letter(
                        s,
                        "MaxDeliveryCountExceeded",
                        f"Message could not be consumed after {s.delivery_count} delivery "
                        "attempts.",
                    )

    @staticmethod
    def _dead_letter(s: Stored, reason: str | None, description: str | None) -> None:
        s.dead, s.reason, s.description = True, reason, description
        s.lock_token, s.locked_until_ms, s.link = None, None, None

    def _on_wire(self, s: Stored, locked: bool) -> bytes:
        """The message as the service sends it to a receiver (or in a peek response)."""
        annotations = {
            **(s.message.message_annotations or {}),
            b"x-opt-sequence-number": {TYPE: AMQPTypes.long, VALUE: s.seq},
            b"x-opt-enqueued-time": {TYPE: AMQPTypes.timestamp, VALUE: s.enqueued_ms},
        }
        if locked:
            annotations[b"x-opt-locked-until"] = {
                TYPE: AMQPTypes.timestamp,
                VALUE: s.locked_until_ms,
            }
        props = dict(s.message.application_properties or {})
        if s.dead:
            props["DeadLetterReason"] = s.reason or ""
            props["DeadLetterErrorDescription"] = s.description or ""
        stamped = s.message._replace(
            header=Header(delivery_count=max(s.delivery_count - 1, 0)),
            message_annotations=annotations,
            application_properties=props or None,
        )
        return bytes(encode_payload(bytearray(), stamped))

    # receive links

    def deliver(self, dead: bool, link, credit: int) -> list[tuple[tuple, Message]]:
        out = []
        with self.lock:
            self._expire()
            for s in sorted(self.messages.values(), key=lambda s: s.seq):
                if len(out) >= credit:
                    break
                if s.dead != dead or s.lock_token is not None:
                    continue
                s.lock_token = uuid.uuid4()
                s.locked_until_ms = _ms() + self.lock_ms
                s.link = link
                s.delivery_count += 1
                frame = (0, next(link.delivery_ids), s.lock_token.bytes_le)
                out.append((frame, decode_payload(memoryview(self._on_wire(s, locked=True)))))
        return out

    def settle(self, link, tag: bytes, outcome: str, **kwargs) -> None:
        token = uuid.UUID(bytes_le=tag)
        with self.lock:
            s = next((s for s in self.messages.values() if s.lock_token == token), None)
            if s is None or s.link is not link:
                self.refused.append(f"{outcome}: delivery {token} is not on this receive link")
                raise RuntimeError("Delivery not on receive link")
            mid = s.message.properties.message_id if s.message.properties else None
            self.outcomes.append((outcome, mid.decode() if isinstance(mid, bytes) else mid))
            if outcome == "accepted":
                del self.messages[s.seq]
            elif outcome == "rejected":
                error = kwargs["error"]
                assert error.condition == b"com.microsoft:dead-letter"
                self._dead_letter(
                    s,
                    error.info.get("DeadLetterReason"),
                    error.info.get("DeadLetterErrorDescription"),
                )
            elif outcome == "modified":
                assert kwargs.get("delivery_failed") and not kwargs.get("undeliverable_here")
                s.lock_token, s.locked_until_ms, s.link = None, None, None
                if not s.dead and s.delivery_count >= self.max_delivery_count:
                    self._dead_letter(s, "MaxDeliveryCountExceeded", "abandoned too often")
            elif outcome == "released":  # not a delivery attempt
                s.lock_token, s.locked_until_ms, s.link = None, None, None
                s.delivery_count -= 1
            else:
                raise AssertionError(outcome)

    def peek(self, dead: bool, from_seq: int, count: int) -> list[bytes]:
        with self.lock:
            self._expire()
            chosen = [
                s
                for s in sorted(self.messages.values(), key=lambda s: s.seq)
                if s.dead == dead and s.seq >= from_seq
            ][:count]
            return [self._on_wire(s, locked=False) for s in chosen]

    # test helpers

    def active(self) -> list[Stored]:
        with self.lock:
            self._expire()
            return [s for s in self.messages.values() if not s.dead]

    def dead_letters(self) -> list[Stored]:
        with self.lock:
            self._expire()
            return [s for s in self.messages.values() if s.dead]


class FakeSendLink:
    """What `PyamqpTransport.create_send_client` returns: a pyamqp SendClient's surface."""

    def __init__(self, service: FakeServiceBus, target: str) -> None:
        assert not service.entity(target), "nobody sends to a dead-letter queue"
        self._service = service
        self._link = SimpleNamespace(
            name=f"sender-{uuid.uuid4()}",
            remote_max_message_size=256 * 1024,
            remote_properties=None,
        )
        service.links[target] += 1

    def open(self, connection=None) -> None: ...

    def client_ready(self) -> bool:
        return True

    def send_message(self, message, *, timeout=None) -> None:
        self._service.accept(message)

    def close(self) -> None: ...


class FakeReceiveLink:
    """What `PyamqpTransport.create_receive_client` returns: a pyamqp ReceiveClient's surface
    (link credit, do_work, the received-messages buffer, settlement, management requests)."""

    def __init__(self, service: FakeServiceBus, entity: str, link_credit: int) -> None:
        self._service = service
        self._dead = service.entity(entity)
        self.delivery_ids = itertools.count()
        self._received_messages: stdlib_queue.Queue = stdlib_queue.Queue()
        self._link = SimpleNamespace(
            name=f"receiver-{uuid.uuid4()}",
            current_link_credit=link_credit,
            _is_closed=False,
            flow=self._flow,
        )
        self._connection = SimpleNamespace(listen=lambda wait=None, batch=None: None)
        self._socket_timeout = 0.01
        self._shutdown = False
        self._last_activity_timestamp = None
        # The SDK replaces this with its own callback (release when no receive is running).
        self._message_received = lambda frame, message: self._received_messages.put(
            (frame, message)
        )
        service.links[entity] += 1

    def _flow(self, link_credit: int, drain: bool = False) -> None:
        self._link.current_link_credit = link_credit

    def open(self, connection=None) -> None: ...

    def client_ready(self) -> bool:
        return True

    def do_work(self) -> bool:
        credit = self._link.current_link_credit
        delivered = self._service.deliver(self._dead, self, credit) if credit > 0 else []
        for frame, message in delivered:
            self._link.current_link_credit -= 1
            self._message_received(frame, message)
        if not delivered:
            time.sleep(0.005)
        return True

    def settle_messages(self, delivery_id, delivery_tag, outcome, **kwargs) -> None:
        self._service.settle(self, delivery_tag, outcome, **kwargs)

    def mgmt_request(self, message, *, operation, operation_type, node, timeout):
        op = operation[VALUE] if isinstance(operation, dict) else operation
        assert op == "com.microsoft:peek-message", op
        request = {(k.decode() if isinstance(k, bytes) else k): v for k, v in message.value.items()}
        start = request["from-sequence-number"]
        start = start[VALUE] if isinstance(start, dict) else start
        wires = self._service.peek(self._dead, start, request["message-count"])
        if not wires:
            return 204, b"No messages", Message(value=None, application_properties={})
        response = Message(
            value={b"messages": [{b"message": w} for w in wires]}, application_properties={}
        )
        return 200, b"OK", response

    def close(self) -> None:
        self._link._is_closed = True


@pytest.fixture
def service(monkeypatch) -> FakeServiceBus:
    svc = FakeServiceBus(lock_seconds=30)

    def create_send_client(config, **kwargs):
        return FakeSendLink(svc, kwargs["target"])

    def create_receive_client(receiver, **kwargs):
        return FakeReceiveLink(svc, receiver._entity_name, kwargs["link_credit"])

    monkeypatch.setattr(PyamqpTransport, "create_send_client", staticmethod(create_send_client))
    monkeypatch.setattr(
        PyamqpTransport, "create_receive_client", staticmethod(create_receive_client)
    )
    return svc


@pytest.fixture
def queue(service) -> AzureServiceBusQueue:
    return AzureServiceBusQueue(
        queue=QUEUE, connection_string=CONNECTION_STRING, receive_wait_seconds=0.3
    )


# -- sending ----------------------------------------------------------------------------------


def test_send_puts_a_real_service_bus_message_on_the_wire(service, queue):
    mid = queue.send(
        b'{"type": "score"}',
        content_type="application/json",
        subject="score",
        application_properties={"origin": "cli"},
    )
    assert len(mid) == 32
    (wire,) = service.wire
    sent = decode_payload(memoryview(wire))
    assert sent.properties.message_id == mid.encode()
    assert sent.properties.content_type == b"application/json"
    assert sent.properties.subject == b"score"
    assert sent.application_properties == {b"origin": b"cli"}
    assert b"".join(sent.data) == b'{"type": "score"}'
    assert service.links[f"amqps://{NAMESPACE}/{QUEUE}"] == 1


def test_send_json_keeps_a_given_message_id(service, queue):
    assert queue.send_json({"type": "retrain", "reason": "x"}, message_id="evt-1") == "evt-1"
    (stored,) = service.active()
    assert json.loads(b"".join(stored.message.data)) == {"type": "retrain", "reason": "x"}


# -- receiving and settling ----------------------------------------------------------------------


def test_received_messages_are_the_sdks_own_in_the_platforms_terms(service, queue):
    mid = queue.send_json({"type": "score"}, application_properties={"n": 1})
    with queue.session() as session:
        (m,) = session.receive(max_messages=5)
        assert isinstance(m, ReceivedMessage)
        assert isinstance(m.raw, ServiceBusReceivedMessage)
        assert m.message_id == mid and json.loads(m.body) == {"type": "score"}
        assert m.content_type == "application/json"
        assert m.application_properties == {"n": 1}
        assert m.sequence_number == 1 and m.enqueued_time is not None
        # The lock token is the delivery tag; the first delivery counts 1 (as .NET says).
        assert m.lock_token == str(m.raw.lock_token) == str(service.active()[0].lock_token)
        assert m.delivery_count == 1 and m.locked_until > m.enqueued_time
        session.complete(m)
    assert service.outcomes == [("accepted", mid)] and service.active() == []


def test_abandon_redelivers_with_one_more_delivery_and_dead_letter_keeps_the_reason(service, queue):
    mid = queue.send_json({"type": "unknown"})
    with queue.session() as session:
        (m,) = session.receive()
        session.abandon(m)
        (again,) = session.receive()
        assert again.message_id == mid and again.delivery_count == 2
        session.dead_letter(again, "UnknownMessageType", "type 'unknown' is not known")
    assert [o for o, _ in service.outcomes] == ["modified", "rejected"]
    (dead,) = queue.peek_dead_letters()
    assert dead.message_id == mid
    assert (dead.dead_letter_reason, dead.dead_letter_error_description) == (
        "UnknownMessageType",
        "type 'unknown' is not known",
    )
    assert dead.lock_token is None  # peeked: nothing to settle


def test_a_message_can_only_be_settled_by_the_session_that_received_it(service, queue):
    queue.send_json({"type": "score"})
    with queue.session() as first:
        (m,) = first.receive()
        with queue.session() as second, pytest.raises(ValueError, match="link that received"):
            second.complete(m)
        first.complete(m)
        with pytest.raises(ValueError, match="settled already"):
            first.complete(m)
    assert service.refused == []  # nothing wrong ever reached the service


def test_an_expired_lock_is_lost_and_the_message_comes_back(service, queue):
    service.lock_ms = 300
    mid = queue.send_json({"type": "score"})
    with queue.session() as session:
        (m,) = session.receive()
        time.sleep(0.4)
        with pytest.raises(MessageLockLostError):
            session.complete(m)
        (again,) = session.receive()
        assert again.message_id == mid and again.delivery_count == 2
        session.complete(again)
    assert service.active() == []


def test_max_delivery_count_dead_letters_on_the_service(service, queue):
    service.lock_ms, service.max_delivery_count = 200, 2
    queue.send_json({"type": "score"})
    for _ in range(2):
        with queue.session() as session:
            assert len(session.receive()) == 1
        time.sleep(0.25)
    with queue.session() as session:
        assert session.receive(max_wait_seconds=0.2) == []
    (dead,) = queue.peek_dead_letters()
    assert dead.dead_letter_reason == "MaxDeliveryCountExceeded"


def test_an_unsettled_message_stays_locked_after_its_session_closes(service, queue):
    queue.send_json({"type": "score"})
    with queue.session() as session:
        assert len(session.receive()) == 1
    with queue.session() as session:
        assert session.receive(max_wait_seconds=0.2) == []
    (held,) = service.active()
    assert held.lock_token is not None and held.delivery_count == 1


def test_the_dead_letter_queue_can_be_received_from_and_purged(service, queue):
    queue.send(b"garbage")
    with queue.session() as session:
        (m,) = session.receive()
        session.dead_letter(m, "MalformedMessage", "not JSON")
    with queue.session(dead_letter=True) as dlq:
        (d,) = dlq.receive()
        assert d.body == b"garbage" and d.dead_letter_reason == "MalformedMessage"
        dlq.complete(d)
    assert service.dead_letters() == []
    assert service.links[QUEUE + "/$DeadLetterQueue"] == 1


# -- browsing ----------------------------------------------------------------------------------


def test_peek_pages_without_locking_and_counts_come_from_peeking(service, queue, monkeypatch):
    monkeypatch.setattr("mlassets.roles.servicebus._PEEK_PAGE", 2)
    ids = [queue.send(f"{i}".encode()) for i in range(5)]
    peeked = queue.peek(10)
    assert [m.message_id for m in peeked] == ids
    assert [m.sequence_number for m in peeked] == [1, 2, 3, 4, 5]
    assert all(m.lock_token is None for m in peeked)
    with queue.session() as session:
        got = session.receive(max_messages=2)
        session.dead_letter(got[0], "r", "d")
    counts = queue.counts()
    # A peek does not tell whether a message is locked: Service Bus does not say.
    assert (counts.active, counts.locked, counts.dead_letter, counts.exact) == (4, None, 1, True)
    assert not queue.counts(limit=3).exact


# -- credentials ---------------------------------------------------------------------------------


def test_namespace_with_default_azure_credential_or_a_clear_error(service, monkeypatch):
    made = []

    class FakeCredential:
        def __init__(self) -> None:
            made.append(self)

        def get_token(self, *scopes, **kwargs):
            raise AssertionError("no token is needed: the links are fake")

    monkeypatch.setattr("azure.identity.DefaultAzureCredential", FakeCredential)
    q = AzureServiceBusQueue(queue=QUEUE, fully_qualified_namespace=NAMESPACE)
    q.send(b"{}")
    q.send(b"{}")
    assert len(made) == 1  # one credential per resource, reused
    assert len(service.active()) == 2
    with pytest.raises(ValueError, match="MLASSETS_SERVICEBUS_CONNECTION_STRING or"):
        AzureServiceBusQueue(queue=QUEUE).send(b"{}")


# -- the sensor on Service Bus ---------------------------------------------------------------------


def test_the_sensor_runs_the_same_on_service_bus(service, queue, instance, tmp_path):
    from mlassets.defs.commands.sensors import servicebus_sensor as sensor

    service.lock_ms = 400
    resources = {"message_queue": queue, "lake": LakeStorage(url=f"file://{tmp_path}/lake")}

    def tick():
        context = dg.build_sensor_context(instance=instance, resources=resources)
        return sensor.evaluate_tick(context)

    mid = queue.send_json({"type": "retrain", "reason": "from Azure"})
    bad = queue.send(b"not json")
    (request,) = tick().run_requests
    assert (request.job_name, request.run_key) == ("train_model", mid)
    assert request.tags["mlassets/retrain-reason"] == "from Azure"
    assert [s.reason for s in service.dead_letters()] == ["MalformedMessage"]
    assert len(service.active()) == 1  # still there, locked, until its run exists

    instance.add_run(
        dg.DagsterRun(
            job_name="train_model",
            status=dg.DagsterRunStatus.NOT_STARTED,
            tags={"dagster/run_key": mid, "dagster/sensor_name": "servicebus_sensor"},
        )
    )
    time.sleep(0.5)  # the lock runs out: the message comes back
    again = tick()
    assert not again.run_requests
    assert service.active() == []
    assert ("accepted", mid) in service.outcomes and ("rejected", bad) in service.outcomes
    assert service.refused == []
