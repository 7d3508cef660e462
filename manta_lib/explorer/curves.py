"""Curves: trace metrics (and stored result columns) per step, for one run or several overlaid."""

from __future__ import annotations

from collections.abc import Sequence

from manta_lib.explorer.charts import Chart, Series, SeriesPoint, line_chart
from manta_lib.service import MantaService
from manta_lib.store.explorer_queries import TRACE_METRICS, StepPoint, step_series


def series_from_points(points: Sequence[StepPoint], run_ids: Sequence[str]) -> list[Series]:
    """One series per run (in the order asked), mean with the p25-p75 band."""
    by_run: dict[str, list[SeriesPoint]] = {run_id: [] for run_id in run_ids}
    for p in points:
        by_run.setdefault(p.run_id, []).append(
            SeriesPoint(x=p.step_number, mean=p.mean, low=p.p25, high=p.p75, count=p.count)
        )
    return [Series(label=run_id, points=pts) for run_id, pts in by_run.items()]


def trace_metric_chart(
    svc: MantaService, run_ids: Sequence[str], metric: str, *, phase: str | None = None
) -> tuple[Chart, list[StepPoint]]:
    """The chart of a trace metric (score, error rate, cost, tokens ...) and its numbers."""
    points = step_series(svc.store, run_ids, metric, phase=phase)
    label = TRACE_METRICS[metric][1]
    return line_chart(series_from_points(points, run_ids), y_label=label), points


def score_chart(svc: MantaService, run_ids: Sequence[str]) -> Chart:
    return trace_metric_chart(svc, run_ids, "score")[0]
