"""What every benchmark reports: one row per measurement, against a baseline and a target."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Row:
    benchmark: str
    measured: float
    baseline: float
    unit: str
    #: measured / baseline must reach this (higher_is_better) or stay under it.
    target: float
    higher_is_better: bool = True
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.measured / self.baseline if self.baseline else float("nan")

    @property
    def met(self) -> bool:
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
        lines.append(
            f"{r.benchmark:44} {r.measured:>10,.1f} {r.unit:<3} {r.baseline:>10,.1f} {r.unit:<3}"
            f" {r.ratio:>7.2f} {sign}{r.target:<6} {'yes' if r.met else 'NO'}"
            + (f"  ({r.note})" if r.note else "")
        )
    return "\n".join(lines)
