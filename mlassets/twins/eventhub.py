"""The event source role's embedded twin as a resource: `EmbeddedEventHub`.

It puts the durable partitioned log (`mlassets.twins.eventlog.EventLog`) behind the role's
interface (`mlassets.roles.eventhub.EventHubResource`), so the sensor, the landing step and the
simulator use it exactly as they use Azure Event Hubs. The log (and with it pyarrow and numpy)
is imported on first use: `defs/resources.py` builds this resource when the code location
loads, which must stay light.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field, PrivateAttr

from mlassets.lib.partitions import PartitionProperties
from mlassets.roles.eventhub import EventHubResource

if TYPE_CHECKING:
    import pyarrow as pa

    from mlassets.twins.eventlog import EventLog

__all__ = ["EmbeddedEventHub"]


class EmbeddedEventHub(EventHubResource):
    """The embedded twin: a durable partitioned log in a SQLite file (see twins.eventlog)."""

    path: str = Field(description="SQLite file of the log")
    name: str = Field(default="digits", description="hub name, for run keys and display")
    partitions: int = Field(
        default=4, description="partition count, fixed when the file is created"
    )

    _log: Any = PrivateAttr(default=None)

    @property
    def log(self) -> EventLog:
        if self._log is None:
            from mlassets.twins.eventlog import EventLog

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
