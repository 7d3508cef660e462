"""MantaService: the entry point for loading traces and spans from ClickHouse.

Example::

    from manta import MantaService

    with MantaService() as svc:
        print(svc.list_runs())
        for batch in svc.iter_trace_batches("run_grpo_math_v1", phase="eval"):
            for trace in batch:
                print(trace.trace_id, trace.tool_error_count)

Spans of many traces are always loaded with one query per batch of traces, never one per trace.
"""

from __future__ import annotations

import difflib
import json
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from itertools import groupby
from json.scanner import c_make_scanner  # type: ignore[attr-defined]
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from manta_lib.context import SpanColumns, TraceContext
from manta_lib.errors import QueryError
from manta_lib.models import (
    SPAN_COLUMNS,
    TRACE_COLUMNS,
    EntityLevel,
    Phase,
    SpanKind,
    SpanRecord,
    TraceRecord,
    fast_construct,
)
from manta_lib.results import (
    JudgeInfo,
    ResultsFilter,
    compare,
    compile_trace_condition,
    list_judges,
    results_arrow,
    results_frame,
)
from manta_lib.results.compare import Agreement, RunComparison
from manta_lib.results.series import plot_series, series
from manta_lib.settings import MantaSettings, load_settings
from manta_lib.store import Store, trace_queries
from manta_lib.store import query_args as args
from manta_lib.store.trace_queries import (
    SPAN_SELECT,
    TRACE_SELECT,
    SpanFilter,
    TraceFilter,
    in_strings,
    order_clause,
)

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

_ERROR_STATUSES = ("error", "timeout")


class RunSummary(BaseModel):
    """One run with its counts."""

    run_id: str
    project_id: str
    trace_count: int
    step_count: int
    datapoint_count: int
    phases: list[str]
    first_step: int
    last_step: int
    mean_score: float | None
    error_count: int
    first_created_at: datetime | None
    last_created_at: datetime | None


class StepSummary(BaseModel):
    """One step of a run with its counts."""

    run_id: str
    step_number: int
    phases: list[str]
    trace_count: int
    datapoint_count: int
    mean_score: float | None
    error_count: int


class DatapointSummary(BaseModel):
    """One datapoint of a run: how many traces, at which steps."""

    run_id: str
    datapoint_id: str
    trace_count: int
    steps: list[int]
    mean_score: float | None
    error_count: int


_PHASES = {phase.value: phase for phase in Phase}
_SPAN_KINDS = {kind.value: kind for kind in SpanKind}
_DECODER = json.JSONDecoder()
_decode_json = _DECODER.decode
_scan_json = c_make_scanner(_DECODER) if c_make_scanner is not None else None


def _decode_meta(text: str) -> Any:
    """A stored meta object (JSON we wrote): the C scanner straight away, the full decoder
    (and its error) only for text the scanner does not consume whole."""
    if _scan_json is not None:
        try:
            value, end = _scan_json(text, 0)
        except StopIteration:
            return _decode_json(text)
        if end == len(text):
            return value
    return _decode_json(text)


def trace_from_row(row: Sequence[Any]) -> TraceRecord:
    """Build a TraceRecord from a row in ``TRACE_COLUMNS`` order without re-validation."""
    values = dict(zip(TRACE_COLUMNS, row, strict=True))
    values["phase"] = _PHASES.get(values["phase"], values["phase"])
    meta = values["meta"]
    values["meta"] = _decode_meta(meta) if meta else {}
    return fast_construct(TraceRecord, values)


