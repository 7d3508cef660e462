"""TraceContext: typed accessors over hand-built traces (no database needed).

The same trace is built two ways, from validated spans (``from_spans``) and from raw
ClickHouse-shaped rows (what the query service does); both must read the same.
"""

from __future__ import annotations

import json
import pickle
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import manta_lib.context.columns as context_module
from manta_lib.context import (
    UNPARSED_KEY,
    Conversation,
    GraderCriterion,
    GraderResult,
    LLMCall,
    Message,
    SystemEvent,
    ToolCall,
    TraceContext,
)
from manta_lib.errors import ValidationError
from manta_lib.models import SPAN_COLUMNS, TRACE_COLUMNS, Phase, SpanKind, SpanRecord, TraceRecord

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def at(ms: int) -> datetime:
    return T0 + timedelta(milliseconds=ms)


TRACE = TraceRecord(
    trace_id="tr_1",
    run_id="run_a",
    step_number=3,
    phase=Phase.EVAL,
    datapoint_id="dp_7",
    score=0.75,
    status="completed",
    cost_usd=0.01,
    duration_ms=4200,
    turn_count=2,
    tokens_input=250,
    tokens_output=30,
    model_name="gpt-x",
    env_name="search-env",
    meta={"seed": 1},
)

SPANS: list[dict[str, Any]] = [
    {
        "span_id": "s00",
        "seq": 0,
        "kind": "system",
        "name": "setup",
        "content": "env ready",
        "attributes": {"image": "py311"},
    },
    {"span_id": "s01", "seq": 1, "kind": "message", "role": "system", "content": "Be helpful."},
    {
        "span_id": "s02",
        "seq": 2,
        "kind": "message",
        "role": "user",
        "name": "alice",
        "content": "Capital of France?",
    },
    {
        "span_id": "s03",
        "seq": 3,
        "kind": "llm",
        "name": "chat.completions",
        "model_name": "gpt-x",
        "tokens_input": 100,
        "tokens_output": 20,
        "cost_usd": 0.002,
        "started_at": at(0),
        "ended_at": at(800),
        "attributes": {"finish_reason": "tool_calls", "turn": 0},
    },
    {
        "span_id": "s04",
        "seq": 4,
        "kind": "message",
        "role": "assistant",
        "content": "Let me search.",
        "attributes": {"tool_call_ids": ["call_1", "call_2"]},
    },
    {
        "span_id": "s05",
        "seq": 5,
        "kind": "tool",
        "parent_span_id": "s04",
        "tool_name": "search",
        "tool_arguments": '{"query": "capital of France"}',
        "tool_result": "rate limited",
        "is_error": True,
        "started_at": at(900),
        "ended_at": at(1150),
        "attributes": {"call_id": "call_1", "error_type": "RateLimit"},
    },
    {
        "span_id": "s06",
        "seq": 6,
        "kind": "tool",
        "parent_span_id": "s04",
        "tool_name": "lookup",
        "tool_arguments": '{"city": "Paris", "limit": 1}',
        "tool_result": "Paris is the capital.",
        "attributes": {"call_id": "call_2"},
    },
    {
        # The same result as tool span s06, also recorded as a tool message.
        "span_id": "s07",
        "seq": 7,
        "kind": "message",
        "role": "tool",
        "content": "Paris is the capital.",
        "attributes": {"tool_call_id": "call_2"},
    },
    {
        "span_id": "s08",
        "seq": 8,
        "kind": "llm",
        "name": "chat.completions",
        "model_name": "gpt-x",
        "tokens_input": 150,
        "tokens_output": 10,
        "cost_usd": 0.003,
        "attributes": {"finish_reason": "stop", "turn": 1},
    },
    {"span_id": "s09", "seq": 9, "kind": "message", "role": "assistant", "content": "Paris."},
    {
        "span_id": "s10",
        "seq": 10,
        "kind": "grader",
        "name": "format",
        "attributes": {"score": 1.0, "passed": True},
    },
    {
        "span_id": "s11",
        "seq": 11,
        "kind": "grader",
        "name": "exact_match",
        "content": "Correct, but one failed search.",
        "model_name": "judge-1",
        "tokens_input": 50,
        "tokens_output": 5,
        "cost_usd": 0.0005,
        "attributes": {
            "score": 0.75,
            "passed": True,
            "criteria": [
                {"name": "correct", "score": 1.0, "passed": True, "reason": "Paris"},
                {"name": "efficient", "score": 0.5, "passed": False, "reason": "retry"},
            ],
            "messages": [
                {"role": "system", "content": "Grade the answer."},
                {"role": "assistant", "content": "0.75"},
            ],
        },
    },
    {"span_id": "s12", "seq": 12, "kind": "system", "name": "teardown"},
]

