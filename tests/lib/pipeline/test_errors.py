"""Error isolation: one trace's exception or timeout never stops the others."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydantic import BaseModel

from manta import ComputationAborted, EntityLevel, MapReduceComputation, TraceContext
from manta_lib.store import Store
from tests.lib.builders import load_traces, trace_line


class Out(BaseModel):
    n: int


@pytest.fixture
def forty(store: Store, tmp_path: Path) -> Store:
    lines = [trace_line(f"t{i:02d}", datapoint=f"dp{i // 4}", step=i // 20) for i in range(40)]
    load_traces(store, lines, tmp_path)
    return store


def test_exceptions_are_recorded_per_trace_and_the_rest_completes(forty: Store) -> None:
    def flaky(trace: TraceContext) -> Out:
        if trace.trace_id.endswith("7"):
            raise KeyError("missing grader")
        return Out(n=1)

    pipeline = MapReduceComputation("Flaky", project_id="p").add_level(
        EntityLevel.TRACE, flaky, Out
    )
    result = pipeline.run("run_a", mode="local", batch_size=7, max_workers=3)
    errors = {o.entity_id: o.error for o in result[EntityLevel.TRACE] if o.error}
    assert errors == {f"t{i}7": "KeyError: 'missing grader'" for i in range(4)}
    assert sum(1 for o in result[EntityLevel.TRACE] if o.ok) == 36
    stored = forty.rows(
        "SELECT count() FROM {db}.entity_metadata FINAL "
        "WHERE column = '__status__' AND value_string = 'error'"
    )
    assert stored == [(4,)]


def test_a_trace_that_runs_too_long_times_out_without_blocking_others(forty: Store) -> None:
    def slow_one(trace: TraceContext) -> Out:
        if trace.trace_id == "t05":
            time.sleep(3)
        return Out(n=1)

    pipeline = MapReduceComputation("Slow", project_id="p").add_level(
        EntityLevel.TRACE, slow_one, Out
    )
    started = time.monotonic()
    result = pipeline.run("run_a", mode="local", timeout_s=0.3, persist_results=False)
    assert time.monotonic() - started < 2.5
    errors = {o.entity_id: o.error for o in result[EntityLevel.TRACE] if o.error}
    assert errors == {"t05": "TimeoutError: no result after 0.3 s"}
    assert len(result[EntityLevel.TRACE]) == 40


@pytest.mark.parametrize("max_failures", [3, 0.05])
def test_max_failures_aborts_and_keeps_finished_work(forty: Store, max_failures: float) -> None:
    def fails_late(trace: TraceContext) -> Out:
        if int(trace.trace_id[1:]) >= 20:
            raise ValueError("bad trace")
        return Out(n=1)

    pipeline = MapReduceComputation("Abort", project_id="p").add_level(
        EntityLevel.TRACE, fails_late, Out
    )
    with pytest.raises(ComputationAborted) as excinfo:
        pipeline.run("run_a", mode="local", batch_size=10, max_workers=1, max_failures=max_failures)
    message = str(excinfo.value)
    assert f"more than max_failures={max_failures!r} allows" in message
    assert "finished work was kept (persisted)" in message
    assert "First error: t20: ValueError: bad trace" in message
    ok = forty.rows(
        "SELECT count() FROM {db}.entity_metadata FINAL "
        "WHERE column = '__status__' AND value_string = 'ok'"
    )
    assert ok == [(20,)]


def test_progress_bar_on_request_and_silence_when_not_a_terminal(
    forty: Store, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    pipeline = MapReduceComputation("Progress", project_id="p").add_level(
        EntityLevel.TRACE, lambda trace: Out(n=1), Out
    )
    pipeline.run("run_a", mode="local", persist_results=False)  # stderr is not a terminal
    assert capsys.readouterr().err == ""
    assert "progress on run_a: traces 40 (not persisted)" in caplog.text

    pipeline.run("run_a", mode="local", persist_results=False, progress=True)
    err = capsys.readouterr().err
    assert "40/40" in err and "traces/s" in err and "0 errors" in err
