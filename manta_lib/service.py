"""MantaService: the entry point for loading traces and spans from ClickHouse.

Example::

    from manta import MantaService

    with MantaService() as svc:
        print(svc.list_runs())
        for batch in svc.iter_trace_batches("run_grpo_math_v1", phase="eval"):
            for trace in batch:
                print(trace.trace_id, trace.tool_error_count)

It is a facade: the reads live in :mod:`manta_lib.store` (traces, spans, the hierarchy) and
:mod:`manta_lib.results` (stored results, comparisons, series). Spans of many traces are always
loaded with one query per batch of traces, never one per trace.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from manta_lib.context import TraceContext
from manta_lib.context.trace_rows import trace_from_row
from manta_lib.errors import QueryError
from manta_lib.models import EntityLevel, SpanRecord, TraceRecord
from manta_lib.results import (
    JudgeInfo,
    ResultsFilter,
    ResultsQuery,
    compare,
    compile_trace_condition,
    list_judges,
    results_arrow,
    results_frame,
)
from manta_lib.results.compare import Agreement, RunComparison
from manta_lib.results.series import plot_series, series
from manta_lib.settings import MantaSettings, load_settings
from manta_lib.store import Store, hierarchy, trace_queries
from manta_lib.store import query_args as args
from manta_lib.store.hierarchy import DatapointSummary, RunSummary, StepSummary
from manta_lib.store.trace_queries import SpanFilter, TraceFilter
from manta_lib.store.trace_reads import (
    all_run_ids,
    bare_contexts,
    load_contexts,
    require_runs,
    span_from_row,
    span_rows,
    stream_contexts,
    trace_query,
)

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

__all__ = [
    "DatapointSummary",
    "MantaService",
    "RunSummary",
    "StepSummary",
]


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
        with self._open() as store:
            return hierarchy.list_runs(store, project_id)

    def run_ids(self) -> list[str]:
        """The ids of every run in the store, sorted."""
        with self._open() as store:
            return all_run_ids(store)

    def require_run(self, run_id: str) -> None:
        """Raise :class:`QueryError` naming the closest existing runs if ``run_id`` is unknown."""
        run = args.string("run_id", run_id)
        with self._open() as store:
            require_runs(store, [run])

    def list_steps(self, run_id: str, *, phase: str | None = None) -> list[StepSummary]:
        """The steps of a run in order (as numbers), with counts."""
        run = args.string("run_id", run_id)
        with self._open() as store:
            require_runs(store, [run])
            return hierarchy.list_steps(store, run, phase)

    def list_datapoints(
        self, run_id: str, *, step: int | tuple[int, int] | None = None, phase: str | None = None
    ) -> list[DatapointSummary]:
        """The datapoints of a run (optionally of some steps), with their steps and counts."""
        run = args.string("run_id", run_id)
        with self._open() as store:
            require_runs(store, [run])
            return hierarchy.list_datapoints(store, run, step, phase)

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
        trace_query(checked, order_by, descending, limit, offset)  # check before opening
        with self._open() as store:
            flt = _with_results(store, checked, run_id, filters)
            sql, params = trace_query(flt, order_by, descending, limit, offset)
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
            sql, params = trace_query(TraceFilter(trace_ids=[wanted]), "trace_id", False, 1, 0)
            traces = [trace_from_row(row) for row in store.rows(sql, params)]
            if not traces:
                close = trace_queries.similar_trace_ids(store, wanted)
                hint = f"; closest stored ids: {', '.join(close)}" if close else ""
                raise QueryError(f"trace_id {wanted!r} not found{hint}")
            return load_contexts(store, traces, None)[0]

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
        trace_query(checked, order, descending, limit, 0)  # check before the first batch
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
            sql, params = trace_query(flt, *ordering, 0)
            require_runs(store, flt.run_id)
            traces = [trace_from_row(row) for row in store.rows(sql, params)]
            for start in range(0, len(traces), batch_size):
                batch = traces[start : start + batch_size]
                yield (
                    load_contexts(store, batch, span_filter) if with_spans else bare_contexts(batch)
                )

    def _merged_batches(
        self,
        query: tuple[Any, dict[str, Any], TraceFilter],
        limit: int | None,
        span_filter: SpanFilter | None,
        batch_size: int,
    ) -> Iterator[list[TraceContext]]:
        """One trace stream merged with one span stream (:func:`stream_contexts`)."""
        with self._open() as store:
            flt = _with_results(store, query[2], query[0], query[1])
            yield from stream_contexts(store, flt, limit, span_filter, batch_size)

    def load_contexts(
        self, traces: Sequence[TraceRecord], span_filter: SpanFilter | None = None
    ) -> list[TraceContext]:
        """Attach spans to ``traces`` with one query; returns contexts in the same order."""
        if not traces:
            return []
        with self._open() as store:
            return load_contexts(store, traces, span_filter)

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
            grouped = span_rows(store, ids, None, span_filter)
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
        query = ResultsQuery(judge, run_id, level, version, where, columns, limit, project_id)
        with self._open() as store:
            return results_frame(store, query)

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
        query = ResultsQuery(judge, run_id, level, version, where, columns, limit, project_id)
        with self._open() as store:
            return results_arrow(store, query)

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
