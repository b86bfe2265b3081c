"""The message queue role's embedded twin as a resource: `EmbeddedQueue`.

It puts the durable SQLite peek-lock queue (`mlassets.twins.queue.MessageQueue`) behind the
role's interface (`mlassets.roles.servicebus.MessageQueueResource`), so assets, sensors and the
CLI use it exactly as they use Azure Service Bus. `defs/resources.py` picks it for a local
deployment.
"""

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydantic import Field, PrivateAttr

from mlassets.roles.servicebus import (
    DEFAULT_LOCK_DURATION_SECONDS,
    DEFAULT_MAX_DELIVERY_COUNT,
    MessageQueueResource,
    QueueCounts,
    QueueSession,
)
from mlassets.twins.queue import MessageQueue

__all__ = ["EmbeddedQueue"]


class _EmbeddedSession(QueueSession):
    def __init__(self, queue: MessageQueue, dead_letter: bool) -> None:
        super().__init__()
        self._queue = queue
        self._sub_queue = "deadletter" if dead_letter else "active"

    def _receive(self, max_messages, max_wait_seconds):
        return self._queue.receive(max_messages, max_wait_seconds or 0.0, sub_queue=self._sub_queue)

    def _settle(self, message, action, reason="", description=""):
        token = str(message.lock_token)
        if action == "complete":
            self._queue.complete(token)
        elif action == "abandon":
            self._queue.abandon(token)
        else:
            self._queue.dead_letter(token, reason, description)


class EmbeddedQueue(MessageQueueResource):
    """The embedded twin: a durable peek-lock queue in a SQLite file (see mlassets.twins.queue)."""

    path: str = Field(description="SQLite file of the queue")
    name: str = Field(default="mlassets-commands", description="queue name, for display and tags")
    lock_duration_seconds: float = Field(
        default=DEFAULT_LOCK_DURATION_SECONDS, description="how long a receive locks a message"
    )
    max_delivery_count: int = Field(
        default=DEFAULT_MAX_DELIVERY_COUNT,
        description="deliveries after which a message is dead-lettered (MaxDeliveryCountExceeded)",
    )

    _queue: MessageQueue | None = PrivateAttr(default=None)

    @property
    def queue(self) -> MessageQueue:
        if self._queue is None:
            self._queue = MessageQueue(
                Path(self.path),
                lock_duration_seconds=self.lock_duration_seconds,
                max_delivery_count=self.max_delivery_count,
            )
        return self._queue

    @property
    def queue_name(self) -> str:
        return self.name

    @property
    def display(self) -> str:
        return f"embedded queue {self.name!r} at {self.path}"

    def send(
        self, body, *, message_id=None, content_type=None, subject=None, application_properties=None
    ) -> str:
        return self.queue.send(
            body,
            message_id=message_id or uuid.uuid4().hex,
            content_type=content_type,
            subject=subject,
            application_properties=application_properties,
        ).message_id

    @contextmanager
    def session(self, dead_letter: bool = False) -> Iterator[QueueSession]:
        yield _EmbeddedSession(self.queue, dead_letter)

    def peek(self, max_messages=32, *, dead_letter=False):
        return self.queue.peek(max_messages, sub_queue="deadletter" if dead_letter else "active")

    def counts(self) -> QueueCounts:
        return self.queue.counts()
