"""Rows of trace and span objects whose values already have their field types, without pydantic.

Importers build trace objects with values of the right Python types (strings, ints, floats,
booleans, datetimes, dicts), and most JSON lines hold them too. For such an object the row is
built here directly: each value is checked exactly as the input models
(:class:`~manta_lib.models.TraceInput`, :class:`~manta_lib.models.SpanInput`) would check it,
and anything else (a missing required key, an unknown key, a value of another type that
pydantic might coerce or reject, a value out of range) returns ``None`` so the caller runs the
full validation, which also words the errors. Both paths give the same row for the same
object (the tests compare them on valid and invalid inputs).
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

from manta_lib.models import SPAN_COLUMNS, TRACE_COLUMNS, Phase, SpanInput, SpanKind, TraceInput

__all__ = ["json_text", "span_row", "to_ms", "trace_row"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)
_INT64 = 2**63
_MIN_YEAR, _MAX_YEAR = 1900, 2299  # what DateTime64 stores (the Timestamp rule of the models)
_MISSING = object()
_KINDS = frozenset(kind.value for kind in SpanKind)
_PHASES = frozenset(phase.value for phase in Phase)
_SPAN_KEYS = frozenset(SpanInput.model_fields)
_TRACE_KEYS = frozenset(TraceInput.model_fields) | {"spans"}
if set(SPAN_COLUMNS) != _SPAN_KEYS or set(TRACE_COLUMNS) | {"spans"} != _TRACE_KEYS:
    raise RuntimeError("the row builders below must learn the new fields of the input models")


# One encoder for every call: json.dumps with options builds a new one each time.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str)


def json_text(value: Any) -> str:
    """How ``meta`` and ``attributes`` are stored: compact JSON, UTF-8 as is."""
    if type(value) is dict and not value:
        return "{}"
    return _ENCODER.encode(value)


def to_ms(moment: datetime) -> int:
    """Milliseconds since the epoch; a timestamp without a time zone is taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _MILLISECOND


class _Slow(Exception):
    """This value needs the full validation."""


def _text(value: Any, default: str = "") -> str:
    if value is None:
        return default
    if type(value) is not str:
        raise _Slow
    return value


def _identifier(value: Any) -> str:
    if type(value) is not str or not value.strip():
        raise _Slow
    return value


def _count(value: Any) -> int:
    if value is None:
        return 0
    if type(value) is not int or not 0 <= value < _INT64:
        raise _Slow
    return value


def _integer(value: Any, default: int) -> int:
    if value is None:
        return default
    if type(value) is not int or not -_INT64 <= value < _INT64:
        raise _Slow
    return value


def _number(value: Any, *, negative: bool) -> float:
    kind = type(value)
    if kind is float:
        if math.isfinite(value) and (negative or value >= 0):
            return float(value)
    elif kind is int and (-_INT64 if negative else 0) <= value < _INT64:
        return float(value)
    raise _Slow


def _millis(value: Any) -> int | None:
    if value is None:
        return None
    if type(value) is not datetime or not _MIN_YEAR <= value.year <= _MAX_YEAR:
        raise _Slow
    return to_ms(value)


def _object(value: Any) -> str:
    if value is None:
        return "{}"
    if type(value) is not dict:
        raise _Slow
    for key in value:
        if type(key) is not str:
            raise _Slow
    return json_text(value)


def span_row(
    obj: Any, prefix: str, trace_id: str, run_id: str | None, seq: int
) -> tuple[Any, ...] | None:
    """The span's row in ``SPAN_COLUMNS`` order, or ``None`` to validate it fully.

    The arguments are those of the full path: ``prefix`` is set for a span inside a trace
    object (its ``trace_id``/``run_id`` must then match the trace's), ``seq`` is the default
    order.
    """
    if type(obj) is not dict or not _SPAN_KEYS.issuperset(obj):
        return None
    get = obj.get
    try:
        trace = _text(get("trace_id"), trace_id)
        run = _text(get("run_id"), run_id or "")
        if prefix and (
            (trace_id and trace != trace_id) or (run_id and run != run_id)
        ):  # a mismatch is an error the full path words
            return None
        order = _integer(get("seq"), seq)
        span_id = get("span_id", _MISSING)
        span_id = f"{trace}:{order}" if span_id is _MISSING else _identifier(span_id)
        kind = get("kind")
        if type(kind) is not str or kind not in _KINDS:
            return None
        arguments = get("tool_arguments")
        if type(arguments) is dict or type(arguments) is list:
            arguments = json_text(arguments)
        is_error = get("is_error")
        if is_error is None:
            is_error = False
        elif type(is_error) is not bool:
            return None
        cost = get("cost_usd")
        return (
            trace,
            run,
            span_id,
            _text(get("parent_span_id")),
            order,
            kind,
            _text(get("name")),
            _text(get("role")),
            _text(get("content")),
            _text(get("tool_name")),
            _text(arguments),
            _text(get("tool_result")),
            is_error,
            _text(get("model_name")),
            _count(get("tokens_input")),
            _count(get("tokens_output")),
            None if cost is None else _number(cost, negative=False),
            _millis(get("started_at")),
            _millis(get("ended_at")),
            _object(get("attributes")),
        )
    except _Slow:
        return None


def trace_row(obj: Any, project_id: str, now_ms: int) -> tuple[Any, ...] | None:
    """The trace's row in ``TRACE_COLUMNS`` order (its ``spans`` not looked at), or ``None``
    to validate it fully; ``project_id`` and ``now_ms`` are the defaults of the full path."""
    if type(obj) is not dict or not _TRACE_KEYS.issuperset(obj):
        return None
    get = obj.get
    try:
        phase = get("phase")
        if phase is None:
            phase = Phase.TRAIN.value
        elif type(phase) is not str or phase not in _PHASES:
            return None
        score = get("score")
        cost = get("cost_usd")
        created = get("created_at")
        return (
            _text(get("project_id"), project_id),
            _identifier(get("trace_id")),
            _identifier(get("run_id")),
            _integer(get("step_number"), 0),
            phase,
            _text(get("datapoint_id")),
            None if score is None else _number(score, negative=True),
            _text(get("status"), "completed"),
            None if cost is None else _number(cost, negative=False),
            _count(get("duration_ms")),
            _count(get("turn_count")),
            _count(get("tokens_input")),
            _count(get("tokens_output")),
            _text(get("model_name")),
            _text(get("env_name")),
            _object(get("meta")),
            now_ms if created is None else _millis(created),
        )
    except _Slow:
        return None
