"""``manta runs ...``: the JSONL runs log.

``stats`` aggregates p50/p95/p99 per wall-time bucket, ``compare`` finds the buckets that
regressed between two windows, ``workflows`` lists what the log holds, ``compact`` writes the
closed months to Parquet.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from manta_lib.runs_log import compare_windows, compute_stats, list_workflows
from manta_lib.runs_log.render import compare_table, stats_table, to_json_text, workflows_table
from manta_lib.runs_log.stats import ENGINES
from manta_lib.settings import load_settings

runs_app = typer.Typer(
    no_args_is_help=True,
    help="Cross-run wall-time analytics over the JSONL runs log (one line per terminal run).",
)

LogDirOption = Annotated[
    Path | None,
    typer.Option(
        "--log-dir",
        help="Directory of the YYYY-MM.jsonl shards [default: MANTA_RUNS_LOG_DIR, else "
        "<MANTA_DATA_DIR>/runs_log].",
        show_default=False,
    ),
]
EngineOption = Annotated[
    str,
    typer.Option(
        "--engine",
        help=f"Query engine: {' | '.join(ENGINES)} (auto picks DuckDB for large logs).",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Emit JSON instead of the table.")]
SubsetOption = Annotated[
    bool,
    typer.Option(
        "--include-subset",
        help="Also count computations over a subset of their run (left out by default).",
    ),
]
StatusOption = Annotated[
    str,
    typer.Option(
        "--status",
        help="Terminal status to keep (succeeded, mostly_failed, failed); --status '' keeps "
        "every terminal status.",
    ),
]


def _log_dir(log_dir: Path | None) -> Path:
    return log_dir if log_dir is not None else load_settings().runs_log_dir


@runs_app.command("stats")
def stats_command(
    workflow_id: Annotated[str, typer.Argument(help="Workflow id, e.g. default__listings-v1.")],
    last: Annotated[
        int, typer.Option("--last", help="Newest-first cap on runs considered (0 = no cap).")
    ] = 100,
    bucket: Annotated[
        list[str] | None,
        typer.Option(
            "--bucket",
            help="Restrict to a wall-time bucket; repeat for several. total_time_s is always "
            "included.",
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option("--since", help="Only runs finished within this duration: 7d, 24h, 30m."),
    ] = None,
    status: StatusOption = "succeeded",
    as_json: JsonOption = False,
    log_dir: LogDirOption = None,
    engine: EngineOption = "auto",
    include_subset: SubsetOption = False,
) -> None:
    """p50/p95/p99 per wall-time bucket across the last runs of a workflow."""
    result = compute_stats(
        _log_dir(log_dir),
        workflow_id,
        last=last,
        buckets=bucket or None,
        since=since,
        status=status,
        engine=engine,
        include_subset=include_subset,
    )
    typer.echo(to_json_text(result.to_json()) if as_json else stats_table(result))


@runs_app.command("compare")
def compare_command(
    workflow_id: Annotated[str, typer.Argument(help="Workflow id to compare.")],
    recent: Annotated[
        str, typer.Option("--recent", help="Recent window, ending now: 7d, 24h, 30m.")
    ] = "7d",
    baseline: Annotated[
        str,
        typer.Option("--baseline", help="Baseline window, ending where the recent one starts."),
    ] = "30d",
    threshold: Annotated[
        float,
        typer.Option(
            "--threshold", help="Flag a bucket whose p50 or p95 grew by more than this percent."
        ),
    ] = 20.0,
    fail_on_regression: Annotated[
        bool,
        typer.Option("--fail-on-regression", help="Exit 1 when a bucket regressed (for CI)."),
    ] = False,
    status: StatusOption = "succeeded",
    as_json: JsonOption = False,
    log_dir: LogDirOption = None,
    engine: EngineOption = "auto",
    include_subset: SubsetOption = False,
) -> None:
    """Which bucket regressed: p50/p95 of the recent window against the baseline before it."""
    result = compare_windows(
        _log_dir(log_dir),
        workflow_id,
        recent=recent,
        baseline=baseline,
        status=status,
        threshold_pct=threshold,
        engine=engine,
        include_subset=include_subset,
    )
    typer.echo(to_json_text(result.to_json()) if as_json else compare_table(result))
    if fail_on_regression and result.regressions:
        raise typer.Exit(1)


@runs_app.command("workflows")
def workflows_command(
    as_json: JsonOption = False,
    log_dir: LogDirOption = None,
    engine: EngineOption = "auto",
) -> None:
    """Workflow ids in the runs log with their run counts and newest finished_at."""
    summaries = list_workflows(_log_dir(log_dir), engine=engine)
    if as_json:
        typer.echo(to_json_text([s.to_json() for s in summaries]))
    elif not summaries:
        typer.echo("The runs log holds no runs yet.")
    else:
        typer.echo(workflows_table(summaries))


@runs_app.command("compact")
def compact_command(
    as_json: JsonOption = False,
    log_dir: LogDirOption = None,
) -> None:
    """Write closed months (before the current UTC month) to YYYY-MM.parquet.

    The compacted JSONL is moved to compacted/ under the log directory (kept, never read).
    """
    from manta_lib.runs_log.compact import compact

    done = compact(_log_dir(log_dir))
    if as_json:
        typer.echo(to_json_text([month.to_json() for month in done]))
    elif not done:
        typer.echo("Nothing to compact: no closed month has new JSONL.")
    else:
        for month in done:
            typer.echo(
                f"{month.month}: {month.rows:,} rows, {month.jsonl_bytes / 1e6:.1f} MB JSONL -> "
                f"{month.parquet_bytes / 1e6:.1f} MB Parquet in {month.seconds:.1f} s"
            )


def register(app: typer.Typer) -> None:
    """Attach the runs-log commands to ``app`` (``manta runs ...``)."""
    app.add_typer(runs_app, name="runs")
