"""The device selector language, used wherever a set of devices is chosen.

    tag:site=berlin and model:digits<2.0 and online
    (group:canary or id:pump-*) and not health:degraded
    firmware:>=1.2.0 and hardware:rpi4

Grammar (keywords case-insensitive)::

    expr  := and ("or" and)*
    and   := unary ("and" unary)*
    unary := "not" unary | "(" expr ")" | "all" | "online" | "offline" | term
    term  := KEY ":" VALUE

Keys: ``tag:k`` (present), ``tag:k=v``, ``tag:k!=v``; ``group:g``; ``id:glob``;
``model:name``, ``model:name@1.2.0``, ``model:name<2.0`` (any of < <= > >= = !=);
``firmware:OPv``, ``agent:OPv``; ``hardware:x``, ``health:x``, ``state:x``.
Versions compare as :func:`~.versions.version_key` orders them (1.10 > 1.9, 1.3.0-rc1 <
1.3.0; build metadata does not count); a version to compare with must be one it
can read.  Parsing is pure and
its errors point at the column and say what was expected.  Nesting (``(`` and
``not``) is limited to :data:`MAX_DEPTH` levels: the parser and the predicate
it builds recurse, and a selector is input from anyone with the viewer role.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from edgefleet_contract.errors import SelectorError

from .store._conn import Dialect
from .store.base import Device
from .versions import parse_version, version_key

Predicate = Callable[[Device], bool]
SqlPart = Callable[[Dialect], tuple[str, list[object]]]

_TOKEN = re.compile(r"\s*(?:(\()|(\))|([A-Za-z_]+:[^\s()]*)|([A-Za-z_]+)|(\S))")
_OPS = ("<=", ">=", "!=", "<", ">", "=")
MAX_DEPTH = 32
__all__ = ["KEYS", "MAX_DEPTH", "Selector", "parse", "version_key"]
KEYS = ("tag", "group", "id", "model", "firmware", "agent", "hardware", "health", "state")


def _compare(op: str, left: str | None, right: str) -> bool:
    if left is None or parse_version(left) is None:
        return False  # no version, or one that cannot be ordered: matches no comparison
    a, b = version_key(left), version_key(right)
    return {
        "<": a < b,
        "<=": a <= b,
        ">": a > b,
        ">=": a >= b,
        "=": a == b,
        "!=": a != b,
    }[op]


def _split_op(text: str) -> tuple[str, str]:
    for op in _OPS:
        if text.startswith(op):
            return op, text[len(op) :]
    return "=", text


@dataclass(frozen=True)
class _Cond:
    """One parsed condition: as a Python predicate and as a SQL predicate over ``devices``."""

    pred: Predicate
    sql: SqlPart
    versioned: bool = False
    """Compares versions: exact in SQL only where the dialect orders versions as
    :mod:`fleet_server.versions` does (SQLite, which calls that very code)."""


def _sql(text: str, *params: object) -> SqlPart:
    return lambda _d: (text, list(params))


def _join(op: str, parts: list[_Cond]) -> _Cond:
    def sql(d: Dialect) -> tuple[str, list[object]]:
        texts, params = [], []
        for p in parts:
            t, ps = p.sql(d)
            texts.append(f"({t})")
            params.extend(ps)
        return f" {op} ".join(texts), params

    versioned = any(p.versioned for p in parts)
    if op == "OR":
        return _Cond(lambda dev: any(p.pred(dev) for p in parts), sql, versioned)
    return _Cond(lambda dev: all(p.pred(dev) for p in parts), sql, versioned)


def _not(inner: _Cond) -> _Cond:
    def sql(d: Dialect) -> tuple[str, list[object]]:
        t, ps = inner.sql(d)
        return f"NOT COALESCE(({t}), FALSE)", ps

    return _Cond(lambda dev: not inner.pred(dev), sql, inner.versioned)


def _column_is(column: str, value: str) -> _Cond:
    return _Cond(lambda d: _field(d, column) == value, _sql(f"{column} = ?", value))


def _version(column: str, op: str, version: str) -> SqlPart:
    """``column OP version`` compared part by part, as :func:`_compare` does."""
    return lambda d: (f"{d.version_cmp(column)} {_SQL_CMP[op]}", [version])


_SQL_CMP = {"<": "< 0", "<=": "<= 0", ">": "> 0", ">=": ">= 0", "=": "= 0", "!=": "<> 0"}


@dataclass(frozen=True)
class Selector:
    """A parsed selector: ``matches`` tests one device, ``sql`` filters the devices table."""

    source: str
    cond: _Cond

    def matches(self, device: Device) -> bool:
        return self.cond.pred(device)

    @property
    def versioned(self) -> bool:
        """Whether it compares versions (see ``Dialect.exact_versions``)."""
        return self.cond.versioned

    def sql(self, dialect: Dialect) -> tuple[str, list[object]]:
        """A WHERE predicate (``?`` placeholders) and its parameters, for ``dialect``.

        A NULL (a device without the fact) counts as not matching, as in ``matches``."""
        text, params = self.cond.sql(dialect)
        return f"COALESCE(({text}), FALSE)", params

    def __and__(self, other: Selector) -> Selector:
        both = _join("AND", [self.cond, other.cond])
        return Selector(f"({self.source}) and ({other.source})", both)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens: list[tuple[str, str, int]] = []
        pos = 0
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if m is None or m.end() == pos:
                break
            start = m.start(m.lastindex or 0)
            kind = ("(", ")", "term", "word", "bad")[(m.lastindex or 5) - 1]
            self.tokens.append((kind, m.group(m.lastindex or 0), start))
            pos = m.end()
            if text[pos:].strip() == "":
                break
        self.i = 0
        self.depth = 0

    def _check_version(self, version: str, after: str) -> None:
        if parse_version(version) is None:
            self.i -= 1
            raise self.fail(f"a version after '{after}' ({version!r} is not one, e.g. 1.2.0)")

    def fail(self, expected: str) -> SelectorError:
        if self.i < len(self.tokens):
            _, value, col = self.tokens[self.i]
            found = f"{value!r}"
        else:
            col, found = len(self.text), "the end"
        return SelectorError(
            f"selector {self.text!r}: expected {expected} at column {col + 1}, found {found}"
        )

    def peek(self) -> tuple[str, str, int] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def word(self, w: str) -> bool:
        tok = self.peek()
        if tok and tok[0] == "word" and tok[1].lower() == w:
            self.i += 1
            return True
        return False

    def parse(self) -> _Cond:
        if not self.tokens:
            raise SelectorError("the selector is empty; use 'all' to choose every device")
        pred = self.expr()
        if self.peek() is not None:
            raise self.fail("'and', 'or' or the end")
        return pred

    def expr(self) -> _Cond:
        parts = [self.conj()]
        while self.word("or"):
            parts.append(self.conj())
        return parts[0] if len(parts) == 1 else _join("OR", parts)

    def conj(self) -> _Cond:
        parts = [self.unary()]
        while self.word("and"):
            parts.append(self.unary())
        return parts[0] if len(parts) == 1 else _join("AND", parts)

    def unary(self) -> _Cond:
        if self.word("not"):
            with self._nested():
                inner = self.unary()
            return _not(inner)
        tok = self.peek()
        if tok is None:
            raise self.fail("a condition")
        kind, value, _ = tok
        if kind == "(":
            self.i += 1
            with self._nested():
                inner = self.expr()
            if (self.peek() or ("",))[0] != ")":
                raise self.fail("')'")
            self.i += 1
            return inner
        if kind == "word" and value.lower() in ("all", "online", "offline"):
            self.i += 1
            return {
                "all": _Cond(lambda d: True, _sql("1 = 1")),
                "online": _Cond(lambda d: d.online, _sql("online = 1")),
                "offline": _Cond(lambda d: not d.online, _sql("online = 0")),
            }[value.lower()]
        if kind == "term":
            self.i += 1
            return self.term(value)
        raise self.fail("a condition such as tag:site=berlin, online or (…)")

    @contextmanager
    def _nested(self) -> Iterator[None]:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            self.i -= 1
            raise self.fail(f"at most {MAX_DEPTH} levels of '(' and 'not'")
        try:
            yield
        finally:
            self.depth -= 1

    def term(self, text: str) -> _Cond:
        key, _, value = text.partition(":")
        key = key.lower()
        if key not in KEYS:
            self.i -= 1
            raise self.fail(f"one of {', '.join(KEYS)} before ':'")
        if not value:
            self.i -= 1
            raise self.fail(f"a value after '{key}:'")
        if key == "tag":
            return _tag(value)
        if key == "group":
            return _Cond(lambda d: value in d.groups, lambda d: (d.array_has("groups"), [value]))
        if key == "id":
            return _Cond(
                lambda d: fnmatch.fnmatchcase(d.id, value),
                lambda d: (d.glob("id"), [d.glob_param(value)]),
            )
        if key in ("hardware", "health", "state"):
            return _column_is(key, value)
        if key == "model":
            m = re.fullmatch(r"([A-Za-z0-9_.\-]+?)(?:@(.+)|(<=|>=|!=|<|>|=)(.+))?", value)
            if m is None:
                self.i -= 1
                raise self.fail("model:NAME, model:NAME@VERSION or model:NAME<VERSION")
            name, exact, op, ver = m.groups()
            if exact:
                op, ver = "=", exact
            named = _Cond(lambda d: _model_name(d) == name, _sql("model_name = ?", name))
            if op is None or ver is None:
                return named
            self._check_version(ver, f"model:{name}{'@' if exact else op}")
            versioned = _Cond(
                lambda d: _compare(op, _field(d, "model_version"), ver),
                _version("model_version", op, ver),
                versioned=True,
            )
            return _join("AND", [named, versioned])
        op, ver = _split_op(value)
        if not ver:
            self.i -= 1
            raise self.fail(f"a version after '{key}:{op}'")
        self._check_version(ver, f"{key}:{op}")
        field = "firmware" if key == "firmware" else "agent"
        column = "firmware_version" if key == "firmware" else "agent_version"
        return _Cond(lambda d: _compare(op, _field(d, field), ver), _version(column, op, ver), True)


def _tag(value: str) -> _Cond:
    op = "!=" if "!=" in value else "="
    if op not in value:
        return _Cond(lambda d: value in d.tags, lambda d: (d.has_key("tags"), [d.key_param(value)]))
    k, v = value.split(op, 1)
    if op == "=":
        return _Cond(
            lambda d: d.tags.get(k) == v,
            lambda d: (f"{d.json_key('tags')} = ?", [d.key_param(k), v]),
        )
    return _Cond(
        lambda d: d.tags.get(k) != v,
        lambda d: (
            f"{d.json_key('tags')} IS NULL OR {d.json_key('tags')} <> ?",
            [d.key_param(k), d.key_param(k), v],
        ),
    )


def _model_name(d: Device) -> str | None:
    return d.model_name


def _field(d: Device, name: str) -> str | None:
    return {
        "state": d.state,
        "hardware": d.hardware,
        "health": d.health,
        "model_version": d.model_version,
        "firmware": d.firmware_version,
        "agent": d.agent_version,
    }[name]


def parse(text: str) -> Selector:
    """Parse ``text``; raises ``SelectorError`` naming the column and what was expected."""
    if len(text) > 2000:
        raise SelectorError("the selector is longer than 2000 characters")
    return Selector(text, _Parser(text).parse())
