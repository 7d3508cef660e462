"""SQL for exporting traces and spans as Arrow record-batch streams (Parquet export)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from manta_lib.store.client import Store
from manta_lib.store.trace_queries import SPAN_SELECT, TRACE_SELECT, TraceFilter


def _stream_sql(trace_filter: TraceFilter, spans: bool) -> tuple[str, dict[str, Any]]:
    where, params = trace_filter.where()
    if not spans:
        sql = f"SELECT {TRACE_SELECT} FROM {{db}}.traces WHERE {where} ORDER BY run_id, trace_id"
        return sql, params
    sql = (
        f"SELECT {SPAN_SELECT} FROM {{db}}.spans "
        f"WHERE (run_id, trace_id) IN (SELECT run_id, trace_id FROM {{db}}.traces WHERE {where}) "
        f"ORDER BY run_id, trace_id, seq, span_id"
    )
    return sql, params


@contextmanager
def arrow_batches(store: Store, trace_filter: TraceFilter, *, spans: bool) -> Iterator[Any]:
    """Stream the selected traces' rows (or their spans' rows) as ``pyarrow.RecordBatch``es;
    the store's lock is held until the stream is closed."""
    sql, params = _stream_sql(trace_filter, spans)
    with (
        store._lock,
        store.client.query_arrow_stream(store.sql(sql), parameters=params) as stream,
    ):
        yield stream
