"""The subset of ADF's expression language that the local copy engine evaluates.

Where a value is an expression (as ADF decides it):

- a string starting with ``@`` is one expression (``@@`` escapes a literal ``@``);
- a string holding ``@{...}`` is interpolated, each ``@{expr}`` replaced by its value as text;
- ``{"value": "...", "type": "Expression"}`` is an expression object.

Grammar: function calls ``name(arg, ...)``, literals (``'text'`` with ``''`` for a quote,
numbers, ``true``, ``false``, ``null``), and property access ``.name``, ``?.name``, ``[expr]``.
System functions: ``pipeline()`` (``parameters``, ``RunId``, ``Pipeline``, ``DataFactory``,
``TriggerTime``, ...), ``dataset()``, ``linkedService()`` and ``activity('name')``. The other
functions are in `FUNCTIONS`; names are case-insensitive, as in ADF. An expression that uses
anything else is rejected by `check` before a run starts, naming the function and where.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from mlassets.lib.adf import ArtifactError, UnsupportedFeatureError


class ExpressionError(ValueError):
    """An expression that cannot be evaluated (a missing parameter, a bad argument)."""


_SYSTEM = {"pipeline", "dataset", "linkedservice", "activity"}
_NOT_SUPPORTED_SYSTEM = {"variables", "item", "iterationitem", "trigger", "globalparameters"}


# -- tokens and syntax ---------------------------------------------------------------------

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<string>'(?:[^']|'')*')
      | (?P<number>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
      | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
      | (?P<op>\?\.|[().,\[\]{}])
    )""",
    re.VERBOSE,
)


@dataclass(frozen=True)
class _Token:
    kind: str
    text: str
    pos: int


def _tokens(text: str, start: int = 0) -> Iterator[_Token]:
    pos = start
    while pos < len(text):
        if text[pos].isspace():
            pos += 1
            continue
        m = _TOKEN.match(text, pos)
        if not m:
            raise ArtifactError(f"unexpected character {text[pos]!r} at {pos} in {text!r}")
        kind = m.lastgroup or "op"
        yield _Token(kind, m.group(kind), m.start(kind))
        pos = m.end()
    yield _Token("end", "", len(text))


@dataclass(frozen=True)
class Node:
    kind: str  # "lit", "call", "prop", "index"
    value: Any = None
    args: tuple[Node, ...] = ()
    optional: bool = False


class _Parser:
    def __init__(self, text: str, start: int = 0, stop_at_brace: bool = False) -> None:
        self.text = text
        # Lazily: an interpolation's expression ends at its "}", and the literal text after
        # it is not expression syntax.
        self._stream = _tokens(text, start)
        self.tok = next(self._stream)
        self.stop_at_brace = stop_at_brace

    def take(self, text: str | None = None) -> _Token:
        tok = self.tok
        if text is not None and tok.text != text:
            found = tok.text or "the end"
            raise ArtifactError(f"expected {text!r} at {tok.pos} in {self.text!r}, found {found!r}")
        if tok.kind != "end" and not (self.stop_at_brace and tok.text == "}"):
            self.tok = next(self._stream)
        return tok

    def parse(self) -> tuple[Node, int]:
        node = self.expr()
        if self.stop_at_brace:
            end = self.take("}")
            return node, end.pos + 1
        if self.tok.kind != "end":
            raise ArtifactError(f"unexpected {self.tok.text!r} at {self.tok.pos} in {self.text!r}")
        return node, len(self.text)

    def expr(self) -> Node:
        node = self.primary()
        while True:
            if self.tok.text in (".", "?."):
                optional = self.take().text == "?."
                name = self.take()
                if name.kind != "ident":
                    raise ArtifactError(f"expected a property name at {name.pos} in {self.text!r}")
                node = Node("prop", name.text, (node,), optional)
            elif self.tok.text == "[":
                self.take("[")
                index = self.expr()
                self.take("]")
                node = Node("index", None, (node, index))
            else:
                return node

    def primary(self) -> Node:
        tok = self.take()
        if tok.kind == "string":
            return Node("lit", tok.text[1:-1].replace("''", "'"))
        if tok.kind == "number":
            number = float(tok.text) if any(c in tok.text for c in ".eE") else int(tok.text)
            return Node("lit", number)
        if tok.kind == "ident":
            lowered = tok.text.lower()
            if self.tok.text != "(":
                if lowered in ("true", "false"):
                    return Node("lit", lowered == "true")
                if lowered == "null":
                    return Node("lit", None)
                raise ArtifactError(
                    f"{tok.text!r} at {tok.pos} in {self.text!r} is not a function call"
                )
            self.take("(")
            args: list[Node] = []
            if self.tok.text != ")":
                args.append(self.expr())
                while self.tok.text == ",":
                    self.take(",")
                    args.append(self.expr())
            self.take(")")
            return Node("call", tok.text, tuple(args))
        raise ArtifactError(f"unexpected {tok.text or 'end'!r} at {tok.pos} in {self.text!r}")


