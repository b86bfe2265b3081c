"""Event Hubs' partition vocabulary, shared by the embedded log and the Azure client."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from datetime import datetime


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
