"""What the trace page shows, built from one :class:`TraceContext` (no queries here).

Contents are untrusted text: they stay plain strings (the templates escape them), long ones
are split into a preview and a capped body so a 500-span trace with megabyte tool results
still renders quickly; the full text of any span is one click away as ``text/plain``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from manta_lib.context import GraderResult, LLMCall, Message, SystemEvent, ToolCall, TraceContext
from manta_lib.explorer.charts import Tick, format_number, nice_ticks
from manta_lib.models import SpanRecord

PREVIEW_CHARS = 400
COLLAPSE_CHARS = 1200
COLLAPSE_LINES = 24
BODY_CAP_CHARS = 50_000

KIND_COLORS = {
    "message": "#56B4E9",
    "tool": "#009E73",
    "llm": "#0072B2",
    "grader": "#CC79A7",
    "system": "#999999",
}
ERROR_COLOR = "#D55E00"


@dataclass(frozen=True)
class Text:
    """A content value ready to show: short ones whole, long ones collapsed."""

    preview: str
    body: str
    collapsed: bool
    total_chars: int
    total_lines: int
    cut_chars: int  # characters left out of ``body`` (then the raw span link has them)

    @property
    def empty(self) -> bool:
        return self.total_chars == 0


def text_block(value: str) -> Text:
    """Split ``value`` into what the page shows closed and opened."""
    lines = value.count("\n") + 1 if value else 0
    collapsed = len(value) > COLLAPSE_CHARS or lines > COLLAPSE_LINES
    if not collapsed:
        return Text(value, value, False, len(value), lines, 0)
    preview_lines = "\n".join(value[: PREVIEW_CHARS * 2].split("\n")[:8])
    preview = preview_lines[:PREVIEW_CHARS]
    body = value[:BODY_CAP_CHARS]
    return Text(preview, body, True, len(value), lines, len(value) - len(body))


def pretty_json(value: dict[str, Any] | str) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False, default=str)


@dataclass(frozen=True)
class ChatItem:
    """One bubble: a message, or a tool call with its arguments and result."""

    kind: str  # "message" or "tool"
    seq: int
    span_id: str
    role: str = ""
    name: str = ""
    content: Text | None = None
    tool_name: str = ""
    arguments: Text | None = None
    result: Text | None = None
    is_error: bool = False
    error_type: str | None = None
    duration_ms: float | None = None
    call_id: str = ""


@dataclass(frozen=True)
class TimelineBar:
    x: float
    width: float
    y: float
    color: str
    label: str
    tooltip: str
    seq: int


@dataclass
class Timeline:
    width: int
    height: int
    label_width: int
    bars: list[TimelineBar] = field(default_factory=list)
    ticks: list[Tick] = field(default_factory=list)
    row_height: int = 14
    untimed: int = 0
    untimed_spans: list[SpanRecord] = field(default_factory=list)


@dataclass
class SpanNode:
    """A span in the span tree, with its children in seq order."""

    span: SpanRecord
    label: str
    depth: int
    children: list[SpanNode] = field(default_factory=list)
    duration_ms: float | None = None


@dataclass
class SpanTree:
    """Every span of a trace once: nested under its parent where ``parent_span_id`` names a
    span of the trace, at the top otherwise (a root, or an orphan whose parent is missing)."""

    roots: list[SpanNode]
    order: list[SpanNode]  # depth-first: the order the tree and the waterfall show
    nested: bool  # some span has a parent in the trace

    @property
    def size(self) -> int:
        return len(self.order)


@dataclass(frozen=True)
class Share:
    """One part of a trace's recorded tokens and cost (LLM calls, graders, ...)."""

    label: str
    tokens_input: int
    tokens_output: int
    cost_usd: float | None  # None: one of its spans has no known cost


@dataclass(frozen=True)
class Totals:
    """The trace's own token and cost totals and what they are made of, so the header and the
    per-section totals never disagree without the page saying why."""

    shares: list[Share]
    rest: Share | None  # recorded on the trace but in no span (negative: spans hold more)

    @property
    def explained(self) -> bool:
        return self.rest is None


