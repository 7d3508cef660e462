"""A run-level summary: cost, tokens, turns, failures and latency percentiles.

``python -m examples.run_summary [RUN_ID]``
"""

from __future__ import annotations

import sys

from pydantic import BaseModel, Field

from manta import EntityLevel, EntityRef, MapReduceComputation, TraceContext, percentile


class TraceCost(BaseModel):
    status: str
    cost_usd: float | None  # None: the trace's cost is not known
    llm_cost_usd: float | None
    tokens: int
    turns: int
    duration_s: float


class RunSummary(BaseModel):
    traces: int
    failed_traces: int = Field(description="traces whose status is not 'completed'")
    total_cost_usd: float | None = Field(description="None when a trace's cost is unknown")
    traces_without_cost: int
    mean_tokens: float
    mean_turns: float
    duration_p50_s: float
    duration_p95_s: float


def map_cost(trace: TraceContext) -> TraceCost:
    tokens_in, tokens_out = trace.llm_tokens
    return TraceCost(
        status=trace.status,
        cost_usd=trace.cost_usd,
        llm_cost_usd=trace.llm_cost_usd,
        tokens=tokens_in + tokens_out,
        turns=trace.turn_count,
        duration_s=trace.duration_ms / 1000,
    )


def summarise_run(entity: EntityRef, traces: list[TraceCost]) -> RunSummary:
    count = len(traces) or 1
    durations = sorted(t.duration_s for t in traces)
    unknown = sum(t.cost_usd is None for t in traces)  # a partial sum would look like the total
    return RunSummary(
        traces=len(traces),
        failed_traces=sum(t.status != "completed" for t in traces) + entity.failed_children,
        total_cost_usd=None if unknown else round(sum(t.cost_usd or 0.0 for t in traces), 6),
        traces_without_cost=unknown,
        mean_tokens=sum(t.tokens for t in traces) / count,
        mean_turns=sum(t.turns for t in traces) / count,
        duration_p50_s=percentile(durations, 0.50) if durations else 0.0,
        duration_p95_s=percentile(durations, 0.95) if durations else 0.0,
    )


pipeline = (
    MapReduceComputation("Run summary", project_id="prj_demo", description="Cost and latency")
    .add_level(EntityLevel.TRACE, map_cost, TraceCost)
    .add_level(EntityLevel.RUN, summarise_run, RunSummary)
)

if __name__ == "__main__":
    from examples._cli import run_example

    run_example(pipeline, sys.argv[1:])
