"""The Pulumi program under Pulumi's mocks: every resource, with the properties mlassets
relies on, the role assignments, the factory's artifacts and the stack outputs."""

from __future__ import annotations

import json
from urllib.parse import urlparse

from mlassets.lib.adf import ADF_DIR, Artifacts
from mlassets.lib.infra_env import STACK_OUTPUTS
from mlassets.roles.servicebus import DEFAULT_LOCK_DURATION_SECONDS, DEFAULT_MAX_DELIVERY_COUNT
from mlassets.settings import SETTINGS
from mlassets_tests.infra.conftest import DEPLOYER, SUBSCRIPTION, TENANT, Deployment


def role_id(guid: str) -> str:
    return f"/subscriptions/{SUBSCRIPTION}/providers/Microsoft.Authorization/roleDefinitions/{guid}"


ROLE_IDS = {
    "Storage Blob Data Contributor": "ba92f5b4-2d11-453d-a403-e96b0029c9fe",
    "Azure Event Hubs Data Receiver": "a638d3c7-ab3a-418d-83e6-5f17a39d4fde",
    "Azure Event Hubs Data Sender": "2b629674-e913-4c01-ae53-ef4638d8f975",
    "Azure Service Bus Data Receiver": "4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0",
    "Azure Service Bus Data Sender": "69a216fc-b8fb-44d8-bc22-1f3c2cd27a39",
    "Data Factory Contributor": "673868aa-7521-48a0-acc6-0f60742d39f5",
    "AcrPull": "7f951dda-4ed3-4680-a7ca-43fe172d538d",
    "Azure Batch Data Contributor": "6aaa78f1-f7de-44ca-8722-c64a23943cae",
}


# -- resources and their properties ----------------------------------------------------------


def test_the_resource_group_and_a_dagster_identity_are_created_by_default(default_stack):
    group = default_stack.one("resources:ResourceGroup")
    assert group.inputs["resourceGroupName"] == "mlassets-test-rg"
    assert group.inputs["location"] == "westeurope"
    names = {r.name for r in default_stack.of_type("managedidentity:UserAssignedIdentity")}
    assert names == {"dagster-identity", "pool-identity"}


def test_an_existing_resource_group_and_dagster_principal_are_used_instead(deploy):
    principal = "44444444-4444-4444-4444-444444444444"
    stack = deploy({"resourceGroupName": "platform-rg", "dagsterPrincipalId": principal})
    assert stack.of_type("resources:ResourceGroup") == []
    assert [r.name for r in stack.of_type("managedidentity:UserAssignedIdentity")] == [
        "pool-identity"
    ]
    assert {r.inputs["resourceGroupName"] for r in stack.of_type("storage:StorageAccount")} == {
        "platform-rg"
    }
    dagster = [r for r in stack.of_type("authorization:RoleAssignment") if r.name.startswith("dag")]
    assert dagster and {r.inputs["principalId"] for r in dagster} == {principal}
    assert stack.outputs["MLASSETS_ADF_RESOURCE_GROUP"] == "platform-rg"


def test_storage_is_adls_gen2_with_tls_1_2_no_anonymous_access_and_no_shared_keys(default_stack):
    account = default_stack.one("storage:StorageAccount").inputs
    assert account["kind"] == "StorageV2"
    assert account["isHnsEnabled"] is True
    assert account["minimumTlsVersion"] == "TLS1_2"
    assert account["allowBlobPublicAccess"] is False
    assert account["allowSharedKeyAccess"] is False
    containers = {r.name: r.inputs for r in default_stack.of_type("storage:BlobContainer")}
    assert {c["containerName"] for c in containers.values()} == {
        "lake",
        "mlassets-batch",
        "dagster-compute-logs",
    }
    assert {c["publicAccess"] for c in containers.values()} == {"None"}


