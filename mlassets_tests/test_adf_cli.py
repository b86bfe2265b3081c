"""`mlassets adf deploy | run | import-incoming` on the configured engine."""

import json
import os
import subprocess
import sys

from mlassets.settings import PROJECT_ROOT

BIN = os.path.dirname(sys.executable)


def mlassets(*args, ok=True):
    result = subprocess.run(
        [f"{BIN}/mlassets", *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ),
    )
    if ok is not None:
        assert (result.returncode == 0) is ok, result.stdout[-2000:] + result.stderr[-2000:]
    return result


def test_deploy_locally_validates_every_artifact(data_dir):
    out = mlassets("adf", "deploy").stdout
    assert "validated  pipeline copy_incoming_to_landed" in out
    assert "9 artifacts are valid for the local engine; nothing to deploy" in out


def test_run_prints_the_result_and_fails_with_the_run_id(data_dir, dagster_home):
    mlassets("labels", "setup")
    out = mlassets("adf", "run", "snapshot_labels", "--param", "targetFile=cli.parquet").stdout
    assert "pipeline 'snapshot_labels' run " in out and ": Succeeded" in out
    assert "CopyLabelsTable (Copy): Succeeded" in out and "rowsCopied 0" in out
    assert (data_dir / "lake" / "snapshots" / "labels" / "cli.parquet").exists()
    as_json = json.loads(
        mlassets(
            "adf", "run", "snapshot_labels", "--param", "targetFile=j.parquet", "--json"
        ).stdout
    )
    assert as_json["status"] == "Succeeded" and as_json["activities"][0]["output"]["rowsRead"] == 0
    failed = mlassets(
        "adf",
        "run",
        "snapshot_labels",
        "--param",
        "sourceTable=nope",
        "--param",
        "targetFile=x.parquet",
        ok=False,
    )
    assert failed.returncode == 1
    assert (
        "failed: Operation on target CopyLabelsTable failed: table nope does not exist"
        in failed.stderr
    )
    assert "CopyLabelsTable (Copy): Failed" in failed.stdout
    bad = mlassets("adf", "run", "snapshot_labels", "--param", "nope=1", ok=False)
    assert bad.returncode == 2 and "has no parameter(s) ['nope']" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_import_incoming_lands_a_drop(data_dir, dagster_home):
    drop = data_dir / "lake" / "incoming" / "cli" / "drop.csv"
    drop.parent.mkdir(parents=True)
    pixels = json.dumps([1] * 64)
    drop.write_text(
        "sample_id,pixels,source,captured_at\n"
        + "".join(f'x{i},"{pixels}",cli,2026-01-05T10:00:00Z\n' for i in range(12))
        + "bad\n"
    )
    out = mlassets("adf", "import-incoming", "incoming/cli/drop.csv").stdout
    assert "incoming/cli/drop.csv: 12 events landed, 1 quarantined (1 skipped by the copy)" in out
    missing = mlassets("adf", "import-incoming", "incoming/cli/none.csv", ok=False)
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_in_azure_mode_the_factory_settings_are_named(monkeypatch):
    monkeypatch.setenv("MLASSETS_DEPLOYMENT", "azure")
    result = mlassets("adf", "deploy", ok=False)
    assert result.returncode == 2
    assert "MLASSETS_ADF_FACTORY_NAME" in result.stderr and "Traceback" not in result.stderr
