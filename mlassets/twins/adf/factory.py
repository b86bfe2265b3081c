"""The copy-engine role's embedded twin as a resource: `LocalDataFactory`.

It runs the pipelines of `adf/` on this machine with the local copy engine
(`mlassets.twins.adf.engine.CopyEngine`), behind the role's interface
(`mlassets.roles.datafactory.DataFactoryResource`), so the assets that copy data call it
exactly as they call Azure Data Factory. The engine (and with it pyarrow) is imported on first
use: `defs/resources.py` builds this resource when the code location loads.
"""

from typing import Any

from pydantic import Field

from mlassets.lib.adf import Artifact, PipelineRunResult
from mlassets.roles.datafactory import DataFactoryResource, DeployAction
from mlassets.roles.storage import LakeStorage

__all__ = ["LocalDataFactory"]


class LocalDataFactory(DataFactoryResource):
    """The embedded engine: the same pipeline JSON, run on this machine."""

    lake_url: str = Field(description="the lake the file datasets live in (as LakeStorage's url)")
    lake_connection_string: str | None = Field(
        default=None, description="storage connection string of an abfs:// lake (may be a secret)"
    )
    sql_url: str | None = Field(
        default=None, description="SQLAlchemy URL of the SQL datasets' database (may hold a secret)"
    )
    runs_dir: str | None = Field(default=None, description="where a record of each run is kept")

    @property
    def lake(self) -> LakeStorage:
        return LakeStorage(url=self.lake_url, connection_string=self.lake_connection_string)

    @property
    def engine(self) -> str:
        return "local"

    def lake_parameters(self) -> dict[str, str]:
        return {"lakeFileSystem": "", "lakeRoot": ""}

    def copy_engine(self):
        from mlassets.twins.adf.engine import CopyEngine

        return CopyEngine(self.artifacts(), self.lake, self.sql_url, self.runs_dir)

    def _run(self, artifact: Artifact, values: dict, timeout: float, log: Any) -> PipelineRunResult:
        log.info(f"running pipeline {artifact.name!r} on the local engine")
        return self.copy_engine().run(artifact.name, values, timeout=timeout)

    def deploy(self, log: Any = None, dry_run: bool = False) -> list[DeployAction]:
        engine = self.copy_engine()
        actions = []
        for artifact in self.artifacts().deploy_order():
            if artifact.kind == "pipeline":
                engine.validate(artifact.name)
            actions.append(DeployAction(artifact.kind, artifact.name, "validated"))
        return actions
