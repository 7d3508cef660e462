"""A small test pipeline whose map function can be made to crash, fail or misbehave.

``BEHAVIOUR`` switches (reset before each test by the ``judge`` fixture of the test modules):
``fail_after`` makes every call after that many raise ValueError (with ``max_failures=0``
the step stops there and fails, keeping what it finished); ``fail_every`` raises ValueError for
every n-th trace (an isolated, recorded error); ``bad_every`` returns an output that bypasses
validation (``model_construct`` with a string score); ``on_first_call`` runs once, before the
first trace is mapped. ``CALLS`` counts map calls per trace id.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, Field

from manta import EntityLevel, EntityRef, MapReduceComputation, TraceContext

CALLS: Counter[str] = Counter()
BEHAVIOUR: dict[str, Any] = {}
_LOCK = threading.Lock()


class TraceOut(BaseModel):
    score: float | None = Field(description="grader score")
    tool_calls: int
    model: str


class DatapointOut(BaseModel):
    rollouts: int
    mean_tool_calls: float


class StepOut(BaseModel):
    datapoints: int
    mean_tool_calls: float


def reset() -> None:
    CALLS.clear()
    BEHAVIOUR.clear()


def map_trace(trace: TraceContext) -> TraceOut:
    with _LOCK:
        first = not CALLS
        CALLS[trace.trace_id] += 1
        calls = sum(CALLS.values())
        hook: Callable[[], None] | None = BEHAVIOUR.pop("on_first_call", None) if first else None
    if hook is not None:
        hook()
    fail_after = BEHAVIOUR.get("fail_after")
    if fail_after is not None and calls > fail_after:
        time.sleep(0.2)  # the traces already running finish first
        raise ValueError(f"failing after {fail_after} traces")
    index = int(trace.trace_id.rsplit("_", 1)[-1], 36) if "_" in trace.trace_id else calls
    fail_every = BEHAVIOUR.get("fail_every")
    if fail_every and index % fail_every == 0:
        raise ValueError(f"cannot judge {trace.trace_id}")
    bad_every = BEHAVIOUR.get("bad_every")
    if bad_every and index % bad_every == 0:
        return TraceOut.model_construct(score="n/a", tool_calls=0, model="x")  # type: ignore[arg-type]
    return TraceOut(score=trace.score, tool_calls=trace.tool_call_count, model=trace.model_name)


def reduce_datapoint(entity: EntityRef, rollouts: list[TraceOut]) -> DatapointOut:
    calls = [r.tool_calls for r in rollouts]
    return DatapointOut(rollouts=len(rollouts), mean_tool_calls=sum(calls) / max(len(calls), 1))


def reduce_step(entity: EntityRef, datapoints: list[DatapointOut]) -> StepOut:
    means = [d.mean_tool_calls for d in datapoints]
    return StepOut(datapoints=len(datapoints), mean_tool_calls=sum(means) / max(len(means), 1))


pipeline = (
    MapReduceComputation("Dagster test judge", project_id="prj_test", description="Test judge")
    .add_level(EntityLevel.TRACE, map_trace, TraceOut)
    .add_level(EntityLevel.DATAPOINT, reduce_datapoint, DatapointOut)
    .add_level(EntityLevel.STEP, reduce_step, StepOut)
)
