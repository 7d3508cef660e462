"""A pipeline for the processes-mode tests: importable, so spawned workers can run it.

The map function records each call (``<trace id> <pid>`` per line in ``MANTA_TEST_CALLS_FILE``) and
misbehaves on demand, driven by the environment so that worker processes see it too:

- ``MANTA_TEST_FAIL_ON=<trace id>``: that trace's map call raises.
- ``MANTA_TEST_SLOW_ON=<trace id>``: that trace's map call sleeps 30 s (for ``timeout_s``).
- ``MANTA_TEST_CRASH_ON=<trace id>``: the worker process dies (``os._exit``) on that trace;
  with ``MANTA_TEST_CRASH_ONCE_FILE`` only the first time (the file marks it).
- ``MANTA_TEST_MAP_DELAY_S``: sleep per call (to kill a run mid-way).
"""

from __future__ import annotations

import os
import time

from manta_lib.context import TraceContext
from manta_lib.models import EntityLevel
from manta_lib.pipeline import MapReduceComputation
from tests.lib.driver_defs import DatapointOut, TraceOut, maybe_crash, reduce_datapoint


def map_trace(trace: TraceContext) -> TraceOut:
    path = os.environ.get("MANTA_TEST_CALLS_FILE")
    if path:
        with open(path, "a") as handle:
            handle.write(f"{trace.trace_id} {os.getpid()}\n")
    maybe_crash(trace.trace_id)
    if os.environ.get("MANTA_TEST_FAIL_ON") == trace.trace_id:
        raise RuntimeError(f"cannot analyse {trace.trace_id}")
    if os.environ.get("MANTA_TEST_SLOW_ON") == trace.trace_id:
        time.sleep(30)
    delay = float(os.environ.get("MANTA_TEST_MAP_DELAY_S", "0"))
    if delay:
        time.sleep(delay)
    return TraceOut(tool_errors=trace.tool_error_count, label=trace.datapoint_id)


pipeline = (
    MapReduceComputation("Processes test", project_id="prj_test")
    .add_level(EntityLevel.TRACE, map_trace, TraceOut)
    .add_level(EntityLevel.DATAPOINT, reduce_datapoint, DatapointOut)
)