def _sum_costs(costs: list[float | None]) -> float | None:
    return None if any(c is None for c in costs) else float(sum(c or 0.0 for c in costs))


def build_totals(trace: TraceContext, spans: list[SpanRecord]) -> Totals:
    """Split the trace's recorded tokens and cost by span kind; what no span holds is ``rest``."""
    labels = {"llm": "LLM calls", "grader": "grader"}
    shares: list[Share] = []
    for kind in ("llm", "grader", *sorted({s.kind for s in spans} - {"llm", "grader"})):
        of_kind = [s for s in spans if s.kind == kind]
        used = [s for s in of_kind if s.tokens_input or s.tokens_output or s.cost_usd]
        if not of_kind or (not used and kind != "llm"):
            continue
        shares.append(
            Share(
                labels.get(kind, f"{kind} spans"),
                sum(s.tokens_input for s in of_kind),
                sum(s.tokens_output for s in of_kind),
                _sum_costs([s.cost_usd for s in used]) if used else 0.0,
            )
        )
    rest_in = trace.tokens_input - sum(s.tokens_input for s in shares)
    rest_out = trace.tokens_output - sum(s.tokens_output for s in shares)
    known = [s.cost_usd for s in shares]
    rest_cost: float | None = None
    if trace.cost_usd is not None and all(c is not None for c in known):
        rest_cost = trace.cost_usd - sum(c or 0.0 for c in known)
        if abs(rest_cost) < 1e-9 * max(1.0, abs(trace.cost_usd)):
            rest_cost = 0.0
    cost_differs = rest_cost is not None and rest_cost != 0.0
    rest = None
    if rest_in or rest_out or cost_differs:
        rest = Share("in no span", rest_in, rest_out, rest_cost if cost_differs else None)
    return Totals(shares, rest)


@dataclass
class TraceView:
    context: TraceContext
    chat: list[ChatItem]
    grader: GraderResult | None
    graders: list[GraderResult]
    llm_calls: list[LLMCall]
    llm_totals: dict[str, float | None]
    system_events: list[SystemEvent]
    event_texts: dict[str, Text]
    timeline: Timeline
    tree: SpanTree
    spans: list[SpanRecord]
    span_count: int
    tool_errors: int
    totals: Totals
    message_count: int
    tool_call_count: int


def build_trace_view(context: TraceContext) -> TraceView:
    """Everything the trace page renders, computed once per request."""
    chat = [_chat_item(turn) for turn in context.conversation()]
    llm_calls = context.llm_calls()
    graders = context.grader_results()
    spans = context.spans()
    events = context.system_events()
    tree = build_span_tree(spans)
    return TraceView(
        context=context,
        chat=chat,
        grader=graders[-1] if graders else None,
        graders=graders,
        llm_calls=llm_calls,
        llm_totals={
            "tokens_input": sum(c.tokens_input for c in llm_calls),
            "tokens_output": sum(c.tokens_output for c in llm_calls),
            "cost_usd": _sum_costs([c.cost_usd for c in llm_calls]),
            "duration_ms": sum(c.duration_ms or 0.0 for c in llm_calls),
        },
        system_events=events,
        event_texts={e.span_id: text_block(e.content) for e in events},
        timeline=build_timeline([node.span for node in tree.order], tree),
        tree=tree,
        spans=spans,
        span_count=len(spans),
        tool_errors=context.tool_error_count,
        totals=build_totals(context, spans),
        message_count=sum(1 for item in chat if item.kind == "message"),
        tool_call_count=sum(1 for item in chat if item.kind == "tool"),
    )


def _chat_item(turn: Message | ToolCall) -> ChatItem:
    if isinstance(turn, Message):
        return ChatItem(
            kind="message",
            seq=turn.seq,
            span_id=turn.span_id,
            role=turn.role or "unknown",
            name=turn.name,
            content=text_block(turn.content),
        )
    return ChatItem(
        kind="tool",
        seq=turn.seq,
        span_id=turn.span_id,
        role="tool",
        tool_name=turn.tool_name,
        arguments=text_block(pretty_json(turn.arguments)),
        result=text_block(turn.result),
        is_error=turn.is_error,
        error_type=turn.error_type,
        duration_ms=turn.duration_ms,
        call_id=turn.call_id,
    )


