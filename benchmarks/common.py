"""What every benchmark reports: one row per measurement, against a baseline and a target.

On a shared machine one run proves little: a row's figures are medians of repeated runs
(`alternating`, `median_of`) and its note says how far the runs spread (`Spread`).
"""

from __future__ import annotations

import statistics
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


@dataclass(frozen=True)
class Spread:
    """Repeated measurements: their median (what a target is judged on: one lucky or unlucky
    run on a shared machine does not decide) and their range (how much the machine disturbed
    them)."""

    values: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.values:
            raise ValueError("no measurements")

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)

    def describe(self, digits: int = 2) -> str:
        """For a row's note: "median 0.88 of 3, spread 0.84-0.93"."""
        return (
            f"median {self.median:.{digits}f} of {len(self.values)}, "
            f"spread {self.low:.{digits}f}-{self.high:.{digits}f}"
        )

    def ratio_to(self, baseline: Spread) -> Spread:
        """Per-run throughput ratios of paired wall times (baseline time / this time, run i
        against run i): the spread of the ratio a target is judged on."""
        return Spread(tuple(b / o for o, b in zip(self.values, baseline.values, strict=True)))


def median_of(fn: Callable[[], object], repeat: int = 3) -> Spread:
    """Wall seconds of `repeat` calls of `fn`: median, min and max."""
    return alternating({"only": fn}, repeat)["only"]


def alternating(
    fns: dict[str, Callable[[], object]],
    repeat: int = 3,
    setup: Callable[[], object] | None = None,
) -> dict[str, Spread]:
    """Wall seconds of each of `fns`, called in turn `repeat` times (`setup`, untimed, before
    every call), so that load on a shared machine hits all of them alike; every other round
    runs them in reverse, so that none always runs first (or right after another's cleanup)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(repeat):
        for name, fn in list(fns.items())[:: -1 if i % 2 else 1]:
            if setup is not None:
                setup()
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)
    return {name: Spread(tuple(t)) for name, t in times.items()}


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
