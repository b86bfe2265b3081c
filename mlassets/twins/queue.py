"""The embedded twin of an Azure Service Bus queue: a durable peek-lock queue in SQLite.

It keeps the semantics the platform relies on:

- `send` stamps each message with a sequence number (1, 2, ... never reused) and an enqueued
  time; the message keeps its id, body bytes, content type, subject and application
  properties.
- `receive` locks messages (peek-lock) for the queue's lock duration and hands out a lock
  token per delivery. A locked message is invisible to every other receiver, in this process
  or another, until its lock expires or it is settled; each delivery counts.
- A lock holder settles with `complete` (the message is gone), `abandon` (visible again at
  once), `dead_letter` (moved to the dead-letter queue with a reason and a description) or
  `renew_lock`. A lock that expired, or a token of an earlier delivery, settles nothing:
  `MessageLockLostError`, as in Service Bus.
- A message whose lock is released (abandoned or expired) after `max_delivery_count`
  deliveries is dead-lettered with reason `MaxDeliveryCountExceeded`, like Service Bus.
- The dead-letter queue is a sub-queue that can be peeked and received from (peek-lock too);
  its messages carry `dead_letter_reason` and `dead_letter_error_description`.
- `peek` browses without locking.

Every state change is one IMMEDIATE transaction (writers from all processes are serialized,
so two receivers never lock the same message) committed with WAL and synchronous=FULL: a sent
message survives a crash as soon as `send` returns, and a message whose receiver crashed
comes back when its lock expires.

The types a receiver sees (`ReceivedMessage`, `QueueCounts`, `MessageLockLostError`) are the
role's contract and come from `mlassets.roles.servicebus`; `EmbeddedQueue`
(`mlassets.twins.servicebus`) is the resource that puts this queue behind the role's interface.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from mlassets.roles.servicebus import (
    DEFAULT_LOCK_DURATION_SECONDS,
    DEFAULT_MAX_DELIVERY_COUNT,
    MAX_DELIVERY_COUNT_EXCEEDED,
    MessageLockLostError,
    QueueCounts,
    ReceivedMessage,
)
from mlassets.twins.sqlite import SqliteStore

SubQueue = Literal["active", "deadletter"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    sequence_number INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT NOT NULL,
    body BLOB NOT NULL,
    content_type TEXT,
    subject TEXT,
    correlation_id TEXT,
    application_properties TEXT,
    enqueued_time_us INTEGER NOT NULL,
    delivery_count INTEGER NOT NULL DEFAULT 0,
    lock_token TEXT,
    locked_until_us INTEGER,
    dead_lettered INTEGER NOT NULL DEFAULT 0,
    dead_letter_reason TEXT,
    dead_letter_error_description TEXT,
    dead_lettered_time_us INTEGER
);
CREATE INDEX IF NOT EXISTS messages_in_order ON messages (dead_lettered, sequence_number);
CREATE UNIQUE INDEX IF NOT EXISTS messages_by_lock ON messages (lock_token)
    WHERE lock_token IS NOT NULL;
CREATE INDEX IF NOT EXISTS messages_by_lock_expiry ON messages (locked_until_us)
    WHERE lock_token IS NOT NULL;
"""

_COLUMNS = (
    "sequence_number, message_id, body, content_type, subject, correlation_id,"
    " application_properties, enqueued_time_us, delivery_count, lock_token, locked_until_us,"
    " dead_letter_reason, dead_letter_error_description"
)


def _now_us() -> int:
    return int(time.time() * 1_000_000)


def _to_datetime(us: int | None) -> datetime | None:
    return datetime.fromtimestamp(us / 1e6, UTC) if us is not None else None