def _trace_span_slices(
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


class MantaService:
    """Query traces, spans and the run / step / datapoint hierarchy.

    Pass an open :class:`Store` to share a connection. Without one, each call opens the store
    from the environment and closes it when it returns, so that an idle service (a notebook
    variable) never holds the embedded store's lock; a ``with MantaService() as svc:`` block
    keeps one connection open for the block instead (faster for many small calls).

    Trace filters (all optional, ANDed): ``run_id``, ``phase`` (train/eval/prod), ``step``
    (one number or an inclusive ``(first, last)`` range), ``datapoint_id``, ``status``,
    ``model_name``, ``env_name``, ``min_score``/``max_score``, ``meta`` (``{key: value}``
    on top-level meta keys), ``trace_ids``, ``results`` (a condition on stored results such as
    ``"tool_errors.tool_errors > 0"``, see docs/results.md), ``text`` (a phrase that the
    traces' messages, tool calls or grader feedback contain, any case, see docs/search.md).
    String filters also accept a list.
    Every argument is checked before a query runs: a wrong type or value raises
    :class:`QueryError` naming it, and a ``run_id`` the store does not hold raises
    :class:`QueryError` listing the closest run ids, in every method.
    """

    def __init__(self, store: Store | None = None, *, settings: MantaSettings | None = None):
        self._store = store
        self._owns_store = store is None
        self._settings = settings

    @property
    def store(self) -> Store:
        """The held store, opened now (and held until :meth:`close`) if there is none."""
        if self._store is None:
            self._store = Store.open(self._settings or load_settings())
        return self._store

    @contextmanager
    def _open(self) -> Iterator[Store]:
        """The store for one call: the held one, else one opened for the call and closed after."""
        if self._store is not None:
            yield self._store
            return
        store = Store.open(self._settings or load_settings())
        try:
            yield store
        finally:
            store.close()

    def close(self) -> None:
        """Close the store if this service opened it."""
        if self._owns_store and self._store is not None:
            self._store.close()
            self._store = None

    def __enter__(self) -> MantaService:
        self.store  # noqa: B018 - hold one connection for the block
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- hierarchy -----------------------------------------------------------------------

    def list_runs(self, *, project_id: str | None = None) -> list[RunSummary]:
        """All runs with trace, step and datapoint counts, newest first."""
        where, params = TraceFilter(project_id=project_id).where()
        with self._open() as store:
            rows = store.rows(
                f"""
                SELECT run_id, any(project_id), count(), uniqExact(step_number),
                       uniqExact(datapoint_id), arraySort(groupUniqArray(toString(phase))),
                       min(step_number), max(step_number), avg(score),
                       countIf(status IN {{errs:Array(String)}}), min(created_at),
                       max(created_at)
                FROM {{db}}.traces WHERE {where}
                GROUP BY run_id ORDER BY max(created_at) DESC, run_id
                """,
                {**params, "errs": list(_ERROR_STATUSES)},
            )
        return [
            RunSummary(
                run_id=r[0],
                project_id=r[1],
                trace_count=r[2],
                step_count=r[3],
                datapoint_count=r[4],
                phases=list(r[5]),
                first_step=r[6],
                last_step=r[7],
                mean_score=_nan_to_none(r[8]),
                error_count=r[9],
                first_created_at=r[10],
                last_created_at=r[11],
            )
            for r in rows
        ]

    def run_ids(self) -> list[str]:
        """The ids of every run in the store, sorted."""
        with self._open() as store:
            return _all_run_ids(store)

    def require_run(self, run_id: str) -> None:
        """Raise :class:`QueryError` naming the closest existing runs if ``run_id`` is unknown."""
        run = args.string("run_id", run_id)
        with self._open() as store:
            require_runs(store, [run])

    def list_steps(self, run_id: str, *, phase: str | None = None) -> list[StepSummary]:
        """The steps of a run in order, with counts."""
        run = args.string("run_id", run_id)
        where, params = TraceFilter(run_id=run, phase=phase).where()
        with self._open() as store:
            require_runs(store, [run])
            rows = store.rows(
                f"""
                SELECT step_number, arraySort(groupUniqArray(toString(phase))), count(),
                       uniqExact(datapoint_id), avg(score),
                       countIf(status IN {{errs:Array(String)}})
                FROM {{db}}.traces WHERE {where}
                GROUP BY step_number ORDER BY step_number
                """,
                {**params, "errs": list(_ERROR_STATUSES)},
            )
        return [
            StepSummary(
                run_id=run,
                step_number=r[0],
                phases=list(r[1]),
                trace_count=r[2],
                datapoint_count=r[3],
                mean_score=_nan_to_none(r[4]),
                error_count=r[5],
            )
            for r in rows
        ]

    def list_datapoints(
        self, run_id: str, *, step: int | tuple[int, int] | None = None, phase: str | None = None
    ) -> list[DatapointSummary]:
        """The datapoints of a run (optionally of some steps), with their steps and counts."""
        run = args.string("run_id", run_id)
        where, params = TraceFilter(run_id=run, step=step, phase=phase).where()
        with self._open() as store:
            require_runs(store, [run])
            rows = store.rows(
                f"""
                SELECT datapoint_id, count(), arraySort(groupUniqArray(step_number)), avg(score),
                       countIf(status IN {{errs:Array(String)}})
                FROM {{db}}.traces WHERE {where}
                GROUP BY datapoint_id ORDER BY datapoint_id
                """,
                {**params, "errs": list(_ERROR_STATUSES)},
            )
        return [
            DatapointSummary(
                run_id=run,
                datapoint_id=r[0],
                trace_count=r[1],
                steps=list(r[2]),
                mean_score=_nan_to_none(r[3]),
                error_count=r[4],
            )
            for r in rows
        ]

    # ---- traces --------------------------------------------------------------------------

    def get_traces(
        self,
        run_id: str | Sequence[str] | None = None,
        *,
        order_by: str | Sequence[str] = "step_number",
        descending: bool = False,
        limit: int | None = None,
        offset: int = 0,
        **filters: Any,
    ) -> list[TraceRecord]:
        """Trace rows matching the filters (see the class docstring), without spans."""
        checked = _build_filter(None, run_id, filters)
        _trace_query(checked, order_by, descending, limit, offset)  # check before opening
        with self._open() as store:
            flt = _with_results(store, checked, run_id, filters)
            sql, params = _trace_query(flt, order_by, descending, limit, offset)
            require_runs(store, flt.run_id)
            return [trace_from_row(row) for row in store.rows(sql, params)]

    def count_traces(self, run_id: str | Sequence[str] | None = None, **filters: Any) -> int:
        """How many traces match the filters (an unknown ``run_id`` raises, as everywhere)."""
        checked = _build_filter(None, run_id, filters)
        with self._open() as store:
            flt = _with_results(store, checked, run_id, filters)
            where, params = flt.where()
            require_runs(store, flt.run_id)
            return int(store.rows(f"SELECT count() FROM {{db}}.traces WHERE {where}", params)[0][0])

    def get_trace(self, trace_id: str) -> TraceContext:
        """One trace with its spans; :class:`QueryError` if it does not exist."""
        wanted = args.string("trace_id", trace_id)
        with self._open() as store:
            sql, params = _trace_query(TraceFilter(trace_ids=[wanted]), "trace_id", False, 1, 0)
            traces = [trace_from_row(row) for row in store.rows(sql, params)]
            if not traces:
                close = trace_queries.similar_trace_ids(store, wanted)
                hint = f"; closest stored ids: {', '.join(close)}" if close else ""
                raise QueryError(f"trace_id {wanted!r} not found{hint}")
            return _load_contexts(store, traces, None)[0]

    def similar_trace_ids(self, trace_id: str, limit: int = 5) -> list[str]:
        """The stored trace ids closest to ``trace_id`` (for a mistyped id)."""
        wanted = args.string("trace_id", trace_id)
        with self._open() as store:
            return trace_queries.similar_trace_ids(store, wanted, limit)

    def iter_trace_batches(
        self,
        run_id: str | Sequence[str] | None = None,
        *,
        batch_size: int = 1000,
        with_spans: bool = True,
        order_by: str | Sequence[str] | None = None,
        descending: bool = False,
        limit: int | None = None,
        span_filter: SpanFilter | None = None,
        **filters: Any,
    ) -> Iterator[list[TraceContext]]:
        """Stream matching traces as lists of :class:`TraceContext`, ``batch_size`` at a time.

        Without ``order_by`` traces come in storage order (run, trace id) and their spans
        arrive through ONE streaming query merged with the trace rows, the fastest path.
        With ``order_by`` the spans of each batch are loaded with one query per batch.
        Either way memory holds the (small) trace rows plus about one batch of spans.
        Arguments are checked when this is called, before the first batch is asked for.
        """
        size = args.integer("batch_size", batch_size, low=1)
        args.boolean("with_spans", with_spans)
        if span_filter is not None and not isinstance(span_filter, SpanFilter):
            raise QueryError(f"span_filter must be a SpanFilter, got {type(span_filter).__name__}")
        checked = _build_filter(None, run_id, filters)
        query = (run_id, filters, checked)
        if order_by is None and with_spans:
            args.boolean("descending", descending)
            capped = None if limit is None else args.count("limit", limit)
            return self._merged_batches(query, capped, span_filter, size)
        order = order_by or "trace_id"
        _trace_query(checked, order, descending, limit, 0)  # check before the first batch
        return self._ordered_batches(
            query, (order, descending, limit), with_spans, span_filter, size
        )

    def _ordered_batches(
        self,
        query: tuple[Any, dict[str, Any], TraceFilter],
        ordering: tuple[str | Sequence[str], bool, int | None],
        with_spans: bool,
        span_filter: SpanFilter | None,
        batch_size: int,
    ) -> Iterator[list[TraceContext]]:
        with self._open() as store:
            flt = _with_results(store, query[2], query[0], query[1])
            sql, params = _trace_query(flt, *ordering, 0)
            require_runs(store, flt.run_id)
            traces = [trace_from_row(row) for row in store.rows(sql, params)]
            for start in range(0, len(traces), batch_size):
                batch = traces[start : start + batch_size]
                yield _load_contexts(store, batch, span_filter) if with_spans else _bare(batch)

    def _merged_batches(
        self,
        query: tuple[Any, dict[str, Any], TraceFilter],
        limit: int | None,
        span_filter: SpanFilter | None,
        batch_size: int,
    ) -> Iterator[list[TraceContext]]:
        """Merge two streams sorted by (run_id, trace_id): trace rows and their spans.

        Each stream has its own connection, so memory holds one batch whatever the run size,
        and the caller may use this service while iterating.
        """
        with self._open() as store:
            flt = _with_results(store, query[2], query[0], query[1])
            yield from self._merge_streams(store, flt, limit, span_filter, batch_size)

    def _merge_streams(
        self,
        store: Store,
        flt: TraceFilter,
        limit: int | None,
        span_filter: SpanFilter | None,
        batch_size: int,
    ) -> Iterator[list[TraceContext]]:
        where, params = flt.where()
        limit_sql = ""
        if limit is not None:
            params["q_limit"] = limit
            limit_sql = " LIMIT {q_limit:UInt64}"
        order = f"ORDER BY run_id, trace_id{limit_sql}"
        traces_sql = f"SELECT {TRACE_SELECT} FROM {{db}}.traces WHERE {where} {order}"
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
            f"SETTINGS max_block_size = {int(trace_queries.SPAN_STREAM_BLOCK_ROWS)}"
        )
        require_runs(store, flt.run_id)
        trace_conn = store.sibling()
        span_conn = store.sibling()
        try:
            with (
                trace_conn.stream(traces_sql, params) as trace_blocks,
                span_conn.stream_columns(spans_sql, {**params, **span_params}) as span_blocks,
            ):
                spans = _trace_span_slices(span_blocks)
                pending = next(spans, None)
                batch: list[TraceContext] = []
                for block in trace_blocks:
                    for trace_row in block:
                        trace = trace_from_row(trace_row)
                        key = (trace.run_id, trace.trace_id)
                        while pending is not None and pending[0] < key:
                            pending = next(spans, None)  # a trace added between the two reads
                        if pending is not None and pending[0] == key:
                            batch.append(TraceContext(trace, pending[1]))
                            pending = next(spans, None)
                        else:
                            batch.append(TraceContext(trace, []))
                        if len(batch) >= batch_size:
                            yield batch
                            batch = []
                if batch:
                    yield batch
        finally:
            trace_conn.close()
            span_conn.close()

    def load_contexts(
        self, traces: Sequence[TraceRecord], span_filter: SpanFilter | None = None
    ) -> list[TraceContext]:
        """Attach spans to ``traces`` with one query; returns contexts in the same order."""
        if not traces:
            return []
        with self._open() as store:
            return _load_contexts(store, traces, span_filter)

    # ---- spans ---------------------------------------------------------------------------

    def get_spans(
        self,
        trace_ids: str | Sequence[str],
        *,
        kind: str | Sequence[str] | None = None,
        role: str | Sequence[str] | None = None,
        tool_name: str | Sequence[str] | None = None,
        name: str | Sequence[str] | None = None,
        is_error: bool | None = None,
    ) -> dict[str, list[SpanRecord]]:
        """Spans of one or many traces, filtered, as ``{trace_id: [span, ...]}`` in seq order.

        One query for all the given traces.
        """
        ids = args.strings("trace_ids", trace_ids)
        span_filter = SpanFilter(
            kind=kind, role=role, tool_name=tool_name, name=name, is_error=is_error
        )
        with self._open() as store:
            grouped = _span_rows(store, ids, None, span_filter)
        return {tid: [span_from_row(r) for r in rows] for tid, rows in grouped.items()}

    def _trace_filter(
        self, run_id: str | Sequence[str] | None, filters: dict[str, Any]
    ) -> TraceFilter:
        """The checked trace filter with its ``results=`` condition compiled against the held
        store (for callers that keep using :attr:`store`, such as the export)."""
        return _build_filter(self.store, run_id, filters)

    # ---- stored results (manta_lib.results) ----------------------------------------------

    def results(
        self,
        judge: str,
        run_id: str | Sequence[str] | None = None,
        *,
        level: EntityLevel | str = EntityLevel.TRACE,
        version: str | Sequence[str] | None = None,
        where: str | None = None,
        columns: Sequence[str] | None = None,
        limit: int | None = None,
        project_id: str | None = None,
    ) -> pd.DataFrame:
        """Stored results of ``judge`` as a pandas DataFrame, one row per entity.

        One typed column per output field (integers stay integers with pandas' nullable
        ``Int64``, booleans ``boolean``, lists and dicts as Python values), the entity keys
        (``run_id``, ``trace_id`` / ``datapoint_id`` / ``step_number`` as the level has them),
        ``status`` (``ok``/``error``), ``error``, ``judge_version`` and ``computed_at``.

        Args:
            judge: the judge id (the pipeline name's slug, e.g. ``tool_errors``).
            run_id: one run, a list of runs, or None for every run with results.
            level: ``trace``, ``datapoint``, ``step`` or ``run``.
            version: None for each run's latest version, a version (or list), or ``"all"``.
            where: a condition on the columns, e.g. ``"tool_errors > 0 and status == 'ok'"``.
            columns: only these output columns.
            limit: at most this many rows.

        Example::

            df = svc.results("tool_errors", "run_grpo_math_v1", where="tool_errors > 0")
            df.groupby("step_number").tool_errors.mean()
        """
        with self._open() as store:
            return results_frame(
                store,
                judge,
                run_id,
                level=level,
                version=version,
                where=where,
                columns=columns,
                limit=limit,
                project_id=project_id,
            )

    def results_arrow(
        self,
        judge: str,
        run_id: str | Sequence[str] | None = None,
        *,
        level: EntityLevel | str = EntityLevel.TRACE,
        version: str | Sequence[str] | None = None,
        where: str | None = None,
        columns: Sequence[str] | None = None,
        limit: int | None = None,
        project_id: str | None = None,
    ) -> pa.Table:
        """:meth:`results` as a ``pyarrow.Table`` (``polars.from_arrow(table)`` for polars)."""
        with self._open() as store:
            return results_arrow(
                store,
                judge,
                run_id,
                level=level,
                version=version,
                where=where,
                columns=columns,
                limit=limit,
                project_id=project_id,
            )

    def judges(
        self, *, run_id: str | Sequence[str] | None = None, project_id: str | None = None
    ) -> list[JudgeInfo]:
        """Judges with stored results (and registered ones): versions, levels, columns, when
        computed and entity counts per version, newest version first."""
        with self._open() as store:
            return list_judges(store, run_id=run_id, project_id=project_id)

    def compare_runs(
        self,
        judge: str,
        run_a: str,
        run_b: str,
        *,
        level: EntityLevel | str = "datapoint",
        columns: Sequence[str] | None = None,
        version: str | None = None,
        resamples: int = 1000,
        seed: int = 0,
    ) -> RunComparison:
        """Two runs under one judge: common entities with deltas, and per column the shift of
        its distribution (numeric: mean/p50/p95 deltas with a bootstrap CI of the mean delta;
        categorical: value shares and total variation). ``run_b`` minus ``run_a``."""
        with self._open() as store:
            return compare.compare_runs(
                store,
                judge,
                run_a,
                run_b,
                level=str(level),
                columns=columns,
                version=version,
                resamples=resamples,
                seed=seed,
            )

    def compare_versions(
        self,
        judge: str,
        run_id: str,
        version_a: str,
        version_b: str,
        *,
        level: EntityLevel | str = "trace",
        columns: Sequence[str] | None = None,
    ) -> Agreement:
        """Agreement of two versions of ``judge`` on one run: accuracy and Cohen's kappa
        (categorical, boolean), correlation and mean absolute difference (numeric), and the
        disagreeing entity ids."""
        with self._open() as store:
            return compare.compare_versions(
                store, judge, run_id, version_a, version_b, level=str(level), columns=columns
            )

    def compare_judges(
        self,
        judge_a: str,
        judge_b: str,
        run_id: str,
        *,
        level: EntityLevel | str = "trace",
        columns: Sequence[tuple[str, str]] | None = None,
        resamples: int = 1000,
        seed: int = 0,
    ) -> Agreement:
        """Agreement of two judges on one run (same figures as :meth:`compare_versions`),
        with ``.calibration``: ``judge_a`` measured against ``judge_b`` as the reference
        (e.g. an LLM judge against human labels) for the categorical and boolean columns:
        confusion matrix, accuracy, Cohen's kappa, per-category precision and recall (TPR/TNR
        for booleans), each with a bootstrap interval, overall, per step and per phase, the
        disagreeing entities, and, when ``judge_b`` is a label task, the agreement of two
        annotators on the items both labelled.

        Example::

            report = svc.compare_judges("failure_modes", "failure_modes_human", "run_a")
            for column in report.calibration.columns:
                print(column.column, column.kappa.value, column.kappa.low, column.kappa.high)
        """
        from manta_lib.annotations.queue import Annotations
        from manta_lib.results.calibration import calibrate

        with self._open() as store:
            # each judge's results are read once, for the agreement and the calibration
            level_name, frame_a, frame_b = compare.judge_frames(
                store, judge_a, judge_b, run_id, level=str(level)
            )
            labels = Annotations(store).annotator_labels(judge_b, run_id)
        result = compare.agreement(
            frame_a, frame_b, level=level_name, label_a=judge_a, label_b=judge_b, columns=columns
        )
        result.calibration = calibrate(
            frame_a,
            frame_b,
            judge=judge_a,
            reference=judge_b,
            run_id=run_id,
            level=level_name,
            columns=columns,
            annotator_labels=[(x.entity_id, x.annotator, x.values) for x in labels],
            resamples=resamples,
            seed=seed,
        )
        return result

    def compare_with_grader(
        self, judge: str, run_id: str, column: str, *, version: str | None = None
    ) -> Agreement:
        """A trace-level column against the traces' own grader (boolean column vs ``passed``,
        numeric vs ``score``): the calibration to check before trusting an LLM judge."""
        with self._open() as store:
            return compare.compare_with_grader(store, judge, run_id, column, version=version)

    def series(
        self,
        judge: str,
        column: str,
        run_id: str | Sequence[str],
        *,
        level: EntityLevel | str = EntityLevel.TRACE,
        version: str | Sequence[str] | None = None,
    ) -> pd.DataFrame:
        """A numeric (or boolean) result column per step: ``run_id, phase, step_number, mean,
        p50, p95, count`` for one or several runs, computed in ClickHouse, ready to plot; train
        and eval are separate rows (a step value never mixes phases).

        Example::

            curve = svc.series("tool_errors", "tool_errors", ["run_a", "run_b"])
        """
        with self._open() as store:
            return series(store, judge, column, run_id, level=level, version=version)

    def plot_series(
        self,
        judge: str,
        column: str,
        run_id: str | Sequence[str],
        path: str | Path,
        *,
        level: EntityLevel | str = EntityLevel.TRACE,
        statistic: str = "mean",
        version: str | Sequence[str] | None = None,
    ) -> Path:
        """Write ``statistic`` (mean, p50, p95, count) of ``column`` per step, one curve per
        run and phase, to a PNG or SVG file (matplotlib); returns the path."""
        frame = self.series(judge, column, run_id, level=level, version=version)
        return plot_series(
            frame,
            Path(path),
            title=f"{judge} · {column}",
            ylabel=f"{column} ({statistic})",
            statistic=statistic,
        )


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
    known = _all_run_ids(store)
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


