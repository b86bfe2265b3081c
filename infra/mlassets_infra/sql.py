"""Azure SQL for the labels (Microsoft Entra-only authentication), and optionally the
PostgreSQL flexible server a production Dagster keeps its runs and events in.

Neither server has a password: Entra ID is the only way in. `mlassets labels setup` then
creates the labels table and enables change data capture, as it does on any Azure SQL.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote_plus

import pulumi
import pulumi_azure_native as azure_native

from mlassets_infra.config import Settings

ODBC_DRIVER = "ODBC Driver 18 for SQL Server"


def labels_db_url(server_host: str, database: str) -> str:
    """SQLAlchemy URL without user or password: mlassets signs in with an Entra ID token."""
    return (
        f"mssql+pyodbc://@{server_host}:1433/{database}"
        f"?driver={quote_plus(ODBC_DRIVER)}&Encrypt=yes"
    )


@dataclass
class LabelsDatabase:
    server: azure_native.sql.Server
    database: azure_native.sql.Database

    @property
    def url(self) -> pulumi.Output[str]:
        return pulumi.Output.all(self.server.fully_qualified_domain_name, self.database.name).apply(
            lambda v: labels_db_url(v[0], v[1])
        )


@dataclass
class Postgres:
    server: azure_native.dbforpostgresql.Server
    database: azure_native.dbforpostgresql.Database
    administrator: azure_native.dbforpostgresql.Administrator


def labels_database(
    settings: Settings, resource_group: pulumi.Input[str], admin_object_id: str, tenant_id: str
) -> LabelsDatabase:
    server = azure_native.sql.Server(
        "sql",
        server_name=settings.name("sql"),
        resource_group_name=resource_group,
        location=settings.location,
        version="12.0",
        minimal_tls_version="1.2",
        public_network_access="Enabled",
        administrators={
            "administrator_type": "ActiveDirectory",
            "azure_ad_only_authentication": True,
            "login": settings.sql_admin_login,
            "sid": admin_object_id,
            "tenant_id": tenant_id,
            "principal_type": settings.sql_admin_principal_type,
        },
    )
    # 0.0.0.0-0.0.0.0 is Azure's "allow Azure services": the factory's managed runtime and
    # AKS reach the server; nothing outside Azure does until you add a rule for it.
    azure_native.sql.FirewallRule(
        "sql-azure-services",
        firewall_rule_name="AllowAllWindowsAzureIps",
        server_name=server.name,
        resource_group_name=resource_group,
        start_ip_address="0.0.0.0",
        end_ip_address="0.0.0.0",
    )
    database = azure_native.sql.Database(
        "labels",
        database_name=settings.sql_database_name,
        server_name=server.name,
        resource_group_name=resource_group,
        location=settings.location,
        sku={"name": settings.sql_sku},
    )
    return LabelsDatabase(server, database)


def postgres(
    settings: Settings,
    resource_group: pulumi.Input[str],
    tenant_id: str,
    dagster_principal_id: pulumi.Input[str],
    dagster_principal_name: pulumi.Input[str],
    dagster_principal_type: str,
) -> Postgres:
    """Dagster's run, event log and schedule storage; its identity is the Entra admin."""
    server = azure_native.dbforpostgresql.Server(
        "postgres",
        server_name=settings.name("pg"),
        resource_group_name=resource_group,
        location=settings.location,
        version=settings.postgres_version,
        sku={"name": settings.postgres_sku, "tier": settings.postgres_tier},
        storage={"storage_size_gb": settings.postgres_storage_gb},
        auth_config={
            "active_directory_auth": "Enabled",
            "password_auth": "Disabled",
            "tenant_id": tenant_id,
        },
        network={"public_network_access": "Enabled"},
    )
    azure_native.dbforpostgresql.FirewallRule(
        "postgres-azure-services",
        firewall_rule_name="AllowAllAzureServices",
        server_name=server.name,
        resource_group_name=resource_group,
        start_ip_address="0.0.0.0",
        end_ip_address="0.0.0.0",
    )
    database = azure_native.dbforpostgresql.Database(
        "dagster-db",
        database_name="dagster",
        server_name=server.name,
        resource_group_name=resource_group,
        charset="UTF8",
        collation="en_US.utf8",
    )
    administrator = azure_native.dbforpostgresql.Administrator(
        "postgres-dagster-admin",
        object_id=dagster_principal_id,
        principal_name=dagster_principal_name,
        principal_type=dagster_principal_type,
        tenant_id=tenant_id,
        server_name=server.name,
        resource_group_name=resource_group,
    )
    return Postgres(server, database, administrator)
