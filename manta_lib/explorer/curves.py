"""Curves: trace metrics, and stored result columns, per step for one run or several overlaid.

Trace metrics come from the traces table (mean and a p25-p75 band); result columns from the
results API's series over steps (:meth:`MantaService.series`: mean, p50, p95, count), drawn
as the mean line with its p50 and p95 in each point's tooltip and the table. Each run draws
one line per phase (train and eval are different curves: an eval step is never averaged with
the train rollouts of the same step); a run with one phase is one line named by the run.
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
    """One step of one phase of one run in the numbers table under a chart."""

    run_id: str
    step_number: int
    count: int
    stats: dict[str, float | None]
    phase: str = "train"


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


def phase_series(
    points: Sequence[tuple[str, str, SeriesPoint]], run_ids: Sequence[str]
) -> list[Series]:
    """One series per (run, phase) of ``(run_id, phase, point)`` triples, runs in the order
    asked then phases alphabetically; a run with one phase is labelled with its id alone,
    one with several ``run · phase``."""
    by_line: dict[tuple[str, str], list[SeriesPoint]] = {}
    for run_id, phase, point in points:
        by_line.setdefault((run_id, phase), []).append(point)
    rank = {run_id: index for index, run_id in enumerate(run_ids)}
    lines = sorted(by_line, key=lambda line: (rank.get(line[0], len(rank)), line[0], line[1]))
    phases: dict[str, int] = {}
    for run_id, _phase in lines:
        phases[run_id] = phases.get(run_id, 0) + 1
    series = [
        Series(
            label=run_id if phases[run_id] == 1 else f"{run_id} · {phase}",
            points=by_line[(run_id, phase)],
        )
        for run_id, phase in lines
    ]
    # A run asked for without any point keeps its (empty) line, as the legend names it.
    series += [Series(label=r, points=[]) for r in run_ids if r not in phases]
    return series


def series_from_points(points: Sequence[StepPoint], run_ids: Sequence[str]) -> list[Series]:
    """One series per run and phase (runs in the order asked), mean with the p25-p75 band."""
    return phase_series(
        [
            (
                p.run_id,
                p.phase,
                SeriesPoint(x=p.step_number, mean=p.mean, low=p.p25, high=p.p75, count=p.count),
            )
            for p in points
        ],
        run_ids,
    )


def trace_metric_chart(
    svc: MantaService, run_ids: Sequence[str], metric: str, *, phase: str | None = None
) -> tuple[Chart, list[CurveRow], list[str]]:
    """The chart of a trace metric (score, error rate, cost, tokens ...) and its numbers: one
    line per run and phase (only ``phase``'s when given)."""
    points = step_series(svc.store, run_ids, metric, phase=phase)
    label = TRACE_METRICS[metric][1]
    rows = [
        CurveRow(
            p.run_id,
            p.step_number,
            p.count,
            {"mean": p.mean, "p25": p.p25, "median": p.p50, "p75": p.p75},
            p.phase,
        )
        for p in points
    ]
    chart = line_chart(series_from_points(points, run_ids), y_label=label)
    return chart, rows, ["mean", "p25", "median", "p75"]


def result_metric_chart(
    svc: MantaService, run_ids: Sequence[str], metric: ResultMetric, *, phase: str | None = None
) -> tuple[Chart, list[CurveRow], list[str]]:
    """The chart of a stored result column per step (the results API's series): one line per
    run and phase (only ``phase``'s when given)."""
    frame = svc.series(metric.judge, metric.column, list(run_ids), level=metric.level)
    points = []
    rows = []
    for record in frame.to_dict("records"):
        if phase is not None and record["phase"] != phase:
            continue
        stats = {name: _number(record.get(name)) for name in ("mean", "p50", "p95")}
        run_id, step, count = (
            str(record["run_id"]),
            int(record["step_number"]),
            int(record["count"]),
        )
        rows.append(CurveRow(run_id, step, count, stats, str(record["phase"])))
        points.append(
            (run_id, str(record["phase"]), SeriesPoint(x=step, mean=stats["mean"], count=count))
        )
    chart = line_chart(phase_series(points, run_ids), y_label=f"{metric.column} (mean)")
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