EXPECTED_TEXT = "\n".join(
    [
        "[system] Be helpful.",
        "[user:alice] Capital of France?",
        "[assistant] Let me search.",
        '[tool search(query="capital of France") → error: RateLimit] rate limited',
        '[tool lookup(city="Paris", limit=1)] Paris is the capital.',
        "[assistant] Paris.",
    ]
)


def raw_row(span: SpanRecord) -> tuple[Any, ...]:
    """A span as the query service gets it from ClickHouse: attributes as JSON text."""
    values = span.model_dump()
    values["kind"] = span.kind.value
    values["attributes"] = json.dumps(span.attributes)
    return tuple(values[column] for column in SPAN_COLUMNS)


def raw_rows(spans: list[dict[str, Any]], trace: TraceRecord = TRACE) -> list[tuple[Any, ...]]:
    records = [
        SpanRecord.model_validate({"trace_id": trace.trace_id, "run_id": trace.run_id, **span})
        for span in spans
    ]
    return [raw_row(record) for record in records]


@pytest.fixture(params=["from_spans", "raw_rows"])
def trace(request: pytest.FixtureRequest) -> TraceContext:
    """The reference trace, built both ways: every accessor test runs on both."""
    if request.param == "from_spans":
        return TraceContext.from_spans(TRACE, SPANS)
    return TraceContext(TRACE, raw_rows(SPANS))


# ---- trace properties and spans -----------------------------------------------------------


def test_trace_properties_are_the_trace_row(trace: TraceContext) -> None:
    assert trace.trace is TRACE
    for name in (
        "trace_id",
        "run_id",
        "step_number",
        "phase",
        "datapoint_id",
        "score",
        "status",
        "cost_usd",
        "duration_ms",
        "turn_count",
        "tokens_input",
        "tokens_output",
        "model_name",
        "env_name",
        "meta",
    ):
        assert getattr(trace, name) == getattr(TRACE, name), name
    assert trace.phase is Phase.EVAL
    with pytest.raises(AttributeError):
        trace.score = 1.0  # type: ignore[misc]
    assert repr(trace) == "TraceContext(trace_id='tr_1', spans=13)"


def stored_row(trace: TraceRecord) -> tuple[Any, ...]:
    """``trace`` as the store returns it: TRACE_COLUMNS order, phase as text, meta as JSON."""
    values = trace.model_dump()
    values["phase"] = trace.phase.value
    values["meta"] = json.dumps(trace.meta)
    return tuple(values[name] for name in TRACE_COLUMNS)


def test_a_context_from_a_stored_row_reads_as_the_record() -> None:
    context = TraceContext.from_row(stored_row(TRACE), raw_rows(SPANS))
    # The keys, score and status come from the row: no record built for them.
    assert (context.trace_id, context.run_id, context.step_number) == ("tr_1", "run_a", 3)
    assert context.phase is Phase.EVAL
    assert (context.datapoint_id, context.score, context.status) == ("dp_7", 0.75, "completed")
    assert context._trace is None
    assert repr(context) == "TraceContext(trace_id='tr_1', spans=13)"
    assert not context.has_error
    # Anything else builds the record once, equal to the validated one.
    assert context.meta == {"seed": 1}
    record = context.trace
    assert record == TRACE and context.trace is record
    for name in TraceRecord.model_fields:
        if name in ("project_id", "created_at"):
            continue
        assert getattr(context, name) == getattr(TRACE, name), name
    assert context.tool_error_count == TraceContext(TRACE, raw_rows(SPANS)).tool_error_count


