"""Query results shipped undecoded to another process, decoded there into the same rows.

A process that maps traces in worker processes (``mode="processes"``) reads their spans; built
into Python objects and pickled, a batch's spans cost more of that process's time than the
workers' map. :func:`span_rows_native` returns the spans of some traces as the engine's
Native-format bytes instead, and :func:`decode_span_rows` (in the worker) turns them into the
row tuples ``MantaService.load_contexts`` would have built, with the same decoder.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import groupby
from typing import Any, cast

from clickhouse_connect.driver.ctypes import RespBuffCls
from clickhouse_connect.driver.query import QueryResult
from clickhouse_connect.driver.transform import NativeTransform

from manta_lib.store.client import Store
from manta_lib.store.trace_queries import SPAN_SELECT, in_strings


@dataclass(frozen=True)
class NativeRows:
    """A query's result as Native bytes, and its pickled decoding context."""

    data: bytes
    context: bytes


class _Source:
    """The byte source clickhouse-connect's response buffer reads (one chunk)."""

    def __init__(self, data: bytes) -> None:
        self.gen: Iterator[bytes] = iter([data] if data else [])

    def close(self) -> None:
        return None


def span_rows_native(store: Store, run_id: str, trace_ids: list[str]) -> NativeRows:
    """The spans of ``trace_ids`` (all span columns, sorted by trace and ``seq``), undecoded."""
    params: dict[str, Any] = {"run": run_id}
    ids_clause = in_strings("trace_id", "ids", trace_ids, params)
    data, context = store.native(
        f"SELECT {SPAN_SELECT} FROM {{db}}.spans WHERE run_id = {{run:String}} AND "
        f"{ids_clause} ORDER BY run_id, trace_id, seq, span_id",
        params,
    )
    return NativeRows(data, pickle.dumps(context, protocol=pickle.HIGHEST_PROTOCOL))


def decode_span_rows(native: NativeRows) -> dict[str, list[tuple[Any, ...]]]:
    """The span rows of :func:`span_rows_native`, grouped by trace id."""
    if not native.data:
        return {}
    context = pickle.loads(native.context)  # noqa: S301 - made by this program's driver
    source = RespBuffCls(_Source(native.data))  # type: ignore[no-untyped-call]
    result = NativeTransform().parse_response(source, context)
    if not isinstance(result, QueryResult):
        raise TypeError(f"expected a QueryResult, got {type(result).__name__}")
    rows = cast(list[tuple[Any, ...]], result.result_rows)
    return {tid: list(group) for tid, group in groupby(rows, key=lambda r: r[0])}
