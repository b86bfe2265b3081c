"""Columns converted to ADF's interim types and written as JSON text, in compute kernels."""

import json
import random

import pyarrow as pa

from mlassets.twins.adf.conversion import convert, to_json_text


def test_the_json_text_encoder_matches_json_dumps():
    rnd = random.Random(7)

    def value(depth=0):
        kind = rnd.choice(
            ["int", "str", "float", "bool", "none"] + (["list", "obj"] if depth < 2 else [])
        )
        if kind == "int":
            return rnd.randint(-(2**40), 2**40)
        if kind == "str":
            return "".join(rnd.choice('ab"\\\n\t\x02é✓ ') for _ in range(rnd.randint(0, 8)))
        if kind == "float":
            return rnd.choice([0.5, -1.25, 3.0, 1e-7])
        if kind == "bool":
            return rnd.random() < 0.5
        if kind == "none":
            return None
        if kind == "list":
            return [rnd.randint(0, 9) for _ in range(rnd.randint(0, 4))]
        return {"k": rnd.randint(0, 3), "s": "x"}

    for column in ([value() for _ in range(300)] for _ in range(20)):
        kinds = {type(v) for v in column if v is not None}
        if len(kinds) > 1:
            continue
        arr = pa.array(column)
        encoded = to_json_text(arr).to_pylist()
        assert [json.loads(t) for t in encoded] == column


def test_a_value_that_does_not_convert_is_flagged_and_the_others_convert():
    values = pa.array([str(i) for i in range(100)] + ["seven", None, " 42 ", ""])
    converted, failed = convert(values, "Int32")
    assert converted.type == pa.int32()
    assert failed.tolist() == [False] * 100 + [True, False, False, False]
    assert converted.to_pylist()[-4:] == [None, None, 42, None]  # "" is null for numbers
    assert converted.to_pylist()[:3] == [0, 1, 2]


def test_timestamps_without_an_offset_are_utc():
    values = pa.array(["2026-01-05T10:00:00Z", "2026-01-05T11:00:00+01:00", "2026-01-05 10:00:00"])
    converted, failed = convert(values, "DateTimeOffset")
    assert not failed.any()
    assert len(set(converted.to_pylist())) == 1
