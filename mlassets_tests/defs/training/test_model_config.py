"""The launchpad config of `digit_classifier` reaches the training program's command line: what
a person sets is passed as it is, and what they leave empty is left to the program ('auto')."""

import dagster as dg
import pytest

from mlassets.defs.training.model import digit_classifier
from mlassets.roles.storage import LakeStorage
from mlassets.roles.training import TrainingCompute, TrainingJob
from mlassets.training_program.train import Args, parse_args


class Recorded(Exception):
    pass


#: The jobs RecordingCompute was given (a resource is a pydantic model: no mutable fields).
JOBS: list[TrainingJob] = []


class RecordingCompute(TrainingCompute):
    """Stops at the compute boundary and keeps the job it was given."""

    @property
    def description(self) -> str:
        return "recording"

    def run(self, context, job: TrainingJob):
        JOBS.append(job)
        raise Recorded


def _command_line(tmp_path, config: dict) -> Args:
    JOBS.clear()
    with dg.instance_for_test() as instance:
        instance.report_runless_asset_event(
            dg.AssetMaterialization("training_dataset", metadata={"version": "0123456789abcdef"})
        )
        result = dg.materialize(
            [digit_classifier],
            instance=instance,
            resources={
                "lake": LakeStorage(url=f"file://{tmp_path}/lake"),
                "training_compute": RecordingCompute(),
            },
            run_config={"ops": {"digit_classifier": {"config": config}}},
            raise_on_error=False,
        )
    assert not result.success
    (job,) = JOBS
    assert job.module == "mlassets.training_program.train"
    return parse_args(job.args)


def test_an_empty_batch_size_micro_batch_and_epochs_are_left_to_the_training_program(tmp_path):
    args = _command_line(tmp_path, {})
    # 'auto' on the command line
    assert (args.batch_size, args.micro_batch, args.epochs) == (None, None, None)
    assert args.dataset_version == "0123456789abcdef"


def test_launchpad_values_reach_the_training_program(tmp_path):
    args = _command_line(
        tmp_path, {"batch_size": 1024, "micro_batch": 0, "epochs": 3, "learning_rate": 0.01}
    )
    assert (args.batch_size, args.micro_batch, args.epochs) == (1024, 0, 3)
    assert args.learning_rate == pytest.approx(0.01)