def build_span_tree(spans: list[SpanRecord]) -> SpanTree:
    """The spans as a tree by ``parent_span_id``; every span appears exactly once.

    A span whose parent is not in the trace is a root; a cycle of parents (bad input) is
    broken where it is first met, so its spans are still listed.
    """
    ordered = sorted(spans, key=lambda s: (s.seq, s.span_id))
    ids = {s.span_id for s in ordered}
    children: dict[str, list[SpanRecord]] = {}
    roots: list[SpanRecord] = []
    for span in ordered:
        parent = span.parent_span_id
        if parent and parent != span.span_id and parent in ids:
            children.setdefault(parent, []).append(span)
        else:
            roots.append(span)
    order: list[SpanNode] = []
    seen: set[str] = set()

    def visit(span: SpanRecord, depth: int) -> SpanNode:
        seen.add(span.span_id)
        node = SpanNode(span, _span_label(span), depth, duration_ms=_duration(span))
        order.append(node)
        for child in children.get(span.span_id, []):
            if child.span_id not in seen:
                node.children.append(visit(child, depth + 1))
        return node

    top = [visit(span, 0) for span in roots]
    for span in ordered:  # spans only reachable through a parent cycle
        if span.span_id not in seen:
            top.append(visit(span, 0))
    return SpanTree(roots=top, order=order, nested=any(children.values()))


def _duration(span: SpanRecord) -> float | None:
    if span.started_at is None or span.ended_at is None:
        return None
    return max((span.ended_at - span.started_at).total_seconds() * 1000.0, 0.0)


def build_timeline(
    spans: list[SpanRecord], tree: SpanTree | None = None, width: int = 760
) -> Timeline:
    """One bar per timed span (start to end, or a thin mark for an instant), in the given
    order (the tree's, indented by depth); spans without a start time are counted in
    ``untimed`` and listed by the page, never silently left out."""
    depths = {n.span.span_id: n.depth for n in tree.order} if tree else {}
    label_width = 150
    timed = [s for s in spans if s.started_at is not None]
    timeline = Timeline(width=width, height=0, label_width=label_width)
    timeline.untimed = len(spans) - len(timed)
    timeline.untimed_spans = [s for s in spans if s.started_at is None]
    if not timed:
        return timeline
    start = min(_ms(s.started_at) for s in timed)
    end = max(_ms(s.ended_at or s.started_at) for s in timed)
    span_ms = max(end - start, 1.0)
    plot = width - label_width - 10
    ticks = nice_ticks(0.0, span_ms / 1000.0, target=6)
    timeline.ticks = [
        Tick(round(label_width + t * 1000.0 / span_ms * plot, 2), f"{format_number(t)} s")
        for t in ticks
        if t * 1000.0 <= span_ms * 1.0001
    ]
    for row, span in enumerate(timed):
        begin = _ms(span.started_at) - start
        finish = _ms(span.ended_at or span.started_at) - start
        duration = max(finish - begin, 0.0)
        x = label_width + begin / span_ms * plot
        label = _span_label(span)
        indent = "· " * min(depths.get(span.span_id, 0), 6)
        timeline.bars.append(
            TimelineBar(
                x=round(x, 2),
                width=round(max(duration / span_ms * plot, 1.5), 2),
                y=row * timeline.row_height + 18,
                color=ERROR_COLOR if span.is_error else KIND_COLORS.get(span.kind, "#777"),
                label=(indent + label)[:24],
                tooltip=f"#{span.seq} {label}: {duration:,.0f} ms"
                + (" (error)" if span.is_error else ""),
                seq=span.seq,
            )
        )
    timeline.height = len(timeline.bars) * timeline.row_height + 24
    return timeline


def _span_label(span: SpanRecord) -> str:
    if span.kind == "message":
        return f"{span.role or 'message'}"
    if span.kind == "tool":
        return f"tool {span.tool_name}"
    if span.kind == "llm":
        return f"llm {span.model_name}".strip()
    return f"{span.kind} {span.name}".strip()


def _ms(value: datetime | None) -> float:
    assert value is not None
    return value.timestamp() * 1000.0
