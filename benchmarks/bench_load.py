"""Code-location load time against `import dagster` (target: at most 1.5x).

Each is a fresh interpreter, as when `dagster dev`, the daemon or a run worker loads the code
location; the best of several runs is kept.
"""

from __future__ import annotations

import subprocess
import sys

from benchmarks.common import Row, best_of


def _python(code: str) -> None:
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def run(repeat: int = 5) -> list[Row]:
    dagster = best_of(lambda: _python("import dagster"), repeat)
    location = best_of(lambda: _python("import mlassets.definitions"), repeat)
    return [
        Row(
            "load mlassets.definitions",
            location * 1000,
            dagster * 1000,
            "ms",
            1.5,
            higher_is_better=False,
            note="baseline: import dagster",
        ),
    ]
