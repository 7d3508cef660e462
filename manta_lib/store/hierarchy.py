"""The run / step / datapoint hierarchy of the stored traces, with counts, in one query each."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from pydantic import BaseModel

from manta_lib.store.client import Store
from manta_lib.store.trace_queries import ERROR_STATUSES, TraceFilter


class RunSummary(BaseModel):
    """One run with its counts."""

    run_id: str
    project_id: str
    trace_count: int
    step_count: int
    datapoint_count: int
    phases: list[str]
    first_step: int
    last_step: int
    mean_score: float | None
    error_count: int
    first_created_at: datetime | None
    last_created_at: datetime | None


class StepSummary(BaseModel):
    """One step of a run with its counts."""

    run_id: str
    step_number: int
    phases: list[str]
    trace_count: int
    datapoint_count: int
    mean_score: float | None
    error_count: int


class DatapointSummary(BaseModel):
    """One datapoint of a run: how many traces, at which steps."""

    run_id: str
    datapoint_id: str
    trace_count: int
    steps: list[int]
    mean_score: float | None
    error_count: int


def list_runs(store: Store, project_id: str | None = None) -> list[RunSummary]:
    """All runs with trace, step and datapoint counts, newest first."""
    where, params = TraceFilter(project_id=project_id).where()
    rows = store.rows(
        f"""
        SELECT run_id, any(project_id), count(), uniqExact(step_number),
               uniqExact(datapoint_id), arraySort(groupUniqArray(toString(phase))),
               min(step_number), max(step_number), avg(score),
               countIf(status IN {{errs:Array(String)}}), min(created_at),
               max(created_at)
        FROM {{db}}.traces WHERE {where}
        GROUP BY run_id ORDER BY max(created_at) DESC, run_id
        """,
        {**params, "errs": list(ERROR_STATUSES)},
    )
    return [
        RunSummary(
            run_id=r[0],
            project_id=r[1],
            trace_count=r[2],
            step_count=r[3],
            datapoint_count=r[4],
            phases=list(r[5]),
            first_step=r[6],
            last_step=r[7],
            mean_score=_nan_to_none(r[8]),
            error_count=r[9],
            first_created_at=r[10],
            last_created_at=r[11],
        )
        for r in rows
    ]


def list_steps(store: Store, run_id: str, phase: str | None = None) -> list[StepSummary]:
    """The steps of a run in order (as numbers), with counts."""
    where, params = TraceFilter(run_id=run_id, phase=phase).where()
    rows = store.rows(
        f"""
        SELECT step_number, arraySort(groupUniqArray(toString(phase))), count(),
               uniqExact(datapoint_id), avg(score),
               countIf(status IN {{errs:Array(String)}})
        FROM {{db}}.traces WHERE {where}
        GROUP BY step_number ORDER BY step_number
        """,
        {**params, "errs": list(ERROR_STATUSES)},
    )
    return [
        StepSummary(
            run_id=run_id,
            step_number=r[0],
            phases=list(r[1]),
            trace_count=r[2],
            datapoint_count=r[3],
            mean_score=_nan_to_none(r[4]),
            error_count=r[5],
        )
        for r in rows
    ]


def list_datapoints(
    store: Store,
    run_id: str,
    step: int | tuple[int, int] | None = None,
    phase: str | Sequence[str] | None = None,
) -> list[DatapointSummary]:
    """The datapoints of a run (optionally of some steps), with their steps and counts."""
    where, params = TraceFilter(run_id=run_id, step=step, phase=phase).where()
    rows = store.rows(
        f"""
        SELECT datapoint_id, count(), arraySort(groupUniqArray(step_number)), avg(score),
               countIf(status IN {{errs:Array(String)}})
        FROM {{db}}.traces WHERE {where}
        GROUP BY datapoint_id ORDER BY datapoint_id
        """,
        {**params, "errs": list(ERROR_STATUSES)},
    )
    return [
        DatapointSummary(
            run_id=run_id,
            datapoint_id=r[0],
            trace_count=r[1],
            steps=list(r[2]),
            mean_score=_nan_to_none(r[3]),
            error_count=r[4],
        )
        for r in rows
    ]


def _nan_to_none(value: float | None) -> float | None:
    return None if value is None or value != value else float(value)
