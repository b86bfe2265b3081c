"""No event can stop ingestion: a corpus of hostile bodies, mixed with valid ones, goes through
the real landing (published to the embedded hub, landed by the `landed_events` asset), and
every event is accounted for: each valid body lands once, each hostile one is quarantined
with its raw body and a reason, nothing is lost, and a second landing adds nothing.

The corpus is built per copy `n`, so copies differ (their sample ids do) and a large mix can
be drawn from it. `ODD_BUT_VALID` are bodies that look suspicious but keep the contract
(unknown fields, whitespace, escapes, offsets, edges of the time range): they must land.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Callable

import dagster as dg
import pyarrow as pa
import pytest

from mlassets.defs.ingestion.assets import landed_events, raw_events
from mlassets.defs.ingestion.checks import INGESTION_CHECKS
from mlassets.defs.resources import local_resources
from mlassets.lib.layout import LANDED_PREFIX, QUARANTINE_PREFIX
from mlassets.settings import PROJECT_ROOT

BIN = os.path.dirname(sys.executable)
PIXELS = list(range(16)) * 4
CAPTURED = "2026-11-22T10:00:00+00:00"
DROP = object()  # a field value that means "leave the field out"


def event(sample_id: object, **fields: object) -> dict:
    body = {"sample_id": sample_id, "pixels": PIXELS, "source": "scanner-01"}
    body["captured_at"] = CAPTURED
    body.update(fields)
    return {k: v for k, v in body.items() if v is not DROP}


def enc(obj: object) -> bytes:
    return json.dumps(obj).encode()


def raw_field(sample_id: str, name: str, json_text: str) -> bytes:
    """A body whose field `name` holds JSON text that json.dumps would not write."""
    return enc(event(sample_id, **{name: "@@"})).replace(b'"@@"', json_text.encode())


def pixels_with(last: str) -> str:
    return "[" + ", ".join(["1"] * 63 + [last]) + "]"


HostileKinds = dict[str, Callable[[str], bytes]]

#: Each kind must be quarantined. The argument is a sample id unique to the copy.
HOSTILE: HostileKinds = {
    # framing and encoding
    "empty": lambda s: b"",
    "spaces": lambda s: b"   ",
    "tabs_and_cr": lambda s: b"\t\r\t",
    "newlines_only": lambda s: b"\n\r\n",
    "top_level_null": lambda s: b"null",
    "top_level_true": lambda s: b"true",
    "top_level_array": lambda s: b"[1, 2, 3]",
    "array_of_events": lambda s: enc([event(s)]),
    "top_level_string": lambda s: b'"a string"',
    "top_level_number": lambda s: b"42",
    "top_level_huge_float": lambda s: b"-1.5e999",
    "utf8_bom": lambda s: b"\xef\xbb\xbf" + enc(event(s)),
    "utf16": lambda s: json.dumps(event(s)).encode("utf-16"),
    "nul_bytes": lambda s: b"\x00" * 32,
    "raw_nul_in_string": lambda s: enc(event(s)).replace(b"scanner-01", b"scan\x00ner"),
    "raw_control_char": lambda s: enc(event(s)).replace(b"scanner-01", b"scan\x01ner"),
    "invalid_utf8": lambda s: b"\xff\xfe\xfd\xfc",
    "invalid_utf8_in_value": lambda s: enc(event(s)).replace(b"scanner-01", b"scanner-\xff"),
    "overlong_utf8": lambda s: enc(event(s)).replace(b"scanner-01", b"scanner-\xc0\xaf"),
    "utf8_encoded_surrogate": lambda s: enc(event(s)).replace(b"scanner-01", b"\xed\xa0\x80"),
    "truncated": lambda s: enc(event(s))[:60],
    "trailing_garbage": lambda s: enc(event(s)) + b" garbage",
    "two_objects": lambda s: enc(event(s)) + enc(event(s + "-2")),
    "object_then_null": lambda s: enc(event(s)) + b" null",
    "single_quotes": lambda s: enc(event(s)).replace(b'"', b"'"),
    "trailing_comma": lambda s: enc(event(s))[:-1] + b", }",
    "comment": lambda s: b"/* scanner */ " + enc(event(s)),
    "unquoted_keys": lambda s: b"{sample_id: 1, pixels: []}",
    # nesting and size
    "deep_array": lambda s: b"[" * 30_000 + b"]" * 30_000,
    "deep_object": lambda s: b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
    "unclosed_nesting": lambda s: b"{" * 60_000,
    "deep_pixels": lambda s: raw_field(s, "pixels", "[" * 10_000 + "]" * 10_000),
    "oversized_valid": lambda s: enc(event(s, padding="x" * 70_000)),
    "oversized_garbage": lambda s: b"\x00\xff" * 50_000,
    # strings that are not Unicode
    "lone_high_surrogate_id": lambda s: enc(event("\ud800" + s)),
    "lone_low_surrogate_source": lambda s: enc(event(s, source="\udfff")),
    "reversed_surrogate_pair": lambda s: raw_field(s, "source", '"\\udc00\\ud800"'),
    "surrogate_captured_at": lambda s: enc(event(s, captured_at="\ud800")),
    # missing fields
    "empty_object": lambda s: b"{}",
    "missing_sample_id": lambda s: enc(event(DROP, note=s)),
    "missing_pixels": lambda s: enc(event(s, pixels=DROP)),
    "missing_source": lambda s: enc(event(s, source=DROP)),
    "missing_captured_at": lambda s: enc(event(s, captured_at=DROP)),
    "null_pixels": lambda s: enc(event(s, pixels=None)),
    "null_sample_id": lambda s: enc(event(None, note=s)),
    # wrong types and values
    "sample_id_number": lambda s: enc(event(7, note=s)),
    "sample_id_empty": lambda s: enc(event("", note=s)),
    "sample_id_bool": lambda s: enc(event(True, note=s)),
    "sample_id_object": lambda s: enc(event({"id": s})),
    "sample_id_array": lambda s: enc(event([s])),
    "pixels_string": lambda s: enc(event(s, pixels="0" * 64)),
    "pixels_object": lambda s: enc(event(s, pixels={"0": 1})),
    "pixels_number": lambda s: enc(event(s, pixels=5)),
    "pixels_63": lambda s: enc(event(s, pixels=PIXELS[:63])),
    "pixels_65": lambda s: enc(event(s, pixels=[*PIXELS, 0])),
    "pixels_empty": lambda s: enc(event(s, pixels=[])),
    "pixel_17": lambda s: enc(event(s, pixels=[*PIXELS[:63], 17])),
    "pixel_negative": lambda s: enc(event(s, pixels=[*PIXELS[:63], -1])),
    "pixel_fraction": lambda s: enc(event(s, pixels=[*PIXELS[:63], 1.5])),
    "pixel_integral_float": lambda s: enc(event(s, pixels=[*PIXELS[:63], 1.0])),
    "pixel_exponent": lambda s: raw_field(s, "pixels", pixels_with("1e1")),
    "pixel_nested": lambda s: enc(event(s, pixels=[[1]] * 64)),
    "pixel_bool": lambda s: enc(event(s, pixels=[True] * 64)),
    "pixel_null": lambda s: enc(event(s, pixels=[*PIXELS[:63], None])),
    "pixel_string": lambda s: enc(event(s, pixels=["1"] * 64)),
    "pixel_huge": lambda s: enc(event(s, pixels=[*PIXELS[:63], 10**30])),
    "pixel_int64_overflow": lambda s: enc(event(s, pixels=[*PIXELS[:63], 2**63])),
    "pixel_5000_digits": lambda s: raw_field(s, "pixels", pixels_with("1" * 5000)),
    "pixel_nan": lambda s: raw_field(s, "pixels", pixels_with("NaN")),
    "pixel_infinity": lambda s: raw_field(s, "pixels", pixels_with("Infinity")),
    "pixel_minus_infinity": lambda s: raw_field(s, "pixels", pixels_with("-Infinity")),
    "source_number": lambda s: enc(event(s, source=1)),
    "source_object": lambda s: enc(event(s, source={"name": "x"})),
    "source_array": lambda s: enc(event(s, source=["x"])),
    "source_bool": lambda s: enc(event(s, source=False)),
    # timestamps
    "captured_at_number": lambda s: enc(event(s, captured_at=1_700_000_000)),
    "captured_at_words": lambda s: enc(event(s, captured_at="yesterday")),
    "captured_at_empty": lambda s: enc(event(s, captured_at="")),
    "captured_at_object": lambda s: enc(event(s, captured_at={"t": 1})),
    "captured_at_before_year_1": lambda s: enc(event(s, captured_at="0001-01-01T00:30:00+01:00")),
    "captured_at_after_9999": lambda s: enc(event(s, captured_at="9999-12-31T23:30:00-01:00")),
    "captured_at_year_0": lambda s: enc(event(s, captured_at="0000-06-01T00:00:00+00:00")),
    "captured_at_absurd_offset": lambda s: enc(event(s, captured_at="2026-11-22T10:00+99:99")),
    "captured_at_offset_24h": lambda s: enc(event(s, captured_at="2026-11-22T10:00:00+24:00")),
    "captured_at_feb_30": lambda s: enc(event(s, captured_at="2026-02-30T10:00:00+00:00")),
    "captured_at_leap_second": lambda s: enc(event(s, captured_at="2026-12-31T23:59:60+00:00")),
    "captured_at_year_10000": lambda s: enc(event(s, captured_at="+10000-01-01T00:00:00Z")),
    "captured_at_5_digit_year": lambda s: enc(event(s, captured_at="99999-01-01T00:00:00Z")),
    # duplicate keys (which of the two would win is up to the parser)
    "duplicate_sample_id": lambda s: enc(event(s)).replace(b"{", b'{"sample_id": "x", ', 1),
    "duplicate_pixels": lambda s: enc(event(s)).replace(b"{", b'{"pixels": [1], ', 1),
    "duplicate_captured_at": lambda s: enc(event(s)).replace(b"{", b'{"captured_at": "", ', 1),
}

#: Each kind keeps the contract and must land.
ODD_BUT_VALID: HostileKinds = {
    "unknown_fields": lambda s: enc(event(s, extra={"nested": [1, {"a": None}]}, more=[1])),
    "unknown_nan": lambda s: raw_field(s, "x", "NaN"),
    "unknown_nested_3000_deep": lambda s: raw_field(s, "x", "[" * 3000 + "]" * 3000),
    "unknown_5000_digits": lambda s: raw_field(s, "x", "1" * 5000),
    "unknown_duplicate_key": lambda s: enc(event(s)).replace(b"{", b'{"x": 1, "x": 2, ', 1),
    "unknown_lone_surrogate": lambda s: enc(event(s, x="\ud800")),
    "padded_with_whitespace": lambda s: b" \t " + enc(event(s)) + b"  ",
    "pretty_printed": lambda s: json.dumps(event(s), indent=2).encode(),
    "non_ascii_source": lambda s: enc(event(s, source="scanner-Zürich-東京")),
    "raw_utf8_emoji": lambda s: json.dumps(event(s, source="😀"), ensure_ascii=False).encode(),
    "escaped_surrogate_pair": lambda s: enc(event(s, source="😀")),
    "escaped_nul_in_source": lambda s: enc(event(s, source="a\u0000b")),
    "offset_time": lambda s: enc(event(s, captured_at="2026-11-22T12:00:00+02:00")),
    "naive_time": lambda s: enc(event(s, captured_at="2026-11-22T10:00:00")),
    "zulu_time": lambda s: enc(event(s, captured_at="2026-11-22T10:00:00Z")),
    "first_microsecond_of_year_1": lambda s: enc(event(s, captured_at="0001-01-01T00:00:00Z")),
    "last_microsecond_of_9999": lambda s: enc(
        event(s, captured_at="9999-12-31T23:59:59.999999+00:00")
    ),
    "pixels_all_zero": lambda s: enc(event(s, pixels=[0] * 64)),
    "pixels_all_16": lambda s: enc(event(s, pixels=[16] * 64)),
    "negative_zero_pixel": lambda s: raw_field(s, "pixels", pixels_with("-0")),
    "keys_reversed": lambda s: enc(dict(reversed(list(event(s).items())))),
    "empty_source": lambda s: enc(event(s, source="")),
}


def line_safe(body: bytes) -> bool:
    """Whether a line of a capture file carries `body` unchanged (see `mlassets publish`)."""
    return b"\n" not in body and not body.endswith(b"\r")


def draw(kinds: HostileKinds, count: int, prefix: str, *, lines: bool = False) -> list[bytes]:
    """`count` bodies cycling through `kinds`, each copy with its own sample id."""
    names = [k for k in kinds if not lines or line_safe(kinds[k](f"{prefix}-{k}-0"))]
    return [
        kinds[names[i % len(names)]](f"{prefix}-{names[i % len(names)]}-{i}") for i in range(count)
    ]


def valid(count: int) -> list[bytes]:
    return [enc(event(f"ok-{i:05d}", source=f"scanner-{i % 8:02d}")) for i in range(count)]


def sample_ids(bodies: list[bytes]) -> list[str]:
    """The sample id each valid body carries (read as text: some nest deeper than json
    goes)."""
    return [re.search(rb'"sample_id": "([^"]+)"', b)[1].decode() for b in bodies]


def read_zone(lake, prefix: str) -> pa.Table | None:
    paths = lake.glob(f"{prefix}/partition=*/*.parquet")
    return lake.read_parquet(paths) if paths else None


def land(instance: dg.DagsterInstance) -> dict:
    result = dg.materialize(
        [raw_events, landed_events, *INGESTION_CHECKS],
        resources=local_resources(),
        instance=instance,
        selection=[landed_events],
    )
    assert result.success
    (materialization,) = result.asset_materializations_for_node("landed_events")
    return {k: v.value for k, v in materialization.metadata.items()}


def assert_accounted_for(lake, hostile: list[bytes], good: list[bytes]) -> None:
    landed = read_zone(lake, LANDED_PREFIX)
    quarantined = read_zone(lake, QUARANTINE_PREFIX)
    assert landed.num_rows + quarantined.num_rows == len(hostile) + len(good)
    # Every valid body landed, once; nothing hostile did.
    assert Counter(landed["sample_id"].to_pylist()) == Counter(sample_ids(good))
    # Every hostile body is in the quarantine, byte for byte, with a reason.
    assert Counter(quarantined["body"].to_pylist()) == Counter(hostile)
    reasons = quarantined["reason"].to_pylist()
    assert all(isinstance(r, str) and r.strip() for r in reasons)
    # And each one is a reason the decoder words, not an error it tripped over.
    assert not [r for r in reasons if r.startswith("could not be decoded")]


def test_the_corpus_has_at_least_fifty_kinds_of_hostile_body():
    assert len(HOSTILE) >= 50
    assert len({kind(f"s-{name}") for name, kind in HOSTILE.items()}) >= 50  # all different


def test_every_hostile_body_is_quarantined_with_a_reason_and_every_valid_one_lands(
    data_dir, instance
):
    hostile = [make(f"bad-{k}-{n}") for n in range(2) for k, make in HOSTILE.items()]
    good = valid(300) + [
        make(f"odd-{k}-{n}") for n in range(2) for k, make in ODD_BUT_VALID.items()
    ]
    bodies = hostile + good
    random.Random(12).shuffle(bodies)
    resources = local_resources()
    assert resources["event_hub"].publish(bodies) == len(bodies)

    meta = land(instance)
    assert meta["landed_rows"] == len(good)
    assert meta["quarantined_rows"] == len(hostile)
    lake = resources["lake"]
    assert_accounted_for(lake, hostile, good)

    files = {p: lake.size(p) for p in lake.glob("*/events/partition=*/*.parquet")}
    again = land(instance)
    assert again["landed_rows"] == again["quarantined_rows"] == again["files_written"] == 0
    assert {p: lake.size(p) for p in lake.glob("*/events/partition=*/*.parquet")} == files


def run(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [f"{BIN}/{args[0]}", *args[1:]],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        env=dict(os.environ),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return result


@pytest.mark.timeout(240)
def test_a_capture_of_10000_hostile_and_1000_valid_bodies_replays_and_lands(
    data_dir, dagster_home, tmp_path
):
    """The issue's "Must show": `mlassets publish` a capture, `dagster asset materialize`
    it (exit 0), every valid body landed and every other quarantined with a reason; a second
    landing adds nothing."""
    hostile = draw(HOSTILE, 10_000, "bad", lines=True)
    good = valid(1_000 - len(ODD_BUT_VALID)) + draw(
        ODD_BUT_VALID, len(ODD_BUT_VALID), "odd", lines=True
    )
    lines = hostile + good
    random.Random(7).shuffle(lines)
    capture = tmp_path / "capture.jsonl"
    capture.write_bytes(b"\n".join(lines) + b"\n")

    out = run("mlassets", "publish", str(capture)).stdout
    assert f"published {len(lines):,} events" in out
    state = json.loads(run("mlassets", "hub", "--json").stdout)
    assert sum(p["last_enqueued_sequence_number"] + 1 for p in state["partitions"]) == 11_000

    materialize = ("dagster", "asset", "materialize", "-m", "mlassets.definitions")
    run(*materialize, "--select", "landed_events")
    lake = local_resources()["lake"]
    assert_accounted_for(lake, hostile, good)

    files = {p: lake.size(p) for p in lake.glob("*/events/partition=*/*.parquet")}
    run(*materialize, "--select", "landed_events")
    assert {p: lake.size(p) for p in lake.glob("*/events/partition=*/*.parquet")} == files
    assert_accounted_for(lake, hostile, good)
