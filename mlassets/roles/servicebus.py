"""The message queue role: an Azure Service Bus queue, or its embedded twin, behind one interface.

Senders call `send`. Receivers open a session, receive in peek-lock and settle what they
received within that same session:

    with queue.session() as s:
        for msg in s.receive(max_messages=10):
            ...
            s.complete(msg)          # or s.abandon(msg) / s.dead_letter(msg, reason, description)

The session is the receive link: with Service Bus a message can only be settled on the link
that received it (its lock token is a delivery tag of that link), so a session refuses to
settle a message it did not receive, in both implementations. Messages a session received
and did not settle stay locked until their lock expires, then come back with their delivery
count raised; nothing is lost when a receiver crashes.

`peek` / `peek_dead_letters` browse without locking; `session(dead_letter=True)` receives from
the dead-letter sub-queue (to inspect, resubmit or purge it).

This module is the role's contract: the interface, the types a receiver sees (`ReceivedMessage`,
`QueueCounts`, `MessageLockLostError`) and Service Bus' defaults, plus the Azure implementation.
The embedded twin (`EmbeddedQueue`) lives with the other twins and implements this interface.
"""

import json
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import dagster as dg
from pydantic import Field, PrivateAttr

from mlassets.roles.amqp import body_bytes, text

__all__ = [
    "DEFAULT_LOCK_DURATION_SECONDS",
    "DEFAULT_MAX_DELIVERY_COUNT",
    "MAX_DELIVERY_COUNT_EXCEEDED",
    "AzureServiceBusQueue",
    "MessageLockLostError",
    "MessageQueueResource",
    "QueueCounts",
    "QueueSession",
    "ReceivedMessage",
]

JSON_CONTENT_TYPE = "application/json"

#: Service Bus' own reason for a message it dead-letters after too many deliveries.
MAX_DELIVERY_COUNT_EXCEEDED = "MaxDeliveryCountExceeded"
#: Service Bus defaults for a new queue.
DEFAULT_LOCK_DURATION_SECONDS = 60.0
DEFAULT_MAX_DELIVERY_COUNT = 10


class MessageLockLostError(RuntimeError):
    """The lock is gone (expired, settled, or taken over by a later delivery): the message
    cannot be settled with this token, and it will be (or was) delivered again."""


@dataclass(frozen=True)
class ReceivedMessage:
    """A message as a receiver sees it; `lock_token` is None for a peeked message."""

    message_id: str
    body: bytes
    sequence_number: int | None
    enqueued_time: datetime | None
    #: Deliveries so far, this one included (0 for a message never delivered, when peeked).
    delivery_count: int
    content_type: str | None = None
    subject: str | None = None
    correlation_id: str | None = None
    application_properties: Mapping[str, Any] = field(default_factory=dict)
    lock_token: str | None = None
    locked_until: datetime | None = None
    dead_letter_reason: str | None = None
    dead_letter_error_description: str | None = None
    #: The SDK's own message object when it came from Azure (settlement needs it).
    raw: Any = field(default=None, repr=False, compare=False)

    def text(self) -> str:
        return self.body.decode("utf-8")


@dataclass(frozen=True)
class QueueCounts:
    #: Messages in the queue, locked or not (what Service Bus calls active messages).
    active: int
    #: Of those, how many are locked by a receiver right now (None: the service cannot say;
    #: Service Bus does not report locks when peeking).
    locked: int | None
    dead_letter: int
    #: False when a count is a lower bound (Azure without management rights: counted by peeking).
    exact: bool = True


class QueueSession(ABC):
    """One receive link: receive in peek-lock, and settle what it received."""

    def __init__(self) -> None:
        self._held: dict[str, ReceivedMessage] = {}

    @abstractmethod
    def _receive(
        self, max_messages: int, max_wait_seconds: float | None
    ) -> list[ReceivedMessage]: ...

    @abstractmethod
    def _settle(
        self, message: ReceivedMessage, action: str, reason: str = "", description: str = ""
    ) -> None: ...

    def receive(
        self, max_messages: int = 1, max_wait_seconds: float | None = None
    ) -> list[ReceivedMessage]:
        """Lock and return up to `max_messages`; None waits the implementation's default
        (the twin looks once; Azure waits a little for the link to deliver)."""
        got = self._receive(max_messages, max_wait_seconds)
        for m in got:
            self._held[str(m.lock_token)] = m
        return got

    def _own(self, message: ReceivedMessage) -> ReceivedMessage:
        held = self._held.pop(str(message.lock_token), None) if message.lock_token else None
        if held is None:
            raise ValueError(
                f"message {message.message_id!r} was not received by this session (or was "
                "settled already): a message can only be settled on the link that received it"
            )
        return held

    def complete(self, message: ReceivedMessage) -> None:
        self._settle(self._own(message), "complete")

    def abandon(self, message: ReceivedMessage) -> None:
        self._settle(self._own(message), "abandon")

    def dead_letter(self, message: ReceivedMessage, reason: str, description: str = "") -> None:
        self._settle(self._own(message), "dead_letter", reason, description)


