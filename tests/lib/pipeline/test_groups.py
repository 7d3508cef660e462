"""Per-step values come from that step's traces only; GRPO groups are (datapoint, step) entities.

Reference figures are computed directly in SQL from ``traces`` and compared with what the
pipeline's levels produce on the demo data.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydantic import BaseModel

from manta import EntityLevel, EntityRef, MapReduceComputation, TraceContext
from manta_lib.demo import seed_demo
from manta_lib.errors import PipelineDefinitionError
from manta_lib.settings import MantaSettings
from manta_lib.store import Store

# Seeded stores or seconds per test: make test runs them, make check leaves them out.
pytestmark = pytest.mark.slow

PASS = 0.5
TRAIN_RUN = "run_grpo_math_v1"
EVAL_RUN = "run_eval_gpt4o_mini_math"


class Rollout(BaseModel):
    passed: int


class Counts(BaseModel):
    passes: int
    n: int
    pass_rate: float


class Group(BaseModel):
    passes: int
    n: int
    pass_at_k: float
    all_failed: bool


def map_rollout(trace: TraceContext) -> Rollout:
    return Rollout(passed=int(trace.score is not None and trace.score >= PASS))


def count_rollouts(entity: EntityRef, rollouts: list[Rollout]) -> Counts:
    passes = sum(r.passed for r in rollouts)
    return Counts(passes=passes, n=len(rollouts), pass_rate=passes / len(rollouts))


def sum_counts(entity: EntityRef, counts: list[Counts]) -> Counts:
    passes, n = sum(c.passes for c in counts), sum(c.n for c in counts)
    return Counts(passes=passes, n=n, pass_rate=passes / n)


def group_stats(entity: EntityRef, rollouts: list[Rollout]) -> Group:
    passes = sum(r.passed for r in rollouts)
    return Group(
        passes=passes, n=len(rollouts), pass_at_k=float(passes > 0), all_failed=passes == 0
    )


pass_rate_by_step = (
    MapReduceComputation("Groups pass rate")
    .add_level(EntityLevel.TRACE, map_rollout, Rollout)
    .add_level(EntityLevel.DATAPOINT, count_rollouts, Counts)
    .add_level(EntityLevel.STEP, sum_counts, Counts)
)
pass_rate_traces_to_step = (
    MapReduceComputation("Groups pass rate direct")
    .add_level(EntityLevel.TRACE, map_rollout, Rollout)
    .add_level(EntityLevel.STEP, count_rollouts, Counts)
)
pass_at_k = (
    MapReduceComputation("Groups pass at k")
    .add_level(EntityLevel.TRACE, map_rollout, Rollout)
    .add_level(EntityLevel.DATAPOINT, group_stats, Group)
)
across_steps = (
    MapReduceComputation("Groups across steps")
    .add_level(EntityLevel.TRACE, map_rollout, Rollout)
    .add_level(EntityLevel.DATAPOINT_ACROSS_STEPS, count_rollouts, Counts)
)
groups_then_across = (
    MapReduceComputation("Groups then across")
    .add_level(EntityLevel.TRACE, map_rollout, Rollout)
    .add_level(EntityLevel.DATAPOINT, count_rollouts, Counts)
    .add_level(EntityLevel.DATAPOINT_ACROSS_STEPS, sum_counts, Counts)
)


@pytest.fixture
def demo(settings: MantaSettings) -> Iterator[MantaSettings]:
    with Store.open(settings) as store:
        seed_demo(store, traces=1500)
    yield settings


def _sql(settings: MantaSettings, sql: str, run_id: str) -> list[tuple]:
    with Store.open(settings) as store:
        return [tuple(row) for row in store.rows(sql, {"run": run_id})]


def _outputs(result: dict, level: EntityLevel) -> dict[str, BaseModel]:
    assert all(o.error is None for o in result[level]), [o.error for o in result[level]]
    return {o.entity_id: o.output for o in result[level]}


@pytest.mark.parametrize("pipeline", [pass_rate_by_step, pass_rate_traces_to_step])
def test_step_curve_equals_the_per_step_pass_rate_in_sql(
    demo: MantaSettings, pipeline: MapReduceComputation
) -> None:
    # One value per (step, phase): the demo run evaluates every 4th step, and those eval
    # rollouts are a curve of their own, never averaged into the train step.
    expected = {
        f"{phase}/{step}": (passes, n)
        for step, phase, passes, n in _sql(
            demo,
            "SELECT step_number, toString(phase), countIf(score >= 0.5), count() "
            "FROM {db}.traces WHERE run_id = {run:String} GROUP BY step_number, phase",
            TRAIN_RUN,
        )
    }
    assert {key.split("/")[0] for key in expected} == {"train", "eval"}
    result = pipeline.run(TRAIN_RUN, mode="local")
    steps = _outputs(result, EntityLevel.STEP)
    assert {sid: (s.passes, s.n) for sid, s in steps.items()} == expected
    for outcome in result[EntityLevel.STEP]:
        assert outcome.entity_id == f"{outcome.phase}/{outcome.step_number}"
    # The stored level streams in step order (10 after 9, not after 1), phases apart.
    order = [(o.step_number, o.phase) for o in result[EntityLevel.STEP]]
    assert order == sorted(order)
    curve = [steps[f"train/{s}"].pass_rate for s, p in order if p == "train"]
    assert len(set(curve)) > len(curve) // 2, "a flat curve means steps share values"
    assert curve[-1] > curve[0]  # the demo policy learns


def test_pass_at_k_per_group_equals_a_direct_computation(demo: MantaSettings) -> None:
    expected = {
        f"{dp}@{step}": (passes, n)
        for dp, step, passes, n in _sql(
            demo,
            "SELECT datapoint_id, step_number, countIf(score >= 0.5), count() "
            "FROM {db}.traces WHERE run_id = {run:String} GROUP BY datapoint_id, step_number",
            TRAIN_RUN,
        )
    }
    result = pass_at_k.run(TRAIN_RUN, mode="local")
    groups = _outputs(result, EntityLevel.DATAPOINT)
    assert {gid: (g.passes, g.n) for gid, g in groups.items()} == expected
    assert {gid: g.pass_at_k for gid, g in groups.items()} == {
        gid: float(p > 0) for gid, (p, _) in expected.items()
    }
    assert any(g.all_failed for g in groups.values())
    assert not all(g.pass_at_k == 1.0 for g in groups.values())
    for outcome in result[EntityLevel.DATAPOINT]:
        datapoint_id, step = outcome.entity_id.rsplit("@", 1)
        assert (outcome.datapoint_id, outcome.step_number) == (datapoint_id, int(step))


def test_a_datapoint_across_steps_covers_all_its_rollouts(demo: MantaSettings) -> None:
    expected = {
        dp: (passes, n)
        for dp, passes, n in _sql(
            demo,
            "SELECT datapoint_id, countIf(score >= 0.5), count() FROM {db}.traces "
            "WHERE run_id = {run:String} GROUP BY datapoint_id",
            TRAIN_RUN,
        )
    }
    for pipeline in (across_steps, groups_then_across):
        result = pipeline.run(TRAIN_RUN, mode="local", persist_results=False)
        across = _outputs(result, EntityLevel.DATAPOINT_ACROSS_STEPS)
        assert {dp: (c.passes, c.n) for dp, c in across.items()} == expected


def test_one_eval_step_gives_the_same_datapoint_values_both_ways(demo: MantaSettings) -> None:
    # One checkpoint of the eval run: a datapoint's group at that step is all of its rollouts.
    groups = _outputs(
        pass_rate_by_step.run(EVAL_RUN, mode="local", persist_results=False, limit_steps=1),
        EntityLevel.DATAPOINT,
    )
    across = _outputs(
        across_steps.run(EVAL_RUN, mode="local", persist_results=False, limit_steps=1),
        EntityLevel.DATAPOINT_ACROSS_STEPS,
    )
    assert len(groups) == len(across) > 0
    assert {gid.rsplit("@", 1)[0]: g for gid, g in groups.items()} == across


def test_the_step_level_cannot_be_fed_by_datapoints_across_steps() -> None:
    pipeline = (
        MapReduceComputation("Bad order")
        .add_level(EntityLevel.TRACE, map_rollout, Rollout)
        .add_level(EntityLevel.DATAPOINT_ACROSS_STEPS, count_rollouts, Counts)
    )
    with pytest.raises(PipelineDefinitionError, match="STEP"):
        pipeline.add_level(EntityLevel.STEP, sum_counts, Counts)
    pipeline.add_level(EntityLevel.RUN, sum_counts, Counts)  # a run over datapoints is fine


def test_the_tool_errors_example_step_score_equals_the_sql_mean(demo: MantaSettings) -> None:
    from examples import tool_errors

    expected = {
        f"{phase}/{step}": mean
        for step, phase, mean in _sql(
            demo,
            "SELECT step_number, toString(phase), avg(score) FROM {db}.traces "
            "WHERE run_id = {run:String} GROUP BY step_number, phase",
            TRAIN_RUN,
        )
    }
    result = tool_errors.pipeline.run(TRAIN_RUN, mode="local", persist_results=False)
    steps = _outputs(result, EntityLevel.STEP)
    assert set(steps) == set(expected)
    for step, output in steps.items():
        assert output.mean_score == pytest.approx(expected[step], abs=1e-9), step
