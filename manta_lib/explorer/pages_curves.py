"""The curves page: a trace metric or a stored result column against step, runs overlaid."""

from __future__ import annotations

from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response

from manta_lib.explorer.curves import (
    ResultMetric,
    result_metric_chart,
    result_metrics,
    runs_with_column,
    trace_metric_chart,
)
from manta_lib.explorer.pages_live import live_context
from manta_lib.explorer.pages_results import RESULT_TABLES
from manta_lib.explorer.pages_runs import cached_runs
from manta_lib.explorer.web import (
    BadRequest,
    choice_param,
    explorer,
    list_param,
    render,
    text_param,
)
from manta_lib.store.explorer_queries import TRACE_METRICS

PHASES = ("", "train", "eval", "prod")


def curves_page(request: Request) -> Response:
    metric = text_param(request, "metric") or "score"
    phase = choice_param(request, "phase", PHASES, "")
    result_metric = ResultMetric.parse(metric)
    if result_metric is None and metric not in TRACE_METRICS:
        raise BadRequest(
            "Invalid parameter",
            f"metric={metric!r} is neither a trace metric ({', '.join(TRACE_METRICS)}) nor a "
            f"result column written r/JUDGE/LEVEL/COLUMN.",
        )
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
        judges = state.cached(
            svc, ("judges", tuple(runs)), lambda: svc.judges(run_id=runs), tables=RESULT_TABLES
        )
        missing: list[str] = []
        if result_metric is not None:
            drawn = runs_with_column(svc, runs, result_metric)
            missing = [r for r in runs if r not in drawn]
            drawn = drawn or runs  # none has it: the series names the cause (a 400 page)
            chart, rows, stats = state.cached(
                svc,
                ("result_curve", tuple(drawn), metric, phase),
                lambda: result_metric_chart(svc, drawn, result_metric, phase=phase or None),
                tables=RESULT_TABLES,
            )
        else:
            chart, rows, stats = state.cached(
                svc,
                ("curve", tuple(runs), metric, phase),
                lambda: trace_metric_chart(svc, runs, metric, phase=phase or None),
            )
        live = live_context(svc.store, runs)
    return render(
        request,
        "curves.html",
        {
            "chart": chart,
            "rows": rows,
            "stats": stats,
            "metric": metric,
            "metrics": TRACE_METRICS,
            "result_metrics": result_metrics(judges),
            "is_result": result_metric is not None,
            "phase": phase,
            "phases": PHASES,
            "runs": runs,
            "missing_runs": missing,
            "run_ids": known,
            "live": live,
        },
    )
