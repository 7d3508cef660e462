"""Typed context objects: :class:`TraceContext` wraps one trace row and its spans.

Spans are read by the rules of ``docs/span_conventions.md``. Example::

    from manta import MantaService

    with MantaService() as svc:
        trace = svc.get_trace("tr_0001")
    trace.score, trace.tool_error_count
    [m.content for m in trace.messages(role="user")]
    trace.conversation().to_text(max_chars=4000)

Construction is nearly free, because the query service builds one context per trace for tens
of thousands of traces: ``TraceContext(trace, span_rows)`` only keeps references to the raw
ClickHouse rows. Typed objects are built (and attribute JSON parsed) on the first accessor call
that needs them, then cached; no accessor ever queries ClickHouse.

Malformed data never raises from an accessor, because one bad span must not fail a map over a
whole run:

- ``attributes`` that is not a JSON object is exposed as ``{"_unparsed": "<original text>"}``
  and every attribute-derived field takes its default (``call_id`` falls back to the span id,
  ``tool_call_ids`` to ``[]``, a grader ``score`` to ``None`` ...);
- ``tool_arguments`` that is not a JSON object is kept as text in ``ToolCall.arguments``
  (``ToolCall.arguments_text`` always holds the original text; empty text gives ``{}``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError

from manta_lib.errors import ValidationError
from manta_lib.models import (
    SPAN_COLUMNS,
    Phase,
    SpanKind,
    SpanRecord,
    TraceRecord,
    fast_construct,
)

__all__ = [
    "UNPARSED_KEY",
    "Conversation",
    "GraderCriterion",
    "GraderResult",
    "LLMCall",
    "Message",
    "SystemEvent",
    "ToolCall",
    "TraceContext",
    "Turn",
]

UNPARSED_KEY = "_unparsed"
"""Key under which the original text of a malformed ``attributes`` value is kept."""

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class Message(BaseModel):
    """A ``message`` span: one conversation message.

    ``tool_call_ids`` lists the calls an assistant message issued; ``tool_call_id`` is the call
    a ``tool`` message answers (empty otherwise).
    """

    model_config = _FROZEN

    role: str
    content: str
    name: str = ""
    seq: int
    span_id: str
    tool_call_ids: list[str] = Field(default_factory=list)
    tool_call_id: str = ""


class ToolCall(BaseModel):
    """A ``tool`` span: one tool call with its arguments, result and error status.

    ``arguments`` is the parsed JSON object, or the raw text when ``arguments_text`` is not a
    JSON object. ``call_id`` is the ``call_id`` attribute, or the span id when it is missing.
    ``duration_ms`` is ``None`` unless both timestamps are set.
    """

    model_config = _FROZEN

    call_id: str
    tool_name: str
    arguments: dict[str, Any] | str
    arguments_text: str
    result: str
    is_error: bool
    error_type: str | None = None
    duration_ms: float | None = None
    seq: int
    span_id: str
    parent_span_id: str = ""


class GraderCriterion(BaseModel):
    """One criterion of a grader result."""

    model_config = _FROZEN

    name: str
    score: float | None = None
    passed: bool | None = None
    reason: str = ""


class GraderResult(BaseModel):
    """A ``grader`` span: score, criteria, feedback and the grader LLM's own conversation.

    ``messages`` carry the grader span's ``seq`` and ``span_id``. ``model_name`` is ``None``
    when the grader used no LLM.
    """

    model_config = _FROZEN

    name: str
    score: float | None = None
    passed: bool | None = None
    criteria: list[GraderCriterion] = Field(default_factory=list)
    feedback: str = ""
    messages: list[Message] = Field(default_factory=list)
    model_name: str | None = None
    tokens_input: int = 0
    tokens_output: int = 0
    cost_usd: float | None = None  # None: not known
    seq: int
    span_id: str


class LLMCall(BaseModel):
    """An ``llm`` span: one raw LLM invocation with its usage."""

    model_config = _FROZEN

    name: str = ""
    model_name: str
    tokens_input: int = 0
    tokens_output: int = 0
    cost_usd: float | None = None  # None: not known
    duration_ms: float | None = None
    finish_reason: str | None = None
    turn: int | None = None
    seq: int
    span_id: str


class SystemEvent(BaseModel):
    """A ``system`` span: a lifecycle event (``setup``, ``teardown``, ``timeout`` ...)."""

    model_config = _FROZEN

    name: str
    content: str = ""
    is_error: bool = False
    attributes: dict[str, Any] = Field(default_factory=dict)
    seq: int
    span_id: str


Turn = Message | ToolCall
"""One item of a :class:`Conversation`."""


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


# ---- conversation ---------------------------------------------------------------------------


class Conversation:
    """The rollout in order: messages interleaved with tool calls (a sequence of :data:`Turn`).

    A ``tool`` message whose ``tool_call_id`` matches a tool span of the trace is left out:
    the tool span carries the same result plus its error status, so each call appears once.

    Example::

        conv = trace.conversation()
        for turn in conv:
            print(turn.seq, type(turn).__name__)
        openai_messages = conv.to_openai_messages()
        prompt = "Judge this rollout:\\n" + conv.to_text(max_chars=8000)
    """

    __slots__ = ("_turns",)

    def __init__(self, turns: Iterable[Turn]) -> None:
        self._turns = tuple(turns)

    @property
    def turns(self) -> tuple[Turn, ...]:
        return self._turns

    def __iter__(self) -> Iterator[Turn]:
        return iter(self._turns)

    def __len__(self) -> int:
        return len(self._turns)

    def __getitem__(self, index: int) -> Turn:
        return self._turns[index]

    def __repr__(self) -> str:
        return f"Conversation({len(self._turns)} turns)"

    def _tool_links(self) -> tuple[dict[int, list[ToolCall]], set[int]]:
        """Which assistant message (by turn index) issued which tool calls, and the indexes of
        the orphan calls that no earlier assistant message claims."""
        by_span: dict[str, int] = {}
        by_call: dict[str, int] = {}
        issued: dict[int, list[ToolCall]] = {}
        orphans: set[int] = set()
        for index, turn in enumerate(self._turns):
            if isinstance(turn, Message):
                if turn.role == "assistant":
                    by_span[turn.span_id] = index
                    for call_id in turn.tool_call_ids:
                        by_call.setdefault(call_id, index)
                continue
            owner = by_span.get(turn.parent_span_id) if turn.parent_span_id else None
            if owner is None:
                owner = by_call.get(turn.call_id)
            if owner is None:
                orphans.add(index)
            else:
                issued.setdefault(owner, []).append(turn)
        return issued, orphans

    def to_openai_messages(self) -> list[dict[str, Any]]:
        """The conversation as OpenAI chat messages.

        An assistant message gets ``tool_calls`` for the tool spans it issued (linked by
        ``parent_span_id`` or by ``call_id`` in its ``tool_call_ids``); each tool span becomes a
        ``{"role": "tool", "tool_call_id": ..., "content": result}`` entry at its own place.
        Consecutive tool spans that no earlier assistant message issued are preceded by a
        synthesized ``{"role": "assistant", "content": None, "tool_calls": [...]}`` so the list
        stays valid for the API. ``name`` is set only when the span has one.

        Example::

            client.chat.completions.create(model=..., messages=conv.to_openai_messages())
        """
        issued, orphan_indexes = self._tool_links()
        out: list[dict[str, Any]] = []
        orphans: list[ToolCall] = []
        for index, turn in enumerate(self._turns):
            if isinstance(turn, ToolCall):
                if index in orphan_indexes:
                    orphans.append(turn)
                    continue
                _flush_orphans(orphans, out)
                out.append(_openai_tool_result(turn))
                continue
            _flush_orphans(orphans, out)
            if turn.role == "tool":
                out.append(
                    {"role": "tool", "tool_call_id": turn.tool_call_id, "content": turn.content}
                )
                continue
            entry: dict[str, Any] = {"role": turn.role, "content": turn.content}
            if turn.name:
                entry["name"] = turn.name
            calls = issued.get(index)
            if calls:
                entry["tool_calls"] = [_openai_tool_call(call) for call in calls]
            out.append(entry)
        _flush_orphans(orphans, out)
        return out

    def to_text(self, max_chars: int | None = None) -> str:
        """A plain transcript for an LLM judge, one turn per line block.

        Messages render as ``[role] content`` (``[role:name]`` with a speaker name), tool calls
        as ``[tool name(arg="value") → error: Type] result``. With ``max_chars`` the text is cut
        in the middle, keeping its start and end around a ``[… N characters omitted …]`` marker,
        so the result is never longer than ``max_chars``.

        Example::

            conv.to_text()
            # '[user] What is 2+2?\\n[tool calc(expr="2+2")] 4\\n[assistant] 4'
        """
        if max_chars is not None and (isinstance(max_chars, bool) or max_chars < 0):
            raise ValidationError(f"max_chars must be None or >= 0, got {max_chars!r}")
        text = "\n".join(_text_line(turn) for turn in self._turns)
        return text if max_chars is None else _truncate(text, max_chars)


def _openai_tool_call(call: ToolCall) -> dict[str, Any]:
    return {
        "id": call.call_id,
        "type": "function",
        "function": {"name": call.tool_name, "arguments": call.arguments_text or "{}"},
    }


def _openai_tool_result(call: ToolCall) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call.call_id, "content": call.result}


def _flush_orphans(orphans: list[ToolCall], out: list[dict[str, Any]]) -> None:
    if not orphans:
        return
    out.append(
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [_openai_tool_call(call) for call in orphans],
        }
    )
    out.extend(_openai_tool_result(call) for call in orphans)
    orphans.clear()


def _text_line(turn: Turn) -> str:
    if isinstance(turn, Message):
        label = f"{turn.role}:{turn.name}" if turn.name else turn.role
        return f"[{label}] {turn.content}" if turn.content else f"[{label}]"
    if isinstance(turn.arguments, dict):
        args = ", ".join(
            f"{key}={json.dumps(value, ensure_ascii=False, default=str)}"
            for key, value in turn.arguments.items()
        )
    else:
        args = turn.arguments
    label = f"tool {turn.tool_name}({args})"
    if turn.is_error:
        label += f" → error: {turn.error_type}" if turn.error_type else " → error"
    return f"[{label}] {turn.result}" if turn.result else f"[{label}]"


def _truncate(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    # The marker shows the omitted count, so its length depends on how much it replaces.
    kept = max_chars
    while True:
        marker = f"\n[… {len(text) - kept} characters omitted …]\n"
        if max_chars - len(marker) == kept:
            break
        kept = max_chars - len(marker)
    if kept < 2:
        return text[:max_chars]
    head = kept - kept // 2
    tail = kept - head
    return text[:head] + marker + text[len(text) - tail :]


# ---- the context ----------------------------------------------------------------------------


class TraceContext:
    """One trace (its :class:`TraceRecord` properties) and its spans, with typed accessors.

    Build it from raw ClickHouse rows in ``SPAN_COLUMNS`` order, sorted by ``seq`` (what the
    query service does; no validation, no parsing), or from hand-built spans with
    :meth:`from_spans` (validated). Accessors return new lists of frozen models.

    Example::

        trace = TraceContext.from_spans(
            {"trace_id": "t1", "run_id": "r1", "score": 1.0},
            [
                {"span_id": "s0", "seq": 0, "kind": "message", "role": "user", "content": "hi"},
                {"span_id": "s1", "seq": 1, "kind": "tool", "tool_name": "search",
                 "tool_arguments": '{"query": "x"}', "is_error": True},
            ],
        )
        trace.score                      # 1.0
        trace.messages(role="user")[0].content   # 'hi'
        trace.tools(errors_only=True)[0].arguments   # {'query': 'x'}
        trace.tool_error_count           # 1
    """

    __slots__ = (
        "_trace",
        "_rows",
        "_records",
        "_by_kind",
        "_messages",
        "_tools",
        "_graders",
        "_llm_calls",
        "_system_events",
        "_conversation",
    )

    def __init__(self, trace: TraceRecord, span_rows: Sequence[_Row] = ()) -> None:
        if not isinstance(trace, TraceRecord):
            raise ValidationError(
                f"TraceContext needs a TraceRecord, got {type(trace).__name__}; "
                "use TraceContext.from_spans() to build one from dicts"
            )
        self._trace = trace
        self._rows = span_rows
        self._records: list[SpanRecord] | None = None
        self._by_kind: dict[str, list[_Row]] | None = None
        self._messages: list[Message] | None = None
        self._tools: list[ToolCall] | None = None
        self._graders: list[GraderResult] | None = None
        self._llm_calls: list[LLMCall] | None = None
        self._system_events: list[SystemEvent] | None = None
        self._conversation: Conversation | None = None

    @classmethod
    def from_spans(
        cls,
        trace: TraceRecord | Mapping[str, Any],
        spans: Iterable[SpanRecord | Mapping[str, Any]] = (),
    ) -> TraceContext:
        """A context from a trace and spans built by hand (tests, notebooks, imports).

        Dicts are validated as :class:`TraceRecord` / :class:`SpanRecord`; spans are sorted by
        ``seq``; empty ``trace_id`` / ``run_id`` on a span take the trace's. Raises
        :class:`~manta_lib.errors.ValidationError` naming the bad span.

        Example::

            TraceContext.from_spans(
                TraceRecord(trace_id="t1", run_id="r1"),
                [SpanRecord(span_id="s0", seq=0, kind="message", role="user", content="hi")],
            )
        """
        record = _validated_trace(trace)
        records: list[SpanRecord] = []
        seen: dict[str, int] = {}
        for index, span in enumerate(spans):
            checked = _validated_span(index, span, record)
            if checked.span_id in seen:
                raise ValidationError(
                    f"spans {seen[checked.span_id]} and {index} share span_id "
                    f"{checked.span_id!r}; every span of a trace needs its own span_id"
                )
            seen[checked.span_id] = index
            records.append(checked)
        records.sort(key=lambda span: (span.seq, span.span_id))
        context = cls(
            record, [tuple(getattr(span, column) for column in SPAN_COLUMNS) for span in records]
        )
        context._records = records
        return context

    def __repr__(self) -> str:
        return f"TraceContext(trace_id={self._trace.trace_id!r}, spans={len(self._rows)})"

    # ---- trace properties -----------------------------------------------------------------

    @property
    def trace(self) -> TraceRecord:
        return self._trace

    @property
    def trace_id(self) -> str:
        return self._trace.trace_id

    @property
    def run_id(self) -> str:
        return self._trace.run_id

    @property
    def step_number(self) -> int:
        return self._trace.step_number

    @property
    def phase(self) -> Phase:
        return self._trace.phase

    @property
    def datapoint_id(self) -> str:
        return self._trace.datapoint_id

    @property
    def score(self) -> float | None:
        return self._trace.score

    @property
    def status(self) -> str:
        return self._trace.status

    @property
    def cost_usd(self) -> float | None:
        return self._trace.cost_usd

    @property
    def duration_ms(self) -> int:
        return self._trace.duration_ms

    @property
    def turn_count(self) -> int:
        return self._trace.turn_count

    @property
    def tokens_input(self) -> int:
        return self._trace.tokens_input

    @property
    def tokens_output(self) -> int:
        return self._trace.tokens_output

    @property
    def model_name(self) -> str:
        return self._trace.model_name

    @property
    def env_name(self) -> str:
        return self._trace.env_name

    @property
    def meta(self) -> dict[str, Any]:
        return self._trace.meta

    # ---- spans ----------------------------------------------------------------------------

    def _rows_of(self, kind: str) -> Sequence[_Row]:
        by_kind = self._by_kind
        if by_kind is None:
            by_kind = {}
            for row in self._rows:
                rows = by_kind.get(row[_KIND])
                if rows is None:
                    by_kind[row[_KIND]] = [row]
                else:
                    rows.append(row)
            self._by_kind = by_kind
        return by_kind.get(kind, _NO_ROWS)

    def spans(self, kind: str | Iterable[str] | None = None) -> list[SpanRecord]:
        """All spans in ``seq`` order, or those of one kind or several kinds.

        Example::

            trace.spans("tool")
            trace.spans(["message", "tool"])
        """
        kinds = _selection(kind, "kind")
        if kinds is not None:
            unknown = sorted(k for k in kinds if k not in _KINDS)
            if unknown:
                raise ValidationError(
                    f"unknown span kind(s) {unknown}; expected one of: {', '.join(_KINDS)}"
                )
        if self._records is None:
            self._records = [_span_record(row) for row in self._rows]
        if kinds is None:
            return list(self._records)
        return [span for span in self._records if span.kind in kinds]

    def messages(self, role: str | Iterable[str] | None = None) -> list[Message]:
        """Message spans in ``seq`` order, optionally only the given role(s).

        Example::

            trace.messages(role="assistant")
            trace.messages(role=["user", "system"])
        """
        roles = _selection(role, "role")
        if self._messages is None:
            self._messages = [_message(row) for row in self._rows_of(SpanKind.MESSAGE)]
        if roles is None:
            return list(self._messages)
        return [message for message in self._messages if message.role in roles]

    def tools(
        self, name: str | Iterable[str] | None = None, errors_only: bool = False
    ) -> list[ToolCall]:
        """Tool calls in ``seq`` order, optionally only some tools and/or only failed calls.

        Example::

            trace.tools()
            trace.tools(name="search", errors_only=True)
        """
        names = _selection(name, "name")
        if self._tools is None:
            self._tools = [_tool_call(row) for row in self._rows_of(SpanKind.TOOL)]
        return [
            call
            for call in self._tools
            if (names is None or call.tool_name in names) and (call.is_error or not errors_only)
        ]

    def grader_results(self) -> list[GraderResult]:
        """Every grader span's result, in ``seq`` order."""
        if self._graders is None:
            self._graders = [_grader(row) for row in self._rows_of(SpanKind.GRADER)]
        return list(self._graders)

    def grader_result(self) -> GraderResult | None:
        """The last grader span's result, or ``None`` when the trace has no grader span.

        Example::

            result = trace.grader_result()
            if result is not None:
                failed = [c.name for c in result.criteria if c.passed is False]
        """
        results = self.grader_results()
        return results[-1] if results else None

    def llm_calls(self) -> list[LLMCall]:
        """LLM invocations (``llm`` spans) in ``seq`` order.

        Example::

            sum(call.tokens_output for call in trace.llm_calls())
        """
        if self._llm_calls is None:
            self._llm_calls = [_llm_call(row) for row in self._rows_of(SpanKind.LLM)]
        return list(self._llm_calls)

    def system_events(self, name: str | Iterable[str] | None = None) -> list[SystemEvent]:
        """System events in ``seq`` order, optionally only the given name(s).

        Example::

            trace.system_events("timeout")
        """
        names = _selection(name, "name")
        if self._system_events is None:
            self._system_events = [_system_event(row) for row in self._rows_of(SpanKind.SYSTEM)]
        if names is None:
            return list(self._system_events)
        return [event for event in self._system_events if event.name in names]

    def conversation(self) -> Conversation:
        """Messages and tool calls in ``seq`` order (see :class:`Conversation`).

        Example::

            trace.conversation().to_openai_messages()
        """
        if self._conversation is None:
            calls = self.tools()
            answered = {call.call_id for call in calls}
            turns: list[Turn] = [
                message
                for message in self.messages()
                if not (
                    message.role == "tool"
                    and message.tool_call_id
                    and message.tool_call_id in answered
                )
            ]
            turns.extend(calls)
            turns.sort(key=lambda turn: turn.seq)
            self._conversation = Conversation(turns)
        return self._conversation

    # ---- totals (read from the rows, no typed objects built) -------------------------------

    def _values_of(self, kind: str, column: int) -> list[Any]:
        """Column ``column`` of the spans of ``kind``, read from the column block when the
        rows were not built (no row tuples for a total)."""
        rows = self._rows
        if self._by_kind is None and type(rows) is SpanColumns and not rows.materialized:
            values = rows.column(column)
            plain = str(kind.value) if isinstance(kind, SpanKind) else kind  # str == str is fastest
            return [v for k, v in zip(rows.column(_KIND), values, strict=True) if k == plain]
        return [row[column] for row in self._rows_of(kind)]

    @property
    def tool_call_count(self) -> int:
        """Number of tool spans."""
        rows = self._rows
        if self._by_kind is None and type(rows) is SpanColumns and not rows.materialized:
            return sum(1 for k in rows.column(_KIND) if k == SpanKind.TOOL)
        return len(self._rows_of(SpanKind.TOOL))

    @property
    def tool_error_count(self) -> int:
        """Number of tool spans with ``is_error``."""
        return sum(1 for flag in self._values_of(SpanKind.TOOL, _IS_ERROR) if flag)

    @property
    def llm_cost_usd(self) -> float | None:
        """Cost of the ``llm`` spans (a grader's own LLM cost is on its :class:`GraderResult`);
        None when one of them has no known cost (a sum of the known ones would look whole)."""
        costs = list(self._values_of(SpanKind.LLM, _COST))
        if any(cost is None for cost in costs):
            return None
        return float(sum(costs))

    @property
    def llm_tokens(self) -> tuple[int, int]:
        """``(input, output)`` tokens of the ``llm`` spans."""
        return (
            sum(self._values_of(SpanKind.LLM, _TOKENS_IN)),
            sum(self._values_of(SpanKind.LLM, _TOKENS_OUT)),
        )

    @property
    def has_error(self) -> bool:
        """``True`` when ``status`` is not ``completed`` or a system event is an error."""
        return self._trace.status != "completed" or any(self._values_of(SpanKind.SYSTEM, _IS_ERROR))


