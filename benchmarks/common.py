"""What every benchmark reports: one row per measurement, against a baseline and a target."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Row:
    benchmark: str
    measured: float
    #: None for a plain measurement with nothing to compare against (a wall time).
    baseline: float | None
    unit: str
    #: measured / baseline must reach this (higher_is_better) or stay under it.
    target: float | None
    higher_is_better: bool = True
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.measured / self.baseline if self.baseline else float("nan")

    @property
    def met(self) -> bool | None:
        if self.target is None or self.baseline is None:
            return None
        return self.ratio >= self.target if self.higher_is_better else self.ratio <= self.target


def best_of(fn: Callable[[], object], repeat: int = 3) -> float:
    """Fastest wall time of `repeat` calls, in seconds (the least disturbed measurement)."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def render(rows: list[Row]) -> str:
    header = f"{'benchmark':44} {'measured':>14} {'baseline':>14} {'ratio':>7} {'target':>8}  met"
    lines = [header, "-" * len(header)]
    for r in rows:
        sign = ">=" if r.higher_is_better else "<="
        if r.met is None:
            compared = f"{'-':>14} {'-':>7} {'-':>8}  -  "
        else:
            compared = (
                f"{r.baseline:>10,.1f} {r.unit:<3} {r.ratio:>7.2f} {sign}{r.target:<6} "
                f"{'yes' if r.met else 'NO '}"
            )
        lines.append(
            f"{r.benchmark:44} {r.measured:>10,.1f} {r.unit:<3} {compared}"
            + (f"  ({r.note})" if r.note else "")
        )
    return "\n".join(lines)
