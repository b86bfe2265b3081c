"""One landing in a process of its own, for the reliability tests (not collected by pytest).

    python landing_process.py [--go FILE] [--compact-base N] [--kill-at POINT --after N] \
        in-process [RANGES_JSON]
    python landing_process.py [--go FILE] [--compact-base N] cli DAGSTER_ARGS...

`in-process` materializes `landed_events` with `dg.materialize` (the `execute_in_process`
path) on the local deployment's resources (MLASSETS_LAKE_URL and
MLASSETS_STORAGE_CONNECTION_STRING choose the lake: Azurite, say). RANGES_JSON is a
list of [partition, first, last]; without it the run lands everything new. `cli` runs the
`dagster` command line itself in this process, as `dagster DAGSTER_ARGS...` would.

`--go FILE`: at the entrance of the landing itself (`mlassets.lib.landing.land`, after the
CLI or Dagster has started the run and its step), write `FILE.ready-<pid>` and wait until FILE
appears: landings in several processes then start within milliseconds of each other, however
long each took to get there.

`--compact-base N`: the landing's compaction merges blocks of N, 4N, 16N events (so that
small test lakes merge).

`--kill-at POINT --after N`: SIGKILL this process the (N+1)-th time the landing gets to
POINT (no cleanup of any kind runs, as with the OOM killer or a lost node):
  mid-claim        a claim's bytes are written, the claim not yet linked into place
  after-claim      a claim won, nothing of its range written
  mid-write        half of a landed file written to its temporary file
  after-quarantine the quarantine file of a range written, its landed file not
  after-landed     a range's landed file written
  after-merge      a compaction's merged file written, the files it merged still there
  before-metadata  every file written, the materialization not yet recorded
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import signal
import sys
import time
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq

from mlassets.defs.ingestion import assets
from mlassets.defs.resources import local_resources
from mlassets.lib import compaction, landing
from mlassets.roles import storage
from mlassets.roles.storage import LakeStorage

POINTS = (
    "mid-claim",
    "after-claim",
    "mid-write",
    "after-quarantine",
    "after-landed",
    "after-merge",
    "before-metadata",
)


def arm(point: str, after: int) -> None:
    """Patch the landing so that it dies at `point`, the (after+1)-th time it gets there."""
    seen = [0]

    def reached() -> bool:
        seen[0] += 1
        return seen[0] > after

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    if point == "mid-claim":
        link = os.link

        def dying_link(src, dst, *args, **kwargs):
            if "/claims/" in str(dst) and reached():
                die()
            return link(src, dst, *args, **kwargs)

        storage.os.link = dying_link
    elif point == "after-claim":
        create = LakeStorage.create_exclusive

        def dying_create(self, relative, data):
            won = create(self, relative, data)
            if won and "/claims/" in relative and reached():
                die()
            return won

        LakeStorage.create_exclusive = dying_create
    elif point == "mid-write":
        write_table = pq.write_table

        def dying_write(table, where, **kwargs):
            if isinstance(where, str) and "/landed/events/" in where and reached():
                write_table(table, where + ".whole", **kwargs)
                data = Path(where + ".whole").read_bytes()
                os.remove(where + ".whole")
                with open(where, "wb") as f:
                    f.write(data[: len(data) // 2])
                die()
            return write_table(table, where, **kwargs)

        pq.write_table = dying_write
    elif point in ("after-quarantine", "after-landed"):
        zone = "quarantine/" if point == "after-quarantine" else "landed/"
        write_parquet = LakeStorage.write_parquet

        def dying_write_parquet(self, relative, table, **kwargs):
            written = write_parquet(self, relative, table, **kwargs)
            if relative.startswith(zone) and reached():
                die()
            return written

        LakeStorage.write_parquet = dying_write_parquet
    elif point == "after-merge":
        merge = compaction.merge

        def dying_merge(*args, **kwargs):
            done = merge(*args, **kwargs)
            if reached():
                die()
            return done

        compaction.merge = dying_merge
    elif point == "before-metadata":
        metadata = assets.landing_metadata

        def dying_metadata(*args, **kwargs):
            if reached():
                die()
            return metadata(*args, **kwargs)

        assets.landing_metadata = dying_metadata
    else:
        raise SystemExit(f"--kill-at: one of {', '.join(POINTS)}, not {point!r}")


def wait_at_the_landing(go: str) -> None:
    land = landing.land

    def waiting_land(*args, **kwargs):
        Path(f"{go}.ready-{os.getpid()}").touch()
        while not os.path.exists(go):
            time.sleep(0.001)
        return land(*args, **kwargs)

    landing.land = waiting_land


def land_in_process(ranges: list[list]) -> None:
    resources = local_resources()
    config = {"ranges": [{"partition_id": p, "first": a, "last": b} for p, a, b in ranges]}
    result = dg.materialize(
        [assets.raw_events, assets.landed_events],
        resources=resources,
        selection=[assets.landed_events],
        run_config={"ops": {"landed_events": {"config": config}}},
    )
    if not result.success:
        raise SystemExit("the landing failed")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--go")
    parser.add_argument("--kill-at", choices=POINTS)
    parser.add_argument("--after", type=int, default=0)
    parser.add_argument("--compact-base", type=int, help="compaction's base block (events)")
    parser.add_argument("mode", choices=["in-process", "cli"])
    parser.add_argument("rest", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    if args.compact_base:
        assets.COMPACTION_POLICY = compaction.Policy(base=args.compact_base, fanout=4)
    if args.kill_at:
        arm(args.kill_at, args.after)
    if args.go:
        wait_at_the_landing(args.go)
    if args.mode == "in-process":
        land_in_process(json.loads(args.rest[0]) if args.rest else [])
    else:
        sys.argv = ["dagster", *args.rest]
        runpy.run_module("dagster", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
