"""OTLP JSON and protobuf files: GenAI (both message layouts) and OpenInference spans."""

from __future__ import annotations

import json
from pathlib import Path

from manta_lib import MantaService, import_files, import_records
from manta_lib.importers import detect_format
from manta_lib.store import Store
from tests.lib.importers.otlp_builders import (
    expected_conversation,
    genai_agent_trace,
    request,
    span,
    to_protobuf,
)

RESOURCE = {"service.name": "agent", "manta.run_id": "otel_files"}


def test_genai_json_and_protobuf(store: Store, tmp_path: Path) -> None:
    doc = request(genai_agent_trace(1, step=4) + genai_agent_trace(2, step=5), RESOURCE)
    as_json = tmp_path / "export.json"
    as_json.write_text(json.dumps(doc))
    assert detect_format(as_json) == "otlp"
    report = import_files([as_json], store=store)
    assert report.ok, report.errors
    assert report.traces_loaded == 2
    service = MantaService(store)
    traces = service.get_traces("otel_files", order_by="datapoint_id")
    assert [(t.trace_id, t.step_number, t.datapoint_id) for t in traces] == [
        (f"{1:032x}", 4, "dp1"),
        (f"{2:032x}", 5, "dp2"),
    ]
    assert (traces[0].tokens_input, traces[0].tokens_output, traces[0].model_name) == (30, 4, "m-1")
    assert traces[0].meta["resource"]["service.name"] == "agent"
    for n, context in zip((1, 2), service.load_contexts(traces), strict=True):
        assert context.conversation().to_openai_messages() == expected_conversation(n)
        (tool,) = context.tools()
        assert (tool.is_error, tool.error_type, tool.duration_ms) == (True, "TimeoutError", 5.0)
        assert [c.finish_reason for c in context.llm_calls()] == ["tool_call", "stop"]
        assert [e.name for e in context.system_events()] == ["invoke_agent"]

    # the same spans as protobuf are the same traces: nothing new
    as_proto = tmp_path / "export.pb"
    as_proto.write_bytes(to_protobuf(doc))
    assert detect_format(as_proto) == "otlp"
    again = import_files([as_proto], store=store)
    assert again.ok, again.errors
    assert (again.traces_loaded, again.traces_already_present) == (0, 2)
    # options override the attributes; a protobuf message in memory works too
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

    message = trace_service_pb2.ExportTraceServiceRequest.FromString(to_protobuf(doc))
    moved = import_records([message], store=store, format="otlp", run_id="moved", step=9)
    assert moved.ok and moved.traces_loaded == 2  # a trace is identified by run and trace id
    again = import_records([message], store=store, format="otlp", run_id="moved", step=9)
    assert (again.traces_loaded, again.traces_already_present) == (0, 2)
    other = request(genai_agent_trace(3, step=4), RESOURCE)
    moved = import_records([other], store=store, format="otlp", run_id="moved", step="manta.step")
    assert moved.traces_loaded == 1
    traces = service.get_traces("moved")
    assert {t.run_id for t in traces} == {"moved"}
    assert sorted(t.step_number for t in traces) == [4, 9, 9]


def test_older_event_layout_and_openinference(store: Store, tmp_path: Path) -> None:
    events = [
        ("gen_ai.system.message", {"content": "sys"}),
        ("gen_ai.user.message", {"content": "hello"}),
        (
            "gen_ai.choice",
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": "hi there"},
            },
        ),
    ]
    old = span(
        7,
        0,
        "chat gpt",
        {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": "gpt",
            "gen_ai.usage.prompt_tokens": 5,
            "gen_ai.usage.completion_tokens": 2,
        },
        events=events,
    )
    call = "llm.output_messages.0.message.tool_calls.0.tool_call"
    oi_attrs = {
        "openinference.span.kind": "LLM",
        "llm.model_name": "oi-model",
        "llm.token_count.prompt": 11,
        "llm.token_count.completion": 6,
        "llm.input_messages.0.message.role": "user",
        "llm.input_messages.0.message.content": "weather?",
        "llm.output_messages.0.message.role": "assistant",
        f"{call}.id": "t1",
        f"{call}.function.name": "weather",
        f"{call}.function.arguments": '{"city": "Oslo"}',
        "manta.trace_id": "oi-trace-1",
    }
    oi_tool = {
        "openinference.span.kind": "TOOL",
        "tool.name": "weather",
        "tool_call.id": "t1",
        "output.value": "rain",
    }
    path = tmp_path / "mixed.jsonl"
    path.write_text(
        json.dumps(request([old], RESOURCE))
        + "\n"
        + json.dumps(
            request([span(8, 0, "llm", oi_attrs), span(8, 1, "tool", oi_tool, parent=0)], RESOURCE)
        )
        + "\n"
    )
    report = import_files([path], store=store, format="otlp", phase="prod")
    assert report.ok, report.errors
    service = MantaService(store)
    old_trace = service.get_trace(f"{7:032x}")
    assert old_trace.conversation().to_openai_messages() == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hi there"},
    ]
    assert (old_trace.tokens_input, old_trace.tokens_output, old_trace.phase.value) == (
        5,
        2,
        "prod",
    )
    oi = service.get_trace("oi-trace-1")
    assert oi.conversation().to_openai_messages() == [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "t1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city": "Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "t1", "content": "rain"},
    ]
    assert oi.model_name == "oi-model" and oi.tokens_input == 11


def test_bad_lines_and_missing_run_id(store: Store, tmp_path: Path) -> None:
    good = request(genai_agent_trace(11), RESOURCE)
    short_id = request([{**genai_agent_trace(12)[0], "traceId": "abc"}], RESOURCE)
    no_run = request(genai_agent_trace(13), {"service.name": "x"})
    path = tmp_path / "bad.jsonl"
    path.write_text(
        "\n".join([json.dumps(good), json.dumps(short_id), "{oops", json.dumps(no_run)]) + "\n"
    )
    report = import_files([path], store=store, format="otlp")
    assert report.traces_loaded == 1
    shown = [str(e) for e in report.errors]
    assert shown[0].startswith(
        f"{path}:2: resourceSpans[0].scopeSpans[0].spans[0].traceId: expected 16 bytes"
    )
    assert shown[1].startswith(f"{path}:3: invalid JSON")
    assert shown[2].startswith(f"{path}:4: trace {13:032x}: run_id: no run id: pass --run-id")
    assert "manta.run_id" in shown[2]
