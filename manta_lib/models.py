"""Row models shared by ingestion, the query service and the context objects.

``TraceRecord`` carries a trace's summary properties; ``SpanRecord`` a span's columns. Both
are the JSON Lines import format too (see README, "Import format").
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

_M = TypeVar("_M", bound=BaseModel)


# BaseModel's slots, set through their descriptors (no attribute lookup per object).
_set_dict = BaseModel.__dict__["__dict__"].__set__
_set_fields_set = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_set_extra = BaseModel.__dict__["__pydantic_extra__"].__set__
_set_private = BaseModel.__dict__["__pydantic_private__"].__set__


def fast_construct(cls: type[_M], values: dict[str, Any]) -> _M:
    """``cls.model_construct(**values)`` for ``values`` holding every field, without its checks.

    Only for values already of the field types (rows read back from our own tables); the
    tests check that built objects equal their validated copies.
    """
    obj = cls.__new__(cls)
    _set_dict(obj, values)
    _set_fields_set(obj, set(values))
    _set_extra(obj, None)
    _set_private(obj, None)
    return obj


class EntityLevel(StrEnum):
    """Levels of the entity hierarchy, in increasing order: trace < datapoint < step < run.

    ``DATAPOINT`` is one datapoint at one step: the group of rollouts a GRPO step samples for
    one prompt (entity id ``"{datapoint_id}@{step_number}"``), so a step's value comes only
    from that step's traces. ``DATAPOINT_ACROSS_STEPS`` is one datapoint over the whole run
    (entity id ``datapoint_id``): how a prompt fares over training. It sits beside ``STEP``
    (both above ``DATAPOINT``): a pipeline has one or the other, and either can feed ``RUN``.
    Every level is per phase: ``STEP`` is one phase at one step (entity id
    ``"{phase}/{step_number}"``) and ``RUN`` one entity per phase (``"{phase}/{run_id}"``), so
    train and eval rollouts are never reduced together.
    """

    TRACE = "trace"
    DATAPOINT = "datapoint"
    STEP = "step"
    RUN = "run"
    DATAPOINT_ACROSS_STEPS = "datapoint_across_steps"

    @property
    def rank(self) -> int:
        return _LEVEL_RANK[self]


_LEVEL_RANK = {
    EntityLevel.TRACE: 0,
    EntityLevel.DATAPOINT: 1,
    EntityLevel.STEP: 2,
    EntityLevel.DATAPOINT_ACROSS_STEPS: 2,
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
    cost_usd: float | None = None  # None: not known (never shown as 0)
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
    cost_usd: float | None = None  # None: not known (never shown as 0)
    duration_ms: int = 0
    turn_count: int = 0
    tokens_input: int = 0
    tokens_output: int = 0
    model_name: str = ""
    env_name: str = ""
    meta: dict[str, Any] = Field(default_factory=dict)
    project_id: str = ""
    created_at: datetime | None = None


# ---- input models: what an import accepts (stricter than what reads must tolerate) ----------

# Unix seconds accepted for a timestamp: 1970 up to 2286. A number above is almost always
# milliseconds (1e12 ms is 2001), which must not be silently reread as seconds or millis.
MAX_UNIX_SECONDS = 10_000_000_000
# DateTime64 stores 1900-01-01 to 2299-12-31.
_MIN_YEAR, _MAX_YEAR = 1900, 2299


def _unix_seconds(value: Any) -> Any:
    """Turn a number of Unix seconds into a UTC datetime; reject values outside the plausible
    range with a message saying that seconds are expected."""
    number: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value  # an ISO 8601 string: pydantic parses it
    if number is None:
        return value
    if not math.isfinite(number) or not 0 <= number < MAX_UNIX_SECONDS:
        raise ValueError(
            f"{value!r} is not a plausible Unix timestamp: seconds since 1970 are expected "
            f"(0 to {MAX_UNIX_SECONDS:.0e}); a value in milliseconds must be divided by 1000"
        )
    return datetime.fromtimestamp(number, UTC)


def _storable_time(value: datetime | None) -> datetime | None:
    if value is not None and not _MIN_YEAR <= value.year <= _MAX_YEAR:
        raise ValueError(
            f"{value.isoformat()} is outside the storable range (years {_MIN_YEAR}-{_MAX_YEAR})"
        )
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty or blank")
    return value


Timestamp = Annotated[
    datetime | None, BeforeValidator(_unix_seconds), AfterValidator(_storable_time)
]
NonBlank = Annotated[str, AfterValidator(_not_blank)]
Count = Annotated[int, Field(ge=0)]
Cost = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Finite = Annotated[float, Field(allow_inf_nan=False)]


class TraceInput(TraceRecord):
    """A trace as an import accepts it: ids not blank, counts, durations and costs not
    negative, numbers finite, ``created_at`` in Unix seconds or ISO 8601 within 1900-2299."""

    trace_id: NonBlank
    run_id: NonBlank
    score: Finite | None = None
    cost_usd: Cost | None = None
    duration_ms: Count = 0
    turn_count: Count = 0
    tokens_input: Count = 0
    tokens_output: Count = 0
    created_at: Timestamp = None


class SpanInput(SpanRecord):
    """A span as an import accepts it (the rules of :class:`TraceInput`)."""

    span_id: NonBlank
    tokens_input: Count = 0
    tokens_output: Count = 0
    cost_usd: Cost | None = None
    started_at: Timestamp = None
    ended_at: Timestamp = None


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
