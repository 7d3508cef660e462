"""Every stored result of one trace: its own (trace level) and those of the datapoint and step
entities that cover it, each judge at the version of its entity's status."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from manta_lib.context import TraceContext
from manta_lib.entities import run_entity_id, step_id
from manta_lib.models import EntityLevel
from manta_lib.store import Store
from manta_lib.store import results_queries as q
from manta_lib.store.metadata import ERROR_COLUMN, STATUS_COLUMN, _untyped


@dataclass
class StoredResult:
    """One judge's result for one entity."""

    judge: str
    level: str
    entity_id: str
    judge_version: str
    computed_at: datetime
    ok: bool
    error: str | None
    values: dict[str, Any] = field(default_factory=dict)


def covering_entities(trace: TraceContext) -> list[tuple[str, str]]:
    """``(level, entity_id)`` of the trace and of the entities covering it: its datapoint at
    its step, its datapoint over the run, its step and its run."""
    return [
        (EntityLevel.TRACE.value, trace.trace_id),
        (EntityLevel.DATAPOINT.value, f"{trace.datapoint_id}@{trace.step_number}"),
        (EntityLevel.DATAPOINT_ACROSS_STEPS.value, trace.datapoint_id),
        (EntityLevel.STEP.value, step_id(trace.step_number, trace.phase.value)),
        (EntityLevel.RUN.value, run_entity_id(trace.run_id, trace.phase.value)),
    ]


def trace_results(store: Store, trace: TraceContext) -> list[StoredResult]:
    """The stored results covering ``trace``, trace level first, then by judge."""
    rows = q.entity_values(store, trace.run_id, covering_entities(trace))
    grouped: dict[tuple[str, str, str], list[tuple[Any, ...]]] = {}
    for row in rows:
        grouped.setdefault((row[0], row[1], row[2]), []).append(row)
    results = []
    for (level, entity_id, judge), values in grouped.items():
        status = next((v for v in values if v[3] == STATUS_COLUMN), None)
        if status is None:
            continue
        version, computed_at = status[9], status[10]
        current = {v[3]: _untyped(*v[4:9]) for v in values if v[9] == version}
        ok = current.pop(STATUS_COLUMN) == "ok"
        error = current.pop(ERROR_COLUMN, "") or None
        results.append(
            StoredResult(judge, level, entity_id, version, computed_at, ok, error, current)
        )
    order = {level.value: level.rank for level in EntityLevel}
    results.sort(key=lambda r: (order.get(r.level, 99), r.judge))
    return results