class MessageQueueResource(dg.ConfigurableResource, ABC):
    """What the platform needs from a message queue."""

    @property
    @abstractmethod
    def queue_name(self) -> str: ...

    @property
    @abstractmethod
    def display(self) -> str:
        """Where the queue is, for people (never a secret)."""

    @abstractmethod
    def send(
        self,
        body: bytes | str,
        *,
        message_id: str | None = None,
        content_type: str | None = None,
        subject: str | None = None,
        application_properties: Mapping[str, Any] | None = None,
    ) -> str:
        """Enqueue one message; returns its message id once the queue has accepted it."""

    def send_json(self, document: Any, *, message_id: str | None = None, **kwargs: Any) -> str:
        return self.send(
            json.dumps(document).encode("utf-8"),
            message_id=message_id,
            content_type=kwargs.pop("content_type", JSON_CONTENT_TYPE),
            **kwargs,
        )

    @abstractmethod
    def session(self, dead_letter: bool = False) -> Any:
        """A context manager yielding a QueueSession (on the dead-letter sub-queue if asked)."""

    @abstractmethod
    def peek(self, max_messages: int = 32, *, dead_letter: bool = False) -> list[ReceivedMessage]:
        """Messages in sequence order, without locking them."""

    def peek_dead_letters(self, max_messages: int = 32) -> list[ReceivedMessage]:
        return self.peek(max_messages, dead_letter=True)

    @abstractmethod
    def counts(self) -> QueueCounts: ...


# -- Azure Service Bus --------------------------------------------------------------------------

#: Peek pages when counting without management rights.
_PEEK_PAGE = 250


class _AzureSession(QueueSession):
    def __init__(self, receiver, wait_seconds: float) -> None:
        super().__init__()
        self._receiver = receiver
        self._wait = wait_seconds

    def _receive(self, max_messages, max_wait_seconds):
        wait = self._wait if max_wait_seconds is None else max_wait_seconds
        # The SDK refuses a wait of 0; a short one still returns what the link has.
        got = self._receiver.receive_messages(
            max_message_count=max_messages, max_wait_time=max(wait, 0.1)
        )
        return [_from_sdk(m) for m in got]

    def _settle(self, message, action, reason="", description=""):
        from azure.servicebus.exceptions import MessageAlreadySettled
        from azure.servicebus.exceptions import MessageLockLostError as SdkLockLost

        try:
            if action == "complete":
                self._receiver.complete_message(message.raw)
            elif action == "abandon":
                self._receiver.abandon_message(message.raw)
            else:
                self._receiver.dead_letter_message(
                    message.raw, reason=reason, error_description=description
                )
        except (SdkLockLost, MessageAlreadySettled) as exc:
            raise MessageLockLostError(
                f"message {message.message_id!r}: the lock is lost ({type(exc).__name__}); "
                "it will be delivered again"
            ) from exc