@dataclass(frozen=True)
class Template:
    """A parsed value: literal text parts and expressions, in order."""

    parts: tuple[str | Node, ...]
    #: True when the whole value is one expression (its result keeps its type).
    whole: bool

    def nodes(self) -> Iterator[Node]:
        for part in self.parts:
            if isinstance(part, Node):
                yield from _walk(part)


def _walk(node: Node) -> Iterator[Node]:
    yield node
    for arg in node.args:
        yield from _walk(arg)


def parse(text: str) -> Template:
    """Parse one string as ADF does: a whole expression, an interpolation, or literal text."""
    if text.startswith("@@"):
        return Template((text[1:],), False)
    if text.startswith("@") and not text.startswith("@{"):
        node, _ = _Parser(text, 1).parse()
        return Template((node,), True)
    if "@{" not in text:
        return Template((text,), False)
    parts: list[str | Node] = []
    pos = 0
    while True:
        at = text.find("@{", pos)
        if at < 0:
            parts.append(text[pos:])
            break
        if at > 0 and text[at - 1] == "@":  # "@@{" is a literal "@{"
            parts.append(text[pos : at - 1] + "@{")
            pos = at + 2
            continue
        parts.append(text[pos:at])
        node, pos = _Parser(text, at + 2, stop_at_brace=True).parse()
        parts.append(node)
    return Template(tuple(p for p in parts if p != ""), False)


def expression_text(value: Any) -> str | None:
    """The expression string of a JSON value, or None when it holds none."""
    if isinstance(value, dict) and value.get("type") == "Expression":
        text = value.get("value")
        if not isinstance(text, str):
            raise ArtifactError(f"expression object without a string value: {value!r}")
        return text
    if isinstance(value, str) and (value.startswith("@") or "@{" in value):
        return value
    return None


# -- evaluation ------------------------------------------------------------------------------


@dataclass
class Scope:
    """What the system functions return where an expression is evaluated."""

    pipeline: dict | None = None
    dataset: dict | None = None
    linked_service: dict | None = None
    activities: dict[str, dict] = field(default_factory=dict)


