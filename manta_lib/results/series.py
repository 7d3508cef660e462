"""A numeric (or boolean: a rate) result column aggregated per step, and its plot.

``series`` computes mean, p50, p95 and count per (run, phase, step) in ClickHouse over the
entities that succeeded and have a value; percentiles interpolate linearly (numpy's default).
Train and eval are separate points (an eval step is never averaged with the train rollouts of
the same step). The plot draws one curve per run and phase with matplotlib (Agg backend: no
display needed) to PNG or SVG; a run with one phase is one curve labelled with the run id.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from manta_lib.errors import QueryError
from manta_lib.models import EntityLevel
from manta_lib.results.table import ResultsQuery, select_results
from manta_lib.store import Store
from manta_lib.store import results_queries as q

if TYPE_CHECKING:
    import pandas as pd

STATISTICS = ("mean", "p50", "p95", "count")


def series(
    store: Store,
    judge: str,
    column: str,
    run_id: str | Sequence[str],
    *,
    level: EntityLevel | str = EntityLevel.TRACE,
    version: str | Sequence[str] | None = None,
    project_id: str | None = None,
) -> pd.DataFrame:
    """``run_id, phase, step_number, mean, p50, p95, count`` of ``column`` per run, phase
    and step (in that order, steps as numbers)."""
    import pandas as pd

    selection = select_results(
        store, ResultsQuery(judge, run_id, level, version, columns=[column], project_id=project_id)
    )
    result_column = selection.columns[0]
    if result_column.kind not in ("number", "boolean"):
        raise QueryError(
            f"column {column!r} of judge {judge!r} holds {result_column.kind} values: a series "
            f"over steps needs a numeric or boolean column"
        )
    names = [name for name, _ in q.level_keys(selection.scope.level).select]
    if "step_number" not in names:
        raise QueryError(
            f"{selection.scope.level}-level results are not tied to one step: plot the trace or "
            f"step level (--level trace or --level step)"
        )
    runs = [run for run, _version in selection.choice.pairs]
    mixed = sorted({run for run in runs if runs.count(run) > 1})
    if mixed:  # one point per step: averaging two versions' values would be neither's figure
        raise QueryError(
            f"run {', '.join(mixed)} has several versions of judge {judge!r} in this selection: "
            f"a series is one version per run, pass version=<one version> (or none for the latest)"
        )
    sql, params = q.series_sql(selection.query())
    table = q.query_arrow(store, sql, params)
    frame = table.to_pandas()
    frame["count"] = frame["count"].astype("int64")
    if frame.empty:
        raise QueryError(
            f"column {column!r} of judge {judge!r} has no values in "
            f"{', '.join(selection.scope.run_ids)}"
        )
    return pd.DataFrame(frame)


def plot_series(
    frame: pd.DataFrame,
    path: Path,
    *,
    title: str = "",
    ylabel: str = "",
    statistic: str = "mean",
) -> Path:
    """Write ``statistic`` per step, one line per run and phase, to ``path`` (``.png`` or
    ``.svg``)."""
    if statistic not in STATISTICS:
        raise QueryError(
            f"statistic {statistic!r} is not valid (expected: {', '.join(STATISTICS)})"
        )
    if path.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise QueryError(f"plot file {path} must end in .png, .svg or .pdf")
    try:
        import matplotlib
    except ImportError:
        raise QueryError(
            "plotting needs matplotlib: pip install 'manta[plot]' (or matplotlib)"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 4.5), dpi=120)
    try:
        for label, group in curves(frame):
            axes.plot(group["step_number"], group[statistic], marker="o", markersize=3, label=label)
        from matplotlib.ticker import MaxNLocator

        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_xlabel("step")
        axes.set_ylabel(ylabel or statistic)
        axes.set_title(title)
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
        figure.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path)
    finally:
        plt.close(figure)
    return path


def curves(frame: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """``(label, rows)`` per line of a series frame: one per run and phase, labelled
    ``run_id`` when the run has one phase and ``run_id · phase`` when it has several."""
    if "phase" not in frame.columns:
        return [(str(run), group) for run, group in frame.groupby("run_id", sort=True)]
    phases = frame.groupby("run_id")["phase"].nunique()
    return [
        (str(run) if phases[run] == 1 else f"{run} · {phase}", group)
        for (run, phase), group in frame.groupby(["run_id", "phase"], sort=True)
    ]
