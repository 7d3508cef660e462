"""Import traces and spans from JSON Lines files (the format of ``docs/import_format.md``).

One trace per line: the trace properties plus ``spans``, a list of span objects; spans may
also come from separate files, one span per line, each with its ``trace_id``. Every line is
validated with the pydantic input models; a bad line becomes a :class:`LineError`
(``file:line: field: reason``) and every good line is still loaded, unless ``strict`` asks for
all or nothing. Rows are buffered one batch at a time and written column-oriented by
:func:`manta_lib.store.trace_writes.write_trace_batch`, which skips rows already stored: a
re-import, or an import resumed after a crash or Ctrl-C, stores every row exactly once.

Other input formats reuse the loader through :func:`load_records`, which takes already-parsed
records and a source name for error locations (or :class:`SourceRecord` items that carry their
own, and any problems their importer found).

Example::

    from manta import import_jsonl, open_store

    with open_store() as store:
        report = import_jsonl(["traces.jsonl"], store=store)
    print(report.summary())
    for error in report.errors:
        print(error)
"""

from __future__ import annotations

import json
import logging
import pickle
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import IO, Any, Literal

from pydantic import ValidationError as PydanticValidationError
from pydantic_core import ErrorDetails
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from manta_lib.errors import ValidationError
from manta_lib.ingest.lines import (
    LineProblems,
    Source,
    decode_line,
    read_lines,
    source_of,
    unstorable_values,
)
from manta_lib.ingest.rows import json_text as _json
from manta_lib.ingest.rows import span_row, trace_row
from manta_lib.ingest.rows import to_ms as _to_ms
from manta_lib.models import SPAN_COLUMNS, TRACE_COLUMNS, Phase, SpanInput, SpanKind, TraceInput
from manta_lib.store import Store
from manta_lib.store.trace_writes import (
    BatchWrite,
    delete_written,
    hold_sigint,
    stored_trace_runs,
    write_span_batch,
    write_trace_batch,
)

log = logging.getLogger(__name__)

__all__ = [
    "ImportInterrupted",
    "ImportReport",
    "LineError",
    "SourceRecord",
    "import_jsonl",
    "load_records",
]

_TRACE_KEYS = frozenset(TraceInput.model_fields)
_SPAN_KEYS = frozenset(SpanInput.model_fields)
# Keys whose null means "use the default" (the others keep null: it is a valid value there,
# or it is a required field, where null is reported).
_TRACE_NULL_IS_DEFAULT = _TRACE_KEYS - {"trace_id", "run_id", "score", "created_at"}
_SPAN_NULL_IS_DEFAULT = _SPAN_KEYS - {"span_id", "started_at", "ended_at"}
_TRACE_INT_FIELDS = ("step_number", "duration_ms", "turn_count", "tokens_input", "tokens_output")
_SPAN_INT_FIELDS = ("seq", "tokens_input", "tokens_output")
_INT64_LIMIT = 2**63
_ENUMS: dict[str, tuple[str, type[StrEnum]]] = {
    "kind": ("span kind", SpanKind),
    "phase": ("phase", Phase),
}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)
_SPAN_BATCH_FACTOR = 20  # span rows per batch = batch_size x this (about one trace's spans)
_MAX_SHOWN = 40
_NO_SPAN_EXAMPLES = 3
# Top-level keys that usually hold a conversation: stored in meta, they make no spans.
_CONVERSATION_KEYS = frozenset(
    {"messages", "conversation", "chat", "turns", "choices", "completion", "response", "output"}
)


@dataclass(frozen=True)
class LineError:
    """One problem found on one input line; ``str()`` gives ``file:line: field: reason``."""

    path: str
    line: int
    field: str
    reason: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}"
        return f"{where}: {self.field}: {self.reason}" if self.field else f"{where}: {self.reason}"


@dataclass(frozen=True)
class SourceRecord:
    """One record for :func:`load_records` that carries its own location.

    ``source``/``line`` place its errors (a file and line, a log and sample number,
    ``<records>`` and an index); ``problems`` are ``(field, reason)`` pairs an importer found
    while mapping its own format into ``record``: such a record is reported and skipped.
    """

    source: str
    line: int
    record: Any
    problems: tuple[tuple[str, str], ...] = ()


