"""What a model scores (mlassets.lib.scoring): every unlabelled sample once, and after new
events only those, whatever runs, overlaps or is killed in between."""

import contextlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa

from mlassets.lib import sample_state, scoring, state_merges
from mlassets_tests.lib.test_sample_state import Hub, ids, label, sync


def run_scoring(lake, version="m1", die_after_claim=False) -> list[str]:
    """What the inference_outputs asset does, with a fake model: the ids it scored."""
    state = sample_state.advance(lake)
    scored: list[str] = []

    def score_chunk(claim, j, chunk) -> int:
        if die_after_claim:
            raise KeyboardInterrupt  # killed after claiming, before writing anything
        lake.write_parquet(
            f"{scoring.batch_dir(version, claim.number)}/part-{j:05d}.parquet",
            pa.table({"sample_id": chunk["sample_id"], "predicted_class": np.zeros(len(chunk))}),
        )
        scored.extend(chunk["sample_id"].to_pylist())
        return chunk.num_rows

    with contextlib.suppress(KeyboardInterrupt):
        scoring.score_new(lake, version, state, score_chunk, run_id="run")
    return scored


def predicted(lake, version="m1") -> list[str]:
    files = scoring.prediction_files(lake, version)
    return sorted(lake.read_parquet(files)["sample_id"].to_pylist()) if files else []


def test_a_model_scores_every_unlabelled_sample_then_only_new_ones(db, lake):
    hub = Hub(lake)
    hub.land(ids("a", 30))
    label(db, {s: 1 for s in ids("a", 10)})
    sync(db, lake)
    assert sorted(run_scoring(lake)) == ids("a", 30)[10:]
    hub.land([*ids("b", 5), ids("a", 30)[20]], minute=5)  # a re-sent, already scored sample
    assert sorted(run_scoring(lake)) == ids("b", 5)
    assert run_scoring(lake) == []  # nothing new
    assert predicted(lake) == sorted(ids("a", 30)[10:] + ids("b", 5))
    # Another model scores everything unlabelled again, once.
    assert sorted(run_scoring(lake, "m2")) == sorted(ids("a", 30)[10:] + ids("b", 5))


def test_a_retracted_label_is_scored_then_and_a_new_label_is_not(db, lake):
    hub = Hub(lake)
    hub.land(ids("a", 10))
    label(db, {s: 1 for s in ids("a", 5)})
    sync(db, lake)
    run_scoring(lake)
    db.delete_labels([ids("a", 10)[0]])
    label(db, {ids("a", 10)[9]: 2})
    sync(db, lake)
    assert run_scoring(lake) == [ids("a", 10)[0]]


def test_a_killed_scoring_is_finished_by_the_next_and_nothing_is_scored_twice(db, lake):
    hub = Hub(lake)
    hub.land(ids("a", 20))
    run_scoring(lake, die_after_claim=True)  # claimed batch 0, killed before scoring it
    hub.land(ids("b", 3), minute=2)
    scored = run_scoring(lake)
    assert sorted(scored) == sorted(ids("a", 20) + ids("b", 3))
    assert predicted(lake) == sorted(ids("a", 20) + ids("b", 3))


def test_compaction_of_scored_segments_does_not_score_them_again(db, lake, monkeypatch):
    monkeypatch.setattr(state_merges, "MAX_SEGMENTS", 2)
    hub = Hub(lake)
    for k in range(4):
        hub.land(ids(f"p{k}", 5), minute=k)
        run_scoring(lake)
    state = sample_state.latest(lake)
    assert any(s.compacted_from for s in state.segments)
    hub.land(ids("q", 2), minute=9)
    assert sorted(run_scoring(lake)) == ids("q", 2)
    assert predicted(lake) == sorted([i for k in range(4) for i in ids(f"p{k}", 5)] + ids("q", 2))


def test_scorings_at_the_same_time_score_each_sample_once(db, lake):
    hub = Hub(lake)
    hub.land(ids("a", 40))
    done = []

    def scorer():
        for _ in range(3):
            done.extend(run_scoring(lake))

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(scorer) for _ in range(4)]
        for k in range(3):
            hub.land(ids(f"n{k}", 7), minute=k + 1)
        for f in futures:
            f.result()
    run_scoring(lake)  # whatever a scoring still had in hand
    everything = sorted(ids("a", 40) + [i for k in range(3) for i in ids(f"n{k}", 7)])
    assert predicted(lake) == everything  # each once: no duplicates, none lost
