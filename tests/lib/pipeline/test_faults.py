"""Faults inside and around a run: hung maps, exits raised by user code, Ctrl-C, bad knobs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import BaseModel

from manta_lib import EntityLevel, MapReduceComputation, PipelineDefinitionError, TraceContext
from manta_lib.settings import load_settings
from manta_lib.store import Store
from tests.lib.builders import load_traces, trace_line

REPO = Path(__file__).resolve().parents[3]


class Out(BaseModel):
    n: int


def _exits(trace: TraceContext) -> Out:
    if trace.trace_id == "t01":
        sys.exit(3)
    if trace.trace_id == "t02":
        raise KeyboardInterrupt
    if trace.trace_id == "t03":
        raise BaseException("bare")
    return Out(n=1)


def _statuses() -> dict[str, str]:
    with Store.open(load_settings()) as store:
        return dict(
            store.rows(
                "SELECT entity_id, value_string FROM {db}.entity_metadata FINAL "
                "WHERE entity_level = 'trace' AND column = '__status__'"
            )
        )


def _load(count: int, tmp_path: Path, run_id: str = "run_f") -> None:
    lines = [trace_line(f"t{i:02d}", run_id=run_id, datapoint=f"dp{i // 4}") for i in range(count)]
    with Store.open(load_settings()) as store:
        load_traces(store, lines, tmp_path)


def test_exit_interrupt_or_base_exception_in_a_map_is_that_traces_error(
    manta_env: dict[str, str], tmp_path: Path
) -> None:
    _load(8, tmp_path)
    pipeline = MapReduceComputation("Exits", project_id="p").add_level(
        EntityLevel.TRACE, _exits, Out
    )
    for max_workers in (1, 4):
        result = pipeline.run(
            "run_f", mode="local", persist_results=False, progress=False, max_workers=max_workers
        )
        errors = {o.entity_id: o.error for o in result[EntityLevel.TRACE] if o.error}
        assert errors == {
            "t01": "SystemExit: 3",
            "t02": "KeyboardInterrupt",
            "t03": "BaseException: bare",
        }
        assert len(result[EntityLevel.TRACE]) == 8

    # Where each was raised (the user's file and line) is kept with the error, and stored.
    result = pipeline.run("run_f", mode="local", progress=False)
    where = {o.entity_id: o.error_at for o in result[EntityLevel.TRACE] if o.error}
    assert all(
        "tests/lib/pipeline/test_faults.py:" in w and "in _exits" in w for w in where.values()
    )
    with Store.open(load_settings()) as store:
        stored = dict(
            store.rows(
                "SELECT entity_id, value_string FROM {db}.entity_metadata FINAL "
                "WHERE column = '__error_at__' ORDER BY entity_id"
            )
        )
    assert stored == where


@pytest.mark.parametrize(
    ("knob", "value", "message"),
    [
        ("timeout_s", 0, "timeout_s must be a number of seconds > 0"),
        ("timeout_s", -1, "timeout_s must be a number of seconds > 0"),
        ("timeout_s", float("nan"), "timeout_s must be a number of seconds > 0"),
        ("max_workers", 0, "max_workers must be at least 1, got 0"),
        ("max_workers", -3, "max_workers must be at least 1, got -3"),
        ("batch_size", 0, "batch_size must be at least 1, got 0"),
        ("max_failures", -1, "max_failures must be a count >= 0"),
    ],
)
def test_bad_knobs_are_rejected_before_any_work(
    manta_env: dict[str, str], knob: str, value: float, message: str
) -> None:
    pipeline = MapReduceComputation("Knobs", project_id="p").add_level(
        EntityLevel.TRACE, _exits, Out
    )
    with pytest.raises(PipelineDefinitionError, match=message):
        pipeline.run("run_missing", mode="local", **{knob: value})


def _child(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.lib.fault_child", *args],
        env={**os.environ, **env, "PYTHONPATH": str(REPO)},
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_hung_maps_time_out_free_their_slots_and_the_process_exits(
    manta_env: dict[str, str], tmp_path: Path
) -> None:
    _load(24, tmp_path)
    hung = ["t00", "t01", "t02", "t03"]  # as many as threads: every slot hangs at once
    child = _child(["run_f", "4", "1"], {"MANTA_TEST_HANG_ON": ",".join(hung)})
    try:
        out, err = child.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        child.kill()
        pytest.fail("the run (or the process) did not finish: hung maps kept their slots")
    assert child.returncode == 0, err[-2000:]
    assert "done 24" in out
    statuses = _statuses()
    assert {tid: statuses[tid] for tid in hung} == dict.fromkeys(hung, "error")
    assert sorted(t for t, s in statuses.items() if s == "ok") == [
        f"t{i:02d}" for i in range(4, 24)
    ]


@pytest.mark.slow
def test_ctrl_c_stops_keeps_finished_work_and_says_how_to_resume(
    manta_env: dict[str, str], tmp_path: Path
) -> None:
    _load(40, tmp_path)
    done = tmp_path / "done.txt"
    child = _child(
        ["run_f", "2", "30"],
        {
            "MANTA_TEST_MAP_DELAY_S": "0.2",
            "MANTA_TEST_DONE_FILE": str(done),
            "MANTA_FLUSH_SECONDS": "0.2",
        },
    )
    deadline = time.monotonic() + 60
    while (not done.exists() or len(done.read_text().split("\n")) < 8) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.05)
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=60)
    assert child.returncode != 0
    assert "interrupted:" in err and "again to map only the traces without a stored result" in err
    finished = {line.split()[0] for line in done.read_text().splitlines() if line.strip()}
    statuses = _statuses()
    assert statuses and set(statuses) <= finished
    assert len(finished - set(statuses)) <= 2, "what the threads finished was written"
