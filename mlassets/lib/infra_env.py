"""Stack outputs of `infra/` -> the `.env` that `MLASSETS_DEPLOYMENT=azure` runs with.

The Pulumi program exports each setting under its own variable name (`STACK_OUTPUTS`), so this
mapping is a check, not a translation: every output must be there, none may be a secret, and
the URL of the labels database must carry no credential. Dagster's CLI (`dagster dev`,
`dagster definitions validate`, the webserver and the daemon) loads a `.env` from the folder it
starts in; for `mlassets` commands, `set -a; . ./.env; set +a` exports it to the shell.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

#: The settings the program creates, in the order the `.env` lists them.
STACK_OUTPUTS: tuple[str, ...] = (
    "MLASSETS_LAKE_URL",
    "MLASSETS_EVENTHUB_NAMESPACE",
    "MLASSETS_EVENTHUB_NAME",
    "MLASSETS_EVENTHUB_CONSUMER_GROUP",
    "MLASSETS_LABELS_DB_URL",
    "MLASSETS_LABELS_CAPTURE_INSTANCE",
    "MLASSETS_SERVICEBUS_NAMESPACE",
    "MLASSETS_SERVICEBUS_QUEUE",
    "MLASSETS_BATCH_ACCOUNT_URL",
    "MLASSETS_BATCH_POOL_ID",
    "MLASSETS_BATCH_VM_SIZE",
    "MLASSETS_BATCH_NODES",
    "MLASSETS_BATCH_GPUS_PER_NODE",
    "MLASSETS_BATCH_CONTAINER_IMAGE",
    "MLASSETS_BATCH_IDENTITY_RESOURCE_ID",
    "MLASSETS_PIPES_STORAGE_ACCOUNT_URL",
    "MLASSETS_PIPES_CONTAINER",
    "MLASSETS_ADF_SUBSCRIPTION_ID",
    "MLASSETS_ADF_RESOURCE_GROUP",
    "MLASSETS_ADF_FACTORY_NAME",
    "MLASSETS_ADF_ARM_ENDPOINT",
)

#: What `pulumi stack output --json` prints in place of a secret value.
SECRET_PLACEHOLDER = "[secret]"


class InfraEnvError(ValueError):
    """Stack outputs that cannot become a `.env`; the message says which and why."""


def load_outputs(text: str, source: str) -> dict[str, Any]:
    """The JSON object `pulumi stack output --json` prints."""
    try:
        outputs = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InfraEnvError(f"{source} is not JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(outputs, dict):
        raise InfraEnvError(f"{source} is not a JSON object of stack outputs")
    return outputs


def env_values(outputs: Mapping[str, Any]) -> dict[str, str]:
    """MLASSETS_DEPLOYMENT=azure and every setting of `STACK_OUTPUTS`, checked."""
    missing = [name for name in STACK_OUTPUTS if outputs.get(name) in (None, "")]
    if missing:
        raise InfraEnvError(
            f"stack output(s) {', '.join(missing)} missing: run `pulumi up` in infra/ with this "
            "version of the program, then try again"
        )
    values = {"MLASSETS_DEPLOYMENT": "azure"}
    for name in STACK_OUTPUTS:
        value = outputs[name]
        if isinstance(value, dict | list) or value == SECRET_PLACEHOLDER:
            raise InfraEnvError(f"stack output {name} is not a plain value; refusing to write it")
        text = str(value).lower() if isinstance(value, bool) else str(value)
        if "'" in text or "\n" in text or "\r" in text:
            raise InfraEnvError(f"stack output {name} holds a quote or a line break")
        values[name] = text
    url = urlparse(values["MLASSETS_LABELS_DB_URL"])
    if url.password or "pwd=" in url.query.lower() or "password=" in url.query.lower():
        raise InfraEnvError(
            "stack output MLASSETS_LABELS_DB_URL carries a password; the program's URL signs "
            "in with Microsoft Entra ID and must not"
        )
    return values


def render(values: Mapping[str, str], source: str, quoted: bool = True) -> str:
    """A `.env` that python-dotenv (Dagster) and a POSIX shell read alike: single quotes.
    Unquoted, it is the env-file of `kubectl create configmap --from-env-file` and
    `docker run --env-file`, which take every character after `=` literally."""
    lines = [
        f"# mlassets on Azure, written by `mlassets infra env` from {source}.",
        "# No secrets: every service is reached with Microsoft Entra ID (DefaultAzureCredential).",
    ]
    quote = "'" if quoted else ""
    lines += [f"{name}={quote}{value}{quote}" for name, value in values.items()]
    return "\n".join(lines) + "\n"


def write_env(
    outputs: Mapping[str, Any], path: str | Path, source: str, quoted: bool = True
) -> dict[str, str]:
    values = env_values(outputs)
    Path(path).write_text(render(values, source, quoted), encoding="utf-8")
    return values
