"""A persisted run keeps nothing in memory: its result reads the store on demand and equals
what a run that keeps its outputs in memory computes on the same traces."""

from __future__ import annotations

from typing import Any

import pytest

from manta_lib.demo import seed_demo
from manta_lib.errors import PipelineDefinitionError
from manta_lib.models import EntityLevel
from manta_lib.pipeline import run as run_module
from manta_lib.pipeline.result import LevelOutputs, RunResult
from manta_lib.store import Store
from tests.lib import pipeline_defs


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
    assert isinstance(in_memory, dict)
    lazy = pipeline_defs.full.run(demo_run, mode="local", progress=False)
    assert isinstance(lazy, RunResult)
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
    frame = lazy.to_pandas(EntityLevel.TRACE)
    assert len(frame) == total
    step_ids = [o.entity_id for o in lazy[EntityLevel.STEP]]
    assert step_ids == sorted(step_ids, key=int)
    assert lazy[EntityLevel.RUN][0].entity_id == demo_run


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
