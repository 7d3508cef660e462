"""Which traces a computation covers, in a stable order, and how levels group them.

The scope is one run (optionally some datapoint hash shards, the Dagster layout) narrowed by
at most one limit. Order is (step_number, datapoint_id, trace_id), so "the first N" of any
limit is deterministic. :func:`group_children` is the one place that says which entities a
level has and which children of the level below feed each of them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from manta_lib.entities import run_entity_id, step_id
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
    phase: str = "train"


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


class PlannedRefs(Sequence[TraceRef]):
    """A scope's trace refs, read from the store the first time they are used.

    A persisted run maps its scope as a stream and reduces from the store, so it never
    reads them: nothing of the run's size is held in memory.
    """

    def __init__(self, load: Callable[[], list[TraceRef]]) -> None:
        self._load: Callable[[], list[TraceRef]] | None = load
        self._refs: list[TraceRef] | None = None

    def _get(self) -> list[TraceRef]:
        if self._refs is None:
            assert self._load is not None
            self._refs, self._load = self._load(), None
        return self._refs

    def __len__(self) -> int:
        return len(self._get())

    def __getitem__(self, index: Any) -> Any:
        return self._get()[index]

    def __iter__(self) -> Iterator[TraceRef]:
        return iter(self._get())


@dataclass(frozen=True)
class Scope:
    """The traces one computation step covers: a run, or some datapoint shards of it."""

    run_id: str
    refs: Sequence[TraceRef]
    shards: tuple[int, ...] | None = None
    shard_count: int = 64

    @property
    def trace_ids(self) -> list[str]:
        return [ref.trace_id for ref in self.refs]

    def trace_filter(self, **more: Any) -> TraceFilter:
        """The scope's traces as a filter (limits aside)."""
        return TraceFilter(
            run_id=self.run_id, shards=self.shards, shard_count=self.shard_count, **more
        )

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
    results: Any = None,
) -> Scope:
    """The traces in scope, ordered by (step_number, datapoint_id, trace_id); their refs are
    read when first used, on ``store``.

    ``results``: a compiled results condition (:class:`~manta_lib.results.ResultsFilter`)
    that narrows the run before any limit applies.
    """
    limits = limits or Limits()
    where, params = TraceFilter(
        run_id=run_id, shards=shards, shard_count=shard_count, results=results
    ).where()
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
        "SELECT trace_id, datapoint_id, step_number, toString(phase) FROM {db}.traces "
        f"WHERE {where} ORDER BY step_number, datapoint_id, trace_id"
    )
    if limits.traces is not None:
        params["n"] = limits.traces
        sql += " LIMIT {n:UInt64}"

    def load() -> list[TraceRef]:
        return [TraceRef(t, d, s, p) for t, d, s, p in store.rows(sql, params)]

    # A subset is read now: its "first N" are those of this moment.
    refs = load() if limits.active else PlannedRefs(load)
    return Scope(run_id, refs, None if shards is None else tuple(shards), shard_count)


def split(items: Sequence[T], size: int) -> list[Sequence[T]]:
    """``items`` cut into consecutive slices of at most ``size``."""
    if size < 1:
        raise PipelineDefinitionError(f"batch_size must be at least 1, got {size}")
    return [items[start : start + size] for start in range(0, len(items), size)]


def group_id(datapoint_id: str, step_number: int) -> str:
    """The entity id of one datapoint's group of rollouts at one step: ``"dp_7@12"``."""
    return f"{datapoint_id}@{step_number}"


def _child_id(below: EntityLevel, ref: TraceRef, run_id: str = "") -> str:
    """The id of the entity of level ``below`` that the trace ``ref`` belongs to."""
    if below is EntityLevel.TRACE:
        return ref.trace_id
    if below is EntityLevel.DATAPOINT:
        return group_id(ref.datapoint_id, ref.step_number)
    if below is EntityLevel.STEP:
        return step_id(ref.step_number, ref.phase)
    if below is EntityLevel.DATAPOINT_ACROSS_STEPS:
        return ref.datapoint_id
    if below is EntityLevel.RUN:
        return run_entity_id(run_id, ref.phase)
    raise ValueError(f"unknown level {below}")


def group_columns(level: EntityLevel) -> tuple[str, ...]:
    """The key columns that make one entity of ``level`` out of the entities below it.

    Every level is keyed by phase: a step or run value never mixes train and eval traces, and
    a datapoint id found in two phases is an error (:func:`check_one_phase`), not one group.
    """
    if level is EntityLevel.DATAPOINT:
        return ("datapoint_id", "step_number", "phase")
    if level is EntityLevel.STEP:
        return ("step_number", "phase")
    if level is EntityLevel.DATAPOINT_ACROSS_STEPS:
        return ("datapoint_id", "phase")
    if level is EntityLevel.RUN:
        return ("phase",)
    raise ValueError(f"{level} is not a reduce level")


