"""How the training program talks back to Dagster, wherever it runs.

Context always arrives in the environment (Pipes' default). Messages go where the launcher
said: locally to the file PipesSubprocessClient reads; on Azure Batch to Blob Storage
(`MLASSETS_PIPES_MESSAGES=azure-blob`), which dagster-azure's
PipesAzureBlobStorageMessageReader reads.
"""

from __future__ import annotations

import os

from dagster_pipes import PipesContext, PipesContextLoader, PipesMessageWriter, open_dagster_pipes


def _blob_writer() -> PipesMessageWriter:
    from azure.storage.blob import BlobServiceClient
    from dagster_pipes import PipesAzureBlobStorageMessageWriter

    if conn := os.environ.get("MLASSETS_PIPES_STORAGE_CONNECTION_STRING"):
        client = BlobServiceClient.from_connection_string(conn)
    else:  # the node's managed identity
        from azure.identity import DefaultAzureCredential

        client = BlobServiceClient(
            os.environ["MLASSETS_PIPES_STORAGE_ACCOUNT_URL"], credential=DefaultAzureCredential()
        )
    return PipesAzureBlobStorageMessageWriter(client=client)


def open_pipes(context_loader: PipesContextLoader | None = None) -> PipesContext:
    transport = os.environ.get("MLASSETS_PIPES_MESSAGES", "default")
    if transport == "azure-blob":
        return open_dagster_pipes(message_writer=_blob_writer(), context_loader=context_loader)
    return open_dagster_pipes(context_loader=context_loader)