def test_a_stored_row_with_an_unknown_phase_keeps_its_text() -> None:
    row = list(stored_row(TRACE))
    row[TRACE_COLUMNS.index("phase")] = "calibration"
    context = TraceContext.from_row(tuple(row))
    assert context.phase == "calibration"
    assert context.trace.phase == "calibration"


def test_spans_in_seq_order_filtered_by_kind(trace: TraceContext) -> None:
    spans = trace.spans()
    assert [s.seq for s in spans] == list(range(13))
    assert all(isinstance(s, SpanRecord) and s.trace_id == "tr_1" for s in spans)
    assert spans[4].kind is SpanKind.MESSAGE
    assert spans[4].attributes == {"tool_call_ids": ["call_1", "call_2"]}
    assert [s.span_id for s in trace.spans("tool")] == ["s05", "s06"]
    assert [s.span_id for s in trace.spans(SpanKind.GRADER)] == ["s10", "s11"]
    assert [s.span_id for s in trace.spans(["system", "llm"])] == ["s00", "s03", "s08", "s12"]


def test_spans_rejects_an_unknown_kind(trace: TraceContext) -> None:
    with pytest.raises(ValidationError, match=r"unknown span kind\(s\) \['tools'\]"):
        trace.spans("tools")


# ---- messages -----------------------------------------------------------------------------


def test_messages_all_and_by_role(trace: TraceContext) -> None:
    assert [m.span_id for m in trace.messages()] == ["s01", "s02", "s04", "s07", "s09"]
    assert trace.messages(role="user") == [
        Message(role="user", content="Capital of France?", name="alice", seq=2, span_id="s02")
    ]
    assert [m.span_id for m in trace.messages(role=["assistant", "system"])] == [
        "s01",
        "s04",
        "s09",
    ]
    assert trace.messages(role="developer") == []
    issuing = trace.messages(role="assistant")[0]
    assert issuing.tool_call_ids == ["call_1", "call_2"]
    assert trace.messages(role="tool")[0].tool_call_id == "call_2"


def test_role_filter_must_be_strings(trace: TraceContext) -> None:
    with pytest.raises(ValidationError, match="role must be a string or a list of strings"):
        trace.messages(role=3)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="role must be a string or a list of strings"):
        trace.messages(role=["user", None])  # type: ignore[list-item]


def test_accessors_return_fresh_lists(trace: TraceContext) -> None:
    trace.messages().clear()
    trace.tools().clear()
    assert len(trace.messages()) == 5
    assert len(trace.tools()) == 2


# ---- tools --------------------------------------------------------------------------------


def test_tool_calls_carry_arguments_result_and_error(trace: TraceContext) -> None:
    search, lookup = trace.tools()
    assert search == ToolCall(
        call_id="call_1",
        tool_name="search",
        arguments={"query": "capital of France"},
        arguments_text='{"query": "capital of France"}',
        result="rate limited",
        is_error=True,
        error_type="RateLimit",
        duration_ms=250.0,
        seq=5,
        span_id="s05",
        parent_span_id="s04",
    )
    assert lookup.arguments == {"city": "Paris", "limit": 1}
    assert lookup.is_error is False
    assert lookup.error_type is None
    assert lookup.duration_ms is None  # no timestamps


def test_tools_filtered_by_name_and_errors(trace: TraceContext) -> None:
    assert [c.span_id for c in trace.tools(name="lookup")] == ["s06"]
    assert [c.span_id for c in trace.tools(name=["lookup", "search"])] == ["s05", "s06"]
    assert [c.span_id for c in trace.tools(errors_only=True)] == ["s05"]
    assert trace.tools(name="lookup", errors_only=True) == []
    assert trace.tools(name="missing") == []


# ---- grader, llm, system ------------------------------------------------------------------


