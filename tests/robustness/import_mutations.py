"""Mutations of valid import lines for the import fuzzer: each says what the importer must
report for it (the field and words of the reason), or that the line is good after all."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st


@dataclass(frozen=True)
class Expected:
    """A bad line: its error's field (None: any) and words of the reason."""

    field: str | None
    reason: str


@dataclass(frozen=True)
class Mutant:
    raw: bytes
    expected: Expected | None  # None: a good line (weird but valid)
    kind: str


def valid_trace(trace_id: str) -> dict[str, Any]:
    return {
        "trace_id": trace_id,
        "run_id": "run_fuzz",
        "step_number": 2,
        "datapoint_id": "dp_1",
        "score": 0.5,
        "cost_usd": 0.01,
        "tokens_input": 10,
        "meta": {"temperature": 1.0, "group_id": "g1"},
        "spans": [
            {"kind": "message", "role": "user", "content": "What is 6*7?"},
            {"kind": "llm", "model_name": "m", "tokens_output": 3, "attributes": {"turn": 0}},
        ],
    }


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode()


Draw = Callable[[st.SearchStrategy[Any]], Any]
Mutation = Callable[[dict[str, Any], Draw], Mutant]


def truncated(obj: dict[str, Any], draw: Draw) -> Mutant:
    raw = dumps(obj)
    cut = draw(st.integers(min_value=1, max_value=len(raw) - 1))
    return Mutant(raw[:cut], Expected("", "invalid JSON ("), "truncation")


_SWAPS: list[tuple[str, Any, str]] = [
    ("step_number", "abc", "expected an integer, got 'abc'"),
    ("step_number", 1.5, "expected an integer, got 1.5"),
    ("score", "high", "expected a number, got 'high'"),
    ("score", [1], "expected a number, got a list"),
    ("meta", "oops", "expected an object, got 'oops'"),
    ("meta", [1, 2], "expected an object, got a list"),
    ("spans", "x", "expected a list of span objects, got 'x'"),
    ("spans", {"a": 1}, "expected a list of span objects, got an object"),
    ("phase", "training", "is not a valid phase"),
    ("run_id", 5, "expected a string, got 5"),
    ("trace_id", None, "expected a string, got null"),
]


def type_swap(obj: dict[str, Any], draw: Draw) -> Mutant:
    key, value, reason = draw(st.sampled_from(_SWAPS))
    return Mutant(dumps({**obj, key: value}), Expected(key, reason), f"type swap {key}")


def span_type_swap(obj: dict[str, Any], draw: Draw) -> Mutant:
    key, value, reason = draw(
        st.sampled_from(
            [
                ("kind", "toool", "is not a valid span kind"),
                ("is_error", "maybe", "expected true or false, got 'maybe'"),
                ("tokens_output", "many", "expected an integer, got 'many'"),
                ("attributes", 7, "expected an object, got 7"),
            ]
        )
    )
    spans = [dict(obj["spans"][0]), {**obj["spans"][1], key: value}]
    return Mutant(dumps({**obj, "spans": spans}), Expected(f"spans[1].{key}", reason), "span swap")


def deep_nesting(obj: dict[str, Any], draw: Draw) -> Mutant:
    depth = draw(st.sampled_from([66, 200, 999, 5000, 100_000]))
    opening, closing = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
    raw = dumps(obj)[:-1] + b', "deep": ' + opening * depth + b"1" + closing * depth + b"}"
    return Mutant(raw, Expected(None, "nested more than 64 levels deep"), "deep nesting")


def huge_integer(obj: dict[str, Any], draw: Draw) -> Mutant:
    key = draw(st.sampled_from(["tokens_input", "step_number", "duration_ms"]))
    value = draw(st.sampled_from([2**63, 2**64, -(2**63) - 1, 10**30]))
    reason = "is out of range for a 64-bit integer"
    if value < 0 and key != "step_number":
        reason = "must not be negative"
    return Mutant(dumps({**obj, key: value}), Expected(key, reason), "huge integer")


def enormous_literal(obj: dict[str, Any], draw: Draw) -> Mutant:
    digits = draw(st.sampled_from([5000, 20000]))
    raw = dumps(obj)[:-1] + b', "n": ' + b"7" * digits + b"}"
    return Mutant(raw, Expected("", "invalid JSON (Exceeds the limit"), "enormous literal")


def huge_string(obj: dict[str, Any], draw: Draw) -> Mutant:
    size = draw(st.sampled_from([100_000, 1_000_000]))
    spans = [{**obj["spans"][0], "content": "x" * size}, obj["spans"][1]]
    return Mutant(dumps({**obj, "spans": spans}), None, "huge string")


