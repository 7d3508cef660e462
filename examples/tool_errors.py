"""Tool-use errors per trace, per datapoint group (one datapoint at one step) and per step.

Each step's values come from that step's rollouts only, so the step table is a training curve.

Run it on the demo data (``make demo`` does): ``python -m examples.tool_errors [RUN_ID]``.
"""

from __future__ import annotations

import sys
from collections import Counter

from pydantic import BaseModel, Field

from manta import EntityLevel, EntityRef, MapReduceComputation, TraceContext


class TraceToolErrors(BaseModel):
    tool_calls: int = Field(description="tool calls in the rollout")
    tool_errors: int = Field(description="tool calls that returned an error")
    failing_tools: list[str] = Field(description="names of the tools that failed")
    score: float | None = Field(description="grader score of the rollout")


class DatapointToolErrors(BaseModel):
    rollouts: int
    error_rate: float = Field(description="tool errors per tool call over the group")
    rollouts_with_errors: int
    mean_score: float | None
    scored_rollouts: int = Field(description="rollouts with a grader score (mean_score's base)")
    failing_tools: dict[str, int] = Field(description="tool name -> failed calls in the group")


class StepToolErrors(BaseModel):
    datapoints: int
    rollouts: int
    mean_score: float | None = Field(description="mean grader score of the step's rollouts")
    mean_error_rate: float
    worst_datapoint_error_rate: float
    top_failing_tool: str | None


def map_trace(trace: TraceContext) -> TraceToolErrors:
    failed = [call.tool_name for call in trace.tools(errors_only=True)]
    return TraceToolErrors(
        tool_calls=trace.tool_call_count,
        tool_errors=len(failed),
        failing_tools=failed,
        score=trace.score,
    )


def reduce_datapoint(entity: EntityRef, rollouts: list[TraceToolErrors]) -> DatapointToolErrors:
    calls = sum(r.tool_calls for r in rollouts)
    errors = sum(r.tool_errors for r in rollouts)
    scores = [r.score for r in rollouts if r.score is not None]
    return DatapointToolErrors(
        rollouts=len(rollouts),
        error_rate=errors / calls if calls else 0.0,
        rollouts_with_errors=sum(1 for r in rollouts if r.tool_errors),
        mean_score=sum(scores) / len(scores) if scores else None,
        scored_rollouts=len(scores),
        failing_tools=dict(Counter(name for r in rollouts for name in r.failing_tools)),
    )


def reduce_step(entity: EntityRef, datapoints: list[DatapointToolErrors]) -> StepToolErrors:
    rates = [d.error_rate for d in datapoints]
    failing: Counter[str] = Counter()
    for datapoint in datapoints:
        failing.update(datapoint.failing_tools)
    # Weighted by the scored rollouts: a rollout without a score is in no group's mean.
    scored = [(d.mean_score, d.scored_rollouts) for d in datapoints if d.mean_score is not None]
    weight = sum(n for _, n in scored)
    return StepToolErrors(
        datapoints=len(datapoints),
        rollouts=sum(d.rollouts for d in datapoints),
        mean_score=sum(s * n for s, n in scored) / weight if weight else None,
        mean_error_rate=sum(rates) / len(rates) if rates else 0.0,
        worst_datapoint_error_rate=max(rates, default=0.0),
        top_failing_tool=failing.most_common(1)[0][0] if failing else None,
    )


pipeline = (
    MapReduceComputation(
        "Tool errors", project_id="prj_demo", description="Tool-call error rates by level"
    )
    .add_level(EntityLevel.TRACE, map_trace, TraceToolErrors)
    .add_level(EntityLevel.DATAPOINT, reduce_datapoint, DatapointToolErrors)
    .add_level(EntityLevel.STEP, reduce_step, StepToolErrors)
)


if __name__ == "__main__":
    from examples._cli import run_example

    run_example(pipeline, sys.argv[1:])
