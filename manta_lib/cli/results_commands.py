"""Commands over stored results: ``results``, ``judges``, ``show``, ``export``, ``compare``,
``plot``.

Tables print as rich tables on a terminal; ``--format csv|json|parquet`` and ``--output FILE``
write them for other tools. Each command opens the store late and closes it before returning.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, cast

import typer
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.text import Text

from manta_lib.context import Message, TraceContext
from manta_lib.errors import QueryError
from manta_lib.results.entity import StoredResult, trace_results
from manta_lib.results.output import FORMATS, human_number, resolve_format, write_frame
from manta_lib.service import MantaService

console = Console()
_TABLE_ROWS = 50

RunOption = Annotated[
    list[str] | None,
    typer.Option("--run", "-r", help="Run id (repeat for several runs).", show_default=False),
]
LevelOption = Annotated[str, typer.Option("--level", "-l", help="trace, datapoint, step or run.")]
FormatOption = Annotated[
    str | None,
    typer.Option(
        "--format",
        "-f",
        help=f"{'|'.join(FORMATS)} (default: table on a terminal, else csv or the --output "
        f"file's suffix).",
        show_default=False,
    ),
]
OutputOption = Annotated[
    Path | None,
    typer.Option("--output", "-o", help="Write to this file instead of stdout.", dir_okay=False),
]
LimitOption = Annotated[
    int | None,
    typer.Option("--limit", "-n", min=0, help=f"At most N rows (a table shows {_TABLE_ROWS})."),
]
ProjectOption = Annotated[
    str | None, typer.Option("--project-id", help="Only this project.", show_default=False)
]


def _output_format(fmt: str | None, output: Path | None) -> Any:
    """The output format, a usage error (exit 2) when --format / --output do not fit."""
    try:
        return resolve_format(fmt, output)
    except QueryError as exc:
        raise typer.BadParameter(str(exc), param_hint="--format") from None


def results_command(
    judge: Annotated[str, typer.Argument(help="Judge id, e.g. tool_errors.")],
    run: RunOption = None,
    level: LevelOption = "trace",
    where: Annotated[
        str | None,
        typer.Option(
            "--where", "-w", help="Condition, e.g. \"tool_errors > 0 and status == 'ok'\"."
        ),
    ] = None,
    version: Annotated[
        str | None, typer.Option("--version", help="A judge version, or 'all' (default: latest).")
    ] = None,
    columns: Annotated[
        str | None, typer.Option("--columns", "-c", help="Comma-separated output columns.")
    ] = None,
    limit: LimitOption = None,
    fmt: FormatOption = None,
    output: OutputOption = None,
    project_id: ProjectOption = None,
) -> None:
    """Stored results of JUDGE: one row per entity, one column per output field."""
    out_format = _output_format(fmt, output)
    shown = shown_rows(limit, out_format)
    arguments: dict[str, Any] = {
        "level": level,
        "version": version,
        "where": where,
        "columns": [c.strip() for c in columns.split(",") if c.strip()] if columns else None,
        "limit": None if shown is None else shown + (1 if out_format == "table" else 0),
        "project_id": project_id,
    }
    with MantaService() as svc:
        arrow = svc.results_arrow(judge, run, **arguments) if out_format == "parquet" else None
        frame = svc.results(judge, run, **arguments) if arrow is None else arrow.to_pandas()
    caption = ""
    if out_format == "table" and shown is not None and len(frame) > shown:
        frame = frame.iloc[:shown]
        caption = f"first {shown} rows; --limit N for more, --format csv for all"
    if out_format == "table" and frame.empty:
        console.print(f"no {level} results of {judge} match", highlight=False)
        return
    write_frame(
        frame,
        out_format,
        output,
        console=console,
        title=f"{judge} · {level}",
        caption=caption,
        arrow=arrow,
    )


def judges_command(
    run: RunOption = None,
    fmt: FormatOption = None,
    output: OutputOption = None,
    project_id: ProjectOption = None,
) -> None:
    """Judges with stored results: versions, levels, entity counts, columns, when computed."""
    import pandas as pd

    out_format = _output_format(fmt, output)
    with MantaService() as svc:
        judges = svc.judges(run_id=run, project_id=project_id)
    rows = []
    for info in judges:
        latest = info.latest_version
        for version in info.versions:
            rows.append(
                {
                    "judge": info.judge,
                    "project_id": info.project_id,
                    "version": version.version,
                    "label": version.label,
                    "latest": version.version == latest,
                    "level": version.level,
                    "runs": version.runs,
                    "entities": version.entities,
                    "errors": version.errors,
                    "last_computed_at": version.last_computed_at,
                    "columns": ", ".join(version.columns),
                }
            )
        if not info.versions:
            rows.append({"judge": info.judge, "project_id": info.project_id, "entities": 0})
    if not rows:
        console.print("no judges have stored results (run a pipeline with persist_results=True)")
        return
    frame = pd.DataFrame(rows)
    if out_format == "table":
        frame["last_computed_at"] = frame["last_computed_at"].map(
            lambda at: "-" if pd.isna(at) else f"{at:%Y-%m-%d %H:%M}"
        )
        frame["latest"] = frame["latest"].map(lambda latest: "*" if latest is True else "")
        if frame["project_id"].nunique() == 1:
            frame = frame.drop(columns=["project_id"])
    write_frame(frame, out_format, output, console=console, highlight_errors=False)


def show_command(
    trace_id: Annotated[str, typer.Argument(help="The trace to show.")],
    max_chars: Annotated[
        int, typer.Option("--max-chars", min=20, help="Cut each message to this many characters.")
    ] = 2000,
) -> None:
    """A trace in the terminal: its conversation, tool calls, grader verdict and results."""
    with MantaService() as svc:
        trace = svc.get_trace(trace_id)
        results = trace_results(svc.store, trace)
    _print_trace(trace, results, max_chars)


def _cost_text(cost: float | None, estimated: bool) -> str:
    """A trace's cost for people: unknown is said, never shown as $0; estimates say so."""
    if cost is None:
        return "cost unknown"
    return f"${cost:.4f}" + (" (estimated)" if estimated else "")


