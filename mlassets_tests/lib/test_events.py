"""Decoding digit events: typed rows for valid bodies, a reason for every refused one."""

import json

import numpy as np
import pyarrow as pa
import pytest

from mlassets.lib.events import (
    LANDED_SCHEMA,
    QUARANTINE_SCHEMA,
    RAW_EVENT_SCHEMA,
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
