"""The subset of ADF the local engine implements: a pipeline using anything else is refused
before it runs, with an error naming the activity and the property."""

import json
import shutil

import pytest

from mlassets.lib.adf import ADF_DIR, Artifacts, UnsupportedFeatureError
from mlassets.twins.adf.validation import Validator, parse_timespan


def copy_adf(tmp_path):
    root = tmp_path / "adf"
    shutil.copytree(ADF_DIR, root)
    return root


def test_every_pipeline_of_the_repository_is_inside_the_subset():
    validator = Validator(Artifacts.load(ADF_DIR))
    for name in Artifacts.load(ADF_DIR).by_kind.get("pipeline", {}):
        assert validator.pipeline(name).name == name


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda tp: tp.update(enableStaging=True), "enableStaging is not supported"),
        (lambda tp: tp.update(preserve=["ACL"]), "property 'preserve' is not supported"),
        (
            lambda tp: tp["sink"].update(preCopyScript="x"),
            "CopyLabelsTable'.sink: property 'preCopyScript' is not supported",
        ),
        (
            lambda tp: tp["translator"].update(collectionReference="$['items']"),
            "collectionReference is not supported",
        ),
        (
            lambda tp: tp["translator"]["mappings"][0]["sink"].update(type="TimeSpan"),
            "interim type 'TimeSpan' is not supported",
        ),
        (
            lambda tp: tp["sink"].update(
                storeSettings={
                    "type": "AzureBlobFSWriteSettings",
                    "copyBehavior": "@pipeline().parameters.x",
                }
            ),
            None,
        ),
        (
            lambda tp: tp["sink"]["storeSettings"].update(blockSizeInMB="@utcnow('o', 1)"),
            None,
        ),
        (
            lambda tp: tp["sink"]["storeSettings"].update(blockSizeInMB="@rand(1, 2)"),
            r"expression function rand\(\) is not supported",
        ),
    ],
)
def test_unsupported_properties_and_functions_are_rejected_naming_them(tmp_path, change, message):
    root = copy_adf(tmp_path)
    path = root / "pipeline" / "snapshot_labels.json"
    doc = json.loads(path.read_text())
    change(doc["properties"]["activities"][0]["typeProperties"])
    path.write_text(json.dumps(doc))
    validator = Validator(Artifacts.load(root))
    if message is None:
        validator.pipeline("snapshot_labels")  # supported: validation passes
        return
    with pytest.raises(UnsupportedFeatureError, match=message):
        validator.pipeline("snapshot_labels")


def test_activity_timeouts_are_adf_timespans():
    assert parse_timespan("0.00:10:00") == 600
    assert parse_timespan("01:00:30") == 3630
    assert parse_timespan("2.00:00:00") == 2 * 86400
    with pytest.raises(ValueError, match=r"expected d\.hh:mm:ss"):
        parse_timespan("10 minutes")
