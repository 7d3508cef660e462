"""A map function that ends the process: a segfault, ``os._exit``; and timed-out calls.

The child (``python -m tests.robustness.test_crash_map RUN_ID WORKERS``, this module) runs a
persisted pipeline whose map function crashes on the trace named by ``MANTA_TEST_CRASH_ON``
(``MANTA_TEST_CRASH_HOW``: ``segv`` reads address 0 through ctypes, ``exit`` calls
``os._exit(3)``) and appends ``<trace id>`` to ``MANTA_TEST_DONE_FILE`` as each call returns.
Before the fix a segfault hung the process forever inside chDB's signal handler (holding the
store), and ``os._exit`` killed every resume on the same trace.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from pydantic import BaseModel

from manta_lib.context import TraceContext
from manta_lib.entities import EntityRef
from manta_lib.errors import ComputationAborted
from manta_lib.models import EntityLevel
from manta_lib.pipeline import MapReduceComputation
from manta_lib.pipeline.pool import IsolatedPool, ItemResult
from manta_lib.settings import load_settings
from manta_lib.store import ResultKey, Store
from manta_lib.store.metadata import StoredEntity, load_entities
from tests.lib.builders import load_traces, trace_line

REPO = Path(__file__).resolve().parents[2]
RUN = "run_crash"
TRACES = 24
CRASH_ON = "t012"
#: A crashing child must be gone well within this (it hung forever before).
ENDS_WITHIN_S = 90


class Out(BaseModel):
    tool_errors: int


class RunOut(BaseModel):
    traces: int
    failed: int


def map_trace(trace: TraceContext) -> Out:
    if trace.trace_id == os.environ.get("MANTA_TEST_CRASH_ON"):
        how = os.environ.get("MANTA_TEST_CRASH_HOW")
        if how == "segv":
            ctypes.string_at(0)
        elif how == "exit":
            os._exit(3)
    time.sleep(float(os.environ.get("MANTA_TEST_MAP_DELAY_S", "0")))
    done = os.environ.get("MANTA_TEST_DONE_FILE")
    if done:
        with open(done, "a") as handle:
            handle.write(trace.trace_id + "\n")
    return Out(tool_errors=trace.tool_error_count)


def reduce_run(entity: EntityRef, children: list[Out]) -> RunOut:
    if os.environ.get("MANTA_TEST_CRASH_HOW") == "segv-reduce":
        ctypes.string_at(0)
    return RunOut(traces=len(children) + entity.failed_children, failed=entity.failed_children)


crashing = (
    MapReduceComputation("Test crashing map", project_id="prj_test")
    .add_level(EntityLevel.TRACE, map_trace, Out)
    .add_level(EntityLevel.RUN, reduce_run, RunOut)
)


@pytest.fixture
def crash_run(manta_env: dict[str, str], tmp_path: Path) -> Path:
    """``TRACES`` traces in ``RUN``; returns the done file the child appends to."""
    lines = [trace_line(f"t{i:03d}", run_id=RUN, datapoint=f"dp{i // 4}") for i in range(TRACES)]
    with Store.open(load_settings()) as store:
        load_traces(store, lines, tmp_path)
    return tmp_path / "done.txt"


def _child(
    done: Path, how: str | None, *, workers: int, flush_s: float = 60.0
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "MANTA_TEST_DONE_FILE": str(done),
        "MANTA_TEST_MAP_DELAY_S": "0.02",
        "MANTA_FLUSH_SECONDS": str(flush_s),
    }
    if how:
        env.update(MANTA_TEST_CRASH_ON=CRASH_ON, MANTA_TEST_CRASH_HOW=how)
    else:
        env.pop("MANTA_TEST_CRASH_HOW", None)
    command = [sys.executable, "-m", "tests.robustness.test_crash_map", RUN, str(workers)]
    return subprocess.run(
        command, env=env, cwd=REPO, capture_output=True, text=True, timeout=ENDS_WITHIN_S
    )


def _done(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def _stored(level: EntityLevel = EntityLevel.TRACE) -> dict[str, StoredEntity]:
    """The crashing pipeline's stored entities of ``level``; opening the store without
    waiting also proves that no process holds it."""
    with Store.open(load_settings(MANTA_LOCK_TIMEOUT_S=0)) as store:
        key = ResultKey(crashing.project_id, RUN, crashing.judge, level, judge_version=None)
        entities = load_entities(store, key)
    return {e.entity_id: e for e in entities}


@pytest.mark.slow
def test_a_segfault_ends_the_run_names_the_trace_keeps_finished_work(crash_run: Path) -> None:
    # One map thread: every trace that returned before the crash is in hand for the last flush.
    first = _child(crash_run, "segv", workers=1)
    assert first.returncode == -11, first.stderr[-2000:]
    assert f"on trace {CRASH_ON!r}" in first.stderr and "SIGSEGV" in first.stderr
    finished = _done(crash_run)
    assert len(finished) == int(CRASH_ON[1:]), "the traces before the crashing one finished"
    stored = _stored()  # the store is free at once
    # Nothing was flushed by the timer (60 s): the crash handler wrote every finished trace.
    assert set(stored) == set(finished)
    assert all(e.ok for e in stored.values())

    # The next run maps the crashing trace alone, first: it crashes again before any other.
    crash_run.unlink()
    second = _child(crash_run, "segv", workers=4)
    assert second.returncode == -11, second.stderr[-2000:]
    assert "mapped one at a time first" in second.stderr
    assert _done(crash_run) == []

    # Twice is enough: the third run records the trace's error and completes the rest.
    third = _child(crash_run, "segv", workers=4)
    assert third.returncode == 0, third.stderr[-2000:]
    stored = _stored()
    assert len(stored) == TRACES
    error = stored[CRASH_ON].error or ""
    assert "ProcessCrash" in error and "died 2 times" in error and "SIGSEGV" in error
    assert [tid for tid, e in stored.items() if not e.ok] == [CRASH_ON]
    assert not set(_done(crash_run)) & set(finished), "a stored trace was mapped again"


@pytest.mark.slow
def test_os_exit_twice_in_one_trace_is_recorded_as_its_error(crash_run: Path) -> None:
    first = _child(crash_run, "exit", workers=4, flush_s=0.2)
    assert first.returncode == 3, first.stderr[-2000:]
    second = _child(crash_run, "exit", workers=4, flush_s=0.2)
    assert second.returncode == 3, second.stderr[-2000:]
    # The traces in flight with the crashing one at the first death were mapped alone, one
    # at a time, in the second run; only the crashing one killed it.
    assert "mapped one at a time first" in second.stderr

    third = _child(crash_run, "exit", workers=4, flush_s=0.2)
    assert third.returncode == 0, third.stderr[-2000:]
    stored = _stored()
    assert len(stored) == TRACES
    failed = {tid: e.error or "" for tid, e in stored.items() if not e.ok}
    assert list(failed) == [CRASH_ON]
    assert "died 2 times" in failed[CRASH_ON] and "os._exit" in failed[CRASH_ON]
    (run,) = _stored(EntityLevel.RUN).values()
    assert run.values["failed"] == 1 and run.values["traces"] == TRACES


@pytest.mark.slow
def test_a_segfault_in_a_reduce_ends_the_run_and_names_the_entity(crash_run: Path) -> None:
    crashed = _child(crash_run, "segv-reduce", workers=2)
    assert crashed.returncode == -11, crashed.stderr[-2000:]
    assert "the run reduce of judge 'test_crashing_map'" in crashed.stderr
    assert "on run 'train/run_crash'" in crashed.stderr
    stored = _stored()  # the store is free at once, and the map's traces were all written
    assert len(stored) == TRACES and all(e.ok for e in stored.values())

    fixed = _child(crash_run, None, workers=2)
    assert fixed.returncode == 0, fixed.stderr[-2000:]
    assert sorted(_done(crash_run)) == sorted(stored), "the traces were mapped once"
    (run,) = _stored(EntityLevel.RUN).values()
    assert run.values == {"traces": TRACES, "failed": 0}


def test_timed_out_calls_left_running_are_bounded() -> None:
    release = threading.Event()

    def hang(item: int) -> Out:
        release.wait(30)
        return Out(tool_errors=item)

    pool = IsolatedPool(2, timeout_s=0.05, chunked=False)
    results: list[ItemResult[int]] = []
    before = threading.active_count()
    try:
        with pytest.raises(ComputationAborted, match="abandoned threads"):
            pool.run(hang, list(range(100)), Out, results.append)
        # The call that went past the limit stops the pool; those running then time out too.
        assert pool.abandoned_limit == 8
        assert pool.abandoned_limit < pool.abandoned <= pool.abandoned_limit + pool.max_workers
        assert threading.active_count() - before <= pool.max_workers + pool.abandoned_limit
        assert len(results) == pool.abandoned < 100
        assert all(r.error and r.error.startswith("TimeoutError") for r in results)
    finally:
        release.set()
    deadline = time.monotonic() + 10
    while pool.abandoned and time.monotonic() < deadline:
        time.sleep(0.01)
    assert pool.abandoned == 0, "an abandoned thread that returns is no longer counted"


if __name__ == "__main__":
    crashing.run(sys.argv[1], mode="local", progress=False, max_workers=int(sys.argv[2]))
