"""`mlassets infra env`: the Pulumi stack's outputs as the `.env` of the Azure deployment."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import click

from mlassets.lib.infra_env import InfraEnvError, load_outputs, write_env
from mlassets.settings import PROJECT_ROOT

INFRA_DIR = PROJECT_ROOT / "infra"


def _fail(message: str) -> None:
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(2)


def _stack_outputs(stack: str | None) -> str:
    """`pulumi stack output --json` of STACK, or of the selected stack (secrets stay masked:
    none are needed)."""
    pulumi = shutil.which("pulumi")
    if pulumi is None:
        _fail(
            "the Pulumi CLI is not installed (https://www.pulumi.com/docs/install/); or pass "
            "--from with the JSON of `pulumi stack output --json`"
        )
    which = ["--stack", stack] if stack else []
    done = subprocess.run(
        [pulumi, "stack", "output", "--json", *which, "--cwd", str(INFRA_DIR)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["no message"])[-1]
        _fail(f"`pulumi stack output{' --stack ' + stack if stack else ''}` failed: {reason}")
    return done.stdout


@click.group("infra")
def infra_group() -> None:
    """The Azure deployment that infra/ (Pulumi) creates."""


@infra_group.command("env")
@click.option(
    "--stack",
    help="Pulumi stack to read with `pulumi stack output --json` (default: the selected one)",
)
@click.option(
    "--from",
    "from_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="a file holding the JSON of `pulumi stack output --json`",
)
@click.option(
    "--output",
    default=".env",
    show_default=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="where to write (Dagster's CLI loads .env from the folder it starts in)",
)
@click.option(
    "--format",
    "file_format",
    type=click.Choice(["dotenv", "env-file"]),
    default="dotenv",
    show_default=True,
    help="dotenv: quoted, for Dagster and `. ./.env`; env-file: unquoted, for "
    "`kubectl create configmap --from-env-file` and `docker run --env-file`",
)
def infra_env(stack: str | None, from_file: Path | None, output: Path, file_format: str) -> None:
    """Write the MLASSETS_* settings of a stack as a .env for MLASSETS_DEPLOYMENT=azure."""
    if stack is not None and from_file is not None:
        _fail("give --stack NAME or --from FILE, not both")
    if from_file is not None:
        try:
            text = from_file.read_text(encoding="utf-8")
        except OSError as exc:
            _fail(f"cannot read {from_file}: {exc.strerror or exc}")
        source = str(from_file)
    else:
        text, source = _stack_outputs(stack), f"stack {stack or '(selected)'}"
    try:
        values = write_env(
            load_outputs(text, source), output, source, quoted=file_format == "dotenv"
        )
    except InfraEnvError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot write {output}: {exc.strerror or exc}")
    if file_format == "env-file":
        click.echo(f"wrote {len(values)} settings from {source} to {output} (unquoted)")
        return
    click.echo(
        f"wrote {len(values)} settings from {source} to {output}; Dagster's CLI loads it from "
        f"this folder, and `set -a; . {output}; set +a` exports it for mlassets commands"
    )
