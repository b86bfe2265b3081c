"""Reaching an abfs:// lake: which credential, bounded waits, and a probe that fails in seconds.

The Azure SDK's defaults suit a long batch job, not a person waiting at a terminal: Blob
Storage retries each call up to 3 times after 15, 18 and 24 seconds, with a 20 s connect and a
60 s read timeout, so a lake that cannot answer (a credential nobody configured, a wrong
endpoint) costs minutes per call before anything says so. Here every client gets a few short
retries and a short connect timeout, and `check_access` proves the credential with one cheap
listing before the first real operation, failing with one line that names what was tried.
The connection string is never part of a message.
"""

from __future__ import annotations

import logging
import re
from functools import cache
from typing import Any

#: The variable a connection string comes from (what the messages name; never its value).
CONNECTION_STRING_VAR = "MLASSETS_STORAGE_CONNECTION_STRING"
CONNECT_TIMEOUT_S = 5
READ_TIMEOUT_S = 60
#: Retries after 1, 3, 5 s (exponential, base 2): a flaky moment heals, a dead endpoint is
#: known in under half a minute rather than minutes.
RETRIES = 3
#: The probe's own budget: one retry, so a bad credential is reported in seconds.
PROBE_RETRIES = 1


class LakeAccessError(OSError):
    """The lake cannot be reached with the configured credential. The message is the one line to
    show: the lake, what was tried, and what the service said (never a secret)."""


def client_options() -> dict[str, Any]:
    """Bounded retries and timeouts for an async Blob client (what adlfs uses)."""
    from azure.storage.blob.aio import ExponentialRetry

    return {
        "retry_policy": ExponentialRetry(
            initial_backoff=1, increment_base=2, retry_total=RETRIES, random_jitter_range=1
        ),
        "connection_timeout": CONNECT_TIMEOUT_S,
        "read_timeout": READ_TIMEOUT_S,
    }


def delta_options() -> dict[str, str]:
    """The same bounds for deltalake's object_store client."""
    return {
        "timeout": f"{READ_TIMEOUT_S}s",
        "connect_timeout": f"{CONNECT_TIMEOUT_S}s",
        "max_retries": str(RETRIES),
        "retry_timeout": "30s",
    }


@cache
def bounded_filesystem_class() -> type:
    """adlfs's filesystem with the bounded client (built once: fsspec caches instances per class
    and arguments, so every LakeStorage of one lake shares its connections)."""
    from adlfs import AzureBlobFileSystem
    from azure.storage.blob.aio import BlobServiceClient

    class BoundedBlobFileSystem(AzureBlobFileSystem):
        """adlfs whose service client has bounded retries and timeouts."""

        def do_connect(self) -> None:
            if self.connection_string is not None:
                self.service_client = BlobServiceClient.from_connection_string(
                    self.connection_string, **client_options()
                )
                return
            self.account_url = f"https://{self.account_name}.blob.core.windows.net"
            self.service_client = BlobServiceClient(
                account_url=self.account_url, credential=self.credential, **client_options()
            )

    return BoundedBlobFileSystem


def blob_filesystem(connection_string: str | None, account_name: str) -> Any:
    """The fsspec filesystem of an abfs:// lake: the connection string when given, else
    DefaultAzureCredential (adlfs builds its async twin)."""
    cls = bounded_filesystem_class()
    if connection_string:
        check_connection_string(connection_string)
        return cls(connection_string=connection_string)
    return cls(account_name=account_name, anon=False)


def check_connection_string(conn: str, url: str | None = None) -> None:
    """A connection string the SDK can use, or a one-line error naming what is missing."""
    from mlassets.roles.storage import parse_connection_string

    parts = parse_connection_string(conn)
    missing = [key for key in ("AccountName",) if not parts.get(key)]
    if not (parts.get("AccountKey") or parts.get("SharedAccessSignature")):
        missing.append("AccountKey or SharedAccessSignature")
    if missing:
        raise LakeAccessError(
            (f"lake {url}: " if url else "")
            + f"{CONNECTION_STRING_VAR} is not a storage connection string: it has no "
            f"{' and no '.join(missing)} (expected `AccountName=...;AccountKey=...;"
            "BlobEndpoint=...`)"
        )


