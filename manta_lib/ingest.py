"""Import traces and spans from JSON Lines files (the format of ``docs/import_format.md``).

One trace per line: the trace properties plus ``spans``, a list of span objects;
spans may also come from separate files, one span per line, each with its ``trace_id``.
Every line is validated with the pydantic row models; a bad line becomes a :class:`LineError`
(``file:line: field: reason``) and every good line is still loaded, unless ``strict`` asks for
all or nothing. Rows are buffered one batch at a time and inserted column-oriented.

Re-importing a file is a no-op: before a batch is inserted, one query finds which of its
trace ids are already stored, and those traces (and their spans) are skipped. Spans are
inserted before their traces, so a trace that is present has its embedded spans too.

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
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

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
from manta_lib.models import SPAN_COLUMNS, TRACE_COLUMNS, Phase, SpanKind, SpanRecord, TraceRecord
from manta_lib.store import Store

log = logging.getLogger(__name__)

__all__ = ["ImportReport", "LineError", "import_jsonl"]

_TRACE_KEYS = frozenset(TraceRecord.model_fields)
_SPAN_KEYS = frozenset(SpanRecord.model_fields)
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


@dataclass
class ImportReport:
    """What an import did: rows loaded, traces skipped as already present, bad lines."""

    traces_loaded: int = 0
    spans_loaded: int = 0
    traces_already_present: int = 0
    spans_skipped: int = 0
    errors: list[LineError] = field(default_factory=list)
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
                f"{_count(self.spans_skipped, 'span')} skipped (their trace was already present "
                f"or its line is bad)"
            )
        if self.errors:
            bad = _count(self.bad_lines, "bad line")
            parts.append(f"{bad}, nothing loaded (strict)" if self.strict else bad)
        return "; ".join(parts)


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
    ``trace_id``. Good lines are loaded in column-oriented batches of ``batch_size`` traces
    (``20 x batch_size`` span rows); bad lines are listed in :attr:`ImportReport.errors`. With
    ``strict=True`` everything is validated first and nothing is loaded if any line is bad.
    Traces whose ``trace_id`` is already stored are skipped, so importing twice is harmless.
    ``project_id`` is used for traces that do not carry one; ``progress`` shows a progress
    bar on stderr (default: when stderr is a terminal).

    Example::

        report = import_jsonl(["traces.jsonl"], spans_paths=["spans.jsonl"], store=store)
        assert report.ok, "\\n".join(map(str, report.errors))
    """
    trace_files = [Path(paths)] if isinstance(paths, str | Path) else [Path(p) for p in paths]
    span_files = [Path(p) for p in spans_paths]
    if batch_size < 1:
        raise ValidationError(f"batch_size must be at least 1, got {batch_size}")
    for path in (*trace_files, *span_files):
        if not path.is_file():
            raise ValidationError(f"cannot import {path}: no such file")
    if progress is None:
        progress = sys.stderr.isatty()
    started = time.perf_counter()
    if strict:
        check = _Import(store, trace_files, span_files, batch_size, project_id, dry_run=True)
        check.run(progress)
        if check.report.errors:
            return ImportReport(
                errors=check.report.errors,
                strict=True,
                files=check.report.files,
                seconds=time.perf_counter() - started,
            )
    loader = _Import(store, trace_files, span_files, batch_size, project_id, dry_run=False)
    loader.run(progress)
    loader.report.strict = strict
    loader.report.seconds = time.perf_counter() - started
    log.debug("import: %s", loader.report.summary())
    return loader.report


# ---- one pass over the input ------------------------------------------------------------


