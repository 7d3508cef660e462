"""The one run path of every mode: plan, register, map the pending traces, reduce, record.

::

    run_pipeline(pipeline, run_id, mapper=...)          pipeline.run() in any mode
      record_computation()                              one runs-log row, either way
      plan_scope()      the traces, (step, datapoint, trace) order
      _run_written()    a persisted run:
        register_judge()    Kestrel or the local registry
        map_scope()         stored status -> pending traces -> mapper.map(), Outputs.WRITE
        reduce_streamed()   per level, bottom-up, the level below read back from the store
      _run_in_memory()  a run that does not persist:
        map_scope()         Outputs.RETURN
        reduce_scope()      per level, bottom-up, from the outputs in memory
      -> RunResult

The mapper is the only thing a mode chooses (:mod:`manta_lib.pipeline.mapping`). Dagster
calls the same :func:`map_scope` and :func:`reduce_scope` for the partitions of a step.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from manta_lib.entities import MetadataOutput
from manta_lib.errors import PersistenceError, PipelineDefinitionError
from manta_lib.gc_pacing import relaxed_gc
from manta_lib.kestrel import JudgeSpec, columns_from_schema
from manta_lib.kestrel import register_judge as register_with_kestrel
from manta_lib.llm.registry import judges_used_by
from manta_lib.llm.scope import LLMRunScope
from manta_lib.models import EntityLevel
from manta_lib.pipeline.definition import PipelineDefinition
from manta_lib.pipeline.job import MapJob, MapTally
from manta_lib.pipeline.mapping import Mapper, ThreadMapper, ordered
from manta_lib.pipeline.options import Outputs, RunOptions
from manta_lib.pipeline.planner import (
    ListedTraces,
    Scope,
    StreamedTraces,
    check_one_phase,
    group_columns,
    group_entity,
    plan_scope,
)
from manta_lib.pipeline.pool import IsolatedPool
from manta_lib.pipeline.progress import BucketClock
from manta_lib.pipeline.record import ComputationRecord, record_computation, summarize_counts
from manta_lib.pipeline.reducer import reduce_groups, reduce_level
from manta_lib.pipeline.result import RunResult, StoredRun, stored_counts
from manta_lib.pipeline.resume import ID_FILTER_LIMIT, completed_traces, load_level
from manta_lib.results import compile_trace_condition
from manta_lib.service import MantaService
from manta_lib.settings import MantaSettings
from manta_lib.store import judge_versions
from manta_lib.store.client import Store
from manta_lib.store.entity_groups import StoredChild, iter_output_groups
from manta_lib.store.metadata import MetadataWriter, count_entities
from manta_lib.store.result_key import ResultKey
from manta_lib.store.trace_queries import Unmapped, count_traces

log = logging.getLogger(__name__)

#: Most traces a run that does not persist (``persist_results=False``) keeps in memory: its
#: outputs are held until it returns, about 2 KB per trace.
IN_MEMORY_TRACE_LIMIT = 500_000

#: A streamed reduce calls the reduce function once this many children are read (whole
#: groups only), so memory holds about this many children at a time.
REDUCE_CHUNK = 20_000


class StoreSession:
    """An open store that can be let go while remote workers use it, and opened again.

    With ``store`` given (a caller's open store) it is used as is and never closed here.
    """

    def __init__(self, settings: MantaSettings, store: Store | None = None) -> None:
        self.settings = settings
        self._store = store
        self._owned = store is None

    def get(self) -> Store:
        if self._store is None:
            self._store = Store.open(self.settings)
        return self._store

    def release(self) -> None:
        if self._owned and self._store is not None:
            self._store.close()
            self._store = None

    def __enter__(self) -> StoreSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@dataclass(frozen=True)
class ScopeOutputs:
    """The trace outputs of a scope, in scope order, and how many were mapped just now."""

    outputs: list[MetadataOutput]
    computed: int
    reused: int


def run_pipeline(
    pipeline: PipelineDefinition,
    run_id: str,
    *,
    mapper: Mapper,
    options: RunOptions,
    settings: MantaSettings,
    mode: str,
) -> RunResult:
    """Plan, register, map, reduce and write one run; one runs-log row either way.

    A persisted run keeps no outputs in memory: each trace is written and dropped
    (:attr:`Outputs.WRITE`), each reduce level reads the level below back from the store group
    by group, and the :class:`RunResult` reads the levels from the store on demand. A run that
    does not persist keeps its outputs (:attr:`Outputs.RETURN`), at most
    :data:`IN_MEMORY_TRACE_LIMIT` traces.
    """
    pipeline.require_levels()
    with (
        relaxed_gc(),
        record_computation(pipeline, run_id, mode, settings) as record,
        StoreSession(settings) as session,
    ):
        try:
            clock = record.clock
            record.subset = options.subset
            if options.results is not None:
                record.summary["results_filter"] = options.results
            if options.persist_results and options.subset:
                log.warning(
                    "subset mode (%s): results are not persisted", options.describe_subset()
                )
            with clock("load"):
                scope = _plan(session.get(), run_id, options)
            if options.writes:
                result = _run_written(pipeline, scope, session, options, mapper, record)
            else:
                result = _run_in_memory(pipeline, scope, session, options, mapper, record)
        finally:
            record.summary.update(mapper.summary())
            mapper.close()
        per_level = result.failed_counts()
        record.traces_total, record.traces_failed = per_level.get(EntityLevel.TRACE, (0, 0))
        counts = summarize_counts(per_level)
        record.summary.update(counts)
        log.info(
            "%s on %s: %s%s",
            pipeline.judge,
            run_id,
            ", ".join(f"{k} {v}" for k, v in counts.items()),
            "" if options.writes else " (not persisted)",
        )
        return result


def _plan(store: Store, run_id: str, options: RunOptions) -> Scope:
    """The run's scope: its traces, limited and filtered as ``options`` say."""
    MantaService(store).require_run(run_id)
    results = None
    if options.results is not None:
        results = compile_trace_condition(store, options.results, run_ids=(run_id,))
    scope = plan_scope(store, run_id, limits=options.limits, results=results)
    if results is not None and not scope.refs:
        log.warning("results=%r selects no trace of %s", options.results, run_id)
    return scope


def _run_written(
    pipeline: PipelineDefinition,
    scope: Scope,
    session: StoreSession,
    options: RunOptions,
    mapper: Mapper,
    record: ComputationRecord,
) -> RunResult:
    """A persisted run: the judge registered, the map writing each trace, then each level
    reduced from the stored level below; the result reads the store."""
    clock = record.clock
    with clock("register"):
        where = register_judge(pipeline, session.get(), session.settings)
    log.debug("judge %s registered in %s", pipeline.judge, where)
    map_scope(
        pipeline,
        scope,
        store=session,
        options=options,
        outputs=Outputs.WRITE,
        mapper=mapper,
        clock=clock,
        summary=record.summary,
    )
    for spec in pipeline.levels[1:]:
        reduce_streamed(pipeline, session.get(), spec.level, scope, options=options, clock=clock)
    with clock("load"):
        stored = StoredRun(
            settings=session.settings,
            key=pipeline.result_key(scope.run_id),
            schemas={s.level: s.schema for s in pipeline.levels},
        )
        levels = [s.level for s in pipeline.levels]
        return RunResult.from_store(stored, stored_counts(session.get(), stored, levels))


def _run_in_memory(
    pipeline: PipelineDefinition,
    scope: Scope,
    session: StoreSession,
    options: RunOptions,
    mapper: Mapper,
    record: ComputationRecord,
) -> RunResult:
    """A run that does not persist: every level's outputs held and returned."""
    if len(scope.refs) > IN_MEMORY_TRACE_LIMIT:
        raise PipelineDefinitionError(
            f"a run that keeps its results in memory (persist_results=False) takes at "
            f"most {IN_MEMORY_TRACE_LIMIT:,} traces; {scope.describe()} has "
            f"{len(scope.refs):,} with {options.describe_subset()}. Set limit_traces "
            f"(or limit_datapoints / limit_steps) lower, or persist the results"
        )
    clock = record.clock
    traces = map_scope(
        pipeline,
        scope,
        store=session,
        options=options,
        outputs=Outputs.RETURN,
        mapper=mapper,
        clock=clock,
        summary=record.summary,
    )
    result: dict[EntityLevel, list[MetadataOutput]] = {EntityLevel.TRACE: traces.outputs}
    children: list[MetadataOutput] = traces.outputs
    for spec in pipeline.levels[1:]:
        children = reduce_scope(
            pipeline, session.get(), spec.level, scope, children, options=options, clock=clock
        )
        result[spec.level] = children
    return RunResult.in_memory(scope.run_id, pipeline.judge_version, result)


def map_scope(
    pipeline: PipelineDefinition,
    scope: Scope,
    *,
    store: Store | StoreSession,
    options: RunOptions,
    outputs: Outputs,
    mapper: Mapper | None = None,
    clock: BucketClock | None = None,
    summary: dict[str, Any] | None = None,
) -> ScopeOutputs:
    """Map the traces of ``scope`` not already stored for the judge version, doing with each
    output what ``outputs`` says.

    With :attr:`Outputs.WRITE` no output is kept or read back (``outputs`` of the result is
    empty): each trace is written and dropped, an in-process mapper streams the unmapped
    traces from ClickHouse (no list of the scope's ids is held), and the stored statuses are
    counted at the end to check that every trace of the scope has one. Otherwise the result
    holds all the scope's trace outputs in scope order, those stored before read back.

    When the map function ``uses_llm``, the judges are checked before the first trace, the
    ``max_cost_usd`` cap applies, and their usage (``llm_*`` fields) goes into ``summary``.

    Raises:
        ComputationAborted: more traces failed than ``options.max_failures`` allows, or a
            batch of a remote mapper kept failing; finished work is kept either way.
        LLMBudgetExceeded: the next LLM call could have crossed ``options.max_cost_usd``;
            finished work is kept.
    """
    if outputs.writes != options.writes:
        raise ValueError(f"outputs={outputs} disagrees with the options (writes={options.writes})")
    session = store if isinstance(store, StoreSession) else StoreSession(store.settings, store)
    mapper = mapper or ThreadMapper()
    clock = clock or BucketClock()
    key = pipeline.result_key(scope.run_id)
    traces: ListedTraces | StreamedTraces
    wanted: list[str] | None = None  # the scope's trace ids, when listed
    done: set[str] = set()
    with clock("load"):
        if outputs is Outputs.WRITE and mapper.in_process:
            scope_size, pending_count = _count_pending(session.get(), key, scope, options)
            traces = StreamedTraces(pending_count)
            done_count = scope_size - pending_count
        else:
            wanted = scope.trace_ids
            if outputs.writes:
                done = completed_traces(
                    session.get(), key, set(wanted), retry_errors=options.retry_errors
                )
            traces = ListedTraces([tid for tid in wanted if tid not in done])
            scope_size, done_count = len(wanted), len(done)
    if done_count:
        log.info(
            "resuming %s on %s: %d of %d traces already computed for version %s",
            pipeline.judge,
            scope.describe(),
            done_count,
            scope_size,
            key.judge_version,
        )
    tally = MapTally(
        len(traces),
        scope_size=scope_size,
        max_failures=options.max_failures,
        description=f"{pipeline.judge} · {scope.run_id}",
        progress=options.progress,
        persisted=outputs.writes,
    )
    computed: list[MetadataOutput] = []
    try:
        if len(traces):
            if not mapper.in_process:
                session.release()
            job = MapJob(
                pipeline=pipeline,
                judge_version=key.versioned(),
                scope=scope,
                traces=traces,
                outputs=outputs,
                options=options,
                tally=tally,
                settings=session.settings,
                store=session.get() if mapper.in_process else None,
                clock=clock,
            )
            with relaxed_gc(), llm_scope(pipeline, options, session.settings, summary) as llm:
                if llm is not None:
                    tally.note = llm.progress_text
                computed = mapper.map(job)
            if llm is not None and llm.stopped:
                raise llm.stop_error(tally.mapped, len(traces))
    except KeyboardInterrupt:
        log.warning(
            "interrupted: %d of %d traces of %s were mapped%s. Run the same pipeline on %s "
            "again to map only the traces without a stored result",
            tally.mapped,
            len(traces),
            scope.describe(),
            " and written" if outputs.writes else " (not persisted)",
            scope.run_id,
        )
        raise
    finally:
        tally.close()
    tally.raise_if_over_budget()
    with clock("load"):
        if outputs is Outputs.WRITE:
            _require_stored(session.get(), key, scope, scope_size, wanted)
            return ScopeOutputs([], tally.mapped, done_count)
        assert wanted is not None  # listed whenever the outputs are returned
        returned = {o.entity_id for o in computed}
        # Written but not returned: stored before this run, or by a remote worker that
        # could not report back.
        unreturned = [tid for tid in wanted if tid not in returned] if outputs.writes else []
        previous = _load_traces(session.get(), pipeline, scope, unreturned) if unreturned else []
        ordered_outputs = ordered(wanted, previous, computed)
        if outputs.writes and len(ordered_outputs) < len(wanted):
            have = {o.entity_id for o in ordered_outputs}
            raise _lost_rows(scope, key, [tid for tid in wanted if tid not in have])
    return ScopeOutputs(ordered_outputs, tally.mapped, done_count)


def _count_pending(
    store: Store, key: ResultKey, scope: Scope, options: RunOptions
) -> tuple[int, int]:
    """``(traces in scope, traces still to map)`` for the key's version, counted in
    ClickHouse."""
    unmapped = Unmapped(key, options.retry_errors)
    return (
        count_traces(store, scope.trace_filter()),
        count_traces(store, scope.trace_filter(unmapped=unmapped)),
    )


@contextmanager
def llm_scope(
    pipeline: PipelineDefinition,
    options: RunOptions,
    settings: MantaSettings,
    summary: dict[str, Any] | None,
) -> Iterator[LLMRunScope | None]:
    """An :class:`LLMRunScope` around the map of a pipeline whose map ``uses_llm``."""
    if not pipeline.level(EntityLevel.TRACE).uses_llm:
        yield None
        return
    # The judges this pipeline's functions reach; if none is found (a judge built inside the
    # function, say), every live judge is checked, as before.
    judges = judges_used_by(spec.fn for spec in pipeline.levels) or None
    with LLMRunScope(options.max_cost_usd, settings=settings, judges=judges) as llm:
        try:
            yield llm
        finally:
            if summary is not None:
                add_llm_usage(summary, llm.usage().as_fields())


def add_llm_usage(summary: dict[str, Any], fields: dict[str, Any]) -> None:
    """Add one map's ``llm_*`` fields to ``summary`` (several scopes make one step); an
    unknown cost stays unknown (None)."""
    for name, value in fields.items():
        if name not in summary:
            summary[name] = value
        elif value is None or summary[name] is None:
            summary[name] = None
        else:
            summary[name] += value


def _require_stored(
    store: Store,
    key: ResultKey,
    scope: Scope,
    expected: int,
    wanted: Sequence[str] | None,
) -> None:
    """Raise unless every trace of the scope (``expected`` of them; ``wanted`` when the ids
    are at hand) has a stored status for the key's version (counted in ClickHouse; the ids
    are compared only when the count is short)."""
    stored, _ = count_entities(store, key)
    if stored >= expected:
        return
    if wanted is None:
        unmapped = Unmapped(key, retry_errors=False)
        missing_count = count_traces(store, scope.trace_filter(unmapped=unmapped))
        if missing_count:
            raise _lost_rows(scope, key, missing_count)
        return
    have = completed_traces(store, key, set(wanted), retry_errors=False)
    missing = [tid for tid in wanted if tid not in have]
    if missing:
        raise _lost_rows(scope, key, missing)


def _lost_rows(scope: Scope, key: ResultKey, missing: Sequence[str] | int) -> PersistenceError:
    """The error for mapped traces without a stored result: ``missing`` ids, or a count."""
    count, first = (missing, "") if isinstance(missing, int) else (len(missing), missing[:3])
    shown = f" (first: {', '.join(first)})" if first else ""
    return PersistenceError(
        f"{count} traces of {scope.describe()} were mapped but have no stored result for "
        f"version {key.judge_version}{shown}; entity_metadata lost rows, run again to "
        f"recompute them"
    )


def reduce_streamed(
    pipeline: PipelineDefinition,
    store: Store,
    level: EntityLevel,
    scope: Scope,
    *,
    options: RunOptions,
    clock: BucketClock | None = None,
) -> int:
    """Compute and write ``level``'s entities of ``scope`` from the level below as stored,
    group by group; returns how many entities were written.

    The children (the level below, this judge version) come from the store pivoted and
    sorted by the level's :func:`~manta_lib.pipeline.planner.group_columns`, so memory holds
    the groups waiting for the pool (about ``REDUCE_CHUNK`` children), whatever the run size:
    nothing here holds the scope's traces. The run level has one group: all of the level
    below. A persisted run covers the whole run (or the scope's datapoint shards), so the
    stored children are the scope's.
    """
    clock = clock or BucketClock()
    spec = pipeline.level(level)
    below = pipeline.below(level)
    run_id = scope.run_id
    pool = IsolatedPool(
        options.max_workers if spec.uses_llm else 1,
        timeout_s=options.timeout_s,
        chunked=not spec.uses_llm,
    )
    writer = MetadataWriter(
        store,
        project_id=pipeline.project_id,
        judge=pipeline.judge,
        flush_seconds=store.settings.flush_seconds,
    )
    waiting: list[tuple[str, dict[str, Any], list[str]]] = []
    children: dict[str, StoredChild] = {}
    written = 0

    def reduce_waiting() -> None:
        nonlocal written
        if not waiting:
            return
        with clock("llm" if spec.uses_llm else "reduce"):
            outputs = reduce_groups(
                spec,
                run_id,
                waiting,
                children,
                judge=pipeline.judge,
                judge_version=pipeline.judge_version,
                pool=pool,
            )
        with clock("persist"):
            writer.add(outputs)  # written by the writer's timer thread, beside the next read
        written += len(outputs)
        waiting.clear()
        children.clear()

    stored = iter_output_groups(
        store,
        pipeline.result_key(run_id, below.level),
        schema=below.schema,
        group_by=group_columns(level),
        shards=scope.shards,
        shard_count=scope.shard_count,
    )
    previous: tuple[str, str] | None = None
    loading = 0.0  # summed here: a clock context per group costs more than the small groups
    with writer.flushing_every():  # flushes what is left on exit, raises a failed insert
        while True:
            started = time.perf_counter()
            group = next(stored, None)
            loading += time.perf_counter() - started
            if group is None:
                break
            key, members = group
            steps = (m.step_number for m in members if m.step_number is not None)
            entity_id, keys = group_entity(level, run_id, key, steps)
            # Groups of one datapoint in two phases come one after the other (sorted by key).
            if previous is not None and previous[0] == entity_id:
                check_one_phase(level, run_id, entity_id, (previous[1], keys["phase"]))
            previous = (entity_id, keys["phase"])
            waiting.append((entity_id, keys, [m.entity_id for m in members]))
            children.update((m.entity_id, m) for m in members)
            if len(children) >= REDUCE_CHUNK:
                reduce_waiting()
        reduce_waiting()
    clock.add("load", loading)
    return written


def _load_traces(
    store: Store, pipeline: PipelineDefinition, scope: Scope, trace_ids: Sequence[str]
) -> list[MetadataOutput]:
    """The stored trace outputs of ``trace_ids``, in scope order."""
    ids = None if len(trace_ids) > ID_FILTER_LIMIT else list(trace_ids)
    stored = load_level(store, pipeline, EntityLevel.TRACE, scope.run_id, ids)
    return ordered(trace_ids, stored)


def reduce_scope(
    pipeline: PipelineDefinition,
    store: Store,
    level: EntityLevel,
    scope: Scope,
    children: Sequence[MetadataOutput],
    *,
    options: RunOptions,
    clock: BucketClock | None = None,
) -> list[MetadataOutput]:
    """Compute ``level``'s entities of ``scope`` from ``children`` (the outputs of the level
    below) and write them (unless the run does not persist)."""
    clock = clock or BucketClock()
    spec = pipeline.level(level)
    pool = IsolatedPool(
        options.max_workers if spec.uses_llm else 1,
        timeout_s=options.timeout_s,
        chunked=not spec.uses_llm,
    )
    with clock("llm" if spec.uses_llm else "reduce"):
        outputs = reduce_level(
            spec,
            pipeline.below(level).level,
            scope.run_id,
            scope.refs,
            children,
            judge=pipeline.judge,
            judge_version=pipeline.judge_version,
            pool=pool,
        )
    if options.writes:
        with clock("persist"):
            writer = MetadataWriter(store, project_id=pipeline.project_id, judge=pipeline.judge)
            writer.add(outputs)
            writer.flush()
    return outputs


def register_judge(pipeline: PipelineDefinition, store: Store, settings: MantaSettings) -> str:
    """Register the judge and its columns (every level) with Kestrel or the local registry."""
    spec = JudgeSpec(
        name=pipeline.judge,
        description=pipeline.description or pipeline.name,
        version=pipeline.judge_version,
        levels=[s.level.value for s in pipeline.levels],
        uses_llm=pipeline.uses_llm,
    )
    columns = [
        column
        for level in pipeline.levels
        for column in columns_from_schema(level.schema, level.level.value)
    ]
    where = register_with_kestrel(
        spec, columns, project_id=pipeline.project_id, settings=settings, store=store
    )
    _record_version(pipeline, store)
    return where


def _record_version(pipeline: PipelineDefinition, store: Store) -> None:
    """Keep the version's readable label and source beside the results (once per version,
    unless a new ``version_label`` renames it)."""
    version = pipeline.judge_version
    known = judge_versions.version_records(store, pipeline.judge, [version])
    if (pipeline.judge, version) in known and (
        not pipeline.version_label or known[(pipeline.judge, version)][0] == pipeline.version_label
    ):
        return
    previous = judge_versions.latest_other_version(
        store, pipeline.project_id, pipeline.judge, version
    )
    label = pipeline.readable_label(previous[1] if previous else None)
    judge_versions.record_version(
        store, pipeline.project_id, pipeline.judge, version, label, pipeline.version_source
    )
