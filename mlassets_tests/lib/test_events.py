"""Decoding digit events: typed rows for valid bodies, a reason for every refused one."""

import json

import numpy as np
import pyarrow as pa
import pytest

import mlassets.lib.events as events
from mlassets.lib.events import (
    LANDED_SCHEMA,
    QUARANTINE_SCHEMA,
    RAW_EVENT_SCHEMA,
    TIME_RANGE_REASON,
    decode_events,
    explain_body,
    raw_events_table,
)


def body(**overrides) -> dict:
    event = {
        "sample_id": "s-1",
        "pixels": list(range(16)) * 4,
        "source": "scanner-01",
        "captured_at": "2026-11-22T10:00:00+00:00",
    }
    event.update(overrides)
    return {k: v for k, v in event.items() if v is not ...}


def raw(bodies: list[bytes]) -> pa.Table:
    return raw_events_table("0", [(i, i * 10, 0, None, None, b) for i, b in enumerate(bodies)])


def encode(obj) -> bytes:
    return json.dumps(obj).encode()


def test_a_valid_event_lands_typed_with_its_provenance():
    decoded = decode_events(raw([encode(body())]))
    assert decoded.quarantined.num_rows == 0
    row = decoded.landed.to_pylist()[0]
    assert decoded.landed.schema == LANDED_SCHEMA
    assert row["sample_id"] == "s-1"
    assert row["pixels"] == list(range(16)) * 4
    assert row["source"] == "scanner-01"
    assert row["captured_at"].isoformat() == "2026-11-22T10:00:00+00:00"
    assert (row["partition_id"], row["sequence_number"], row["offset"]) == ("0", 0, 0)


def test_unknown_fields_are_ignored():
    decoded = decode_events(raw([encode(body(extra={"nested": [1, 2]}))]))
    assert decoded.landed.num_rows == 1


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b'{"sample_id": "s", "pixels": [1, 2', "invalid JSON: Expecting ',' delimiter"),
        (b"", "empty body"),
        (b"null", "body is a JSON null, expected an object"),
        (b"[1, 2]", "body is a JSON array, expected an object"),
        (b"42", "body is a JSON number, expected an object"),
        (b'{"a": 1} {"b": 2}', "invalid JSON: Extra data"),
        (b"\xff\xfe", "body is not UTF-8"),
        (encode(body(pixels=list(range(10)))), "pixels has 10 values, expected 64"),
        (encode(body(pixels=[0] * 63 + [17])), "pixel values must be within 0..16"),
        (encode(body(pixels=[0] * 63 + [-1])), "pixel values must be within 0..16"),
        (encode(body(pixels=[0] * 63 + [1.5])), "pixels must be an array of integers"),
        (encode(body(pixels=[0] * 63 + [None])), "pixels must be an array of integers"),
        (encode(body(pixels="0" * 64)), "pixels must be an array of integers"),
        (encode(body(sample_id=...)), "missing field: sample_id"),
        (encode(body(captured_at=...)), "missing field: captured_at"),
        (encode(body(source=None)), "missing field: source"),
        (encode(body(sample_id="")), "sample_id must be a non-empty string"),
        (encode(body(sample_id=7)), "sample_id must be a non-empty string"),
        (encode(body(captured_at="yesterday")), "captured_at is not an ISO-8601 timestamp"),
        # What used to raise out of the decoder and stop the landing:
        (b"[" * 20_000 + b"]" * 20_000, "invalid JSON: nested too deeply"),
        (
            # deep in an unknown field, over two lines: the per-event path
            (json.dumps(body(x=[1])).replace("[1]", "[" * 5000 + "]" * 5000) + "\n").encode(),
            "invalid JSON: nested too deeply",
        ),
        (
            encode(body(sample_id="\ud800")),
            "sample_id is not valid Unicode (a lone surrogate escape)",
        ),
        (encode(body(source="a\udfff")), "source is not valid Unicode (a lone surrogate escape)"),
        (encode(body(captured_at="0001-01-01T00:30:00+01:00")), TIME_RANGE_REASON),
        (encode(body(captured_at="9999-12-31T23:00:00-05:00")), TIME_RANGE_REASON),
        (encode(body(captured_at="0000-06-01T00:00:00+00:00")), TIME_RANGE_REASON),
        # Caught before the reader, which would let these through:
        (encode(body(sample_id="s")).replace(b'"s"', b'"s\xff"'), "body is not UTF-8"),
        (
            encode(body(sample_id="s")).replace(b'"s"', b'"s", "x": "\xc0\x80"'),
            "body is not UTF-8",
        ),
        (
            encode(body()).replace(b'"sample_id"', b'"sample_id": "a", "sample_id"'),
            "duplicate field: sample_id",
        ),
        (
            b'{"pixels": [1], ' + encode(body())[1:],
            "duplicate field: pixels",
        ),
        (
            encode(body()).replace(b"[0, 1,", b"[" + b"1" * 5000 + b", 1,"),
            "invalid JSON: Exceeds the limit (4300 digits) for integer string conversion",
        ),
        (encode(body(pixels=[0] * 63 + [2**70])), "pixel values must be within 0..16"),
        (encode(body(pixels=[True] * 64)), "pixels must be an array of integers"),
        (encode(body(pixels=[[1]] * 64)), "pixels must be an array of integers"),
        (encode(body(source={"name": "x"})), "source must be a string"),
        (encode(body(captured_at=1_700_000_000)), "captured_at is not an ISO-8601 timestamp"),
        (b'{"sample_id": "s"} null', "invalid JSON: Extra data"),
        (
            b"\xef\xbb\xbf" + encode(body()),
            "invalid JSON: Unexpected UTF-8 BOM (decode using utf-8-sig)",
        ),
        (b" \t\r\n ", "empty body"),
    ],
)
def test_each_kind_of_malformed_event_is_quarantined_with_its_reason(payload, reason):
    # Surrounded by valid events, so both the bulk parser and the isolation path run.
    bodies = [encode(body(sample_id=f"ok-{i}")) for i in range(40)]
    bodies.insert(17, payload)
    decoded = decode_events(raw(bodies))
    assert decoded.landed.num_rows == 40
    assert decoded.quarantined.num_rows == 1
    bad = decoded.quarantined.to_pylist()[0]
    assert bad["reason"] == reason
    assert bad["body"] == payload  # the raw body is kept untouched
    assert bad["sequence_number"] == 17
    assert decoded.quarantined.schema == QUARANTINE_SCHEMA


