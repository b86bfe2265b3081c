"""The Data Factory, with the linked services, datasets and pipelines of `adf/`.

The JSON files are the one source of truth: the local copy engine runs them, `mlassets adf
deploy` publishes them, and this module creates them as Pulumi resources, verbatim except for
the environment's addresses (the lake's ADLS endpoint and the SQL server and database), which
is exactly what `mlassets adf deploy` fills in.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import pulumi
import pulumi_azure_native as azure_native

from mlassets.lib.adf import ADF_DIR, Artifact, Artifacts
from mlassets.roles.datafactory import LAKE_LINKED_SERVICE, SQL_LINKED_SERVICE
from mlassets_infra.config import Settings

#: Pipeline properties that the resource takes as arguments (ARM flattens them).
_PIPELINE_PROPERTIES = {
    "activities": "activities",
    "annotations": "annotations",
    "concurrency": "concurrency",
    "description": "description",
    "folder": "folder",
    "parameters": "parameters",
    "policy": "policy",
    "runDimensions": "run_dimensions",
    "variables": "variables",
}


@dataclass
class Factory:
    factory: azure_native.datafactory.Factory
    linked_services: dict[str, azure_native.datafactory.LinkedService] = field(default_factory=dict)
    datasets: dict[str, azure_native.datafactory.Dataset] = field(default_factory=dict)
    pipelines: dict[str, azure_native.datafactory.Pipeline] = field(default_factory=dict)
    triggers: dict[str, azure_native.datafactory.Trigger] = field(default_factory=dict)

    @property
    def principal_id(self) -> pulumi.Output[str]:
        return self.factory.identity.apply(lambda i: i.principal_id)


def with_addresses(artifact: Artifact, lake_dfs_endpoint: str, sql: tuple[str, str]) -> dict:
    """The artifact's properties with this environment's addresses, as `adf deploy` does."""
    properties = copy.deepcopy(artifact.properties)
    if artifact.kind == "linkedService":
        tp = properties.setdefault("typeProperties", {})
        if artifact.name == LAKE_LINKED_SERVICE:
            tp["url"] = lake_dfs_endpoint
        if artifact.name == SQL_LINKED_SERVICE:
            tp["server"], tp["database"] = sql
    return properties


def create(
    settings: Settings,
    resource_group: pulumi.Input[str],
    lake_dfs_endpoint: pulumi.Output[str],
    sql_server_host: pulumi.Output[str],
    sql_database: pulumi.Output[str],
    adf_dir: str | Path = ADF_DIR,
) -> Factory:
    factory = azure_native.datafactory.Factory(
        "factory",
        factory_name=settings.name("adf"),
        resource_group_name=resource_group,
        location=settings.location,
        identity={"type": "SystemAssigned"},
    )
    out = Factory(factory)
    created: dict[tuple[str, str], pulumi.Resource] = {}
    common = {"factory_name": factory.name, "resource_group_name": resource_group}
    for artifact in Artifacts.load(adf_dir).deploy_order():
        opts = pulumi.ResourceOptions(
            depends_on=[created[ref] for ref in sorted(artifact.references()) if ref in created]
        )
        logical = f"adf-{artifact.kind}-{artifact.name}"
        if artifact.kind == "linkedService":
            properties = pulumi.Output.all(lake_dfs_endpoint, sql_server_host, sql_database).apply(
                lambda v, a=artifact: with_addresses(a, v[0], (v[1], v[2]))
            )
            resource = azure_native.datafactory.LinkedService(
                logical,
                linked_service_name=artifact.name,
                properties=properties,
                **common,
                opts=opts,
            )
            out.linked_services[artifact.name] = resource
        elif artifact.kind == "dataset":
            resource = azure_native.datafactory.Dataset(
                logical,
                dataset_name=artifact.name,
                properties=copy.deepcopy(artifact.properties),
                **common,
                opts=opts,
            )
            out.datasets[artifact.name] = resource
        elif artifact.kind == "pipeline":
            unknown = sorted(set(artifact.properties) - set(_PIPELINE_PROPERTIES))
            if unknown:
                raise pulumi.RunError(
                    f"{artifact.path}: pipeline properties {unknown} are not supported by the "
                    "Pulumi program (known: " + ", ".join(sorted(_PIPELINE_PROPERTIES)) + ")"
                )
            arguments = {
                _PIPELINE_PROPERTIES[k]: copy.deepcopy(v) for k, v in artifact.properties.items()
            }
            resource = azure_native.datafactory.Pipeline(
                logical, pipeline_name=artifact.name, **arguments, **common, opts=opts
            )
            out.pipelines[artifact.name] = resource
        else:  # trigger
            resource = azure_native.datafactory.Trigger(
                logical,
                trigger_name=artifact.name,
                properties=copy.deepcopy(artifact.properties),
                **common,
                opts=opts,
            )
            out.triggers[artifact.name] = resource
        created[(artifact.kind, artifact.name)] = resource
    return out
