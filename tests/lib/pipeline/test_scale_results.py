"""A persisted run keeps nothing in memory: its result reads the store on demand and equals
what a run that keeps its outputs in memory computes on the same traces."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from manta_lib.context import TraceContext
from manta_lib.demo import seed_demo
from manta_lib.entities import EntityRef
from manta_lib.errors import PipelineDefinitionError
from manta_lib.models import EntityLevel
from manta_lib.pipeline import MapReduceComputation
from manta_lib.pipeline import run as run_module
from manta_lib.pipeline.result import LevelOutputs, RunResult
from manta_lib.store import Store
from tests.lib import pipeline_defs

# Seeded stores or seconds per test: make test runs them, make check leaves them out.
pytestmark = pytest.mark.slow


def _rows(outputs: Any) -> list[tuple[str, Any, str | None]]:
    return sorted(
        (o.entity_id, o.output.model_dump() if o.output is not None else None, o.error)
        for o in outputs
    )


@pytest.fixture
def demo_run(store: Store) -> str:
    seed_demo(store, traces=240, seed=4)
    return str(
        store.rows("SELECT run_id FROM {db}.traces GROUP BY run_id ORDER BY count() DESC")[0][0]
    )


def test_lazy_result_equals_the_in_memory_result(
    store: Store, demo_run: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MANTA_TEST_FAIL_ON", "0001")  # some traces fail, their groups go on
    total = int(
        store.rows("SELECT count() FROM {db}.traces WHERE run_id = {r:String}", {"r": demo_run})[0][
            0
        ]
    )
    in_memory = pipeline_defs.full.run(
        demo_run, mode="local", persist_results=False, limit_traces=total, progress=False
    )
    assert isinstance(in_memory, RunResult) and not in_memory.persisted
    lazy = pipeline_defs.full.run(demo_run, mode="local", progress=False)
    assert isinstance(lazy, RunResult) and lazy.persisted
    assert list(lazy) == list(in_memory)
    for level, outputs in in_memory.items():
        assert isinstance(lazy[level], LevelOutputs)
        assert len(lazy[level]) == len(outputs)
        assert _rows(lazy[level]) == _rows(outputs)
    failed = [o for o in in_memory[EntityLevel.TRACE] if o.error is not None]
    assert failed, "the fixture must produce failures"
    assert lazy.failed()[EntityLevel.TRACE] == len(failed)
    assert lazy.counts()[EntityLevel.TRACE] == total
    summary = lazy.errors(EntityLevel.TRACE)
    assert sum(count for _, count, _ in summary) == len(failed)
    assert {first for _, _, first in summary} <= {o.entity_id for o in failed}
    assert in_memory.errors(EntityLevel.TRACE) == summary  # counted in memory, same answer
    assert in_memory.failed_counts() == lazy.failed_counts()
    with pytest.raises(PipelineDefinitionError, match="did not persist"):
        in_memory.to_pandas(EntityLevel.TRACE)
    frame = lazy.to_pandas(EntityLevel.TRACE)
    assert len(frame) == total
    step_keys = [(o.step_number, o.phase) for o in lazy[EntityLevel.STEP]]
    assert step_keys == sorted(step_keys)  # steps as numbers, then phase
    assert {o.entity_id for o in lazy[EntityLevel.RUN]} == {
        f"{phase}/{demo_run}" for _, phase in step_keys
    }


def test_an_in_memory_run_past_the_limit_is_refused(
    store: Store, demo_run: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(run_module, "IN_MEMORY_TRACE_LIMIT", 10)
    with pytest.raises(PipelineDefinitionError, match="at most 10 traces.*limit_traces=11"):
        pipeline_defs.full.run(
            demo_run, mode="local", persist_results=False, limit_traces=11, progress=False
        )
    result = pipeline_defs.full.run(
        demo_run, mode="local", persist_results=False, limit_traces=10, progress=False
    )
    assert len(result[EntityLevel.TRACE]) == 10


class _Seen(BaseModel):
    """What a reduce was given: its keys and its children, in the order it got them."""

    keys: str
    children: list[str]
    failed: int


def _map_ids(trace: TraceContext) -> pipeline_defs.TraceOut:
    if trace.trace_id.endswith("3"):
        raise RuntimeError("fails on purpose")
    return pipeline_defs.TraceOut(
        tool_errors=trace.step_number, score=trace.score, label=trace.trace_id
    )


def _seen(entity: EntityRef, children: list[BaseModel]) -> _Seen:
    names = [getattr(c, "label", None) or getattr(c, "keys", "?") for c in children]
    return _Seen(
        keys=repr(sorted(entity.keys.items())), children=names, failed=entity.failed_children
    )


across_steps = (
    MapReduceComputation("Test across steps", project_id="prj_test")
    .add_level(EntityLevel.TRACE, _map_ids, pipeline_defs.TraceOut)
    .add_level(EntityLevel.DATAPOINT, _seen, _Seen)
    .add_level(EntityLevel.DATAPOINT_ACROSS_STEPS, _seen, _Seen)
    .add_level(EntityLevel.RUN, _seen, _Seen)
)


def test_groups_read_from_the_store_equal_the_in_memory_groups(store: Store, demo_run: str) -> None:
    """Each reduce gets the same keys and the same children in the same order, whether its
    children are read back from the store group by group or held in memory."""
    steps_per_datapoint = store.rows(
        "SELECT max(n) FROM (SELECT datapoint_id, uniqExact(step_number) AS n "
        "FROM {db}.traces WHERE run_id = {r:String} GROUP BY datapoint_id)",
        {"r": demo_run},
    )[0][0]
    assert steps_per_datapoint > 1, "the fixture must have datapoints at several steps"
    total = int(
        store.rows("SELECT count() FROM {db}.traces WHERE run_id = {r:String}", {"r": demo_run})[0][
            0
        ]
    )
    in_memory = across_steps.run(
        demo_run, mode="local", persist_results=False, limit_traces=total, progress=False
    )
    stored = across_steps.run(demo_run, mode="local", progress=False)
    assert not in_memory.persisted and stored.persisted
    for level in (
        EntityLevel.DATAPOINT,
        EntityLevel.DATAPOINT_ACROSS_STEPS,
        EntityLevel.RUN,
    ):
        got = {o.entity_id: o.output for o in stored[level]}
        assert got == {o.entity_id: o.output for o in in_memory[level]}, level
    assert any(o.output.failed for o in in_memory[EntityLevel.DATAPOINT])  # type: ignore[union-attr]
