"""Row-level lineage on a real graph: two end_to_end runs over 400 events, with a label
corrected and one retracted between them (see mlassets_tests/cli/lineage_graph.py)."""

from __future__ import annotations

import json

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from mlassets.lib import lineage
from mlassets.lib.datasets import split_of
from mlassets.lib.events import LANDED_SCHEMA
from mlassets.lib.landing import RUN_ID_KEY
from mlassets.lib.metadata import LANDED_EVENTS, LandingMetadata
from mlassets.roles.storage import LakeStorage
from mlassets_tests.cli import lineage_graph


@pytest.fixture(scope="module")
def graph(tmp_path_factory) -> lineage_graph.Graph:
    return lineage_graph.shared(tmp_path_factory)


@pytest.fixture
def walk(graph, monkeypatch):
    """lineage(sample_id) and from_prediction(sample_id) on the graph's lake and instance."""
    for name, value in graph.env.items():
        monkeypatch.setenv(name, value)
    lake = LakeStorage(url=f"file://{graph.data / 'lake'}")
    engine = sa.create_engine(f"sqlite:///{graph.data / 'labels.db'}")
    with dg.DagsterInstance.get() as instance:

        class Walk:
            @staticmethod
            def forward(sample_id: str) -> lineage.Lineage:
                return lineage.lineage(lake, instance, sample_id)

            @staticmethod
            def back(sample_id: str) -> lineage.Lineage:
                return lineage.from_prediction(lake, instance, engine, sample_id)

        yield Walk
    engine.dispose()


def the_split(sample_id: str) -> str:
    return ("train", "validation", "test")[int(split_of(pa.array([sample_id]))[0])]


@pytest.mark.slow
def test_a_labelled_sample_shows_its_event_its_label_every_dataset_and_split_and_their_models(
    graph, walk
):
    found = walk.forward(graph.labelled)
    assert found.found
    (event,) = found.events
    assert event.file.startswith(f"landed/events/partition={event.partition_id}/seq=")
    assert event.run_id == graph.runs[0]  # the first run landed every event
    assert event.enqueued_time is not None and event.sequence_number >= 0
    (change,) = found.labels
    assert (change.operation, change.label) == ("insert", graph.truth[graph.labelled])
    assert change.batch.startswith("cdc/labels/lsn=")
    assert found.current_label == graph.truth[graph.labelled]
    # Both rounds built a version that holds it, in the split its hash gives, with its label.
    assert len(found.datasets) == 2
    assert {d.split for d in found.datasets} == {the_split(graph.labelled)}
    assert {d.label for d in found.datasets} == {graph.truth[graph.labelled]}
    assert [d.run_id for d in found.datasets] == [graph.runs[1], graph.runs[0]]  # newest first
    assert {m.dataset_version for m in found.models} == {d.version for d in found.datasets}
    assert all(m.approved for m in found.models)  # the bar is 0 in this graph
    assert found.predictions == []  # labelled samples are not scored


@pytest.mark.slow
def test_a_corrected_label_shows_both_changes_in_lsn_order_and_each_version_trained_on_its_own(
    graph, walk
):
    found = walk.forward(graph.corrected)
    assert [(c.operation, c.label) for c in found.labels] == [
        ("insert", graph.wrong),
        ("update", graph.truth[graph.corrected]),
    ]
    assert found.labels[0].lsn < found.labels[1].lsn
    assert found.labels[1].labeler == "reviewer"
    assert found.current_label == graph.truth[graph.corrected]
    newer, older = found.datasets
    assert (older.run_id, older.label) == (graph.runs[0], graph.wrong)
    assert (newer.run_id, newer.label) == (graph.runs[1], graph.truth[graph.corrected])


@pytest.mark.slow
def test_a_retracted_label_shows_the_delete_and_the_sample_is_then_unlabelled_and_scored(
    graph, walk
):
    found = walk.forward(graph.retracted)
    assert [c.operation for c in found.labels] == ["insert", "delete"]
    assert found.labels[-1].label == graph.truth[graph.retracted]  # the row it removed
    assert found.current_label is None
    # Only the first round's dataset held it; only that round's model trained on it...
    (dataset,) = found.datasets
    assert dataset.run_id == graph.runs[0]
    (model,) = found.models
    assert model.dataset_version == dataset.version
    # ...and the second round's model scored it, now that it is unlabelled.
    (prediction,) = found.predictions
    assert prediction.run_id == graph.runs[1]
    assert prediction.model_version != model.version
    assert found.notes == []


