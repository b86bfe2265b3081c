"""Which model scores: the approval rule and the pointer the scorer reads.

`approved_model` decides with `refusal` (the same bar as the blocking test_accuracy check, so
a materialization outside the training run cannot approve a model that check would fail) and
writes the pointer, one small JSON file in the lake, atomically: a scoring run that reads it
while a new model is approved sees the old model or the new one, never half a file.
`inference_outputs` reads the pointer and nothing else, so what scores is what was approved.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

from mlassets.lib.layout import MODEL_PREFIX
from mlassets.roles.storage import LakeStorage

POINTER_PATH = f"{MODEL_PREFIX}/approved.json"


class PointerError(ValueError):
    """The pointer file exists but does not say which model is approved."""


@dataclass(frozen=True)
class ApprovedModel:
    """One approved model, as the pointer records it."""

    version: str
    path: str
    test_accuracy: float
    threshold: float = 0.0
    dataset_version: str = ""
    #: ISO-8601 UTC time of the approval, and the Dagster run that made it.
    approved_at: str = ""
    run_id: str = ""

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> ApprovedModel:
        try:
            raw = json.loads(data)
            known = {f.name for f in fields(cls)}
            model = cls(**{k: v for k, v in raw.items() if k in known})
        except (ValueError, TypeError, AttributeError) as exc:
            raise PointerError(f"{POINTER_PATH} is not an approved-model pointer: {exc}") from None
        if not model.version or not model.path:
            raise PointerError(f"{POINTER_PATH} names no model version and path")
        return model


def refusal(version: str, test_accuracy: float, threshold: float) -> str | None:
    """Why a model may not be approved, or None when it may."""
    if not version:
        return "no digit_classifier has been trained yet: train one (job train_model)"
    if test_accuracy < threshold:
        return (
            f"model {version}: test accuracy {test_accuracy:.4f} is below the bar of "
            f"{threshold:.2f} (the quality resource's min_test_accuracy): not approved"
        )
    return None


def read_pointer(lake: LakeStorage) -> ApprovedModel | None:
    """The approved model, or None before the first approval."""
    if not lake.exists(POINTER_PATH):
        return None
    return ApprovedModel.from_json(lake.read_bytes(POINTER_PATH))


def write_pointer(lake: LakeStorage, model: ApprovedModel) -> None:
    lake.write_bytes(POINTER_PATH, model.to_json())
