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
    if count < 0:
        raise ValueError(f"--count must be 0 or more, not {count}")
    if malformed < 0:
        raise ValueError(f"--malformed must be 0 or more, not {malformed}")
    if malformed > count:
        raise ValueError(f"--malformed ({malformed}) cannot exceed --count ({count})")
    rng = np.random.default_rng(seed)
    images, targets = _digits()
    pick = rng.integers(0, len(images), size=count)
    # Scanners are imperfect: a digit may sit one pixel off centre and every pixel is jittered
    # by -1..1, so the 1,797 source images never repeat exactly across splits.
    pixels = np.clip(_shift(images[pick], rng) + rng.integers(-1, 2, size=(count, 64)), 0, 16)
    labels = targets[pick].astype(np.int64)
    # A batch prefix keeps sample ids unique across calls (and repeatable with a seed).
    batch = f"{int(rng.integers(0, 2**32)):08x}" if seed is not None else uuid.uuid4().hex[:8]
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


def _shift(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Move each 8x8 image by -1..1 pixels in y and x (zero fill), one pass per offset."""
    grid = images.reshape(-1, 8, 8)
    out = np.zeros_like(grid)
    dy, dx = rng.integers(-1, 2, size=(2, len(grid)))

    def span(d: int) -> tuple[slice, slice]:  # (source, destination) along one axis
        return slice(max(0, -d), 8 - max(0, d)), slice(max(0, d), 8 - max(0, -d))

    for y in (-1, 0, 1):
        for x in (-1, 0, 1):
            rows = (dy == y) & (dx == x)
            (ys, yd), (xs, xd) = span(y), span(x)
            moved = np.zeros_like(grid[rows])
            moved[:, yd, xd] = grid[rows][:, ys, xs]
            out[rows] = moved
    return out.reshape(-1, 64)


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


# -- labels ----------------------------------------------------------------------------------

LABELERS = ("ana", "bo", "chen", "dara", "eli", "fumi")
REVIEWER = "reviewer"
#: The labelling team's memory between calls: which samples stay unlabeled (`reserved` for
#: inference) and which labels were withdrawn (`retracted`), so neither is labelled later.
LABELING_STATE = "labeling_state.parquet"
#: Invalid labels the simulator can inject, dealt out in turn (None is SQL NULL).
INVALID_LABELS = (11, None)


@dataclass(frozen=True)
class LabelingRound:
    """What one `simulate labels` call did to the labels table."""

    labeled: int
    wrong: int
    invalid: int
    corrected: int
    retracted: int
    reserved: int
    total_labels: int
    samples: int


def _constant(value: str, n: int) -> pa.Array:
    return pa.repeat(pa.scalar(value, pa.string()), n)


def _read_state(path: Path) -> pa.Table:
    if path.exists():
        return pq.read_table(path)
    return pa.table({"sample_id": pa.array([], pa.string()), "state": pa.array([], pa.string())})


def simulate_labels(
    db,
    data_dir: Path,
    *,
    unlabeled: float = 0.2,
    wrong: float = 0.05,
    retract: float = 0.02,
    invalid: int = 0,
    corrections: bool = True,
    seed: int | None = None,
) -> LabelingRound:
    """One round of a labelling team working on the samples `simulate events` published.

    In order: (1) labels that differ from the truth (wrong or invalid ones from an earlier
    round) are corrected, as updates; (2) a `retract` share of the existing labels is
    withdrawn, as deletes; (3) samples seen for the first time are labelled, as inserts,
    except an `unlabeled` share kept back for inference, and a `wrong` share of the new labels
    is a wrong digit; (4) `invalid` rows get label 11 or NULL (new rows first, then existing
    ones). `db` is a LabelsDatabase.
    """
    import pyarrow.compute as pc

    truth_path = data_dir / "simulated" / "truth.parquet"
    if not truth_path.exists():
        raise ValueError("no simulated events yet: run `mlassets simulate events` first")
    rng = np.random.default_rng(seed)
    truth = pq.read_table(truth_path).select(["sample_id", "label"])
    truth = truth.rename_columns(["sample_id", "truth"])
    # A sample id published twice (a rescan) counts once, with its latest truth.
    truth = truth.append_column("_pos", pa.array(np.arange(truth.num_rows)))
    latest = truth.group_by("sample_id").aggregate([("_pos", "max")])["_pos_max"]
    truth = truth.take(np.sort(latest.to_numpy())).drop_columns(["_pos"])
    state_path = data_dir / "simulated" / LABELING_STATE
    state = _read_state(state_path)
    current = db.read_labels().select(["sample_id", "label", "labeler"])

    # (1) corrections: a label that is not the true digit (wrong, 11, NULL) is fixed.
    corrected = 0
    if corrections and current.num_rows:
        joined = current.join(truth, "sample_id", join_type="inner")
        off = pc.fill_null(pc.not_equal(joined["label"], joined["truth"]), True)
        fix = joined.filter(off)
        corrected = db.update_labels(
            pa.table(
                {
                    "sample_id": fix["sample_id"],
                    "label": fix["truth"].cast(pa.int32()),
                    "labeler": _constant(REVIEWER, fix.num_rows),
                }
            )
        )

    # (2) retractions.
    n_retract = round(retract * current.num_rows)
    retracted_ids = (
        current["sample_id"].take(pa.array(rng.choice(current.num_rows, n_retract, replace=False)))
        if n_retract
        else pa.array([], pa.string())
    )
    retracted = db.delete_labels(retracted_ids)

    # (3) new samples: some kept back for inference, the rest labelled, some wrongly.
    seen = pa.chunked_array([*current["sample_id"].chunks, *state["sample_id"].chunks], pa.string())
    new = truth.filter(pc.invert(pc.is_in(truth["sample_id"], value_set=seen.combine_chunks())))
    keep_back = rng.random(new.num_rows) < unlabeled
    reserved = new.filter(pa.array(keep_back))
    fresh = new.filter(pa.array(~keep_back))
    digits = fresh["truth"].to_numpy().astype(np.int64)
    is_wrong = rng.random(fresh.num_rows) < wrong
    digits = np.where(is_wrong, (digits + rng.integers(1, 10, fresh.num_rows)) % 10, digits)
    labels = pa.array(digits, pa.int32())

    # (4) invalid labels: on new rows first, then on existing ones.
    n_invalid_new = min(invalid, fresh.num_rows)
    if n_invalid_new:
        rows = rng.choice(fresh.num_rows, n_invalid_new, replace=False)
        values = labels.to_numpy(zero_copy_only=False).astype(object)
        values[rows] = [INVALID_LABELS[i % len(INVALID_LABELS)] for i in range(n_invalid_new)]
        labels = pa.array(values, pa.int32())
    who = np.array(LABELERS, dtype=object)[rng.integers(0, len(LABELERS), fresh.num_rows)]
    labelers = pa.array(who, pa.string())
    db.insert_labels(
        pa.table({"sample_id": fresh["sample_id"], "label": labels, "labeler": labelers})
    )
    n_invalid_old = min(invalid - n_invalid_new, current.num_rows - n_retract)
    if n_invalid_old > 0:
        keep = current.filter(pc.invert(pc.is_in(current["sample_id"], value_set=retracted_ids)))
        pick = keep.take(pa.array(rng.choice(keep.num_rows, n_invalid_old, replace=False)))
        db.update_labels(
            pa.table(
                {
                    "sample_id": pick["sample_id"],
                    "label": pa.array(
                        [
                            INVALID_LABELS[(n_invalid_new + i) % len(INVALID_LABELS)]
                            for i in range(n_invalid_old)
                        ],
                        pa.int32(),
                    ),
                    "labeler": pick["labeler"],
                }
            )
        )

    remembered = pa.concat_tables(
        [
            state,
            pa.table(
                {
                    "sample_id": reserved["sample_id"],
                    "state": _constant("reserved", reserved.num_rows),
                }
            ),
            pa.table(
                {"sample_id": retracted_ids, "state": _constant("retracted", len(retracted_ids))}
            ),
        ]
    )
    tmp = state_path.with_suffix(".tmp")
    pq.write_table(remembered, tmp)
    tmp.replace(state_path)
    return LabelingRound(
        labeled=fresh.num_rows,
        wrong=int(is_wrong.sum()),
        invalid=n_invalid_new + max(n_invalid_old, 0),
        corrected=corrected,
        retracted=retracted,
        reserved=reserved.num_rows,
        total_labels=db.count_labels(),
        samples=truth.num_rows,
    )