def test_event_hubs_is_standard_with_kafka_four_partitions_one_day_and_a_landing_group(
    default_stack,
):
    namespace = default_stack.one("eventhub:Namespace").inputs
    assert namespace["sku"] == {"name": "Standard", "tier": "Standard", "capacity": 1}
    assert namespace["kafkaEnabled"] is True
    assert namespace["disableLocalAuth"] is True
    hub = default_stack.one("eventhub:EventHub").inputs
    assert hub["eventHubName"] == "digits"
    assert hub["partitionCount"] == 4
    assert hub["retentionDescription"] == {"cleanupPolicy": "Delete", "retentionTimeInHours": 24}
    group = default_stack.one("eventhub:ConsumerGroup").inputs
    assert (group["consumerGroupName"], group["eventHubName"]) == ("landing", "digits")


def test_event_hubs_capacity_partitions_and_retention_come_from_config(deploy):
    stack = deploy(
        {"eventHubCapacity": "3", "eventHubPartitions": "32", "eventHubRetentionDays": "7"}
    )
    assert stack.one("eventhub:Namespace").inputs["sku"]["capacity"] == 3
    hub = stack.one("eventhub:EventHub").inputs
    assert hub["partitionCount"] == 32
    assert hub["retentionDescription"]["retentionTimeInHours"] == 7 * 24


def test_the_command_queue_matches_the_embedded_queue_defaults(default_stack):
    namespace = default_stack.one("servicebus:Namespace").inputs
    assert namespace["sku"]["name"] == "Standard"
    assert namespace["disableLocalAuth"] is True
    queue = default_stack.one("servicebus:Queue").inputs
    assert queue["queueName"] == "mlassets-commands"
    assert DEFAULT_LOCK_DURATION_SECONDS == 60  # so PT1M below is the embedded queue's lock
    assert queue["lockDuration"] == "PT1M"
    assert queue["maxDeliveryCount"] == DEFAULT_MAX_DELIVERY_COUNT
    assert queue["deadLetteringOnMessageExpiration"] is True


def test_queue_lock_duration_is_written_as_iso_8601(deploy):
    stack = deploy({"queueLockSeconds": "90", "queueMaxDeliveryCount": "3"})
    queue = stack.one("servicebus:Queue").inputs
    assert (queue["lockDuration"], queue["maxDeliveryCount"]) == ("PT1M30S", 3)


def test_blob_created_under_incoming_goes_to_the_queue_with_the_topics_identity(default_stack):
    topic = default_stack.one("eventgrid:SystemTopic")
    assert topic.inputs["topicType"] == "Microsoft.Storage.StorageAccounts"
    assert topic.inputs["source"] == default_stack.one("storage:StorageAccount").id
    assert topic.inputs["identity"] == {"type": "SystemAssigned"}
    subscription = default_stack.one("eventgrid:SystemTopicEventSubscription").inputs
    assert subscription["systemTopicName"] == topic.inputs["systemTopicName"]
    assert subscription["filter"] == {
        "includedEventTypes": ["Microsoft.Storage.BlobCreated"],
        "subjectBeginsWith": "/blobServices/default/containers/lake/blobs/incoming/",
    }
    assert subscription["deliveryWithResourceIdentity"] == {
        "identity": {"type": "SystemAssigned"},
        "destination": {
            "endpointType": "ServiceBusQueue",
            "resourceId": default_stack.one("servicebus:Queue").id,
        },
    }
    assert "destination" not in subscription  # no key-based delivery beside it
    sender = default_stack.one("authorization:RoleAssignment", "events-to-queue").inputs
    assert sender["principalId"] == f"principal-{topic.name}"
    assert sender["roleDefinitionId"] == role_id(ROLE_IDS["Azure Service Bus Data Sender"])
    assert sender["scope"] == default_stack.one("servicebus:Queue").id


def test_the_incoming_filter_follows_the_lake_prefix(deploy):
    stack = deploy({"lakeContainer": "data", "lakePrefix": "mlassets/prod"})
    subject = stack.one("eventgrid:SystemTopicEventSubscription").inputs["filter"]
    assert subject["subjectBeginsWith"] == (
        "/blobServices/default/containers/data/blobs/mlassets/prod/incoming/"
    )
    assert stack.outputs["MLASSETS_LAKE_URL"] == (
        "abfs://data@mlassetstestlake.dfs.core.windows.net/mlassets/prod/"
    )


