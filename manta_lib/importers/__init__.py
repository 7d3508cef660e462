"""Bring your own traces: importers for Manta's format, OpenAI messages, Inspect AI, OTLP,
verl rollout dumps.

Each format is one module that maps its records to trace objects of the JSON Lines trace
format (spans laid out by the span conventions); all of them feed the one validated loader
(:func:`manta_lib.ingest.load_records`), so every format gets the same checks, the same
``file:line: field: reason`` errors and the same idempotent re-import.

Example::

    from manta import import_files, import_records, open_store

    with open_store() as store:
        report = import_files(["rollouts.jsonl"], store=store, run_id="grpo_v1")
        # a training loop: rollouts as dicts (or pydantic objects) in memory
        report = import_records(batch, store=store, format="openai", run_id="grpo_v1", step=12)
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from manta_lib.errors import ValidationError
from manta_lib.importers.base import Hierarchy, Importer, Problems
from manta_lib.importers.native import NativeImporter
from manta_lib.importers.openai import OpenAIImporter
from manta_lib.ingest.lines import source_of
from manta_lib.ingest.loader import (
    ImportInterrupted,
    ImportReport,
    SourceRecord,
    import_jsonl,
    load_records,
)
from manta_lib.store import Store

__all__ = [
    "FORMATS",
    "Hierarchy",
    "detect_format",
    "format_of",
    "get_importer",
    "import_files",
    "import_records",
]

FORMATS = ("auto", "manta", "openai", "inspect", "otlp", "verl")
"""Values of ``format`` / ``--format``."""

_RECORDS_SOURCE = "<records>"


def get_importer(name: str) -> Importer:
    """The importer of one format (``manta``, ``openai``, ``inspect``, ``otlp``, ``verl``)."""
    if name == "manta":
        return NativeImporter()
    if name == "openai":
        return OpenAIImporter()
    if name == "inspect":
        from manta_lib.importers.inspect_logs import InspectImporter

        return InspectImporter()
    if name == "otlp":
        from manta_lib.importers.otlp import OTLPImporter

        return OTLPImporter()
    if name == "verl":
        from manta_lib.importers.verl import VerlImporter

        return VerlImporter()
    raise ValidationError(f"unknown format {name!r} (expected one of: {', '.join(FORMATS)})")


def detect_format(path: str | Path) -> str:
    """The format of a file, from its content (not its name).

    Inspect logs (a ``.eval`` zip, or JSON with ``eval`` and ``version``), OTLP (JSON with
    ``resourceSpans``, or protobuf), OpenAI rollouts (a JSON line with ``messages``), Manta
    traces (a JSON line with ``trace_id``) and verl dumps (``{step}.jsonl`` files of ``input``,
    ``output`` and ``score`` lines, or a directory of them). Raises :class:`ValidationError`
    when none fits.
    """
    path = Path(path)
    if path.is_dir():
        if get_importer("verl").sniff(path):
            return "verl"
        raise ValidationError(
            f"{path} is a directory but not a verl dump directory ({{step}}.jsonl files with "
            "input/output/score lines); pass files"
        )
    for name in ("inspect", "otlp", "openai", "manta", "verl"):
        try:
            if get_importer(name).sniff(path):
                return name
        except OSError as exc:
            raise ValidationError(f"cannot read {path}: {exc.strerror or exc}") from None
    raise ValidationError(
        f"cannot tell the format of {path}: expected an Inspect AI log, OTLP JSON or protobuf, "
        "OpenAI-message JSON lines (a 'messages' list) or Manta JSON lines (a 'trace_id'); "
        "pass --format"
    )


def import_files(
    paths: Sequence[str | Path] | str | Path,
    *,
    store: Store,
    format: str = "auto",
    run_id: str | None = None,
    phase: str | None = None,
    step: int | str | None = None,
    datapoint: str | None = None,
    score: str | None = None,
    project: str | None = None,
    strict: bool = False,
    batch_size: int = 5000,
    project_id: str = "",
    progress: bool | None = None,
) -> ImportReport:
    """Import trace files of any supported format into the store.

    ``format="auto"`` detects each file's format by content. ``-`` (standard input), named
    pipes and ``/dev/stdin`` cannot be sniffed without consuming them: they are read as Manta
    JSON Lines (``format`` ``auto`` or ``manta``). ``run_id`` ... ``project`` place the traces
    in the hierarchy (see :class:`Hierarchy`; each format documents its defaults);
    ``project_id`` is used for traces that carry none. Bad records are reported as
    ``file:line: field: reason`` and skipped, good ones load (``strict=True``: nothing loads if
    any is bad); traces already stored are skipped, so an import stopped by Ctrl-C
    (:class:`~manta_lib.ingest.ImportInterrupted`) resumes when run again. ``progress`` shows
    progress on stderr (default: when stderr is a terminal).

    Example::

        report = import_files(["2025-05-12_browser.eval"], store=store, format="inspect")
        print(report.summary())
    """
    files = [Path(paths)] if isinstance(paths, str | Path) else [Path(p) for p in paths]
    if format not in FORMATS:
        raise ValidationError(f"unknown format {format!r} (expected one of: {', '.join(FORMATS)})")
    hierarchy = Hierarchy(run_id, phase, step, datapoint, score, project)
    plan = [(path, get_importer(format_of(path, format))) for path in files]

    if hierarchy == Hierarchy() and all(importer.name == "manta" for _, importer in plan):
        # Manta's own format as is: the JSON Lines importer, with its byte progress bar
        return import_jsonl(
            files,
            store=store,
            strict=strict,
            batch_size=batch_size,
            project_id=project_id,
            progress=progress,
        )
    if sum(str(path) == "-" for path in files) > 1:
        raise ValidationError("standard input (-) can be given only once")
    show = sys.stderr.isatty() if progress is None else progress

    from manta_lib.importers.otlp import JoinCounts

    joins = JoinCounts()
    records = _plan_records(plan, hierarchy, store, show, joins, strict)
    try:
        report = load_records(
            records,
            source=str(files[0]) if files else "<files>",
            store=store,
            strict=strict,
            batch_size=batch_size,
            project_id=project_id,
            progress=False,  # the record counter above: these inputs have no byte sizes
        )
    except ImportInterrupted as interrupted:
        interrupted.report.files = len(files)
        raise
    report.files = len(files)  # a file may hold no record
    report.traces_already_present += joins.present
    if joins.raw_rows and report.traces_loaded:  # strict and all good: now keep the raw spans
        from manta_lib.importers.otel_join import write_otel_spans

        write_otel_spans(store, joins.raw_rows)
    return report


def _plan_records(
    plan: list[tuple[Path, Importer]],
    hierarchy: Hierarchy,
    store: Store,
    show: bool,
    joins: Any,
    strict: bool,
) -> Iterator[SourceRecord]:
    """The records of every planned file; OTLP files are read together (a trace's spans may
    be spread over several of them) after the others."""
    from manta_lib.importers.otlp import read_joined

    otlp_paths = [path for path, importer in plan if importer.name == "otlp"]
    if not show:
        for path, importer in plan:
            if importer.name != "otlp":
                yield from importer.read_file(path, hierarchy)
        if otlp_paths:
            yield from read_joined(otlp_paths, hierarchy, store, joins, strict=strict)
        return
    with Progress(
        TextColumn("[bold]{task.description}"),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        for path, importer in plan:
            if importer.name == "otlp":
                continue
            task = bar.add_task(f"{importer.name} {path.name}", total=None)
            for record in importer.read_file(path, hierarchy):
                bar.advance(task)
                yield record
        if otlp_paths:
            files = bar.add_task("otlp files", total=len(otlp_paths))
            yield from read_joined(
                otlp_paths, hierarchy, store, joins, lambda _: bar.advance(files), strict=strict
            )


def format_of(path: Path, format: str) -> str:
    """The format of one input: ``format``, or detected (``auto``); ``-`` and pipes are Manta
    JSON Lines; a directory is a verl dump directory. Raises :class:`ValidationError` for a
    missing file or another directory."""
    if str(path) != "-" and path.is_dir():
        if format in ("auto", "verl"):
            return detect_format(path) if format == "auto" else format
        raise ValidationError(
            f"cannot import {path} as {format}: it is a directory (only verl "
            "dumps are read as directories)"
        )
    source = source_of(path)
    if source.path is not None and source.path.is_file():
        return detect_format(path) if format == "auto" else format
    if format not in ("auto", "manta"):
        raise ValidationError(
            f"cannot import {source.name} as {format}: standard input and pipes are read as "
            "Manta JSON Lines only; save the input to a file first"
        )
    return "manta"


def import_records(
    records: Iterable[Any],
    *,
    store: Store,
    format: str = "openai",
    run_id: str | None = None,
    phase: str | None = None,
    step: int | str | None = None,
    datapoint: str | None = None,
    score: str | None = None,
    project: str | None = None,
    strict: bool = False,
    batch_size: int = 5000,
    project_id: str = "",
) -> ImportReport:
    """Import records held in memory: dicts or pydantic objects (notebooks, training loops).

    ``format``: ``openai`` (rollouts with ``messages``), ``manta`` (trace objects or
    :class:`~manta_lib.models.TraceRecord`-like dicts with ``spans``), ``otlp``
    (``ExportTraceServiceRequest`` dicts or protobuf messages) or ``inspect`` (``EvalLog``
    objects). Errors are located as ``<records>:N`` (N counts records from 1).

    Example::

        rollouts = [{"messages": msgs, "reward": r} for msgs, r in batch]
        report = import_records(rollouts, store=store, run_id="grpo_v1", step=step)
        assert report.ok, report.errors[:5]
    """
    if format not in FORMATS or format == "auto":
        expected = ", ".join(name for name in FORMATS if name != "auto")
        raise ValidationError(f"import_records needs format= one of: {expected}; got {format!r}")
    hierarchy = Hierarchy(run_id, phase, step, datapoint, score, project)
    importer = get_importer(format)

    def mapped() -> Iterator[SourceRecord]:
        for number, record in enumerate(records, start=1):
            try:
                traces = importer.map_record(record, hierarchy)
            except Problems as exc:
                yield SourceRecord(_RECORDS_SOURCE, number, None, tuple(exc.problems))
                continue
            for trace in traces:
                yield SourceRecord(_RECORDS_SOURCE, number, trace)

    return load_records(
        mapped(),
        source=_RECORDS_SOURCE,
        store=store,
        strict=strict,
        batch_size=batch_size,
        project_id=project_id,
        progress=False,
    )
