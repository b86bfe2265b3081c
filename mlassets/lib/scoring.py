"""Which samples a model scores next, each exactly once, at the cost of what is new.

A model's scorings form a chain of claims, ``predictions/model=<v>/claims/<k>.json``, like
the landing's: claim k names the sample state it scores through and the state's segments,
and is created with a conditional create, so of two scorings at once exactly one scores
each batch. Its predictions go to ``predictions/model=<v>/batch=<k>/part-<j>.parquet`` and a
``<k>.done`` marker closes it. A claim without its marker (a scoring killed, or still running)
is scored again by the next scoring: its samples are a function of the states alone, and the
files are named by position, so a second writer replaces rather than adds.

What claim k scores: the live, unlabelled rows added after its predecessor's state (each row
records the state that added it, through compactions), less the samples that had a row
before (scored already, or labelled then), plus the rows from before whose label was
retracted since (checked against this model's predictions, which only then are read).
Segments holding only older rows are not read at all.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc

from mlassets.lib import sample_state
from mlassets.lib.layout import PREDICTIONS_PREFIX
from mlassets.lib.sample_state import SPLITS, State
from mlassets.roles.storage import LakeStorage

#: Rows per prediction file, read and scored at a time (the model itself predicts in smaller
#: chunks, `model.SCORING_CHUNK`): what bounds a scoring's memory apart from TensorFlow.
CHUNK_ROWS = 262_144


def model_dir(version: str) -> str:
    return f"{PREDICTIONS_PREFIX}/model={version}"


def claim_path(version: str, k: int) -> str:
    return f"{model_dir(version)}/claims/{k:08d}.json"


def done_path(version: str, k: int) -> str:
    return f"{model_dir(version)}/claims/{k:08d}.done"


def batch_dir(version: str, k: int) -> str:
    return f"{model_dir(version)}/batch={k:08d}"


@dataclass
class ScoringClaim:
    number: int
    #: The sample state it scores through: rows added after its predecessor's state.
    state: int
    owner: str = ""
    claimed_at: str = ""
    done: bool = False
    exported: bool = False


@dataclass
class Read:
    """One file to read for a batch, and which of its live, unlabelled rows to keep."""

    segment: str
    path: str
    #: Rows added after this state are new ...
    added_after: int | None = None
    #: ... except these samples, which had a row the previous batches covered.
    skip: pa.Array | None = None
    #: Or: only these samples (their labels were retracted since).
    only: pa.Array | None = None


@dataclass
class Batch:
    """What one claim scores."""

    claim: ScoringClaim
    previous: ScoringClaim | None
    reads: list[Read] = field(default_factory=list)
    #: True when rows already predicted must be filtered out (retractions).
    check_predicted: bool = False


def read_claims(lake: LakeStorage, version: str) -> list[ScoringClaim]:
    """The model's claims in order, each with whether its batch is done and exported."""
    names = lake.glob(f"{model_dir(version)}/claims/*")
    done = {n.rsplit("/", 1)[1].split(".")[0] for n in names if n.endswith(".done")}
    exported = {n.rsplit("/", 1)[1].split(".")[0] for n in names if n.endswith(".exported")}
    out = []
    for name in names:
        if not name.endswith(".json"):
            continue
        raw = json.loads(lake.read_bytes(name))
        stem = name.rsplit("/", 1)[1].split(".")[0]
        raw.update(done=stem in done, exported=stem in exported)
        out.append(ScoringClaim(**{k: raw[k] for k in ScoringClaim.__dataclass_fields__}))
    return sorted(out, key=lambda c: c.number)


def try_claim(lake: LakeStorage, version: str, claim: ScoringClaim) -> bool:
    record = {k: v for k, v in asdict(claim).items() if k not in ("done", "exported")}
    return lake.create_exclusive(claim_path(version, claim.number), json.dumps(record).encode())


def mark_done(lake: LakeStorage, version: str, k: int, rows: int) -> None:
    lake.write_bytes(done_path(version, k), json.dumps({"rows": rows}).encode())


def mark_exported(lake: LakeStorage, version: str, k: int) -> None:
    lake.write_bytes(f"{model_dir(version)}/claims/{k:08d}.exported", b"{}")


