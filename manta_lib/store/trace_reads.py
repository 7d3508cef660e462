"""Reading traces with their spans: rows to records, span blocks sliced per trace, the
merged trace and span streams, spans of a batch in one query, and the run-id check with close
matches. :class:`~manta_lib.service.MantaService` is the public face of these reads.

Spans of many traces are always loaded with one query per batch of traces, never one per trace.
"""

from __future__ import annotations

import difflib
import json
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from itertools import groupby
from typing import Any

from manta_lib.context import SpanColumns, TraceContext
from manta_lib.context.trace_rows import TRACE_INDEX
from manta_lib.errors import QueryError
from manta_lib.models import (
    SPAN_COLUMNS,
    SpanKind,
    SpanRecord,
    TraceRecord,
    fast_construct,
)
from manta_lib.store import query_args as args
from manta_lib.store import trace_queries
from manta_lib.store.client import Store
from manta_lib.store.trace_queries import (
    SPAN_SELECT,
    TRACE_SELECT,
    SpanFilter,
    TraceFilter,
    in_strings,
    order_clause,
    stream_read_settings,
)

_SPAN_KINDS = {kind.value: kind for kind in SpanKind}
_RUN_ID = TRACE_INDEX["run_id"]
_TRACE_ID = TRACE_INDEX["trace_id"]
_decode_json = json.JSONDecoder().decode


def trace_span_slices(
    blocks: Iterator[Sequence[Sequence[Any]]],
) -> Iterator[tuple[tuple[str, str], SpanColumns]]:
    """``((run_id, trace_id), spans)`` per trace from span column blocks sorted by
    (run_id, trace_id); a trace cut by a block boundary is joined into one slice."""
    carry: tuple[tuple[str, str], SpanColumns] | None = None
    for columns in blocks:
        count = len(columns[0])
        for key, start, stop in _block_traces(columns[0], columns[1]):
            piece = SpanColumns(columns, start, stop)
            if carry is not None:
                if start == 0 and carry[0] == key:
                    piece = _joined(carry[1], piece)
                else:
                    yield carry
                carry = None
            if stop == count:
                carry = (key, piece)  # may go on in the next block
            else:
                yield key, piece
    if carry is not None:
        yield carry


def _block_traces(
    trace_ids: Sequence[str], run_ids: Sequence[str]
) -> Iterator[tuple[tuple[str, str], int, int]]:
    """``((run_id, trace_id), start, stop)`` of each trace's rows in a block sorted by
    (run_id, trace_id). A block of one run (the usual case) finds each trace's end by
    bisection: a few comparisons per trace rather than a step per span."""
    count = len(trace_ids)
    if not count:
        return
    if run_ids[0] == run_ids[count - 1]:
        run_id, start = run_ids[0], 0
        while start < count:
            trace_id = trace_ids[start]
            stop = bisect_right(trace_ids, trace_id, start)
            yield (run_id, trace_id), start, stop
            start = stop
        return
    start = 0
    for key, group in groupby(zip(run_ids, trace_ids, strict=True)):
        stop = start + sum(1 for _ in group)
        yield key, start, stop
        start = stop


def _joined(first: SpanColumns, second: SpanColumns) -> SpanColumns:
    columns = [[*first.column(i), *second.column(i)] for i in range(len(SPAN_COLUMNS))]
    return SpanColumns(columns, 0, len(first) + len(second))


def span_from_row(row: Sequence[Any]) -> SpanRecord:
    """Build a SpanRecord from a row in ``SPAN_COLUMNS`` order."""
    values = dict(zip(SPAN_COLUMNS, row, strict=True))
    values["kind"] = _SPAN_KINDS.get(values["kind"], values["kind"])
    attributes = values["attributes"]
    values["attributes"] = _decode_json(attributes) if attributes and attributes != "{}" else {}
    return fast_construct(SpanRecord, values)