def evaluate(value: Any, scope: Scope, where: str = "") -> Any:
    """A JSON value with every expression in it evaluated (deeply)."""
    text = expression_text(value)
    if text is not None:
        return _render(parse(text), scope, where or text)
    if isinstance(value, dict):
        return {k: evaluate(v, scope, f"{where}.{k}" if where else k) for k, v in value.items()}
    if isinstance(value, list):
        return [evaluate(v, scope, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def _render(template: Template, scope: Scope, where: str) -> Any:
    if template.whole:
        return _eval(template.parts[0], scope, where)  # type: ignore[arg-type]
    out = []
    for part in template.parts:
        out.append(part if isinstance(part, str) else _text(_eval(part, scope, where)))
    return "".join(out)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _eval(node: Node, scope: Scope, where: str) -> Any:
    if node.kind == "lit":
        return node.value
    if node.kind == "prop":
        target = _eval(node.args[0], scope, where)
        return _property(target, node.value, node.optional, where)
    if node.kind == "index":
        target = _eval(node.args[0], scope, where)
        key = _eval(node.args[1], scope, where)
        if isinstance(target, list) and isinstance(key, int) and not isinstance(key, bool):
            if -len(target) <= key < len(target):
                return target[key]
            raise ExpressionError(f"{where}: index {key} is out of range")
        return _property(target, key, False, where)
    name = node.value.lower()
    if name == "pipeline":
        return _system(scope.pipeline, "pipeline()", where)
    if name == "dataset":
        return _system(scope.dataset, "dataset()", where)
    if name == "linkedservice":
        return _system(scope.linked_service, "linkedService()", where)
    if name == "activity":
        (arg,) = _args(node, 1, where)
        activity = _eval(arg, scope, where)
        if activity not in scope.activities:
            raise ExpressionError(f"{where}: activity {activity!r} has not run (yet)")
        return scope.activities[activity]
    spec = FUNCTIONS.get(name)
    if spec is None:
        raise UnsupportedFeatureError(
            f"{where}: expression function {node.value!r} is not supported"
        )
    if name == "if":  # lazy: only the branch taken is evaluated
        cond, yes, no = _args(node, 3, where)
        return _eval(yes if _truthy(_eval(cond, scope, where), where) else no, scope, where)
    if name in ("and", "or"):
        args = _args(node, None, where)
        for arg in args:
            value = _truthy(_eval(arg, scope, where), where)
            if value == (name == "or"):
                return value
        return name == "and"
    fn, low, high = spec
    args = [_eval(a, scope, where) for a in node.args]
    if len(args) < low or (high is not None and len(args) > high):
        count = f"{low}" if low == high else f"{low}..{high if high is not None else 'n'}"
        raise ExpressionError(f"{where}: {node.value}() takes {count} arguments, got {len(args)}")
    try:
        return fn(*args)
    except ExpressionError:
        raise
    except (TypeError, ValueError, IndexError, KeyError, ZeroDivisionError) as exc:
        raise ExpressionError(f"{where}: {node.value}({_show(args)}): {exc}") from None


def _show(args: list) -> str:
    return ", ".join(repr(a) for a in args)[:200]


def _args(node: Node, count: int | None, where: str) -> tuple[Node, ...]:
    if count is not None and len(node.args) != count:
        raise ExpressionError(
            f"{where}: {node.value}() takes {count} arguments, got {len(node.args)}"
        )
    return node.args


def _system(value: dict | None, name: str, where: str) -> dict:
    if value is None:
        raise ExpressionError(f"{where}: {name} is not available here")
    return value


def _property(target: Any, key: Any, optional: bool, where: str) -> Any:
    if isinstance(target, dict):
        if key in target:
            return target[key]
        if isinstance(key, str):
            for k, v in target.items():  # property names are case-insensitive in ADF
                if isinstance(k, str) and k.lower() == key.lower():
                    return v
        if optional:
            return None
        known = ", ".join(sorted(map(str, target))) or "none"
        raise ExpressionError(f"{where}: no property {key!r} (there are: {known})")
    if optional and target is None:
        return None
    raise ExpressionError(f"{where}: cannot read property {key!r} of {type(target).__name__}")


def _truthy(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ExpressionError(f"{where}: expected a boolean, got {value!r}")


# -- functions -------------------------------------------------------------------------------


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {value!r}")
    return value


def _substring(text: Any, start: Any, length: Any = None) -> str:
    text, start = _str(text), _int(start)
    length = len(text) - start if length is None else _int(length)
    if start < 0 or length < 0 or start + length > len(text):
        raise ValueError(
            f"start {start} and length {length} are outside a {len(text)}-character string"
        )
    return text[start : start + length]


def _index_of(text: Any, needle: Any, last: bool = False) -> int:
    text, needle = _str(text).lower(), _str(needle).lower()
    return text.rfind(needle) if last else text.find(needle)


def _contains(collection: Any, value: Any) -> bool:
    if isinstance(collection, str):
        return _str(value) in collection
    if isinstance(collection, list | dict):
        return value in collection
    raise TypeError(f"contains() needs a string, array or object, got {type(collection).__name__}")


def _length(value: Any) -> int:
    if isinstance(value, str | list | dict):
        return len(value)
    raise TypeError(f"length() needs a string or array, got {type(value).__name__}")


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, str | list | dict) and len(value) == 0)


def _first_last(value: Any, last: bool) -> Any:
    if isinstance(value, str | list):
        return (value[-1] if last else value[0]) if value else None
    raise TypeError(f"expected a string or array, got {type(value).__name__}")


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("a boolean is not an integer")
    return int(value) if not isinstance(value, str) else int(value.strip())


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0
    text = _str(value).strip().lower()
    if text not in ("true", "false"):
        raise ValueError(f"{value!r} is not a boolean")
    return text == "true"


def _compare(a: Any, b: Any) -> int:
    numbers = all(isinstance(x, int | float) and not isinstance(x, bool) for x in (a, b))
    if not numbers and (type(a) is not type(b) or isinstance(a, bool | dict | list)):
        raise TypeError(f"cannot compare {a!r} with {b!r}")
    return (a > b) - (a < b)


def _num(value: Any) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {value!r}")
    return value


def _div(a: Any, b: Any) -> int | float:
    a, b = _num(a), _num(b)
    if isinstance(a, int) and isinstance(b, int):
        return int(a / b)  # integer division truncates toward zero
    return a / b


_NET_TOKENS = re.compile(r"yyyy|yy|MM|dd|HH|hh|mm|ss|f{1,7}|tt|'[^']*'|.", re.DOTALL)


def _format_time(when: datetime, fmt: str | None) -> str:
    """.NET date formatting, for the standard formats o/s/u and the common custom tokens."""
    when = when.astimezone(UTC)
    if fmt in (None, "", "o", "O"):
        return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond:06d}0Z"
    if fmt == "s":
        return when.strftime("%Y-%m-%dT%H:%M:%S")
    if fmt == "u":
        return when.strftime("%Y-%m-%d %H:%M:%SZ")
    out = []
    for tok in _NET_TOKENS.findall(fmt):
        if tok == "yyyy":
            out.append(f"{when.year:04d}")
        elif tok == "yy":
            out.append(f"{when.year % 100:02d}")
        elif tok == "MM":
            out.append(f"{when.month:02d}")
        elif tok == "dd":
            out.append(f"{when.day:02d}")
        elif tok == "HH":
            out.append(f"{when.hour:02d}")
        elif tok == "hh":
            out.append(f"{(when.hour % 12) or 12:02d}")
        elif tok == "mm":
            out.append(f"{when.minute:02d}")
        elif tok == "ss":
            out.append(f"{when.second:02d}")
        elif tok.startswith("f"):
            out.append(f"{when.microsecond:06d}0"[: len(tok)])
        elif tok == "tt":
            out.append("AM" if when.hour < 12 else "PM")
        elif tok.startswith("'"):
            out.append(tok[1:-1])
        elif tok.isalpha():
            raise ValueError(f"date format token {tok!r} is not supported")
        else:
            out.append(tok)
    return "".join(out)