def _validated_trace(trace: TraceRecord | Mapping[str, Any]) -> TraceRecord:
    if isinstance(trace, TraceRecord):
        return trace
    if not isinstance(trace, Mapping):
        raise ValidationError(f"trace must be a TraceRecord or a dict, got {type(trace).__name__}")
    try:
        return TraceRecord.model_validate(trace)
    except PydanticValidationError as exc:
        raise ValidationError(f"trace is invalid: {_describe(exc)}") from None


def _validated_span(
    index: int, span: SpanRecord | Mapping[str, Any], trace: TraceRecord
) -> SpanRecord:
    if isinstance(span, SpanRecord):
        record = span
    elif isinstance(span, Mapping):
        try:
            record = SpanRecord.model_validate(span)
        except PydanticValidationError as exc:
            label = f"span {index} ({span['span_id']!r})" if "span_id" in span else f"span {index}"
            raise ValidationError(f"{label} is invalid: {_describe(exc)}") from None
    else:
        raise ValidationError(
            f"span {index} must be a SpanRecord or a dict, got {type(span).__name__}"
        )
    for field in ("trace_id", "run_id"):
        value, expected = getattr(record, field), getattr(trace, field)
        if value and value != expected:
            raise ValidationError(
                f"span {index} ({record.span_id!r}) has {field} {value!r} but the trace's is "
                f"{expected!r}; pass the spans of this trace only"
            )
    if record.trace_id and record.run_id:
        return record
    return record.model_copy(update={"trace_id": trace.trace_id, "run_id": trace.run_id})


def _describe(exc: PydanticValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in error['loc']) or 'value'}: {error['msg']}"
        for error in exc.errors()
    )
