"""Read-only aggregates the explorer pages need beyond :class:`MantaService`.

Per-run facets (models, environments, cost, tokens), the values a trace filter can take, and
trace metrics aggregated per step (mean, quartiles, count) for the curves. Values travel as
bound parameters; the metric expression comes from a fixed allow-list.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from manta_lib.errors import QueryError
from manta_lib.store.client import Store
from manta_lib.store.trace_queries import ERROR_STATUSES, TraceFilter

# name -> (SQL expression over a traces row, label). Error rate is a 0/1 indicator, so its
# per-step mean is the share of traces that ended in an error or a timeout.
TRACE_METRICS: dict[str, tuple[str, str]] = {
    "score": ("score", "score"),
    "error_rate": ("toFloat64(status IN {errs:Array(String)})", "error rate"),
    "cost_usd": ("cost_usd", "cost (USD)"),
    "tokens": ("toFloat64(tokens_input + tokens_output)", "tokens (in + out)"),
    "tokens_output": ("toFloat64(tokens_output)", "output tokens"),
    "duration_ms": ("toFloat64(duration_ms)", "duration (ms)"),
    "turn_count": ("toFloat64(turn_count)", "turns"),
}


@dataclass(frozen=True)
class RunFacets:
    """What list_runs does not say about a run: its models, environments and spend."""

    run_id: str
    models: list[str]
    envs: list[str]
    cost_usd: float | None  # of the traces whose cost is known; None when none is
    tokens_input: int
    tokens_output: int
    cost_unknown: int = 0  # traces without a known cost (not in ``cost_usd``)
    cost_estimated: int = 0  # traces whose cost the importer estimated from a price table


@dataclass(frozen=True)
class StepPoint:
    """One step of one phase of a per-step series: ``count`` non-null values, their mean and
    quartiles."""

    run_id: str
    step_number: int
    count: int
    mean: float | None
    p25: float | None
    p50: float | None
    p75: float | None
    phase: str = "train"


@dataclass(frozen=True)
class TraceFacets:
    """The distinct values the trace filters can take in a selection of runs."""

    phases: list[str]
    statuses: list[str]
    models: list[str]
    first_step: int | None
    last_step: int | None


def run_facets(store: Store, run_ids: Sequence[str] | None = None) -> dict[str, RunFacets]:
    """Models, environments, cost and tokens of each run (all runs when ``run_ids`` is None)."""
    where, params = TraceFilter(run_id=list(run_ids) if run_ids is not None else None).where()
    rows = store.rows(
        f"""
        SELECT run_id, arraySort(groupUniqArray(model_name)), arraySort(groupUniqArray(env_name)),
               sum(cost_usd), sum(tokens_input), sum(tokens_output), countIf(cost_usd IS NULL),
               countIf(JSONExtractBool(meta, 'cost_estimated')), count(cost_usd)
        FROM {{db}}.traces WHERE {where} GROUP BY run_id
        """,
        params,
    )
    return {
        r[0]: RunFacets(
            run_id=r[0],
            models=[m for m in r[1] if m],
            envs=[e for e in r[2] if e],
            cost_usd=float(r[3]) if r[8] else None,
            tokens_input=int(r[4]),
            tokens_output=int(r[5]),
            cost_unknown=int(r[6]),
            cost_estimated=int(r[7]),
        )
        for r in rows
    }


def trace_facets(store: Store, run_ids: Sequence[str] | None = None) -> TraceFacets:
    """Phases, statuses, models and the step range of the given runs (or of every run)."""
    where, params = TraceFilter(run_id=list(run_ids) if run_ids else None).where()
    rows = store.rows(
        f"""
        SELECT arraySort(groupUniqArray(toString(phase))), arraySort(groupUniqArray(status)),
               arraySort(groupUniqArray(model_name)), min(step_number), max(step_number), count()
        FROM {{db}}.traces WHERE {where}
        """,
        params,
    )
    phases, statuses, models, first, last, count = rows[0]
    return TraceFacets(
        phases=list(phases),
        statuses=list(statuses),
        models=[m for m in models if m],
        first_step=int(first) if count else None,
        last_step=int(last) if count else None,
    )


def step_series(
    store: Store, run_ids: Sequence[str], metric: str, *, phase: str | None = None
) -> list[StepPoint]:
    """``metric`` (a :data:`TRACE_METRICS` name) per run, phase and step, sorted in that order:
    train and eval traces of one step are two points (of two curves), never one average.

    Quartiles are exact with linear interpolation between closest ranks (numpy's default);
    traces whose value is NULL (a score-less error trace) are left out of the count.
    """
    if metric not in TRACE_METRICS:
        raise QueryError(
            f"metric {metric!r} is not a trace metric (expected one of: {', '.join(TRACE_METRICS)})"
        )
    if not run_ids:
        return []
    expression = TRACE_METRICS[metric][0]
    where, params = TraceFilter(run_id=list(run_ids), phase=phase).where()
    rows = store.rows(
        f"""
        SELECT run_id, step_number, count(v), avg(v),
               quantilesExactInclusiveIf(0.25, 0.5, 0.75)(toFloat64(v), isNotNull(v)), ph
        FROM (SELECT run_id, step_number, toString(phase) AS ph, {expression} AS v
              FROM {{db}}.traces WHERE {where})
        GROUP BY run_id, ph, step_number ORDER BY run_id, ph, step_number
        """,
        {**params, "errs": list(ERROR_STATUSES)},
    )
    points = []
    for run_id, step, count, mean, quartiles, row_phase in rows:
        has = bool(count)
        points.append(
            StepPoint(
                run_id=run_id,
                step_number=int(step),
                count=int(count),
                mean=_finite(mean) if has else None,
                p25=_finite(quartiles[0]) if has else None,
                p50=_finite(quartiles[1]) if has else None,
                p75=_finite(quartiles[2]) if has else None,
                phase=row_phase,
            )
        )
    return points


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return None if number != number else number


def table_fingerprint(store: Store, table: str = "traces") -> int:
    """A hash of the table's active data parts: any insert, merge or mutation changes it.

    Aggregates keyed by it can be reused until the data changes, never after.
    """
    rows = store.rows(
        "SELECT cityHash64(arrayStringConcat(arraySort(groupArray(name)), ',')) "
        "FROM system.parts WHERE database = {d:String} AND table = {t:String} AND active",
        {"d": store.database, "t": table},
    )
    return int(rows[0][0])


@dataclass(frozen=True)
class GroupStep:
    """One step at which a datapoint has rollouts: how many, and their mean score."""

    step_number: int
    traces: int
    mean_score: float | None


def datapoint_steps(store: Store, run_id: str, datapoint_id: str) -> list[GroupStep]:
    """The steps at which ``datapoint_id`` of ``run_id`` has rollouts (its groups), in order."""
    where, params = TraceFilter(run_id=run_id, datapoint_id=datapoint_id).where()
    rows = store.rows(
        f"""
        SELECT step_number, count(), avg(score) FROM {{db}}.traces WHERE {where}
        GROUP BY step_number ORDER BY step_number
        """,
        params,
    )
    return [GroupStep(int(r[0]), int(r[1]), _finite(r[2])) for r in rows]


def trace_count(store: Store, run_ids: Sequence[str] = ()) -> int:
    """How many traces ``run_ids`` hold (every run when empty): what a live page polls.

    A count on the primary key's first column: its cost stays flat as traces arrive.
    """
    where, params = TraceFilter(run_id=list(run_ids) if run_ids else None).where()
    return int(store.rows(f"SELECT count() FROM {{db}}.traces WHERE {where}", params)[0][0])


def trace_keys(store: Store, flt: TraceFilter) -> list[tuple[str, str, str, int, str]]:
    """``(trace_id, run_id, datapoint_id, step_number, phase)`` of every trace ``flt``
    selects: what a sort by a stored result column needs to page (five short columns per
    trace)."""
    where, params = flt.where()
    rows = store.rows(
        f"SELECT trace_id, run_id, datapoint_id, step_number, toString(phase) "
        f"FROM {{db}}.traces WHERE {where} ORDER BY run_id, trace_id",
        params,
    )
    return [(r[0], r[1], r[2], int(r[3]), str(r[4])) for r in rows]
