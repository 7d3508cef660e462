"""Commands over the trace store: ``demo seed``, ``runs-overview``, ``runs-delete``
(``import`` is in :mod:`manta_lib.cli.import_commands`).

Each command opens the store late and closes it before returning (the embedded chDB store
can be open in one process at a time).
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from manta_lib.demo import DemoInterrupted, seed_demo
from manta_lib.errors import QueryError
from manta_lib.service import MantaService
from manta_lib.settings import load_settings
from manta_lib.store import Store
from manta_lib.store.trace_writes import delete_run, run_row_counts

console = Console()

demo_app = typer.Typer(no_args_is_help=True, help="Synthetic demo data (seeded, deterministic).")

_EXIT_INTERRUPTED = 130


@demo_app.command("seed")
def demo_seed_command(
    traces: Annotated[
        int, typer.Option("--traces", min=1, help="Number of traces (about 20 spans each).")
    ] = 10_000,
    seed: Annotated[int, typer.Option("--seed", help="Random seed; same seed, same rows.")] = 7,
    if_empty: Annotated[
        bool,
        typer.Option(
            "--if-empty",
            help="Do nothing if the store holds traces this seed would not write (an "
            "unfinished seed with the same arguments is completed).",
        ),
    ] = False,
    batch_traces: Annotated[
        int, typer.Option("--batch-traces", min=1, hidden=True, help="Traces per insert.")
    ] = 5_000,
) -> None:
    """Write realistic synthetic RL runs (GRPO groups, tool use, graders) into the store.

    Resumable: if a seed was killed or interrupted, run the same command again to complete
    it; rows already stored are not written twice.
    """
    try:
        with Store.open(load_settings()) as store:
            summary = seed_demo(
                store, traces=traces, seed=seed, if_empty=if_empty, batch_traces=batch_traces
            )
            database = store.database
    except DemoInterrupted as interrupted:
        typer.echo(interrupted.message(), err=True)
        raise typer.Exit(_EXIT_INTERRUPTED) from None
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
    if summary.already_stored:
        console.print(
            f"resumed: {summary.already_stored:,} traces were already stored (an earlier seed "
            f"was stopped); each row is stored once",
            highlight=False,
            soft_wrap=True,
        )


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


def runs_delete_command(
    run_id: Annotated[str, typer.Argument(help="The run to delete.", show_default=False)],
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Delete without asking for confirmation.")
    ] = False,
) -> None:
    """Delete a run: its traces, spans and computed results (judge values and progress).

    Shows what will be deleted and asks for confirmation unless --yes. Cannot be undone.
    """
    with Store.open(load_settings()) as store:
        traces, spans, results = run_row_counts(store, run_id)
        if not (traces or spans or results):
            raise QueryError(
                f"run {run_id!r} has no traces, spans or results in database "
                f"{store.database!r}: nothing to delete (see `manta runs-overview`)"
            )
        what = (
            f"run {run_id!r}: {traces:,} traces, {spans:,} spans and {results:,} result rows "
            f"in database {store.database!r}"
        )
        if not yes and not typer.confirm(f"Delete {what}?", default=False, err=True):
            typer.echo("nothing deleted", err=True)
            raise typer.Exit(1)
        delete_run(store, run_id)
    console.print(f"deleted {what}", highlight=False, markup=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Attach the data commands to ``app``."""
    app.command("runs-overview")(runs_overview_command)
    app.command("runs-delete")(runs_delete_command)
    app.add_typer(demo_app, name="demo")
