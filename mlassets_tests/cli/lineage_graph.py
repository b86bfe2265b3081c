"""A small real graph for the lineage tests, built once per test process.

400 simulated events (4 of them malformed) go through the `end_to_end` job twice, on the
embedded twins, a scratch data dir and a scratch DAGSTER_HOME:

- round 1: most samples are labelled, `corrected` with a wrong digit, and a share is kept
  unlabelled for inference (`unlabelled`); the job lands, captures, builds dataset v1, trains
  model 1 (1 Horovod worker, 2 epochs: the accuracy bar is set to 0, lineage is what is tested)
  and scores the unlabelled samples;
- round 2: the reviewer corrects `corrected`, and `retracted`'s label is deleted; the job
  captures those changes, builds v2 (with the correction, without `retracted`), trains model 2
  and scores what is unlabelled now, `retracted` included.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pytest

from mlassets import settings
from mlassets.simulate import make_events

RUN_CONFIG = {"ops": {"digit_classifier": {"config": {"epochs": 2}}}}
ENV = {
    "MLASSETS_MIN_TEST_ACCURACY": "0",
    "MLASSETS_MIN_CLASS_ROWS": "1",
    "MLASSETS_TRAINING_WORKERS": "1",
}


@dataclass(frozen=True)
class Graph:
    data: Path
    home: Path
    env: dict[str, str]
    runs: tuple[str, str]
    truth: dict[str, int] = field(repr=False)
    #: Labelled once, correctly, and never touched again.
    labelled: str
    #: Labelled with `wrong` in round 1, corrected to the truth before round 2.
    corrected: str
    wrong: int
    #: Labelled in round 1, its label deleted before round 2.
    retracted: str
    #: Never labelled: scored by both models.
    unlabelled: str


_built: dict[str, Graph] = {}


def shared(tmp_path_factory: pytest.TempPathFactory) -> Graph:
    """The graph of this test process (built on first use: two trainings, about a minute)."""
    if "graph" not in _built:
        _built["graph"] = build(tmp_path_factory.mktemp("lineage"))
    return _built["graph"]


def build(root: Path) -> Graph:
    home = root / "dagster_home"
    home.mkdir()
    shutil.copy(settings.PROJECT_ROOT / "dagster_home" / "dagster.yaml", home)
    env = {"MLASSETS_DATA_DIR": str(root / "data"), "DAGSTER_HOME": str(home), **ENV}
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(name, value)
        from mlassets.definitions import build_definitions

        defs = build_definitions()  # resources bound to this environment
        resources = defs.resources
        events = make_events(400, malformed=4, seed=21)
        resources["event_hub"].publish(events.bodies, events.partition_keys)
        truth = {
            s: int(label)
            for s, label in zip(events.sample_ids, events.labels, strict=True)
            if label >= 0
        }
        ids = list(truth)
        labelled, corrected, retracted = ids[0], ids[1], ids[2]
        unlabelled_ids = set(ids[-80:])
        wrong = (truth[corrected] + 1) % 10
        db = resources["labels_db"]
        db.ensure_schema()
        chosen = [s for s in ids if s not in unlabelled_ids]
        db.insert_labels(
            pa.table(
                {
                    "sample_id": chosen,
                    "label": pa.array(
                        [wrong if s == corrected else truth[s] for s in chosen], pa.int32()
                    ),
                    "labeler": ["ana" if i % 2 else "bo" for i in range(len(chosen))],
                }
            )
        )
        job = defs.resolve_job_def("end_to_end")
        with dg.DagsterInstance.get() as instance:
            first = job.execute_in_process(instance=instance, run_config=RUN_CONFIG)
            db.update_labels(
                pa.table(
                    {
                        "sample_id": [corrected],
                        "label": pa.array([truth[corrected]], pa.int32()),
                        "labeler": ["reviewer"],
                    }
                )
            )
            db.delete_labels([retracted])
            second = job.execute_in_process(instance=instance, run_config=RUN_CONFIG)
        db.dispose()
    return Graph(
        data=root / "data",
        home=home,
        env=env,
        runs=(first.run_id, second.run_id),
        truth=truth,
        labelled=labelled,
        corrected=corrected,
        wrong=wrong,
        retracted=retracted,
        unlabelled=ids[-1],
    )