def _print_trace(trace: TraceContext, results: list[StoredResult], max_chars: int) -> None:
    score = "-" if trace.score is None else f"{trace.score:.3f}"
    status_style = "red" if trace.has_error or trace.status != "ok" else "green"
    header = Text.assemble(
        (trace.trace_id, "bold"),
        f"  run {trace.run_id} · step {trace.step_number} · datapoint {trace.datapoint_id} · "
        f"{trace.phase.value} · ",
        (trace.status, status_style),
        f" · score {score} · {trace.model_name} · {trace.turn_count} turns · "
        f"{_cost_text(trace.cost_usd, bool(trace.meta.get('cost_estimated')))} · "
        f"{trace.duration_ms / 1000:.1f} s",
    )
    console.print(header)
    for turn in trace.conversation():
        if isinstance(turn, Message):
            style = {"system": "dim", "user": "cyan", "assistant": "green"}.get(turn.role, "white")
            label = f"{turn.role}:{turn.name}" if turn.name else turn.role
            console.print(
                Panel(
                    escape(_cut(turn.content, max_chars)) or "[dim](empty)[/]",
                    title=label,
                    title_align="left",
                    border_style=style,
                )
            )
        else:
            arguments = (
                json.dumps(turn.arguments, ensure_ascii=False)
                if isinstance(turn.arguments, dict)
                else turn.arguments
            )
            title = f"tool {turn.tool_name}"
            if turn.is_error:
                title += " · ERROR" + (f" {turn.error_type}" if turn.error_type else "")
            body = f"[bold]args[/] {escape(_cut(arguments, max_chars))}\n"
            body += f"[bold]result[/] {escape(_cut(turn.result, max_chars))}"
            console.print(
                Panel(
                    body,
                    title=title,
                    title_align="left",
                    border_style="red" if turn.is_error else "magenta",
                )
            )
    for event in trace.system_events():
        if event.is_error or event.name == "timeout":
            console.print(f"[red]system {event.name}[/] {escape(_cut(event.content, max_chars))}")
    grader = trace.grader_result()
    if grader is None:
        console.print("[yellow]grader: none (no grader span)[/]")
    else:
        verdict = {True: "[green]passed[/]", False: "[red]failed[/]", None: "no verdict"}
        grader_score = "-" if grader.score is None else f"{grader.score:.3f}"
        lines = [f"grader {grader.name}: {verdict[grader.passed]} · score {grader_score}"]
        for criterion in grader.criteria:
            mark = {True: "[green]✓[/]", False: "[red]✗[/]", None: "·"}[criterion.passed]
            lines.append(f"  {mark} {escape(criterion.name)}")
        if grader.feedback:
            lines.append(f"  {escape(_cut(grader.feedback, max_chars))}")
        console.print("\n".join(lines))
    if not results:
        console.print("[dim]no stored results for this trace[/]")
        return
    for result in results:
        title = f"{result.judge} · {result.level} {result.entity_id} · v{result.judge_version}"
        if not result.ok:
            console.print(f"[red]{escape(title)} · error[/] {escape(result.error or '')}")
            continue
        values = ", ".join(
            f"{name}={escape(_human_value(value))}" for name, value in result.values.items()
        )
        console.print(f"[bold]{escape(title)}[/] {_cut(values, max_chars)}")


