"""A trace's turns in order (:class:`Conversation`): as text, or as OpenAI chat messages."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from manta_lib.context.views import Message, ToolCall, Turn
from manta_lib.errors import ValidationError

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
