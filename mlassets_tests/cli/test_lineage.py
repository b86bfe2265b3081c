"""`mlassets lineage` on the command line, over the small real graph of lineage_graph."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from mlassets.cli import main
from mlassets.settings import PROJECT_ROOT
from mlassets_tests.cli import lineage_graph

pytestmark = pytest.mark.slow

BIN = os.path.dirname(sys.executable)


@pytest.fixture(scope="module")
def graph(tmp_path_factory) -> lineage_graph.Graph:
    return lineage_graph.shared(tmp_path_factory)


@pytest.fixture
def mlassets(graph, monkeypatch):
    """`mlassets ARGS...` in this process, on the graph's data dir and Dagster instance."""
    for name, value in graph.env.items():
        monkeypatch.setenv(name, value)

    def invoke(*args: str):
        return CliRunner().invoke(main, list(args), catch_exceptions=False)

    return invoke


def test_it_prints_each_stage_of_a_labelled_sample_in_the_order_the_data_flowed(graph, mlassets):
    result = mlassets("lineage", graph.corrected)
    assert result.exit_code == 0, result.output
    out = result.stdout
    headings = ["events (1)", "label history (CDC, 2 changes", "datasets (2 hold it)", "models (2)"]
    positions = [out.index(h) for h in [f"sample {graph.corrected}", *headings, "predictions (0)"]]
    assert positions == sorted(positions)
    assert f"by run {graph.runs[0]}" in out
    assert "update  label" in out and "by reviewer" in out
    assert "answered in" in out


def test_an_unlabelled_sample_shows_its_predictions(graph, mlassets):
    out = mlassets("lineage", graph.unlabelled).stdout
    assert "predictions (2)" in out
    assert f"run {graph.runs[1]}" in out


def test_json_prints_the_same_as_json(graph, mlassets):
    result = mlassets("lineage", "--json", graph.retracted)
    data = json.loads(result.stdout)
    assert [c["operation"] for c in data["labels"]] == ["insert", "delete"]
    assert data["current_label"] is None
    assert [p["run_id"] for p in data["predictions"]] == [graph.runs[1]]


def test_prediction_starts_from_sql_and_walks_back_to_the_events(graph, mlassets):
    out = mlassets("lineage", "--prediction", graph.retracted).stdout
    assert "(sql:predictions)" in out
    order = ["predictions (1)", "models (1)", "datasets (0 hold it)", "label history", "events (1)"]
    assert [out.index(h) for h in order] == sorted(out.index(h) for h in order)
    assert "not in it (would be split" in out
    data = json.loads(mlassets("lineage", "--prediction", "--json", graph.retracted).stdout)
    assert data["start"] == "prediction" and data["predictions"][0]["source"] == "sql:predictions"


def test_a_labelled_sample_has_no_prediction_to_start_from(graph, mlassets):
    result = mlassets("lineage", "--prediction", graph.labelled)
    assert result.exit_code == 1
    assert "has no prediction in the SQL table `predictions`" in result.stderr


def test_an_unknown_sample_gets_one_not_found_line_on_stderr_and_exit_1(graph):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLASSETS_")}
    result = subprocess.run(
        [f"{BIN}/mlassets", "lineage", "no-such-sample"],
        cwd=PROJECT_ROOT,
        env={**env, **graph.env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "not found: sample 'no-such-sample' is in no landed event, label change or prediction"
    ]
