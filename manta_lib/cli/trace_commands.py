"""``manta traces``: list the traces of runs with their filters and stored result columns.

Example::

    manta traces --run run_a --filter "tool_errors.tool_errors > 0" \\
        --col tool_errors.tool_errors --col failure_modes.category \\
        --sort tool_errors.tool_errors --desc
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from manta_lib.cli.results_commands import (
    FormatOption,
    LimitOption,
    OutputOption,
    RunOption,
    _output_format,
    console,
    shown_rows,
)
from manta_lib.results.output import write_frame
from manta_lib.results.trace_columns import (
    TraceKey,
    column_values,
    order_by_column,
    resolve_columns,
)
from manta_lib.service import MantaService
from manta_lib.store.explorer_queries import trace_keys
from manta_lib.store.trace_queries import ORDERABLE_COLUMNS

_TRACE_FIELDS = (
    "trace_id",
    "run_id",
    "step_number",
    "phase",
    "datapoint_id",
    "status",
    "score",
    "turn_count",
    "cost_usd",
    "model_name",
)


def traces_command(
    run: RunOption = None,
    step: Annotated[
        list[int] | None, typer.Option("--step", help="Only this step (twice: a range).")
    ] = None,
    datapoint: Annotated[
        list[str] | None, typer.Option("--datapoint", "-d", help="Only this datapoint.")
    ] = None,
    status: Annotated[list[str] | None, typer.Option("--status", help="Only this status.")] = None,
    results: Annotated[
        str | None,
        typer.Option(
            "--filter", help='Only traces whose results match, e.g. "tool_errors.tool_errors > 0".'
        ),
    ] = None,
    col: Annotated[
        list[str] | None,
        typer.Option(
            "--col",
            "-c",
            help="A stored result column to show, judge.column or judge.level.column (repeat); "
            "by default the --filter's columns.",
        ),
    ] = None,
    sort: Annotated[
        str,
        typer.Option(
            "--sort", help=f"{', '.join(ORDERABLE_COLUMNS)}, or one of the --col columns."
        ),
    ] = "step_number",
    desc: Annotated[bool, typer.Option("--desc", help="Sort descending.")] = False,
    limit: LimitOption = None,
    fmt: FormatOption = None,
    output: OutputOption = None,
) -> None:
    """Traces of runs with their stored result columns, filtered and sorted."""
    import pandas as pd

    out_format = _output_format(fmt, output)
    shown = shown_rows(limit, out_format)
    filters: dict[str, Any] = {
        "step": None if not step else (step[0] if len(step) == 1 else (min(step), max(step))),
        "datapoint_id": datapoint or None,
        "status": status or None,
        "results": results,
    }
    filters = {k: v for k, v in filters.items() if v is not None}
    names = list(dict.fromkeys(col or _condition_fields(results)))
    if sort not in (*ORDERABLE_COLUMNS, *names):
        raise typer.BadParameter(
            f"{sort!r} is not one of {', '.join((*ORDERABLE_COLUMNS, *names))}",
            param_hint="--sort",
        )
    run_ids = tuple(run or ())
    with MantaService() as svc:
        columns = [
            column_values(svc.store, c, run_ids)
            for c in resolve_columns(svc.store, names, run_ids=run_ids)
        ]
        total = svc.count_traces(list(run_ids) or None, **filters)
        if sort in names:
            flt = svc._trace_filter(list(run_ids) or None, filters)
            keys = [TraceKey(*row) for row in trace_keys(svc.store, flt)]
            wanted = order_by_column(keys, columns[names.index(sort)], descending=desc)
            wanted = wanted if shown is None else wanted[:shown]
            found = {t.trace_id: t for t in svc.get_traces(trace_ids=wanted)} if wanted else {}
            traces = [found[t] for t in wanted if t in found]
        else:
            traces = svc.get_traces(
                list(run_ids) or None, order_by=sort, descending=desc, limit=shown, **filters
            )
    rows = []
    for trace in traces:
        row: dict[str, Any] = {f: getattr(trace, f) for f in _TRACE_FIELDS}
        row["phase"] = trace.phase.value
        for values in columns:
            row[values.column.name] = values.get(trace)
        rows.append(row)
    frame = pd.DataFrame(rows, columns=[*_TRACE_FIELDS, *names])
    if out_format == "table" and frame.empty:
        console.print("no trace matches", highlight=False)
        return
    caption = ""
    if out_format == "table" and shown is not None and total > len(frame):
        caption = f"{len(frame)} of {total:,} traces; --limit N for more, --format csv for all"
    write_frame(frame, out_format, output, console=console, title="traces", caption=caption)


def _condition_fields(condition: str | None) -> list[str]:
    if not condition:
        return []
    from manta_lib.results.expr import comparisons, parse_condition

    return [str(c.field) for c in comparisons(parse_condition(condition)) if "." in str(c.field)]


def register(app: typer.Typer) -> None:
    """Attach ``manta traces`` to ``app``."""
    app.command("traces")(traces_command)


__all__ = ["register", "traces_command"]
