"""Pipelines whose stored results the results tests read back (importable, so versions are
stable and the pipeline engine can hash their module)."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel

from manta_lib.context import TraceContext
from manta_lib.entities import EntityRef
from manta_lib.models import EntityLevel
from manta_lib.pipeline import MapReduceComputation


class Verdict(StrEnum):
    GOOD = "good"
    BAD = "bad"


class Detail(BaseModel):
    turns: int
    tools: list[str]


class TypedOut(BaseModel):
    tool_errors: int
    score: float | None
    passed: bool
    label: Verdict
    tags: list[str]
    counts: dict[str, int]
    detail: Detail
    either: int | str
    mode: Literal["short", "long"]


class GroupOut(BaseModel):
    rollouts: int
    mean_errors: float


def failing_trace(trace_id: str) -> bool:
    """The traces the typed map fails on (every 7th by id)."""
    return int(trace_id.rsplit("_", 1)[-1]) % 7 == 0


def map_typed(trace: TraceContext) -> TypedOut:
    if failing_trace(trace.trace_id):
        raise ValueError(f"cannot judge {trace.trace_id}")
    tools = [call.tool_name for call in trace.tools()]
    errors = trace.tool_error_count
    return TypedOut(
        tool_errors=errors,
        score=trace.score,
        passed=bool(trace.score is not None and trace.score >= 0.5),
        label=Verdict.BAD if errors else Verdict.GOOD,
        tags=sorted(set(tools)),
        counts={name: tools.count(name) for name in sorted(set(tools))},
        detail=Detail(turns=trace.turn_count, tools=tools[:2]),
        either=errors if errors % 2 else f"even-{errors}",
        mode="long" if trace.turn_count > 4 else "short",
    )


def reduce_group(entity: EntityRef, children: list[TypedOut]) -> GroupOut:
    return GroupOut(
        rollouts=len(children),
        mean_errors=sum(c.tool_errors for c in children) / max(len(children), 1),
    )


def reduce_step(entity: EntityRef, children: list[GroupOut]) -> GroupOut:
    return GroupOut(
        rollouts=sum(c.rollouts for c in children),
        mean_errors=sum(c.mean_errors for c in children) / max(len(children), 1),
    )


typed = (
    MapReduceComputation("Typed results", project_id="prj_demo")
    .add_level(EntityLevel.TRACE, map_typed, TypedOut)
    .add_level(EntityLevel.DATAPOINT, reduce_group, GroupOut)
    .add_level(EntityLevel.STEP, reduce_step, GroupOut)
)


class LabelOut(BaseModel):
    label: str
    errors: int


def map_strict(trace: TraceContext) -> LabelOut:
    errors = trace.tool_error_count
    return LabelOut(label="bad" if errors else "good", errors=errors)


def map_lenient(trace: TraceContext) -> LabelOut:
    errors = trace.tool_error_count
    return LabelOut(label="bad" if errors > 1 else "good", errors=max(errors - 1, 0))


strict = MapReduceComputation("Strict labels", project_id="prj_demo").add_level(
    EntityLevel.TRACE, map_strict, LabelOut
)
lenient = MapReduceComputation("Lenient labels", project_id="prj_demo").add_level(
    EntityLevel.TRACE, map_lenient, LabelOut
)


class EvolvingV1(BaseModel):
    errors: int
    label: str
    dropped_later: str


class EvolvingV2(BaseModel):
    errors: int
    label: str
    added_later: bool


def map_v1(trace: TraceContext) -> EvolvingV1:
    errors = trace.tool_error_count
    return EvolvingV1(errors=errors, label="bad" if errors else "good", dropped_later="v1")


def map_v2(trace: TraceContext) -> EvolvingV2:
    errors = trace.tool_error_count
    return EvolvingV2(errors=errors * 10, label="bad" if errors > 1 else "good", added_later=True)


evolving_v1 = MapReduceComputation("Evolving", project_id="prj_demo").add_level(
    EntityLevel.TRACE, map_v1, EvolvingV1
)
evolving_v2 = MapReduceComputation("Evolving", project_id="prj_demo").add_level(
    EntityLevel.TRACE, map_v2, EvolvingV2
)


class HistoryOut(BaseModel):
    rollouts: int
    bad: int


def reduce_history(entity: EntityRef, children: list[LabelOut]) -> HistoryOut:
    return HistoryOut(rollouts=len(children), bad=sum(c.label == "bad" for c in children))


# One datapoint over the whole run (all its steps), above the trace level.
history = (
    MapReduceComputation("Datapoint history", project_id="prj_demo")
    .add_level(EntityLevel.TRACE, map_strict, LabelOut)
    .add_level(EntityLevel.DATAPOINT_ACROSS_STEPS, reduce_history, HistoryOut)
)
