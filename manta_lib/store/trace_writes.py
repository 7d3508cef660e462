"""The write side of the ``traces`` and ``spans`` tables: idempotent batches, run deletion.

A batch is written spans first, then traces, so a stored trace always has its spans. A process
killed between the two inserts leaves spans without a trace; writing the same batch again must
not store those spans twice (ClickHouse merges ReplacingMergeTree duplicates only eventually,
and reads must never show them). So before a batch is inserted, one query finds which of its
traces are stored (those are skipped with their spans) and which of the remaining spans are
stored already (those are not inserted again): writing a batch twice, or after a
crash at any point, leaves exactly one copy of every row.

Ctrl-C (SIGINT) is held back while a batch's two inserts run, so an interrupted import or seed
stops between batches, never inside one.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Any

from manta_lib.store.client import Store
from manta_lib.store.schema import CATALOG_TABLE

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)

__all__ = [
    "BatchWrite",
    "RunDeletion",
    "delete_run",
    "delete_written",
    "demo_trace_counts",
    "run_row_counts",
    "stored_span_keys",
    "stored_trace_summaries",
    "stored_trace_runs",
    "write_new_trace_tables",
    "write_span_batch",
    "write_trace_batch",
]

Columns = Mapping[str, Sequence[Any]]

# Test-only fault injection: "spans:N" (or "traces:N") kills this process with SIGKILL right
# after its N-th insert into that table, the worst moment for a crash; "spans:N:INT" sends it
# SIGINT (Ctrl-C) there instead. The fault tests use it.
_KILL_AFTER_ENV = "MANTA_TEST_KILL_AFTER"
_inserts: dict[str, int] = {}
_DELETE_CHUNK = 10_000


@dataclass(frozen=True)
class BatchWrite:
    """What one idempotent batch write did."""

    traces_written: int = 0
    spans_written: int = 0
    traces_present: int = 0  # skipped: already stored
    spans_present: int = 0  # skipped: already stored, or their trace was
    # What was inserted, for a caller that may have to take it back (a strict import):
    # (run_id, trace_id) of the new traces (their spans go with them), and
    # (run_id, trace_id, span_id) of spans written for traces that were stored before.
    new_traces: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    new_spans: tuple[tuple[str, str, str], ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class RunDeletion:
    """Rows of one run removed by :func:`delete_run`."""

    run_id: str
    traces: int
    spans: int
    results: int


def stored_trace_runs(
    store: Store, trace_ids: Sequence[str], run_ids: Sequence[str] | None = None
) -> dict[str, str]:
    """``{trace_id: run_id}`` of the given traces that are stored.

    ``run_ids`` (when known) narrows the scan to those runs through the sort key.
    """
    if not trace_ids:
        return {}
    if run_ids is not None:
        rows = store.rows(
            "SELECT DISTINCT trace_id, run_id FROM {db}.traces "
            "WHERE run_id IN {runs:Array(String)} AND trace_id IN {ids:Array(String)}",
            {"runs": sorted(set(run_ids)), "ids": list(trace_ids)},
        )
    else:
        rows = store.rows(
            "SELECT DISTINCT trace_id, run_id FROM {db}.traces "
            "WHERE trace_id IN {ids:Array(String)}",
            {"ids": list(trace_ids)},
        )
    return {row[0]: row[1] for row in rows}


def stored_trace_summaries(
    store: Store, trace_ids: Sequence[str], run_ids: Sequence[str]
) -> dict[str, tuple[str, int, str]]:
    """``{trace_id: (run_id, step_number, datapoint_id)}`` of the given stored traces: enough
    to tell whether a stored trace is the one a deterministic generator would write."""
    if not trace_ids:
        return {}
    rows = store.rows(
        "SELECT trace_id, any(run_id), any(step_number), any(datapoint_id) FROM {db}.traces "
        "WHERE run_id IN {runs:Array(String)} AND trace_id IN {ids:Array(String)} "
        "GROUP BY trace_id",
        {"runs": sorted(set(run_ids)), "ids": list(trace_ids)},
    )
    return {row[0]: (row[1], int(row[2]), row[3]) for row in rows}


def demo_trace_counts(store: Store, project_id: str, trace_prefix: str) -> tuple[int, int, int]:
    """``(all traces, traces of project_id, those whose id starts with trace_prefix)``."""
    row = store.rows(
        "SELECT count(), countIf(project_id = {p:String}), "
        "countIf(project_id = {p:String} AND startsWith(trace_id, {prefix:String})) "
        "FROM {db}.traces",
        {"p": project_id, "prefix": trace_prefix},
    )[0]
    return int(row[0]), int(row[1]), int(row[2])


def stored_span_keys(
    store: Store, run_ids: Sequence[str], trace_ids: Sequence[str]
) -> set[tuple[str, str]]:
    """``(trace_id, span_id)`` of the stored spans of the given traces."""
    if not trace_ids:
        return set()
    rows = store.rows(
        "SELECT DISTINCT trace_id, span_id FROM {db}.spans "
        "WHERE run_id IN {runs:Array(String)} AND trace_id IN {ids:Array(String)}",
        {"runs": sorted(set(run_ids)), "ids": sorted(set(trace_ids))},
    )
    return {(row[0], row[1]) for row in rows}


def _stored_in_batch(
    store: Store, run_ids: Sequence[str], trace_ids: Sequence[str]
) -> tuple[set[str], set[tuple[str, str]]]:
    """One query: the batch's stored traces, and the stored spans of its other traces (the
    spans a crash between the two inserts of an earlier attempt left behind)."""
    if not trace_ids:
        return set(), set()
    rows = store.rows(
        "SELECT trace_id, '', 1 FROM {db}.traces "
        "WHERE run_id IN {runs:Array(String)} AND trace_id IN {ids:Array(String)} "
        "UNION ALL "
        "SELECT trace_id, span_id, 0 FROM {db}.spans "
        "WHERE run_id IN {runs:Array(String)} AND trace_id IN {ids:Array(String)} "
        "AND trace_id NOT IN (SELECT trace_id FROM {db}.traces "
        "WHERE run_id IN {runs:Array(String)} AND trace_id IN {ids:Array(String)})",
        {"runs": sorted(set(run_ids)), "ids": list(trace_ids)},
    )
    present = {trace_id for trace_id, _, is_trace in rows if is_trace}
    return present, {(trace_id, span_id) for trace_id, span_id, is_trace in rows if not is_trace}


def write_trace_batch(
    store: Store, traces: Columns, spans: Columns, *, check_stored: bool = True
) -> BatchWrite:
    """Insert a batch of traces with their spans, skipping every row that is stored already.

    ``traces`` and ``spans`` are column-oriented (keys: the table's column names; spans must
    belong to the batch's traces). ``check_stored=False`` skips the look-up, for a
    caller that knows none of these rows can be stored (a fresh demo seed).
    """
    trace_ids = list(traces.get("trace_id", ()))
    span_count = len(spans.get("trace_id", ())) if spans else 0
    if not check_stored:
        return _write_unchecked(store, traces, spans, len(trace_ids), span_count)
    present, stored = _stored_in_batch(store, traces.get("run_id", ()), trace_ids)
    keep_traces = [i for i, trace_id in enumerate(trace_ids) if trace_id not in present]
    keep_spans: list[int] = []
    if span_count:
        span_trace_ids, span_ids = spans["trace_id"], spans["span_id"]
        keep_spans = [
            i
            for i in range(span_count)
            if span_trace_ids[i] not in present and (span_trace_ids[i], span_ids[i]) not in stored
        ]
    with hold_sigint():
        _insert(store, "spans", _take(spans, keep_spans, span_count))
        _insert(store, "traces", _take(traces, keep_traces, len(trace_ids)))
    run_ids = traces["run_id"] if keep_traces else ()
    done = BatchWrite(
        traces_written=len(keep_traces),
        spans_written=len(keep_spans),
        traces_present=len(trace_ids) - len(keep_traces),
        spans_present=span_count - len(keep_spans),
        new_traces=tuple((run_ids[i], trace_ids[i]) for i in keep_traces),
    )
    log.debug("trace batch written: %s", done)
    return done


def write_span_batch(store: Store, spans: Columns) -> BatchWrite:
    """Insert spans of stored (or this batch's) traces, skipping ``(trace_id, span_id)`` pairs
    that are stored already (spans of a separate span file)."""
    span_count = len(spans.get("trace_id", ())) if spans else 0
    if not span_count:
        return BatchWrite()
    trace_ids, span_ids = spans["trace_id"], spans["span_id"]
    stored = stored_span_keys(store, spans["run_id"], trace_ids)
    keep: list[int] = []
    seen: set[tuple[str, str]] = set()
    for i in range(span_count):
        key = (trace_ids[i], span_ids[i])
        if key not in stored and key not in seen:
            seen.add(key)
            keep.append(i)
    with hold_sigint():
        _insert(store, "spans", _take(spans, keep, span_count))
    run_ids = spans["run_id"]
    return BatchWrite(
        spans_written=len(keep),
        spans_present=span_count - len(keep),
        new_spans=tuple((run_ids[i], trace_ids[i], span_ids[i]) for i in keep),
    )


def delete_written(
    store: Store,
    traces: Sequence[tuple[str, str]],
    spans: Sequence[tuple[str, str, str]] = (),
) -> None:
    """Take back what batch writes inserted: the given new traces with all their spans, and
    the given spans (``BatchWrite.new_traces`` / ``new_spans``)."""
    with hold_sigint():
        for start in range(0, len(spans), _DELETE_CHUNK):
            chunk = spans[start : start + _DELETE_CHUNK]
            store.command(
                "DELETE FROM {db}.spans WHERE run_id IN {runs:Array(String)} "
                "AND (trace_id, span_id) IN {keys:Array(Tuple(String, String))}",
                {"runs": sorted({s[0] for s in chunk}), "keys": [(s[1], s[2]) for s in chunk]},
            )
        for start in range(0, len(traces), _DELETE_CHUNK):
            chunk_traces = traces[start : start + _DELETE_CHUNK]
            parameters = {
                "runs": sorted({t[0] for t in chunk_traces}),
                "ids": [t[1] for t in chunk_traces],
            }
            for table in ("spans", "traces"):
                store.command(
                    f"DELETE FROM {{db}}.{table} WHERE run_id IN {{runs:Array(String)}} "
                    "AND trace_id IN {ids:Array(String)}",
                    parameters,
                )


def run_row_counts(store: Store, run_id: str) -> tuple[int, int, int]:
    """``(traces, spans, result rows)`` stored for ``run_id``."""
    parameters = {"run": run_id}
    traces = store.rows("SELECT count() FROM {db}.traces WHERE run_id = {run:String}", parameters)
    spans = store.rows("SELECT count() FROM {db}.spans WHERE run_id = {run:String}", parameters)
    results = store.rows(
        "SELECT count() FROM {db}.entity_metadata WHERE run_id = {run:String}", parameters
    )
    return int(traces[0][0]), int(spans[0][0]), int(results[0][0])


def delete_run(store: Store, run_id: str) -> RunDeletion:
    """Delete a run's traces, spans, computed results and label queues (with their labels).

    Spans go first and traces last, so an interrupted deletion leaves a run that is still
    listed and can be deleted again (never traces whose spans silently vanished). The results
    catalog goes before the results: an interruption there hides results that are being
    deleted, rather than listing a version whose results are gone.
    """
    traces, spans, results = run_row_counts(store, run_id)
    parameters = {"run": run_id}
    with hold_sigint():
        # the run's label queues: their events and items first, the queues (which name the
        # run) last, so an interrupted deletion can be run again
        of_run = (
            "queue_id IN (SELECT queue_id FROM {db}.annotation_queues WHERE run_id = {run:String})"
        )
        for table in ("annotation_events", "annotation_items"):
            store.command(f"DELETE FROM {{db}}.{table} WHERE {of_run}", parameters)
        for table in (
            "annotation_queues",
            CATALOG_TABLE,
            "entity_metadata",
            "otel_spans",
            "spans",
            "traces",
        ):
            store.command(f"DELETE FROM {{db}}.{table} WHERE run_id = {{run:String}}", parameters)
    log.info("deleted run %s: %d traces, %d spans, %d results", run_id, traces, spans, results)
    return RunDeletion(run_id=run_id, traces=traces, spans=spans, results=results)


def write_new_trace_tables(store: Store, traces: pa.Table, spans: pa.Table) -> BatchWrite:
    """Insert a batch none of whose rows can be stored already (a fresh demo seed) from Arrow
    tables, which the store converts in C: spans first, then traces, as
    :func:`write_trace_batch` does."""
    return _write_unchecked(store, traces, spans, traces.num_rows, spans.num_rows)


def _write_unchecked(
    store: Store,
    traces: Columns | pa.Table,
    spans: Columns | pa.Table,
    trace_count: int,
    span_count: int,
) -> BatchWrite:
    """Insert spans, then their traces (a trace row is the last thing written of a trace)."""
    with hold_sigint():
        _insert(store, "spans", spans)
        _insert(store, "traces", traces)
    return BatchWrite(traces_written=trace_count, spans_written=span_count)


def _insert(store: Store, table: str, columns: Columns | pa.Table) -> None:
    if isinstance(columns, Mapping):
        store.insert_columns(table, columns)
        written = bool(columns)
    else:
        store.insert_arrow(table, columns)
        written = columns.num_rows > 0
    fault = os.environ.get(_KILL_AFTER_ENV)
    if fault and written:
        _inserts[table] = _inserts.get(table, 0) + 1
        where, _, name = fault.partition(f"{table}:{_inserts[table]}")
        if not where and name in ("", ":INT"):
            os.kill(os.getpid(), signal.SIGINT if name else signal.SIGKILL)


def _take(columns: Columns, keep: list[int], total: int) -> dict[str, Sequence[Any]]:
    if not keep:
        return {}
    if len(keep) == total:
        return dict(columns)
    return {name: [values[i] for i in keep] for name, values in columns.items()}


@contextmanager
def hold_sigint() -> Iterator[None]:
    """Defer Ctrl-C until the block ends (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    received: list[int] = []

    def remember(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)

    try:
        signal.signal(signal.SIGINT, remember)
    except ValueError:  # not the main interpreter
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received and callable(previous):
            previous(signal.SIGINT, None)  # the default handler raises KeyboardInterrupt here
        elif received and previous == signal.SIG_DFL:
            signal.raise_signal(signal.SIGINT)
