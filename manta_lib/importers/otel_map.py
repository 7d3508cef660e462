"""OpenTelemetry GenAI and OpenInference spans of one trace -> one Manta trace object.

Which OTel span becomes what:

- an **LLM call** (``gen_ai.operation.name`` = ``chat`` / ``text_completion`` /
  ``generate_content``, or ``openinference.span.kind`` = ``LLM``) -> an ``llm`` span: model
  (``gen_ai.response.model``, ``gen_ai.request.model``, ``llm.model_name``), tokens
  (``gen_ai.usage.input_tokens``/``output_tokens``, older ``prompt_tokens``/
  ``completion_tokens``, ``llm.token_count.prompt``/``completion``), cost
  (``gen_ai.usage.cost``, ``llm.cost.total``), finish reason, timing;
- its **messages** rebuild the conversation: the newer attribute layout
  (``gen_ai.system_instructions``, ``gen_ai.input.messages``, ``gen_ai.output.messages`` with
  typed ``parts``), the older event layout (``gen_ai.system/user/assistant/tool.message`` and
  ``gen_ai.choice`` span events, or ``gen_ai.content.prompt``/``completion`` events), the
  flattened ``gen_ai.prompt.N.*``/``gen_ai.completion.N.*`` attributes and OpenInference's
  ``llm.input_messages.N.message.*``/``llm.output_messages.N.message.*``. Each call adds the
  input messages the earlier calls had not shown, then its output, so every message is kept
  once; the list becomes message and tool spans like an OpenAI rollout;
- a **tool execution** (``gen_ai.operation.name`` = ``execute_tool`` or OpenInference
  ``TOOL``) completes the tool call with the same id (``gen_ai.tool.call.id``,
  ``tool_call.id``): error from the span status (``error.type`` or the exception event's type
  as ``error_type``), timing, result (``gen_ai.tool.call.result``, ``output.value``) when no
  tool message carried one; a tool execution no message mentions becomes a tool span of its own;
- **any other span** (agent, chain, retriever ...) -> a ``system`` span named after it, its
  status as ``is_error`` and its attributes kept.

Trace keys: ``trace_id`` = the OTel trace id (32 hex digits) unless a span or the resource has
``manta.trace_id``; ``run_id``, ``step_number``, ``datapoint_id``, ``phase``, ``score``,
``project_id`` from ``manta.run_id``, ``manta.step``, ``manta.datapoint_id``, ``manta.phase``,
``manta.score``, ``manta.project_id`` on the root span, any span or the resource (in that
order), unless the options set them; ``model_name`` = the first LLM call's model; tokens and
cost = sums over LLM calls; ``status`` = ``error`` when the root span failed; ``duration_ms``
from the first start to the last end; ``meta.resource`` = the resource attributes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from manta_lib.importers.base import (
    MISSING,
    Hierarchy,
    Problems,
    field_path,
    known_or_estimated_cost,
    no_run_id,
    score_number,
    total_cost,
)
from manta_lib.importers.chat import chat_spans, content_text
from manta_lib.importers.otel_decode import OtelSpan

_LLM_OPERATIONS = frozenset({"chat", "text_completion", "generate_content", "completion"})
_STATUS_ERROR = 2
_EVENT_ROLES = {
    "gen_ai.system.message": "system",
    "gen_ai.user.message": "user",
    "gen_ai.assistant.message": "assistant",
    "gen_ai.tool.message": "tool",
}
_INDEXED = re.compile(r"^(\d+)(?:\.(.*))?$")


# ---- attribute helpers ---------------------------------------------------------------------


def unique_spans(spans: Iterable[OtelSpan]) -> list[OtelSpan]:
    """``spans`` without repeats of a ``(trace_id, span_id)`` (the first copy is kept)."""
    seen: set[tuple[str, str]] = set()
    out: list[OtelSpan] = []
    for span in spans:
        key = (span.trace_id, span.span_id)
        if key not in seen:
            seen.add(key)
            out.append(span)
    return out


def _json(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _first(attrs: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        value = attrs.get(key)
        if value not in (None, ""):
            return value
    return None


def unflatten(attrs: dict[str, Any], prefix: str) -> list[dict[str, Any]]:
    """``prefix.0.a.b = x`` attributes as ``[{"a": {"b": x}}]`` (numeric keys as lists)."""
    root: dict[str, Any] = {}
    start = len(prefix) + 1
    for key, value in attrs.items():
        if key.startswith(prefix + "."):
            node = root
            parts = key[start:].split(".")
            for part in parts[:-1]:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    break
            else:
                node[parts[-1]] = value
    listed: list[dict[str, Any]] = _as_list(root)
    return listed


def _as_list(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    converted = {key: _as_list(value) for key, value in node.items()}
    if converted and all(key.isdigit() for key in converted):
        return [converted[key] for key in sorted(converted, key=int)]
    return converted


# ---- message layouts -> OpenAI-style messages ------------------------------------------------


def _parts_message(message: dict[str, Any]) -> dict[str, Any]:
    """A GenAI ``{"role", "parts": [...]}`` message as an OpenAI-style message."""
    role = message.get("role", "")
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    responses: list[tuple[str, str]] = []
    for part in message.get("parts") or []:
        kind = part.get("type")
        if kind == "text":
            texts.append(str(part.get("content", "")))
        elif kind == "tool_call":
            arguments = part.get("arguments")
            calls.append(
                {
                    "id": part.get("id") or "",
                    "type": "function",
                    "function": {
                        "name": part.get("name", ""),
                        "arguments": arguments
                        if isinstance(arguments, str)
                        else json.dumps(arguments if arguments is not None else {}),
                    },
                }
            )
        elif kind == "tool_call_response":
            response = part.get("response", part.get("result"))
            text = response if isinstance(response, str) else json.dumps(response)
            responses.append((str(part.get("id") or ""), text))
    if responses:
        return {"role": "tool", "tool_call_id": responses[0][0], "content": responses[0][1]}
    out: dict[str, Any] = {"role": role, "content": "\n".join(texts)}
    if calls:
        out["tool_calls"] = calls
    if message.get("name"):
        out["name"] = message["name"]
    return out


def _openai_message(message: Any) -> dict[str, Any] | None:
    """A message of an older layout (OpenAI-like, possibly with JSON-text fields)."""
    message = _json(message)
    if not isinstance(message, dict):
        return None
    if "parts" in message:
        return _parts_message(message)
    out: dict[str, Any] = {"role": message.get("role", ""), "content": message.get("content")}
    if isinstance(out["content"], list):
        out["content"] = content_text(out["content"], "content")[0]
    calls = _json(message.get("tool_calls"))
    if isinstance(calls, list) and calls:
        out["tool_calls"] = [_tool_call(call) for call in calls]
    call_id = message.get("tool_call_id") or message.get("id")
    if call_id and out["role"] == "tool":
        out["tool_call_id"] = str(call_id)
    return out


def _tool_call(call: Any) -> dict[str, Any]:
    call = _json(call) if isinstance(call, str) else call
    function = call.get("function") or {}
    if isinstance(function, str):
        function = {"name": function}
    name = function.get("name") or call.get("name") or ""
    arguments = function.get("arguments", call.get("arguments"))
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments if arguments is not None else {})
    return {
        "id": str(call.get("id") or ""),
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }


def _openinference_messages(attrs: dict[str, Any], prefix: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for item in unflatten(attrs, prefix):
        message = item.get("message", {}) if isinstance(item, dict) else {}
        content = message.get("content")
        if content is None and isinstance(message.get("contents"), list):
            content = "\n".join(
                str((c.get("message_content") or {}).get("text", ""))
                for c in message["contents"]
                if isinstance(c, dict)
            )
        entry: dict[str, Any] = {"role": message.get("role", ""), "content": content}
        calls = message.get("tool_calls")
        if isinstance(calls, list) and calls:
            entry["tool_calls"] = [
                _tool_call(
                    {
                        "id": (c.get("tool_call") or {}).get("id"),
                        "function": (c.get("tool_call") or {}).get("function") or {},
                    }
                )
                for c in calls
                if isinstance(c, dict)
            ]
        if message.get("tool_call_id"):
            entry["tool_call_id"] = str(message["tool_call_id"])
        if message.get("name"):
            entry["name"] = message["name"]
        out.append(entry)
    return out


def llm_messages(span: OtelSpan) -> tuple[list[dict[str, Any]], list[dict[str, Any]], Any]:  # noqa: C901 - one branch per message layout (attributes, events, flattened)
    """(input messages, output messages, finish reason) of an LLM span, whatever the layout."""
    attrs = span.attributes
    finish = _first(attrs, "gen_ai.response.finish_reasons", "llm.finish_reason")
    if isinstance(finish, list):
        finish = finish[0] if finish else None
    if "gen_ai.input.messages" in attrs or "gen_ai.output.messages" in attrs:
        inputs = [_parts_message(m) for m in _json(attrs.get("gen_ai.input.messages")) or []]
        system = _json(attrs.get("gen_ai.system_instructions"))
        if system and not any(m["role"] == "system" for m in inputs):
            parts = system if isinstance(system, list) else [{"type": "text", "content": system}]
            inputs.insert(0, _parts_message({"role": "system", "parts": parts}))
        outputs_raw = _json(attrs.get("gen_ai.output.messages")) or []
        outputs = [_parts_message(m) for m in outputs_raw]
        if outputs_raw and finish is None:
            finish = outputs_raw[0].get("finish_reason")
        return inputs, outputs, finish
    if any(key.startswith("llm.input_messages.") for key in attrs):
        return (
            _openinference_messages(attrs, "llm.input_messages"),
            _openinference_messages(attrs, "llm.output_messages"),
            finish,
        )
    if any(key.startswith("gen_ai.prompt.") for key in attrs):
        inputs = [m for m in map(_openai_message, unflatten(attrs, "gen_ai.prompt")) if m]
        outputs = [m for m in map(_openai_message, unflatten(attrs, "gen_ai.completion")) if m]
        return inputs, outputs, finish
    inputs, outputs = [], []
    for name, _when, event_attrs in span.events:
        if name in _EVENT_ROLES:
            message = {"role": _EVENT_ROLES[name], **event_attrs}
            converted = _openai_message(message)
            if converted:
                inputs.append(converted)
        elif name == "gen_ai.choice":
            message = _json(event_attrs.get("message")) or {}
            if isinstance(message, dict):
                converted = _openai_message({"role": "assistant", **message})
                if converted:
                    outputs.append(converted)
            finish = finish or event_attrs.get("finish_reason")
        elif name == "gen_ai.content.prompt":
            inputs.extend(
                m for m in map(_openai_message, _json(event_attrs.get("gen_ai.prompt")) or []) if m
            )
        elif name == "gen_ai.content.completion":
            outputs.extend(
                m
                for m in map(_openai_message, _json(event_attrs.get("gen_ai.completion")) or [])
                if m
            )
    return inputs, outputs, finish


def _message_key(message: dict[str, Any]) -> tuple[Any, ...]:
    calls = tuple(c.get("id") for c in message.get("tool_calls") or [])
    return (message.get("role"), message.get("content") or "", calls, message.get("tool_call_id"))


# ---- classification --------------------------------------------------------------------------


def _kind(span: OtelSpan) -> str:
    operation = span.attributes.get("gen_ai.operation.name")
    oi_kind = str(span.attributes.get("openinference.span.kind", "")).upper()
    if operation == "execute_tool" or oi_kind == "TOOL":
        return "tool"
    if operation in _LLM_OPERATIONS or oi_kind == "LLM":
        return "llm"
    return "other"


def _time(nanos: int) -> datetime | None:
    if not nanos:
        return None
    return datetime.fromtimestamp(nanos / 1e9, tz=UTC)


def _error_type(span: OtelSpan) -> str | None:
    if span.status_code != _STATUS_ERROR:
        return None
    kind = span.attributes.get("error.type")
    if not kind:
        for name, _when, attrs in span.events:
            if name == "exception" and attrs.get("exception.type"):
                kind = attrs["exception.type"]
                break
    return str(kind or "error")


# ---- one trace -------------------------------------------------------------------------------


def _context(spans: list[OtelSpan]) -> dict[str, Any]:
    """Attributes to read hierarchy keys from: root span, then the other spans, then resource."""
    merged: dict[str, Any] = {}
    for span in sorted(spans, key=lambda s: (bool(s.parent_span_id), s.start_ns)):
        for key, value in span.attributes.items():
            merged.setdefault(key, value)
    resources = {id(span.resource): span.resource for span in spans}  # usually one, shared
    for resource in resources.values():
        for key, value in resource.items():
            merged.setdefault(key, value)
    return merged


def _lookup(context: dict[str, Any], key: str) -> Any:
    value = context.get(key)
    if value is not None or key.split(".", 1)[0] not in context:
        return value  # found whole, or no nested object could hold it (the usual case)
    value = field_path(context, key)
    return None if value is MISSING else value


def trace_from_spans(spans: Iterable[OtelSpan], hierarchy: Hierarchy) -> dict[str, Any]:  # noqa: C901 - one branch per span kind and hierarchy source
    """The trace object of one OTel trace's spans; raises :class:`Problems`.

    A span id seen twice (an exporter's retry, an export repeated in a file) counts once: the
    first copy is kept."""
    ordered = sorted(unique_spans(spans), key=lambda s: (s.start_ns, s.end_ns, s.span_id))
    context = _context(ordered)
    otel_trace_id = ordered[0].trace_id
    trace_id = str(_lookup(context, "manta.trace_id") or otel_trace_id)
    run_id = hierarchy.run_id or _lookup(context, "manta.run_id")
    if not run_id:
        raise no_run_id("the span or resource attribute manta.run_id")
    problems: list[tuple[str, str]] = []
    step: Any = 0
    datapoint: Any = ""
    score: Any = None
    try:
        step = hierarchy.step_value(context, _lookup(context, "manta.step") or 0)
        datapoint = hierarchy.path_value(
            context, "datapoint", _lookup(context, "manta.datapoint_id") or ""
        )
        score = score_number(
            hierarchy.path_value(context, "score", _lookup(context, "manta.score")),
            hierarchy.score or "manta.score",
        )
    except Problems as exc:
        problems.extend(exc.problems)

    conversation: list[dict[str, Any]] = []
    llm_spans: list[dict[str, Any]] = []
    tool_runs: list[OtelSpan] = []
    others: list[OtelSpan] = []
    for span in ordered:
        kind = _kind(span)
        if kind == "tool":
            tool_runs.append(span)
            continue
        if kind == "other":
            others.append(span)
            continue
        inputs, outputs, finish = llm_messages(span)
        shared = 0
        keys = [_message_key(m) for m in conversation]
        for message in inputs:
            if shared < len(keys) and _message_key(message) == keys[shared]:
                shared += 1
            else:
                break
        conversation.extend(inputs[shared:])
        conversation.extend(outputs)
        attrs = span.attributes
        llm_spans.append(
            {
                "kind": "llm",
                "name": span.name,
                "model_name": str(
                    _first(attrs, "gen_ai.response.model", "gen_ai.request.model", "llm.model_name")
                    or ""
                ),
                "tokens_input": _first(
                    attrs,
                    "gen_ai.usage.input_tokens",
                    "gen_ai.usage.prompt_tokens",
                    "llm.token_count.prompt",
                )
                or 0,
                "tokens_output": _first(
                    attrs,
                    "gen_ai.usage.output_tokens",
                    "gen_ai.usage.completion_tokens",
                    "llm.token_count.completion",
                )
                or 0,
                "cost_usd": _first(attrs, "gen_ai.usage.cost", "llm.cost.total"),
                "started_at": _time(span.start_ns),
                "ended_at": _time(span.end_ns),
                "is_error": span.status_code == _STATUS_ERROR,
                "attributes": {
                    "turn": len(llm_spans),
                    "finish_reason": finish,
                    "otel_span_id": span.span_id,
                    "provider": _first(
                        attrs, "gen_ai.provider.name", "gen_ai.system", "llm.provider"
                    ),
                },
            }
        )
    for llm_span in llm_spans:  # no cost attribute: priced by model and tokens, or unknown
        if llm_span["cost_usd"] is None:
            cost, estimated = known_or_estimated_cost(
                None,
                llm_span["model_name"],
                int(llm_span["tokens_input"]),
                int(llm_span["tokens_output"]),
            )
            llm_span["cost_usd"] = cost
            if estimated:
                llm_span["attributes"]["cost_estimated"] = True
    try:
        spans_out, turns = chat_spans(conversation, trace_id)
    except Problems as exc:
        problems.extend(exc.problems)
        spans_out, turns = [], 0
    if problems:
        raise Problems(problems)

    by_call = {s["attributes"]["call_id"]: s for s in spans_out if s["kind"] == "tool"}
    extra: list[dict[str, Any]] = []
    for span in tool_runs:
        attrs = span.attributes
        call_id = _first(attrs, "gen_ai.tool.call.id", "tool_call.id")
        result = _first(attrs, "gen_ai.tool.call.result", "output.value")
        error_type = _error_type(span)
        details = {
            "started_at": _time(span.start_ns),
            "ended_at": _time(span.end_ns),
            "is_error": error_type is not None,
        }
        target = by_call.get(str(call_id)) if call_id else None
        if target is not None:
            target.update(details)
            if not target.get("tool_result") and result is not None:
                target["tool_result"] = result if isinstance(result, str) else json.dumps(result)
            target["attributes"]["otel_span_id"] = span.span_id
            if error_type:
                target["attributes"]["error_type"] = error_type
            continue
        arguments = _first(attrs, "gen_ai.tool.call.arguments", "tool.parameters", "input.value")
        extra.append(
            {
                "kind": "tool",
                "tool_name": str(_first(attrs, "gen_ai.tool.name", "tool.name") or span.name),
                "tool_arguments": arguments
                if isinstance(arguments, str | type(None))
                else json.dumps(arguments),
                "tool_result": result
                if isinstance(result, str | type(None))
                else json.dumps(result),
                **details,
                "attributes": {
                    "call_id": str(call_id or span.span_id),
                    "otel_span_id": span.span_id,
                    **({"error_type": error_type} if error_type else {}),
                },
            }
        )
    for span in others:
        extra.append(
            {
                "kind": "system",
                "name": span.name,
                "content": span.status_message,
                "is_error": span.status_code == _STATUS_ERROR,
                "started_at": _time(span.start_ns),
                "ended_at": _time(span.end_ns),
                "attributes": {"otel_span_id": span.span_id, **span.attributes},
            }
        )
    seq = len(spans_out)
    for index, span_obj in enumerate([*extra, *llm_spans]):
        span_obj["seq"] = seq + index
        span_obj["span_id"] = f"{trace_id}:o{index}"
        spans_out.append(span_obj)

    roots = [s for s in ordered if not s.parent_span_id] or ordered[:1]
    start = min((s.start_ns for s in ordered if s.start_ns), default=0)
    end = max((s.end_ns for s in ordered), default=0)
    resource = ordered[0].resource
    cost_total, cost_estimated = total_cost(llm_spans)
    trace: dict[str, Any] = {
        "trace_id": trace_id,
        "run_id": str(run_id),
        "step_number": step,
        "phase": hierarchy.phase or _lookup(context, "manta.phase") or "train",
        "datapoint_id": str(datapoint),
        "score": score,
        "status": "error" if any(s.status_code == _STATUS_ERROR for s in roots) else "completed",
        "duration_ms": max(0, (end - start) // 1_000_000) if start else 0,
        "turn_count": turns,
        "model_name": next((s["model_name"] for s in llm_spans if s["model_name"]), ""),
        "tokens_input": sum(int(s["tokens_input"]) for s in llm_spans),
        "tokens_output": sum(int(s["tokens_output"]) for s in llm_spans),
        "cost_usd": cost_total,
        "meta": {
            "otel_trace_id": otel_trace_id,
            "resource": resource,
            "otel_spans": len(ordered),
            **({"cost_estimated": True} if cost_estimated else {}),
        },
        "spans": spans_out,
    }
    if start:
        trace["created_at"] = _time(start)
    project = hierarchy.project or _lookup(context, "manta.project_id")
    if project:
        trace["project_id"] = str(project)
    return trace
