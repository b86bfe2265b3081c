"""Applying 100k label changes to the labels Delta table, against a direct deltalake MERGE.

Both start from the same 500k-row Delta table (a fresh copy per repetition, not timed). The
baseline (the ceiling) is one deltalake MERGE of the 100k net rows, already in memory, with
the same clauses. The measured path is the real one, `mlassets.lib.cdc.apply_pending`: read the
table's applied LSN from the Delta log, list the change batches, read the batch Parquet (the
changes as CDC rows, update before-images included, written as capture writes a batch:
`cdc.write_batch`), drop before-images, keep the last change per key, MERGE, and record the
applied LSN in the commit. Target: at least 0.8x the ceiling's changes/s, on the median of
REPEAT alternating runs of each (the note gives the spread of the per-run ratios).

The first row is the issue's case: 100k changes to 100k keys (50k updates, 20k deletes, 30k
inserts). The second applies 300k changes that touch the same 100k keys three times each,
against the MERGE of the 100k rows they come down to (someone else did the collapsing).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa

from benchmarks.common import Row, alternating
from mlassets.lib import cdc
from mlassets.roles.labels_db import CHANGE_SCHEMA, LABEL_COLUMNS, LABEL_SCHEMA, lsn_hex
from mlassets.roles.storage import LakeStorage

TARGET_ROWS = 500_000
KEYS = 100_000
REPEAT = 9

_INSERT, _DELETE, _UPDATE = 2, 1, 4


def _ids(start: int, n: int) -> pa.Array:
    return pa.array(np.char.add("s", np.char.zfill(np.arange(start, start + n).astype(str), 8)))


def _rows(rng: np.random.Generator, ids: pa.Array, labeler: str) -> dict:
    n = len(ids)
    return {
        "sample_id": ids,
        "label": pa.array(rng.integers(0, 10, n).astype(np.int32), pa.int32()),
        "labeler": pa.array(np.full(n, labeler, dtype=object), pa.string()),
        "updated_at": pa.array(np.full(n, 1_700_000_000_000_000, dtype="datetime64[us]")).cast(
            LABEL_SCHEMA.field("updated_at").type
        ),
    }


def _changes(rng, keys: pa.Array, ops: np.ndarray, first_lsn: int, labeler: str) -> pa.Table:
    """CDC rows for one change per key; an update (4) comes with its before-image (3)."""
    n = len(keys)
    lsn = np.arange(first_lsn, first_lsn + n)
    upd = ops == _UPDATE
    after = pa.table({"_lsn": lsn, "operation": ops.astype(np.int8), **_rows(rng, keys, labeler)})
    before = pa.table(
        {
            "_lsn": lsn[upd],
            "operation": np.full(int(upd.sum()), 3, np.int8),
            **_rows(rng, keys.filter(pa.array(upd)), "before"),
        }
    )
    both = pa.concat_tables([before, after])
    order = np.lexsort((both["operation"].to_numpy(), both["_lsn"].to_numpy()))
    both = both.take(pa.array(order))
    hexed = pa.array(np.char.zfill(np.char.mod("%x", both["_lsn"].to_numpy()), 20))
    columns = {c: both[c] for c in ("operation", *LABEL_COLUMNS)}
    return pa.table({"start_lsn": hexed, "seqval": hexed, **columns}).cast(CHANGE_SCHEMA)


def _scenario(root: Path, rounds: int, seed: int) -> tuple[Path, pa.Table]:
    """A template lake (the table and one change batch), and the net rows for the baseline."""
    rng = np.random.default_rng(seed)
    template = root / f"template-{rounds}"
    lake = LakeStorage(url=f"file://{template}")
    base = pa.table(_rows(rng, _ids(0, TARGET_ROWS), "ana")).cast(LABEL_SCHEMA)
    snap = cdc.LabelsSnapshot("snapshots/labels/base.parquet", lsn_hex(1), TARGET_ROWS, "bench")
    lake.write_parquet(snap.path, base)
    cdc.load_snapshot(lake, snap)

    existing = _ids(0, TARGET_ROWS).take(pa.array(rng.permutation(TARGET_ROWS)[:70_000]))
    keys = pa.concat_arrays([existing, _ids(TARGET_ROWS, 30_000)])
    final = np.concatenate(
        [np.full(50_000, _UPDATE), np.full(20_000, _DELETE), np.full(30_000, _INSERT)]
    )
    order = pa.array(rng.permutation(KEYS))
    keys, final = keys.take(order), final[order.to_numpy()]
    batches, lsn = [], 2
    for r in range(rounds):
        # New keys are inserted in the first round and updated after; every other key is
        # updated until the last round brings it to its final operation.
        if r == 0:
            ops = np.where(final == _INSERT, _INSERT, final if rounds == 1 else _UPDATE)
        else:
            ops = np.where(final == _INSERT, _UPDATE, final if r == rounds - 1 else _UPDATE)
        batches.append(_changes(rng, keys, ops, lsn, f"round{r}"))
        lsn += KEYS
    changes = pa.concat_tables(batches)
    cdc.write_batch(lake, cdc.LsnRange(lsn_hex(2), lsn_hex(lsn - 1)), changes)  # as captured
    return template, cdc.collapse(changes).select(["operation", *LABEL_COLUMNS])


def _direct_merge(uri: str, net: pa.Table) -> None:
    from deltalake import DeltaTable

    values = {c: f"s.{c}" for c in LABEL_COLUMNS}
    (
        DeltaTable(uri)
        .merge(net, predicate="t.sample_id = s.sample_id", source_alias="s", target_alias="t")
        .when_matched_delete(predicate="s.operation = 1")
        .when_matched_update(
            updates={c: v for c, v in values.items() if c != "sample_id"},
            predicate="s.operation <> 1",
        )
        .when_not_matched_insert(updates=values, predicate="s.operation <> 1")
        .execute()
    )


def run() -> list[Row]:
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        work = root / "work"
        lake = LakeStorage(url=f"file://{work}")
        uri = str(work / cdc.LABELS_PATH)
        for rounds in (1, 3):
            template, net = _scenario(root, rounds, seed=rounds)
            changes = rounds * KEYS

            def ours() -> None:
                result = cdc.apply_pending(lake)
                assert result.committed and result.keys_changed == KEYS

            def direct(net: pa.Table = net) -> None:
                _direct_merge(uri, net)

            def fresh(template: Path = template) -> None:
                shutil.rmtree(work, ignore_errors=True)
                shutil.copytree(template, work)

            times = alternating({"ours": ours, "direct": direct}, REPEAT, setup=fresh)
            measured, baseline = times["ours"], times["direct"]
            rows.append(
                Row(
                    f"apply {changes // 1000}k changes to {KEYS // 1000}k keys -> labels Delta",
                    changes / measured.median,
                    changes / baseline.median,
                    "ch/s",
                    0.8,
                    note=f"{TARGET_ROWS // 1000}k-row table; baseline: one MERGE of the "
                    f"{KEYS // 1000}k net rows; ratio per run: "
                    f"{measured.ratio_to(baseline).describe()}",
                )
            )
    return rows
