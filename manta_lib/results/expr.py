"""The condition language of results filters: ``tool_errors > 0 and status == 'ok'``.

Grammar (keywords are case-insensitive)::

    expr       := or_expr
    or_expr    := and_expr ("or" and_expr)*
    and_expr   := not_expr ("and" not_expr)*
    not_expr   := "not" not_expr | "(" expr ")" | comparison
    comparison := field OP value | field ["not"] "in" "[" value ("," value)* "]"
                | field "is" ["not"] "null"
    field      := NAME ("." NAME){0,2}        -- column, judge.column or judge.level.column
    OP         := == | = | != | <> | > | >= | < | <=
    value      := number | 'text' | "text" | true | false | null

A field names a stored result column, or ``status`` (``ok``/``error``) or ``error`` (the error
text). A parse error names the character position and what was expected there.

Example::

    expr = parse_condition("tool_errors.tool_errors > 0 and not (status == 'error')")
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from manta_lib.errors import QueryError

MAX_NESTING = 32
"""Most levels of brackets and ``not`` in one condition."""

COMPARISON_OPS = ("==", "!=", ">", ">=", "<", "<=")
_OP_ALIASES = {"=": "==", "<>": "!="}

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<number>-?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?)
  | (?P<string>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
  | (?P<op>==|!=|<>|>=|<=|=|>|<)
  | (?P<punct>[()\[\],.])
  | (?P<name>[A-Za-z_][A-Za-z0-9_\-]*)
    """,
    re.VERBOSE,
)
_KEYWORDS = {"and", "or", "not", "in", "is", "null", "true", "false"}


@dataclass(frozen=True)
class Field:
    """A column reference: ``parts`` is (column,), (judge, column) or (judge, level, column)."""

    parts: tuple[str, ...]
    position: int

    def __str__(self) -> str:
        return ".".join(self.parts)


@dataclass(frozen=True)
class Comparison:
    """``field op value``; ``op`` is one of ``== != > >= < <= in not_in is_null not_null``."""

    field: Field
    op: str
    value: Any
    position: int


@dataclass(frozen=True)
class And:
    items: tuple[Condition, ...]


@dataclass(frozen=True)
class Or:
    items: tuple[Condition, ...]


@dataclass(frozen=True)
class Not:
    item: Condition


Condition = Comparison | And | Or | Not


@dataclass(frozen=True)
class _Tok:
    kind: str
    text: str
    position: int


def _tokenize(text: str) -> list[_Tok]:
    tokens: list[_Tok] = []
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise _error(text, position, f"unexpected character {text[position]!r}")
        kind = match.lastgroup or ""
        if kind != "ws":
            token_text = match.group()
            if kind == "name" and token_text.lower() in _KEYWORDS:
                kind, token_text = "keyword", token_text.lower()
            tokens.append(_Tok(kind, token_text, position))
        position = match.end()
    tokens.append(_Tok("end", "", len(text)))
    return tokens


