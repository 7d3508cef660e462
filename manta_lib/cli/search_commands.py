"""``manta search``: the traces whose spans contain a phrase, with the other trace filters."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from manta_lib.cli.results_commands import (
    FormatOption,
    OutputOption,
    ProjectOption,
    RunOption,
    shown_rows,
)
from manta_lib.errors import QueryError
from manta_lib.results.output import Format, resolve_format, write_frame
from manta_lib.service import MantaService
from manta_lib.store.text_search import SpanHit, first_hits
from manta_lib.store.trace_queries import ORDERABLE_COLUMNS

console = Console()
_TABLE_ROWS = 20


def parse_step(value: str) -> int | tuple[int, int]:
    """``--step 5`` or an inclusive range ``--step 3..7``."""
    first, dots, last = value.partition("..")
    try:
        return (int(first), int(last)) if dots else int(value)
    except ValueError:
        raise typer.BadParameter(
            f"{value!r} is not a step: give a whole number (5) or a range (3..7)",
            param_hint="--step",
        ) from None


def _output_format(fmt: str | None, output: Path | None) -> Format:
    try:
        return resolve_format(fmt, output)
    except QueryError as exc:
        raise typer.BadParameter(str(exc), param_hint="--format") from None


def search_command(
    text: Annotated[
        list[str],
        typer.Argument(
            help='Phrase to find, ignoring case (quote it: "division by zero"); several '
            "phrases must all occur in a trace.",
            show_default=False,
        ),
    ],
    run: RunOption = None,
    step: Annotated[
        str | None, typer.Option("--step", "-s", help="A step (5) or a range (3..7).")
    ] = None,
    phase: Annotated[
        list[str] | None, typer.Option("--phase", help="train, eval or prod (repeatable).")
    ] = None,
    status: Annotated[
        list[str] | None, typer.Option("--status", help="Trace status (repeatable).")
    ] = None,
    datapoint: Annotated[
        list[str] | None, typer.Option("--datapoint", "-d", help="Datapoint id (repeatable).")
    ] = None,
    results: Annotated[
        str | None,
        typer.Option(
            "--results",
            "--filter",
            help='Only traces whose stored results match, e.g. "tool_errors.tool_errors > 0".',
        ),
    ] = None,
    order_by: Annotated[
        str, typer.Option("--order-by", help=f"One of: {', '.join(ORDERABLE_COLUMNS)}.")
    ] = "step_number",
    descending: Annotated[bool, typer.Option("--desc", help="Sort descending.")] = False,
    limit: Annotated[
        int | None,
        typer.Option(
            "--limit", "-n", min=0, help=f"At most N traces (a table shows {_TABLE_ROWS})."
        ),
    ] = None,
    offset: Annotated[int, typer.Option("--offset", min=0, help="Skip the first N.")] = 0,
    fmt: FormatOption = None,
    output: OutputOption = None,
    project_id: ProjectOption = None,
) -> None:
    """Traces whose messages, tool calls (arguments and results), grader feedback or system
    events contain TEXT, with where it first occurs. Combine with --run, --step, --phase,
    --status, --datapoint and --results; page with --limit / --offset."""
    import pandas as pd

    out_format = _output_format(fmt, output)
    shown = shown_rows(limit, out_format, _TABLE_ROWS)
    filters: dict[str, Any] = {"text": text}
    for name, value in (
        ("step", None if step is None else parse_step(step)),
        ("phase", phase),
        ("status", status),
        ("datapoint_id", datapoint),
        ("results", results),
        ("project_id", project_id),
    ):
        if value:
            filters[name] = value
    with MantaService() as svc:
        total = svc.count_traces(run, **filters)
        traces = svc.get_traces(
            run, order_by=order_by, descending=descending, limit=shown, offset=offset, **filters
        )
        keys = [(t.run_id, t.trace_id) for t in traces]
        # a table cell shows about 60 characters: keep the match in it
        context = max(8, (50 - len(text[0])) // 2) if out_format == "table" else 60
        hits = first_hits(svc.store, text[0], keys, context)
    rows = []
    for trace in traces:
        hit = hits.get((trace.run_id, trace.trace_id))
        rows.append(
            {
                "trace_id": trace.trace_id,
                "run_id": trace.run_id,
                "step": trace.step_number,
                "phase": trace.phase.value,
                "datapoint_id": trace.datapoint_id,
                "status": trace.status,
                "score": trace.score,
                "span": _where(hit),
                "match": _snippet(hit),
            }
        )
    frame = pd.DataFrame(rows, columns=list(_COLUMNS))
    if out_format == "table":
        if not rows:
            console.print(f"no trace matches {_phrases(text)}", highlight=False)
            return
        first = offset + 1
        caption = f"{first:,}-{offset + len(rows):,} of {total:,} traces" + (
            "; --limit / --offset for others" if total > len(rows) else ""
        )
        write_frame(
            frame, out_format, output, console=console, title=f"search {_phrases(text)}",
            caption=caption, highlight_errors=False,
        )  # fmt: skip
        return
    write_frame(frame, out_format, output, console=console)


_COLUMNS = (
    "trace_id",
    "run_id",
    "step",
    "phase",
    "datapoint_id",
    "status",
    "score",
    "span",
    "match",
)


def _phrases(text: list[str]) -> str:
    return " and ".join(repr(phrase) for phrase in text)


def _where(hit: SpanHit | None) -> str:
    if hit is None:  # its matching span was deleted between the two queries
        return ""
    field = {"content": "", "tool_arguments": " arguments", "tool_result": " result"}[hit.field]
    label = f" {hit.label}" if hit.label else ""
    return f"#{hit.seq} {hit.kind}{label}{field}"


def _snippet(hit: SpanHit | None) -> str:
    if hit is None:
        return ""
    text = " ".join(hit.snippet.split())  # one line in a table cell
    return ("…" if hit.cut_before else "") + text + ("…" if hit.cut_after else "")


def register(app: typer.Typer) -> None:
    """Attach ``search`` to ``app``."""
    app.command("search")(search_command)
