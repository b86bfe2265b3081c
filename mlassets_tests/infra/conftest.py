"""Runs the Pulumi program of `infra/` under Pulumi's mocks: no CLI, no cloud, no network.

`deploy(config)` runs `program.run` once with a fresh set of mocks and returns every resource
the program registered (type, logical name, inputs as the provider would receive them) and
the resolved stack outputs. The mocks answer like Azure does for the few outputs the program
reads back (endpoints, names, identities' principal ids).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from mlassets.settings import PROJECT_ROOT

pulumi = pytest.importorskip("pulumi")
pytest.importorskip("pulumi_azure_native")

if str(PROJECT_ROOT / "infra") not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT / "infra"))

SUBSCRIPTION = "11111111-1111-1111-1111-111111111111"
TENANT = "22222222-2222-2222-2222-222222222222"
DEPLOYER = "33333333-3333-3333-3333-333333333333"

#: The input that names each resource type (what Azure returns as `name`).
NAME_INPUTS = {
    "azure-native:resources:ResourceGroup": "resourceGroupName",
    "azure-native:managedidentity:UserAssignedIdentity": "resourceName",
    "azure-native:storage:StorageAccount": "accountName",
    "azure-native:storage:BlobContainer": "containerName",
    "azure-native:eventhub:Namespace": "namespaceName",
    "azure-native:eventhub:EventHub": "eventHubName",
    "azure-native:eventhub:ConsumerGroup": "consumerGroupName",
    "azure-native:servicebus:Namespace": "namespaceName",
    "azure-native:servicebus:Queue": "queueName",
    "azure-native:eventgrid:SystemTopic": "systemTopicName",
    "azure-native:eventgrid:SystemTopicEventSubscription": "eventSubscriptionName",
    "azure-native:sql:Server": "serverName",
    "azure-native:sql:Database": "databaseName",
    "azure-native:datafactory:Factory": "factoryName",
    "azure-native:containerregistry:Registry": "registryName",
    "azure-native:batch:BatchAccount": "accountName",
    "azure-native:batch:Pool": "poolName",
    "azure-native:dbforpostgresql:Server": "serverName",
    "azure-native:dbforpostgresql:Database": "databaseName",
}


@dataclass
class Registered:
    type: str
    name: str
    inputs: dict
    id: str


@dataclass
class Deployment:
    resources: list[Registered] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)

    def of_type(self, kind: str) -> list[Registered]:
        return [r for r in self.resources if r.type == f"azure-native:{kind}"]

    def one(self, kind: str, name: str | None = None) -> Registered:
        found = [r for r in self.of_type(kind) if name is None or r.name == name]
        assert len(found) == 1, f"{kind} {name}: {[r.name for r in self.of_type(kind)]}"
        return found[0]


class AzureMocks(pulumi.runtime.Mocks):
    def __init__(self, deployment: Deployment) -> None:
        self.deployment = deployment

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict]:
        inputs = dict(args.inputs)
        rid = f"/mock/{args.typ.split(':', 1)[1]}/{args.name}"
        outputs = dict(inputs)
        if args.typ in NAME_INPUTS:
            outputs["name"] = inputs.get(NAME_INPUTS[args.typ])
        if args.typ == "azure-native:managedidentity:UserAssignedIdentity":
            outputs.update(principalId=f"principal-{args.name}", clientId=f"client-{args.name}")
        if isinstance(inputs.get("identity"), dict) and "SystemAssigned" in str(
            inputs["identity"].get("type")
        ):
            outputs["identity"] = {**inputs["identity"], "principalId": f"principal-{args.name}"}
        name = outputs.get("name")
        extra: dict[str, dict] = {
            "azure-native:storage:StorageAccount": {
                "primaryEndpoints": {
                    "blob": f"https://{name}.blob.core.windows.net/",
                    "dfs": f"https://{name}.dfs.core.windows.net/",
                }
            },
            "azure-native:eventhub:Namespace": {
                "serviceBusEndpoint": f"https://{name}.servicebus.windows.net:443/"
            },
            "azure-native:servicebus:Namespace": {
                "serviceBusEndpoint": f"https://{name}.servicebus.windows.net:443/"
            },
            "azure-native:sql:Server": {"fullyQualifiedDomainName": f"{name}.database.windows.net"},
            "azure-native:dbforpostgresql:Server": {
                "fullyQualifiedDomainName": f"{name}.postgres.database.azure.com"
            },
            "azure-native:batch:BatchAccount": {
                "accountEndpoint": f"{name}.westeurope.batch.azure.com"
            },
            "azure-native:containerregistry:Registry": {"loginServer": f"{name}.azurecr.io"},
        }
        outputs.update(extra.get(args.typ, {}))
        self.deployment.resources.append(Registered(args.typ, args.name, inputs, rid))
        return rid, outputs

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict:
        if args.token == "azure-native:authorization:getClientConfig":
            return {
                "clientId": "deployer-client",
                "objectId": DEPLOYER,
                "subscriptionId": SUBSCRIPTION,
                "tenantId": TENANT,
            }
        raise AssertionError(f"the program called {args.token}, which the mocks do not know")


def fresh_event_loop() -> None:
    """Make sure Pulumi's mocks find an open event loop on this thread.

    Pulumi registers resources on the thread's current loop; a test elsewhere in the suite
    that ran `asyncio.run` (Dagster's, the Azure SDKs') leaves the main thread with none.
    A loop Pulumi already uses is kept: its outputs are bound to it.
    """
    try:
        loop = asyncio.get_event_loop()
    except RuntimeError:
        loop = None
    if loop is None or loop.is_closed():
        asyncio.set_event_loop(asyncio.new_event_loop())


def run_program(config: dict[str, str] | None = None, stack: str = "test") -> Deployment:
    from mlassets_infra import config as infra_config
    from mlassets_infra import program

    fresh_event_loop()
    deployment = Deployment()
    pulumi.runtime.set_mocks(AzureMocks(deployment), project="mlassets", stack=stack, preview=False)
    settings = infra_config.parse(config or {}, stack)

    @pulumi.runtime.test
    def deploy():
        created = program.run(settings)
        return pulumi.Output.all(**created.outputs).apply(deployment.outputs.update)

    deploy()
    return deployment


@pytest.fixture(scope="module")
def default_stack() -> Deployment:
    """The program with no config at all: every default."""
    return run_program()


@pytest.fixture
def deploy() -> Callable[..., Deployment]:
    return run_program
