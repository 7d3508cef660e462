"""The curves page: a metric against step for one run or several overlaid."""

from __future__ import annotations

from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response

from manta_lib.explorer.curves import trace_metric_chart
from manta_lib.explorer.pages_runs import cached_runs
from manta_lib.explorer.web import BadRequest, choice_param, explorer, list_param, render
from manta_lib.store.explorer_queries import TRACE_METRICS

PHASES = ("", "train", "eval", "prod")


def curves_page(request: Request) -> Response:
    metric = choice_param(request, "metric", list(TRACE_METRICS), "score")
    phase = choice_param(request, "phase", PHASES, "")
    state = explorer(request)
    with state.service() as svc:
        known = state.cached(svc, ("run_ids",), svc.run_ids)
        runs = list_param(request, "run") or [r.run_id for r in cached_runs(state, svc)[0][:1]]
        unknown = [r for r in runs if r not in known]
        if unknown:
            raise BadRequest(
                "Unknown run",
                f"run {', '.join(map(repr, unknown))} is not in this store.",
                [(f"/curves?{urlencode({'run': r, 'metric': metric})}", r) for r in known[:8]],
            )
        chart, points = state.cached(
            svc,
            ("curve", tuple(runs), metric, phase),
            lambda: trace_metric_chart(svc, runs, metric, phase=phase or None),
        )
    return render(
        request,
        "curves.html",
        {
            "chart": chart,
            "points": points,
            "metric": metric,
            "metrics": TRACE_METRICS,
            "phase": phase,
            "phases": PHASES,
            "runs": runs,
            "run_ids": known,
        },
    )
