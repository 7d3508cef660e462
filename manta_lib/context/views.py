"""The typed views of spans a :class:`~manta_lib.context.TraceContext` returns: messages,
tool calls, grader results, LLM calls and system events."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

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
