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
ClickHouse rows (a streamed run goes further: ``TraceContext.from_row`` keeps the trace row too,
and builds its :class:`TraceRecord` when something asks for more than its keys, score and
status). Typed objects are built (and attribute JSON parsed) on the first accessor call
that needs them, then cached; no accessor ever queries ClickHouse.

Malformed data never raises from an accessor, because one bad span must not fail a map over a
whole run:

- ``attributes`` that is not a JSON object is exposed as ``{"_unparsed": "<original text>"}``
  and every attribute-derived field takes its default (``call_id`` falls back to the span id,
  ``tool_call_ids`` to ``[]``, a grader ``score`` to ``None`` ...);
- ``tool_arguments`` that is not a JSON object is kept as text in ``ToolCall.arguments``
  (``ToolCall.arguments_text`` always holds the original text; empty text gives ``{}``).
"""

from manta_lib.context.columns import SpanColumns
from manta_lib.context.conversation import Conversation
from manta_lib.context.trace import TraceContext
from manta_lib.context.views import (
    UNPARSED_KEY,
    GraderCriterion,
    GraderResult,
    LLMCall,
    Message,
    SystemEvent,
    ToolCall,
    Turn,
)

__all__ = [
    "UNPARSED_KEY",
    "Conversation",
    "GraderCriterion",
    "GraderResult",
    "LLMCall",
    "Message",
    "SpanColumns",
    "SystemEvent",
    "ToolCall",
    "TraceContext",
    "Turn",
]