def test_azure_sql_accepts_microsoft_entra_only_and_holds_the_labels_database(default_stack):
    server = default_stack.one("sql:Server").inputs
    assert "administratorLoginPassword" not in server and "administratorLogin" not in server
    assert server["administrators"] == {
        "administratorType": "ActiveDirectory",
        "azureADOnlyAuthentication": True,
        "login": "mlassets-sql-admin",
        "sid": DEPLOYER,  # whoever runs `pulumi up`, unless sqlAdminObjectId says otherwise
        "tenantId": TENANT,
        "principalType": "User",
    }
    assert server["minimalTlsVersion"] == "1.2"
    database = default_stack.one("sql:Database").inputs
    assert (database["databaseName"], database["serverName"]) == ("labels", server["serverName"])


def test_the_data_factory_has_a_system_assigned_identity(default_stack):
    factory = default_stack.one("datafactory:Factory").inputs
    assert factory["identity"] == {"type": "SystemAssigned"}
    assert factory["factoryName"] == "mlassets-test-adf"


def test_the_registry_has_no_admin_user_and_batch_accepts_entra_id_only(default_stack):
    registry = default_stack.one("containerregistry:Registry").inputs
    assert registry["adminUserEnabled"] is False
    account = default_stack.one("batch:BatchAccount").inputs
    assert "SharedKey" not in account["allowedAuthenticationModes"]
    assert account["poolAllocationMode"] == "BatchService"


def test_the_gpu_pool_can_run_a_multi_instance_horovod_task(default_stack):
    pool = default_stack.one("batch:Pool").inputs
    identity = default_stack.one("managedidentity:UserAssignedIdentity", "pool-identity")
    registry = default_stack.one("containerregistry:Registry").inputs
    assert pool["poolName"] == "mlassets-gpu"
    assert pool["vmSize"] == "Standard_NC4as_T4_v3"
    assert pool["interNodeCommunication"] == "Enabled"
    assert pool["taskSlotsPerNode"] == 1
    assert pool["identity"] == {
        "type": "UserAssigned",
        "userAssignedIdentities": {identity.id: {}},
    }
    vm = pool["deploymentConfiguration"]["virtualMachineConfiguration"]
    login_server = f"{registry['registryName']}.azurecr.io"
    assert vm["containerConfiguration"] == {
        "type": "DockerCompatible",
        "containerImageNames": [f"{login_server}/mlassets-training:latest"],
        "containerRegistries": [
            {"registryServer": login_server, "identityReference": {"resourceId": identity.id}}
        ],
    }
    assert "password" not in json.dumps(pool).lower()
    assert pool["startTask"]["waitForSuccess"] is True
    # Starts empty: the Batch role grows a fixed pool to the task's node count.
    assert pool["scaleSettings"] == {"fixedScale": {"targetDedicatedNodes": 0}}


def test_pool_vm_size_and_node_counts_come_from_config(deploy):
    stack = deploy(
        {
            "batchVmSize": "Standard_NC24ads_A100_v4",
            "batchNodes": "4",
            "batchGpusPerNode": "1",
            "batchPoolNodes": "4",
            "imageTag": "v7",
        }
    )
    pool = stack.one("batch:Pool").inputs
    assert pool["vmSize"] == "Standard_NC24ads_A100_v4"
    assert pool["scaleSettings"]["fixedScale"]["targetDedicatedNodes"] == 4
    vm = pool["deploymentConfiguration"]["virtualMachineConfiguration"]
    assert vm["containerConfiguration"]["containerImageNames"][0].endswith(":v7")
    assert stack.outputs["MLASSETS_BATCH_NODES"] == "4"
    assert stack.outputs["MLASSETS_BATCH_VM_SIZE"] == "Standard_NC24ads_A100_v4"


