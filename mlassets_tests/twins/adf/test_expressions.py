"""ADF's expression language, as the local engine evaluates it."""

import pytest

from mlassets.lib.adf import ArtifactError, UnsupportedFeatureError
from mlassets.twins.adf.expressions import ExpressionError, Scope, check, evaluate

P = "pipeline().parameters"
SCOPE = Scope(
    pipeline={
        "parameters": {"dropPath": "incoming/2026/Scan-7.CSV", "lakeRoot": "ml/", "n": 3},
        "RunId": "run-1",
        "Pipeline": "copy",
    },
    dataset={"folder": "staging", "file": ""},
    activities={"Copy": {"output": {"rowsCopied": 12}}},
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            f"@concat({P}.lakeRoot, substring({P}.dropPath, 0, lastIndexOf({P}.dropPath, '/')))",
            "ml/incoming/2026",
        ),
        (f"@last(split({P}.dropPath, '/'))", "Scan-7.CSV"),
        (f"@endswith(toLower({P}.dropPath), '.csv')", True),
        (f"@endsWith({P}.dropPath, '.csv')", True),  # endsWith is case-insensitive in ADF
        (f"@contains({P}.dropPath, 'scan')", False),  # contains is not
        ("@dataset().folder", "staging"),
        ("@empty(dataset().file)", True),
        (
            "run @{pipeline().RunId} copied @{activity('Copy').output.rowsCopied} rows",
            "run run-1 copied 12 rows",
        ),
        ("@{pipeline().runid}", "run-1"),  # property names are case-insensitive
        ("@@not an expression", "@not an expression"),
        ("mail@@{x}", "mail@{x}"),
        ("plain text", "plain text"),
        ("@'it''s'", "it's"),
        (f"@add({P}.n, 1)", 4),
        ("@div(7, 2)", 3),
        ("@if(greater(2, 1), 'yes', 'no')", "yes"),
        ("@and(true, or(false, equals(1, 1)))", True),
        (f"@coalesce({P}?.missing, 'fallback')", "fallback"),
        ("@createArray('a', 'b')[1]", "b"),
        (f"@{P}['n']", 3),
        ("@json('{\"a\": [1, 2]}').a", [1, 2]),
        (
            "@formatDateTime('2026-01-02T03:04:05.123Z', 'yyyy/MM/dd HH:mm:ss.fff')",
            "2026/01/02 03:04:05.123",
        ),
        ("@string(int('42'))", "42"),
        ({"value": f"@{P}.lakeRoot", "type": "Expression"}, "ml/"),
        (
            {"nested": [f"@{P}.n", {"value": "@dataset().folder", "type": "Expression"}]},
            {"nested": [3, "staging"]},
        ),
    ],
)
def test_evaluates(value, expected):
    assert evaluate(value, SCOPE) == expected


def test_only_the_branch_taken_is_evaluated():
    assert evaluate(f"@if(true, 'ok', {P}.missing)", SCOPE) == "ok"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (f"@{P}.nope", r"no property 'nope' \(there are: dropPath, lakeRoot, n\)"),
        ("@substring('ab', 1, 5)", "outside a 2-character string"),
        ("@activity('Later').output", "activity 'Later' has not run"),
        ("@linkedService().x", r"linkedService\(\) is not available here"),
        ("@add(1)", r"add\(\) takes 2 arguments, got 1"),
        ("@if(1, 'a', 'b')", "expected a boolean"),
    ],
)
def test_evaluation_errors_say_what_is_wrong(value, message):
    with pytest.raises(ExpressionError, match=message):
        evaluate(value, SCOPE)


def test_syntax_errors_name_the_expression():
    with pytest.raises(ArtifactError, match=r"expected '\)'"):
        evaluate("@concat('a'", SCOPE)
    with pytest.raises(ArtifactError, match="unexpected character"):
        evaluate("@concat('a') + 1", SCOPE)


def test_check_rejects_unknown_functions_and_misplaced_system_functions_up_front():
    with pytest.raises(UnsupportedFeatureError, match=r"act\.x\.y: expression function foo\(\)"):
        check({"x": {"y": "@foo(1)"}}, "act")
    with pytest.raises(UnsupportedFeatureError, match=r"variables\(\) is not supported"):
        check(["@variables('v')"], "act")
    with pytest.raises(UnsupportedFeatureError, match=r"pipeline\(\) cannot be used here"):
        check({"folderPath": "@pipeline().parameters.x"}, "dataset 'd'", {"dataset"})
    check({"folderPath": {"value": "@dataset().folder", "type": "Expression"}}, "d", {"dataset"})
