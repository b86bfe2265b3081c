"""The container registry, the Batch account and the GPU pool training runs on.

The pool is what `mlassets.roles.azure_batch` checks before it submits a multi-instance
Horovod task: inter-node communication, one task slot per node, Docker-compatible containers
with the training image prefetched, and a user-assigned identity with which the nodes pull
from the registry and read and write the Pipes container. No registry password, no Batch key.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_azure_native as azure_native

from mlassets_infra import roles
from mlassets_infra.config import Settings
from mlassets_infra.storage import Storage

#: Same check as the pool the Batch role creates itself: the node has a GPU and Docker.
START_TASK = "/bin/bash -c \"nvidia-smi -L && docker info --format '{{.ServerVersion}}'\""


@dataclass
class Batch:
    registry: azure_native.containerregistry.Registry
    account: azure_native.batch.BatchAccount
    pool_identity: azure_native.managedidentity.UserAssignedIdentity
    pool: azure_native.batch.Pool
    pool_roles: dict[str, azure_native.authorization.RoleAssignment]
    training_image: pulumi.Output[str]
    code_location_image: pulumi.Output[str]

    @property
    def account_url(self) -> pulumi.Output[str]:
        return self.account.account_endpoint.apply(lambda e: f"https://{e}")


def image(login_server: pulumi.Input[str], name: str, tag: str) -> pulumi.Output[str]:
    return pulumi.Output.from_input(login_server).apply(lambda s: f"{s}/{name}:{tag}")


def create(
    settings: Settings, resource_group: pulumi.Input[str], storage: Storage, subscription_id: str
) -> Batch:
    registry = azure_native.containerregistry.Registry(
        "registry",
        registry_name=settings.compact_name("acr", limit=50),
        resource_group_name=resource_group,
        location=settings.location,
        sku={"name": settings.registry_sku},
        admin_user_enabled=False,
        anonymous_pull_enabled=False,
    )
    account = azure_native.batch.BatchAccount(
        "batch",
        account_name=settings.compact_name("batch"),
        resource_group_name=resource_group,
        location=settings.location,
        pool_allocation_mode="BatchService",
        # Microsoft Entra ID only: the account's shared keys cannot be used.
        allowed_authentication_modes=["AAD", "TaskAuthenticationToken"],
    )
    pool_identity = azure_native.managedidentity.UserAssignedIdentity(
        "pool-identity",
        resource_name_=settings.name("pool"),
        resource_group_name=resource_group,
        location=settings.location,
    )
    # The pool's identity pulls the image and reads and writes the lake and the Pipes
    # container; the pool is created after these assignments so its first nodes can pull.
    pool_principal = pool_identity.principal_id
    pool_roles = {
        name: roles.assign(name, principal_id=pool_principal, subscription_id=subscription_id, **kw)
        for name, kw in (
            ("pool-acr-pull", {"role": "AcrPull", "scope": registry.id}),
            ("pool-lake", {"role": "Storage Blob Data Contributor", "scope": storage.lake.id}),
            ("pool-pipes", {"role": "Storage Blob Data Contributor", "scope": storage.pipes.id}),
        )
    }
    training_image = image(registry.login_server, settings.training_image_name, settings.image_tag)
    code_location_image = image(
        registry.login_server, settings.code_location_image_name, settings.image_tag
    )
    publisher, offer, sku, version = [*settings.batch_node_image.split(":"), "latest"][:4]
    identity_ref = pool_identity.id.apply(lambda i: {"resource_id": i})
    pool = azure_native.batch.Pool(
        "gpu-pool",
        pool_name=settings.batch_pool_id,
        account_name=account.name,
        resource_group_name=resource_group,
        display_name="mlassets Horovod training (GPU)",
        vm_size=settings.batch_vm_size,
        inter_node_communication="Enabled",
        task_slots_per_node=1,
        # Fixed size; the Batch role grows a pool smaller than the task's node count, so a
        # pool that starts empty costs nothing until the first training.
        scale_settings={"fixed_scale": {"target_dedicated_nodes": settings.batch_pool_nodes}},
        identity=pool_identity.id.apply(
            lambda i: {"type": "UserAssigned", "user_assigned_identities": {i: {}}}
        ),
        deployment_configuration={
            "virtual_machine_configuration": {
                "image_reference": {
                    "publisher": publisher,
                    "offer": offer,
                    "sku": sku,
                    "version": version,
                },
                "node_agent_sku_id": settings.batch_node_agent_sku,
                "container_configuration": {
                    "type": "DockerCompatible",
                    "container_image_names": [training_image],
                    "container_registries": [
                        {
                            "registry_server": registry.login_server,
                            "identity_reference": identity_ref,
                        }
                    ],
                },
            }
        },
        start_task={
            "command_line": START_TASK,
            "user_identity": {"auto_user": {"elevation_level": "Admin", "scope": "Pool"}},
            "wait_for_success": True,
            "max_task_retry_count": 1,
        },
        opts=pulumi.ResourceOptions(depends_on=list(pool_roles.values())),
    )
    return Batch(
        registry, account, pool_identity, pool, pool_roles, training_image, code_location_image
    )
