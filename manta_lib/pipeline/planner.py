"""Which traces a computation covers, in a stable order, and how levels group them.

The scope is one run (optionally some datapoint hash shards, the Dagster layout) narrowed by
at most one limit. Order is (step_number, datapoint_id, trace_id), so "the first N" of any
limit is deterministic. :func:`group_children` is the one place that says which entities a
level has and which children of the level below feed each of them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from manta_lib.errors import PipelineDefinitionError
from manta_lib.models import EntityLevel
from manta_lib.store.client import Store
from manta_lib.store.trace_queries import TraceFilter

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class TraceRef:
    """The hierarchy keys of one trace: enough to group outputs without loading spans."""

    trace_id: str
    datapoint_id: str
    step_number: int


@dataclass(frozen=True)
class Limits:
    """At most one subset limit: the first N traces, datapoints or steps."""

    traces: int | None = None
    datapoints: int | None = None
    steps: int | None = None

    def __post_init__(self) -> None:
        given = {
            name: value
            for name, value in (
                ("limit_traces", self.traces),
                ("limit_datapoints", self.datapoints),
                ("limit_steps", self.steps),
            )
            if value is not None
        }
        if len(given) > 1:
            raise PipelineDefinitionError(
                f"only one limit can be set at a time, got {', '.join(sorted(given))}; "
                f"keep one of them"
            )
        for name, value in given.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise PipelineDefinitionError(f"{name} must be a positive integer, got {value!r}")

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.traces, self.datapoints, self.steps))

    def describe(self) -> str:
        for name, value in (
            ("limit_traces", self.traces),
            ("limit_datapoints", self.datapoints),
            ("limit_steps", self.steps),
        ):
            if value is not None:
                return f"{name}={value}"
        return "no limit"


@dataclass(frozen=True)
class Scope:
    """The traces one computation step covers: a run, or some datapoint shards of it."""

    run_id: str
    refs: list[TraceRef]
    shards: tuple[int, ...] | None = None
    shard_count: int = 64

    @property
    def trace_ids(self) -> list[str]:
        return [ref.trace_id for ref in self.refs]

    def describe(self) -> str:
        if self.shards is None:
            return self.run_id
        return f"{self.run_id} shards {list(self.shards)}"


def plan_scope(
    store: Store,
    run_id: str,
    *,
    limits: Limits | None = None,
    shards: Sequence[int] | None = None,
    shard_count: int = 64,
) -> Scope:
    """The traces in scope, ordered by (step_number, datapoint_id, trace_id)."""
    limits = limits or Limits()
    where, params = TraceFilter(run_id=run_id, shards=shards, shard_count=shard_count).where()
    if limits.datapoints is not None:
        params["n"] = limits.datapoints
        where += (
            " AND datapoint_id IN (SELECT DISTINCT datapoint_id FROM {db}.traces "
            f"WHERE {where} ORDER BY datapoint_id LIMIT {{n:UInt64}})"
        )
    elif limits.steps is not None:
        params["n"] = limits.steps
        where += (
            " AND step_number IN (SELECT DISTINCT step_number FROM {db}.traces "
            f"WHERE {where} ORDER BY step_number LIMIT {{n:UInt64}})"
        )
    sql = (
        "SELECT trace_id, datapoint_id, step_number FROM {db}.traces "
        f"WHERE {where} ORDER BY step_number, datapoint_id, trace_id"
    )
    if limits.traces is not None:
        params["n"] = limits.traces
        sql += " LIMIT {n:UInt64}"
    refs = [TraceRef(t, d, s) for t, d, s in store.rows(sql, params)]
    return Scope(run_id, refs, None if shards is None else tuple(shards), shard_count)


def split(items: Sequence[T], size: int) -> list[Sequence[T]]:
    """``items`` cut into consecutive slices of at most ``size``."""
    if size < 1:
        raise PipelineDefinitionError(f"batch_size must be at least 1, got {size}")
    return [items[start : start + size] for start in range(0, len(items), size)]


def group_children(
    level: EntityLevel, below: EntityLevel, run_id: str, refs: Sequence[TraceRef]
) -> dict[str, tuple[dict[str, Any], list[str]]]:
    """``{entity_id: (keys, [child entity ids])}`` for ``level`` fed by ``below``.

    A datapoint's children are its traces; a step's children are the traces at that step, or
    (with a DATAPOINT level below) the datapoints that have traces at that step, so a datapoint
    seen at several steps belongs to each of them; the run's children are every entity of the
    level below.
    """
    groups: dict[str, tuple[dict[str, Any], list[str]]] = {}
    if level is EntityLevel.DATAPOINT:
        steps: dict[str, set[int]] = defaultdict(set)
        children: dict[str, list[str]] = defaultdict(list)
        for ref in refs:
            steps[ref.datapoint_id].add(ref.step_number)
            children[ref.datapoint_id].append(ref.trace_id)
        for dp, ids in children.items():
            groups[dp] = ({"datapoint_id": dp, "steps": sorted(steps[dp])}, ids)
    elif level is EntityLevel.STEP:
        members: dict[int, dict[str, None]] = defaultdict(dict)  # ordered set
        for ref in refs:
            child = ref.trace_id if below is EntityLevel.TRACE else ref.datapoint_id
            members[ref.step_number][child] = None
        for step in sorted(members):
            groups[str(step)] = ({"step_number": step}, list(members[step]))
    elif level is EntityLevel.RUN:
        groups[run_id] = ({"run_id": run_id}, entity_ids(below, refs))
    else:
        raise ValueError(f"{level} is not a reduce level")
    return groups


def entity_ids(level: EntityLevel, refs: Sequence[TraceRef]) -> list[str]:
    """The ids of ``level``'s entities among the traces ``refs``, in scope order."""
    if level is EntityLevel.TRACE:
        return [ref.trace_id for ref in refs]
    if level is EntityLevel.DATAPOINT:
        return list(dict.fromkeys(ref.datapoint_id for ref in refs))
    if level is EntityLevel.STEP:
        return list(dict.fromkeys(str(ref.step_number) for ref in refs))
    raise ValueError(f"{level.value} is the top level: no level is fed by it")
