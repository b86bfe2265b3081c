"""What travels on the command queue, and what it means: parsing and building messages.

Three kinds of message are understood (see the README, "Service Bus"):

- ``{"type": "retrain", "reason": "..."}``: train a new model;
- ``{"type": "score"}``: score unlabeled samples with the current model;
- Event Grid ``Microsoft.Storage.BlobCreated`` events, in the Event Grid schema or the
  CloudEvents 1.0 schema, one event or an array of them, for blobs in the lake's ``incoming/``
  drop zone: import that drop.

Anything else is rejected with a reason (`Rejected`), which the sensor turns into a
dead-letter. No Dagster and no Azure SDK here: this is plain parsing, shared by the sensor,
the CLI and the tests.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import quote, unquote, urlparse

from mlassets.roles.storage import LakeStorage, parse_connection_string

BLOB_CREATED = "Microsoft.Storage.BlobCreated"
DROP_ZONE = "incoming"
#: Dead-letter reasons (Service Bus' own, for too many deliveries, is MaxDeliveryCountExceeded).
MALFORMED = "MalformedMessage"
UNKNOWN_TYPE = "UnknownMessageType"
INVALID = "InvalidMessage"
UNSUPPORTED_EVENT = "UnsupportedEventType"
OUTSIDE_DROP_ZONE = "OutsideDropZone"
#: Longest retrain reason kept (it becomes a run tag and model metadata).
MAX_REASON_CHARS = 500

EventSchema = Literal["eventgrid", "cloudevents"]
_VIRTUAL_HOST = re.compile(r"^([a-z0-9]+)\.(?:blob|dfs)\.", re.IGNORECASE)
_FAKE_SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"


class Rejected(ValueError):
    """A message that will never be processed: dead-letter it with this reason."""

    def __init__(self, reason: str, description: str) -> None:
        super().__init__(f"{reason}: {description}")
        self.reason = reason
        self.description = description[:1000]


@dataclass(frozen=True)
class Retrain:
    reason: str


@dataclass(frozen=True)
class Score:
    pass


@dataclass(frozen=True)
class BlobDrop:
    #: Lake-relative path of the dropped blob, ``incoming/...``.
    path: str
    url: str
    event_id: str
    schema: EventSchema
    content_length: int | None = None


@dataclass(frozen=True)
class Ignored:
    """A valid event that needs no run (ADLS Gen2 `CreateFile`: the data comes with a later
    `FlushWithClose` event)."""

    why: str


Command = Retrain | Score | BlobDrop | Ignored


# -- the drop zone ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DropZone:
    """The lake's ``incoming/`` folder, as blob URLs name it."""

    protocol: str  # "file" or "abfs"
    #: file: the lake's local root; abfs: the prefix inside the container ("" for none).
    root: str
    container: str | None = None
    account: str | None = None
    #: Base URL of the blob service (https://<account>.blob.core.windows.net, or Azurite's).
    blob_endpoint: str | None = None

    @classmethod
    def for_lake(cls, lake: LakeStorage) -> DropZone:
        loc = lake.location
        if loc.protocol == "file":
            return cls("file", loc.root.rstrip("/") or "/")
        container, _, prefix = loc.root.partition("/")
        cs = parse_connection_string(lake.connection_string) if lake.connection_string else {}
        account = loc.account_name or cs.get("AccountName")
        endpoint = cs.get("BlobEndpoint")
        if not endpoint and account:
            endpoint = f"https://{account}.blob.{cs.get('EndpointSuffix', 'core.windows.net')}"
        return cls("abfs", prefix.strip("/"), container, account, endpoint and endpoint.rstrip("/"))

    def _blob_prefix(self) -> str:
        return f"{self.root}/{DROP_ZONE}/" if self.root else f"{DROP_ZONE}/"

    def url(self, relative: str) -> str:
        """The URL of a lake-relative path in the drop zone, as Event Grid reports it."""
        relative = normalize_drop_path(relative)
        if self.protocol == "file":
            return "file://" + quote(f"{self.root}/{relative}")
        if not self.blob_endpoint:
            raise ValueError("the lake names no storage account, so its blobs have no URL")
        blob = f"{self.root}/{relative}" if self.root else relative
        return f"{self.blob_endpoint}/{self.container}/{quote(blob)}"

    def relative(self, url: str) -> str:
        """``incoming/...`` for a blob URL inside the drop zone; Rejected for any other."""
        outside = Rejected(
            OUTSIDE_DROP_ZONE,
            f"{url!r} is not in the drop zone {self.describe()}",
        )
        parsed = urlparse(url)
        if self.protocol == "file":
            if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
                raise outside
            path = unquote(parsed.path)
            root = self.root.rstrip("/") + "/"
            if not path.startswith(root):
                raise outside
            blob = path[len(root) :]
            prefix = f"{DROP_ZONE}/"
        else:
            if parsed.scheme not in ("https", "http") or not parsed.hostname:
                raise outside
            path = unquote(parsed.path).lstrip("/")
            host = _VIRTUAL_HOST.match(parsed.hostname)
            if host:
                account = host.group(1)
                container, _, blob = path.partition("/")
            else:  # path style (Azurite, custom domains): /<account>/<container>/<blob>
                account, _, rest = path.partition("/")
                container, _, blob = rest.partition("/")
            if self.account and account.lower() != self.account.lower():
                raise outside
            if container != self.container:
                raise outside
            prefix = self._blob_prefix()
        segments = blob.split("/")
        if any(s in ("", ".", "..") for s in segments) or not blob.startswith(prefix):
            raise outside
        rest = blob[len(prefix) :]
        if not rest:
            raise outside
        return f"{DROP_ZONE}/{rest}"

    def describe(self) -> str:
        if self.protocol == "file":
            return f"file://{self.root}/{DROP_ZONE}/"
        return f"{self.blob_endpoint or '<account>'}/{self.container}/{self._blob_prefix()}"