class AzureServiceBusQueue(MessageQueueResource):
    """An Azure Service Bus queue through `azure-servicebus` (connection string or
    DefaultAzureCredential). Lock duration and max delivery count are properties of the queue
    in Azure (defaults: 1 minute, 10)."""

    queue: str = Field(default="mlassets-commands", description="the queue")
    fully_qualified_namespace: str | None = Field(
        default=None,
        description="<namespace>.servicebus.windows.net; used with DefaultAzureCredential",
    )
    connection_string: str | None = Field(
        default=None, description="instead of namespace + credential"
    )
    receive_wait_seconds: float = Field(
        default=2.0,
        description="how long a receive waits for the first message when the caller does not say",
    )

    _credential: object | None = PrivateAttr(default=None)

    @property
    def queue_name(self) -> str:
        return self.queue

    @property
    def display(self) -> str:
        where = self.fully_qualified_namespace or "the namespace of the connection string"
        return f"Service Bus queue {self.queue!r} on {where}"

    def client(self):
        from azure.servicebus import ServiceBusClient

        if self.connection_string:
            return ServiceBusClient.from_connection_string(self.connection_string)
        if not self.fully_qualified_namespace:
            raise ValueError(
                "set MLASSETS_SERVICEBUS_CONNECTION_STRING or MLASSETS_SERVICEBUS_NAMESPACE"
            )
        if self._credential is None:
            from azure.identity import DefaultAzureCredential

            self._credential = DefaultAzureCredential()
        return ServiceBusClient(self.fully_qualified_namespace, self._credential)

    def send(
        self, body, *, message_id=None, content_type=None, subject=None, application_properties=None
    ) -> str:
        from azure.servicebus import ServiceBusMessage

        mid = message_id or uuid.uuid4().hex
        message = ServiceBusMessage(
            body.encode("utf-8") if isinstance(body, str) else bytes(body),
            message_id=mid,
            content_type=content_type,
            subject=subject,
            application_properties=dict(application_properties) if application_properties else None,
        )
        with self.client() as client, client.get_queue_sender(self.queue) as sender:
            sender.send_messages(message)
        return mid

    def _receiver(self, client, dead_letter: bool):
        from azure.servicebus import ServiceBusReceiveMode, ServiceBusSubQueue

        return client.get_queue_receiver(
            self.queue,
            receive_mode=ServiceBusReceiveMode.PEEK_LOCK,
            sub_queue=ServiceBusSubQueue.DEAD_LETTER if dead_letter else None,
            # No prefetch: only what a receive call returns is locked.
            prefetch_count=0,
        )

    @contextmanager
    def session(self, dead_letter: bool = False) -> Iterator[QueueSession]:
        with self.client() as client, self._receiver(client, dead_letter) as receiver:
            yield _AzureSession(receiver, self.receive_wait_seconds)

    def peek(self, max_messages=32, *, dead_letter=False):
        out: list[ReceivedMessage] = []
        with self.client() as client, self._receiver(client, dead_letter) as receiver:
            next_seq = 0
            while len(out) < max_messages:
                page = receiver.peek_messages(
                    max_message_count=min(_PEEK_PAGE, max_messages - len(out)),
                    sequence_number=next_seq,
                )
                if not page:
                    break
                out.extend(_from_sdk(m, peeked=True) for m in page)
                next_seq = (page[-1].sequence_number or 0) + 1
        return out

    def counts(self, limit: int = 1000) -> QueueCounts:
        """Counted by peeking (needs only Listen rights), up to `limit` per queue. A peek does
        not say whether a message is locked, so `locked` is None."""
        active = self.peek(limit)
        dead = self.peek(limit, dead_letter=True)
        return QueueCounts(
            active=len(active),
            locked=None,
            dead_letter=len(dead),
            exact=len(active) < limit and len(dead) < limit,
        )


def _aware(value):
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def _from_sdk(message, peeked: bool = False) -> ReceivedMessage:
    """A `ServiceBusReceivedMessage` in the platform's terms (the SDK object rides along)."""
    props = {str(text(k)): text(v) for k, v in (message.application_properties or {}).items()}
    lock = message.lock_token
    mid = message.message_id
    return ReceivedMessage(
        message_id=str(text(mid)) if mid is not None else "",
        body=body_bytes(message.body, message.body_type),
        sequence_number=message.sequence_number,
        enqueued_time=_aware(message.enqueued_time_utc),
        # The service sends DeliveryCount - 1 in the AMQP header (AMQP counts failed earlier
        # deliveries); the Python SDK passes it on as is, .NET adds 1. A received message
        # counts itself, as on the twin.
        delivery_count=(message.delivery_count or 0) + (0 if peeked else 1),
        content_type=text(message.content_type),
        subject=text(message.subject),
        correlation_id=text(message.correlation_id),
        application_properties=props,
        lock_token=str(lock) if lock is not None and not peeked else None,
        locked_until=_aware(message.locked_until_utc),
        dead_letter_reason=message.dead_letter_reason,
        dead_letter_error_description=message.dead_letter_error_description,
        raw=message,
    )
