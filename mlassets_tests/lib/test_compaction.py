"""Compaction: small landed files merged in aligned, tiered blocks; claims checkpointed; every
event read once whatever moment a compaction or a landing was killed at."""

from __future__ import annotations

import json
import os
import random
import threading
from collections import Counter

import pyarrow.parquet as pq
import pytest

from mlassets.lib import compaction, landing
from mlassets.lib.compaction import Merge, Policy, compact, plan
from mlassets.lib.events import LANDED_SCHEMA
from mlassets.lib.landing import (
    RUN_ID_KEY,
    RUN_RANGES_KEY,
    EventRange,
    FileRuns,
    StaleChain,
    land,
    land_range,
    landed_paths,
    live,
    live_files,
    read_chain,
    try_claim,
)
from mlassets.roles.storage import LakeStorage
from mlassets.simulate import make_events
from mlassets.twins.eventhub import EmbeddedEventHub

#: Blocks of 4, 8 and 16 events: a few dozen events exercise every level.
SMALL = Policy(base=4, fanout=2, levels=3, budget=10_000, keep_merged_seconds=0)


@pytest.fixture
def hub(tmp_path):
    return EmbeddedEventHub(path=str(tmp_path / "hub.db"), partitions=1)


@pytest.fixture
def local_lake(tmp_path):
    return LakeStorage(url=f"file://{tmp_path}/lake")


@pytest.fixture(params=["local", pytest.param("blob", marks=pytest.mark.azurite)])
def lake(request, tmp_path):
    """The same test on a local lake and on Blob Storage (Azurite)."""
    if request.param == "local":
        return LakeStorage(url=f"file://{tmp_path}/lake")
    azurite = request.getfixturevalue("azurite")
    container = request.getfixturevalue("azurite_container")
    return LakeStorage(url=f"abfs://{container}/lake", connection_string=azurite)


def fresh(lake: LakeStorage) -> LakeStorage:
    """Another run's resource on the same lake."""
    return LakeStorage(url=lake.url, connection_string=lake.connection_string)


def publish(hub, n: int, malformed: int = 0, seed: int = 0) -> None:
    events = make_events(n, malformed, seed)
    hub.publish(events.bodies)


