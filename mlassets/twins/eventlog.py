"""The embedded twin of Azure Event Hubs: a durable, partitioned, append-only log in SQLite.

It keeps the semantics the platform relies on: a fixed partition count, partition-key
hashing (the same key always lands in the same partition), per-partition sequence numbers
that start at 0 and never repeat, byte offsets, an enqueued time stamped by the log, event
properties, consumer-group checkpoints and retention (events before a point expire and the
partition's beginning sequence number moves). An append is acknowledged only after the
SQLite transaction commits (WAL, synchronous=FULL), so an acknowledged event survives a
crash or restart.

Events are stored the way Event Hubs and Kafka store them, in segments: each append writes
one Arrow IPC segment per partition it touches (at most SEGMENT_EVENTS events each), so a
range read decodes a few segments and slices them, with no per-event work in Python.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mlassets.lib.events import RAW_EVENT_SCHEMA
from mlassets.lib.partitions import PartitionProperties, partition_for_key
from mlassets.twins.sqlite import SqliteStore

SEGMENT_EVENTS = 16_384
#: What a segment holds; the partition id is implied by the row that stores it.
_SEGMENT_SCHEMA = pa.schema([f for f in RAW_EVENT_SCHEMA if f.name != "partition_id"])

_SCHEMA = """
CREATE TABLE IF NOT EXISTS hub_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS partitions (
    partition_id INTEGER PRIMARY KEY,
    beginning_sequence_number INTEGER NOT NULL DEFAULT 0,
    next_sequence_number INTEGER NOT NULL DEFAULT 0,
    next_offset INTEGER NOT NULL DEFAULT 0,
    last_offset INTEGER NOT NULL DEFAULT -1,
    last_enqueued_time_us INTEGER
);
CREATE TABLE IF NOT EXISTS segments (
    partition_id INTEGER NOT NULL,
    first_sequence_number INTEGER NOT NULL,
    last_sequence_number INTEGER NOT NULL,
    data BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS segments_by_range
    ON segments (partition_id, first_sequence_number, last_sequence_number);
CREATE TABLE IF NOT EXISTS checkpoints (
    consumer_group TEXT NOT NULL,
    partition_id INTEGER NOT NULL,
    sequence_number INTEGER NOT NULL,
    updated_at_us INTEGER NOT NULL,
    PRIMARY KEY (consumer_group, partition_id)
);
"""


def _now_us() -> int:
    return int(datetime.now(UTC).timestamp() * 1_000_000)


class EventLog(SqliteStore):
    """One event hub in one SQLite file. Safe to share between threads and processes."""

    def __init__(self, path: str | Path, partition_count: int = 4) -> None:
        super().__init__(path, _SCHEMA)
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

    # -- reading metadata ------------------------------------------------------------------

    def partition_ids(self) -> list[str]:
        return [str(p) for p in range(self.partition_count)]

    def partition_properties(self, partition_id: str) -> PartitionProperties:
        row = (
            self._conn()
            .execute(
                "SELECT beginning_sequence_number, next_sequence_number, last_offset,"
                " last_enqueued_time_us FROM partitions WHERE partition_id = ?",
                (int(partition_id),),
            )
            .fetchone()
        )
        if row is None:
            raise KeyError(f"no partition {partition_id!r} (the hub has {self.partition_count})")
        beginning, next_seq, last_offset, last_us = row
        return PartitionProperties(
            partition_id=str(partition_id),
            beginning_sequence_number=beginning,
            last_enqueued_sequence_number=next_seq - 1,
            last_enqueued_offset=last_offset,
            last_enqueued_time=(
                datetime.fromtimestamp(last_us / 1e6, UTC) if last_us is not None else None
            ),
            is_empty=beginning > next_seq - 1,
        )

    # -- appending --------------------------------------------------------------------------

    def _route(
        self,
        n: int,
        rr: int,
        partition_keys: Sequence[str | None] | None,
        partition_id: str | None,
    ) -> np.ndarray:
        """Target partition per event: explicit id, else key hash, else round robin."""
        if partition_id is not None:
            if not 0 <= int(partition_id) < self.partition_count:
                raise KeyError(
                    f"no partition {partition_id!r} (the hub has {self.partition_count})"
                )
            return np.full(n, int(partition_id), np.int64)
        targets = (rr + np.arange(n)) % self.partition_count
        if partition_keys is not None:
            cache: dict[str, int] = {}
            for i, key in enumerate(partition_keys):
                if key is not None:
                    if key not in cache:
                        cache[key] = partition_for_key(key, self.partition_count)
                    targets[i] = cache[key]
        return targets

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
        key (hashed), else round robin. A body that is not bytes (None, text, a dict) is
        refused here, before anything is written, as Event Hubs carries bytes only.
        """
        _check_bodies(bodies)
        n = len(bodies)
        if partition_keys is not None and len(partition_keys) != n:
            raise ValueError("partition_keys must have one entry per body")
        body_array = pa.array(bodies, pa.binary())
        key_array = pa.array(
            partition_keys if partition_keys is not None else [None] * n, pa.string()
        )
        props = json.dumps(properties, sort_keys=True) if properties else None
        enqueued = _now_us()
        acks_p = np.zeros(n, np.int64)
        acks_seq = np.zeros(n, np.int64)
        with self._write() as db:
            rr = int(db.execute("SELECT value FROM hub_meta WHERE key='round_robin'").fetchone()[0])
            targets = self._route(n, rr, partition_keys, partition_id)
            keyless = n if partition_keys is None else sum(k is None for k in partition_keys)
            state = {
                p: (seq, off)
                for p, seq, off in db.execute(
                    "SELECT partition_id, next_sequence_number, next_offset FROM partitions"
                )
            }
            sizes = pc.binary_length(body_array).to_numpy(zero_copy_only=False).astype(np.int64)
            for p in np.unique(targets):
                rows = np.flatnonzero(targets == p)
                next_seq, next_off = state[int(p)]
                seqs = next_seq + np.arange(len(rows), dtype=np.int64)
                lengths = sizes[rows]
                offsets = next_off + np.concatenate([[0], np.cumsum(lengths)[:-1]])
                acks_p[rows], acks_seq[rows] = p, seqs
                take = pa.array(rows)
                segment = pa.table(
                    [
                        pa.array(seqs),
                        pa.array(offsets),
                        pa.array(np.full(len(rows), enqueued), pa.int64()).cast(
                            pa.timestamp("us", tz="UTC")
                        ),
                        key_array.take(take),
                        pa.array([props] * len(rows), pa.string()),
                        body_array.take(take),
                    ],
                    schema=_SEGMENT_SCHEMA,
                )
                db.executemany(
                    "INSERT INTO segments VALUES (?, ?, ?, ?)",
                    [
                        (
                            int(p),
                            int(part["sequence_number"][0].as_py()),
                            int(part["sequence_number"][-1].as_py()),
                            _to_ipc(part),
                        )
                        for part in _chunks(segment, SEGMENT_EVENTS)
                    ],
                )
                db.execute(
                    "UPDATE partitions SET next_sequence_number=?, next_offset=?, last_offset=?,"
                    " last_enqueued_time_us=? WHERE partition_id=?",
                    (
                        int(seqs[-1]) + 1,
                        int(offsets[-1] + lengths[-1]),
                        int(offsets[-1]),
                        enqueued,
                        int(p),
                    ),
                )
            if partition_id is None and keyless:
                db.execute(
                    "UPDATE hub_meta SET value=? WHERE key='round_robin'",
                    (str((rr + n) % self.partition_count),),
                )
        return [(str(p), int(q)) for p, q in zip(acks_p.tolist(), acks_seq.tolist(), strict=True)]

    # -- reading events ---------------------------------------------------------------------

    def read(
        self, partition_id: str, first_sequence_number: int, last_sequence_number: int
    ) -> pa.Table:
        """Events with first <= sequence number <= last, in order, as a RAW_EVENT_SCHEMA table.

        Events before the partition's beginning (expired by retention) are not returned.
        """
        conn = self._conn()
        (beginning,) = conn.execute(
            "SELECT beginning_sequence_number FROM partitions WHERE partition_id=?",
            (int(partition_id),),
        ).fetchone()
        first = max(first_sequence_number, beginning)
        blobs = conn.execute(
            "SELECT data FROM segments WHERE partition_id=? AND last_sequence_number >= ?"
            " AND first_sequence_number <= ? ORDER BY first_sequence_number",
            (int(partition_id), first, last_sequence_number),
        ).fetchall()
        if not blobs:
            return RAW_EVENT_SCHEMA.empty_table()
        table = pa.concat_tables([pa.ipc.open_stream(b).read_all() for (b,) in blobs])
        seq = table["sequence_number"]
        lo = first - seq[0].as_py()  # sequence numbers are consecutive within a partition
        hi = min(last_sequence_number, seq[-1].as_py()) - seq[0].as_py() + 1
        table = table.slice(max(lo, 0), max(hi - max(lo, 0), 0))
        ids = pa.array(np.full(table.num_rows, str(partition_id), dtype=object), pa.string())
        return table.add_column(0, "partition_id", ids).cast(RAW_EVENT_SCHEMA).combine_chunks()

    # -- retention and checkpoints ------------------------------------------------------------

    def expire_before(self, partition_id: str, sequence_number: int) -> int:
        """Expire events below `sequence_number`, as retention would; returns how many."""
        with self._write() as db:
            beginning, next_seq = db.execute(
                "SELECT beginning_sequence_number, next_sequence_number FROM partitions"
                " WHERE partition_id=?",
                (int(partition_id),),
            ).fetchone()
            new_beginning = max(beginning, min(sequence_number, next_seq))
            db.execute(
                "DELETE FROM segments WHERE partition_id=? AND last_sequence_number < ?",
                (int(partition_id), new_beginning),
            )
            db.execute(
                "UPDATE partitions SET beginning_sequence_number=? WHERE partition_id=?",
                (new_beginning, int(partition_id)),
            )
            return new_beginning - beginning

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


def _check_bodies(bodies: Sequence[bytes]) -> None:
    """Raise TypeError, naming the first offender, unless every body is bytes-like."""
    for i, body in enumerate(bodies):
        if not isinstance(body, bytes | bytearray | memoryview):
            raise TypeError(
                f"event body {i} is {type(body).__name__}, not bytes: an event body must be "
                "bytes (encode text first, e.g. json.dumps(event).encode())"
            )


def _chunks(table: pa.Table, size: int) -> list[pa.Table]:
    return [table.slice(i, size) for i in range(0, table.num_rows, size)]


def _to_ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()
