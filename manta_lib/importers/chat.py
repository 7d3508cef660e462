"""OpenAI-style chat messages -> ``message`` and ``tool`` spans (the span conventions).

Shared by the OpenAI-messages importer and the OpenTelemetry importer (which rebuilds the
conversation from the messages its LLM spans carry). The layout is the one
``TraceContext.conversation().to_openai_messages()`` reads back:

- each message is a ``message`` span at its own ``seq`` (``name`` = the message's ``name``);
- an assistant message's ``tool_calls`` become ``tool_call_ids`` on its span, and one ``tool``
  span per call (``parent_span_id`` = the assistant span, ``call_id``, ``tool_arguments`` =
  the arguments text as given);
- a ``tool`` message answering a call fills that call's ``tool_result`` and takes its place in
  the order (the tool span gets the message's ``seq``); a call nobody answered gets an empty
  result, placed after the answered ones of its turn, with ``attributes.no_result = true``;
- a ``tool`` message answering no known call stays a ``message`` span with ``tool_call_id``.

Error rule for a tool result (the only way ``is_error`` becomes true):

1. an explicit flag on the tool message wins: ``is_error`` (a boolean), or a non-empty
   ``error`` key (a string or an object with ``type``/``message``); ``is_error: false``
   means no error whatever the payload;
2. otherwise the content is an error when it parses as a JSON object whose ``error`` key is
   non-empty (``{"error": "not found"}``), or when its text starts with ``Error:``,
   ``ERROR:`` or ``Traceback (most recent call last):``.

``error_type`` is the message's ``error_type``, else the ``type`` of an ``error`` object, else
the exception class on a traceback's last line, else ``"ToolError"``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from manta_lib.importers.base import Problems

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_MESSAGE_KEYS = frozenset({"role", "content", "name", "tool_calls", "tool_call_id"})
_ERROR_PREFIXES = ("Error:", "ERROR:", "Traceback (most recent call last):")
_DEFAULT_ERROR_TYPE = "ToolError"


def content_text(content: Any, where: str) -> tuple[str, list[Any] | None]:
    """The text of a message content (string, null or a list of parts) and the parts list.

    Text parts (``{"type": "text", "text": ...}``, or plain strings) are joined with a newline;
    other parts (images, audio, files) add no text and are kept with the parts list.
    """
    if content is None:
        return "", None
    if isinstance(content, str):
        return content, None
    if isinstance(content, list):
        texts: list[str] = []
        for index, part in enumerate(content):
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict):
                text = part.get("text", part.get("content"))
                if part.get("type", "text") in {"text", "input_text", "output_text"}:
                    if not isinstance(text, str):
                        raise Problems([(f"{where}[{index}].text", "expected a string")])
                    texts.append(text)
            else:
                raise Problems([(f"{where}[{index}]", f"expected a content part, got {part!r}")])
        return "\n".join(texts), content
    raise Problems([(where, f"expected a string, null or a list of parts, got {content!r}")])


def tool_error(message: dict[str, Any], result: str) -> tuple[bool, str | None]:
    """``(is_error, error_type)`` of a tool result message by the documented rule."""
    flag = message.get("is_error")
    if isinstance(flag, bool) and not flag:
        return False, None
    explicit_type = message.get("error_type")
    error = message.get("error")
    if flag is True or (error not in (None, "", False, {})):
        kind = explicit_type or (error.get("type") if isinstance(error, dict) else None)
        return True, str(kind or _DEFAULT_ERROR_TYPE)
    stripped = result.lstrip()
    if stripped.startswith("{"):
        try:
            payload = json.loads(stripped)
        except ValueError:
            payload = None
        if isinstance(payload, dict) and payload.get("error") not in (None, "", False, {}):
            inner = payload["error"]
            kind = explicit_type or (inner.get("type") if isinstance(inner, dict) else None)
            return True, str(kind or _DEFAULT_ERROR_TYPE)
    if stripped.startswith(_ERROR_PREFIXES):
        if stripped.startswith("Traceback"):
            last = stripped.rstrip().splitlines()[-1]
            kind = last.split(":", 1)[0].strip() if ":" in last else ""
            return True, str(explicit_type or kind or _DEFAULT_ERROR_TYPE)
        return True, str(explicit_type or _DEFAULT_ERROR_TYPE)
    return False, None


def _arguments_text(arguments: Any, where: str) -> str:
    if arguments is None:
        return ""
    if isinstance(arguments, str):
        return arguments
    if isinstance(arguments, dict | list):
        return json.dumps(arguments, ensure_ascii=False)
    raise Problems([(where, f"expected JSON text or an object, got {arguments!r}")])


def chat_spans(  # noqa: C901 - one flat branch per OpenAI message field and role
    messages: Sequence[Any],
    trace_id: str,
    *,
    where: str = "messages",
    orphan_tools_as_spans: bool = False,
) -> tuple[list[dict[str, Any]], int]:
    """The spans of a message list and the number of assistant turns; raises Problems.

    ``orphan_tools_as_spans``: a tool message answering no known call becomes a tool span
    (keeping its error status) instead of a message span.
    """
    problems: list[tuple[str, str]] = []
    spans: list[dict[str, Any]] = []
    open_calls: dict[str, dict[str, Any]] = {}  # call id -> its tool span, not yet answered
    turn_calls: list[dict[str, Any]] = []  # the calls of the last assistant turn
    assistant_turns = 0
    seq = 0

    def close_turn() -> None:
        nonlocal seq
        for span in turn_calls:
            open_calls.pop(span["attributes"]["call_id"], None)
            if span["seq"] < 0:
                span["seq"] = seq
                span["attributes"]["no_result"] = True
                seq += 1
                spans.append(span)
        turn_calls.clear()

    for index, message in enumerate(messages):
        at = f"{where}[{index}]"
        if not isinstance(message, dict):
            problems.append((at, f"expected a message object, got {message!r}"))
            continue
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:
            shown = "missing" if role is None else f"{role!r} is not a chat role"
            expected = "system, developer, user, assistant, tool"
            problems.append((f"{at}.role", f"{shown} (expected one of: {expected})"))
            continue
        try:
            text, parts = content_text(message.get("content"), f"{at}.content")
        except Problems as exc:
            problems.extend(exc.problems)
            continue
        attributes = {k: v for k, v in message.items() if k not in _MESSAGE_KEYS}
        if parts is not None:
            attributes["content_parts"] = parts
        name = message.get("name")
        if name is not None and not isinstance(name, str):
            problems.append((f"{at}.name", f"expected a string, got {name!r}"))
            continue
        if role == "tool":
            call_id = message.get("tool_call_id")
            span = open_calls.pop(call_id, None) if isinstance(call_id, str) else None
            if span is not None:
                is_error, error_type = tool_error(message, text)
                span["tool_result"] = text
                span["is_error"] = is_error
                span["seq"] = seq
                if error_type:
                    span["attributes"]["error_type"] = error_type
                span["attributes"].update(attributes)
                spans.append(span)
                seq += 1
                continue
            if orphan_tools_as_spans:
                is_error, error_type = tool_error(message, text)
                if error_type:
                    attributes["error_type"] = error_type
                tool_name = message.get("function") or name or ""
                spans.append(
                    {
                        "span_id": f"{trace_id}:t{index}",
                        "seq": seq,
                        "kind": "tool",
                        "tool_name": str(tool_name),
                        "tool_result": text,
                        "is_error": is_error,
                        "attributes": {
                            "call_id": str(call_id or f"{trace_id}:t{index}"),
                            **attributes,
                        },
                    }
                )
                seq += 1
                continue
            if call_id is not None:
                attributes["tool_call_id"] = str(call_id)
        else:
            close_turn()
        span_id = f"{trace_id}:m{index}"
        span = {
            "span_id": span_id,
            "seq": seq,
            "kind": "message",
            "role": role,
            "content": text,
            "name": name or "",
            "attributes": attributes,
        }
        seq += 1
        spans.append(span)
        if role != "assistant":
            continue
        assistant_turns += 1
        calls = message.get("tool_calls") or []
        if not isinstance(calls, list):
            problems.append((f"{at}.tool_calls", f"expected a list, got {calls!r}"))
            continue
        call_ids: list[str] = []
        for position, call in enumerate(calls):
            call_at = f"{at}.tool_calls[{position}]"
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                problems.append((f"{call_at}.function.name", "missing tool name"))
                continue
            call_id = call.get("id")
            call_id = str(call_id) if call_id else f"call_{index}_{position}"
            try:
                arguments = _arguments_text(function.get("arguments"), f"{call_at}.arguments")
            except Problems as exc:
                problems.extend(exc.problems)
                continue
            extra = {k: v for k, v in call.items() if k not in {"id", "type", "function"}}
            tool_span = {
                "span_id": f"{trace_id}:c{index}.{position}",
                "parent_span_id": span_id,
                "seq": -1,
                "kind": "tool",
                "tool_name": function["name"],
                "tool_arguments": arguments,
                "attributes": {"call_id": call_id, **extra},
            }
            call_ids.append(call_id)
            open_calls[call_id] = tool_span
            turn_calls.append(tool_span)
        if call_ids:
            span["attributes"]["tool_call_ids"] = call_ids
    close_turn()
    if problems:
        raise Problems(problems)
    return spans, assistant_turns
