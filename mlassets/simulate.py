"""Simulated scanners: digit events from scikit-learn's bundled 8x8 digits (no network).

Each call records the ground truth of what it published (sample id -> true digit) in
`<data dir>/simulated/truth.parquet`, the way a labelling team would later see the samples;
`mlassets simulate labels` (the labels issue) reads it.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SOURCES = tuple(f"scanner-{i:02d}" for i in range(1, 9))
EVENT_PROPERTIES = {"content-type": "application/json", "schema": "digit-event/v1"}

#: The malformed kinds, in the order they are dealt out.
MALFORMED_KINDS = ("bad_json", "wrong_pixel_count", "out_of_range", "missing_field")


@dataclass(frozen=True)
class SimulatedEvents:
    bodies: list[bytes]
    partition_keys: list[str]
    sample_ids: list[str]
    labels: np.ndarray  # true digit per valid event, -1 for malformed ones
    malformed: dict[str, int]


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # bundled with scikit-learn, read from disk

    bunch = load_digits()
    return bunch.data.astype(np.int16), bunch.target.astype(np.int16)


def make_events(count: int, malformed: int = 0, seed: int | None = None) -> SimulatedEvents:
    """`count` events, `malformed` of them broken in one of MALFORMED_KINDS each."""
    if malformed > count:
        raise ValueError(f"--malformed ({malformed}) cannot exceed --count ({count})")
    rng = np.random.default_rng(seed)
    images, targets = _digits()
    pick = rng.integers(0, len(images), size=count)
    # Scanners are noisy: jitter each pixel by -1..1 so repeated images differ.
    pixels = np.clip(images[pick] + rng.integers(-1, 2, size=(count, 64)), 0, 16)
    labels = targets[pick].astype(np.int64)
    batch = (
        uuid.UUID(int=int(rng.integers(0, 2**62))).hex[:8]
        if seed is not None
        else uuid.uuid4().hex[:8]
    )
    sample_ids = [f"{batch}-{i:07d}" for i in range(count)]
    sources = rng.choice(len(SOURCES), size=count)
    now = datetime.now(UTC)
    bad_rows = (
        set(rng.choice(count, size=malformed, replace=False).tolist()) if malformed else set()
    )
    bodies: list[bytes] = []
    kinds = {k: 0 for k in MALFORMED_KINDS}
    k = 0
    for i in range(count):
        event = {
            "sample_id": sample_ids[i],
            "pixels": pixels[i].tolist(),
            "source": SOURCES[sources[i]],
            "captured_at": (now - timedelta(milliseconds=int(count - i))).isoformat(),
        }
        if i in bad_rows:
            kind = MALFORMED_KINDS[k % len(MALFORMED_KINDS)]
            k += 1
            kinds[kind] += 1
            labels[i] = -1
            bodies.append(_break(event, kind))
        else:
            bodies.append(json.dumps(event, separators=(",", ":")).encode())
    return SimulatedEvents(
        bodies=bodies,
        partition_keys=[SOURCES[s] for s in sources],
        sample_ids=sample_ids,
        labels=labels,
        malformed={k: v for k, v in kinds.items() if v},
    )


def _break(event: dict, kind: str) -> bytes:
    if kind == "bad_json":
        return json.dumps(event).encode()[:-7]  # truncated mid-array
    if kind == "wrong_pixel_count":
        event["pixels"] = event["pixels"][:60]
    elif kind == "out_of_range":
        event["pixels"][5] = 99
    elif kind == "missing_field":
        del event["captured_at"]
    return json.dumps(event).encode()


def record_truth(data_dir: Path, events: SimulatedEvents) -> Path:
    """Append (sample_id, true label) of the valid events to the simulator's ground truth."""
    path = data_dir / "simulated" / "truth.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    valid = events.labels >= 0
    new = pa.table(
        {
            "sample_id": pa.array(np.array(events.sample_ids, dtype=object)[valid], pa.string()),
            "label": pa.array(events.labels[valid], pa.int64()),
        }
    )
    table = pa.concat_tables([pq.read_table(path), new]) if path.exists() else new
    tmp = path.with_suffix(".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)
    return path
