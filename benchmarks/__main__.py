"""Run every benchmark module (benchmarks/bench_*.py, each with `run() -> list[Row]`)."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import benchmarks
from benchmarks.common import Row, render


def main(selected: list[str]) -> int:
    rows: list[Row] = []
    for mod in sorted(m.name for m in pkgutil.iter_modules(benchmarks.__path__)):
        if not mod.startswith("bench_") or (
            selected and mod.removeprefix("bench_") not in selected
        ):
            continue
        print(f"running {mod} ...", file=sys.stderr, flush=True)
        rows += importlib.import_module(f"benchmarks.{mod}").run()
    print(render(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
