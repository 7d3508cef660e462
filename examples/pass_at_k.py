"""pass@k and reward mean/variance per GRPO group (one datapoint's K rollouts at one step),
then per step (a training curve) and per run.

``python -m examples.pass_at_k [RUN_ID]``
"""

from __future__ import annotations

import math
import sys

from pydantic import BaseModel, Field

from manta import EntityLevel, EntityRef, MapReduceComputation, TraceContext

PASS_THRESHOLD = 0.5


class RolloutReward(BaseModel):
    reward: float = Field(description="grader score, 0 when the rollout has none")
    passed: bool = Field(description="grader verdict (score >= 0.5 when the grader gives none)")
    graded: bool = Field(description="whether a grader scored the rollout")


class GroupStats(BaseModel):
    k: int = Field(description="rollouts in the group")
    passes: int
    pass_at_1: float = Field(description="unbiased pass@1 estimate")
    pass_at_k: float = Field(description="1 if any rollout passed")
    reward_mean: float
    reward_std: float = Field(description="population std of rewards: 0 means no GRPO signal")
    zero_variance: bool = Field(description="all rollouts got the same reward")


class StepPassRates(BaseModel):
    groups: int
    mean_pass_at_1: float
    mean_pass_at_k: float
    all_failed_fraction: float = Field(description="groups where no rollout passed")
    zero_variance_fraction: float = Field(description="groups with no GRPO signal")


class RunPassRates(BaseModel):
    steps: int
    mean_pass_at_1: float
    mean_pass_at_k: float
    zero_variance_fraction: float


def pass_at(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al., 2021)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def map_rollout(trace: TraceContext) -> RolloutReward:
    grade = trace.grader_result()
    if grade is None or grade.score is None:
        return RolloutReward(reward=0.0, passed=False, graded=False)
    passed = grade.passed if grade.passed is not None else grade.score >= PASS_THRESHOLD
    return RolloutReward(reward=grade.score, passed=passed, graded=True)


def reduce_group(entity: EntityRef, rollouts: list[RolloutReward]) -> GroupStats:
    n = len(rollouts)
    if n == 0:
        raise ValueError(f"datapoint {entity.entity_id} has no successful rollouts")
    c = sum(r.passed for r in rollouts)
    rewards = [r.reward for r in rollouts]
    mean = sum(rewards) / n
    std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / n)
    return GroupStats(
        k=n,
        passes=c,
        pass_at_1=pass_at(n, c, 1),
        pass_at_k=pass_at(n, c, n),
        reward_mean=mean,
        reward_std=std,
        zero_variance=std == 0.0,
    )


def reduce_step(entity: EntityRef, groups: list[GroupStats]) -> StepPassRates:
    count = len(groups) or 1
    return StepPassRates(
        groups=len(groups),
        mean_pass_at_1=sum(g.pass_at_1 for g in groups) / count,
        mean_pass_at_k=sum(g.pass_at_k for g in groups) / count,
        all_failed_fraction=sum(g.passes == 0 for g in groups) / count,
        zero_variance_fraction=sum(g.zero_variance for g in groups) / count,
    )


def reduce_run(entity: EntityRef, steps: list[StepPassRates]) -> RunPassRates:
    count = len(steps) or 1
    return RunPassRates(
        steps=len(steps),
        mean_pass_at_1=sum(s.mean_pass_at_1 for s in steps) / count,
        mean_pass_at_k=sum(s.mean_pass_at_k for s in steps) / count,
        zero_variance_fraction=sum(s.zero_variance_fraction for s in steps) / count,
    )


pipeline = (
    MapReduceComputation(
        "Pass at k", project_id="prj_demo", description="pass@k and reward spread per group"
    )
    .add_level(EntityLevel.TRACE, map_rollout, RolloutReward)
    .add_level(EntityLevel.DATAPOINT, reduce_group, GroupStats)
    .add_level(EntityLevel.STEP, reduce_step, StepPassRates)
    .add_level(EntityLevel.RUN, reduce_run, RunPassRates)
)

if __name__ == "__main__":
    from examples._cli import run_example

    run_example(pipeline, sys.argv[1:])
