"""mlassets on Azure: `pulumi up` in this folder (see the README, Deploy to Azure)."""

from mlassets_infra import config, program

program.run(config.from_pulumi())
