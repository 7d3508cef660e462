"""The runs page (every run, sortable) and a run's page (steps, score curve, judges)."""

from __future__ import annotations

import difflib
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from manta_lib.explorer.curves import score_chart
from manta_lib.explorer.judges import run_judges
from manta_lib.explorer.links import run_url
from manta_lib.explorer.pages_live import live_context
from manta_lib.explorer.pages_results import cached_judges
from manta_lib.explorer.web import Explorer, NotFound, choice_param, explorer, render
from manta_lib.service import MantaService, RunSummary, StepSummary
from manta_lib.store.explorer_queries import RunFacets, run_facets

DATAPOINT_ROWS = 200  # the run page lists this many datapoints; the trace list has them all

RUN_SORTS: dict[str, Any] = {
    "run_id": lambda r: r["run"].run_id,
    "traces": lambda r: r["run"].trace_count,
    "steps": lambda r: r["run"].step_count,
    "datapoints": lambda r: r["run"].datapoint_count,
    "score": lambda r: r["run"].mean_score,
    "error_rate": lambda r: r["error_rate"],
    "cost": lambda r: r["facets"].cost_usd if r["facets"] else None,
    "last": lambda r: r["run"].last_created_at,
}


def cached_runs(
    state: Explorer, svc: MantaService
) -> tuple[list[RunSummary], dict[str, RunFacets]]:
    """Every run (newest first) with its facets, reused while the traces are unchanged."""
    return state.cached(svc, ("runs",), lambda: (svc.list_runs(), run_facets(svc.store)))


def runs_page(request: Request) -> Response:
    sort = choice_param(request, "sort", list(RUN_SORTS), "last")
    descending = request.query_params.get("desc", "1" if sort != "run_id" else "0") == "1"
    state = explorer(request)
    with state.service() as svc:
        runs, facets = state.cached(
            svc, ("runs",), lambda: (svc.list_runs(), run_facets(svc.store))
        )
    rows = [_run_row(run, facets.get(run.run_id)) for run in runs]
    key = RUN_SORTS[sort]
    present = [r for r in rows if key(r) is not None]
    missing = [r for r in rows if key(r) is None]
    present.sort(key=key, reverse=descending)
    return render(
        request,
        "runs.html",
        {"rows": present + missing, "sort": sort, "desc": descending},
    )


def _run_row(run: RunSummary, facets: RunFacets | None) -> dict[str, Any]:
    return {
        "run": run,
        "facets": facets,
        "error_rate": run.error_count / run.trace_count if run.trace_count else None,
    }


def require_run(state: Explorer, svc: MantaService, run_id: str) -> RunSummary:
    """The run's summary, or a 404 page naming the closest existing runs."""
    runs, _ = cached_runs(state, svc)
    for run in runs:
        if run.run_id == run_id:
            return run
    known = sorted(run.run_id for run in runs)
    closest = difflib.get_close_matches(run_id, known, n=5, cutoff=0.3) or known[:5]
    raise NotFound(
        "Run not found",
        f"There is no run {run_id!r} in this store."
        + (" The store has no traces yet." if not known else ""),
        [(run_url(r, base=""), r) for r in closest],
    )


def _steps_by_phase(svc: MantaService, run: RunSummary) -> list[StepSummary]:
    """One row per step and phase, by step then phase: a step's train and eval traces are
    counted and scored apart (a run with one phase: its steps as they are)."""
    if len(run.phases) <= 1:
        return svc.list_steps(run.run_id)
    rows = [step for phase in run.phases for step in svc.list_steps(run.run_id, phase=phase)]
    return sorted(rows, key=lambda step: (step.step_number, step.phases))


def run_page(request: Request) -> Response:
    run_id = request.path_params["run_id"]
    state = explorer(request)
    with state.service() as svc:
        run = require_run(state, svc, run_id)
        _, all_facets = cached_runs(state, svc)
        steps = state.cached(svc, ("steps", run_id), lambda: _steps_by_phase(svc, run))
        datapoints = state.cached(
            svc, ("datapoints", run_id), lambda: svc.list_datapoints(run_id), large=True
        )
        chart = state.cached(svc, ("score_chart", run_id), lambda: score_chart(svc, [run_id]))
        judges = run_judges(cached_judges(state, svc, run_id), run_id, state.dagster_url)
        facets = all_facets.get(run_id)
        live = live_context(svc.store, [run_id])
    return render(
        request,
        "run.html",
        {
            "run": run,
            "facets": facets,
            "steps": steps,
            "datapoints": datapoints[:DATAPOINT_ROWS],
            "datapoint_count": len(datapoints),
            "chart": chart,
            "judges": judges,
            "error_rate": run.error_count / run.trace_count if run.trace_count else None,
            "live": live,
        },
    )