def _parse_time(value: Any) -> datetime:
    text = _str(value).strip().replace("Z", "+00:00")
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)  # .NET writes 7 fractional digits
    when = datetime.fromisoformat(text)
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when


#: name (lowercase) -> (function, min args, max args or None for any).
FUNCTIONS: dict[str, tuple[Callable[..., Any], int, int | None]] = {
    # strings
    "concat": (lambda *a: "".join(_text(x) for x in a), 1, None),
    "substring": (_substring, 2, 3),
    "replace": (lambda s, old, new: _str(s).replace(_str(old), _str(new)), 3, 3),
    "tolower": (lambda s: _str(s).lower(), 1, 1),
    "toupper": (lambda s: _str(s).upper(), 1, 1),
    "trim": (lambda s: _str(s).strip(), 1, 1),
    "indexof": (lambda s, x: _index_of(s, x), 2, 2),
    "lastindexof": (lambda s, x: _index_of(s, x, last=True), 2, 2),
    "startswith": (lambda s, x: _str(s).lower().startswith(_str(x).lower()), 2, 2),
    "endswith": (lambda s, x: _str(s).lower().endswith(_str(x).lower()), 2, 2),
    "split": (lambda s, sep: _str(s).split(_str(sep)), 2, 2),
    "guid": (lambda: str(uuid.uuid4()), 0, 0),
    # collections
    "contains": (_contains, 2, 2),
    "length": (_length, 1, 1),
    "empty": (_empty, 1, 1),
    "first": (lambda v: _first_last(v, False), 1, 1),
    "last": (lambda v: _first_last(v, True), 1, 1),
    "join": (lambda items, sep: _str(sep).join(_text(x) for x in items), 2, 2),
    "createarray": (lambda *a: list(a), 0, None),
    # logic and comparison
    "equals": (lambda a, b: a == b, 2, 2),
    "not": (lambda a: not _to_bool(a), 1, 1),
    # and / or / if are evaluated lazily in _eval; the entries declare them as known
    "and": (lambda *a: all(a), 2, None),
    "or": (lambda *a: any(a), 2, None),
    "if": (lambda c, a, b: a if c else b, 3, 3),
    "coalesce": (lambda *a: next((x for x in a if x is not None), None), 1, None),
    "greater": (lambda a, b: _compare(a, b) > 0, 2, 2),
    "greaterorequals": (lambda a, b: _compare(a, b) >= 0, 2, 2),
    "less": (lambda a, b: _compare(a, b) < 0, 2, 2),
    "lessorequals": (lambda a, b: _compare(a, b) <= 0, 2, 2),
    # conversion
    "string": (_text, 1, 1),
    "int": (_to_int, 1, 1),
    "float": (lambda v: float(v), 1, 1),
    "bool": (_to_bool, 1, 1),
    "json": (lambda v: json.loads(_str(v)), 1, 1),
    "array": (lambda v: [v], 1, 1),
    # math
    "add": (lambda a, b: _num(a) + _num(b), 2, 2),
    "sub": (lambda a, b: _num(a) - _num(b), 2, 2),
    "mul": (lambda a, b: _num(a) * _num(b), 2, 2),
    "div": (_div, 2, 2),
    "mod": (lambda a, b: _num(a) % _num(b), 2, 2),
    "min": (lambda *a: min(_num(x) for x in (a[0] if len(a) == 1 else a)), 1, None),
    "max": (lambda *a: max(_num(x) for x in (a[0] if len(a) == 1 else a)), 1, None),
    # dates
    "utcnow": (lambda fmt=None: _format_time(datetime.now(UTC), fmt), 0, 1),
    "formatdatetime": (lambda ts, fmt=None: _format_time(_parse_time(ts), fmt), 1, 2),
}