def group_entity(
    level: EntityLevel, run_id: str, key: tuple[Any, ...], steps: Iterable[int] = ()
) -> tuple[str, dict[str, Any]]:
    """``(entity id, keys)`` of the ``level`` entity whose :func:`group_columns` values are
    ``key``; ``steps`` are the steps a datapoint-across-steps entity covers."""
    if level is EntityLevel.DATAPOINT:
        datapoint, step, phase = key
        return group_id(datapoint, step), {
            "datapoint_id": datapoint,
            "step_number": step,
            "phase": phase,
        }
    if level is EntityLevel.STEP:
        step, phase = key
        return step_id(step, phase), {"step_number": step, "phase": phase}
    if level is EntityLevel.DATAPOINT_ACROSS_STEPS:
        datapoint, phase = key
        return datapoint, {"datapoint_id": datapoint, "steps": sorted(set(steps)), "phase": phase}
    if level is EntityLevel.RUN:
        (phase,) = key
        return run_entity_id(run_id, phase), {"run_id": run_id, "phase": phase}
    raise ValueError(f"{level} is not a reduce level")


def check_one_phase(level: EntityLevel, run_id: str, entity_id: str, phases: Iterable[str]) -> None:
    """Raise when one datapoint entity would cover traces of several phases.

    Datapoint ids name prompts of one phase (a train prompt, an eval prompt); a datapoint id
    used in both would make one group out of train and eval rollouts, a value that is neither.
    """
    found = sorted(set(phases))
    if len(found) > 1:
        raise PipelineDefinitionError(
            f"{level.value} entity {entity_id!r} of run {run_id!r} has traces of phases "
            f"{' and '.join(found)}: a datapoint's rollouts must be of one phase, so its value "
            f"never mixes train and eval; give the eval prompts their own datapoint_id"
        )


def group_children(
    level: EntityLevel, below: EntityLevel, run_id: str, refs: Sequence[TraceRef]
) -> dict[str, tuple[dict[str, Any], list[str]]]:
    """``{entity_id: (keys, [child entity ids])}`` for ``level`` fed by ``below``.

    - DATAPOINT (one datapoint at one step, a GRPO group): the traces of that datapoint at that
      step; keys ``datapoint_id``, ``step_number`` and ``phase``.
    - STEP: the traces of one phase at that step, or the datapoint groups of that phase at that
      step; never anything computed from another step or phase.
    - DATAPOINT_ACROSS_STEPS: every trace of the datapoint, or its groups at every step; keys
      ``datapoint_id``, ``steps`` and ``phase``.
    - RUN: every entity of the level below of one phase (one run entity per phase).

    Children come in scope order (step, datapoint, trace), the order the store returns them
    in when a reduce reads them back.
    """
    columns = group_columns(level)
    members: dict[tuple[Any, ...], dict[str, None]] = defaultdict(dict)  # ordered sets
    steps: dict[tuple[Any, ...], set[int]] = defaultdict(set)
    for ref in refs:
        key = tuple(getattr(ref, column) for column in columns)
        if level is EntityLevel.DATAPOINT_ACROSS_STEPS:
            steps[key].add(ref.step_number)
        members[key][_child_id(below, ref)] = None
    groups: dict[str, tuple[dict[str, Any], list[str]]] = {}
    ordered = sorted(members) if level in (EntityLevel.STEP, EntityLevel.RUN) else list(members)
    for key in ordered:
        entity_id, keys = group_entity(level, run_id, key, steps.get(key, ()))
        if entity_id in groups:
            check_one_phase(level, run_id, entity_id, (groups[entity_id][0]["phase"], key[-1]))
        children = list(members[key])
        if below is EntityLevel.DATAPOINT_ACROSS_STEPS:
            children.sort()  # no step of their own: by datapoint, as the store returns them
        groups[entity_id] = (keys, children)
    return groups


def entity_ids(level: EntityLevel, refs: Sequence[TraceRef], run_id: str = "") -> list[str]:
    """The ids of ``level``'s entities among the traces ``refs`` (of run ``run_id``), in scope
    order."""
    return list(dict.fromkeys(_child_id(level, ref, run_id) for ref in refs))


@dataclass(frozen=True)
class ListedTraces:
    """The pending traces of a scope, by id, in scope order."""

    ids: list[str]

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class StreamedTraces:
    """Every trace of a scope without a stored result of the judge version, selected in
    ClickHouse as the map reads them (``count`` of them when the job was made): no list of
    ids is held, whatever the run's size."""

    count: int

    def __len__(self) -> int:
        return self.count
