"""Landing at scale: a lake already holding `events` landed events, then a day of sensor ticks.

    python -m benchmarks.scale_landing [EVENTS]      (also `run(events)` for `benchmarks scale`)

The lake is generated directly with pyarrow in the layout compaction leaves it in: the events
as landed by ticks of TICK_EVENTS (a claim per partition per tick), merged the way
`compaction.plan` merges them tick after tick (simulated on names only, then each final file
written once), claims checkpointed. Then 2,880 ticks (a day at 30 s) each land TICK_EVENTS
new events through `landing.land` and compact through `compaction.compact`, as the
`landed_events` asset does. The hub is a stand-in that serves real event bodies at the
sequence numbers where the lake ends (an embedded hub would first have to hold every earlier
event); its reads are in memory, so the hub's own read cost is not in the figures.

Figures: landed files after the day (against `Policy.live_file_bound`; what landing without
compaction leaves in the note); listing time (what a landing lists: files and chains) at the
start and after the day, and the landed files' listing against that of the same names
uncompacted; tick time early and late in the day; peak RSS of one tick in a fresh process
(VmHWM), on the lake as it is and on one whose next tick completes a top-level block (the
biggest merge there is: 2,097,152 events); landing throughput on the big lake, and over the
whole day with compaction, against pyarrow's JSON -> Parquet of the same events
(`bench_landing`).
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from benchmarks.bench_landing import json_to_parquet
from benchmarks.common import Row, best_of, render
from mlassets.lib import compaction, landing
from mlassets.lib.compaction import Policy
from mlassets.lib.events import LANDED_SCHEMA, RAW_EVENT_SCHEMA, decode_events
from mlassets.lib.landing import RUN_ID_KEY, RUN_RANGES_KEY, EventRange
from mlassets.lib.partitions import PartitionProperties
from mlassets.roles.storage import LakeStorage
from mlassets.simulate import SOURCES, make_events

PARTITIONS = 4
#: Events one tick lands (all partitions): about 2.9M a day.
TICK_EVENTS = 1_000
TICKS = 2_880
#: Events of the throughput measurement, landed into the big lake in one tick.
THROUGHPUT_EVENTS = 200_000
RSS_TARGET_MB = 1536
MAX_RANGE = 50_000  # MLASSETS_MAX_RANGE_EVENTS' default
#: As the asset's, but merged inputs deleted at once: simulated ticks are not 30 s apart,
#: and the default keeps them 600 s (20 real ticks) for readers that listed them.
DAY_POLICY = Policy(keep_merged_seconds=0)


class StandInHub:
    """The two calls a landing makes of a hub, serving a pool of real event bodies (0.2% of
    them malformed, by default) at sequence numbers that continue where the lake ends."""

    def __init__(
        self, heads: dict[str, int], pool_size: int = 20_000, seed: int = 5, malformed: int = -1
    ) -> None:
        self.heads = dict(heads)
        bad = pool_size // 500 if malformed < 0 else malformed
        self.pool = pa.array(make_events(pool_size, bad, seed).bodies, pa.binary())

    def advance(self, events: int) -> None:
        for pid in self.heads:
            self.heads[pid] += events // len(self.heads)

    def all_partition_properties(self) -> list[PartitionProperties]:
        return [
            PartitionProperties(pid, 0, last, last, None, last < 0)
            for pid, last in sorted(self.heads.items())
        ]

    def read_range(self, partition_id: str, first: int, last: int) -> pa.Table:
        last = min(last, self.heads[partition_id])
        seq = np.arange(first, last + 1, dtype=np.int64)
        n = len(seq)
        return pa.Table.from_arrays(
            [
                pc.take(pa.array([partition_id]), np.zeros(n, np.int32)),
                pa.array(seq),
                pa.array(seq),
                pa.array(np.full(n, time.time_ns() // 1000), pa.timestamp("us", tz="UTC")),
                pa.nulls(n, pa.string()),
                pa.nulls(n, pa.string()),
                pc.take(self.pool, pa.array(seq % len(self.pool))),
            ],
            schema=RAW_EVENT_SCHEMA,
        )


# -- the lake as compaction leaves it -----------------------------------------------------------


def layout(events: int, tick: int, policy: Policy) -> list[tuple[int, int, list[tuple]]]:
    """(first, last, [(first, last, run) of its claims]) of the live files after landing
    `events` of one partition in claims of `tick` events, compacted after each (names only)."""
    files: list[EventRange] = []
    claims: dict[EventRange, list[tuple]] = {}
    for k, first in enumerate(range(0, events, tick)):
        rng = EventRange("0", first, min(first + tick, events) - 1)
        files.append(rng)
        claims[rng] = [(rng.first, rng.last, f"history-{k}")]
        for m in compaction._plan_partition(files, policy):
            files = [f for f in files if f not in m.inputs] + [m.output]
            files.sort()
            claims[m.output] = [c for f in m.inputs for c in claims.pop(f)]
    return [(f.first, f.last, claims[f]) for f in files]


def write_lake(lake: LakeStorage, per_partition: int, partitions: int = PARTITIONS) -> int:
    """Every partition holding `per_partition` landed events, laid out as compaction leaves
    them, its claims checkpointed; returns the files written."""
    files = layout(per_partition, TICK_EVENTS // PARTITIONS, Policy())
    template = decode_events(StandInHub({"0": 4095}, 4096, seed=1).read_range("0", 0, 4095))
    pixels = np.asarray(pc.list_flatten(template.landed["pixels"]).to_numpy(), np.uint8)
    pixels = pixels.reshape(-1, 64)
    rng = np.random.default_rng(0)
    for p in range(partitions):
        pid = str(p)
        for first, last, claims in files:
            meta = (
                {RUN_ID_KEY: claims[0][2]}
                if len(claims) == 1
                else {RUN_RANGES_KEY: json.dumps([list(c) for c in claims])}
            )
            lake.write_parquet(
                EventRange(pid, first, last).landed_path,
                _landed(pid, first, last, pixels, rng).replace_schema_metadata(meta),
                row_group_size=compaction.ROW_GROUP_ROWS,
            )
        lake.write_bytes(landing.checkpoint_path(pid, per_partition - 1), b'{"generated": 1}')
    return len(files) * partitions


def _landed(pid: str, first: int, last: int, pixels: np.ndarray, rng) -> pa.Table:
    seq = np.arange(first, last + 1, dtype=np.int64)
    n = len(seq)
    jitter = rng.integers(0, 2, size=(n, 64), dtype=np.uint8)
    values = np.minimum(pixels[seq % len(pixels)] + jitter, 16).ravel()
    at = pa.array(1_780_000_000_000_000 + seq * 30_000, pa.timestamp("us", tz="UTC"))
    return pa.Table.from_arrays(
        [
            pc.binary_join_element_wise(f"s{pid}", pc.cast(pa.array(seq), pa.string()), "-"),
            pa.ListArray.from_arrays(
                pa.array(np.arange(0, 64 * (n + 1), 64, dtype=np.int32)), pa.array(values)
            ),
            pc.take(pa.array(SOURCES), pa.array(seq % len(SOURCES))),
            at,
            pc.take(pa.array([pid]), np.zeros(n, np.int32)),
            pa.array(seq),
            pa.array(seq),
            at,
        ],
        schema=LANDED_SCHEMA,
    )


# -- measuring --------------------------------------------------------------------------------


def one_tick(lake_url: str, heads: dict[str, int], events: int) -> dict:
    """One landing tick and its compaction, as the asset runs them (in this process)."""
    lake = LakeStorage(url=lake_url)
    hub = StandInHub(heads, pool_size=max(events, 1_000))
    hub.advance(events)
    started = time.perf_counter()
    results = landing.land(hub, lake, max_size=MAX_RANGE, run_id="rss-tick")
    done = compaction.compact(lake, DAY_POLICY)
    return {
        "seconds": time.perf_counter() - started,
        "landed": sum(r.landed_rows for r in results),
        "merged_events": done.rows_rewritten_bound,
        "maxrss_mb": peak_rss_mb(),
    }


def peak_rss_mb() -> float:
    """This process's peak RSS since it started: VmHWM (`ru_maxrss` of a child started with
    vfork counts its parent's peak too), else ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def tick_in_a_process(lake: LakeStorage, heads: dict[str, int], events: int) -> dict:
    """`one_tick` in a fresh Python: its peak RSS is the tick's, imports included."""
    command = ["-m", "benchmarks.scale_landing", "--tick", lake.url, json.dumps(heads)]
    out = subprocess.run(
        [sys.executable, *command, str(events)],
        capture_output=True,
        check=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _touch_uncompacted(lake: LakeStorage, per_partition: int) -> None:
    """Empty files named as landing without compaction names them."""
    claim = TICK_EVENTS // PARTITIONS
    for p in range(PARTITIONS):
        folder = Path(lake.path(f"{landing.LANDED_PREFIX}/partition={p}"))
        folder.mkdir(parents=True)
        for first in range(0, per_partition, claim):
            (folder / f"seq={first}-{min(first + claim, per_partition) - 1}.parquet").touch()


def listing(lake: LakeStorage) -> None:
    """What a landing and a compaction list: the landed files and each partition's chain."""
    landing.listed_files(lake)
    for p in range(PARTITIONS):
        landing.read_chain(lake, str(p))


def _say(message: str) -> None:
    print(f"scale_landing: {message}", file=sys.stderr, flush=True)


def run(events: int = 1_000_000, ticks: int = TICKS) -> list[Row]:
    """The figures for a lake of `events` landed events and then `ticks` ticks (a day)."""
    per_partition = events // PARTITIONS
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        lake = LakeStorage(url=f"file://{root}/lake")
        started = time.perf_counter()
        written = write_lake(lake, per_partition)
        generated = time.perf_counter() - started
        _say(f"{events:,} events in {written} files generated in {generated:.0f}s")
        noop = compaction.compact(lake, DAY_POLICY)
        heads = {str(p): per_partition - 1 for p in range(PARTITIONS)}
        history_files = -(-per_partition // (TICK_EVENTS // PARTITIONS)) * PARTITIONS
        list_start = best_of(lambda: listing(lake), 20)
        files_start = len(landing.listed_files(lake))
        rss_typical = tick_in_a_process(lake, heads, TICK_EVENTS)
        heads = {p: h + TICK_EVENTS // PARTITIONS for p, h in heads.items()}

        # A day of ticks.
        hub = StandInHub(heads)
        tick_seconds: list[float] = []
        most_files = 0
        day_started = time.perf_counter()
        for i in range(ticks):
            hub.advance(TICK_EVENTS)
            t = time.perf_counter()
            landing.land(hub, lake, max_size=MAX_RANGE, run_id=f"tick-{i}")
            compaction.compact(lake, DAY_POLICY)
            tick_seconds.append(time.perf_counter() - t)
            if i % 60 == 0:
                most_files = max(most_files, len(landing.listed_files(lake)))
            if i % 480 == 479:
                _say(f"tick {i + 1:,} of {ticks:,} ({time.perf_counter() - day_started:.0f}s)")
        day = time.perf_counter() - day_started
        files_after = len(landing.listed_files(lake))
        most_files = max(most_files, files_after)
        list_end = best_of(lambda: listing(lake), 20)
        files_end = landing.listed_files(lake)
        # The same names as landing without compaction leaves (empty files: a listing does
        # not open them), listed the same way.
        flat = LakeStorage(url=f"file://{root}/uncompacted")
        _touch_uncompacted(flat, per_partition + ticks * (TICK_EVENTS // PARTITIONS))
        list_flat = best_of(lambda: landing.listed_files(flat), 3)
        list_compacted = best_of(lambda: landing.listed_files(lake), 20)

        # Landing throughput on the big lake against pyarrow's JSON -> Parquet of the same
        # events (valid ones: pyarrow's reader stops at a malformed body).
        fast = StandInHub(hub.heads, pool_size=THROUGHPUT_EVENTS, malformed=0)
        bodies = fast.pool.to_pylist()
        to_parquet = json_to_parquet(bodies, root)

        def land_big() -> None:
            fast.advance(THROUGHPUT_EVENTS)
            landing.land(fast, lake, max_size=MAX_RANGE, run_id="throughput")

        # Alternated, best of three each: a shared machine's load shifts hit both alike.
        ceiling_s, landing_s = zip(
            *((best_of(to_parquet, 1), best_of(land_big, 1)) for _ in range(3)), strict=True
        )
        ceiling = THROUGHPUT_EVENTS / min(ceiling_s)
        landed_rate = THROUGHPUT_EVENTS / min(landing_s)

        # The worst tick: the one that completes a top-level block (the biggest merge).
        worst = LakeStorage(url=f"file://{root}/worst")
        top = Policy().top
        head = top - TICK_EVENTS // PARTITIONS  # one partition, a tick short of a full block
        write_lake(worst, head, partitions=1)
        rss_worst = tick_in_a_process(worst, {"0": head - 1}, TICK_EVENTS // PARTITIONS)

    early = statistics.median(tick_seconds[:100])
    late = statistics.median(tick_seconds[-100:])
    no_compaction = history_files + ticks * PARTITIONS
    day_events = ticks * TICK_EVENTS
    claim = TICK_EVENTS // PARTITIONS
    bound = PARTITIONS * Policy().live_file_bound(per_partition + day_events // PARTITIONS, claim)
    return [
        Row(
            f"scale {events:,}: landed files after a day",
            files_after,
            bound,
            "files",
            1.0,
            higher_is_better=False,
            note=f"{ticks:,} ticks of {TICK_EVENTS:,} events on {PARTITIONS} partitions; "
            f"baseline: Policy.live_file_bound; {written} at the start, at most {most_files} "
            f"during the day; {no_compaction:,} without compaction",
        ),
        Row(
            f"scale {events:,}: listing after a day vs at start",
            list_end * 1000,
            list_start * 1000,
            "ms",
            None,
            higher_is_better=False,
            note=f"at the start {list_start * 1000:.1f} ms for {files_start} files, after "
            f"{len(files_end)}: it follows the live files (landed files and each partition's "
            "chain), which rise and fall as blocks fill and merge, within the bound above",
        ),
        Row(
            f"scale {events:,}: listing landed files, compacted vs not",
            list_compacted * 1000,
            list_flat * 1000,
            "ms",
            0.1,
            higher_is_better=False,
            note=f"after the day: {len(files_end)} files against {no_compaction:,} names",
        ),
        Row(
            f"scale {events:,}: tick late vs early in the day",
            late * 1000,
            early * 1000,
            "ms",
            1.5,
            higher_is_better=False,
            note="median of 100 ticks (land + compact), first and last hundred",
        ),
        Row(
            f"scale {events:,}: peak RSS of one tick",
            rss_typical["maxrss_mb"],
            RSS_TARGET_MB,
            "MB",
            1.0,
            higher_is_better=False,
            note="a fresh process: imports, land, compact",
        ),
        Row(
            "scale: peak RSS of a tick merging a top block",
            rss_worst["maxrss_mb"],
            RSS_TARGET_MB,
            "MB",
            1.0,
            higher_is_better=False,
            note=f"merged {rss_worst['merged_events']:,} events in {rss_worst['seconds']:.1f}s",
        ),
        Row(
            f"scale {events:,}: landing {THROUGHPUT_EVENTS:,} into the lake",
            landed_rate,
            ceiling,
            "ev/s",
            0.7,
            note="baseline: pyarrow JSON -> Parquet of the same events; hub reads in memory",
        ),
        Row(
            f"scale {events:,}: a day's landing + compaction",
            day_events / day,
            ceiling,
            "ev/s",
            None,
            note=f"{day:.0f}s for {ticks:,} ticks of {TICK_EVENTS:,} events, compaction "
            f"included (rows rewritten at most {Policy().levels}x): a tick's fixed cost, not "
            f"event throughput; lake generated in {generated:.0f}s, {noop.merges} merges due on it",
        ),
    ]


if __name__ == "__main__":
    if sys.argv[1:2] == ["--tick"]:
        print(json.dumps(one_tick(sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4]))))
    else:
        print(render(run(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)))
