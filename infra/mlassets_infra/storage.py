"""The storage account: ADLS Gen2 for the lake, blob containers for Pipes and compute logs.

Shared keys are disabled, so every client (Dagster, the factory, the Batch nodes, Event Grid)
signs in with Microsoft Entra ID; no container is readable anonymously.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_azure_native as azure_native

from mlassets_infra.config import Settings


@dataclass
class Storage:
    account: azure_native.storage.StorageAccount
    lake: azure_native.storage.BlobContainer
    pipes: azure_native.storage.BlobContainer
    compute_logs: azure_native.storage.BlobContainer

    @property
    def name(self) -> pulumi.Output[str]:
        return self.account.name

    @property
    def dfs_endpoint(self) -> pulumi.Output[str]:
        """`https://<account>.dfs.core.windows.net/` (the cloud's own suffix)."""
        return self.account.primary_endpoints.apply(lambda e: e.dfs)

    @property
    def blob_endpoint(self) -> pulumi.Output[str]:
        return self.account.primary_endpoints.apply(lambda e: e.blob)


def create(settings: Settings, resource_group: pulumi.Input[str]) -> Storage:
    account = azure_native.storage.StorageAccount(
        "storage",
        account_name=settings.compact_name("lake"),
        resource_group_name=resource_group,
        location=settings.location,
        kind="StorageV2",
        sku={"name": "Standard_LRS"},
        is_hns_enabled=True,
        minimum_tls_version="TLS1_2",
        allow_blob_public_access=False,
        allow_shared_key_access=False,
        default_to_o_auth_authentication=True,
        enable_https_traffic_only=True,
    )

    def container(logical: str, name: str) -> azure_native.storage.BlobContainer:
        return azure_native.storage.BlobContainer(
            logical,
            container_name=name,
            account_name=account.name,
            resource_group_name=resource_group,
            public_access="None",
        )

    return Storage(
        account=account,
        lake=container("lake", settings.lake_container),
        pipes=container("pipes", settings.pipes_container),
        compute_logs=container("compute-logs", settings.compute_logs_container),
    )