@pytest.mark.slow
def test_an_unlabelled_sample_shows_its_predictions_with_model_class_probability_time_and_run(
    graph, walk
):
    found = walk.forward(graph.unlabelled)
    assert found.labels == [] and found.current_label is None and found.datasets == []
    assert [p.run_id for p in found.predictions] == list(graph.runs)  # one per round, in order
    for p in found.predictions:
        assert 0 <= p.predicted_class <= 9 and 0.0 < p.probability <= 1.0
        assert p.scored_at is not None
        assert p.source.startswith(f"predictions/model={p.model_version}/")


@pytest.mark.slow
def test_an_unknown_sample_is_not_found(walk):
    assert not walk.forward("no-such-sample").found
    assert not walk.back("no-such-sample").found


@pytest.mark.slow
def test_from_its_prediction_in_sql_the_walk_reaches_the_models_their_datasets_and_the_events(
    graph, walk
):
    back = walk.back(graph.retracted)
    assert back.start == "prediction"
    (prediction,) = back.predictions
    assert prediction.source == "sql:predictions"
    assert prediction.run_id == graph.runs[1]
    (model,) = back.models
    assert model.version == prediction.model_version
    (dataset,) = back.datasets
    assert dataset.version == model.dataset_version
    assert not dataset.holds  # the label was deleted before that version was built
    assert dataset.split == the_split(graph.retracted)
    assert [c.operation for c in back.labels] == ["insert", "delete"]
    assert back.events == walk.forward(graph.retracted).events
    forward = walk.forward(graph.unlabelled).predictions
    assert [
        (p.model_version, p.predicted_class) for p in walk.back(graph.unlabelled).predictions
    ] == [(p.model_version, p.predicted_class) for p in forward]


@pytest.mark.slow
def test_the_json_holds_every_section_and_the_text_names_each_stage(graph, walk):
    found = walk.forward(graph.corrected)
    data = json.loads(found.to_json())
    assert data["found"] is True and data["sample_id"] == graph.corrected
    assert [c["operation"] for c in data["labels"]] == ["insert", "update"]
    assert data["events"][0]["run_id"] == graph.runs[0]
    assert {d["split"] for d in data["datasets"]} == {the_split(graph.corrected)}
    text = found.render()
    for heading in ("events (1)", "label history (CDC, 2 changes", "datasets (2 hold it)"):
        assert heading in text
    assert f"landed in {found.events[0].file} by run {graph.runs[0]}" in text


@pytest.mark.slow
def test_the_run_that_landed_a_file_is_read_from_the_files_own_footer(graph, walk):
    found = walk.forward(graph.labelled)
    footer = pq.read_metadata(graph.data / "lake" / found.events[0].file).metadata
    assert footer[RUN_ID_KEY.encode()].decode() == graph.runs[0]


@pytest.mark.slow
def test_a_question_reads_the_files_that_can_hold_the_answer_and_answers_in_well_under_a_second(
    graph, walk
):
    walk.forward(graph.labelled)  # warm: the first call pays for opening the instance
    found = walk.forward(graph.labelled)
    assert found.seconds < 1.0
    lake = graph.data / "lake"
    searched = (
        len(list((lake / "landed" / "events").glob("partition=*/*.parquet")))
        + len(list((lake / "cdc" / "labels").glob("*.parquet")))
        + len(list((lake / "predictions").glob("model=*/batch=*/*.parquet")))
    )
    # Besides those: one footer per matching landed file, the labels table's data files that
    # may hold the id, and per dataset version only the files of the sample's split.
    assert found.files_read < searched + 2 * 8 + 4


# -- without the stamp: the run comes from the materialization that listed the file ---------


def test_a_landed_file_without_a_run_stamp_gets_its_run_from_the_materialization_listing_it(
    tmp_path, instance
):
    lake = LakeStorage(url=f"file://{tmp_path / 'lake'}")
    path = "landed/events/partition=incoming/drop=scan-1.parquet"
    row = {
        "sample_id": "s-1",
        "pixels": [0] * 64,
        "source": "scanner-01",
        "captured_at": 0,
        "partition_id": "incoming",
        "sequence_number": 0,
        "offset": None,
        "enqueued_time": 0,
    }
    lake.write_parquet(path, pa.Table.from_pylist([row], schema=LANDED_SCHEMA))

    @dg.asset(key=LANDED_EVENTS)
    def landed() -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata=LandingMetadata(files=[path]).to_metadata())

    run = dg.materialize([landed], instance=instance)
    (event,) = lineage.lineage(lake, instance, "s-1").events
    assert (event.file, event.run_id) == (path, run.run_id)