@dataclass
class ImportReport:
    """What an import did: rows loaded, rows skipped as already stored, bad lines, warnings."""

    traces_loaded: int = 0
    spans_loaded: int = 0
    traces_already_present: int = 0
    spans_skipped: int = 0
    errors: list[LineError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    strict: bool = False
    files: int = 0
    seconds: float = 0.0

    @property
    def bad_lines(self) -> int:
        """Number of distinct input lines with at least one error."""
        return len({(error.path, error.line) for error in self.errors})

    @property
    def ok(self) -> bool:
        """True when every line was good."""
        return not self.errors

    def summary(self) -> str:
        """One human-readable sentence with the counts."""
        parts = [
            f"{_count(self.traces_loaded, 'trace')} and {_count(self.spans_loaded, 'span')} "
            f"loaded from {_count(self.files, 'file')} in {self.seconds:.2f} s"
        ]
        if self.traces_already_present:
            parts.append(
                f"{_count(self.traces_already_present, 'trace')} already present (skipped)"
            )
        if self.spans_skipped:
            parts.append(
                f"{_count(self.spans_skipped, 'span')} skipped (already stored, or their trace "
                f"was already present or its line is bad)"
            )
        if self.errors:
            bad = _count(self.bad_lines, "bad line")
            parts.append(f"{bad}, nothing loaded (strict)" if self.strict else bad)
        return "; ".join(parts)


class ImportInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped an import between two batches; :attr:`report` says what was stored.

    A ``KeyboardInterrupt``, so code that stops on Ctrl-C still does. Importing the same
    input again resumes: what is stored is skipped, nothing is stored twice.
    """

    def __init__(self, report: ImportReport) -> None:
        super().__init__(report.summary())
        self.report = report

    def summary(self) -> str:
        """One line: what was stored before the interrupt and how to resume."""
        if self.report.strict:
            return (
                "interrupted: nothing was stored (strict: rows written before the interrupt "
                "were deleted again); run the same import again"
            )
        return (
            f"interrupted: {_count(self.report.traces_loaded, 'trace')} and "
            f"{_count(self.report.spans_loaded, 'span')} were stored (whole batches only); "
            f"run the same import again to resume, stored traces are skipped"
        )


def _count(number: int, noun: str) -> str:
    return f"{number:,} {noun}{'' if number == 1 else 's'}"


def import_jsonl(
    paths: Sequence[str | Path] | str | Path,
    *,
    store: Store,
    spans_paths: Sequence[str | Path] = (),
    strict: bool = False,
    batch_size: int = 5000,
    project_id: str = "",
    progress: bool | None = None,
) -> ImportReport:
    """Validate and load JSON Lines trace files (and optional separate span files).

    ``paths`` hold one trace per line; ``spans_paths`` one span per line, each naming its
    ``trace_id``. ``-`` reads standard input; named pipes and ``/dev/stdin`` work too (the
    input is streamed). Good lines are loaded in column-oriented batches of ``batch_size``
    traces (``20 x batch_size`` span rows); bad lines are listed in
    :attr:`ImportReport.errors`, and per-file warnings (fields stored in ``meta`` because
    nothing maps them, traces without spans) in :attr:`ImportReport.warnings`. With
    ``strict=True`` the whole input is validated first (one pass, rows kept in a temporary
    file) and nothing is written if any line is bad. Rows already stored are skipped, so
    importing twice, or again after an interrupted import, stores each row once.
    ``project_id`` is used for traces that carry none; ``progress`` shows a progress bar on
    stderr (default: when stderr is a terminal). Ctrl-C raises :class:`ImportInterrupted`.

    Example::

        report = import_jsonl(["traces.jsonl"], spans_paths=["spans.jsonl"], store=store)
        assert report.ok, "\\n".join(map(str, report.errors))
    """
    trace_args = [paths] if isinstance(paths, str | Path) else list(paths)
    sources = [(source_of(p), False) for p in trace_args]
    sources += [(source_of(p), True) for p in spans_paths]
    if sum(source.path is None for source, _ in sources) > 1:
        raise ValidationError("standard input (-) can be given only once")
    inputs = [
        _Input(source.name, is_spans, _file_items(source), source.size)
        for source, is_spans in sources
    ]
    return _run(store, inputs, strict, batch_size, project_id, progress)


def load_records(
    records: Iterable[Any],
    *,
    source: str,
    store: Store,
    kind: Literal["traces", "spans"] = "traces",
    strict: bool = False,
    batch_size: int = 5000,
    project_id: str = "",
    progress: bool | None = None,
) -> ImportReport:
    """Validate and load already-parsed records: the loader behind :func:`import_jsonl`.

    ``records`` yields trace objects (``kind="traces"``, the keys of docs/import_format.md)
    or span objects (``kind="spans"``, each with its ``trace_id``); an item is a record, or
    ``(line_number, record)`` to point errors at its place in the original input (items are
    numbered from 1 otherwise). ``source`` names the input in errors
    (``source:line: field: reason``). An item may also be a :class:`SourceRecord`, which
    carries its own source and line (records of several files in one import) and the problems
    its importer found (reported like bad lines). Everything else is as in
    :func:`import_jsonl`; :attr:`ImportReport.files` counts the distinct sources.

    Example::

        records = ({"trace_id": r["id"], "run_id": "run_x", "spans": []} for r in rows)
        report = load_records(records, source="export.parquet", store=store)
    """
    return _run(
        store,
        [_Input(source, kind == "spans", _record_items(source, records), None)],
        strict,
        batch_size,
        project_id,
        progress,
    )


# ---- inputs ------------------------------------------------------------------------------

_Item = tuple[str, int, Any]  # (source name, line number, decoded value or LineProblems)


@dataclass
class _Input:
    name: str
    is_spans: bool
    items: Callable[[Callable[[int], Any]], Iterator[_Item]]  # advance(n_bytes) -> items
    size: int | None


def _file_items(source: Source) -> Callable[[Callable[[int], Any]], Iterator[_Item]]:
    def items(advance: Callable[[int], Any]) -> Iterator[_Item]:
        name = source.name
        for number, raw in read_lines(source, advance):
            if isinstance(raw, LineProblems):
                yield name, number, raw
                continue
            try:
                yield name, number, decode_line(raw)
            except LineProblems as problems:
                yield name, number, problems

    return items


def _record_items(
    source: str, records: Iterable[Any]
) -> Callable[[Callable[[int], Any]], Iterator[_Item]]:
    def items(_advance: Callable[[int], Any]) -> Iterator[_Item]:
        for position, item in enumerate(records, start=1):
            if isinstance(item, SourceRecord):
                if item.problems:
                    yield item.source, item.line, LineProblems(list(item.problems))
                    continue
                name, number, record = item.source, item.line, item.record
            elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], int):
                name, (number, record) = source, item
            else:
                name, number, record = source, position, item
            if isinstance(record, CheckedTrace):
                yield name, number, record
                continue
            problems = unstorable_values(record)
            yield name, number, LineProblems(problems) if problems else record

    return items


def _run(
    store: Store,
    inputs: list[_Input],
    strict: bool,
    batch_size: int,
    project_id: str,
    progress: bool | None,
) -> ImportReport:
    if batch_size < 1:
        raise ValidationError(f"batch_size must be at least 1, got {batch_size}")
    if progress is None:
        progress = sys.stderr.isatty()
    started = time.perf_counter()
    loader = _Import(store, inputs, batch_size, project_id, strict=strict)
    try:
        loader.run(progress)
    except KeyboardInterrupt:
        loader.count_files()
        loader.report.strict = strict
        loader.report.seconds = time.perf_counter() - started
        raise ImportInterrupted(loader.report) from None
    finally:
        loader.close()
    loader.count_files()
    loader.report.strict = strict
    loader.report.seconds = time.perf_counter() - started
    for warning in loader.report.warnings:
        log.warning("%s", warning)
    log.debug("import: %s", loader.report.summary())
    return loader.report


# ---- one pass over the input ------------------------------------------------------------


@dataclass
class _PendingTrace:
    trace_id: str
    row: tuple[Any, ...]
    spans: list[tuple[Any, ...]]


@dataclass
class _PendingSpan:
    trace_id: str
    row: tuple[Any, ...]
    path: str
    line: int


class _Import:
    """One pass: parse, validate, batch, and write (or, with ``strict``, spool the batches to
    a temporary file and write them only if no line was bad)."""

    def __init__(
        self,
        store: Store,
        inputs: list[_Input],
        batch_size: int,
        project_id: str,
        *,
        strict: bool,
    ) -> None:
        self.store = store
        self.inputs = inputs
        self.batch_size = batch_size
        self.span_batch_size = batch_size * _SPAN_BATCH_FACTOR
        self.project_id = project_id
        self.has_span_inputs = any(i.is_spans for i in inputs)
        self.spool: IO[bytes] | None = tempfile.TemporaryFile() if strict else None  # noqa: SIM115 - closed in close()
        self.now_ms = _to_ms(datetime.now(UTC))
        self.report = ImportReport(files=len(inputs))
        # trace_id -> where it was first seen (for duplicate reports), good lines only.
        self.seen: dict[str, tuple[str, int]] = {}
        # trace_id -> run_id of the good trace lines; only kept when span inputs need it.
        self.run_of: dict[str, str] = {}
        self.next_seq: dict[str, int] = {}
        # trace ids of bad trace lines: their spans in span files are skipped, not reported.
        self.rejected: set[str] = set()
        self.pending_traces: list[_PendingTrace] = []
        self.pending_span_rows = 0
        self.pending_spans: list[_PendingSpan] = []
        # Per source: unmapped top-level keys, and good traces without embedded spans.
        self.unmapped: dict[str, Counter[str]] = {}
        # Source names in the order first seen (errors are sorted by it), and those records
        # named (a SourceRecord names its own).
        self.order: dict[str, int] = {source.name: index for index, source in enumerate(inputs)}
        self.named: set[str] = set()
        self.spanless: dict[str, list[str]] = {}
        self.spanless_count: dict[str, int] = {}
        self.got_spans: set[str] = set()
        # Strict mode: what the writing phase inserted, to delete it if that phase fails.
        self.new_traces: list[tuple[str, str]] = []
        self.new_spans: list[tuple[str, str, str]] = []

    def close(self) -> None:
        if self.spool is not None:
            self.spool.close()

    def run(self, show_progress: bool) -> None:
        with _progress_bar(show_progress, self.inputs, self.spool is not None) as advance:
            for source in self.inputs:
                last = None
                for name, number, item in source.items(advance):
                    if name != last:
                        self.order.setdefault(name, len(self.order))
                        self.named.add(name)
                        last = name
                    try:
                        if isinstance(item, LineProblems):
                            raise item
                        if source.is_spans:
                            self._span_line(item, name, number)
                        else:
                            self._trace_line(item, name, number)
                    except LineProblems as problems:
                        if not source.is_spans:
                            self._reject(item)
                        self.report.errors.extend(
                            LineError(name, number, field, reason)
                            for field, reason in problems.problems
                        )
                if source.is_spans:
                    self._flush_spans()
                else:
                    self._flush_traces()
                    self._warn_unmapped()
        self._flush_traces()
        self._flush_spans()
        self._warn_spanless()
        self.report.errors.sort(key=lambda e: (self.order.get(e.path, 0), e.line))
        if self.spool is not None and not self.report.errors:
            self._replay()

    def count_files(self) -> None:
        """Records that named their own sources count those, else each input is one file."""
        if self.named - {source.name for source in self.inputs}:
            self.report.files = len(self.named)

    # -- warnings --

    def _warn_unmapped(self) -> None:
        for name, unmapped in self.unmapped.items():
            listed = ", ".join(
                f"{key!r} ({_count(n, 'trace')})" for key, n in sorted(unmapped.items())
            )
            warning = f"{name}: fields that nothing maps were stored in meta: {listed}"
            conversation = sorted(set(unmapped) & _CONVERSATION_KEYS)
            if conversation:
                warning += (
                    f". {conversation[0]!r} looks like a conversation, which is not turned "
                    f'into spans: give each message as a span of kind "message" with role and '
                    f"content (docs/import_format.md)"
                )
            self.report.warnings.append(warning)
        self.unmapped = {}

    def _warn_spanless(self) -> None:
        for name, examples in self.spanless.items():
            count = self.spanless_count[name]
            if self.has_span_inputs:
                examples = [t for t in examples if t not in self.got_spans]
                count = len(examples)
            if not count:
                continue
            shown = ", ".join(repr(t) for t in examples[:_NO_SPAN_EXAMPLES])
            more = ", ..." if count > _NO_SPAN_EXAMPLES else ""
            self.report.warnings.append(
                f"{name}: {_count(count, 'trace')} ended with no spans ({shown}{more}): "
                f"{'its' if count == 1 else 'their'} conversation, tool calls and grader are "
                f'missing; give them in "spans" or a --spans file'
            )

    # -- trace lines --

    def _reject(self, obj: Any) -> None:
        trace_id = obj.get("trace_id") if isinstance(obj, dict) else None
        if self.has_span_inputs and isinstance(trace_id, str) and trace_id not in self.seen:
            self.rejected.add(trace_id)

    def _trace_line(self, obj: Any, path: str, number: int) -> None:
        if isinstance(obj, CheckedTrace):
            trace, spans, unmapped = obj.row, obj.spans, obj.unmapped
        else:
            trace, spans, unmapped = _parse_trace(obj, self.project_id, self.now_ms)
        trace_id = trace[1]
        first = self.seen.get(trace_id)
        if first is not None:
            raise LineProblems(
                [("trace_id", f"duplicate trace_id {trace_id!r} (first seen at {_at(first)})")]
            )
        self.seen[trace_id] = (path, number)
        if unmapped:
            self.unmapped.setdefault(path, Counter()).update(unmapped)
        if self.has_span_inputs:
            self.run_of[trace_id] = trace[2]
        if not spans:
            self.spanless_count[path] = self.spanless_count.get(path, 0) + 1
            examples = self.spanless.setdefault(path, [])
            # With span inputs every id is kept (its spans may come later); else a few.
            if self.has_span_inputs or len(examples) < _NO_SPAN_EXAMPLES:
                examples.append(trace_id)
        self.pending_traces.append(_PendingTrace(trace_id, trace, spans))
        self.pending_span_rows += len(spans)
        if (
            len(self.pending_traces) >= self.batch_size
            or self.pending_span_rows >= self.span_batch_size
        ):
            self._flush_traces()

    def _flush_traces(self) -> None:
        batch, self.pending_traces, self.pending_span_rows = self.pending_traces, [], 0
        if not batch:
            return
        trace_rows = [pending.row for pending in batch]
        span_rows = [row for pending in batch for row in pending.spans]
        self._emit("traces", _columns(TRACE_COLUMNS, trace_rows), _columns(SPAN_COLUMNS, span_rows))

    # -- span lines (separate inputs) --

    def _span_line(self, obj: Any, path: str, number: int) -> None:
        if isinstance(obj, dict) and "trace_id" not in obj:
            raise LineProblems([("trace_id", "missing required field")])
        trace_id = obj.get("trace_id") if isinstance(obj, dict) else None
        seq = self.next_seq.get(trace_id, 0) if isinstance(trace_id, str) else 0
        row = _parse_span(obj, "", trace_id if isinstance(trace_id, str) else "", None, seq)
        trace_id, seq = row[0], row[4]
        self.next_seq[trace_id] = max(self.next_seq.get(trace_id, 0), seq + 1)
        self.pending_spans.append(_PendingSpan(trace_id, row, path, number))
        if len(self.pending_spans) >= self.span_batch_size:
            self._flush_spans()

    def _flush_spans(self) -> None:
        batch, self.pending_spans = self.pending_spans, []
        if not batch:
            return
        unknown = sorted(
            {s.trace_id for s in batch if s.trace_id not in self.run_of} - self.rejected
        )
        stored = stored_trace_runs(self.store, unknown)
        rows: list[tuple[Any, ...]] = []
        for span in batch:
            run_id = self.run_of.get(span.trace_id) or stored.get(span.trace_id)
            if run_id is None:
                if span.trace_id in self.rejected:
                    self.report.spans_skipped += 1
                    continue
                self.report.errors.append(
                    LineError(
                        span.path,
                        span.line,
                        "trace_id",
                        f"no trace {span.trace_id!r} in this import or in the store",
                    )
                )
                continue
            row = span.row
            if row[1] != run_id:
                if row[1]:
                    self.report.errors.append(
                        LineError(
                            span.path,
                            span.line,
                            "run_id",
                            f"{row[1]!r} does not match the run_id {run_id!r} of trace "
                            f"{span.trace_id!r}",
                        )
                    )
                    continue
                row = (row[0], run_id, *row[2:])
            rows.append(row)
            self.got_spans.add(span.trace_id)
        self._emit("spans", {}, _columns(SPAN_COLUMNS, rows))

    # -- writing --

    def _emit(
        self, kind: str, traces: dict[str, Sequence[Any]], spans: dict[str, Sequence[Any]]
    ) -> None:
        if self.spool is not None:
            if not self.report.errors:  # once a line is bad nothing will be written
                pickle.dump((kind, traces, spans), self.spool, protocol=pickle.HIGHEST_PROTOCOL)
            return
        self._write(kind, traces, spans)

    def _write(
        self, kind: str, traces: dict[str, Sequence[Any]], spans: dict[str, Sequence[Any]]
    ) -> None:
        with hold_sigint():  # a Ctrl-C during the write is raised once it is counted
            done: BatchWrite = (
                write_trace_batch(self.store, traces, spans)
                if kind == "traces"
                else write_span_batch(self.store, spans)
            )
            self.report.traces_loaded += done.traces_written
            self.report.spans_loaded += done.spans_written
            self.report.traces_already_present += done.traces_present
            self.report.spans_skipped += done.spans_present
            if self.spool is not None:  # strict: remembered for a rollback
                self.new_traces.extend(done.new_traces)
                self.new_spans.extend(done.new_spans)
        log.debug("%s batch: %s", kind, done)

    def _replay(self) -> None:
        """Strict mode, every line good: write the spooled batches in their order. If the
        writing fails or is interrupted, what it wrote is deleted again (all or nothing)."""
        assert self.spool is not None
        self.spool.seek(0)
        try:
            while True:
                try:
                    kind, traces, spans = pickle.load(self.spool)
                except EOFError:
                    return
                self._write(kind, traces, spans)
        except BaseException:
            log.warning("strict import stopped while writing: deleting the rows it wrote")
            delete_written(self.store, self.new_traces, self.new_spans)
            self.report.traces_loaded = self.report.spans_loaded = 0
            raise


# ---- parsing and validation ---------------------------------------------------------------


@dataclass(frozen=True)
class CheckedTrace:
    """A trace object validated ahead of loading (:func:`check_trace`): given to
    :func:`load_records` as a record, it is loaded without being validated again."""

    row: tuple[Any, ...]
    spans: list[tuple[Any, ...]]
    unmapped: list[str]

    @property
    def trace_id(self) -> str:
        return str(self.row[1])

    @property
    def run_id(self) -> str:
        return str(self.row[2])


def check_trace(obj: Any, project_id: str = "") -> CheckedTrace | list[tuple[str, str]]:
    """Validate a trace object as :func:`load_records` would (without a store): the
    validated trace, or the ``(field, reason)`` problems that would keep it out."""
    problems = unstorable_values(obj)
    if problems:
        return problems
    try:
        row, spans, unmapped = _parse_trace(obj, project_id, _to_ms(datetime.now(UTC)))
    except LineProblems as exc:
        return list(exc.problems)
    return CheckedTrace(row, spans, unmapped)


def _parse_trace(
    obj: Any, project_id: str, now_ms: int
) -> tuple[tuple[Any, ...], list[tuple[Any, ...]], list[str]]:
    """Validate one trace object; return its row, its span rows and the unknown top-level keys
    stored in meta, or raise LineProblems."""
    if not isinstance(obj, dict):
        raise LineProblems([("", f"expected a JSON object, got {_show(obj)}")])
    problems: list[tuple[str, str]] = []
    row = trace_row(obj, project_id, now_ms)
    unmapped: list[str] = []
    if row is not None:
        trace_id, run_id = row[1], row[2]
    else:
        row, unmapped, trace_id, run_id = _validate_trace(obj, project_id, now_ms, problems)

    raw_spans = obj.get("spans")
    span_rows: list[tuple[Any, ...]] = []
    if raw_spans is not None and not isinstance(raw_spans, list):
        problems.append(("spans", f"expected a list of span objects, got {_show(raw_spans)}"))
    elif raw_spans:
        span_ids: set[str] = set()
        for index, raw_span in enumerate(raw_spans):
            prefix = f"spans[{index}]."
            try:
                parsed = _parse_span(raw_span, prefix, trace_id, run_id, index)
            except LineProblems as exc:
                problems.extend(exc.problems)
                continue
            if parsed[2] in span_ids:
                problems.append(
                    (f"{prefix}span_id", f"duplicate span_id {parsed[2]!r} in this trace")
                )
            span_ids.add(parsed[2])
            span_rows.append(parsed)
    if problems or row is None:
        raise LineProblems(problems)
    return row, span_rows, unmapped


def _validate_trace(
    obj: dict[str, Any], project_id: str, now_ms: int, problems: list[tuple[str, str]]
) -> tuple[tuple[Any, ...] | None, list[str], str, str]:
    """The full validation of a trace object's own keys (pydantic; words every problem):
    its row (None if bad), the unknown keys stored in meta, its trace and run ids."""
    values, extras = _split(obj, _TRACE_KEYS, _TRACE_NULL_IS_DEFAULT, skip=("spans",))
    values["meta"] = _merge_extras(values.get("meta"), extras, "meta", "", problems)
    values.setdefault("project_id", project_id)
    trace: TraceInput | None = None
    try:
        trace = TraceInput.model_validate(values)
    except PydanticValidationError as exc:
        problems.extend(_translate(err, "") for err in exc.errors())
    if trace is not None:
        problems.extend(_int_range(trace, _TRACE_INT_FIELDS, ""))
    if trace is None:
        trace_id = _str_or_empty(values.get("trace_id"))
        return None, list(extras), trace_id, _str_or_empty(values.get("run_id"))
    row = (
        trace.project_id,
        trace.trace_id,
        trace.run_id,
        trace.step_number,
        trace.phase.value,
        trace.datapoint_id,
        trace.score,
        trace.status,
        trace.cost_usd,
        trace.duration_ms,
        trace.turn_count,
        trace.tokens_input,
        trace.tokens_output,
        trace.model_name,
        trace.env_name,
        _json(trace.meta),
        _to_ms(trace.created_at) if trace.created_at else now_ms,
    )
    return row, list(extras), trace.trace_id, trace.run_id


def _parse_span(
    obj: Any, prefix: str, trace_id: str, run_id: str | None, seq: int
) -> tuple[Any, ...]:
    """Validate one span object (defaults from its trace); return its row in SPAN_COLUMNS order."""
    row = span_row(obj, prefix, trace_id, run_id, seq)
    if row is not None:
        return row
    return _validate_span(obj, prefix, trace_id, run_id, seq)


def _validate_span(
    obj: Any, prefix: str, trace_id: str, run_id: str | None, seq: int
) -> tuple[Any, ...]:
    """The full validation of :func:`_parse_span` (pydantic; words every problem)."""
    if not isinstance(obj, dict):
        raise LineProblems([(prefix.rstrip("."), f"expected a JSON object, got {_show(obj)}")])
    problems: list[tuple[str, str]] = []
    values, extras = _split(obj, _SPAN_KEYS, _SPAN_NULL_IS_DEFAULT)
    values["attributes"] = _merge_extras(
        values.get("attributes"), extras, "attributes", prefix, problems
    )
    for key, expected in (("trace_id", trace_id), ("run_id", run_id)):
        given = values.get(key)
        if prefix and expected and given is not None and given != expected:
            problems.append(
                (f"{prefix}{key}", f"{_show(given)} does not match the trace's {key} {expected!r}")
            )
        if expected:
            values.setdefault(key, expected)
    values.setdefault("seq", seq)
    if "span_id" not in values:
        values["span_id"] = f"{values.get('trace_id', trace_id)}:{values['seq']}"
    arguments = values.get("tool_arguments")
    if isinstance(arguments, dict | list):
        values["tool_arguments"] = _json(arguments)
    span: SpanInput | None = None
    try:
        span = SpanInput.model_validate(values)
    except PydanticValidationError as exc:
        problems.extend(_translate(err, prefix) for err in exc.errors())
    if span is not None:
        problems.extend(_int_range(span, _SPAN_INT_FIELDS, prefix))
    if problems or span is None:
        raise LineProblems(problems)
    return (
        span.trace_id,
        span.run_id,
        span.span_id,
        span.parent_span_id,
        span.seq,
        span.kind.value,
        span.name,
        span.role,
        span.content,
        span.tool_name,
        span.tool_arguments,
        span.tool_result,
        span.is_error,
        span.model_name,
        span.tokens_input,
        span.tokens_output,
        span.cost_usd,
        _to_ms(span.started_at) if span.started_at else None,
        _to_ms(span.ended_at) if span.ended_at else None,
        _json(span.attributes),
    )


def _split(
    obj: dict[str, Any],
    known: frozenset[str],
    null_is_default: frozenset[str],
    skip: tuple[str, ...] = (),
) -> tuple[dict[str, Any], dict[str, Any]]:
    values: dict[str, Any] = {}
    extras: dict[str, Any] = {}
    for key, value in obj.items():
        if key in skip:
            continue
        if key not in known:
            extras[key] = value
        elif value is not None or key not in null_is_default:
            values[key] = value
    return values, extras


def _merge_extras(
    given: Any,
    extras: dict[str, Any],
    name: str,
    prefix: str,
    problems: list[tuple[str, str]],
) -> dict[str, Any]:
    """Unknown keys go into meta/attributes; a key given explicitly there wins."""
    if given is None:
        return extras
    if not isinstance(given, dict):
        problems.append((f"{prefix}{name}", f"expected an object, got {_show(given)}"))
        return {}
    return {**extras, **given}


def _translate(err: ErrorDetails, prefix: str) -> tuple[str, str]:
    """Turn a pydantic error into ``(field, reason)`` in plain words."""
    loc = err["loc"]
    name = prefix + ".".join(str(part) for part in loc)
    kind = err["type"]
    got = _show(err.get("input"))
    if kind == "missing":
        return name, "missing required field"
    if kind == "enum" and loc and str(loc[-1]) in _ENUMS:
        label, enum = _ENUMS[str(loc[-1])]
        expected = ", ".join(member.value for member in enum)
        return name, f"{got} is not a valid {label} (expected one of: {expected})"
    if kind == "value_error":
        return name, str(err.get("ctx", {}).get("error", err["msg"]))
    if kind == "finite_number":
        return name, f"{got} is not a finite number; use a finite number"
    if kind == "greater_than_equal":
        return name, f"must not be negative, got {got}"
    if kind.startswith("int_"):
        return name, f"expected an integer, got {got}"
    if kind.startswith("float_"):
        return name, f"expected a number, got {got}"
    if kind.startswith("bool_"):
        return name, f"expected true or false, got {got}"
    if kind.startswith("string_"):
        return name, f"expected a string, got {got}"
    if kind.startswith(("datetime_", "date_", "timezone_")):
        return name, f"expected an ISO 8601 timestamp, got {got}"
    if kind == "dict_type":
        return name, f"expected an object, got {got}"
    return name, f"{err['msg']} (got {got})"


def _int_range(record: Any, names: tuple[str, ...], prefix: str) -> list[tuple[str, str]]:
    return [
        (f"{prefix}{name}", f"{getattr(record, name)} is out of range for a 64-bit integer")
        for name in names
        if not -_INT64_LIMIT <= getattr(record, name) < _INT64_LIMIT
    ]


def _show(value: Any) -> str:
    """A short rendering of an input value for an error message."""
    if isinstance(value, str):
        return repr(value if len(value) <= _MAX_SHOWN else value[: _MAX_SHOWN - 3] + "...")
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):  # an in-memory record may hold any object
        text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def _str_or_empty(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _at(location: tuple[str, int]) -> str:
    return f"{location[0]}:{location[1]}"


def _columns(names: tuple[str, ...], rows: list[tuple[Any, ...]]) -> dict[str, Sequence[Any]]:
    if not rows:
        return {}
    return dict(zip(names, (list(column) for column in zip(*rows, strict=True)), strict=True))


@contextmanager
def _progress_bar(enabled: bool, inputs: list[_Input], validating: bool) -> Iterator[Any]:
    """Yield ``advance(n_bytes)``; draws a rich progress bar on stderr when enabled (without
    a total when an input is a pipe or stdin)."""
    if not enabled:
        yield lambda _n: None
        return
    sizes = [source.size for source in inputs]
    total = None if None in sizes else sum(size or 0 for size in sizes)
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("validating" if validating else "importing", total=total)
        yield lambda n: bar.advance(task, n)
