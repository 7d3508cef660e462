"""Which traces a computation covers, in a stable order, and how they are batched.

The scope is one run (optionally some datapoint hash shards, the Dagster layout) narrowed by
at most one limit. Order is (step_number, datapoint_id, trace_id), so "the first N" of any
limit is deterministic; batches are cut from the scope (not from the pending work), so batch
ids stay the same across re-runs and can be checkpointed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from manta_lib.errors import PipelineDefinitionError
from manta_lib.store.client import Store
from manta_lib.store.trace_queries import TraceFilter


@dataclass(frozen=True, slots=True)
class TraceRef:
    """The hierarchy keys of one trace: enough to group outputs without loading spans."""

    trace_id: str
    datapoint_id: str
    step_number: int


@dataclass(frozen=True)
class Limits:
    """At most one of the seed's subset limits."""

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
class TraceBatch:
    """A checkpointable unit of map work: a stable id and its trace ids."""

    batch_id: str
    run_id: str
    trace_ids: tuple[str, ...]


def plan_scope(
    store: Store,
    run_id: str,
    *,
    limits: Limits | None = None,
    shards: Sequence[int] | None = None,
    shard_count: int = 64,
) -> list[TraceRef]:
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
    return [TraceRef(t, d, s) for t, d, s in store.rows(sql, params)]


def make_batches(run_id: str, refs: Sequence[TraceRef], batch_size: int) -> list[TraceBatch]:
    """Cut the scope into batches with ids derived from their content (stable across runs)."""
    if batch_size < 1:
        raise PipelineDefinitionError(f"batch_size must be at least 1, got {batch_size}")
    batches = []
    for start in range(0, len(refs), batch_size):
        ids = tuple(ref.trace_id for ref in refs[start : start + batch_size])
        batches.append(TraceBatch(batch_id(start // batch_size, ids), run_id, ids))
    return batches


def batch_id(index: int, trace_ids: Sequence[str]) -> str:
    """A batch id from its position and content: equal batches get equal ids across runs."""
    digest = hashlib.sha1("\n".join(trace_ids).encode()).hexdigest()[:10]
    return f"b{index:06d}-{digest}"


def chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
