"""The one run path of every mode: plan, register, map the pending traces, reduce, record.

::

    run_pipeline(pipeline, run_id, mapper=...)          pipeline.run() in any mode
      record_computation()                              one runs-log row, either way
      plan_scope()      the traces, (step, datapoint, trace) order
      register_judge()  Kestrel or the local registry
      map_scope()       stored status -> pending traces -> mapper.map()
      reduce_scope()    per level, bottom-up, written as computed

The mapper is the only thing a mode chooses (:mod:`manta_lib.pipeline.mapping`). Dagster
calls the same :func:`map_scope` and :func:`reduce_scope` for the partitions of a step.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from manta_lib.entities import MetadataOutput
from manta_lib.errors import PersistenceError
from manta_lib.kestrel import JudgeSpec, columns_from_schema
from manta_lib.kestrel import register_judge as register_with_kestrel
from manta_lib.llm.scope import LLMRunScope
from manta_lib.models import EntityLevel
from manta_lib.pipeline.definition import PipelineDefinition
from manta_lib.pipeline.mapping import MapJob, Mapper, MapTally, ThreadMapper, ordered
from manta_lib.pipeline.options import RunOptions
from manta_lib.pipeline.planner import Scope, plan_scope
from manta_lib.pipeline.pool import IsolatedPool
from manta_lib.pipeline.progress import BucketClock
from manta_lib.pipeline.record import record_computation, summarize_result
from manta_lib.pipeline.reducer import reduce_level
from manta_lib.pipeline.resume import ID_FILTER_LIMIT, completed_traces, load_level
from manta_lib.service import MantaService
from manta_lib.settings import MantaSettings
from manta_lib.store.client import Store
from manta_lib.store.metadata import MetadataWriter

log = logging.getLogger(__name__)


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
) -> dict[EntityLevel, list[MetadataOutput]]:
    """Plan, register, map, reduce and write one run; one runs-log row either way."""
    pipeline.require_levels()
    with (
        record_computation(pipeline, run_id, mode, settings) as record,
        StoreSession(settings) as session,
    ):
        try:
            clock = record.clock
            if options.persist and options.limits.active:
                log.warning(
                    "subset mode (%s): results are not persisted", options.limits.describe()
                )
            with clock("load"):
                MantaService(session.get()).require_run(run_id)
                scope = plan_scope(session.get(), run_id, limits=options.limits)
            if options.persists:
                with clock("register"):
                    where = register_judge(pipeline, session.get(), settings)
                log.debug("judge %s registered in %s", pipeline.judge, where)
            traces = map_scope(
                pipeline,
                scope,
                store=session,
                options=options,
                mapper=mapper,
                clock=clock,
                summary=record.summary,
            )
            record.subset = options.limits.active
            record.traces_total = len(traces.outputs)
            record.traces_failed = sum(1 for o in traces.outputs if o.error is not None)
            result = {EntityLevel.TRACE: traces.outputs}
            children = traces.outputs
            for spec in pipeline.levels[1:]:
                children = reduce_scope(
                    pipeline,
                    session.get(),
                    spec.level,
                    scope,
                    children,
                    options=options,
                    clock=clock,
                )
                result[spec.level] = children
        finally:
            record.summary.update(mapper.summary())
            mapper.close()
        counts = summarize_result(result)
        record.summary.update(counts)
        log.info(
            "%s on %s: %s%s",
            pipeline.judge,
            run_id,
            ", ".join(f"{k} {v}" for k, v in counts.items()),
            "" if options.persists else " (not persisted)",
        )
        return result


def map_scope(
    pipeline: PipelineDefinition,
    scope: Scope,
    *,
    store: Store | StoreSession,
    options: RunOptions,
    mapper: Mapper | None = None,
    clock: BucketClock | None = None,
    summary: dict[str, Any] | None = None,
) -> ScopeOutputs:
    """Map the traces of ``scope`` not already stored for the judge version; return all the
    scope's trace outputs (stored ones read back) in scope order.

    When the map function ``uses_llm``, the judges are checked before the first trace, the
    ``max_cost_usd`` cap applies, and their usage (``llm_*`` fields) goes into ``summary``.

    Raises:
        ComputationAborted: more traces failed than ``options.max_failures`` allows, or a
            batch of a remote mapper kept failing; finished work is kept either way.
        LLMBudgetExceeded: the next LLM call could have crossed ``options.max_cost_usd``;
            finished work is kept.
    """
    session = store if isinstance(store, StoreSession) else StoreSession(store.settings, store)
    mapper = mapper or ThreadMapper()
    clock = clock or BucketClock()
    version = pipeline.judge_version
    wanted = scope.trace_ids
    with clock("load"):
        done = (
            completed_traces(
                session.get(),
                pipeline,
                version,
                scope.run_id,
                set(wanted),
                retry_errors=options.retry_errors,
            )
            if options.persists
            else set()
        )
    pending = [tid for tid in wanted if tid not in done]
    if done:
        log.info(
            "resuming %s on %s: %d of %d traces already computed for version %s",
            pipeline.judge,
            scope.describe(),
            len(done),
            len(wanted),
            version,
        )
    tally = MapTally(
        len(pending),
        scope_size=len(wanted),
        max_failures=options.max_failures,
        description=f"{pipeline.judge} · {scope.run_id}",
        progress=options.progress,
        persisted=options.persists,
    )
    computed: list[MetadataOutput] | None = []
    try:
        if pending:
            if not mapper.shares_store:
                session.release()
            job = MapJob(
                pipeline=pipeline,
                judge_version=version,
                scope=scope,
                trace_ids=pending,
                options=options,
                tally=tally,
                settings=session.settings,
                store=session.get() if mapper.shares_store else None,
                clock=clock,
            )
            with llm_scope(pipeline, options, session.settings, summary) as llm:
                if llm is not None:
                    tally.note = llm.progress_text
                computed = mapper.map(job)
            if llm is not None and llm.stopped:
                raise llm.stop_error(tally.mapped, len(pending))
    except KeyboardInterrupt:
        log.warning(
            "interrupted: %d of %d traces of %s were mapped%s. Run the same pipeline on %s "
            "again to map only the traces without a stored result",
            tally.mapped,
            len(pending),
            scope.describe(),
            " and written" if options.persists else " (not persisted)",
            scope.run_id,
        )
        raise
    finally:
        tally.close()
    tally.raise_if_over_budget()
    with clock("load"):
        if computed is None:  # persisted by remote workers: read everything back
            outputs = _load_traces(session.get(), pipeline, scope, wanted)
            missing = [tid for tid in wanted if tid not in {o.entity_id for o in outputs}]
            if missing:
                raise PersistenceError(
                    f"{len(missing)} traces of {scope.run_id} were mapped but have no stored "
                    f"result for version {version} (first: {', '.join(missing[:3])}); "
                    f"entity_metadata lost rows, run again to recompute them"
                )
            return ScopeOutputs(outputs, tally.mapped, len(done))
        previous = _load_traces(session.get(), pipeline, scope, sorted(done)) if done else []
    return ScopeOutputs(ordered(wanted, previous, computed), tally.mapped, len(done))


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
    with LLMRunScope(options.max_cost_usd, settings=settings) as llm:
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
    if options.persists:
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
    return register_with_kestrel(
        spec, columns, project_id=pipeline.project_id, settings=settings, store=store
    )