def test_postgres_for_dagster_is_off_by_default_and_entra_only_when_on(default_stack, deploy):
    assert default_stack.of_type("dbforpostgresql:Server") == []
    assert not any(k.startswith("postgres") for k in default_stack.outputs)
    stack = deploy({"postgresEnabled": "true"})
    server = stack.one("dbforpostgresql:Server").inputs
    assert server["authConfig"] == {
        "activeDirectoryAuth": "Enabled",
        "passwordAuth": "Disabled",
        "tenantId": TENANT,
    }
    assert "administratorLoginPassword" not in server
    admin = stack.one("dbforpostgresql:Administrator").inputs
    assert admin["objectId"] == "principal-dagster-identity"
    assert admin["principalType"] == "ServicePrincipal"
    assert stack.one("dbforpostgresql:Database").inputs["databaseName"] == "dagster"
    assert stack.outputs["postgresHost"] == "mlassets-test-pg.postgres.database.azure.com"
    assert stack.outputs["postgresUser"] == admin["principalName"] == "mlassets-test-dagster"


def test_a_federated_credential_lets_the_dagster_service_account_use_the_identity(deploy):
    issuer = "https://westeurope.oic.prod-aks.azure.com/tenant/cluster/"
    stack = deploy({"aksOidcIssuer": issuer})
    credential = stack.one("managedidentity:FederatedIdentityCredential").inputs
    assert credential["issuer"] == issuer
    assert credential["subject"] == "system:serviceaccount:dagster:mlassets-dagster"
    assert credential["audiences"] == ["api://AzureADTokenExchange"]


# -- the factory's artifacts are the files of adf/ ---------------------------------------------


def _with_addresses(name: str, properties: dict) -> dict:
    expected = json.loads(json.dumps(properties))
    if name == "ls_lake":
        expected["typeProperties"]["url"] = "https://mlassetstestlake.dfs.core.windows.net/"
    if name == "ls_labels_sql":
        expected["typeProperties"]["server"] = "mlassets-test-sql.database.windows.net"
        expected["typeProperties"]["database"] = "labels"
    return expected


def test_linked_services_are_the_files_of_adf_with_this_environments_addresses(default_stack):
    artifacts = Artifacts.load(ADF_DIR)
    created = {
        r.inputs["linkedServiceName"]: r.inputs
        for r in default_stack.of_type("datafactory:LinkedService")
    }
    assert sorted(created) == artifacts.names("linkedService")
    for name, inputs in created.items():
        properties = artifacts.linked_service(name).properties
        assert inputs["properties"] == _with_addresses(name, properties)
        assert inputs["factoryName"] == "mlassets-test-adf"
    assert "password" not in json.dumps(created).lower()


def test_datasets_are_the_files_of_adf_verbatim(default_stack):
    artifacts = Artifacts.load(ADF_DIR)
    created = {
        r.inputs["datasetName"]: r.inputs["properties"]
        for r in default_stack.of_type("datafactory:Dataset")
    }
    assert sorted(created) == artifacts.names("dataset")
    for name, properties in created.items():
        assert properties == artifacts.dataset(name).properties


def test_pipelines_are_the_files_of_adf_verbatim(default_stack):
    artifacts = Artifacts.load(ADF_DIR)
    created = {
        r.inputs["pipelineName"]: r.inputs for r in default_stack.of_type("datafactory:Pipeline")
    }
    assert sorted(created) == artifacts.names("pipeline")
    for name, inputs in created.items():
        sent = {k: v for k, v in inputs.items() if k not in ("pipelineName", "factoryName")}
        sent.pop("resourceGroupName")
        assert sent == artifacts.pipeline(name).properties


# -- role assignments ------------------------------------------------------------------------