# -- up-front checks -------------------------------------------------------------------------


def expressions_in(value: Any, where: str = "") -> Iterator[tuple[str, str]]:
    """(where, expression text) for every expression in a JSON tree."""
    text = expression_text(value)
    if text is not None:
        yield where, text
        return
    if isinstance(value, dict):
        for k, v in value.items():
            yield from expressions_in(v, f"{where}.{k}" if where else k)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from expressions_in(v, f"{where}[{i}]")


def check(value: Any, where: str, allowed_system: set[str] | None = None) -> None:
    """Parse every expression in `value`; an unknown function (or a system function not
    available at that place) is an UnsupportedFeatureError naming it and where it is."""
    allowed = _SYSTEM if allowed_system is None else allowed_system
    for at, text in expressions_in(value, where):
        try:
            template = parse(text)
        except ArtifactError as exc:
            raise ArtifactError(f"{at}: invalid expression: {exc}") from None
        for node in template.nodes():
            if node.kind != "call":
                continue
            name = node.value.lower()
            if name in _SYSTEM:
                if name not in allowed:
                    raise UnsupportedFeatureError(
                        f"{at}: {node.value}() cannot be used here (in {text!r})"
                    )
                continue
            if name in _NOT_SUPPORTED_SYSTEM or name not in FUNCTIONS:
                raise UnsupportedFeatureError(
                    f"{at}: expression function {node.value}() is not supported by the local "
                    f"engine (in {text!r})"
                )
