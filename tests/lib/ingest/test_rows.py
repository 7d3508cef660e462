"""The loader's fast row builders give exactly the rows of the full pydantic validation, and
hand everything they do not take (bad values, values pydantic would coerce) to it."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from manta_lib.ingest.lines import LineProblems, unstorable_values
from manta_lib.ingest.loader import _validate_span, _validate_trace
from manta_lib.ingest.rows import span_row, trace_row

NOW_MS = 1_700_000_000_000
WHEN = datetime(2025, 5, 12, 8, 30, 1, 123456, tzinfo=UTC)

# Values tried for each field: the right type, null, neighbours pydantic coerces or rejects.
ODD_VALUES: list[Any] = [
    None,
    "",
    "  ",
    "x",
    "12",
    "2025-05-12T08:30:00Z",
    0,
    7,
    -3,
    2**63,
    -(2**63) - 1,
    1.5,
    -0.5,
    0.0,
    math.nan,
    math.inf,
    True,
    False,
    [],
    [1, "a"],
    {},
    {"a": 1},
    {1: "a"},
    WHEN,
    WHEN.replace(tzinfo=None),
    WHEN.astimezone(timezone(timedelta(hours=-7))),
    datetime(1800, 1, 1, tzinfo=UTC),
    datetime(2300, 1, 1, tzinfo=UTC),
    "message",
    "eval",
]

BASE_SPAN: dict[str, Any] = {
    "span_id": "t1:0",
    "seq": 0,
    "kind": "tool",
    "name": "python",
    "role": "",
    "content": "héllo",
    "tool_name": "python",
    "tool_arguments": {"code": "print(1)"},
    "tool_result": "1",
    "is_error": False,
    "model_name": "m",
    "tokens_input": 3,
    "tokens_output": 4,
    "cost_usd": 0.25,
    "started_at": WHEN,
    "ended_at": WHEN + timedelta(seconds=1),
    "attributes": {"call_id": "c1", "nested": {"ok": [1, 2.5, None]}},
}

BASE_TRACE: dict[str, Any] = {
    "trace_id": "t1",
    "run_id": "run_a",
    "step_number": 3,
    "phase": "eval",
    "datapoint_id": "dp",
    "score": 0.5,
    "status": "completed",
    "cost_usd": 0.01,
    "duration_ms": 1200,
    "turn_count": 2,
    "tokens_input": 10,
    "tokens_output": 20,
    "model_name": "m",
    "env_name": "math",
    "meta": {"k": "v"},
    "project_id": "p",
    "created_at": WHEN,
}


def typed(row: tuple[Any, ...] | None) -> list[tuple[type, Any]] | None:
    """A row compared with types (3 and 3.0 differ), NaN-free."""
    return None if row is None else [(type(value), value) for value in row]


def full_span(obj: Any, prefix: str, trace_id: str, run_id: str | None, seq: int) -> Any:
    try:
        return _validate_span(obj, prefix, trace_id, run_id, seq)
    except LineProblems:
        return None


def full_trace(obj: dict[str, Any]) -> Any:
    problems: list[tuple[str, str]] = []
    row, unmapped, _, _ = _validate_trace(obj, "default_project", NOW_MS, problems)
    return None if problems else (row, unmapped)


def span_variants() -> list[dict[str, Any]]:
    variants = [dict(BASE_SPAN), {"kind": "message"}]
    for key in [*BASE_SPAN, "trace_id", "run_id", "parent_span_id"]:
        for value in ODD_VALUES:
            variants.append({**BASE_SPAN, key: value})
        variants.append({k: v for k, v in BASE_SPAN.items() if k != key})
    variants.append({**BASE_SPAN, "unknown_key": 1})
    return variants


@pytest.mark.parametrize(
    ("prefix", "trace_id", "run_id"),
    [("spans[0].", "t1", "run_a"), ("", "t1", None), ("", "", None)],
)
def test_span_rows_equal_the_full_validation(
    prefix: str, trace_id: str, run_id: str | None
) -> None:
    fast_taken = 0
    for variant in span_variants():
        fast = span_row(variant, prefix, trace_id, run_id, 5)
        full = full_span(variant, prefix, trace_id, run_id, 5)
        if fast is not None:
            fast_taken += 1
            assert typed(fast) == typed(full), variant
    assert fast_taken > 100  # the typed inputs take the fast path


def test_trace_rows_equal_the_full_validation() -> None:
    variants = [dict(BASE_TRACE), {"trace_id": "t", "run_id": "r"}]
    for key in BASE_TRACE:
        variants += [{**BASE_TRACE, key: value} for value in ODD_VALUES]
        variants.append({k: v for k, v in BASE_TRACE.items() if k != key})
    variants.append({**BASE_TRACE, "messages": []})
    fast_taken = 0
    for variant in variants:
        fast = trace_row(variant, "default_project", NOW_MS)
        full = full_trace(variant)
        if fast is not None:
            fast_taken += 1
            assert full is not None, variant
            assert typed(fast) == typed(full[0]) and full[1] == [], variant
    assert fast_taken > 40


def test_the_fast_storable_check_agrees_with_the_full_walk() -> None:
    deep: Any = "leaf"
    for _ in range(70):
        deep = [deep]
    cases = [
        {"a": [1, 2.5, None, True, "text", {"b": "ü"}]},
        {"a": "bad \ud800 text"},
        {"bad \udc00 key": 1},
        {"a": [math.nan]},
        {"a": {"b": -math.inf}},
        deep,
        {1: "non-string key"},
        {"when": WHEN, "tuple": (1, math.nan)},
    ]
    found = [bool(unstorable_values(case)) for case in cases]
    assert found == [False, True, True, True, True, True, False, False]
