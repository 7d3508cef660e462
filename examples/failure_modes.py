"""Failure modes by an LLM judge: a category and a short rationale per failed rollout, then the
distribution per datapoint group (one datapoint's rollouts at one step), per step and for the run.

Runs against any OpenAI-compatible server (OpenAI, vLLM, Ollama, OpenRouter ...)::

    OPENAI_API_KEY=sk-... python -m examples.failure_modes [RUN_ID]
    OPENAI_BASE_URL=http://localhost:8000/v1 MANTA_JUDGE_MODEL=qwen2.5-7b-instruct \\
        MANTA_LLM_PRICES='{"qwen2.5-7b-instruct": {"input_per_mtok": 0, "output_per_mtok": 0}}' \\
        python -m examples.failure_modes

Rollouts that passed are labelled without a call (a judge is for what the grader cannot say);
answers are cached in the store, so running it again costs nothing.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from typing import Literal

from pydantic import BaseModel, Field

from manta import EntityLevel, EntityRef, MapReduceComputation, TraceContext
from manta_lib.llm import LLMJudge

Category = Literal[
    "passed", "tool_misuse", "reasoning_error", "wrong_final_answer", "gave_up", "looping", "other"
]
CATEGORIES: tuple[str, ...] = Category.__args__  # type: ignore[attr-defined]
MAX_PROMPT_CHARS = 12_000

SYSTEM = """You review one rollout of an AI agent that failed its task.
Pick the single category that best explains the failure:
- tool_misuse: wrong tool, bad arguments, or ignored a tool error
- reasoning_error: a wrong step of reasoning or computation
- wrong_final_answer: reasoning looked fine but the final answer is wrong or malformed
- gave_up: stopped without an answer or asked the user to do it
- looping: repeated the same action without progress
- other: none of the above
Give a rationale of one or two sentences that cites what the agent did."""


class FailureVerdict(BaseModel):
    """What the judge answers (sent to the model as a strict JSON schema)."""

    category: Literal[
        "tool_misuse", "reasoning_error", "wrong_final_answer", "gave_up", "looping", "other"
    ]
    rationale: str = Field(description="one or two sentences")


class TraceFailureMode(BaseModel):
    category: Category = Field(description="failure mode of the rollout ('passed' if it passed)")
    rationale: str = Field(description="the judge's short reason ('' when passed)")
    judged: bool = Field(description="whether an LLM call (or its cached answer) decided it")
    step: int = Field(description="training step of the rollout")
    judge_cost_usd: float | None = Field(
        description="what the judge's answer cost when it was made (None: model has no price)"
    )


class FailureDistribution(BaseModel):
    rollouts: int
    failed: int
    counts: dict[str, int] = Field(description="category -> rollouts")
    failure_share: dict[str, float] = Field(description="category -> share of failed rollouts")
    top_failure: str | None = Field(description="most frequent failure category")
    judge_cost_usd: float | None = Field(description="sum over the rollouts (None: unpriced)")


judge = LLMJudge(
    os.environ.get("MANTA_JUDGE_MODEL", "gpt-4o-mini"),
    FailureVerdict,
    system=SYSTEM,
    temperature=0.0,
    max_tokens=200,  # bounds each call's cost, so max_cost_usd is never crossed
)


def passed(trace: TraceContext) -> bool:
    grade = trace.grader_result()
    if grade is not None and grade.passed is not None:
        return bool(grade.passed) and not trace.has_error
    return trace.score is not None and trace.score >= 0.5 and not trace.has_error


def map_trace(trace: TraceContext) -> TraceFailureMode:
    step = trace.step_number
    if passed(trace):
        return TraceFailureMode(
            category="passed", rationale="", judged=False, step=step, judge_cost_usd=0.0
        )
    answer = judge.complete(trace.conversation().to_text(max_chars=MAX_PROMPT_CHARS))
    return TraceFailureMode(
        category=answer.value.category,
        rationale=answer.value.rationale,
        judged=True,
        step=step,
        judge_cost_usd=answer.cost_usd,
    )


def total_cost(costs: list[float | None]) -> float | None:
    """The sum, or None when any part is unknown (an unknown cost is never counted as 0)."""
    known = [cost for cost in costs if cost is not None]
    return sum(known) if len(known) == len(costs) else None


def _ordered(counts: Counter[str]) -> dict[str, int]:
    return {name: counts[name] for name in CATEGORIES if counts[name]}


def _top_failure(counts: Counter[str]) -> str | None:
    failures = Counter({name: n for name, n in counts.items() if name != "passed"})
    return failures.most_common(1)[0][0] if failures else None


def distribution(rollouts: int, counts: Counter[str], cost: float | None) -> FailureDistribution:
    failed = rollouts - counts["passed"]
    return FailureDistribution(
        rollouts=rollouts,
        failed=failed,
        counts=_ordered(counts),
        failure_share={
            name: counts[name] / failed for name in CATEGORIES if name != "passed" and counts[name]
        },
        top_failure=_top_failure(counts),
        judge_cost_usd=cost,
    )


def reduce_group(entity: EntityRef, rollouts: list[TraceFailureMode]) -> FailureDistribution:
    """One datapoint's rollouts at one step (a GRPO group)."""
    counts = Counter(r.category for r in rollouts)
    return distribution(len(rollouts), counts, total_cost([r.judge_cost_usd for r in rollouts]))


def reduce_up(entity: EntityRef, children: list[FailureDistribution]) -> FailureDistribution:
    """A step from its groups, the run from its steps: every rollout is counted once."""
    counts: Counter[str] = Counter()
    for child in children:
        counts.update(child.counts)
    return distribution(
        sum(child.rollouts for child in children),
        counts,
        total_cost([child.judge_cost_usd for child in children]),
    )


pipeline = (
    MapReduceComputation(
        "Failure modes",
        project_id="prj_demo",
        description="LLM-judged failure mode per rollout, distributions per group, step and run",
        pip_install=["openai", "genai-prices"],
    )
    .add_level(EntityLevel.TRACE, map_trace, TraceFailureMode, uses_llm=True)
    .add_level(EntityLevel.DATAPOINT, reduce_group, FailureDistribution)
    .add_level(EntityLevel.STEP, reduce_up, FailureDistribution)
    .add_level(EntityLevel.RUN, reduce_up, FailureDistribution)
)


if __name__ == "__main__":
    from examples._cli import run_example

    run_example(pipeline, sys.argv[1:])
