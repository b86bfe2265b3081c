"""Drops of the incoming zone: naming, body reconstruction, and conforming staged rows."""

import json
from datetime import UTC, datetime

import pyarrow as pa
import pytest

from mlassets.lib.events import decode_events
from mlassets.lib.incoming import Drop, DropError, conform, staged_bodies

PIXELS = list(range(16)) * 4


@pytest.mark.parametrize(
    ("path", "clean", "fmt"),
    [
        ("incoming/a.csv", "incoming/a.csv", "csv"),
        ("/incoming//2026/./b.JSONL", "incoming/2026/b.JSONL", "json"),
        ("incoming/c.ndjson", "incoming/c.ndjson", "json"),
    ],
)
def test_drop_paths_are_normalized(path, clean, fmt):
    drop = Drop.parse(path)
    assert drop.path == clean and drop.format == fmt


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("incoming", "is not a file in the incoming zone"),
        ("incoming/../secrets/x.csv", "must not contain '..'"),
        ("landed/x.csv", "is not a file in the incoming zone"),
        ("incoming/x", "unknown format '(no extension)'"),
    ],
)
def test_drop_paths_outside_the_zone_or_format_are_refused(path, message):
    with pytest.raises(DropError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Drop.parse(path)


def test_drop_names_are_stable_safe_and_distinct():
    a = Drop.parse("incoming/2026-01/scan 7 (copy).csv")
    assert a.name == Drop.parse("incoming/2026-01/scan 7 (copy).csv").name
    assert a.landed_path.startswith(
        "landed/events/partition=incoming/drop=2026-01__scan_7_copy_.csv-"
    )
    assert "/" not in a.name and " " not in a.name
    # sanitizing alone would make these two the same name; the digest keeps them apart
    assert Drop.parse("incoming/a b.csv").name != Drop.parse("incoming/a_b.csv").name
    assert Drop.parse("incoming/x/y.csv").name != Drop.parse("incoming/x__y.csv").name


def staged(**columns) -> pa.Table:
    return pa.table({k: pa.array(v, pa.string()) for k, v in columns.items()})


def test_bodies_are_valid_json_with_text_escaped_and_pixels_as_they_were():
    table = staged(
        sample_id=['quote " back \\ slash', "line\nbreak", None],
        pixels=[json.dumps(PIXELS), "[1, 2, 3]", None],
        source=["tab\there", "ctrl\x01", "s"],
        captured_at=["2026-01-05T10:00:00Z", None, "t"],
    )
    bodies = [json.loads(b) for b in staged_bodies(table).to_pylist()]
    assert bodies[0] == {
        "sample_id": 'quote " back \\ slash',
        "pixels": PIXELS,
        "source": "tab\there",
        "captured_at": "2026-01-05T10:00:00Z",
    }
    assert bodies[1]["sample_id"] == "line\nbreak" and bodies[1]["pixels"] == [1, 2, 3]
    assert bodies[1]["source"] == "ctrl\x01" and bodies[1]["captured_at"] is None
    assert bodies[2]["sample_id"] is None and bodies[2]["pixels"] is None


def test_a_pixels_text_cannot_inject_fields():
    evil = '[1], "sample_id": "evil"'
    table = staged(sample_id=["ok"], pixels=[evil], source=["s"], captured_at=["2026-01-05"])
    body = json.loads(staged_bodies(table)[0].as_py())
    assert body["sample_id"] == "ok" and body["pixels"] == evil  # quoted, not spliced in


def test_conform_numbers_rows_and_adds_what_the_copy_skipped():
    table = staged(
        sample_id=["a", "b", "c"],
        pixels=[json.dumps(PIXELS), json.dumps(PIXELS[:3]), json.dumps(PIXELS)],
        source=["s", "s", "s"],
        captured_at=["2026-01-05T10:00:00Z"] * 3,
    )
    skipped = pa.table(
        {
            "item": ["x,y"],
            "message": ["Skipped an incompatible row: the row has 2 columns, the header 4"],
        }
    )
    when = datetime(2026, 1, 5, 11, tzinfo=UTC)
    out = conform(table, skipped, Drop.parse("incoming/d.csv"), when)
    assert out.landed["sequence_number"].to_pylist() == [0, 2]
    assert out.landed["enqueued_time"].to_pylist() == [when, when]
    assert out.quarantined["sequence_number"].to_pylist() == [1, 3]
    assert out.quarantined["reason"].to_pylist() == [
        "pixels has 3 values, expected 64",
        "skipped by the copy: the row has 2 columns, the header 4",
    ]
    assert json.loads(out.quarantined["properties"][1].as_py()) == {
        "drop": "incoming/d.csv",
        "stage": "copy",
    }
    assert out.reasons == {
        "pixels has 3 values, expected 64": 1,
        "skipped by the copy: the row has 2 columns, the header 4": 1,
    }
    # the same bodies through the hub's decoder give the same verdicts
    assert decode_events(
        pa.table(
            {
                "partition_id": ["0"] * 3,
                "sequence_number": [0, 1, 2],
                "offset": [0, 1, 2],
                "enqueued_time": pa.array([when] * 3, pa.timestamp("us", tz="UTC")),
                "partition_key": [None] * 3,
                "properties": [None] * 3,
                "body": staged_bodies(table),
            }
        )
    ).reasons == {"pixels has 3 values, expected 64": 1}


def test_an_empty_drop_conforms_to_empty_tables():
    out = conform(
        staged(sample_id=[], pixels=[], source=[], captured_at=[]),
        pa.table({"item": pa.array([], pa.string()), "message": pa.array([], pa.string())}),
        Drop.parse("incoming/e.csv"),
        datetime(2026, 1, 5, tzinfo=UTC),
    )
    assert out.landed.num_rows == out.quarantined.num_rows == 0


def test_hostile_rows_of_a_drop_are_quarantined_like_hostile_hub_events():
    # What once raised out of the decoder (and failed the whole import) is one row's reason.
    table = staged(
        sample_id=["ok", "far", "big"],
        pixels=[json.dumps(PIXELS)] * 3,
        source=["s", "s", "x" * 70_000],
        captured_at=["2026-01-05T10:00:00Z", "9999-12-31T23:00:00-05:00", "2026-01-05T10:00:00Z"],
    )
    none_skipped = pa.table(
        {"item": pa.array([], pa.string()), "message": pa.array([], pa.string())}
    )
    out = conform(
        table, none_skipped, Drop.parse("incoming/h.csv"), datetime(2026, 1, 5, tzinfo=UTC)
    )
    assert out.landed["sample_id"].to_pylist() == ["ok"]
    size = len(staged_bodies(table)[2].as_py())
    assert out.quarantined["reason"].to_pylist() == [
        "captured_at is outside years 1..9999 once in UTC",
        f"body is {size:,} bytes, above the limit of 65,536 (MLASSETS_MAX_EVENT_BYTES)",
    ]
