"""Pipelines used by the pipeline tests (importable, so a child process can run them too).

Map calls are recorded by the functions themselves: in memory (``CALLS``) and, when
``MANTA_TEST_CALLS_FILE`` is set, one line per call appended to that file, so a test can count
what a killed child process computed. With ``MANTA_TEST_DONE_FILE`` set, each map call also
appends ``<trace id> <unix time>`` when it finishes (after the delay), so a test knows when
each trace was complete. ``MANTA_TEST_HANG_ON`` (comma-separated trace ids) makes those calls
hang for an hour, as a stuck network call would.
"""

from __future__ import annotations

import os
import threading
import time

from pydantic import BaseModel

from manta_lib.context import TraceContext
from manta_lib.entities import EntityRef
from manta_lib.models import EntityLevel
from manta_lib.pipeline import MapReduceComputation

CALLS: list[str] = []
_lock = threading.Lock()


def record_call(trace_id: str) -> None:
    with _lock:
        CALLS.append(trace_id)
    path = os.environ.get("MANTA_TEST_CALLS_FILE")
    if path:
        with open(path, "a") as handle:
            handle.write(trace_id + "\n")
    if trace_id in os.environ.get("MANTA_TEST_HANG_ON", "").split(","):
        time.sleep(3600)
    delay = float(os.environ.get("MANTA_TEST_MAP_DELAY_S", "0"))
    if delay:
        time.sleep(delay)
    done = os.environ.get("MANTA_TEST_DONE_FILE")
    if done:
        with open(done, "a") as handle:
            handle.write(f"{trace_id} {time.time():.6f}\n")


class TraceOut(BaseModel):
    tool_errors: int
    score: float | None
    label: str


class DatapointOut(BaseModel):
    rollouts: int
    failed: int
    step: int
    errors: int


class StepOut(BaseModel):
    members: list[str]
    failed: int


class RunOut(BaseModel):
    children: int
    failed: int


def map_trace(trace: TraceContext) -> TraceOut:
    record_call(trace.trace_id)
    fail_on = os.environ.get("MANTA_TEST_FAIL_ON", "")
    if fail_on and fail_on in trace.trace_id:
        raise RuntimeError(f"cannot analyse {trace.trace_id}")
    return TraceOut(tool_errors=trace.tool_error_count, score=trace.score, label=trace.datapoint_id)


def reduce_datapoint(entity: EntityRef, children: list[TraceOut]) -> DatapointOut:
    return DatapointOut(
        rollouts=len(children),
        failed=entity.failed_children,
        step=entity.keys["step_number"],
        errors=sum(c.tool_errors for c in children),
    )


def reduce_step(entity: EntityRef, children: list[DatapointOut]) -> StepOut:
    return StepOut(members=[str(c.rollouts) for c in children], failed=entity.failed_children)


def reduce_run(entity: EntityRef, children: list[BaseModel]) -> RunOut:
    return RunOut(children=len(children), failed=entity.failed_children)


full = (
    MapReduceComputation("Test full", project_id="prj_test")
    .add_level(EntityLevel.TRACE, map_trace, TraceOut)
    .add_level(EntityLevel.DATAPOINT, reduce_datapoint, DatapointOut)
    .add_level(EntityLevel.STEP, reduce_step, StepOut)
    .add_level(EntityLevel.RUN, reduce_run, RunOut)
)
