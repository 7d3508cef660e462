"""Pipelines for the batch driver tests: importable, so spawned workers can run them.

The map function records each call (one line per trace in ``MANTA_TEST_CALLS_FILE``) and can
misbehave on demand, driven by the environment so that worker processes see it too:

- ``MANTA_TEST_CRASH_ON=<trace id>``: the worker process dies (``os._exit``) on that trace;
  with ``MANTA_TEST_CRASH_ONCE_FILE`` it dies only the first time (the file marks it).
- ``MANTA_TEST_FAIL_ON=<substring>``: that trace's map call raises (an error outcome).
- ``MANTA_TEST_MAP_DELAY_S``: sleep per call (to kill a run mid-way).
"""

from __future__ import annotations

import os
import time

from pydantic import BaseModel

from manta_lib.context import TraceContext
from manta_lib.entities import EntityRef
from manta_lib.models import EntityLevel
from manta_lib.pipeline import MapReduceComputation


class TraceOut(BaseModel):
    tool_errors: int
    label: str


class DatapointOut(BaseModel):
    rollouts: int
    failed: int


class RunOut(BaseModel):
    children: int


def _record(trace_id: str) -> None:
    path = os.environ.get("MANTA_TEST_CALLS_FILE")
    if path:
        with open(path, "a") as handle:
            handle.write(trace_id + "\n")


def maybe_crash(trace_id: str) -> None:
    """Die (``os._exit``) on ``MANTA_TEST_CRASH_ON``'s trace (once with a marker file)."""
    if os.environ.get("MANTA_TEST_CRASH_ON") != trace_id:
        return
    marker = os.environ.get("MANTA_TEST_CRASH_ONCE_FILE")
    if marker:
        if os.path.exists(marker):
            return
        with open(marker, "w") as handle:
            handle.write("crashed\n")
    os._exit(17)


def map_trace(trace: TraceContext) -> TraceOut:
    _record(trace.trace_id)
    maybe_crash(trace.trace_id)
    fail_on = os.environ.get("MANTA_TEST_FAIL_ON", "")
    if fail_on and fail_on in trace.trace_id:
        raise RuntimeError(f"cannot analyse {trace.trace_id}")
    delay = float(os.environ.get("MANTA_TEST_MAP_DELAY_S", "0"))
    if delay:
        time.sleep(delay)
    return TraceOut(tool_errors=trace.tool_error_count, label=trace.datapoint_id)


def reduce_datapoint(entity: EntityRef, children: list[TraceOut]) -> DatapointOut:
    return DatapointOut(rollouts=len(children), failed=entity.failed_children)


def reduce_run(entity: EntityRef, children: list[BaseModel]) -> RunOut:
    return RunOut(children=len(children))


pipeline = (
    MapReduceComputation("Driver test", project_id="prj_test", pip_install=["httpx>=0.27"])
    .add_level(EntityLevel.TRACE, map_trace, TraceOut)
    .add_level(EntityLevel.DATAPOINT, reduce_datapoint, DatapointOut)
    .add_level(EntityLevel.RUN, reduce_run, RunOut)
)

llm_pipeline = MapReduceComputation("Driver test llm", project_id="prj_test").add_level(
    EntityLevel.TRACE, map_trace, TraceOut, uses_llm=True
)
