"""What the group page shows: a datapoint's rollouts at one step side by side (no queries here).

A GRPO group is read together: one column per rollout (score, status, turns, tool errors, the
final answer), the conversations aligned turn by turn with the turns every rollout shares (the
prompt, usually) collapsed, and a line diff of any two rollouts' final answers and whole
conversations (:mod:`difflib`). Contents stay plain strings: the templates escape them.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from manta_lib.context import Conversation, Message, ToolCall, TraceContext
from manta_lib.explorer.trace_view import Text, text_block

Turn = Message | ToolCall
DIFF_CONTEXT_LINES = 3


@dataclass(frozen=True)
class Rollout:
    """One column of the group: a trace's summary and its final answer."""

    trace_id: str
    score: float | None
    status: str
    turns: int
    tool_errors: int
    final_answer: Text
    label: str  # "#1", "#2", … in the page's order


@dataclass(frozen=True)
class Cell:
    """One turn of one rollout in the aligned conversation (None: the rollout has ended)."""

    role: str
    title: str
    body: Text
    is_error: bool = False


@dataclass(frozen=True)
class DiffLine:
    kind: str  # "add", "del", "ctx" or "hunk"
    text: str


@dataclass
class RolloutDiff:
    """The diff of rollout ``a`` against ``b``: final answers, then whole conversations."""

    a: str
    b: str
    answer: list[DiffLine] = field(default_factory=list)
    conversation: list[DiffLine] = field(default_factory=list)


@dataclass
class GroupView:
    run_id: str
    datapoint_id: str
    step: int
    rollouts: list[Rollout]
    shared: list[Cell]  # the turns every rollout starts with, identical in all
    rows: list[list[Cell | None]]  # the remaining turns: row i holds turn i of each rollout

    @property
    def mean_score(self) -> float | None:
        scores = [r.score for r in self.rollouts if r.score is not None]
        return sum(scores) / len(scores) if scores else None


def turn_text(turn: Turn) -> str:
    """A turn as the transcript line :meth:`Conversation.to_text` writes for it."""
    return Conversation([turn]).to_text()


def final_answer(context: TraceContext) -> str:
    """The last assistant message's content ("" when the rollout has none)."""
    for turn in reversed(context.conversation().turns):
        if isinstance(turn, Message) and turn.role == "assistant" and turn.content:
            return turn.content
    return ""


def _cell(turn: Turn) -> Cell:
    if isinstance(turn, Message):
        label = f"{turn.role}:{turn.name}" if turn.name else turn.role
        return Cell(role=turn.role or "unknown", title=label, body=text_block(turn.content))
    title = f"tool {turn.tool_name}" + (
        f" → error: {turn.error_type}" if turn.is_error and turn.error_type else ""
    )
    return Cell(role="tool", title=title, body=text_block(turn_text(turn)), is_error=turn.is_error)


def build_group_view(
    run_id: str, datapoint_id: str, step: int, contexts: list[TraceContext]
) -> GroupView:
    """The group of ``contexts`` (one datapoint's rollouts at one step), in the given order."""
    conversations = [context.conversation().turns for context in contexts]
    texts = [[turn_text(t) for t in turns] for turns in conversations]
    shared_count = 0
    if len(texts) > 1:
        for column in zip(*texts, strict=False):
            if len(set(column)) != 1:
                break
            shared_count += 1
    rollouts = [
        Rollout(
            trace_id=c.trace_id,
            score=c.score,
            status=c.status,
            turns=c.turn_count,  # the stored count, as the trace list shows it
            tool_errors=c.tool_error_count,
            final_answer=text_block(final_answer(c)),
            label=f"#{i + 1}",
        )
        for i, c in enumerate(contexts)
    ]
    depth = max((len(turns) for turns in conversations), default=0)
    rows = [
        [_cell(turns[i]) if i < len(turns) else None for turns in conversations]
        for i in range(shared_count, depth)
    ]
    shared = [_cell(t) for t in conversations[0][:shared_count]] if shared_count else []
    return GroupView(run_id, datapoint_id, step, rollouts, shared, rows)


def diff_rollouts(a: TraceContext, b: TraceContext) -> RolloutDiff:
    """Unified line diffs of ``a`` → ``b``: their final answers and whole transcripts."""
    return RolloutDiff(
        a=a.trace_id,
        b=b.trace_id,
        answer=_diff(final_answer(a), final_answer(b), a.trace_id, b.trace_id),
        conversation=_diff(
            a.conversation().to_text(), b.conversation().to_text(), a.trace_id, b.trace_id
        ),
    )


def _diff(old: str, new: str, old_name: str, new_name: str) -> list[DiffLine]:
    lines = difflib.unified_diff(
        old.splitlines(),
        new.splitlines(),
        fromfile=old_name,
        tofile=new_name,
        n=DIFF_CONTEXT_LINES,
        lineterm="",
    )
    out: list[DiffLine] = []
    for line in lines:
        if line.startswith(("---", "+++")):
            continue
        if line.startswith("@@"):
            out.append(DiffLine("hunk", line))
        elif line.startswith("+"):
            out.append(DiffLine("add", line[1:]))
        elif line.startswith("-"):
            out.append(DiffLine("del", line[1:]))
        else:
            out.append(DiffLine("ctx", line[1:]))
    return out
