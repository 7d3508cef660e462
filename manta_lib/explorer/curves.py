"""Curves: trace metrics, and stored result columns, per step for one run or several overlaid.

Trace metrics come from the traces table (mean and a p25-p75 band); result columns from the
results API's series over steps (:meth:`MantaService.series`: mean, p50, p95, count), drawn
as the mean line with its p50 and p95 in each point's tooltip and the table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from manta_lib.explorer.charts import Chart, Series, SeriesPoint, line_chart
from manta_lib.results import JudgeInfo
from manta_lib.service import MantaService
from manta_lib.store.explorer_queries import TRACE_METRICS, StepPoint, step_series
from manta_lib.store.results_queries import judge_facts

RESULT_PREFIX = "r/"


@dataclass(frozen=True)
class ResultMetric:
    """A stored result column as a curve choice: ``r/judge/level/column``."""

    judge: str
    level: str
    column: str

    @property
    def key(self) -> str:
        return f"{RESULT_PREFIX}{self.judge}/{self.level}/{self.column}"

    @property
    def label(self) -> str:
        return f"{self.judge} · {self.column}" + (
            f" ({self.level})" if self.level != "trace" else ""
        )

    @classmethod
    def parse(cls, key: str) -> ResultMetric | None:
        parts = key.removeprefix(RESULT_PREFIX).split("/")
        if not key.startswith(RESULT_PREFIX) or len(parts) != 3 or not all(parts):
            return None
        return cls(*parts)


@dataclass(frozen=True)
class CurveRow:
    """One step of one run in the numbers table under a chart."""

    run_id: str
    step_number: int
    count: int
    stats: dict[str, float | None]


def result_metrics(judges: Sequence[JudgeInfo]) -> list[ResultMetric]:
    """Numeric and boolean result columns of the step-tied levels, as curve choices."""
    found: dict[str, ResultMetric] = {}
    for info in judges:
        for column in info.columns:
            if column.type in ("number", "boolean") and column.level in (
                "trace",
                "datapoint",
                "step",
            ):
                metric = ResultMetric(info.judge, column.level, column.name)
                found[metric.key] = metric
    return sorted(found.values(), key=lambda m: (m.judge, m.level, m.column))


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
) -> tuple[Chart, list[CurveRow], list[str]]:
    """The chart of a trace metric (score, error rate, cost, tokens ...) and its numbers."""
    points = step_series(svc.store, run_ids, metric, phase=phase)
    label = TRACE_METRICS[metric][1]
    rows = [
        CurveRow(
            p.run_id,
            p.step_number,
            p.count,
            {"mean": p.mean, "p25": p.p25, "median": p.p50, "p75": p.p75},
        )
        for p in points
    ]
    chart = line_chart(series_from_points(points, run_ids), y_label=label)
    return chart, rows, ["mean", "p25", "median", "p75"]


def result_metric_chart(
    svc: MantaService, run_ids: Sequence[str], metric: ResultMetric
) -> tuple[Chart, list[CurveRow], list[str]]:
    """The chart of a stored result column per step (the results API's series)."""
    frame = svc.series(metric.judge, metric.column, list(run_ids), level=metric.level)
    by_run: dict[str, list[SeriesPoint]] = {run_id: [] for run_id in run_ids}
    rows = []
    for record in frame.to_dict("records"):
        stats = {name: _number(record.get(name)) for name in ("mean", "p50", "p95")}
        run_id, step, count = (
            str(record["run_id"]),
            int(record["step_number"]),
            int(record["count"]),
        )
        rows.append(CurveRow(run_id, step, count, stats))
        by_run.setdefault(run_id, []).append(SeriesPoint(x=step, mean=stats["mean"], count=count))
    series = [Series(label=run_id, points=pts) for run_id, pts in by_run.items()]
    chart = line_chart(series, y_label=f"{metric.column} (mean)")
    chart.band_label = ""
    return chart, rows, ["mean", "p50", "p95"]


def runs_with_column(svc: MantaService, run_ids: Sequence[str], metric: ResultMetric) -> list[str]:
    """Those of ``run_ids`` with stored results of the metric's judge, level and column (one
    catalog read): an overlay draws them and names the others instead of failing whole."""
    facts = judge_facts(svc.store, metric.judge, [metric.column], run_ids, None, metric.level)
    present = {row[1] for row in facts if row[3] == metric.column}
    return [run for run in run_ids if run in present]


def score_chart(svc: MantaService, run_ids: Sequence[str]) -> Chart:
    return trace_metric_chart(svc, run_ids, "score")[0]


def _number(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return None if number != number else number