def test_grader_result_is_the_last_grader_span(trace: TraceContext) -> None:
    assert [g.name for g in trace.grader_results()] == ["format", "exact_match"]
    result = trace.grader_result()
    assert result == GraderResult(
        name="exact_match",
        score=0.75,
        passed=True,
        criteria=[
            GraderCriterion(name="correct", score=1.0, passed=True, reason="Paris"),
            GraderCriterion(name="efficient", score=0.5, passed=False, reason="retry"),
        ],
        feedback="Correct, but one failed search.",
        messages=[
            Message(role="system", content="Grade the answer.", seq=11, span_id="s11"),
            Message(role="assistant", content="0.75", seq=11, span_id="s11"),
        ],
        model_name="judge-1",
        tokens_input=50,
        tokens_output=5,
        cost_usd=0.0005,
        seq=11,
        span_id="s11",
    )
    first = trace.grader_results()[0]
    assert (first.score, first.passed, first.criteria, first.messages) == (1.0, True, [], [])
    assert first.model_name is None
    assert first.feedback == ""


def test_no_grader_span_gives_none() -> None:
    trace = TraceContext.from_spans(TRACE, [s for s in SPANS if s["kind"] != "grader"])
    assert trace.grader_result() is None
    assert trace.grader_results() == []


def test_llm_calls_and_totals(trace: TraceContext) -> None:
    first, second = trace.llm_calls()
    assert first == LLMCall(
        name="chat.completions",
        model_name="gpt-x",
        tokens_input=100,
        tokens_output=20,
        cost_usd=0.002,
        duration_ms=800.0,
        finish_reason="tool_calls",
        turn=0,
        seq=3,
        span_id="s03",
    )
    assert (second.finish_reason, second.turn, second.duration_ms) == ("stop", 1, None)
    assert trace.llm_cost_usd == pytest.approx(0.005)  # the grader's 0.0005 is not included
    assert trace.llm_tokens == (250, 30)


def test_tool_totals(trace: TraceContext) -> None:
    assert trace.tool_call_count == 2
    assert trace.tool_error_count == 1


def test_system_events_by_name(trace: TraceContext) -> None:
    setup, teardown = trace.system_events()
    assert setup == SystemEvent(
        name="setup",
        content="env ready",
        is_error=False,
        attributes={"image": "py311"},
        seq=0,
        span_id="s00",
    )
    assert teardown.attributes == {}
    assert trace.system_events("teardown") == [teardown]
    assert trace.system_events(["setup", "timeout"]) == [setup]
    assert trace.system_events("timeout") == []


def test_has_error_from_status_or_a_system_error() -> None:
    assert TraceContext.from_spans(TRACE, SPANS).has_error is False
    failed = TRACE.model_copy(update={"status": "error"})
    assert TraceContext.from_spans(failed, SPANS).has_error is True
    timeout = {
        "span_id": "s99",
        "seq": 99,
        "kind": "system",
        "name": "timeout",
        "is_error": True,
    }
    assert TraceContext.from_spans(TRACE, [*SPANS, timeout]).has_error is True
    assert TraceContext(TRACE, raw_rows([*SPANS, timeout])).has_error is True


def test_empty_trace() -> None:
    trace = TraceContext(TRACE, [])
    assert trace.spans() == [] and trace.messages() == [] and trace.tools() == []
    assert trace.llm_calls() == [] and trace.system_events() == []
    assert trace.grader_result() is None
    assert (trace.tool_call_count, trace.tool_error_count, trace.llm_cost_usd) == (0, 0, 0.0)
    assert trace.llm_tokens == (0, 0)
    assert len(trace.conversation()) == 0
    assert trace.conversation().to_openai_messages() == []
    assert trace.conversation().to_text() == ""


# ---- conversation -------------------------------------------------------------------------


def test_conversation_interleaves_messages_and_tool_calls(trace: TraceContext) -> None:
    conversation = trace.conversation()
    assert isinstance(conversation, Conversation)
    # s07 (the tool message answering call_2) is left out: tool span s06 carries it.
    assert [turn.span_id for turn in conversation] == ["s01", "s02", "s04", "s05", "s06", "s09"]
    assert [type(turn).__name__ for turn in conversation.turns] == [
        "Message",
        "Message",
        "Message",
        "ToolCall",
        "ToolCall",
        "Message",
    ]
    assert conversation[3] == trace.tools()[0]
    assert len(conversation) == 6
    assert trace.conversation() is conversation  # cached