def test_each_role_assignment_has_its_principal_role_and_narrowest_scope(default_stack):
    d: Deployment = default_stack
    ids = {
        "hub": d.one("eventhub:EventHub").id,
        "queue": d.one("servicebus:Queue").id,
        "lake": d.one("storage:BlobContainer", "lake").id,
        "pipes": d.one("storage:BlobContainer", "pipes").id,
        "logs": d.one("storage:BlobContainer", "compute-logs").id,
        "factory": d.one("datafactory:Factory").id,
        "batch": d.one("batch:BatchAccount").id,
        "registry": d.one("containerregistry:Registry").id,
    }
    dagster, factory, pool, topic = (
        "principal-dagster-identity",
        "principal-factory",
        "principal-pool-identity",
        "principal-storage-events",
    )
    data_plane = [
        ("Azure Event Hubs Data Receiver", ids["hub"]),
        ("Azure Event Hubs Data Sender", ids["hub"]),
        ("Azure Service Bus Data Receiver", ids["queue"]),
        ("Azure Service Bus Data Sender", ids["queue"]),
        ("Storage Blob Data Contributor", ids["lake"]),
        ("Storage Blob Data Contributor", ids["pipes"]),
        ("Storage Blob Data Contributor", ids["logs"]),
        ("Data Factory Contributor", ids["factory"]),
        ("Azure Batch Data Contributor", ids["batch"]),
    ]
    expected = {
        # Dagster, and whoever ran `pulumi up` (to run mlassets from their own shell).
        *((dagster, role, scope) for role, scope in data_plane),
        *((DEPLOYER, role, scope) for role, scope in data_plane),
        (factory, "Storage Blob Data Contributor", ids["lake"]),
        (pool, "Storage Blob Data Contributor", ids["lake"]),
        (pool, "Storage Blob Data Contributor", ids["pipes"]),
        (pool, "AcrPull", ids["registry"]),
        (topic, "Azure Service Bus Data Sender", ids["queue"]),
    }
    by_id = {role_id(guid): name for name, guid in ROLE_IDS.items()}
    assignments = d.of_type("authorization:RoleAssignment")
    actual = {
        (a.inputs["principalId"], by_id[a.inputs["roleDefinitionId"]], a.inputs["scope"])
        for a in assignments
    }
    assert actual == expected
    assert len(assignments) == len(expected)
    kinds = {a.inputs["principalId"]: a.inputs["principalType"] for a in assignments}
    assert kinds.pop(DEPLOYER) == "User"
    assert set(kinds.values()) == {"ServicePrincipal"}
    # Nothing at the account, resource group or subscription level.
    assert not any(
        a.inputs["scope"] in (d.one("storage:StorageAccount").id, "/subscriptions/" + SUBSCRIPTION)
        for a in assignments
    )


def test_the_operator_grants_can_be_moved_to_a_group_or_left_out(deploy):
    group = "55555555-5555-5555-5555-555555555555"
    stack = deploy({"operatorObjectId": group, "operatorPrincipalType": "Group"})
    operator = [
        r.inputs
        for r in stack.of_type("authorization:RoleAssignment")
        if r.name.startswith("operator-")
    ]
    assert len(operator) == 9
    assert {(a["principalId"], a["principalType"]) for a in operator} == {(group, "Group")}
    nobody = deploy({"operatorObjectId": "none"})
    assert not [
        r for r in nobody.of_type("authorization:RoleAssignment") if r.name.startswith("operator-")
    ]


def test_the_pool_is_created_after_its_identity_may_pull_and_read(default_stack):
    names = [r.name for r in default_stack.resources]
    assert names.index("gpu-pool") > max(
        names.index(n) for n in ("pool-acr-pull", "pool-lake", "pool-pipes")
    )


# -- stack outputs -------------------------------------------------------------------------


def test_outputs_are_every_non_secret_azure_setting_of_the_readme(default_stack):
    azure_only = {s.name for s in SETTINGS if s.scope == "azure" and not s.secret}
    # Settings read in both deployments whose Azure value is something the program creates.
    created_here = {
        "MLASSETS_LAKE_URL",
        "MLASSETS_EVENTHUB_NAME",
        "MLASSETS_LABELS_DB_URL",
        "MLASSETS_SERVICEBUS_QUEUE",
    }
    exported = {k for k in default_stack.outputs if k.startswith("MLASSETS_")}
    assert exported == set(STACK_OUTPUTS) == azure_only | created_here