def _all_run_ids(store: Store) -> list[str]:
    return [r[0] for r in store.rows("SELECT DISTINCT run_id FROM {db}.traces ORDER BY 1")]


def _load_contexts(
    store: Store, traces: Sequence[TraceRecord], span_filter: SpanFilter | None
) -> list[TraceContext]:
    grouped = _span_rows(
        store, [t.trace_id for t in traces], {t.run_id for t in traces}, span_filter
    )
    return [TraceContext(trace, grouped.get(trace.trace_id, [])) for trace in traces]


def _span_rows(
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


def _trace_query(
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


def _with_results(
    store: Store, checked: TraceFilter, run_id: Any, filters: dict[str, Any]
) -> TraceFilter:
    """``checked`` with its ``results=`` condition compiled against ``store``, if it has one."""
    if filters.get("results") is None or isinstance(filters["results"], ResultsFilter):
        return checked
    return _build_filter(store, run_id, filters)


def _build_filter(
    store: Store | None, run_id: str | Sequence[str] | None, filters: dict[str, Any]
) -> TraceFilter:
    """The checked trace filter; a ``results=`` condition is compiled against ``store`` (with
    ``store=None`` it is left out: the arguments are only being checked)."""
    known = sorted(TraceFilter.__dataclass_fields__)
    unknown = sorted(set(filters) - set(known))
    if unknown:
        raise QueryError(
            f"unknown trace filter(s) {', '.join(unknown)} (expected: {', '.join(known)})"
        )
    condition = filters.get("results")
    if condition is not None and not isinstance(condition, ResultsFilter):
        if store is None:
            filters = {k: v for k, v in filters.items() if k != "results"}
        else:
            runs = () if run_id is None else ((run_id,) if isinstance(run_id, str) else run_id)
            compiled = compile_trace_condition(
                store, condition, run_ids=tuple(runs), project_id=filters.get("project_id")
            )
            filters = {**filters, "results": compiled}
    return TraceFilter(run_id=run_id, **filters)


def _bare(traces: list[TraceRecord]) -> list[TraceContext]:
    return [TraceContext(trace, []) for trace in traces]


def _nan_to_none(value: float | None) -> float | None:
    return None if value is None or value != value else float(value)
