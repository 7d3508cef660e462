"""One trace and its spans (:class:`TraceContext`): typed accessors, built lazily and cached."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

from pydantic import ValidationError as PydanticValidationError

from manta_lib.context.columns import (
    _COST,
    _IS_ERROR,
    _KIND,
    _KINDS,
    _NO_ROWS,
    _TOKENS_IN,
    _TOKENS_OUT,
    SpanColumns,
    _grader,
    _llm_call,
    _message,
    _Row,
    _selection,
    _span_record,
    _system_event,
    _tool_call,
)
from manta_lib.context.conversation import Conversation
from manta_lib.context.trace_rows import PHASES, TRACE_INDEX, trace_from_row
from manta_lib.context.views import GraderResult, LLMCall, Message, SystemEvent, ToolCall, Turn
from manta_lib.errors import ValidationError
from manta_lib.models import (
    SPAN_COLUMNS,
    Phase,
    SpanKind,
    SpanRecord,
    TraceRecord,
)

_TRACE_ID = TRACE_INDEX["trace_id"]
_RUN_ID = TRACE_INDEX["run_id"]
_STEP = TRACE_INDEX["step_number"]
_PHASE = TRACE_INDEX["phase"]
_DATAPOINT = TRACE_INDEX["datapoint_id"]
_SCORE = TRACE_INDEX["score"]
_STATUS = TRACE_INDEX["status"]

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
        "_row",
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
        self._start(trace, (), span_rows)

    def _start(
        self, trace: TraceRecord | None, row: Sequence[Any], span_rows: Sequence[_Row]
    ) -> None:
        """Set every slot: the trace as a record, or as its stored row (``trace`` None)."""
        self._trace = trace
        self._row = row
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

    @classmethod
    def from_row(cls, row: Sequence[Any], span_rows: Sequence[_Row] = ()) -> TraceContext:
        """A context from a stored trace row in ``TRACE_COLUMNS`` order (as the query service
        reads it) and its span rows. The :class:`TraceRecord` is built on first use of
        :attr:`trace` (or of a property it alone answers: ``meta``, ``cost_usd`` ...); the
        keys and ``score`` / ``status`` are read from the row, so a map that needs no more
        never builds it."""
        context = cls.__new__(cls)
        context._start(None, row, span_rows)
        return context

    def __repr__(self) -> str:
        return f"TraceContext(trace_id={self.trace_id!r}, spans={len(self._rows)})"

    # ---- trace properties -----------------------------------------------------------------

    @property
    def trace(self) -> TraceRecord:
        trace = self._trace
        if trace is None:
            trace = self._trace = trace_from_row(self._row)
        return trace

    @property
    def trace_id(self) -> str:
        trace = self._trace
        return self._row[_TRACE_ID] if trace is None else trace.trace_id

    @property
    def run_id(self) -> str:
        trace = self._trace
        return self._row[_RUN_ID] if trace is None else trace.run_id

    @property
    def step_number(self) -> int:
        trace = self._trace
        return self._row[_STEP] if trace is None else trace.step_number

    @property
    def phase(self) -> Phase:
        trace = self._trace
        if trace is None:
            phase = self._row[_PHASE]
            return cast(Phase, PHASES.get(phase, phase))  # an unknown phase keeps its text
        return trace.phase

    @property
    def datapoint_id(self) -> str:
        trace = self._trace
        return self._row[_DATAPOINT] if trace is None else trace.datapoint_id

    @property
    def score(self) -> float | None:
        trace = self._trace
        return self._row[_SCORE] if trace is None else trace.score

    @property
    def status(self) -> str:
        trace = self._trace
        return self._row[_STATUS] if trace is None else trace.status

    @property
    def cost_usd(self) -> float | None:
        return self.trace.cost_usd

    @property
    def duration_ms(self) -> int:
        return self.trace.duration_ms

    @property
    def turn_count(self) -> int:
        return self.trace.turn_count

    @property
    def tokens_input(self) -> int:
        return self.trace.tokens_input

    @property
    def tokens_output(self) -> int:
        return self.trace.tokens_output

    @property
    def model_name(self) -> str:
        return self.trace.model_name

    @property
    def env_name(self) -> str:
        return self.trace.env_name

    @property
    def meta(self) -> dict[str, Any]:
        return self.trace.meta

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
        return self.status != "completed" or any(self._values_of(SpanKind.SYSTEM, _IS_ERROR))


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
