"""Raw span rows to typed views: a trace's spans as a slice of a column block
(:class:`SpanColumns`) and the parsers that build each view from a row, tolerant of malformed
attributes and arguments."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

from manta_lib.context.views import (
    UNPARSED_KEY,
    GraderCriterion,
    GraderResult,
    LLMCall,
    Message,
    SystemEvent,
    ToolCall,
)
from manta_lib.errors import ValidationError
from manta_lib.models import (
    SPAN_COLUMNS,
    SpanKind,
    SpanRecord,
    fast_construct,
)

# ---- raw rows -> typed objects --------------------------------------------------------------

_Row = Sequence[Any]
_COL = {name: index for index, name in enumerate(SPAN_COLUMNS)}
_SPAN_ID = _COL["span_id"]
_PARENT = _COL["parent_span_id"]
_SEQ = _COL["seq"]
_KIND = _COL["kind"]
_NAME = _COL["name"]
_ROLE = _COL["role"]
_CONTENT = _COL["content"]
_TOOL_NAME = _COL["tool_name"]
_TOOL_ARGUMENTS = _COL["tool_arguments"]
_TOOL_RESULT = _COL["tool_result"]
_IS_ERROR = _COL["is_error"]
_MODEL = _COL["model_name"]
_TOKENS_IN = _COL["tokens_input"]
_TOKENS_OUT = _COL["tokens_output"]
_COST = _COL["cost_usd"]
_STARTED = _COL["started_at"]
_ENDED = _COL["ended_at"]
_ATTRIBUTES = _COL["attributes"]
_KINDS = {kind.value: kind for kind in SpanKind}
_NO_ROWS: tuple[_Row, ...] = ()

_decode_json = json.JSONDecoder().decode  # json.loads minus its per-call argument checks
_construct = fast_construct


class SpanColumns(Sequence[_Row]):
    """The spans of one trace as a slice ``[start, stop)`` of a column block (one sequence per
    column, in ``SPAN_COLUMNS`` order), as a streaming query returns them.

    Row tuples are built only when something iterates or indexes the rows; totals such as
    :attr:`TraceContext.tool_error_count` read the two columns they need instead.
    """

    __slots__ = ("_columns", "_start", "_stop", "_rows")

    def __init__(self, columns: Sequence[Sequence[Any]], start: int, stop: int) -> None:
        self._columns = columns
        self._start = start
        self._stop = stop
        self._rows: list[_Row] | None = None

    def column(self, index: int) -> Sequence[Any]:
        """The values of column ``index`` (a ``SPAN_COLUMNS`` position) for these spans."""
        return self._columns[index][self._start : self._stop]

    def _materialized(self) -> list[_Row]:
        rows = self._rows
        if rows is None:
            start, stop = self._start, self._stop
            rows = self._rows = list(zip(*(c[start:stop] for c in self._columns), strict=True))
            self._columns = ()  # the rows hold the values now; let the block go
        return rows

    @property
    def materialized(self) -> bool:
        return self._rows is not None

    def __len__(self) -> int:
        return self._stop - self._start

    def __getitem__(self, index: Any) -> Any:
        return self._materialized()[index]

    def __iter__(self) -> Iterator[_Row]:
        return iter(self._materialized())


def _attributes(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    if not value or value == "{}":
        return {}
    try:
        parsed = _decode_json(value)
    except (TypeError, ValueError):
        return {UNPARSED_KEY: value}
    return parsed if isinstance(parsed, dict) else {UNPARSED_KEY: value}


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _bool(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple):
        return [item for item in value if isinstance(item, str)]
    return []


def _duration_ms(started: datetime | None, ended: datetime | None) -> float | None:
    if started is None or ended is None:
        return None
    try:
        return (ended - started).total_seconds() * 1000.0
    except TypeError:  # naive and aware timestamps mixed
        return None


def _arguments(text: str) -> dict[str, Any] | str:
    if not text:
        return {}
    try:
        parsed = _decode_json(text)
    except (TypeError, ValueError):
        return text
    return parsed if isinstance(parsed, dict) else text


def _message(row: _Row) -> Message:
    attrs = _attributes(row[_ATTRIBUTES])
    return _construct(
        Message,
        {
            "role": row[_ROLE],
            "content": row[_CONTENT],
            "name": row[_NAME],
            "seq": row[_SEQ],
            "span_id": row[_SPAN_ID],
            "tool_call_ids": _str_list(attrs.get("tool_call_ids")),
            "tool_call_id": _text(attrs.get("tool_call_id")),
        },
    )


def _tool_call(row: _Row) -> ToolCall:
    attrs = _attributes(row[_ATTRIBUTES])
    is_error = bool(row[_IS_ERROR])
    return _construct(
        ToolCall,
        {
            "call_id": _opt_str(attrs.get("call_id")) or row[_SPAN_ID],
            "tool_name": row[_TOOL_NAME],
            "arguments": _arguments(row[_TOOL_ARGUMENTS]),
            "arguments_text": row[_TOOL_ARGUMENTS],
            "result": row[_TOOL_RESULT],
            "is_error": is_error,
            "error_type": _opt_str(attrs.get("error_type")) if is_error else None,
            "duration_ms": _duration_ms(row[_STARTED], row[_ENDED]),
            "seq": row[_SEQ],
            "span_id": row[_SPAN_ID],
            "parent_span_id": row[_PARENT],
        },
    )


def _criterion(item: Mapping[str, Any]) -> GraderCriterion:
    return _construct(
        GraderCriterion,
        {
            "name": _text(item.get("name")),
            "score": _float(item.get("score")),
            "passed": _bool(item.get("passed")),
            "reason": _text(item.get("reason")),
        },
    )


def _grader_message(item: Mapping[str, Any], row: _Row) -> Message:
    return _construct(
        Message,
        {
            "role": _text(item.get("role")),
            "content": _text(item.get("content")),
            "name": _text(item.get("name")),
            "seq": row[_SEQ],
            "span_id": row[_SPAN_ID],
            "tool_call_ids": [],
            "tool_call_id": "",
        },
    )


def _grader(row: _Row) -> GraderResult:
    attrs = _attributes(row[_ATTRIBUTES])
    criteria = attrs.get("criteria")
    messages = attrs.get("messages")
    return _construct(
        GraderResult,
        {
            "name": row[_NAME],
            "score": _float(attrs.get("score")),
            "passed": _bool(attrs.get("passed")),
            "criteria": [_criterion(c) for c in criteria if isinstance(c, dict)]
            if isinstance(criteria, list)
            else [],
            "feedback": row[_CONTENT],
            "messages": [_grader_message(m, row) for m in messages if isinstance(m, dict)]
            if isinstance(messages, list)
            else [],
            "model_name": row[_MODEL] or None,
            "tokens_input": row[_TOKENS_IN],
            "tokens_output": row[_TOKENS_OUT],
            "cost_usd": row[_COST],
            "seq": row[_SEQ],
            "span_id": row[_SPAN_ID],
        },
    )


def _llm_call(row: _Row) -> LLMCall:
    attrs = _attributes(row[_ATTRIBUTES])
    return _construct(
        LLMCall,
        {
            "name": row[_NAME],
            "model_name": row[_MODEL],
            "tokens_input": row[_TOKENS_IN],
            "tokens_output": row[_TOKENS_OUT],
            "cost_usd": row[_COST],
            "duration_ms": _duration_ms(row[_STARTED], row[_ENDED]),
            "finish_reason": _opt_str(attrs.get("finish_reason")),
            "turn": _int(attrs.get("turn")),
            "seq": row[_SEQ],
            "span_id": row[_SPAN_ID],
        },
    )


def _system_event(row: _Row) -> SystemEvent:
    return _construct(
        SystemEvent,
        {
            "name": row[_NAME],
            "content": row[_CONTENT],
            "is_error": bool(row[_IS_ERROR]),
            "attributes": dict(_attributes(row[_ATTRIBUTES])),
            "seq": row[_SEQ],
            "span_id": row[_SPAN_ID],
        },
    )


def _span_record(row: _Row) -> SpanRecord:
    values = dict(zip(SPAN_COLUMNS, row, strict=True))
    values["kind"] = _KINDS.get(values["kind"], values["kind"])
    values["attributes"] = dict(_attributes(values["attributes"]))
    return _construct(SpanRecord, values)


def _selection(value: str | Iterable[str] | None, argument: str) -> frozenset[str] | None:
    """``None`` (no filter), one name, or several names, as a set."""
    if value is None:
        return None
    if isinstance(value, str):
        return frozenset((value,))
    if isinstance(value, Iterable):
        items = list(value)
        if all(isinstance(item, str) for item in items):
            return frozenset(items)
    raise ValidationError(f"{argument} must be a string or a list of strings, got {value!r}")