def next_claim(state: State, previous: ScoringClaim | None, run_id: str | None) -> ScoringClaim:
    return ScoringClaim(
        number=previous.number + 1 if previous else 0,
        state=state.number,
        owner=f"{run_id or 'no-run'}@{socket.gethostname()}:{os.getpid()}",
        claimed_at=datetime.now(UTC).isoformat(),
    )


def plan(lake: LakeStorage, claim: ScoringClaim, previous: ScoringClaim | None) -> Batch:
    """The reads that give a claim's samples, from the states between its predecessor's and
    its own: a function of the states alone, so scoring a claim again scores the same rows."""
    state = sample_state.read_state(lake, claim.state)
    before = previous.state if previous else -1
    batch = Batch(claim, previous)
    resent: list[pa.Array] = []
    retracted: list[pa.Array] = []
    for number in range(before + 1, claim.state + 1):
        step = sample_state.read_state(lake, number)
        if step.delta is None:
            continue
        delta = lake.read_parquet(step.delta, schema=sample_state.OVERRIDE_SCHEMA)
        old = delta.filter(pc.less_equal(delta["added_in"], before))  # rows covered before
        resent.append(old.filter(old["dead"])["sample_id"])
        lost = pc.and_(pc.invert(old["dead"]), pc.is_null(old["label"]))
        retracted.append(old.filter(lost)["sample_id"])
    skip, back = _unique(resent), _unique(retracted)
    for split in SPLITS:
        for seg in state.segments:
            for path in seg.files.get(split, []):
                if seg.added[1] > before:
                    batch.reads.append(Read(seg.id, path, added_after=before, skip=skip))
                if len(back) and seg.added[0] <= before:
                    batch.reads.append(Read(seg.id, path, only=back))
    batch.check_predicted = bool(len(back))
    return batch


def _unique(arrays: list[pa.Array]) -> pa.Array:
    if not arrays:
        return pa.array([], pa.string())
    return pc.unique(pa.chunked_array(arrays, pa.string()).combine_chunks())


def samples(lake: LakeStorage, batch: Batch, model_version: str) -> Iterator[pa.Table]:
    """The batch's samples (sample_id, pixels), in chunks of CHUNK_ROWS (the last smaller),
    read a row group at a time: memory is a chunk's, whatever the size of a file. The same
    batch always gives the same chunks (a claim scored again writes the same files)."""
    pending: list[pa.Table] = []
    size = 0
    for piece in _pieces(lake, batch, model_version):
        pending.append(piece)
        size += piece.num_rows
        while size >= CHUNK_ROWS:
            table = pa.concat_tables(pending)
            yield _chunk(table.slice(0, CHUNK_ROWS))
            rest = table.slice(CHUNK_ROWS)
            pending, size = [rest], rest.num_rows
    if size:
        yield _chunk(pa.concat_tables(pending))


def _chunk(rows: pa.Table) -> pa.Table:
    pixels = sample_state.unpack_pixels(rows["pixels"])
    return pa.table({"sample_id": rows["sample_id"], "pixels": pixels})


def _pieces(lake: LakeStorage, batch: Batch, model_version: str) -> Iterator[pa.Table]:
    """The batch's rows to score (sample_id, pixels), read by read, row group by group."""
    state = sample_state.read_state(lake, batch.claim.state)
    overrides = sample_state.read_overrides(lake, state.overrides)
    predicted = None
    if batch.check_predicted:  # among the retracted samples, those this model predicted
        only = _unique([r.only for r in batch.reads if r.only is not None])
        predicted = _predicted(lake, model_version, batch, only)
    columns = ["sample_id", "pixels", "label", "added_in"]
    for read in batch.reads:
        if read.only is not None:
            groups: Iterator[pa.Table] = iter([_rows_of(lake, read.path, read.only, columns)])
        else:
            groups = _batches(lake, read.path, columns)
        for rows in groups:
            if read.added_after is not None and read.added_after >= 0:
                rows = rows.filter(pc.greater(rows["added_in"], read.added_after))
            rows = sample_state.apply_overrides(rows, overrides.get(read.segment))
            keep = pc.is_null(rows["label"])
            if read.skip is not None and len(read.skip):
                keep = pc.and_(keep, pc.invert(pc.is_in(rows["sample_id"], value_set=read.skip)))
            if read.only is not None:
                keep = pc.and_(keep, pc.less_equal(rows["added_in"], batch.previous.state))
                if predicted is not None and len(predicted):
                    keep = pc.and_(
                        keep, pc.invert(pc.is_in(rows["sample_id"], value_set=predicted))
                    )
            rows = rows.filter(keep).select(["sample_id", "pixels"])
            if rows.num_rows:
                yield rows