def ticks(hub, lake, sizes: list[int], policy: Policy = SMALL, seed: int = 0) -> None:
    """One landing and one compaction per tick of `sizes` new events (1 in 10 malformed)."""
    for i, n in enumerate(sizes):
        publish(hub, n, malformed=n // 10, seed=seed + i)
        land(hub, lake, max_size=1000, run_id=f"run-{i}")
        compact(lake, policy, run_id=f"run-{i}")


def read_counts(lake) -> Counter:
    """(zone, sequence number) -> how often the live files hold it."""
    counts: Counter = Counter()
    for zone, path_of in (
        (landing.LANDED_PREFIX, lambda r: r.landed_path),
        (landing.QUARANTINE_PREFIX, lambda r: r.quarantine_path),
    ):
        for r in live_files(lake, prefix=zone):
            seqs = lake.read_parquet(path_of(r), columns=["sequence_number"])["sequence_number"]
            counts.update(seqs.to_pylist())
    return counts


def assert_each_event_once(hub, lake) -> None:
    last = hub.partition_properties("0").last_enqueued_sequence_number
    counts = read_counts(lake)
    assert sorted(counts) == list(range(last + 1)), "an event is missing"
    assert max(counts.values()) == 1, f"duplicated: {[s for s, n in counts.items() if n > 1]}"
    seqs = lake.read_parquet(landed_paths(lake))["sequence_number"].to_pylist()
    assert len(seqs) == len(set(seqs))


def r(first: int, last: int, p: str = "0") -> EventRange:
    return EventRange(p, first, last)


# -- which files merge ------------------------------------------------------------------------


def test_a_complete_block_of_small_files_merges_into_one_named_by_its_range():
    files = [r(0, 1), r(2, 2), r(3, 4), r(5, 5)]
    # Block 0..3 (level 0) is complete: its files start in it and the last reaches past it.
    assert plan(files, SMALL) == [Merge(r(0, 4), (r(0, 1), r(2, 2), r(3, 4)), 0)]


def test_an_incomplete_block_or_one_after_a_hole_waits():
    assert plan([r(0, 1), r(2, 2)], SMALL) == []  # more claims may still start in 0..3
    # 4..5 is an unfinished claim: 6..7 may not be all that starts in block 4..7.
    assert plan([r(0, 3), r(6, 6), r(7, 8)], SMALL) == []


def test_a_file_merges_into_the_biggest_complete_block_at_once():
    files = [r(i, i) for i in range(17)]
    # Block 0..15 (the top level) is complete: one merge, not four then two then one.
    assert plan(files, SMALL) == [Merge(r(0, 15), tuple(files[:16]), 2)]


def test_files_inside_another_are_not_planned_again():
    assert plan([r(0, 15), r(4, 7), r(16, 16)], SMALL) == []


def test_merges_planned_from_any_listings_never_partly_overlap():
    """Two compactors that listed at different moments (claims done in any order, files
    merged by either) plan merges whose ranges are nested or apart: readers that drop the
    files inside another then read each event once."""
    rnd = random.Random(7)
    for _ in range(200):
        bounds, pos = [], 0
        while pos < 200:
            size = rnd.choice([1, 1, 2, 3, 5, 9, 20])
            bounds.append(r(pos, pos + size - 1))
            pos += size
        written: set[EventRange] = set()
        for _ in range(6):  # snapshots: some claims done, some merges of earlier ones done
            done = [b for b in bounds if rnd.random() < 0.8]
            merged = [w for w in written if rnd.random() < 0.5]
            for m in plan(done + merged, SMALL):
                written.add(m.output)
        for a in written:
            for b in written:
                apart = a.last < b.first or b.last < a.first
                nested = (a.first <= b.first and b.last <= a.last) or (
                    b.first <= a.first and a.last <= b.last
                )
                assert apart or nested, (a, b)
            # and every merged range is a union of whole claims
            assert any(c.first == a.first for c in bounds)
            assert any(c.last == a.last for c in bounds)


def test_the_live_files_stay_within_the_policys_bound_however_many_ticks_land():
    rnd = random.Random(11)
    policy = Policy(base=8, fanout=4, levels=3)  # blocks of 8, 32, 128 events
    files: list[EventRange] = []
    pos, rewrites = 0, Counter()
    for _ in range(3000):
        size = rnd.randint(2, 6)
        files.append(r(pos, pos + size - 1))
        pos += size
        for m in plan(files, policy):
            files = sorted({*files} - set(m.inputs) | {m.output})
            rewrites.update(range(m.output.first, m.output.last + 1))
        assert len(files) <= policy.live_file_bound(pos, 2)
    assert max(rewrites.values()) <= policy.levels  # each row once per level at most


def test_live_leaves_out_files_inside_another_per_partition():
    files = [r(0, 9), r(0, 4), r(5, 9), r(10, 12), r(3, 3, p="1")]
    assert live(files) == [r(0, 9), r(10, 12), r(3, 3, p="1")]


# -- merging --------------------------------------------------------------------------------


def test_compaction_keeps_every_row_once_in_sequence_order_and_bounds_the_files(hub, lake):
    ticks(hub, lake, [3, 1, 2, 5, 1, 4, 2, 7, 3, 1, 6, 2, 9, 1, 3])
    assert_each_event_once(hub, lake)
    files = live_files(lake)
    for f in files:
        seqs = lake.read_parquet(f.landed_path)["sequence_number"].to_pylist()
        assert seqs == sorted(seqs)
    # 50 events: the claims that start in each 16-event block (0..15, 16..31, 32..47) merged
    # once the block was complete; nothing else is left.
    assert files == [r(0, 15), r(16, 34), r(35, 49)]
    assert landing.listed_files(lake) == files


def test_quarantine_files_merge_with_their_landed_files(hub, lake):
    ticks(hub, lake, [10, 10, 10, 10])
    q = live_files(lake, prefix=landing.QUARANTINE_PREFIX)
    assert len(q) < 4 and read_counts(lake)
    assert {x.first for x in q} <= {f.first for f in live_files(lake)}
    assert_each_event_once(hub, lake)


def test_a_merged_footer_says_which_run_landed_each_range(hub, lake):
    ticks(hub, lake, [5, 5, 5, 5])
    merged = next(f for f in live_files(lake) if f.first == 0)
    with lake.fs.open(lake.path(merged.landed_path), "rb") as f:
        kv = pq.ParquetFile(f).metadata.metadata
    assert RUN_ID_KEY.encode() not in kv
    runs = FileRuns.from_footer(merged.landed_path, kv)
    assert runs.ranges[0] == (0, 4, "run-0") and runs.ranges[1] == (5, 9, "run-1")
    assert runs.source(7) == (r(5, 9).landed_path, "run-1")  # the file a landing recorded
    assert FileRuns.from_footer("x", {RUN_ID_KEY.encode(): b"run-9"}).source(3) == ("x", "run-9")
    assert json.loads(kv[RUN_RANGES_KEY.encode()])[0] == [0, 4, "run-0"]


def test_a_compaction_killed_before_deleting_leaves_files_read_once_then_cleaned(
    hub, lake, monkeypatch
):
    publish(hub, 20, malformed=3)
    for first in range(0, 20, 4):  # five claims of four
        land(hub, lake, [r(first, first + 3)], max_size=4)
    monkeypatch.setattr(landing, "remove_file", _killed)
    with pytest.raises(_Killed):
        compact(lake, SMALL)
    both = landing.listed_files(lake)
    assert r(0, 15) in both and r(0, 3) in both  # the merged file and the small ones
    assert_each_event_once(hub, lake)
    monkeypatch.undo()
    compact(lake, SMALL)
    assert landing.listed_files(lake) == [r(0, 15), r(16, 19)]
    assert landing.listed_files(lake, prefix=landing.QUARANTINE_PREFIX) == [
        q for q in live_files(lake, prefix=landing.QUARANTINE_PREFIX)
    ]
    assert_each_event_once(hub, lake)


class _Killed(BaseException):
    pass


def _killed(_lake, _path):
    raise _Killed


def test_an_unreadable_input_skips_its_merge_and_loses_nothing(hub, local_lake):
    lake = local_lake
    publish(hub, 6)
    land(hub, lake, [r(0, 1)], max_size=2)
    land(hub, lake, [r(2, 5)], max_size=2)
    with open(lake.path(r(0, 1).landed_path), "wb") as f:
        f.write(b"not parquet")  # edited by hand
    done = compact(lake, SMALL)
    assert done.merges == 0 and done.partitions[0].skipped
    assert r(0, 1) in live_files(lake) and r(2, 3) in live_files(lake)


# -- claims ---------------------------------------------------------------------------------


def test_claims_are_checkpointed_once_done_and_the_chain_reads_on_from_there(hub, lake):
    ticks(hub, lake, [3] * 10)
    assert landing.checkpoints(lake, "0") == [29]
    assert landing.claim_starts(lake, "0") == []
    chain = read_chain(lake, "0")
    assert (chain.base, chain.head, chain.claims) == (29, 29, [])
    publish(hub, 3, seed=99)
    assert [x.range for x in land(hub, lake, max_size=1000)] == [r(30, 32)]
    assert_each_event_once(hub, lake)


def test_an_unfinished_claim_holds_the_checkpoint_back(hub, lake):
    publish(hub, 12)
    land(hub, lake, [r(0, 3)], max_size=4)
    try_claim(lake, r(4, 7), "a run that was killed")
    try_claim(lake, r(8, 11), "a run after it")
    land_range(hub, lake, r(8, 11))
    compact(lake, SMALL)
    assert landing.checkpoints(lake, "0") == [3]
    assert landing.claim_starts(lake, "0") == [4, 8]
    assert read_chain(lake, "0").unfinished == [r(4, 7)]


def test_a_range_landed_again_after_compaction_duplicates_nothing(hub, lake):
    """A killed run's claim finished late (or a slow run's), after its range was merged and
    its claim checkpointed: the file it writes lies inside the merged one."""
    publish(hub, 20, malformed=2)
    for first in range(0, 20, 4):
        land(hub, lake, [r(first, first + 3)], max_size=4)
    compact(lake, SMALL)
    assert r(4, 7) not in landing.listed_files(lake)
    land_range(hub, lake, r(4, 7), rewrite=True)  # the late writer
    assert r(4, 7) in landing.listed_files(lake)
    assert_each_event_once(hub, lake)
    assert read_chain(lake, "0").unfinished == []
    assert land(hub, lake, max_size=4) == []  # nothing looks unfinished, nothing lands
    compact(lake, SMALL)
    assert r(4, 7) not in landing.listed_files(lake)  # the stray is deleted
    assert_each_event_once(hub, lake)


def test_a_merged_range_is_done_for_claims_not_checkpointed_yet(hub, lake, monkeypatch):
    publish(hub, 20)
    for first in range(0, 20, 4):
        land(hub, lake, [r(first, first + 3)], max_size=4)
    monkeypatch.setattr(compaction, "compact_claims", lambda *a, **k: (0, -1))
    compact(lake, SMALL)
    assert landing.claim_starts(lake, "0") == [0, 4, 8, 12, 16]  # claims still there
    chain = read_chain(lake, "0")
    assert chain.unfinished == [] and chain.head == 19


def test_a_run_with_a_chain_read_before_a_checkpoint_claims_nothing_twice(hub, lake):
    publish(hub, 30)
    stale = read_chain(lake, "0")  # head -1: read before anything landed
    land(hub, lake, [r(0, 9)], max_size=5)
    compact(lake, SMALL)  # claims 0..9 checkpointed and removed
    with pytest.raises(StaleChain):
        try_claim(lake, r(stale.head + 1, 29), "the stale run")
    assert landing.claim_starts(lake, "0") == []  # its claim is removed again
    assert read_chain(lake, "0").head == 9


def test_landing_with_a_stale_chain_reads_it_again(hub, lake, monkeypatch):
    publish(hub, 30)
    land(hub, lake, [r(0, 9)], max_size=5)
    old = read_chain(lake, "0")
    publish(hub, 10, seed=1)
    land(hub, lake, [r(10, 19)], max_size=5)
    compact(lake, SMALL)
    reads = []

    def first_read_is_stale(lake_, pid):
        reads.append(pid)
        return old if len(reads) == 1 else read_chain(lake_, pid)

    monkeypatch.setattr(landing, "read_chain", first_read_is_stale)
    results = landing.land(hub, lake, max_size=100)
    assert [x.range for x in results] == [r(20, 39)]
    monkeypatch.undo()
    assert_each_event_once(hub, lake)


def test_a_claim_lost_to_a_stale_claim_reads_the_chain_again(hub, lake):
    publish(hub, 10)
    land(hub, lake, [r(0, 9)], max_size=5)
    compact(lake, SMALL)
    # Another stale run's claim where a removed one stood (it is about to remove it).
    lake.create_exclusive(landing.claim_path("0", 5), json.dumps({"last": 99}).encode())
    with pytest.raises(StaleChain):
        try_claim(lake, r(5, 9), "this run")


# -- at the same time -----------------------------------------------------------------------


def test_landings_and_compactions_at_once_land_and_read_every_event_once(hub, lake):
    publish(hub, 600, malformed=30)
    errors: list[BaseException] = []
    stop = threading.Event()

    def landing_run(sizes: list[int], seed: int) -> None:
        try:
            pos = 0
            for size in sizes:
                land(hub, fresh(lake), [r(pos, pos + size - 1)], max_size=size)
                pos += size
        except BaseException as exc:  # reported below
            errors.append(exc)

    merges: list[int] = []

    def compacting() -> None:
        try:
            while not stop.is_set():
                merges.append(compact(fresh(lake), SMALL).merges)
        except BaseException as exc:
            errors.append(exc)

    rnd = random.Random(3)
    runs = [
        threading.Thread(
            target=landing_run, args=([rnd.choice([1, 3, 7, 11]) for _ in range(80)], i)
        )
        for i in range(3)
    ]
    compactors = [threading.Thread(target=compacting) for _ in range(2)]
    for t in runs + compactors:
        t.start()
    for t in runs:
        t.join()
    stop.set()
    for t in compactors:
        t.join()
    for exc in errors:
        raise exc
    assert sum(merges) > 10, "the compactions merged nothing while the landings ran"
    land(hub, lake, max_size=1000)  # whatever the requested ranges did not reach
    assert_each_event_once(hub, lake)
    compact(lake, SMALL)
    assert_each_event_once(hub, lake)


def test_merged_files_are_read_like_landed_ones(hub, lake):
    ticks(hub, lake, [10, 10, 10])
    assert any(f.size > 10 for f in live_files(lake))
    t = lake.read_parquet(landed_paths(lake))
    assert t.schema.equals(LANDED_SCHEMA, check_metadata=False)
    quarantined = lake.read_parquet(
        [q.quarantine_path for q in live_files(lake, prefix=landing.QUARANTINE_PREFIX)]
    )
    assert (t.num_rows, quarantined.num_rows) == (27, 3)


def test_merged_files_inputs_stay_for_readers_that_listed_them_then_go(hub, local_lake):
    lake = local_lake
    keeping = Policy(base=4, fanout=2, levels=3, keep_merged_seconds=600)
    publish(hub, 8)
    land(hub, lake, [r(0, 1)], max_size=2)
    land(hub, lake, [r(2, 7)], max_size=2)
    done = compact(lake, keeping)
    assert done.merges == 1 and done.partitions[0].stale_files_kept == 4
    assert r(0, 1) in landing.listed_files(lake)  # a reader that listed it can still read it
    assert live_files(lake) == [r(0, 7)]
    assert_each_event_once(hub, lake)
    old = os.stat(lake.path(r(0, 7).landed_path)).st_mtime - 601
    os.utime(lake.path(r(0, 7).landed_path), (old, old))
    done = compact(lake, keeping)
    assert done.partitions[0].stale_files_removed == 4
    assert landing.listed_files(lake) == [r(0, 7)]


def test_lineage_finds_the_run_that_landed_an_event_inside_a_merged_file(hub, local_lake, instance):
    from mlassets.lib import lineage

    lake = local_lake
    events = make_events(12, 0, seed=4)
    hub.publish(events.bodies)
    for i, first in enumerate(range(0, 12, 4)):
        land(hub, lake, [r(first, first + 3)], max_size=4, run_id=f"run-{i}")
    compact(lake, SMALL)
    assert live_files(lake) == [r(0, 7), r(8, 11)]
    sample = lake.read_parquet(r(0, 7).landed_path).to_pylist()[6]  # landed by run-1
    found = lineage.find_events(lineage._Reader(lake), instance, sample["sample_id"])
    assert [(e.file, e.sequence_number, e.run_id) for e in found] == [
        (r(0, 7).landed_path, 6, "run-1")
    ]
