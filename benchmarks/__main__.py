"""Run every benchmark module (benchmarks/bench_*.py, each with `run() -> list[Row]`), or the
ones named (`python -m benchmarks scoring cdc`). `scale` (minutes, gigabytes) runs only when
named: `python -m benchmarks scale`."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import benchmarks
from benchmarks.common import Row, render

#: Run only when named.
OPT_IN = {"scale"}


def main(selected: list[str]) -> int:
    rows: list[Row] = []
    for mod in sorted(m.name for m in pkgutil.iter_modules(benchmarks.__path__)):
        name = mod.removeprefix("bench_")
        if not mod.startswith("bench_") or (selected and name not in selected):
            continue
        if not selected and name in OPT_IN:
            continue
        print(f"running {mod} ...", file=sys.stderr, flush=True)
        rows += importlib.import_module(f"benchmarks.{mod}").run()
    print(render(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