class _LineProblems(Exception):
    """Raised while parsing a line: the (field, reason) pairs found."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__(problems)
        self.problems = problems


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
    """One pass: parse, validate, batch and (unless ``dry_run``) insert."""

    def __init__(
        self,
        store: Store,
        trace_files: list[Path],
        span_files: list[Path],
        batch_size: int,
        project_id: str,
        *,
        dry_run: bool,
    ) -> None:
        self.store = store
        self.trace_files = trace_files
        self.span_files = span_files
        self.batch_size = batch_size
        self.span_batch_size = batch_size * _SPAN_BATCH_FACTOR
        self.project_id = project_id
        self.dry_run = dry_run
        self.now_ms = _to_ms(datetime.now(UTC))
        self.report = ImportReport(files=len(trace_files) + len(span_files))
        # trace_id -> where it was first seen (for duplicate reports), good lines only.
        self.seen: dict[str, tuple[str, int]] = {}
        # trace_id -> run_id of a trace loaded by this import, None if it was already stored;
        # only kept when separate span files need it.
        self.run_of: dict[str, str | None] = {}
        self.next_seq: dict[str, int] = {}
        # trace ids of bad trace lines: their spans in span files are skipped, not reported.
        self.rejected: set[str] = set()
        self.pending_traces: list[_PendingTrace] = []
        self.pending_span_rows = 0
        self.pending_spans: list[_PendingSpan] = []

    def run(self, show_progress: bool) -> None:
        files = [(p, False) for p in self.trace_files] + [(p, True) for p in self.span_files]
        with _progress_bar(show_progress, files, self.dry_run) as advance:
            for path, is_span_file in files:
                for number, raw in _lines(path, advance):
                    obj: Any = None
                    try:
                        obj = _decode(raw)
                        if is_span_file:
                            self._span_line(obj, str(path), number)
                        else:
                            self._trace_line(obj, str(path), number)
                    except _LineProblems as problems:
                        if not is_span_file:
                            self._reject(obj)
                        self.report.errors.extend(
                            LineError(str(path), number, name, reason)
                            for name, reason in problems.problems
                        )
                if is_span_file:
                    self._flush_spans()
                else:
                    self._flush_traces()
        self._flush_traces()
        self._flush_spans()
        order = {str(path): index for index, (path, _) in enumerate(files)}
        self.report.errors.sort(key=lambda e: (order.get(e.path, 0), e.line))

    # -- trace lines --

    def _reject(self, obj: Any) -> None:
        trace_id = obj.get("trace_id") if isinstance(obj, dict) else None
        if self.span_files and isinstance(trace_id, str) and trace_id not in self.seen:
            self.rejected.add(trace_id)

    def _trace_line(self, obj: Any, path: str, number: int) -> None:
        trace, spans = _parse_trace(obj, self.project_id, self.now_ms)
        trace_id = trace[1]
        first = self.seen.get(trace_id)
        if first is not None:
            raise _LineProblems(
                [("trace_id", f"duplicate trace_id {trace_id!r} (first seen at {_at(first)})")]
            )
        self.seen[trace_id] = (path, number)
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
        present = set() if self.dry_run else self._stored_trace_ids([t.trace_id for t in batch])
        keep_runs = bool(self.span_files)
        trace_rows: list[tuple[Any, ...]] = []
        span_rows: list[tuple[Any, ...]] = []
        for pending in batch:
            if pending.trace_id in present:
                self.report.traces_already_present += 1
                self.report.spans_skipped += len(pending.spans)
                if keep_runs:
                    self.run_of[pending.trace_id] = None
                continue
            trace_rows.append(pending.row)
            span_rows.extend(pending.spans)
            if keep_runs:
                self.run_of[pending.trace_id] = pending.row[2]
        if not self.dry_run:
            # Spans first: a stored trace then always has its embedded spans.
            self.store.insert_columns("spans", _columns(SPAN_COLUMNS, span_rows))
            self.store.insert_columns("traces", _columns(TRACE_COLUMNS, trace_rows))
        self.report.traces_loaded += len(trace_rows)
        self.report.spans_loaded += len(span_rows)
        log.debug("trace batch: %d loaded, %d present", len(trace_rows), len(present))

    # -- span lines (separate files) --

    def _span_line(self, obj: Any, path: str, number: int) -> None:
        if isinstance(obj, dict) and "trace_id" not in obj:
            raise _LineProblems([("trace_id", "missing required field")])
        trace_id = obj.get("trace_id") if isinstance(obj, dict) else None
        run_id = self.run_of.get(trace_id) if isinstance(trace_id, str) else None
        seq = self.next_seq.get(trace_id, 0) if isinstance(trace_id, str) else 0
        row = _parse_span(obj, "", trace_id if isinstance(trace_id, str) else "", run_id, seq)
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
        stored = self._stored_trace_ids(unknown) if unknown else set()
        rows: list[tuple[Any, ...]] = []
        for span in batch:
            if span.trace_id in self.run_of:
                run_id = self.run_of[span.trace_id]
            elif span.trace_id in stored or span.trace_id in self.rejected:
                run_id = None
            else:
                self.report.errors.append(
                    LineError(
                        span.path,
                        span.line,
                        "trace_id",
                        f"no trace {span.trace_id!r} in this import or in the store",
                    )
                )
                continue
            if run_id is None:
                self.report.spans_skipped += 1
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
        if not self.dry_run:
            self.store.insert_columns("spans", _columns(SPAN_COLUMNS, rows))
        self.report.spans_loaded += len(rows)

    def _stored_trace_ids(self, trace_ids: list[str]) -> set[str]:
        rows = self.store.rows(
            "SELECT DISTINCT trace_id FROM {db}.traces WHERE trace_id IN {ids:Array(String)}",
            {"ids": trace_ids},
        )
        return {row[0] for row in rows}


# ---- parsing and validation ---------------------------------------------------------------


def _lines(path: Path, advance: Any) -> Iterator[tuple[int, bytes]]:
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            advance(len(raw))
            if raw.strip():
                yield number, raw


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise _LineProblems([("", f"invalid JSON ({exc.msg} at column {exc.colno})")]) from None
    except UnicodeDecodeError as exc:
        raise _LineProblems([("", f"invalid UTF-8 ({exc.reason} at byte {exc.start})")]) from None


def _parse_trace(
    obj: Any, project_id: str, now_ms: int
) -> tuple[tuple[Any, ...], list[tuple[Any, ...]]]:
    """Validate one trace object; return its row and its span rows, or raise _LineProblems."""
    if not isinstance(obj, dict):
        raise _LineProblems([("", f"expected a JSON object, got {_show(obj)}")])
    problems: list[tuple[str, str]] = []
    values, extras = _split(obj, _TRACE_KEYS, _TRACE_NULL_IS_DEFAULT, skip=("spans",))
    values["meta"] = _merge_extras(values.get("meta"), extras, "meta", "", problems)
    values.setdefault("project_id", project_id)
    trace: TraceRecord | None = None
    try:
        trace = TraceRecord.model_validate(values)
    except PydanticValidationError as exc:
        problems.extend(_translate(err, "") for err in exc.errors())
    if trace is not None:
        problems.extend(_int_range(trace, _TRACE_INT_FIELDS, ""))

    raw_spans = obj.get("spans")
    span_rows: list[tuple[Any, ...]] = []
    if raw_spans is not None and not isinstance(raw_spans, list):
        problems.append(("spans", f"expected a list of span objects, got {_show(raw_spans)}"))
    elif raw_spans:
        trace_id = trace.trace_id if trace else _str_or_empty(values.get("trace_id"))
        run_id = trace.run_id if trace else _str_or_empty(values.get("run_id"))
        span_ids: set[str] = set()
        for index, raw_span in enumerate(raw_spans):
            prefix = f"spans[{index}]."
            try:
                row = _parse_span(raw_span, prefix, trace_id, run_id, index)
            except _LineProblems as exc:
                problems.extend(exc.problems)
                continue
            if row[2] in span_ids:
                problems.append((f"{prefix}span_id", f"duplicate span_id {row[2]!r} in this trace"))
            span_ids.add(row[2])
            span_rows.append(row)
    if problems or trace is None:
        raise _LineProblems(problems)
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
    return row, span_rows


def _parse_span(
    obj: Any, prefix: str, trace_id: str, run_id: str | None, seq: int
) -> tuple[Any, ...]:
    """Validate one span object (defaults from its trace); return its row in SPAN_COLUMNS order."""
    if not isinstance(obj, dict):
        raise _LineProblems([(prefix.rstrip("."), f"expected a JSON object, got {_show(obj)}")])
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
    span: SpanRecord | None = None
    try:
        span = SpanRecord.model_validate(values)
    except PydanticValidationError as exc:
        problems.extend(_translate(err, prefix) for err in exc.errors())
    if span is not None:
        problems.extend(_int_range(span, _SPAN_INT_FIELDS, prefix))
    if problems or span is None:
        raise _LineProblems(problems)
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
    if kind.startswith("int_"):
        return name, f"expected an integer, got {got}"
    if kind.startswith("float_") or kind == "finite_number":
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
    text = json.dumps(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def _str_or_empty(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _at(location: tuple[str, int]) -> str:
    return f"{location[0]}:{location[1]}"


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def _to_ms(moment: datetime) -> int:
    """Milliseconds since the epoch; a timestamp without a time zone is taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _MILLISECOND


def _columns(names: tuple[str, ...], rows: list[tuple[Any, ...]]) -> dict[str, Sequence[Any]]:
    if not rows:
        return {}
    return dict(zip(names, (list(column) for column in zip(*rows, strict=True)), strict=True))


@contextmanager
def _progress_bar(enabled: bool, files: list[tuple[Path, bool]], dry_run: bool) -> Iterator[Any]:
    """Yield ``advance(n_bytes)``; draws a rich progress bar on stderr when enabled."""
    if not enabled:
        yield lambda _n: None
        return
    total = sum(path.stat().st_size for path, _ in files)
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("validating" if dry_run else "importing", total=total)
        yield lambda n: bar.advance(task, n)