def _error(text: str, position: int, message: str) -> QueryError:
    shown, column = text, position
    if len(text) > _SHOWN_CHARS:  # a window around the position, not the whole condition
        start = max(0, position - _SHOWN_CHARS // 2)
        shown = text[start : start + _SHOWN_CHARS]
        column = position - start
        if start:
            shown, column = "..." + shown, column + 3
        if start + _SHOWN_CHARS < len(text):
            shown += "..."
    pointer = " " * column + "^"
    return QueryError(
        f"cannot parse condition at position {position + 1}: {message}\n  {shown}\n  {pointer}"
    )


_SHOWN_CHARS = 120


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.index = 0
        self.depth = 0

    @property
    def current(self) -> _Tok:
        return self.tokens[self.index]

    def fail(self, expected: str) -> QueryError:
        token = self.current
        found = "the end of the condition" if token.kind == "end" else repr(token.text)
        return _error(self.text, token.position, f"expected {expected}, found {found}")

    def accept(self, kind: str, text: str | None = None) -> _Tok | None:
        token = self.current
        if token.kind == kind and (text is None or token.text == text):
            self.index += 1
            return token
        return None

    def expect(self, kind: str, text: str, expected: str) -> _Tok:
        token = self.accept(kind, text)
        if token is None:
            raise self.fail(expected)
        return token

    def parse(self) -> Condition:
        if self.current.kind == "end":
            raise self.fail("a condition such as `tool_errors > 0`")
        condition = self.or_expr()
        if self.current.kind != "end":
            raise self.fail("`and`, `or` or the end of the condition")
        return condition

    def or_expr(self) -> Condition:
        items = [self.and_expr()]
        while self.accept("keyword", "or"):
            items.append(self.and_expr())
        return items[0] if len(items) == 1 else Or(tuple(items))

    def and_expr(self) -> Condition:
        items = [self.not_expr()]
        while self.accept("keyword", "and"):
            items.append(self.not_expr())
        return items[0] if len(items) == 1 else And(tuple(items))

    def not_expr(self) -> Condition:
        token = self.current
        if token.kind in ("keyword", "punct") and token.text in ("not", "("):
            self.depth += 1
            if self.depth > MAX_NESTING:
                raise _error(
                    self.text,
                    token.position,
                    f"nested more than {MAX_NESTING} levels deep (brackets and `not`); "
                    f"write the condition flatter",
                )
            try:
                if self.accept("keyword", "not"):
                    return Not(self.not_expr())
                self.expect("punct", "(", "`(`")
                inner = self.or_expr()
                self.expect("punct", ")", "`)`")
                return inner
            finally:
                self.depth -= 1
        return self.comparison()

    def field(self) -> Field:
        token = self.accept("name")
        if token is None:
            raise self.fail("a column name")
        parts = [token.text]
        while self.accept("punct", "."):
            part = self.accept("name")
            if part is None:
                raise self.fail("a name after `.`")
            parts.append(part.text)
        if len(parts) > 3:
            raise _error(
                self.text,
                token.position,
                f"{'.'.join(parts)!r} has too many parts: write column, judge.column or "
                f"judge.level.column",
            )
        return Field(tuple(parts), token.position)

    def comparison(self) -> Comparison:
        field = self.field()
        position = self.current.position
        if self.accept("keyword", "is"):
            negated = self.accept("keyword", "not") is not None
            self.expect("keyword", "null", "`null` after `is`")
            return Comparison(field, "not_null" if negated else "is_null", None, position)
        negated = False
        if self.accept("keyword", "not"):
            negated = True
            if self.current.kind != "keyword" or self.current.text != "in":
                raise self.fail("`in` after `not`")
        if self.accept("keyword", "in"):
            self.expect("punct", "[", "`[` starting a list of values")
            values = [self.value()]
            while self.accept("punct", ","):
                values.append(self.value())
            self.expect("punct", "]", "`,` or `]`")
            return Comparison(field, "not_in" if negated else "in", tuple(values), position)
        op = self.accept("op")
        if op is None:
            raise self.fail("a comparison operator (== != > >= < <=, in, is null)")
        value = self.value()
        return Comparison(field, _OP_ALIASES.get(op.text, op.text), value, position)

    def value(self) -> Any:
        token = self.current
        if token.kind == "number":
            self.index += 1
            number = float(token.text)
            is_int = re.fullmatch(r"-?\d+", token.text) is not None
            return int(token.text) if is_int else number
        if token.kind == "string":
            self.index += 1
            return re.sub(r"\\(.)", r"\1", token.text[1:-1])
        if token.kind == "keyword" and token.text in ("true", "false", "null"):
            self.index += 1
            return {"true": True, "false": False, "null": None}[token.text]
        if token.kind == "name":
            raise _error(
                self.text,
                token.position,
                f"expected a value (a number, 'quoted text', true, false or null), found "
                f"{token.text!r}; quote text values: '{token.text}'",
            )
        raise self.fail("a value (a number, 'quoted text', true, false or null)")


def parse_condition(text: str) -> Condition:
    """Parse a condition; :class:`QueryError` with the position and what was expected."""
    if not isinstance(text, str):
        raise QueryError(f"a results condition must be text, got {type(text).__name__}")
    return _Parser(text).parse()


def comparisons(condition: Condition) -> list[Comparison]:
    """Every comparison in ``condition``, left to right."""
    if isinstance(condition, Comparison):
        return [condition]
    if isinstance(condition, Not):
        return comparisons(condition.item)
    return [c for item in condition.items for c in comparisons(item)]