class MessageQueue(SqliteStore):
    """One queue (and its dead-letter sub-queue) in one SQLite file; safe to share between
    threads and processes."""

    def __init__(
        self,
        path: str | Path,
        *,
        lock_duration_seconds: float = DEFAULT_LOCK_DURATION_SECONDS,
        max_delivery_count: int = DEFAULT_MAX_DELIVERY_COUNT,
    ) -> None:
        if lock_duration_seconds <= 0:
            raise ValueError("lock_duration_seconds must be positive")
        if max_delivery_count < 1:
            raise ValueError("max_delivery_count must be at least 1")
        self.lock_duration_us = int(lock_duration_seconds * 1_000_000)
        self.max_delivery_count = max_delivery_count
        super().__init__(path, _SCHEMA)

    # -- sending ---------------------------------------------------------------------------

    def send(
        self,
        body: bytes | str,
        *,
        message_id: str | None = None,
        content_type: str | None = None,
        subject: str | None = None,
        correlation_id: str | None = None,
        application_properties: Mapping[str, Any] | None = None,
    ) -> ReceivedMessage:
        """Enqueue one message; returns it as stored (with its sequence number), once durable."""
        data = body.encode("utf-8") if isinstance(body, str) else bytes(body)
        mid = message_id or uuid.uuid4().hex
        props = (
            json.dumps(dict(application_properties), sort_keys=True)
            if application_properties
            else None
        )
        enqueued = _now_us()
        with self._write() as db:
            cur = db.execute(
                "INSERT INTO messages (message_id, body, content_type, subject, correlation_id,"
                " application_properties, enqueued_time_us) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (mid, data, content_type, subject, correlation_id, props, enqueued),
            )
            seq = cur.lastrowid
        return ReceivedMessage(
            message_id=mid,
            body=data,
            sequence_number=seq,
            enqueued_time=_to_datetime(enqueued),
            delivery_count=0,
            content_type=content_type,
            subject=subject,
            correlation_id=correlation_id,
            application_properties=dict(application_properties or {}),
        )

    # -- receiving -------------------------------------------------------------------------

    def receive(
        self,
        max_messages: int = 1,
        max_wait_seconds: float = 0.0,
        *,
        sub_queue: SubQueue = "active",
    ) -> list[ReceivedMessage]:
        """Lock and return up to `max_messages` visible messages, oldest first.

        Returns as soon as at least one message is available, or empty after
        `max_wait_seconds` (0: look once, do not wait).
        """
        if max_messages < 1:
            raise ValueError("max_messages must be at least 1")
        deadline = time.monotonic() + max(max_wait_seconds, 0.0)
        pause = 0.02
        while True:
            got = self._receive_once(max_messages, sub_queue)
            remaining = deadline - time.monotonic()
            if got or remaining <= 0:
                return got
            time.sleep(min(pause, remaining))
            pause = min(pause * 2, 0.25)

    def _receive_once(self, max_messages: int, sub_queue: SubQueue) -> list[ReceivedMessage]:
        dead = int(sub_queue == "deadletter")
        now = _now_us()
        # A read first: an empty queue costs one indexed query and no write lock.
        probe = (
            self._conn()
            .execute(
                "SELECT 1 FROM messages WHERE dead_lettered=? AND"
                " (lock_token IS NULL OR locked_until_us <= ?) LIMIT 1",
                (dead, now),
            )
            .fetchone()
        )
        if probe is None:
            return []
        with self._write() as db:
            now = _now_us()
            self._release_expired(db, now)
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM messages WHERE dead_lettered=? AND lock_token IS NULL"
                " ORDER BY sequence_number LIMIT ?",
                (dead, max_messages),
            ).fetchall()
            until = now + self.lock_duration_us
            out = []
            for row in rows:
                token = str(uuid.uuid4())
                db.execute(
                    "UPDATE messages SET lock_token=?, locked_until_us=?,"
                    " delivery_count=delivery_count+1 WHERE sequence_number=?",
                    (token, until, row[0]),
                )
                out.append(_message(row, lock_token=token, locked_until=until, delivered=1))
        return out

    def _release_expired(self, db: sqlite3.Connection, now: int) -> None:
        """Expired locks: the message is visible again, or dead-lettered when that was its
        last allowed delivery."""
        db.execute(
            "UPDATE messages SET dead_lettered=1, dead_letter_reason=?,"
            " dead_letter_error_description='Message could not be consumed after '"
            " || delivery_count || ' delivery attempts.', dead_lettered_time_us=?"
            " WHERE lock_token IS NOT NULL AND locked_until_us <= ? AND dead_lettered=0"
            " AND delivery_count >= ?",
            (MAX_DELIVERY_COUNT_EXCEEDED, now, now, self.max_delivery_count),
        )
        db.execute(
            "UPDATE messages SET lock_token=NULL, locked_until_us=NULL"
            " WHERE lock_token IS NOT NULL AND locked_until_us <= ?",
            (now,),
        )

    # -- settling --------------------------------------------------------------------------

    def _locked_row(self, db: sqlite3.Connection, lock_token: str, now: int) -> tuple:
        row = db.execute(
            "SELECT sequence_number, dead_lettered, delivery_count, locked_until_us"
            " FROM messages WHERE lock_token=?",
            (lock_token,),
        ).fetchone()
        if row is None or row[3] <= now:
            raise MessageLockLostError(
                f"the lock {lock_token} is lost (expired, or the message was settled or "
                "delivered again); the message cannot be settled with it"
            )
        return row

    def complete(self, lock_token: str) -> None:
        """The message is done: it leaves the queue for good."""
        with self._write() as db:
            seq, *_ = self._locked_row(db, lock_token, _now_us())
            db.execute("DELETE FROM messages WHERE sequence_number=?", (seq,))

    def abandon(self, lock_token: str) -> None:
        """Give the message back at once; after its last allowed delivery it is dead-lettered."""
        with self._write() as db:
            now = _now_us()
            seq, dead, count, _ = self._locked_row(db, lock_token, now)
            if not dead and count >= self.max_delivery_count:
                self._dead_letter(
                    db,
                    seq,
                    now,
                    MAX_DELIVERY_COUNT_EXCEEDED,
                    f"Message could not be consumed after {count} delivery attempts.",
                )
            else:
                db.execute(
                    "UPDATE messages SET lock_token=NULL, locked_until_us=NULL"
                    " WHERE sequence_number=?",
                    (seq,),
                )

    def dead_letter(self, lock_token: str, reason: str, description: str = "") -> None:
        """Move the message to the dead-letter queue with a reason and a description."""
        with self._write() as db:
            now = _now_us()
            seq, dead, *_ = self._locked_row(db, lock_token, now)
            if dead:
                raise ValueError("a message in the dead-letter queue cannot be dead-lettered again")
            self._dead_letter(db, seq, now, reason, description)

    @staticmethod
    def _dead_letter(
        db: sqlite3.Connection, seq: int, now: int, reason: str, description: str
    ) -> None:
        db.execute(
            "UPDATE messages SET dead_lettered=1, dead_letter_reason=?,"
            " dead_letter_error_description=?, dead_lettered_time_us=?,"
            " lock_token=NULL, locked_until_us=NULL WHERE sequence_number=?",
            (reason, description, now, seq),
        )

    def renew_lock(self, lock_token: str) -> datetime:
        """Extend a held lock by the lock duration from now; returns the new expiry."""
        with self._write() as db:
            now = _now_us()
            seq, *_ = self._locked_row(db, lock_token, now)
            until = now + self.lock_duration_us
            db.execute(
                "UPDATE messages SET locked_until_us=? WHERE sequence_number=?", (until, seq)
            )
        return _to_datetime(until)  # type: ignore[return-value]

    # -- browsing --------------------------------------------------------------------------

    def _sweep_if_needed(self) -> None:
        """Dead-letter messages whose last allowed delivery expired, before a read shows them
        as active (receivers do this themselves)."""
        now = _now_us()
        due = (
            self._conn()
            .execute(
                "SELECT 1 FROM messages WHERE lock_token IS NOT NULL AND locked_until_us <= ?"
                " AND dead_lettered=0 AND delivery_count >= ? LIMIT 1",
                (now, self.max_delivery_count),
            )
            .fetchone()
        )
        if due:
            with self._write() as db:
                self._release_expired(db, _now_us())

    def peek(
        self,
        max_messages: int = 32,
        *,
        from_sequence_number: int = 1,
        sub_queue: SubQueue = "active",
    ) -> list[ReceivedMessage]:
        """Messages in sequence order without locking them (locked ones included)."""
        self._sweep_if_needed()
        rows = (
            self._conn()
            .execute(
                f"SELECT {_COLUMNS} FROM messages WHERE dead_lettered=? AND sequence_number >= ?"
                " ORDER BY sequence_number LIMIT ?",
                (int(sub_queue == "deadletter"), from_sequence_number, max_messages),
            )
            .fetchall()
        )
        return [_message(row, lock_token=None, locked_until=None, delivered=0) for row in rows]

    def counts(self) -> QueueCounts:
        self._sweep_if_needed()
        active, locked, dead = (
            self._conn()
            .execute(
                "SELECT COALESCE(SUM(dead_lettered=0), 0),"
                " COALESCE(SUM(dead_lettered=0 AND lock_token IS NOT NULL"
                " AND locked_until_us > ?), 0),"
                " COALESCE(SUM(dead_lettered=1), 0) FROM messages",
                (_now_us(),),
            )
            .fetchone()
        )
        return QueueCounts(active=active, locked=locked, dead_letter=dead)


def _message(row: tuple, *, lock_token: str | None, locked_until: int | None, delivered: int):
    (seq, mid, body, ctype, subject, corr, props, enq, count, _tok, _until, reason, desc) = row
    return ReceivedMessage(
        message_id=mid,
        body=bytes(body),
        sequence_number=seq,
        enqueued_time=_to_datetime(enq),
        delivery_count=count + delivered,
        content_type=ctype,
        subject=subject,
        correlation_id=corr,
        application_properties=json.loads(props) if props else {},
        lock_token=lock_token,
        locked_until=_to_datetime(locked_until),
        dead_letter_reason=reason,
        dead_letter_error_description=desc,
    )
