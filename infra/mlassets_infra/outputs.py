"""Stack outputs: each `MLASSETS_*` setting under its own name, plus what the Helm values and
the image builds need. No key, password or connection string is among them (nothing of the
kind is ever created)."""

from __future__ import annotations

from collections.abc import Mapping

import pulumi

from mlassets.lib.infra_env import STACK_OUTPUTS


def export(
    settings_outputs: Mapping[str, pulumi.Input], extras: Mapping[str, pulumi.Input]
) -> None:
    """Export every setting of `STACK_OUTPUTS` (all must be given) and the extras."""
    missing = [name for name in STACK_OUTPUTS if name not in settings_outputs]
    unknown = sorted(set(settings_outputs) - set(STACK_OUTPUTS))
    if missing or unknown:  # a programming error: the contract and the program disagree
        raise pulumi.RunError(f"stack outputs out of sync: missing {missing}, unknown {unknown}")
    for name in STACK_OUTPUTS:
        pulumi.export(name, pulumi.Output.from_input(settings_outputs[name]).apply(str))
    for name, value in extras.items():
        pulumi.export(name, value)
