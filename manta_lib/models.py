"""Row models shared by ingestion, the query service and the context objects.

``TraceRecord`` carries a trace's summary properties; ``SpanRecord`` a span's columns. Both
are the JSON Lines import format too (see README, "Import format").
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field

_M = TypeVar("_M", bound=BaseModel)
_set = object.__setattr__


def fast_construct(cls: type[_M], values: dict[str, Any]) -> _M:
    """``cls.model_construct(**values)`` for ``values`` holding every field, without its checks.

    Only for values already of the field types (rows read back from our own tables); the
    tests check that built objects equal their validated copies.
    """
    obj = cls.__new__(cls)
    _set(obj, "__dict__", values)
    _set(obj, "__pydantic_fields_set__", set(values))
    _set(obj, "__pydantic_extra__", None)
    _set(obj, "__pydantic_private__", None)
    return obj


class EntityLevel(StrEnum):
    """Levels of the entity hierarchy, in increasing order: trace < datapoint < step < run."""

    TRACE = "trace"
    DATAPOINT = "datapoint"
    STEP = "step"
    RUN = "run"

    @property
    def rank(self) -> int:
        return _LEVEL_RANK[self]


_LEVEL_RANK = {
    EntityLevel.TRACE: 0,
    EntityLevel.DATAPOINT: 1,
    EntityLevel.STEP: 2,
    EntityLevel.RUN: 3,
}


class Phase(StrEnum):
    TRAIN = "train"
    EVAL = "eval"
    PROD = "prod"


class SpanKind(StrEnum):
    MESSAGE = "message"
    TOOL = "tool"
    GRADER = "grader"
    LLM = "llm"
    SYSTEM = "system"


class SpanRecord(BaseModel):
    """One span row (an event inside a trace)."""

    model_config = ConfigDict(extra="forbid")

    trace_id: str = ""
    run_id: str = ""
    span_id: str
    parent_span_id: str = ""
    seq: int
    kind: SpanKind
    name: str = ""
    role: str = ""
    content: str = ""
    tool_name: str = ""
    tool_arguments: str = ""
    tool_result: str = ""
    is_error: bool = False
    model_name: str = ""
    tokens_input: int = 0
    tokens_output: int = 0
    cost_usd: float = 0.0
    started_at: datetime | None = None
    ended_at: datetime | None = None
    attributes: dict[str, Any] = Field(default_factory=dict)


class TraceRecord(BaseModel):
    """One trace row: the summary properties of a rollout."""

    model_config = ConfigDict(extra="forbid")

    trace_id: str
    run_id: str
    step_number: int = 0
    phase: Phase = Phase.TRAIN
    datapoint_id: str = ""
    score: float | None = None
    status: str = "completed"
    cost_usd: float = 0.0
    duration_ms: int = 0
    turn_count: int = 0
    tokens_input: int = 0
    tokens_output: int = 0
    model_name: str = ""
    env_name: str = ""
    meta: dict[str, Any] = Field(default_factory=dict)
    project_id: str = ""
    created_at: datetime | None = None


TRACE_COLUMNS: tuple[str, ...] = (
    "project_id",
    "trace_id",
    "run_id",
    "step_number",
    "phase",
    "datapoint_id",
    "score",
    "status",
    "cost_usd",
    "duration_ms",
    "turn_count",
    "tokens_input",
    "tokens_output",
    "model_name",
    "env_name",
    "meta",
    "created_at",
)

SPAN_COLUMNS: tuple[str, ...] = (
    "trace_id",
    "run_id",
    "span_id",
    "parent_span_id",
    "seq",
    "kind",
    "name",
    "role",
    "content",
    "tool_name",
    "tool_arguments",
    "tool_result",
    "is_error",
    "model_name",
    "tokens_input",
    "tokens_output",
    "cost_usd",
    "started_at",
    "ended_at",
    "attributes",
)