def normalize_drop_path(path: str) -> str:
    """``2026/a.json`` or ``incoming/2026/a.json`` -> ``incoming/2026/a.json``."""
    clean = path.strip().lstrip("/")
    if clean.startswith(f"{DROP_ZONE}/"):
        clean = clean[len(DROP_ZONE) + 1 :]
    segments = clean.split("/")
    if not clean or any(s in ("", ".", "..") for s in segments):
        raise ValueError(f"{path!r} is not a file path inside {DROP_ZONE}/")
    return f"{DROP_ZONE}/{clean}"


# -- parsing -----------------------------------------------------------------------------------


def _is_event(doc: Any) -> bool:
    return isinstance(doc, dict) and ("specversion" in doc or "eventType" in doc)


def _is_unicode(doc: Any) -> bool:
    """False when a string of the document holds a lone surrogate, which no tag, run config
    or database column can store."""
    try:
        json.dumps(doc, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_message(body: bytes, zone: DropZone) -> list[Command]:
    """What a message asks for (one command, or one per event); Rejected when it is malformed,
    of an unknown kind, or names a blob outside the drop zone."""
    try:
        text = body.decode("utf-8-sig")
        doc = json.loads(text)
    except (UnicodeDecodeError, ValueError) as exc:
        raise Rejected(MALFORMED, f"the body is not UTF-8 JSON: {exc}") from None
    except RecursionError:
        raise Rejected(MALFORMED, "the body is JSON nested too deeply") from None
    if "\\ud" in text.lower() and not _is_unicode(doc):  # only an escape makes a surrogate
        raise Rejected(
            MALFORMED, "the body holds a lone surrogate escape (\\ud800-\\udfff), not Unicode"
        )
    if isinstance(doc, list):
        if not doc:
            raise Rejected(MALFORMED, "the body is an empty JSON array")
        if not all(_is_event(e) for e in doc):
            raise Rejected(
                MALFORMED, "a JSON array must hold Event Grid or CloudEvents events only"
            )
        return [_parse_event(e, zone) for e in doc]
    if not isinstance(doc, dict):
        raise Rejected(MALFORMED, f"the body is a JSON {type(doc).__name__}, not an object")
    if _is_event(doc):
        return [_parse_event(doc, zone)]
    kind = doc.get("type")
    if kind is None:
        raise Rejected(MALFORMED, "the JSON object has no 'type'")
    if kind == "retrain":
        reason = doc.get("reason", "requested over Service Bus")
        if not isinstance(reason, str) or not reason.strip():
            raise Rejected(INVALID, "'reason' of a retrain command must be a non-empty string")
        return [Retrain(reason.strip()[:MAX_REASON_CHARS])]
    if kind == "score":
        return [Score()]
    raise Rejected(
        UNKNOWN_TYPE,
        f"type {str(kind)[:100]!r} is none of 'retrain', 'score' or an Event Grid "
        f"{BLOB_CREATED} event",
    )


def _parse_event(event: dict, zone: DropZone) -> Command:
    if "specversion" in event:
        schema: EventSchema = "cloudevents"
        if str(event["specversion"]) != "1.0":
            raise Rejected(INVALID, f"CloudEvents specversion {event['specversion']!r} is not 1.0")
        etype = event.get("type")
        data = event.get("data")
        if data is None and "data_base64" in event:
            raise Rejected(INVALID, "a BlobCreated CloudEvent carries JSON data, not data_base64")
    else:
        schema = "eventgrid"
        etype = event.get("eventType")
        data = event.get("data")
    event_id = event.get("id")
    if etype != BLOB_CREATED:
        raise Rejected(UNSUPPORTED_EVENT, f"event type {str(etype)[:100]!r} is not {BLOB_CREATED}")
    if not isinstance(event_id, str) or not event_id:
        raise Rejected(INVALID, f"the {schema} event has no 'id'")
    if not isinstance(data, dict) or not isinstance(data.get("url"), str):
        raise Rejected(INVALID, f"the {BLOB_CREATED} event {event_id} has no data.url")
    url = data["url"]
    path = zone.relative(url)
    if data.get("api") == "CreateFile":
        return Ignored(f"{path}: CreateFile (the data arrives with FlushWithClose)")
    length = data.get("contentLength")
    return BlobDrop(
        path=path,
        url=url,
        event_id=event_id,
        schema=schema,
        content_length=length if isinstance(length, int) else None,
    )


# -- building (for `mlassets send` and the tests) ------------------------------------------


def retrain_command(reason: str | None = None) -> dict:
    return {"type": "retrain", "reason": reason or "requested with mlassets send"}


def score_command() -> dict:
    return {"type": "score"}


def blob_created_event(
    zone: DropZone,
    path: str,
    *,
    schema: EventSchema = "eventgrid",
    content_length: int = 0,
    content_type: str = "application/octet-stream",
    api: str = "PutBlob",
    event_id: str | None = None,
) -> dict:
    """An Event Grid BlobCreated event for a path in the drop zone, shaped like the ones Azure
    Storage publishes (in the Event Grid or the CloudEvents 1.0 schema)."""
    relative = normalize_drop_path(path)
    url = zone.url(relative)
    account = zone.account or "local"
    container = zone.container or "lake"
    blob = f"{zone.root}/{relative}" if zone.protocol == "abfs" and zone.root else relative
    source = (
        f"/subscriptions/{_FAKE_SUBSCRIPTION}/resourceGroups/mlassets/providers/"
        f"Microsoft.Storage/storageAccounts/{account}"
    )
    subject = f"/blobServices/default/containers/{container}/blobs/{blob}"
    data = {
        "api": api,
        "clientRequestId": str(uuid.uuid4()),
        "requestId": str(uuid.uuid4()),
        "eTag": f"0x{uuid.uuid4().hex[:15].upper()}",
        "contentType": content_type,
        "contentLength": content_length,
        "blobType": "BlockBlob",
        "url": url,
        "sequencer": f"{uuid.uuid4().int % 10**32:032d}",
        "storageDiagnostics": {"batchId": str(uuid.uuid4())},
    }
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    eid = event_id or str(uuid.uuid4())
    if schema == "cloudevents":
        return {
            "specversion": "1.0",
            "type": BLOB_CREATED,
            "source": source,
            "subject": subject,
            "id": eid,
            "time": now,
            "datacontenttype": "application/json",
            "data": data,
        }
    return {
        "topic": source,
        "subject": subject,
        "eventType": BLOB_CREATED,
        "id": eid,
        "data": data,
        "dataVersion": "",
        "metadataVersion": "1",
        "eventTime": now,
    }


def event_content_type(schema: EventSchema) -> str:
    return (
        "application/cloudevents+json; charset=utf-8"
        if schema == "cloudevents"
        else "application/json"
    )