def test_outputs_name_the_services_the_program_created(default_stack):
    out = default_stack.outputs
    assert out["MLASSETS_LAKE_URL"] == "abfs://lake@mlassetstestlake.dfs.core.windows.net/"
    assert out["MLASSETS_EVENTHUB_NAMESPACE"] == "mlassets-test-eh.servicebus.windows.net"
    assert out["MLASSETS_SERVICEBUS_NAMESPACE"] == "mlassets-test-sb.servicebus.windows.net"
    assert out["MLASSETS_EVENTHUB_CONSUMER_GROUP"] == "landing"
    assert out["MLASSETS_BATCH_ACCOUNT_URL"] == (
        "https://mlassetstestbatch.westeurope.batch.azure.com"
    )
    assert out["MLASSETS_BATCH_IDENTITY_RESOURCE_ID"] == (
        default_stack.one("managedidentity:UserAssignedIdentity", "pool-identity").id
    )
    assert (
        out["MLASSETS_PIPES_STORAGE_ACCOUNT_URL"]
        == "https://mlassetstestlake.blob.core.windows.net"
    )
    assert out["MLASSETS_ADF_SUBSCRIPTION_ID"] == SUBSCRIPTION
    assert out["MLASSETS_ADF_FACTORY_NAME"] == "mlassets-test-adf"
    assert out["dagsterIdentityClientId"] == "client-dagster-identity"


def test_no_secret_is_among_the_outputs(deploy):
    stack = deploy({"postgresEnabled": "true"})
    secret_settings = {s.name for s in SETTINGS if s.secret} - {"MLASSETS_LABELS_DB_URL"}
    assert not secret_settings & set(stack.outputs)
    text = json.dumps(stack.outputs).lower()
    for word in ("password", "pwd=", "accountkey", "sharedaccesskey", "connectionstring", "key="):
        assert word not in text
    url = urlparse(stack.outputs["MLASSETS_LABELS_DB_URL"])
    assert url.scheme == "mssql+pyodbc" and url.username in (None, "") and url.password is None
    assert url.hostname == "mlassets-test-sql.database.windows.net"


def test_no_key_is_listed_and_no_sas_rule_is_created(default_stack):
    # Listing keys needs an invoke (listStorageAccountKeys, listNamespaceKeys, ...): the mocks
    # refuse every invoke but getClientConfig, so a program that listed one would not get here.
    kinds = {r.type.split(":", 1)[1] for r in default_stack.resources}
    assert not {k for k in kinds if "AuthorizationRule" in k or "Key" in k}
    assert default_stack.one("eventhub:Namespace").inputs["disableLocalAuth"] is True


def test_outputs_are_read_by_the_roles_as_the_program_meant_them(default_stack):
    """The lake URL and SQL URL parse, in the roles that read them, to the very addresses the
    factory's linked services got: `mlassets adf deploy` would publish the same artifacts."""
    from mlassets.roles.datafactory import lake_service_url, sql_server_and_database
    from mlassets.roles.storage import LakeLocation

    out = default_stack.outputs
    lake = LakeLocation.parse(out["MLASSETS_LAKE_URL"])
    assert (lake.protocol, lake.account_name, lake.root) == ("abfs", "mlassetstestlake", "lake")
    linked = {
        r.inputs["linkedServiceName"]: r.inputs["properties"]["typeProperties"]
        for r in default_stack.of_type("datafactory:LinkedService")
    }
    assert lake_service_url(out["MLASSETS_LAKE_URL"]) == linked["ls_lake"]["url"]
    server, database = sql_server_and_database(out["MLASSETS_LABELS_DB_URL"])
    assert (server, database) == (linked["ls_labels_sql"]["server"], "labels")