def default_credential_token(url: str | None = None) -> str:
    """A Storage token from DefaultAzureCredential, or a one-line error naming the credentials
    it tried."""
    from azure.core.exceptions import ClientAuthenticationError
    from azure.identity import DefaultAzureCredential

    # It logs every credential it tried as a warning; the error below says it in one line.
    quiet = logging.getLogger("azure.identity")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        return DefaultAzureCredential().get_token("https://storage.azure.com/.default").token
    except ClientAuthenticationError as exc:
        message = no_credential_message(str(exc))
        raise LakeAccessError(f"lake {url}: {message}" if url else message) from None
    finally:
        quiet.setLevel(level)


def no_credential_message(detail: str) -> str:
    tried = re.findall(r"^\s+(\w+Credential):", detail, flags=re.MULTILINE)
    chain = ", ".join(tried) if tried else detail.splitlines()[0] if detail else "no detail"
    return (
        f"no credential: tried {CONNECTION_STRING_VAR} (unset), "
        f"DefaultAzureCredential ({chain}: none available)"
    )


def check_access(
    url: str, connection_string: str | None, account_name: str, container: str, prefix: str
) -> None:
    """List one blob under the lake's prefix with the configured credential, in seconds.

    A listing needs only data-plane read rights (any Storage Blob Data role), so it proves
    the credential, the endpoint and the container without touching data.
    """
    from azure.core.exceptions import (
        ClientAuthenticationError,
        HttpResponseError,
        ResourceNotFoundError,
        ServiceRequestError,
    )
    from azure.storage.blob import BlobServiceClient, ExponentialRetry

    options: dict[str, Any] = {
        "retry_policy": ExponentialRetry(
            initial_backoff=1, increment_base=2, retry_total=PROBE_RETRIES, random_jitter_range=1
        ),
        "connection_timeout": CONNECT_TIMEOUT_S,
        "read_timeout": READ_TIMEOUT_S,
    }
    if connection_string:
        check_connection_string(connection_string, url)
        tried = f"connection string from {CONNECTION_STRING_VAR}"
        try:
            service = BlobServiceClient.from_connection_string(connection_string, **options)
        except ValueError as exc:
            raise LakeAccessError(f"lake {url}: {tried} unusable: {exc}") from None
    else:
        tried = "DefaultAzureCredential"
        from azure.identity import DefaultAzureCredential

        default_credential_token(url)  # no credential at all: say so before any request
        service = BlobServiceClient(
            f"https://{account_name}.blob.core.windows.net",
            credential=DefaultAzureCredential(),
            **options,
        )
    endpoint = service.url.split("?", 1)[0].rstrip("/")
    try:
        with service:
            blobs = service.get_container_client(container).list_blobs(
                name_starts_with=prefix or None, results_per_page=1
            )
            next(iter(blobs.by_page()), None)
    except ResourceNotFoundError as exc:
        code = _code(exc)
        raise LakeAccessError(
            f"lake {url}: container {container!r} not found at {endpoint} ({code}); create it "
            "or fix the URL"
        ) from None
    except ClientAuthenticationError as exc:
        raise LakeAccessError(f"lake {url}: {tried} refused: {_code(exc)}") from None
    except HttpResponseError as exc:
        raise LakeAccessError(f"lake {url}: {tried} refused: {_code(exc)}") from None
    except ServiceRequestError as exc:
        reason = _redacted(str(exc).splitlines()[0][:200]) if str(exc) else type(exc).__name__
        raise LakeAccessError(f"lake {url}: endpoint {endpoint} unreachable ({reason})") from None


def _redacted(text: str) -> str:
    """A transport message without the request's URL (a SAS would be in its query)."""
    return re.sub(r"(url: |https?://)\S+", r"\1...", text)


def _code(exc: Any) -> str:
    """The service's error code (`AuthenticationFailed`), or the first line of its message."""
    code = getattr(exc, "error_code", None)
    if code:
        return str(getattr(code, "value", code))  # StorageErrorCode is an enum of the codes
    status = getattr(exc, "status_code", None)
    first = (getattr(exc, "reason", None) or str(exc).splitlines()[0] or type(exc).__name__)[:200]
    return f"HTTP {status} {first}" if status else first
