"""The embedded twin of Azure Event Hubs: a durable, partitioned, append-only log in SQLite.

It keeps the semantics the platform relies on: a fixed partition count, partition-key
hashing (the same key always lands in the same partition), per-partition sequence numbers
that start at 0 and never repeat, byte offsets, an enqueued time stamped by the log, event
properties, consumer-group checkpoints and retention (events before a point expire and the
partition's beginning sequence number moves). An append is acknowledged only after the
SQLite transaction commits (WAL, synchronous=FULL), so an acknowledged event survives a
crash or restart.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa

from mlassets.events import raw_events_table

_SCHEMA = """
CREATE TABLE IF NOT EXISTS hub_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS partitions (
    partition_id INTEGER PRIMARY KEY,
    beginning_sequence_number INTEGER NOT NULL DEFAULT 0,
    next_sequence_number INTEGER NOT NULL DEFAULT 0,
    next_offset INTEGER NOT NULL DEFAULT 0,
    last_enqueued_time_us INTEGER
);
CREATE TABLE IF NOT EXISTS events (
    partition_id INTEGER NOT NULL,
    sequence_number INTEGER NOT NULL,
    byte_offset INTEGER NOT NULL,
    enqueued_time_us INTEGER NOT NULL,
    partition_key TEXT,
    properties TEXT,
    body BLOB NOT NULL,
    PRIMARY KEY (partition_id, sequence_number)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoints (
    consumer_group TEXT NOT NULL,
    partition_id INTEGER NOT NULL,
    sequence_number INTEGER NOT NULL,
    updated_at_us INTEGER NOT NULL,
    PRIMARY KEY (consumer_group, partition_id)
);
"""


@dataclass(frozen=True)
class PartitionProperties:
    """What Event Hubs' `get_partition_properties` reports, for one partition."""

    partition_id: str
    beginning_sequence_number: int
    #: -1 while the partition has never held an event.
    last_enqueued_sequence_number: int
    last_enqueued_offset: int
    last_enqueued_time: datetime | None
    is_empty: bool


def partition_for_key(key: str, partition_count: int) -> int:
    """Stable across processes and machines (unlike `hash()`), so a key never moves."""
    return zlib.crc32(key.encode("utf-8")) % partition_count


def _now_us() -> int:
    return int(datetime.now(UTC).timestamp() * 1_000_000)


class EventLog:
    """One event hub in one SQLite file. Safe to share between threads and processes."""

    def __init__(self, path: str | Path, partition_count: int = 4) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._conn().executescript(_SCHEMA)  # idempotent; executescript commits by itself
        with self._write() as db:
            row = db.execute("SELECT value FROM hub_meta WHERE key='partition_count'").fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO hub_meta VALUES ('partition_count', ?)", (str(partition_count),)
                )
                db.executemany(
                    "INSERT INTO partitions (partition_id) VALUES (?)",
                    [(p,) for p in range(partition_count)],
                )
                db.execute("INSERT INTO hub_meta VALUES ('round_robin', '0')")
            elif int(row[0]) != partition_count:
                raise ValueError(
                    f"{self.path} was created with {row[0]} partitions; an event hub's partition "
                    f"count cannot change (asked for {partition_count})"
                )
        self.partition_count = partition_count

    # -- connections ---------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            self._local.conn = conn
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """An IMMEDIATE transaction: writers from any process are serialized."""
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # -- reading metadata ------------------------------------------------------------------

    def partition_ids(self) -> list[str]:
        return [str(p) for p in range(self.partition_count)]

    def partition_properties(self, partition_id: str) -> PartitionProperties:
        row = (
            self._conn()
            .execute(
                "SELECT beginning_sequence_number, next_sequence_number, next_offset,"
                " last_enqueued_time_us FROM partitions WHERE partition_id = ?",
                (int(partition_id),),
            )
            .fetchone()
        )
        if row is None:
            raise KeyError(f"no partition {partition_id!r} (the hub has {self.partition_count})")
        beginning, next_seq, next_offset, last_us = row
        last_seq = next_seq - 1
        last_offset = -1
        if last_seq >= 0:
            found = (
                self._conn()
                .execute(
                    "SELECT byte_offset FROM events WHERE partition_id=? AND sequence_number=?",
                    (int(partition_id), last_seq),
                )
                .fetchone()
            )
            last_offset = found[0] if found else next_offset
        return PartitionProperties(
            partition_id=str(partition_id),
            beginning_sequence_number=beginning,
            last_enqueued_sequence_number=last_seq,
            last_enqueued_offset=last_offset,
            last_enqueued_time=(
                datetime.fromtimestamp(last_us / 1e6, UTC) if last_us is not None else None
            ),
            is_empty=beginning > last_seq,
        )

    # -- appending --------------------------------------------------------------------------

    def append(
        self,
        bodies: Sequence[bytes],
        *,
        partition_keys: Sequence[str | None] | None = None,
        partition_id: str | None = None,
        properties: dict[str, str] | None = None,
    ) -> list[tuple[str, int]]:
        """Append events atomically; returns (partition id, sequence number) per event.

        Routing follows Event Hubs: an explicit partition id wins, then the event's partition
        key (hashed), else round robin.
        """
        n = len(bodies)
        if partition_keys is not None and len(partition_keys) != n:
            raise ValueError("partition_keys must have one entry per body")
        props_json = json.dumps(properties, sort_keys=True) if properties else None
        enqueued = _now_us()
        with self._write() as db:
            rr = int(db.execute("SELECT value FROM hub_meta WHERE key='round_robin'").fetchone()[0])
            targets: list[int] = []
            for i in range(n):
                key = partition_keys[i] if partition_keys is not None else None
                if partition_id is not None:
                    targets.append(int(partition_id))
                elif key is not None:
                    targets.append(partition_for_key(key, self.partition_count))
                else:
                    targets.append(rr % self.partition_count)
                    rr += 1
            state = {
                p: [s, o]
                for p, s, o in db.execute(
                    "SELECT partition_id, next_sequence_number, next_offset FROM partitions"
                )
            }
            if partition_id is not None and int(partition_id) not in state:
                raise KeyError(
                    f"no partition {partition_id!r} (the hub has {self.partition_count})"
                )
            rows = []
            acks: list[tuple[str, int]] = []
            for i, p in enumerate(targets):
                seq, off = state[p]
                body = bytes(bodies[i])
                key = partition_keys[i] if partition_keys is not None else None
                rows.append((p, seq, off, enqueued, key, props_json, body))
                acks.append((str(p), seq))
                state[p] = [seq + 1, off + len(body)]
            db.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            touched = set(targets)
            db.executemany(
                "UPDATE partitions SET next_sequence_number=?, next_offset=?,"
                " last_enqueued_time_us=? WHERE partition_id=?",
                [(state[p][0], state[p][1], enqueued, p) for p in touched],
            )
            db.execute("UPDATE hub_meta SET value=? WHERE key='round_robin'", (str(rr),))
        return acks

    # -- reading events ---------------------------------------------------------------------

    def read(
        self, partition_id: str, first_sequence_number: int, last_sequence_number: int
    ) -> pa.Table:
        """Events with first <= sequence number <= last, in order, as a RAW_EVENT_SCHEMA table."""
        rows = (
            self._conn()
            .execute(
                "SELECT sequence_number, byte_offset, enqueued_time_us, partition_key,"
                " properties, body FROM events"
                " WHERE partition_id=? AND sequence_number BETWEEN ? AND ?"
                " ORDER BY sequence_number",
                (int(partition_id), first_sequence_number, last_sequence_number),
            )
            .fetchall()
        )
        return raw_events_table(str(partition_id), rows)

    # -- retention and checkpoints ------------------------------------------------------------

    def expire_before(self, partition_id: str, sequence_number: int) -> int:
        """Drop events below `sequence_number`, as retention would; returns how many."""
        with self._write() as db:
            cur = db.execute(
                "DELETE FROM events WHERE partition_id=? AND sequence_number < ?",
                (int(partition_id), sequence_number),
            )
            db.execute(
                "UPDATE partitions SET beginning_sequence_number ="
                " MAX(beginning_sequence_number, MIN(?, next_sequence_number))"
                " WHERE partition_id=?",
                (sequence_number, int(partition_id)),
            )
            return cur.rowcount

    def checkpoint(self, consumer_group: str, partition_id: str, sequence_number: int) -> None:
        with self._write() as db:
            db.execute(
                "INSERT INTO checkpoints VALUES (?, ?, ?, ?) ON CONFLICT"
                " (consumer_group, partition_id) DO UPDATE SET"
                " sequence_number=excluded.sequence_number, updated_at_us=excluded.updated_at_us",
                (consumer_group, int(partition_id), sequence_number, _now_us()),
            )

    def checkpoints(self, consumer_group: str) -> dict[str, int]:
        return {
            str(p): s
            for p, s in self._conn().execute(
                "SELECT partition_id, sequence_number FROM checkpoints WHERE consumer_group=?",
                (consumer_group,),
            )
        }
