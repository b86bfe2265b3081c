"""What Event Hubs and Service Bus share on the wire: AMQP bodies and strings.

Both SDKs hand back AMQP messages; a body from one of Microsoft's SDKs is a data body, but a
foreign sender may use a value or sequence body, and strings may arrive as bytes that are not
UTF-8. Turning them into bytes here, never failing, lets the decoder quarantine or the sensor
dead-letter a strange message instead of one message stopping a whole partition or queue.
"""

from __future__ import annotations

import json
from typing import Any


def text(value: Any) -> Any:
    """AMQP strings and binaries both arrive as bytes; never fail on one that is not UTF-8."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes | bytearray) else value


def body_bytes(body: Any, body_type: Any) -> bytes:
    """The body as bytes: a data body is joined, a value or sequence body serialized as JSON.

    `body_type` is either SDK's AmqpMessageBodyType (both have the values data, sequence,
    value)."""
    kind = getattr(body_type, "value", body_type)
    if kind == "data":
        return body if isinstance(body, bytes) else b"".join(body)
    if isinstance(body, bytes | bytearray):
        return bytes(body)
    if isinstance(body, str):
        return body.encode("utf-8")
    if kind == "sequence":
        body = list(body)
    return json.dumps(body, default=lambda v: text(v) if isinstance(v, bytes) else str(v)).encode()
