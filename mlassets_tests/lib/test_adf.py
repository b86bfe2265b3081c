"""The ADF artifacts in adf/: ADF's own format, complete, secret-free, and run by both engines."""

import json
import shutil
from pathlib import Path

import pytest
from azure.mgmt.datafactory import models

from mlassets.lib.adf import (
    ADF_DIR,
    ArtifactError,
    Artifacts,
    ParameterError,
    coerce_parameters,
    parse_param_options,
)
from mlassets.roles.datafactory import sdk_problems, sdk_resource
from mlassets.twins.adf.validation import Validator

RESOURCE_CLASSES = {
    "linkedService": models.LinkedServiceResource,
    "dataset": models.DatasetResource,
    "pipeline": models.PipelineResource,
}
FILES = sorted(ADF_DIR.glob("*/*.json"))


def _activities(activities):
    for act in activities:
        yield act
        tp = act.get("typeProperties") or {}
        for branch in ("ifTrueActivities", "ifFalseActivities", "activities"):
            yield from _activities(tp.get(branch) or [])


def test_the_layout_is_adfs_git_integration_with_the_three_pipelines():
    assert {p.parent.name for p in FILES} == {"linkedService", "dataset", "pipeline"}
    artifacts = Artifacts.load()
    assert {"snapshot_labels", "copy_incoming_to_landed", "export_predictions"} <= set(
        artifacts.names("pipeline")
    )
    for path in FILES:
        document = json.loads(path.read_text())
        assert set(document) == {"name", "properties"}, path
        assert document["name"] == path.stem


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_file_deserializes_into_the_sdk_model_classes(path: Path):
    kind = path.parent.name
    document = json.loads(path.read_text())
    resource = RESOURCE_CLASSES[kind](document)  # the SDK's own deserialization
    assert isinstance(resource, RESOURCE_CLASSES[kind])
    assert resource.name == path.stem
    props = resource.properties
    if kind == "linkedService":
        assert isinstance(props, models.LinkedService) and type(props) is not models.LinkedService
    elif kind == "dataset":
        assert isinstance(props, models.Dataset) and type(props) is not models.Dataset
    else:
        assert isinstance(props, models.Pipeline)
        # The 10.x models resolve one discriminator level (Copy is registered under
        # ExecutionActivity); each activity must deserialize into its concrete class.
        concrete = {"Copy": models.CopyActivity, "IfCondition": models.IfConditionActivity}
        for raw in _activities(document["properties"]["activities"]):
            activity = concrete[raw["type"]](raw)
            assert activity.name == raw["name"]
            assert activity.type_properties is not None
    # Strictly: no property the SDK does not know, no polymorphic type it cannot resolve.
    assert sdk_problems(resource) == []


def test_a_typo_or_an_unknown_type_is_caught_before_deploy():
    doc = json.loads((ADF_DIR / "pipeline" / "snapshot_labels.json").read_text())
    doc["properties"]["activities"][0]["typeProperties"]["sink"]["storeSettings"][
        "copyBehaviour"
    ] = 1
    problems = sdk_problems(sdk_resource("pipeline", doc))
    assert problems == [
        "properties.activities[0].typeProperties.sink.storeSettings: AzureBlobFSWriteSettings "
        "has no property 'copyBehaviour'"
    ]
    doc["properties"]["activities"][0]["type"] = "Cpy"
    assert "unknown Activity type 'Cpy'" in sdk_problems(sdk_resource("pipeline", doc))[0]
    ds = json.loads((ADF_DIR / "dataset" / "ds_lake_parquet.json").read_text())
    ds["properties"]["typeProperties"]["compresionCodec"] = "snappy"
    assert "compresionCodec" in sdk_problems(sdk_resource("dataset", ds))[0]


SECRET_KEYS = {
    "password",
    "connectionString",
    "accountKey",
    "sasUri",
    "sasToken",
    "servicePrincipalKey",
    "servicePrincipalCredential",
    "encryptedCredential",
    "userName",
    "credential",
}


def _keys(node):
    if isinstance(node, dict):
        for k, v in node.items():
            yield k
            yield from _keys(v)
    elif isinstance(node, list):
        for v in node:
            yield from _keys(v)