def _human_value(value: Any) -> str:
    """A stored value for people: floats rounded (``0.08571``), the rest as JSON."""
    if isinstance(value, float):
        return human_number(value)
    if isinstance(value, list) and any(isinstance(v, float) for v in value):
        return "[" + ", ".join(_human_value(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def export_command(
    output: Annotated[
        Path,
        typer.Option("--output", "-o", help="Directory to write into (created).", file_okay=False),
    ],
    run: RunOption = None,
    fmt: Annotated[
        str, typer.Option("--format", "-f", help="parquet or jsonl (traces in the import format).")
    ] = "parquet",
    judge: Annotated[
        list[str] | None,
        typer.Option("--judge", "-j", help="Also export this judge's results (repeatable)."),
    ] = None,
    level: LevelOption = "trace",
    results_filter: Annotated[
        str | None,
        typer.Option(
            "--filter", help='Only traces whose results match, e.g. "tool_errors.tool_errors > 0".'
        ),
    ] = None,
    spans: Annotated[bool, typer.Option("--spans/--no-spans", help="Include spans.")] = True,
    traces: Annotated[
        bool, typer.Option("--traces/--no-traces", help="Export traces (or only results).")
    ] = True,
) -> None:
    """Export traces (with spans) and/or stored results to Parquet or JSON Lines files."""
    from manta_lib.results.export import ExportFormat, export

    filters: dict[str, Any] = {} if results_filter is None else {"results": results_filter}
    with MantaService() as svc:
        if run:
            for run_id in run:
                svc.require_run(run_id)
        summary = export(
            svc,
            output,
            run,
            fmt=cast(ExportFormat, fmt),  # validated by export()
            traces=traces,
            spans=spans,
            judges=judge or (),
            level=level,
            **filters,
        )
    for path, rows in summary.files.items():
        console.print(f"{rows:,} rows → {path}", highlight=False)


def compare_command(
    judge: Annotated[str, typer.Argument(help="Judge id.")],
    run: RunOption = None,
    version: Annotated[
        list[str] | None,
        typer.Option("--version", help="Two versions of JUDGE to compare on one run."),
    ] = None,
    against: Annotated[
        str | None,
        typer.Option("--against", help="'grader' (the traces' own grader) or another judge."),
    ] = None,
    level: Annotated[
        str | None, typer.Option("--level", "-l", help="Default: datapoint for runs, else trace.")
    ] = None,
    column: Annotated[
        list[str] | None, typer.Option("--column", "-c", help="Only these columns (repeatable).")
    ] = None,
    fmt: FormatOption = None,
    output: OutputOption = None,
) -> None:
    """Compare two runs (--run A --run B), two versions (--run R --version V1 --version V2),
    or a judge against the grader or another judge (--run R --against grader|JUDGE)."""
    from manta_lib.results.compare import Agreement

    runs, versions = run or [], version or []
    out_format = _output_format(fmt, output)
    with MantaService() as svc:
        if len(runs) == 2 and not versions and against is None:
            result: Any = svc.compare_runs(
                judge, runs[0], runs[1], level=level or "datapoint", columns=column
            )
        elif len(runs) == 1 and len(versions) == 2 and against is None:
            result = svc.compare_versions(
                judge, runs[0], versions[0], versions[1], level=level or "trace", columns=column
            )
        elif len(runs) == 1 and against == "grader" and not versions:
            if not column or len(column) != 1:
                raise typer.BadParameter("--against grader needs one --column (boolean or numeric)")
            result = svc.compare_with_grader(judge, runs[0], column[0])
        elif len(runs) == 1 and against is not None and not versions:
            pairs = [(c, c) for c in column] if column else None
            result = svc.compare_judges(
                judge, against, runs[0], level=level or "trace", columns=pairs
            )
        else:
            raise typer.BadParameter(
                "use --run A --run B, or --run R --version V1 --version V2, or --run R --against "
                "grader|JUDGE"
            )
    if out_format in ("csv", "parquet"):
        write_frame(result.joined, out_format, output, console=console)
        return
    summary = _agreement_summary(result) if isinstance(result, Agreement) else _runs_summary(result)
    if out_format == "json":
        text = json.dumps(summary, default=str, ensure_ascii=False, indent=2) + "\n"
        if output is None:
            typer.echo(text, nl=False)
        else:
            output.write_text(text)
        return
    _print_comparison(summary)


def _runs_summary(result: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return {
        "judge": result.judge,
        "level": result.level,
        "run_a": result.run_a,
        "run_b": result.run_b,
        "keys": list(result.keys),
        "common_entities": len(result.joined),
        "only_a": result.only_a,
        "only_b": result.only_b,
        "note": result.note,
        "numeric": [
            {**asdict(n), "delta_p50": n.delta_p50, "delta_p95": n.delta_p95}
            for n in result.numeric
        ],
        "categorical": [asdict(c) for c in result.categorical],
    }


def _agreement_summary(result: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return {
        "a": result.label_a,
        "b": result.label_b,
        "level": result.level,
        "common_entities": result.common,
        "only_a": result.only_a,
        "only_b": result.only_b,
        "columns": [asdict(c) | {"disagreeing": list(c.disagreeing)} for c in result.columns],
        **({"calibration": asdict(result.calibration)} if result.calibration is not None else {}),
    }


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _print_comparison(summary: dict[str, Any]) -> None:
    from rich.table import Table

    if "run_a" in summary:
        console.print(
            f"[bold]{summary['judge']}[/] · {summary['level']}: A {summary['run_a']} vs "
            f"B {summary['run_b']} · {summary['common_entities']} common entities "
            f"({summary['only_a']} only in A, {summary['only_b']} only in B)"
        )
        if summary["note"]:
            console.print(f"[yellow]{escape(summary['note'])}[/]")
        table = Table(title="numeric columns (B - A)", box=None, padding=(0, 1))
        for name in (
            "column",
            "mean A",
            "mean B",
            "Δ mean",
            "95% CI",
            "Δ p50",
            "Δ p95",
            "n A",
            "n B",
        ):
            table.add_column(name, justify="left" if name == "column" else "right")
        phased = len({n["phase"] for n in summary["numeric"] + summary["categorical"]}) > 1
        for n in summary["numeric"]:
            ci = "-" if n["ci_low"] is None else f"[{n['ci_low']:.4g}, {n['ci_high']:.4g}]"
            label = f"{n['column']} · {n['phase']}" if phased else n["column"]
            table.add_row(
                label, _fmt(n["mean_a"]), _fmt(n["mean_b"]), _fmt(n["delta_mean"]), ci,
                _fmt(n["delta_p50"]), _fmt(n["delta_p95"]), str(n["n_a"]), str(n["n_b"]),
            )  # fmt: skip
        if summary["numeric"]:
            console.print(table)
        for c in summary["categorical"]:
            labels = sorted(set(c["shares_a"]) | set(c["shares_b"]), key=str)
            shifts = ", ".join(
                f"{label}: {c['shares_a'].get(label, 0):.1%} → {c['shares_b'].get(label, 0):.1%}"
                for label in labels
            )
            name = f"{c['column']} · {c['phase']}" if phased else c["column"]
            console.print(
                f"{name}: {shifts} (total variation {_fmt(c['total_variation'])})",
                highlight=False,
            )
        return
    console.print(
        f"A [bold]{summary['a']}[/] vs B [bold]{summary['b']}[/] · {summary['level']} · "
        f"{summary['common_entities']} common entities ({summary['only_a']} only in A, "
        f"{summary['only_b']} only in B)"
    )
    table = Table(box=None, padding=(0, 1))
    for name in (
        "column", "n", "mean A", "mean B", "accuracy", "kappa", "correlation", "MAD", "disagree",
        "first",
    ):  # fmt: skip
        table.add_column(name, justify="left" if name in ("column", "first") else "right")
    for c in summary["columns"]:
        table.add_row(
            c["column"], str(c["n"]), _fmt(c["mean_a"]), _fmt(c["mean_b"]), _fmt(c["accuracy"]),
            _fmt(c["kappa"]),
            _fmt(c["correlation"]), _fmt(c["mad"]), str(len(c["disagreeing"])),
            ", ".join(c["disagreeing"][:3]),
        )  # fmt: skip
    console.print(table)
    if summary.get("calibration"):
        _print_calibration(summary["calibration"])


def _interval(estimate: dict[str, Any]) -> str:
    if estimate["value"] is None:
        return "-"
    if estimate["low"] is None:
        return f"{estimate['value']:.3f}"
    return f"{estimate['value']:.3f} [{estimate['low']:.3f}, {estimate['high']:.3f}]"


def _print_calibration(report: dict[str, Any]) -> None:
    """The calibration of A against B as the reference (e.g. human labels)."""
    from rich.table import Table

    level = round(report["confidence"] * 100)
    for column in report["columns"]:
        console.print(
            f"\n[bold]{escape(column['column'])}[/]: {report['judge']} against "
            f"{report['reference']} on {column['n']} entities · accuracy "
            f"{_interval(column['accuracy'])} · kappa {_interval(column['kappa'])} "
            f"({level}% bootstrap intervals)",
            highlight=False,
        )
        matrix = Table(title=f"confusion ({report['reference']} ↓ / {report['judge']} →)",
                       box=None, padding=(0, 1))  # fmt: skip
        matrix.add_column("")
        for label in column["labels"]:
            matrix.add_column(escape(label), justify="right")
        matrix.add_column("recall", justify="right")
        for label, row, score in zip(
            column["labels"], column["confusion"], column["per_category"], strict=True
        ):
            matrix.add_row(escape(label), *map(str, row), _interval(score["recall"]))
        matrix.add_row(
            "precision", *(_interval(s["precision"]) for s in column["per_category"]), ""
        )
        console.print(matrix)
        if column["tpr"] is not None:
            console.print(f"TPR {_interval(column['tpr'])} · TNR {_interval(column['tnr'])}")
        slices = Table(title="per step", box=None, padding=(0, 1))
        for name in ("phase", "step", "n", "accuracy", "kappa", "disagree"):
            slices.add_column(name, justify="left" if name == "phase" else "right")
        for part in column["by_step"] + column["by_phase"]:
            slices.add_row(
                part["phase"], "all" if part["step_number"] is None else str(part["step_number"]),
                str(part["n"]), _interval(part["accuracy"]), _interval(part["kappa"]),
                str(part["disagreeing"]),
            )  # fmt: skip
        console.print(slices)
        if column["disagreeing"]:
            shown = ", ".join(
                f"{d['entity_id']} ({d['reference_value']} vs {d['judge_value']})"
                for d in column["disagreeing"][:10]
            )
            more = len(column["disagreeing"]) - 10
            console.print(
                f"disagreeing: {escape(shown)}" + (f" … and {more} more" if more > 0 else ""),
                highlight=False,
            )
    for agreement in report["inter_annotator"]:
        console.print(
            f"inter-annotator agreement on {agreement['column']} ({agreement['n']} items "
            f"labelled twice): accuracy {_interval(agreement['accuracy'])} · kappa "
            f"{_interval(agreement['kappa'])}",
            highlight=False,
        )


def plot_command(
    judge: Annotated[str, typer.Argument(help="Judge id.")],
    column: Annotated[str, typer.Argument(help="A numeric or boolean result column.")],
    run: RunOption = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Image file (.png or .svg).", dir_okay=False),
    ] = None,
    level: LevelOption = "trace",
    statistic: Annotated[
        str, typer.Option("--stat", help="mean, p50, p95 or count per step.")
    ] = "mean",
    version: Annotated[
        str | None, typer.Option("--version", help="A judge version (default: latest).")
    ] = None,
) -> None:
    """Plot COLUMN of JUDGE per step (one curve per --run) to a PNG or SVG file."""
    if output is None:
        raise typer.BadParameter("add -o curve.png (or .svg)", param_hint="--output")
    if not run:
        raise typer.BadParameter("name at least one run", param_hint="--run")
    from manta_lib.results.series import plot_series

    with MantaService() as svc:
        frame = svc.series(judge, column, run, level=level, version=version)
    path = plot_series(
        frame, output, title=f"{judge} · {column}", ylabel=f"{column} ({statistic})",
        statistic=statistic,
    )  # fmt: skip
    console.print(
        f"{len(frame)} points of {column} ({statistic}) over {frame.run_id.nunique()} run(s) "
        f"→ {path}",
        highlight=False,
    )


def _cut(text: str, max_chars: int) -> str:
    return text if len(text) <= max_chars else text[: max_chars - 1] + "…"


def register(app: typer.Typer) -> None:
    """Attach the results commands to ``app``."""
    app.command("results")(results_command)
    app.command("judges")(judges_command)
    app.command("show")(show_command)
    app.command("export")(export_command)
    app.command("compare")(compare_command)
    app.command("plot")(plot_command)


def shown_rows(limit: int | None, out_format: str, table_rows: int = _TABLE_ROWS) -> int | None:
    """How many rows to print: ``limit`` when given or when writing a file format, else a
    table's first ``table_rows``."""
    return limit if limit is not None or out_format != "table" else table_rows
