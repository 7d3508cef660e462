"""Build OTLP trace requests (JSON dicts and protobuf) for the importer and collector tests."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

START = 1_764_000_000_000_000_000  # ns


def value(v: Any) -> dict[str, Any]:
    if isinstance(v, bool):
        return {"boolValue": v}
    if isinstance(v, int):
        return {"intValue": str(v)}
    if isinstance(v, float):
        return {"doubleValue": v}
    if isinstance(v, list):
        return {"arrayValue": {"values": [value(x) for x in v]}}
    if isinstance(v, dict):
        return {"kvlistValue": {"values": attrs(v)}}
    return {"stringValue": str(v)}


def attrs(d: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"key": k, "value": value(v)} for k, v in d.items()]


def span(
    trace: int,
    index: int,
    name: str,
    attributes: dict[str, Any],
    *,
    parent: int | None = None,
    events: list[tuple[str, dict[str, Any]]] = (),  # type: ignore[assignment]
    error: bool = False,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "traceId": f"{trace:032x}",
        "spanId": f"{trace * 1000 + index + 1:016x}",
        "name": name,
        "kind": 1,
        "startTimeUnixNano": str(START + index * 10_000_000),
        "endTimeUnixNano": str(START + index * 10_000_000 + 5_000_000),
        "attributes": attrs(attributes),
        "events": [
            {"name": n, "timeUnixNano": str(START), "attributes": attrs(a)} for n, a in events
        ],
        "status": {"code": 2, "message": "failed"} if error else {},
    }
    if parent is not None:
        out["parentSpanId"] = f"{trace * 1000 + parent + 1:016x}"
    return out


def request(spans: list[dict[str, Any]], resource: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "resourceSpans": [
            {
                "resource": {"attributes": attrs(resource or {})},
                "scopeSpans": [{"scope": {"name": "test"}, "spans": spans}],
            }
        ]
    }


def to_protobuf(doc: dict[str, Any]) -> bytes:
    """The request as protobuf (OTLP JSON ids are hex, the protobuf JSON mapping's base64)."""
    doc = copy.deepcopy(doc)
    for resource_spans in doc["resourceSpans"]:
        for scope_spans in resource_spans["scopeSpans"]:
            for item in scope_spans["spans"]:
                for key in ("traceId", "spanId", "parentSpanId"):
                    if item.get(key):
                        item[key] = base64.b64encode(bytes.fromhex(item[key])).decode()
    message = trace_service_pb2.ExportTraceServiceRequest()
    json_format.ParseDict(doc, message)
    return message.SerializeToString()


def genai_agent_trace(trace: int, *, step: int = 0) -> list[dict[str, Any]]:
    """An agent trace in the newer GenAI layout: two chat calls and two tool executions."""
    call = {"type": "tool_call", "id": f"c{trace}", "name": "search", "arguments": {"q": "otel"}}
    first_in = [
        {"role": "user", "parts": [{"type": "text", "content": f"task {trace}"}]},
    ]
    first_out = [{"role": "assistant", "parts": [call], "finish_reason": "tool_call"}]
    second_in = [
        *first_in,
        {"role": "assistant", "parts": [call]},
        {
            "role": "tool",
            "parts": [{"type": "tool_call_response", "id": f"c{trace}", "response": "no results"}],
        },
    ]
    second_out = [
        {
            "role": "assistant",
            "parts": [{"type": "text", "content": "done"}],
            "finish_reason": "stop",
        }
    ]
    llm = {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "m",
        "gen_ai.response.model": "m-1",
    }
    return [
        span(
            trace,
            0,
            "invoke_agent",
            {
                "gen_ai.operation.name": "invoke_agent",
                "manta.step": step,
                "manta.datapoint_id": f"dp{trace}",
            },
        ),
        span(
            trace,
            1,
            "chat m",
            {
                **llm,
                "gen_ai.system_instructions": json.dumps([{"type": "text", "content": "be brief"}]),
                "gen_ai.input.messages": json.dumps(first_in),
                "gen_ai.output.messages": json.dumps(first_out),
                "gen_ai.usage.input_tokens": 10,
                "gen_ai.usage.output_tokens": 3,
            },
            parent=0,
        ),
        span(
            trace,
            2,
            "execute_tool search",
            {
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": "search",
                "gen_ai.tool.call.id": f"c{trace}",
                "error.type": "TimeoutError",
                "x.unknown": [1, 2],
            },
            parent=0,
            error=True,
        ),
        span(
            trace,
            3,
            "chat m",
            {
                **llm,
                "gen_ai.system_instructions": json.dumps([{"type": "text", "content": "be brief"}]),
                "gen_ai.input.messages": json.dumps(second_in),
                "gen_ai.output.messages": json.dumps(second_out),
                "gen_ai.usage.input_tokens": 20,
                "gen_ai.usage.output_tokens": 1,
            },
            parent=0,
        ),
    ]


EXPECTED_GENAI_CONVERSATION = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "task {n}"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": "c{n}",
                "type": "function",
                "function": {"name": "search", "arguments": '{"q": "otel"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "c{n}", "content": "no results"},
    {"role": "assistant", "content": "done"},
]


def expected_conversation(n: int) -> list[dict[str, Any]]:
    return json.loads(json.dumps(EXPECTED_GENAI_CONVERSATION).replace("{n}", str(n)))
