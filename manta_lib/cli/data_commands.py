"""Commands over the trace store: ``import``, ``demo seed``, ``runs-overview``.

Each command opens the store late and closes it before returning (the embedded chDB store
can be open in one process at a time).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from manta_lib.demo import seed_demo
from manta_lib.ingest import import_jsonl
from manta_lib.service import MantaService
from manta_lib.settings import load_settings
from manta_lib.store import Store

console = Console()
_MAX_ERRORS_SHOWN = 200

demo_app = typer.Typer(no_args_is_help=True, help="Synthetic demo data (seeded, deterministic).")

ExistingFile = Annotated[
    list[Path],
    typer.Argument(
        help="JSON Lines files, one trace per line (docs/import_format.md).",
        exists=True,
        dir_okay=False,
        readable=True,
        show_default=False,
    ),
]


def import_command(
    files: ExistingFile,
    spans: Annotated[
        list[Path] | None,
        typer.Option(
            "--spans",
            help="A JSON Lines file of spans, one per line with its trace_id (repeatable).",
            exists=True,
            dir_okay=False,
            readable=True,
            show_default=False,
        ),
    ] = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="Load nothing if any line is bad.")
    ] = False,
    project_id: Annotated[
        str, typer.Option("--project-id", help="project_id of traces that carry none.")
    ] = "",
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, help="Traces per insert batch.")
    ] = 5000,
) -> None:
    """Import traces (and spans) from JSON Lines files; exit code 1 if a line was bad.

    Good lines are loaded even when others are bad (unless --strict); traces already in the
    store are skipped, so importing a file twice is harmless.
    """
    with Store.open(load_settings()) as store:
        report = import_jsonl(
            files,
            store=store,
            spans_paths=spans or (),
            strict=strict,
            batch_size=batch_size,
            project_id=project_id,
        )
    console.print(report.summary(), highlight=False, markup=False, soft_wrap=True)
    for error in report.errors[:_MAX_ERRORS_SHOWN]:
        typer.echo(str(error), err=True)
    if len(report.errors) > _MAX_ERRORS_SHOWN:
        typer.echo(f"... and {len(report.errors) - _MAX_ERRORS_SHOWN:,} more errors", err=True)
    if report.errors:
        raise typer.Exit(1)


@demo_app.command("seed")
def demo_seed_command(
    traces: Annotated[
        int, typer.Option("--traces", min=1, help="Number of traces (about 20 spans each).")
    ] = 10_000,
    seed: Annotated[int, typer.Option("--seed", help="Random seed; same seed, same rows.")] = 7,
    if_empty: Annotated[
        bool, typer.Option("--if-empty", help="Do nothing if the traces table has rows.")
    ] = False,
) -> None:
    """Write realistic synthetic RL runs (GRPO groups, tool use, graders) into the store."""
    with Store.open(load_settings()) as store:
        summary = seed_demo(store, traces=traces, seed=seed, if_empty=if_empty)
        database = store.database
    if summary.skipped:
        console.print(f"{summary.message} (database {database})", highlight=False, soft_wrap=True)
        return
    table = Table(title=f"demo data in database {database}")
    for name in ("runs", "traces", "spans", "seconds"):
        table.add_column(name, justify="right")
    table.add_row(
        str(len(summary.runs)),
        f"{summary.traces:,}",
        f"{summary.spans:,}",
        f"{summary.seconds:.1f}",
    )
    console.print(table)
    console.print("runs: " + ", ".join(summary.runs), highlight=False, soft_wrap=True)


def runs_overview_command(
    project_id: Annotated[
        str | None, typer.Option("--project-id", help="Only runs of this project.")
    ] = None,
) -> None:
    """A table of the runs in the store: traces, steps, datapoints, mean score, error rate."""
    with Store.open(load_settings()) as store:
        runs = MantaService(store).list_runs(project_id=project_id)
    if not runs:
        console.print("no runs in the store (try `manta demo seed` or `manta import FILE`)")
        return
    table = Table(
        box=box.SIMPLE_HEAD,
        show_edge=False,
        padding=(0, 1),
        collapse_padding=True,
        caption="score: mean grader score; errors: share of error and timeout traces",
    )
    table.add_column("run_id", no_wrap=True)
    table.add_column("phases", no_wrap=True)
    for name in ("traces", "steps", "datapoints", "score", "errors"):
        table.add_column(name, justify="right", min_width=len(name))
    for run in runs:
        table.add_row(
            run.run_id,
            "+".join(run.phases),
            f"{run.trace_count:,}",
            f"{run.step_count:,}",
            f"{run.datapoint_count:,}",
            "-" if run.mean_score is None else f"{run.mean_score:.3f}",
            f"{run.error_count / run.trace_count:.1%}" if run.trace_count else "-",
        )
    console.print(table)


def register(app: typer.Typer) -> None:
    """Attach the data commands to ``app``."""
    app.command("runs-overview")(runs_overview_command)
    app.add_typer(demo_app, name="demo")