def non_finite(obj: dict[str, Any], draw: Draw) -> Mutant:
    literal = draw(st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"1e309", b"-2E+999"]))
    where = draw(st.sampled_from(["score", "cost_usd", "meta.t", "spans[1].attributes.p"]))
    marker = b'"__HERE__"'
    copy = json.loads(json.dumps(obj))
    if where == "meta.t":
        copy["meta"]["t"] = "__HERE__"
    elif where.startswith("spans"):
        copy["spans"][1]["attributes"]["p"] = "__HERE__"
    else:
        copy[where] = "__HERE__"
    raw = dumps(copy).replace(marker, literal)
    return Mutant(raw, Expected(where, "is not a finite number"), "non-finite")


def invalid_utf8(obj: dict[str, Any], draw: Draw) -> Mutant:
    bad = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\x80abc", b"\xf0\x28\x8c\x28"]))
    raw = dumps({**obj, "datapoint_id": "dp_@"}).replace(b"@", bad)
    return Mutant(raw, Expected("", "invalid UTF-8"), "invalid UTF-8")


def lone_surrogate(obj: dict[str, Any], draw: Draw) -> Mutant:
    form = draw(st.sampled_from([b"\\ud800", b"\\uDFFF", b"\xed\xa0\x80", b"\\udc00x"]))
    where = draw(st.sampled_from(["datapoint_id", "meta.note", "spans[0].content"]))
    copy = json.loads(json.dumps(obj))
    if where == "meta.note":
        copy["meta"]["note"] = "a@"
    elif where.startswith("spans"):
        copy["spans"][0]["content"] = "a@"
    else:
        copy[where] = "a@"
    raw = dumps(copy).replace(b"@", form)
    return Mutant(raw, Expected(where, "lone UTF-16 surrogate"), "lone surrogate")


def control_bytes(obj: dict[str, Any], draw: Draw) -> Mutant:
    byte = draw(st.sampled_from([b"\x00", b"\x01", b"\x1b", b"\x1f", b"\x0b"]))
    raw = dumps({**obj, "datapoint_id": "dp@"}).replace(b"@", byte)
    return Mutant(raw, Expected("", "invalid JSON (Invalid control character at column"), "ctl")


SQL_TEXTS = [
    "'); DROP TABLE traces; --",
    "\\' OR 1=1 --",
    '"; SELECT * FROM system.tables; --',
    "{db}.traces",
    "{ids:Array(String)}",
    "%s %(x)s ? $1",
    "\\N",
    "escaped \u0001 control and \u2028 separator",
]


def sql_metacharacters(obj: dict[str, Any], draw: Draw) -> Mutant:
    text = draw(st.sampled_from(SQL_TEXTS))
    spans = [{**obj["spans"][0], "content": text}, obj["spans"][1]]
    changed = {**obj, "datapoint_id": text, "meta": {"q": text}, "spans": spans}
    return Mutant(dumps(changed), None, "sql text")


def bad_value(obj: dict[str, Any], draw: Draw) -> Mutant:
    key, value, reason = draw(
        st.sampled_from(
            [
                ("trace_id", "", "must not be empty or blank"),
                ("run_id", " ", "must not be empty or blank"),
                ("tokens_input", -3, "must not be negative"),
                ("cost_usd", -0.01, "must not be negative"),
                ("duration_ms", -1, "must not be negative"),
                ("created_at", 1e12, "seconds since 1970 are expected"),
                ("created_at", -5, "seconds since 1970 are expected"),
            ]
        )
    )
    return Mutant(dumps({**obj, key: value}), Expected(key, reason), f"bad {key}")


def not_an_object(obj: dict[str, Any], draw: Draw) -> Mutant:
    raw = draw(st.sampled_from([b"[1, 2]", b'"text"', b"42", b"null", b"true"]))
    return Mutant(raw, Expected("", "expected a JSON object"), "not an object")


MAX_RECORD_MB = 2  # MANTA_IMPORT_MAX_RECORD_MB while fuzzing: huge_string fits, this does not


def oversized_line(obj: dict[str, Any], draw: Draw) -> Mutant:
    size = draw(st.sampled_from([MAX_RECORD_MB << 20, 3 << 20]))
    raw = dumps({**obj, "pad": "x" * size})
    return Mutant(raw, Expected("", "over the import limit of 2 MB per record"), "oversized")


MUTATIONS: list[Mutation] = [
    truncated,
    type_swap,
    span_type_swap,
    deep_nesting,
    huge_integer,
    enormous_literal,
    huge_string,
    non_finite,
    invalid_utf8,
    lone_surrogate,
    control_bytes,
    sql_metacharacters,
    bad_value,
    not_an_object,
    oversized_line,
]
