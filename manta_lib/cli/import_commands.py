"""``manta import`` (every supported format) and ``manta collect`` (an OTLP/HTTP collector).

Both open the store late and close it early (the embedded chDB store can be open in one
process at a time).
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from manta_lib.importers import FORMATS, format_of, import_files
from manta_lib.ingest.lines import STDIN
from manta_lib.ingest.loader import ImportInterrupted, ImportReport, import_jsonl
from manta_lib.settings import load_settings
from manta_lib.store import Store

console = Console()
_MAX_ERRORS_SHOWN = 200
_EXIT_INTERRUPTED = 130


def _readable_inputs(values: list[Path] | None) -> list[Path] | None:
    """``-`` is standard input; anything else must exist (regular files, ``/dev/stdin``,
    named pipes and ``<(...)`` substitutions; directories are verl dump directories)."""
    for value in values or []:
        if str(value) == STDIN:
            continue
        if not value.exists():
            raise typer.BadParameter(f"{value}: no such file")
    return values


Files = Annotated[
    list[Path],
    typer.Argument(
        help="Files to import: Manta JSON lines, OpenAI-message JSON lines, Inspect AI logs "
        "(.eval/.json), OTLP JSON or protobuf, verl dump directories (docs/importers.md); - "
        "reads stdin (Manta JSON lines).",
        callback=_readable_inputs,
        show_default=False,
    ),
]


def _drop_warnings(record: logging.LogRecord) -> bool:
    return record.levelno != logging.WARNING


def import_command(
    files: Files,
    format: Annotated[
        str,
        typer.Option(
            "--format", "-f", help=f"Input format: {'|'.join(FORMATS)} (auto: by content)."
        ),
    ] = "auto",
    run_id: Annotated[
        str | None, typer.Option("--run-id", help="Run of every imported trace.")
    ] = None,
    phase: Annotated[
        str | None, typer.Option("--phase", help="Phase of every trace: train|eval|prod.")
    ] = None,
    step: Annotated[
        str | None,
        typer.Option("--step", help="Step: an integer, or a field path such as metadata.step."),
    ] = None,
    datapoint: Annotated[
        str | None,
        typer.Option("--datapoint", help="Field path of the datapoint id (metadata.problem_id)."),
    ] = None,
    score: Annotated[
        str | None, typer.Option("--score", help="Field path of the trace score (reward).")
    ] = None,
    project: Annotated[
        str | None, typer.Option("--project", help="project_id of every imported trace.")
    ] = None,
    project_id: Annotated[
        str, typer.Option("--project-id", help="project_id of traces that carry none.")
    ] = "",
    spans: Annotated[
        list[Path] | None,
        typer.Option(
            "--spans",
            help="Manta format only: a JSON Lines file of spans, one per line with its "
            "trace_id (repeatable).",
            callback=_readable_inputs,
            show_default=False,
        ),
    ] = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="Load nothing if any record is bad.")
    ] = False,
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, help="Traces per insert batch.")
    ] = 5000,
) -> None:
    """Import traces from files; exit code 1 if a record was bad.

    Good records load even when others are bad (unless --strict); traces already in the
    store are skipped, so importing a file twice, or again after an interrupted import, is
    harmless. FILE may be - (stdin) or a pipe (read as Manta JSON lines). Ctrl-C stops
    between batches: exit code 130 and a line saying what was stored.
    """
    if format not in FORMATS:
        raise typer.BadParameter(
            f"{format!r} is not one of {', '.join(FORMATS)}", param_hint="--format"
        )
    hierarchy_given = any(v is not None for v in (run_id, phase, step, datapoint, score, project))
    if spans:
        formats = {format_of(path, format) for path in files}
        if formats != {"manta"} or hierarchy_given:
            raise typer.BadParameter(
                "--spans works with Manta-format trace files only, without hierarchy options",
                param_hint="--spans",
            )
    ingest_log = logging.getLogger("manta_lib.ingest")
    ingest_log.addFilter(_drop_warnings)  # the report's warnings are printed below, once
    try:
        with Store.open(load_settings()) as store:
            report: ImportReport
            if spans:
                report = import_jsonl(
                    files,
                    store=store,
                    spans_paths=spans,
                    strict=strict,
                    batch_size=batch_size,
                    project_id=project_id,
                )
            else:
                report = import_files(
                    files,
                    store=store,
                    format=format,
                    run_id=run_id,
                    phase=phase,
                    step=step,
                    datapoint=datapoint,
                    score=score,
                    project=project,
                    project_id=project_id,
                    strict=strict,
                    batch_size=batch_size,
                )
    except ImportInterrupted as interrupted:
        typer.echo(interrupted.summary(), err=True)
        raise typer.Exit(_EXIT_INTERRUPTED) from None
    finally:
        ingest_log.removeFilter(_drop_warnings)
    console.print(report.summary(), highlight=False, markup=False, soft_wrap=True)
    for warning in report.warnings:
        typer.echo(f"warning: {warning}", err=True)
    for error in report.errors[:_MAX_ERRORS_SHOWN]:
        typer.echo(str(error), err=True)
    if len(report.errors) > _MAX_ERRORS_SHOWN:
        typer.echo(f"... and {len(report.errors) - _MAX_ERRORS_SHOWN:,} more errors", err=True)
    if report.errors:
        raise typer.Exit(1)


def collect_command(
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, help="Port (OTLP/HTTP: 4318).")
    ] = 4318,
    token: Annotated[
        str | None,
        typer.Option(
            "--token", envvar="MANTA_COLLECT_TOKEN", help="Require 'Authorization: Bearer T'."
        ),
    ] = None,
    idle_timeout: Annotated[
        float,
        typer.Option(
            "--idle-timeout", min=0.0, help="Seconds without a new span before a trace is written."
        ),
    ] = 30.0,
    max_body_mb: Annotated[
        float,
        typer.Option("--max-body-mb", min=0.001, max=4096.0, help="Largest request body accepted."),
    ] = 16.0,
    body_timeout: Annotated[
        float,
        typer.Option(
            "--body-timeout", min=0.1, max=3600.0, help="Seconds a request body may take to arrive."
        ),
    ] = 30.0,
    run_id: Annotated[
        str | None,
        typer.Option("--run-id", help="Run of every trace (else its manta.run_id attribute)."),
    ] = None,
    phase: Annotated[str | None, typer.Option("--phase", help="Phase of every trace.")] = None,
    step: Annotated[
        str | None, typer.Option("--step", help="Step: an integer or an attribute name.")
    ] = None,
    datapoint: Annotated[
        str | None, typer.Option("--datapoint", help="Attribute holding the datapoint id.")
    ] = None,
    score: Annotated[
        str | None, typer.Option("--score", help="Attribute holding the trace score.")
    ] = None,
    project: Annotated[
        str | None, typer.Option("--project", help="project_id of the collected traces.")
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            min=0,
            max=64,
            help="Processes decoding and checking requests (0: none; default: by core count).",
        ),
    ] = None,
) -> None:
    """Receive OTLP/HTTP traces (POST /v1/traces, protobuf or JSON, gzip) into the store.

    A 200 means kept: each accepted request is on disk (a spool replayed at the next start)
    before the answer. Runs until SIGTERM or Ctrl-C, then writes every buffered trace before
    exiting.
    """
    from manta_lib.collector.server import Collector
    from manta_lib.importers import Hierarchy

    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise typer.BadParameter(f"cannot listen on {host!r}: {exc}", param_hint="--host") from None
    hierarchy = Hierarchy(run_id, phase, step, datapoint, score, project)
    collector = Collector(
        host=host,
        port=port,
        token=token,
        idle_timeout=idle_timeout,
        max_body_bytes=int(max_body_mb * (1 << 20)),
        body_timeout=body_timeout,
        hierarchy=hierarchy,
        workers=workers,
    )
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    collector.start()
    console.print(
        f"collecting on {collector.endpoint} (Ctrl-C to stop)", highlight=False, soft_wrap=True
    )
    while not stop.wait(0.5):
        pass
    collector.stop()
    stats = collector.stats
    console.print(
        f"{stats.spans_received:,} spans received in {stats.requests:,} requests; "
        f"{stats.traces_stored:,} traces and {stats.spans_stored:,} spans stored"
        + (f"; {stats.traces_failed:,} traces not stored" if stats.traces_failed else "")
        + (
            f"; {stats.rollouts_received:,} rollouts received, "
            f"{stats.rollouts_stored:,} in the store, {stats.rollouts_rejected:,} refused"
            if stats.rollouts_received or stats.rollouts_rejected or stats.rollouts_stored
            else ""
        ),
        highlight=False,
    )
    if stats.traces_failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Attach ``import`` and ``collect`` to ``app``."""
    app.command("import")(import_command)
    app.command("collect")(collect_command)