def _batches(lake: LakeStorage, path: str, columns: list[str]) -> Iterator[pa.Table]:
    import pyarrow.parquet as pq

    with lake.fs.open(lake.path(path), "rb") as f:
        for b in pq.ParquetFile(f).iter_batches(batch_size=65_536, columns=columns):
            yield pa.Table.from_batches([b])


def _rows_of(lake: LakeStorage, path: str, ids: pa.Array, columns: list[str]) -> pa.Table:
    """The rows of `ids` in one file: the id column first, then only the row groups that hold
    a match (files are sorted by id, so a few retractions read a few row groups)."""
    import numpy as np
    import pyarrow.parquet as pq

    with lake.fs.open(lake.path(path), "rb") as f:
        pf = pq.ParquetFile(f)
        hit = np.flatnonzero(
            np.asarray(pc.is_in(pf.read(columns=["sample_id"])["sample_id"], value_set=ids))
        )
        if not len(hit):
            return pf.schema_arrow.empty_table().select(columns)
        bounds = np.cumsum([pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)])
        groups = sorted(set(np.searchsorted(bounds, hit, side="right").tolist()))
        table = pf.read_row_groups(groups, columns=columns)
    return table.filter(pc.is_in(table["sample_id"], value_set=ids))


def _predicted(lake: LakeStorage, version: str, batch: Batch, among: pa.Array) -> pa.Array:
    """Sample ids this model has predictions for, in batches before this claim (read only
    when retractions ask: a sample scored while unlabelled, labelled, then retracted)."""
    ids = []
    for k in range(batch.claim.number):
        for path in lake.glob(f"{batch_dir(version, k)}/*.parquet"):
            scored = lake.read_parquet(path, columns=["sample_id"])["sample_id"]
            ids.append(scored.filter(pc.is_in(scored, value_set=among)))
    return _unique([c for a in ids for c in a.chunks])


def prediction_files(lake: LakeStorage, version: str | None = None) -> list[str]:
    """Every prediction file (of one model, or of all)."""
    model = f"model={version}" if version else "model=*"
    return lake.glob(f"{PREDICTIONS_PREFIX}/{model}/batch=*/*.parquet")


#: Scores one chunk of a claim: (claim, chunk number, samples) -> rows written.
ScoreChunk = Callable[[ScoringClaim, int, pa.Table], int]


def score_new(
    lake: LakeStorage,
    version: str,
    state: State,
    score_chunk: ScoreChunk,
    *,
    run_id: str | None = None,
    log: Callable[[str], None] = lambda _m: None,
) -> int:
    """Finish the claims an interrupted scoring left, then claim and score, batch after
    batch, through `state`; returns the rows scored. What another scoring claims first is
    left to it."""
    claims = read_claims(lake, version)
    rows = 0

    def run(claim: ScoringClaim, previous: ScoringClaim | None) -> None:
        nonlocal rows
        written = 0
        for j, chunk in enumerate(samples(lake, plan(lake, claim, previous), version)):
            written += score_chunk(claim, j, chunk)
        mark_done(lake, version, claim.number, written)
        if not written:  # nothing to export
            mark_exported(lake, version, claim.number)
        rows += written

    for i, claim in enumerate(claims):
        if not claim.done:  # a scoring killed, or still running: its batch is scored again
            log(f"batch {claim.number}: finishing an earlier scoring's claim")
            run(claim, claims[i - 1] if i else None)
    head = claims[-1] if claims else None
    while state.number >= 0 and (head is None or head.state < state.number):
        claim = next_claim(state, head, run_id)
        if not try_claim(lake, version, claim):
            log(f"batch {claim.number} was claimed by another scoring first")
            head = read_claims(lake, version)[-1]
            continue
        run(claim, head)
        head = claim
    return rows