def test_the_per_event_check_and_the_bulk_path_agree():
    # explain_body is the reference; the vectorized checks must word problems the same way.
    for payload in [
        body(pixels=list(range(10))),
        body(pixels=[0] * 63 + [17]),
        body(captured_at=...),
        body(sample_id=""),
        body(captured_at="0001-01-01T00:30:00+01:00"),
        body(captured_at="0000-06-01T00:00:00+00:00"),
    ]:
        _, reason = explain_body(encode(payload))
        decoded = decode_events(raw([encode(payload)]))
        assert decoded.quarantined["reason"].to_pylist() == [reason]


def test_a_valid_body_spread_over_several_lines_is_landed():
    pretty = json.dumps(body(), indent=2).encode()
    decoded = decode_events(raw([pretty, encode(body(sample_id="s-2"))]))
    assert decoded.landed["sample_id"].to_pylist() == ["s-1", "s-2"]


def test_timestamps_are_normalized_to_utc():
    decoded = decode_events(raw([encode(body(captured_at="2026-11-22T12:00:00+02:00"))]))
    assert decoded.landed["captured_at"][0].as_py().isoformat() == "2026-11-22T10:00:00+00:00"


def test_rows_keep_hub_order_whichever_path_decoded_them():
    bodies = [encode(body(sample_id=f"s-{i}")) for i in range(100)]
    bodies[10] = json.dumps(body(sample_id="s-10"), indent=1).encode()  # per-event path
    bodies[50] = b"not json"
    decoded = decode_events(raw(bodies))
    assert decoded.landed["sequence_number"].to_pylist() == [i for i in range(100) if i != 50]
    assert decoded.landed["sample_id"][10].as_py() == "s-10"


def test_many_scattered_bad_events_are_all_found():
    rng = np.random.default_rng(0)
    bodies = [encode(body(sample_id=f"s-{i}")) for i in range(5000)]
    bad = sorted(rng.choice(5000, 97, replace=False).tolist())
    for i in bad:
        bodies[i] = b'{"sample_id": "broken'
    decoded = decode_events(raw(bodies))
    assert decoded.quarantined["sequence_number"].to_pylist() == bad
    assert decoded.landed.num_rows == 5000 - 97
    assert decoded.reasons == {"invalid JSON: Unterminated string starting at": 97}


def test_an_empty_batch_decodes_to_empty_tables():
    decoded = decode_events(RAW_EVENT_SCHEMA.empty_table())
    assert decoded.landed.num_rows == decoded.quarantined.num_rows == 0
    assert decoded.landed.schema == LANDED_SCHEMA


def test_a_valid_body_with_text_beyond_ascii_lands():
    decoded = decode_events(
        raw([encode(body(source="scanner-Zürich-東京"))] + [encode(body())] * 3)
    )
    assert decoded.quarantined.num_rows == 0
    assert decoded.landed["source"][0].as_py() == "scanner-Zürich-東京"


