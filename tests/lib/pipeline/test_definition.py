"""MapReduceComputation: every definition and call-time validation error, by its exact text."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from manta import EntityLevel, MapReduceComputation
from manta_lib.errors import PipelineDefinitionError, QueryError
from manta_lib.store import Store
from tests.lib.builders import load_traces, trace_line


class Out(BaseModel):
    value: int


def map_fn(trace: object) -> Out:
    return Out(value=1)


def reduce_fn(entity: object, children: list[Out]) -> Out:
    return Out(value=len(children))


def test_first_level_must_be_trace() -> None:
    with pytest.raises(PipelineDefinitionError) as excinfo:
        MapReduceComputation("x").add_level(EntityLevel.DATAPOINT, reduce_fn, Out)
    assert str(excinfo.value) == (
        "the first level must be EntityLevel.TRACE (a map function per trace), got "
        "EntityLevel.DATAPOINT"
    )


def test_levels_must_increase() -> None:
    pipeline = (
        MapReduceComputation("x")
        .add_level(EntityLevel.TRACE, map_fn, Out)
        .add_level(EntityLevel.STEP, reduce_fn, Out)
    )
    with pytest.raises(PipelineDefinitionError) as excinfo:
        pipeline.add_level(EntityLevel.DATAPOINT, reduce_fn, Out)
    assert str(excinfo.value) == (
        "levels must be added in increasing order "
        "(TRACE < DATAPOINT < STEP or DATAPOINT_ACROSS_STEPS < RUN): "
        "EntityLevel.DATAPOINT cannot follow EntityLevel.STEP"
    )


def test_a_level_cannot_be_added_twice() -> None:
    pipeline = MapReduceComputation("x").add_level(EntityLevel.TRACE, map_fn, Out)
    with pytest.raises(PipelineDefinitionError) as excinfo:
        pipeline.add_level(EntityLevel.TRACE, map_fn, Out)
    assert str(excinfo.value) == "EntityLevel.TRACE was already added; each level can be added once"


def test_schema_must_be_a_pydantic_model() -> None:
    with pytest.raises(PipelineDefinitionError) as excinfo:
        MapReduceComputation("x").add_level(EntityLevel.TRACE, map_fn, dict)  # type: ignore[arg-type]
    assert str(excinfo.value) == (
        "the output schema of the trace level must be a pydantic BaseModel subclass, "
        "got <class 'dict'>"
    )


def test_map_function_arity_is_checked() -> None:
    def two_args(trace: object, extra: object) -> Out:
        return Out(value=0)

    with pytest.raises(PipelineDefinitionError) as excinfo:
        MapReduceComputation("x").add_level(EntityLevel.TRACE, two_args, Out)
    assert str(excinfo.value) == (
        "test_map_function_arity_is_checked.<locals>.two_args takes 2 required positional "
        "argument(s) but a map function is called with 1; define it as "
        "def map_fn(trace: TraceContext) -> OutputSchema"
    )


def test_reduce_function_arity_is_checked() -> None:
    pipeline = MapReduceComputation("x").add_level(EntityLevel.TRACE, map_fn, Out)
    with pytest.raises(PipelineDefinitionError, match="a reduce function is called with 2"):
        pipeline.add_level(EntityLevel.RUN, map_fn, Out)
    pipeline.add_level(EntityLevel.RUN, lambda entity, children, scale=1: Out(value=0), Out)


def test_unknown_level_name() -> None:
    with pytest.raises(PipelineDefinitionError, match="level 'rollout' is not an entity level"):
        MapReduceComputation("x").add_level("rollout", map_fn, Out)


def test_judge_name_is_a_slug_of_the_pipeline_name() -> None:
    assert MapReduceComputation("Failure analysis v2!", project_id="p").judge == (
        "failure_analysis_v2"
    )


@pytest.fixture
def one_run(store: Store, tmp_path: Path) -> Store:
    load_traces(store, [trace_line("t1", run_id="run_alpha"), trace_line("t2")], tmp_path)
    return store


def _pipeline() -> MapReduceComputation:
    return MapReduceComputation("x", project_id="p").add_level(EntityLevel.TRACE, map_fn, Out)


def test_only_one_limit_at_a_time(one_run: Store) -> None:
    with pytest.raises(PipelineDefinitionError) as excinfo:
        _pipeline().run("run_a", mode="local", limit_traces=1, limit_steps=1)
    assert str(excinfo.value) == (
        "only one limit can be set at a time, got limit_steps, limit_traces; keep one of them"
    )


@pytest.mark.parametrize("value", [0, -3])
def test_limit_must_be_positive(one_run: Store, value: int) -> None:
    with pytest.raises(PipelineDefinitionError) as excinfo:
        _pipeline().run("run_a", mode="local", limit_datapoints=value)
    assert str(excinfo.value) == f"limit_datapoints must be a positive integer, got {value}"


def test_unknown_run_lists_existing_runs_closest_first(one_run: Store) -> None:
    with pytest.raises(QueryError) as excinfo:
        _pipeline().run("run_alpah", mode="local")
    assert str(excinfo.value) == (
        "run_id 'run_alpah' not found; existing runs (closest first): run_alpha, run_a"
    )


def test_unknown_mode(one_run: Store) -> None:
    with pytest.raises(
        PipelineDefinitionError, match="mode must be 'local', 'processes' or 'modal', got 'cloud'"
    ):
        _pipeline().run("run_a", mode="cloud")  # type: ignore[arg-type]


def test_missing_pip_install_package_is_named_with_the_pip_command(one_run: Store) -> None:
    pipeline = MapReduceComputation(
        "x", project_id="p", pip_install=["pydantic", "surely-not-installed-pkg>=1.0"]
    ).add_level(EntityLevel.TRACE, map_fn, Out)
    with pytest.raises(PipelineDefinitionError) as excinfo:
        pipeline.run("run_a", mode="local")
    assert str(excinfo.value) == (
        "pip_install package(s) not installed in this environment: surely-not-installed-pkg>=1.0. "
        "Local mode does not install packages; run `pip install 'surely-not-installed-pkg>=1.0'` "
        "first"
    )


def test_pipeline_without_levels_cannot_run() -> None:
    with pytest.raises(PipelineDefinitionError, match="has no levels"):
        MapReduceComputation("empty").run("run_a", mode="local")