def test_linked_services_hold_no_secret_and_use_the_managed_identity():
    artifacts = Artifacts.load()
    for name in artifacts.names("linkedService"):
        ls = artifacts.linked_service(name)
        assert not SECRET_KEYS & set(_keys(ls.document)), name
    sql = artifacts.linked_service("ls_labels_sql").properties["typeProperties"]
    assert sql["authenticationType"] == "SystemAssignedManagedIdentity"
    lake = artifacts.linked_service("ls_lake").properties["typeProperties"]
    assert set(lake) == {"url"}  # url alone: ADF authenticates with the managed identity


def test_pipelines_take_paths_and_tables_as_parameters_and_the_lake_location():
    artifacts = Artifacts.load()
    for name in artifacts.names("pipeline"):
        params = artifacts.pipeline(name).properties["parameters"]
        assert {"lakeFileSystem", "lakeRoot"} <= set(params), name
    snapshot = artifacts.pipeline("snapshot_labels").properties["parameters"]
    assert {"sourceSchema", "sourceTable", "targetFolder", "targetFile"} <= set(snapshot)
    export = artifacts.pipeline("export_predictions").properties["parameters"]
    assert {"sourceFolder", "targetSchema", "targetTable", "keyColumns"} <= set(export)
    copy = artifacts.pipeline("copy_incoming_to_landed").document
    tp = [a for a in _activities(copy["properties"]["activities"]) if a["type"] == "Copy"]
    assert len(tp) == 2
    for act in tp:  # ADF's fault tolerance, with the session log in the lake
        assert act["typeProperties"]["enableSkipIncompatibleRow"] is True
        assert act["typeProperties"]["logSettings"]["enableCopyActivityLog"] is True


def test_deploy_order_puts_everything_after_what_it_refers_to():
    order = Artifacts.load().deploy_order()
    position = {(a.kind, a.name): i for i, a in enumerate(order)}
    kinds = [a.kind for a in order]
    assert kinds == sorted(kinds, key=["linkedService", "dataset", "pipeline"].index)
    for artifact in order:
        for ref in artifact.references():
            assert position[ref] < position[(artifact.kind, artifact.name)], (artifact, ref)


def test_every_pipeline_is_inside_the_local_engines_subset():
    validator = Validator(Artifacts.load())
    for name in Artifacts.load().names("pipeline"):
        validator.pipeline(name)


def _copy_adf(tmp_path: Path) -> Path:
    root = tmp_path / "adf"
    shutil.copytree(ADF_DIR, root)
    return root


def test_loading_refuses_misnamed_files_dangling_references_and_cycles(tmp_path):
    root = _copy_adf(tmp_path)
    (root / "dataset" / "ds_lake_parquet.json").rename(root / "dataset" / "other.json")
    with pytest.raises(ArtifactError, match=r"must be named ds_lake_parquet\.json"):
        Artifacts.load(root)
    (root / "dataset" / "other.json").unlink()
    with pytest.raises(ArtifactError, match="refers to dataset 'ds_lake_parquet'"):
        Artifacts.load(root)

    root = _copy_adf(tmp_path / "second")
    for a, b in (("p_one", "p_two"), ("p_two", "p_one")):
        doc = {
            "name": a,
            "properties": {
                "activities": [
                    {
                        "name": "Run",
                        "type": "ExecutePipeline",
                        "typeProperties": {
                            "pipeline": {"referenceName": b, "type": "PipelineReference"}
                        },
                    }
                ]
            },
        }
        (root / "pipeline" / f"{a}.json").write_text(json.dumps(doc))
    with pytest.raises(ArtifactError, match="reference cycle"):
        Artifacts.load(root).deploy_order()


def test_run_parameters_are_coerced_to_the_declared_types():
    artifacts = Artifacts.load()
    export = artifacts.pipeline("export_predictions")
    values = coerce_parameters(export, {"keyColumns": '["sample_id"]', "targetTable": "p2"})
    assert values["keyColumns"] == ["sample_id"]
    assert values["targetTable"] == "p2"
    assert values["sourceFolder"] == "predictions"  # the declared default
    with pytest.raises(ParameterError, match=r"has no parameter\(s\) \['nope'\]"):
        coerce_parameters(export, {"nope": "1"})
    with pytest.raises(ParameterError, match="is not a valid Array"):
        coerce_parameters(export, {"keyColumns": "sample_id"})
    with pytest.raises(ParameterError, match=r"needs parameter\(s\) \['targetFile'\]"):
        coerce_parameters(artifacts.pipeline("snapshot_labels"), {})
    assert parse_param_options(["a=1", "b=x=y"]) == {"a": "1", "b": "x=y"}
    with pytest.raises(ParameterError, match="expected NAME=VALUE"):
        parse_param_options(["novalue"])
