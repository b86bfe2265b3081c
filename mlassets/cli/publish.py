"""`mlassets publish FILE`: one event per line of FILE, byte for byte, to the configured hub.

For replaying captured traffic and for testing the landing with bodies of any kind: nothing
is parsed or checked, so what reaches the hub is exactly what the file holds (the landing
decides what lands and what is quarantined). Only the line terminator (`\\n` or `\\r\\n`) is
removed; an empty line is an empty body. Lines are sent in batches, so a large capture is
never held in memory whole.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import BinaryIO

import click

#: Lines published per call to the hub.
BATCH_LINES = 10_000


def event_bodies(stream: BinaryIO) -> Iterator[bytes]:
    """Each line of `stream` without its terminator; a final line without one is kept."""
    for line in stream:
        if line.endswith(b"\r\n"):
            yield line[:-2]
        elif line.endswith(b"\n"):
            yield line[:-1]
        else:
            yield line


def batches(bodies: Iterator[bytes], size: int) -> Iterator[list[bytes]]:
    batch: list[bytes] = []
    for body in bodies:
        batch.append(body)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


@click.command("publish")
@click.argument("file", type=click.File("rb"))
@click.option(
    "--partition-key",
    default=None,
    help="partition key of every event (default: none, so the hub spreads them round robin)",
)
def publish(file: BinaryIO, partition_key: str | None) -> None:
    """Publish each line of FILE (`-`: standard input) as one event body, unparsed."""
    from mlassets.cli import _fail, _resource

    hub = _resource("event_hub")
    started = time.perf_counter()
    sent = 0
    for batch in batches(event_bodies(file), BATCH_LINES):
        keys = [partition_key] * len(batch) if partition_key is not None else None
        try:
            sent += hub.publish(batch, keys)
        except ValueError as exc:  # e.g. a line larger than an Event Hubs batch can carry
            _fail(f"{exc} (after {sent:,} events were published)")
    elapsed = time.perf_counter() - started
    click.echo(
        f"published {sent:,} events from {file.name} to {hub.hub_name!r} in {elapsed:.2f}s"
        + (f" with partition key {partition_key!r}" if partition_key is not None else "")
    )
