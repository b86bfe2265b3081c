"""Built-in Azure roles by id, and role assignments at the scope they are needed.

Role definition ids are the same in every Azure cloud; a name would be looked up per
subscription, an id is not.
"""

from __future__ import annotations

import pulumi
import pulumi_azure_native as azure_native

#: Built-in role name -> role definition id (learn.microsoft.com, "Azure built-in roles").
BUILT_IN_ROLES: dict[str, str] = {
    "Storage Blob Data Contributor": "ba92f5b4-2d11-453d-a403-e96b0029c9fe",
    "Azure Event Hubs Data Receiver": "a638d3c7-ab3a-418d-83e6-5f17a39d4fde",
    "Azure Event Hubs Data Sender": "2b629674-e913-4c01-ae53-ef4638d8f975",
    "Azure Service Bus Data Receiver": "4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0",
    "Azure Service Bus Data Sender": "69a216fc-b8fb-44d8-bc22-1f3c2cd27a39",
    "Data Factory Contributor": "673868aa-7521-48a0-acc6-0f60742d39f5",
    "AcrPull": "7f951dda-4ed3-4680-a7ca-43fe172d538d",
    # Pools and jobs on the Batch data plane, not the account itself: Dagster submits the
    # training job and may grow the pool to the node count a task needs.
    "Azure Batch Data Contributor": "6aaa78f1-f7de-44ca-8722-c64a23943cae",
}


def role_definition_id(subscription_id: str, role: str) -> str:
    return (
        f"/subscriptions/{subscription_id}/providers/Microsoft.Authorization/"
        f"roleDefinitions/{BUILT_IN_ROLES[role]}"
    )


def assign(
    name: str,
    *,
    principal_id: pulumi.Input[str],
    role: str,
    scope: pulumi.Input[str],
    subscription_id: str,
    principal_type: str = "ServicePrincipal",
    opts: pulumi.ResourceOptions | None = None,
) -> azure_native.authorization.RoleAssignment:
    """`role` for `principal_id` on `scope` (a resource id). Managed identities are service
    principals; saying so lets Azure skip the directory lookup that fails for a brand-new
    identity that has not replicated yet."""
    return azure_native.authorization.RoleAssignment(
        name,
        principal_id=principal_id,
        principal_type=principal_type,
        role_definition_id=role_definition_id(subscription_id, role),
        scope=scope,
        description=f"mlassets: {name}",
        opts=opts,
    )