def test_openai_rendering(trace: TraceContext) -> None:
    assert trace.conversation().to_openai_messages() == [
        {"role": "system", "content": "Be helpful."},
        {"role": "user", "content": "Capital of France?", "name": "alice"},
        {
            "role": "assistant",
            "content": "Let me search.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "search", "arguments": '{"query": "capital of France"}'},
                },
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "lookup", "arguments": '{"city": "Paris", "limit": 1}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "rate limited"},
        {"role": "tool", "tool_call_id": "call_2", "content": "Paris is the capital."},
        {"role": "assistant", "content": "Paris."},
    ]


def test_openai_rendering_links_by_call_id_and_covers_orphan_calls() -> None:
    trace = TraceContext.from_spans(
        {"trace_id": "t", "run_id": "r"},
        [
            {"span_id": "m0", "seq": 0, "kind": "message", "role": "user", "content": "go"},
            # No tool span issued by an assistant message: a synthesized one precedes them.
            {"span_id": "t1", "seq": 1, "kind": "tool", "tool_name": "ls", "tool_result": "a"},
            {"span_id": "t2", "seq": 2, "kind": "tool", "tool_name": "pwd", "tool_result": "/"},
            {
                "span_id": "m3",
                "seq": 3,
                "kind": "message",
                "role": "assistant",
                "content": "",
                "attributes": {"tool_call_ids": ["c9"]},
            },
            # Linked by call_id only (no parent_span_id).
            {
                "span_id": "t4",
                "seq": 4,
                "kind": "tool",
                "tool_name": "cat",
                "tool_arguments": '{"path": "a"}',
                "tool_result": "hello",
                "attributes": {"call_id": "c9"},
            },
            # A tool message with no matching tool span is kept as it is.
            {
                "span_id": "m5",
                "seq": 5,
                "kind": "message",
                "role": "tool",
                "content": "late",
                "attributes": {"tool_call_id": "c8"},
            },
        ],
    )
    assert trace.conversation().to_openai_messages() == [
        {"role": "user", "content": "go"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "t1", "type": "function", "function": {"name": "ls", "arguments": "{}"}},
                {"id": "t2", "type": "function", "function": {"name": "pwd", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "tool_call_id": "t1", "content": "a"},
        {"role": "tool", "tool_call_id": "t2", "content": "/"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "c9",
                    "type": "function",
                    "function": {"name": "cat", "arguments": '{"path": "a"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c9", "content": "hello"},
        {"role": "tool", "tool_call_id": "c8", "content": "late"},
    ]
    assert trace.conversation().to_text() == "\n".join(
        [
            "[user] go",
            "[tool ls()] a",
            "[tool pwd()] /",
            "[assistant]",
            '[tool cat(path="a")] hello',
            "[tool] late",
        ]
    )


def test_text_rendering(trace: TraceContext) -> None:
    assert trace.conversation().to_text() == EXPECTED_TEXT


def test_text_truncation_keeps_start_and_end(trace: TraceContext) -> None:
    conversation = trace.conversation()
    cut = conversation.to_text(max_chars=80)
    assert len(cut) == 80
    head, rest = cut.split("\n[… ", 1)
    omitted_text, tail = rest.split(" characters omitted …]\n", 1)
    assert EXPECTED_TEXT.startswith(head) and EXPECTED_TEXT.endswith(tail)
    assert len(head) + int(omitted_text) + len(tail) == len(EXPECTED_TEXT)
    assert abs(len(head) - len(tail)) <= 1
    assert tail.endswith("[assistant] Paris.")
    assert cut.startswith("[system] Be helpful.")


def test_text_truncation_edges(trace: TraceContext) -> None:
    conversation = trace.conversation()
    assert conversation.to_text(max_chars=len(EXPECTED_TEXT)) == EXPECTED_TEXT
    assert conversation.to_text(max_chars=10) == EXPECTED_TEXT[:10]  # no room for a marker
    assert conversation.to_text(max_chars=0) == ""
    with pytest.raises(ValidationError, match="max_chars must be None or >= 0, got -1"):
        conversation.to_text(max_chars=-1)


# ---- laziness and malformed data ------------------------------------------------------------


def test_construction_from_raw_rows_parses_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[Any] = []
    real = context_module._attributes

    def counting(value: Any) -> dict[str, Any]:
        parsed.append(value)
        return real(value)

    monkeypatch.setattr(context_module, "_attributes", counting)
    rows = raw_rows(SPANS)
    trace = TraceContext(TRACE, rows)
    assert parsed == []
    assert (trace.tool_error_count, trace.llm_tokens, trace.has_error) == (1, (250, 30), False)
    assert parsed == []  # totals read the columns only
    trace.messages()
    assert len(parsed) == 5  # the message spans, nothing else
    trace.messages(role="user")
    trace.conversation()
    assert len(parsed) == 5 + 2  # plus the tool spans; messages came from the cache


def test_invalid_attributes_only_matter_at_access() -> None:
    rows = raw_rows(SPANS)
    index = SPAN_COLUMNS.index("attributes")
    rows[5] = (*rows[5][:index], '{"call_id": "call_1", broken', *rows[5][index + 1 :])
    trace = TraceContext(TRACE, rows)  # no error here
    assert trace.tool_error_count == 1
    search = trace.tools()[0]
    assert search.call_id == "s05"  # falls back to the span id
    assert search.error_type is None
    assert trace.spans("tool")[0].attributes == {UNPARSED_KEY: '{"call_id": "call_1", broken'}


def test_malformed_values_are_handled_gracefully() -> None:
    trace = TraceContext(
        TRACE,
        raw_rows(
            [
                {
                    "span_id": "a",
                    "seq": 0,
                    "kind": "tool",
                    "tool_name": "run",
                    "tool_arguments": "{not json",
                    "attributes": {"call_id": 12},
                },
                {
                    "span_id": "b",
                    "seq": 1,
                    "kind": "tool",
                    "tool_name": "run",
                    "tool_arguments": "[1, 2]",
                },
                {
                    "span_id": "c",
                    "seq": 2,
                    "kind": "grader",
                    "name": "g",
                    "attributes": {
                        "score": "0.5",
                        "passed": "yes",
                        "criteria": [{"name": "x", "score": True}, "junk", {"reason": None}],
                        "messages": "not a list",
                    },
                },
                {
                    "span_id": "d",
                    "seq": 3,
                    "kind": "message",
                    "role": "assistant",
                    "attributes": {"tool_call_ids": "c1"},
                },
            ]
        ),
    )
    first, second = trace.tools()
    assert (first.arguments, first.arguments_text, first.call_id) == ("{not json", "{not json", "a")
    assert second.arguments == "[1, 2]"  # JSON, but not an object: kept as text
    grader = trace.grader_result()
    assert grader is not None
    assert (grader.score, grader.passed, grader.messages) == (0.5, None, [])
    assert grader.criteria == [
        GraderCriterion(name="x", score=None, passed=None, reason=""),
        GraderCriterion(name="", score=None, passed=None, reason=""),
    ]
    assert trace.messages()[0].tool_call_ids == ["c1"]
    assert (
        trace.conversation().to_text() == "[tool run({not json)]\n[tool run([1, 2])]\n[assistant]"
    )


def test_attributes_that_are_not_an_object_are_kept_as_text() -> None:
    rows = raw_rows([{"span_id": "a", "seq": 0, "kind": "system", "name": "setup"}])
    index = SPAN_COLUMNS.index("attributes")
    rows[0] = (*rows[0][:index], "[1, 2]")
    event = TraceContext(TRACE, rows).system_events()[0]
    assert event.attributes == {UNPARSED_KEY: "[1, 2]"}


# ---- the two constructors and the models ---------------------------------------------------


def test_raw_rows_read_the_same_as_from_spans() -> None:
    built = TraceContext.from_spans(TRACE, SPANS)
    raw = TraceContext(TRACE, raw_rows(SPANS))
    assert raw.spans() == built.spans()
    assert raw.messages() == built.messages()
    assert raw.tools() == built.tools()
    assert raw.grader_results() == built.grader_results()
    assert raw.llm_calls() == built.llm_calls()
    assert raw.system_events() == built.system_events()
    assert raw.conversation().turns == built.conversation().turns
    assert raw.conversation().to_openai_messages() == built.conversation().to_openai_messages()
    for name in ("tool_call_count", "tool_error_count", "llm_cost_usd", "llm_tokens", "has_error"):
        assert getattr(raw, name) == getattr(built, name), name


def test_typed_objects_equal_their_validated_copies(trace: TraceContext) -> None:
    """The accessors skip validation for speed; every object must still be a valid model."""
    objects: list[Any] = [
        *trace.spans(),
        *trace.messages(),
        *trace.tools(),
        *trace.grader_results(),
        *trace.llm_calls(),
        *trace.system_events(),
    ]
    for obj in objects:
        copy = type(obj).model_validate(obj.model_dump())
        assert copy == obj
        if not isinstance(obj, SpanRecord):  # from_spans keeps the caller's validated records
            assert copy.model_fields_set == obj.model_fields_set
    with pytest.raises(Exception, match="frozen"):
        trace.tools()[0].result = "changed"  # type: ignore[misc]


def test_context_pickles() -> None:
    trace = TraceContext(TRACE, raw_rows(SPANS))
    trace.messages()
    copy = pickle.loads(pickle.dumps(trace))
    assert copy.trace == TRACE
    assert copy.conversation().to_text() == EXPECTED_TEXT


# ---- from_spans validation ----------------------------------------------------------------


def test_from_spans_sorts_fills_ids_and_accepts_records() -> None:
    spans: list[SpanRecord | dict[str, Any]] = [
        SpanRecord(span_id="b", seq=1, kind=SpanKind.MESSAGE, role="assistant", content="2"),
        {"span_id": "a", "seq": 0, "kind": "message", "role": "user", "content": "1"},
    ]
    trace = TraceContext.from_spans(TRACE, spans)
    assert [(s.span_id, s.trace_id, s.run_id) for s in trace.spans()] == [
        ("a", "tr_1", "run_a"),
        ("b", "tr_1", "run_a"),
    ]


def test_from_spans_validates_the_trace() -> None:
    with pytest.raises(ValidationError, match="trace is invalid: phase"):
        TraceContext.from_spans({"trace_id": "t", "run_id": "r", "phase": "nope"}, [])
    with pytest.raises(ValidationError, match="trace must be a TraceRecord or a dict, got str"):
        TraceContext.from_spans("t", [])  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="use TraceContext.from_spans"):
        TraceContext({"trace_id": "t"}, [])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("spans", "message"),
    [
        ([{"span_id": "x", "seq": 0, "kind": "note"}], r"span 0 \('x'\) is invalid: kind"),
        ([{"seq": 0, "kind": "tool"}], r"span 0 is invalid: span_id: Field required"),
        (
            [{"span_id": "x", "seq": 0, "kind": "tool", "colour": "red"}],
            r"span 0 \('x'\) is invalid: colour: Extra inputs are not permitted",
        ),
        (["x"], "span 0 must be a SpanRecord or a dict, got str"),
        (
            [{"span_id": "x", "seq": 0, "kind": "tool", "trace_id": "other"}],
            r"span 0 \('x'\) has trace_id 'other' but the trace's is 'tr_1'",
        ),
        (
            [
                {"span_id": "x", "seq": 0, "kind": "tool"},
                {"span_id": "x", "seq": 1, "kind": "tool"},
            ],
            "spans 0 and 1 share span_id 'x'",
        ),
    ],
)
def test_from_spans_names_the_bad_span(spans: list[Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        TraceContext.from_spans(TRACE, spans)