def stream_contexts(
    store: Store,
    flt: TraceFilter,
    limit: int | None,
    span_filter: SpanFilter | None,
    batch_size: int,
) -> Iterator[list[TraceContext]]:
    """Lists of ``batch_size`` contexts of the traces ``flt`` selects (at most ``limit``),
    merged from two streams sorted by (run_id, trace_id): trace rows and their spans.

    Each stream has its own connection, so memory holds one batch whatever the run size,
    and the caller may use ``store`` while iterating. A run of the filter that the store does
    not hold raises :class:`QueryError` (:func:`require_runs`) before any stream opens.
    """
    where, params = flt.where()
    limit_sql = ""
    if limit is not None:
        params["q_limit"] = limit
        limit_sql = " LIMIT {q_limit:UInt64}"
    order = f"ORDER BY run_id, trace_id{limit_sql}"
    traces_sql = (
        f"SELECT {TRACE_SELECT} FROM {{db}}.traces WHERE {where} {order} "
        f"SETTINGS {stream_read_settings(store)}"
    )
    span_where, span_params = (span_filter or SpanFilter()).where()
    if limit is None and flt.spans_filterable:
        # Filter spans by their own columns: no set of the selected trace ids to build
        # (it grows with the run); the merge drops spans of traces not streamed.
        selected = where
    else:
        selected = (
            f"run_id IN (SELECT run_id FROM {{db}}.traces WHERE {where}) "
            f"AND (run_id, trace_id) IN (SELECT run_id, trace_id FROM {{db}}.traces "
            f"WHERE {where} {order})"
        )
    spans_sql = (
        f"SELECT {SPAN_SELECT} FROM {{db}}.spans WHERE {selected} "
        f"AND {span_where} ORDER BY run_id, trace_id, seq, span_id "
        f"SETTINGS max_block_size = {int(trace_queries.SPAN_STREAM_BLOCK_ROWS)}, "
        f"{stream_read_settings(store)}"
    )
    require_runs(store, flt.run_id)
    trace_conn = store.sibling()
    span_conn = store.sibling()
    try:
        with (
            trace_conn.stream(traces_sql, params) as trace_blocks,
            span_conn.stream_columns(spans_sql, {**params, **span_params}) as span_blocks,
        ):
            spans = trace_span_slices(span_blocks)
            pending = next(spans, None)
            batch: list[TraceContext] = []
            from_row = TraceContext.from_row
            for block in trace_blocks:
                for trace_row in block:
                    key = (trace_row[_RUN_ID], trace_row[_TRACE_ID])
                    while pending is not None and pending[0] < key:
                        pending = next(spans, None)  # a trace added between the two reads
                    if pending is not None and pending[0] == key:
                        batch.append(from_row(trace_row, pending[1]))
                        pending = next(spans, None)
                    else:
                        batch.append(from_row(trace_row, []))
                    if len(batch) >= batch_size:
                        yield batch
                        batch = []
            if batch:
                yield batch
    finally:
        trace_conn.close()
        span_conn.close()


def require_runs(store: Store, run_ids: Sequence[str] | None) -> None:
    """Raise :class:`QueryError` for the first of ``run_ids`` the store does not hold, naming
    the closest existing runs (or saying the store is empty, and where it is)."""
    if not run_ids:
        return
    wanted = sorted(set(run_ids))
    found = {
        r[0]
        for r in store.rows(
            "SELECT DISTINCT run_id FROM {db}.traces WHERE run_id IN {r:Array(String)}",
            {"r": wanted},
        )
    }
    missing = [run for run in wanted if run not in found]
    if not missing:
        return
    known = all_run_ids(store)
    if not known:
        raise QueryError(
            f"run_id {missing[0]!r} not found: the store ({store.describe()}) has no traces yet "
            f"(load some with `manta import FILE` or `manta demo seed`, or point "
            f"MANTA_DATA_DIR / CLICKHOUSE_URL at the store that has them)"
        )
    closest = difflib.get_close_matches(missing[0], known, n=5, cutoff=0.0)
    raise QueryError(
        f"run_id {missing[0]!r} not found; existing runs (closest first): {', '.join(closest)}"
    )


def all_run_ids(store: Store) -> list[str]:
    return [r[0] for r in store.rows("SELECT DISTINCT run_id FROM {db}.traces ORDER BY 1")]


def load_contexts(
    store: Store, traces: Sequence[TraceRecord], span_filter: SpanFilter | None
) -> list[TraceContext]:
    grouped = span_rows(
        store, [t.trace_id for t in traces], {t.run_id for t in traces}, span_filter
    )
    return [TraceContext(trace, grouped.get(trace.trace_id, [])) for trace in traces]


def span_rows(
    store: Store,
    trace_ids: list[str],
    run_ids: set[str] | None,
    span_filter: SpanFilter | None,
) -> dict[str, list[tuple[Any, ...]]]:
    span_where, params = (span_filter or SpanFilter()).where()
    ids_clause = in_strings("trace_id", "ids", trace_ids, params)
    run_clause = ""
    if run_ids:
        params["runs"] = sorted(run_ids)
        run_clause = "run_id IN {runs:Array(String)} AND "
    rows = store.rows(
        f"""
        SELECT {SPAN_SELECT} FROM {{db}}.spans
        WHERE {run_clause}{ids_clause} AND {span_where}
        ORDER BY run_id, trace_id, seq, span_id
        """,
        params,
    )
    return {tid: list(group) for tid, group in groupby(rows, key=lambda r: r[0])}


def trace_query(
    flt: TraceFilter,
    order_by: str | Sequence[str],
    descending: bool,
    limit: int | None,
    offset: int,
) -> tuple[str, dict[str, Any]]:
    where, params = flt.where()
    order = order_clause(order_by, descending)
    sql = f"SELECT {TRACE_SELECT} FROM {{db}}.traces WHERE {where} ORDER BY {order}"
    if limit is not None:
        params["q_limit"] = args.count("limit", limit)
        sql += " LIMIT {q_limit:UInt64}"
    skip = args.count("offset", offset)
    if skip:
        params["q_offset"] = skip
        sql += " OFFSET {q_offset:UInt64}"
    return sql, params


def bare_contexts(traces: list[TraceRecord]) -> list[TraceContext]:
    return [TraceContext(trace, []) for trace in traces]