def test_a_body_above_the_size_limit_is_quarantined_unread(monkeypatch):
    def unread(_body):
        raise AssertionError("an oversized body must not be parsed")

    big = encode(body(padding="x" * 70_000))
    decoded = decode_events(raw([encode(body()), big]))
    assert decoded.landed.num_rows == 1
    (reason,) = decoded.quarantined["reason"].to_pylist()
    assert (
        reason
        == f"body is {len(big):,} bytes, above the limit of 65,536 (MLASSETS_MAX_EVENT_BYTES)"
    )

    monkeypatch.setenv("MLASSETS_MAX_EVENT_BYTES", "400")
    monkeypatch.setattr(events, "explain_body", unread)
    pretty = json.dumps(body(), indent=4).encode()  # would take the per-event path
    decoded = decode_events(raw([encode(body()), pretty]))
    assert decoded.landed.num_rows == 1
    assert decoded.quarantined["reason"][0].as_py().startswith(f"body is {len(pretty):,} bytes")
    assert decode_events(raw([pretty]), max_body_bytes=10_000).landed.num_rows == 0  # unread


def test_an_unexpected_error_on_one_body_quarantines_that_body_only(monkeypatch):
    real = events.explain_body

    def fragile(payload):
        if payload is not None and b"boom" in payload:
            raise MemoryError("no room for this one")
        return real(payload)

    monkeypatch.setattr(events, "explain_body", fragile)
    bodies = [encode(body(sample_id=f"ok-{i}")) for i in range(40)]
    bodies[5] = b"boom"  # takes the per-event path
    decoded = decode_events(raw(bodies))
    assert decoded.landed.num_rows == 39
    assert decoded.quarantined["reason"].to_pylist() == [
        "could not be decoded: MemoryError: no room for this one"
    ]


def test_a_record_that_cannot_be_stored_is_quarantined_not_raised(monkeypatch):
    # Should the per-event check ever pass something Arrow cannot hold, only it is refused.
    real = events.explain_body

    def lenient(payload):
        record, reason = real(payload)
        if record is not None and record["sample_id"] == "bad":
            record["sample_id"] = "\udc80"
        return record, reason

    monkeypatch.setattr(events, "explain_body", lenient)
    pretty = [json.dumps(body(sample_id=i), indent=1).encode() for i in ("a", "bad", "c")]
    decoded = decode_events(raw(pretty))
    assert decoded.landed["sample_id"].to_pylist() == ["a", "c"]
    (reason,) = decoded.quarantined["reason"].to_pylist()
    assert reason.startswith("could not be decoded: UnicodeEncodeError")


def test_if_the_bulk_path_fails_the_batch_is_decoded_event_by_event(monkeypatch):
    def broken(_table):
        raise ValueError("a bug in the array code")

    bodies = [encode(body(sample_id=f"s-{i}")) for i in range(100)]
    bodies[7] = b"not json"
    bodies[9] = encode(body(pixels=[0] * 63 + [17]))
    expected = decode_events(raw(bodies))
    monkeypatch.setattr(events, "_semantic_reasons", broken)
    decoded = decode_events(raw(bodies))
    assert decoded.fallback == "ValueError: a bug in the array code"
    assert decoded.slow_path == 100
    assert decoded.landed.equals(expected.landed)
    assert decoded.quarantined.equals(expected.quarantined)


def test_thousands_of_hostile_bodies_never_raise_and_every_one_is_accounted_for():
    rng = np.random.default_rng(3)
    hostile = [
        b"null",
        b"[]",
        b'"x"',
        b"\x00" * 50,
        b"{" * 3000,
        b"[" * 3000 + b"]" * 3000,
        encode(body(sample_id="\ud800")),
        encode(body(captured_at="9999-12-31T23:59:59-00:01")),
        encode(body()).replace(b'"s-1"', b'"s-\xfe"'),
        b'{"sample_id": ' + b"9" * 400 + b"}",
        encode(body(pixels=None)),
        b"{}",
        b"",
    ]
    bodies = [encode(body(sample_id=f"ok-{i}")) for i in range(1000)]
    for position in sorted(rng.choice(1000, 300, replace=False).tolist()):
        bodies[position] = hostile[position % len(hostile)]
    decoded = decode_events(raw(bodies))
    valid = sum(1 for b in bodies if b.startswith(b'{"sample_id": "ok-'))
    assert decoded.landed.num_rows == valid
    assert decoded.landed.num_rows + decoded.quarantined.num_rows == len(bodies)
    assert all(decoded.quarantined["reason"].to_pylist())


@pytest.mark.parametrize(
    "unknown",
    ["[" * 5000 + "]" * 5000, "1" * 5000],
    ids=["nested 5,000 deep", "a 5,000-digit number"],
)
def test_whether_a_body_lands_never_depends_on_its_neighbours(unknown):
    # Beyond what Python's json takes, but in a field the contract ignores: the bulk reader
    # lands it, and so it must land when a bad neighbour sends its block to the slow path.
    odd = encode(body(sample_id="odd", x=0)).replace(b'"x": 0', f'"x": {unknown}'.encode())
    alone = decode_events(raw([odd]))
    among_good = decode_events(raw([encode(body(sample_id=f"g{i}")) for i in range(40)] + [odd]))
    among_bad = decode_events(raw([b"{oops}", odd, b'{"sample_id": 1}']))
    for decoded in (alone, among_good, among_bad):
        assert "odd" in decoded.landed["sample_id"].to_pylist()
    assert among_bad.quarantined.num_rows == 2
