"""Hierarchy semantics: who is whose child, group keys, failed-children counts, limits."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from manta import EntityLevel, EntityRef, MapReduceComputation, TraceContext
from manta_lib.errors import PipelineDefinitionError
from manta_lib.store import Store
from tests.lib import pipeline_defs
from tests.lib.builders import hierarchy_run, load_traces, trace_line

# Seeded stores or seconds per test: make test runs them, make check leaves them out.
pytestmark = pytest.mark.slow


@pytest.fixture
def hierarchy(store: Store, tmp_path: Path) -> Store:
    load_traces(store, hierarchy_run(), tmp_path)
    return store


def _by_id(result: dict, level: EntityLevel) -> dict:
    return {o.entity_id: o for o in result[level]}


def test_a_datapoint_at_several_steps_is_one_group_per_step(hierarchy: Store) -> None:
    result = pipeline_defs.full.run("run_h", mode="local", persist_results=False)
    traces = _by_id(result, EntityLevel.TRACE)
    assert len(traces) == 8 and all(o.error is None for o in traces.values())

    datapoints = _by_id(result, EntityLevel.DATAPOINT)
    assert set(datapoints) == {"dp_a@0", "dp_a@1", "dp_b@0", "dp_c@1"}
    assert datapoints["dp_a@0"].output.rollouts == 2  # only step 0's rollouts
    assert datapoints["dp_a@1"].output.step == 1
    assert datapoints["dp_a@0"].output.errors == 1  # tool_errors = k for k in (0, 1)
    assert (datapoints["dp_a@1"].datapoint_id, datapoints["dp_a@1"].step_number) == ("dp_a", 1)

    steps = _by_id(result, EntityLevel.STEP)
    assert set(steps) == {"train/0", "train/1"}
    # step 0 holds the groups dp_a@0 and dp_b@0, each of 2 rollouts of that step only.
    assert steps["train/0"].output.members == ["2", "2"]
    assert steps["train/1"].output.members == ["2", "2"]
    assert steps["train/1"].step_number == 1 and steps["train/1"].datapoint_id is None

    run = _by_id(result, EntityLevel.RUN)["train/run_h"]
    assert run.output.children == 2  # two steps
    assert run.judge == "test_full"
    assert run.judge_version == pipeline_defs.full.judge_version


def test_reduce_sees_only_successful_children_and_the_failed_count(
    hierarchy: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MANTA_TEST_FAIL_ON", "t_dp_a_0_")
    result = pipeline_defs.full.run("run_h", mode="local", persist_results=False)
    failed = [o for o in result[EntityLevel.TRACE] if o.error is not None]
    assert sorted(o.entity_id for o in failed) == ["t_dp_a_0_0", "t_dp_a_0_1"]
    assert failed[0].error == "RuntimeError: cannot analyse t_dp_a_0_0"
    assert failed[0].output is None
    dp_a = _by_id(result, EntityLevel.DATAPOINT)["dp_a@0"]
    assert (dp_a.output.rollouts, dp_a.output.failed) == (0, 2)
    assert _by_id(result, EntityLevel.DATAPOINT)["dp_a@1"].output.failed == 0


def test_levels_can_be_skipped(hierarchy: Store) -> None:
    seen: list[EntityRef] = []

    class Count(BaseModel):
        n: int

    def per_step(entity: EntityRef, children: list[Count]) -> Count:
        seen.append(entity)
        return Count(n=len(children))

    pipeline = (
        MapReduceComputation("Skip levels", project_id="p")
        .add_level(EntityLevel.TRACE, lambda trace: Count(n=1), Count)
        .add_level(EntityLevel.STEP, per_step, Count)
        .add_level(EntityLevel.RUN, lambda entity, children: Count(n=len(children)), Count)
    )
    result = pipeline.run("run_h", mode="local", persist_results=False)
    assert {o.entity_id: o.output.n for o in result[EntityLevel.STEP]} == {
        "train/0": 4,
        "train/1": 4,
    }
    assert result[EntityLevel.RUN][0].output.n == 2
    assert sorted(e.keys["step_number"] for e in seen) == [0, 1]
    assert all(e.level is EntityLevel.STEP and e.run_id == "run_h" for e in seen)


def test_map_may_return_a_dict_and_invalid_outputs_are_errors(hierarchy: Store) -> None:
    class Out(BaseModel):
        score: float

    def mapper(trace: TraceContext) -> dict:
        return {"score": trace.score} if trace.score else {"score": "not a number"}

    pipeline = MapReduceComputation("Dict out", project_id="p").add_level(
        EntityLevel.TRACE, mapper, Out
    )
    result = pipeline.run("run_h", mode="local", persist_results=False)
    ok = [o for o in result[EntityLevel.TRACE] if o.error is None]
    bad = [o for o in result[EntityLevel.TRACE] if o.error is not None]
    assert len(ok) == 4 and all(o.output.score == 1.0 for o in ok)
    assert len(bad) == 4
    assert bad[0].error.startswith("InvalidOutput: Out does not match the schema (score: ")


@pytest.mark.parametrize(
    ("limit", "expected"),
    [
        ({"limit_traces": 3}, ["t_dp_a_0_0", "t_dp_a_0_1", "t_dp_b_0_0"]),
        ({"limit_datapoints": 1}, ["t_dp_a_0_0", "t_dp_a_0_1", "t_dp_a_1_0", "t_dp_a_1_1"]),
        ({"limit_steps": 1}, ["t_dp_a_0_0", "t_dp_a_0_1", "t_dp_b_0_0", "t_dp_b_0_1"]),
    ],
)
def test_limits_pick_the_first_n_in_a_stable_order_and_never_write(
    hierarchy: Store, limit: dict, expected: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    result = pipeline_defs.full.run("run_h", mode="local", **limit)
    assert sorted(o.entity_id for o in result[EntityLevel.TRACE]) == expected
    name, value = next(iter(limit.items()))
    assert f"subset mode ({name}={value}): results are not persisted" in caplog.text
    assert hierarchy.rows("SELECT count() FROM {db}.entity_metadata")[0][0] == 0


def _phased_run(store: Store, tmp_path: Path, *, shared_datapoint: bool = False) -> None:
    """run_p: step 0 has train rollouts of dp_a and eval rollouts of dp_e; step 1 trains dp_a.
    ``shared_datapoint``: the eval rollouts use dp_a too (one datapoint in both phases)."""
    layout = [(0, "train", "dp_a"), (0, "eval", "dp_a" if shared_datapoint else "dp_e")]
    layout.append((1, "train", "dp_a"))
    lines = [
        trace_line(
            f"t_{phase}_{step}_{k}", run_id="run_p", step=step, phase=phase, datapoint=dp,
            score=float(k),
        )
        for step, phase, dp in layout
        for k in range(2)
    ]  # fmt: skip
    load_traces(store, lines, tmp_path)


@pytest.mark.parametrize("persist", [True, False])
def test_step_and_run_entities_are_one_per_phase(
    store: Store, tmp_path: Path, persist: bool
) -> None:
    _phased_run(store, tmp_path)
    result = pipeline_defs.full.run("run_p", mode="local", persist_results=persist)
    steps = _by_id(result, EntityLevel.STEP)
    assert list(steps) == ["eval/0", "train/0", "train/1"]  # step order, then phase
    assert [(o.step_number, o.phase) for o in steps.values()] == [
        (0, "eval"), (0, "train"), (1, "train")
    ]  # fmt: skip
    # Step 0's train value comes from its train group only, never the eval rollouts.
    assert steps["train/0"].output.members == ["2"] and steps["eval/0"].output.members == ["2"]
    runs = _by_id(result, EntityLevel.RUN)
    assert runs["train/run_p"].output.children == 2 and runs["eval/run_p"].output.children == 1
    assert {o.phase for o in runs.values()} == {"train", "eval"}


@pytest.mark.parametrize("persist", [True, False])
def test_a_datapoint_in_two_phases_is_refused_not_mixed(
    store: Store, tmp_path: Path, persist: bool
) -> None:
    _phased_run(store, tmp_path, shared_datapoint=True)
    with pytest.raises(PipelineDefinitionError, match=r"'dp_a@0'.*phases eval and train"):
        pipeline_defs.full.run("run_p", mode="local", persist_results=persist)
