"""`mlassets simulate labels`: a labelling team working on the samples that were published."""

import os
import subprocess
import sys

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from mlassets.settings import PROJECT_ROOT
from mlassets.simulate import make_events, record_truth, simulate_labels
from mlassets.twins.labels_db import SqliteLabelsDatabase


@pytest.fixture
def db(data_dir):
    database = SqliteLabelsDatabase(url=f"sqlite:///{data_dir}/labels.db")
    yield database
    database.dispose()


def truth(data_dir):
    return dict(
        zip(
            *pq.read_table(data_dir / "simulated" / "truth.parquet").to_pydict().values(),
            strict=True,
        )
    )


def current(db):
    t = db.read_labels()
    return dict(zip(t["sample_id"].to_pylist(), t["label"].to_pylist(), strict=True))


def test_it_labels_the_published_samples_keeping_a_share_back_for_inference(db, data_dir):
    record_truth(data_dir, make_events(4000, malformed=40, seed=1))
    done = simulate_labels(db, data_dir, seed=1)
    known, labels = truth(data_dir), current(db)
    assert set(labels) <= set(known)  # the same sample ids, never invented ones
    assert done.samples == 3960 and done.labeled == len(labels)
    assert 0.17 < 1 - len(labels) / len(known) < 0.23
    wrong = sum(labels[k] != known[k] for k in labels)
    assert wrong == done.wrong and 0 < wrong < 0.1 * len(labels)
    assert all(0 <= v <= 9 for v in labels.values())


def test_a_later_call_corrects_wrong_labels_and_retracts_some(db, data_dir):
    record_truth(data_dir, make_events(2000, seed=2))
    first = simulate_labels(db, data_dir, seed=1)
    before = current(db)
    second = simulate_labels(db, data_dir, seed=2, retract=0.05)
    after, known = current(db), truth(data_dir)
    assert second.corrected == first.wrong
    assert second.retracted == round(0.05 * len(before)) == len(before) - len(after)
    assert all(after[k] == known[k] for k in after)
    assert second.labeled == 0  # the kept-back share stays unlabeled
    third = simulate_labels(db, data_dir, seed=3, retract=0)
    assert third.labeled == 0 and third.corrected == 0  # retracted samples stay retracted


def test_new_events_get_labelled_by_the_next_call(db, data_dir):
    record_truth(data_dir, make_events(500, seed=3))
    simulate_labels(db, data_dir, seed=1, retract=0)
    record_truth(data_dir, make_events(500))  # unseeded: fresh sample ids
    done = simulate_labels(db, data_dir, seed=2, retract=0)
    assert 350 < done.labeled < 450


def test_invalid_rows_are_injected_and_corrected_later(db, data_dir):
    record_truth(data_dir, make_events(300, seed=5))
    done = simulate_labels(db, data_dir, invalid=6, wrong=0, seed=1)
    t = db.read_labels()
    assert done.invalid == 6
    assert t["label"].null_count == 3
    assert pc.sum(pc.equal(t["label"], 11)).as_py() == 3
    simulate_labels(db, data_dir, seed=2, retract=0)
    t = db.read_labels()
    assert t["label"].null_count == 0 and pc.max(t["label"]).as_py() <= 9


def test_invalid_rows_go_on_existing_labels_when_nothing_is_new(db, data_dir):
    record_truth(data_dir, make_events(200, seed=6))
    simulate_labels(db, data_dir, seed=1)
    done = simulate_labels(db, data_dir, invalid=2, retract=0, seed=2)
    assert done.labeled == 0 and done.invalid == 2
    assert db.read_labels()["label"].null_count == 1


def test_without_published_events_it_says_what_to_run_first(db, data_dir):
    with pytest.raises(ValueError, match="simulate events"):
        simulate_labels(db, data_dir)


def test_the_cli_command_reports_the_round(data_dir):
    record_truth(data_dir, make_events(100, seed=7))
    result = subprocess.run(
        [
            os.path.join(os.path.dirname(sys.executable), "mlassets"),
            "simulate",
            "labels",
            "--invalid",
            "1",
            "--seed",
            "3",
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
    )
    assert result.returncode == 0, result.stderr
    assert "1 invalid" in result.stdout and "unlabeled for inference" in result.stdout
    assert (data_dir / "labels.db").exists()


def test_a_sample_published_twice_is_labelled_once_with_its_latest_truth(db, data_dir):
    events = make_events(50, seed=8)
    record_truth(data_dir, events)
    record_truth(data_dir, events)
    done = simulate_labels(db, data_dir, wrong=0, unlabeled=0, seed=1)
    assert done.samples == 50 and done.labeled == 50 == len(current(db))
