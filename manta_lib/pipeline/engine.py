"""The engine behind ``MapReduceComputation.run``: plan, map in batches, reduce, persist.

Local mode overlaps I/O and compute: a reader thread loads the next batch of traces (two
queries: trace rows, then all their spans) while the thread pool maps the current one; at most
``PREFETCH`` batches wait in memory, so memory is bounded whatever the run size. Outcomes are
written as they complete (flushed every couple of seconds and at each batch end, when the batch
is checkpointed), so an interrupted run resumes with the work it had finished.
"""

from __future__ import annotations

import logging
import queue
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from manta_lib.context import TraceContext
from manta_lib.entities import MetadataOutput
from manta_lib.errors import ComputationAborted, PipelineDefinitionError
from manta_lib.models import EntityLevel
from manta_lib.pipeline.computation import MapReduceComputation
from manta_lib.pipeline.executor import IsolatedExecutor, describe_exception
from manta_lib.pipeline.planner import (
    Limits,
    TraceBatch,
    TraceRef,
    batch_id,
    make_batches,
    plan_scope,
)
from manta_lib.pipeline.progress import BucketClock, TraceProgress
from manta_lib.pipeline.reducer import reduce_level
from manta_lib.pipeline.worker import BatchWorker
from manta_lib.service import MantaService
from manta_lib.settings import MantaSettings, load_settings
from manta_lib.store.client import Store
from manta_lib.store.metadata import (
    MetadataWriter,
    load_entities,
    load_status,
    outputs_from_stored,
    utc_now,
)

log = logging.getLogger(__name__)

PREFETCH = 2


@dataclass(frozen=True)
class RunOptions:
    """Execution knobs of :meth:`MapReduceComputation.run`."""

    limits: Limits = Limits()
    persist: bool = True
    max_workers: int = 4
    batch_size: int = 1000
    max_failures: int | float | None = None
    timeout_s: float | None = None
    retry_errors: bool = True
    progress: bool | None = None


def failure_budget(max_failures: int | float | None, scope: int) -> int | None:
    """Failures allowed before aborting: a count, or a fraction (0 < f < 1) of the scope."""
    if max_failures is None:
        return None
    if isinstance(max_failures, bool) or max_failures < 0:
        raise PipelineDefinitionError(
            f"max_failures must be a count >= 0 or a fraction between 0 and 1, got {max_failures!r}"
        )
    if isinstance(max_failures, float) and max_failures < 1:
        return int(max_failures * scope)
    return int(max_failures)


class Engine:
    """Computes the levels of one pipeline for one run against one open store."""

    def __init__(
        self,
        pipeline: MapReduceComputation,
        store: Store,
        *,
        options: RunOptions,
        persist: bool,
        clock: BucketClock | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.store = store
        self.options = options
        self.persist = persist
        self.judge_version = pipeline.judge_version
        self.clock = clock or BucketClock()
        self.writer = (
            MetadataWriter(
                store,
                project_id=pipeline.project_id,
                judge=pipeline.judge,
                flush_seconds=store.settings.flush_seconds,
            )
            if persist
            else None
        )

    # ---- map -----------------------------------------------------------------------------

    def pending_traces(self, run_id: str, refs: Sequence[TraceRef]) -> set[str]:
        """Trace ids of the scope already written for this judge version (to skip)."""
        if not self.persist:
            return set()
        status = load_status(
            self.store,
            project_id=self.pipeline.project_id,
            run_id=run_id,
            judge=self.pipeline.judge,
            level=EntityLevel.TRACE,
            judge_version=self.judge_version,
        )
        scope = {ref.trace_id for ref in refs}
        return {
            tid
            for tid, ok in status.items()
            if tid in scope and (ok or not self.options.retry_errors)
        }

    def map_traces(
        self,
        run_id: str,
        refs: Sequence[TraceRef],
        *,
        shards: Sequence[int] | None = None,
        shard_count: int = 64,
    ) -> list[MetadataOutput]:
        """Map every trace in ``refs`` not already done; return all the scope's trace outputs.

        ``shards``/``shard_count`` say which datapoint shards ``refs`` came from (the Dagster
        layout); they only let the reader stream exactly that slice of the run.
        """
        with self.clock("load"):
            done = self.pending_traces(run_id, refs)
        batches = make_batches(run_id, refs, self.options.batch_size)
        todo = [b for b in batches if any(tid not in done for tid in b.trace_ids)]
        remaining = sum(1 for ref in refs if ref.trace_id not in done)
        if done:
            log.info(
                "resuming %s on %s: %d of %d traces already computed for version %s",
                self.pipeline.judge,
                run_id,
                len(done),
                len(refs),
                self.judge_version,
            )
        source = self._stream_source(run_id, refs, done, shards, shard_count)
        computed = (
            self._map_batches(run_id, todo, done, remaining, len(refs), source) if remaining else []
        )
        by_id: dict[str, MetadataOutput] = {}
        if done:
            with self.clock("load"):
                previous = self.load_outputs(EntityLevel.TRACE, run_id, sorted(done))
            by_id.update((o.entity_id, o) for o in previous)
        by_id.update((o.entity_id, o) for o in computed)
        # Scope order (step, datapoint, trace), whatever order the pool finished in.
        return [by_id[ref.trace_id] for ref in refs if ref.trace_id in by_id]

    def _map_batches(
        self,
        run_id: str,
        batches: list[TraceBatch],
        done: set[str],
        remaining: int,
        scope_size: int,
        source: Callable[[MantaService], Iterator[tuple[TraceBatch, list[TraceContext]]]]
        | None = None,
    ) -> list[MetadataOutput]:
        spec = self.pipeline.level(EntityLevel.TRACE)
        budget = failure_budget(self.options.max_failures, scope_size)
        stop = threading.Event()
        reader_store = self.store.sibling()
        worker = BatchWorker(
            self.pipeline,
            self.store,
            judge_version=self.judge_version,
            writer=self.writer,
            max_workers=self.options.max_workers,
            timeout_s=self.options.timeout_s,
            stop=stop,
            reader_store=reader_store,
        )
        loaded: queue.Queue[tuple[TraceBatch, list[TraceContext]] | BaseException | None] = (
            queue.Queue(maxsize=PREFETCH)
        )

        def per_batch(_: MantaService) -> Iterator[tuple[TraceBatch, list[TraceContext]]]:
            for batch in batches:
                yield batch, worker.load(batch, done)

        produce = source or per_batch

        def reader() -> None:
            try:
                for batch, contexts in produce(worker.service):
                    if stop.is_set():
                        break
                    while not stop.is_set():
                        try:
                            loaded.put((batch, contexts), timeout=0.2)
                            break
                        except queue.Full:
                            continue
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                loaded.put(exc)
                return
            loaded.put(None)

        thread = threading.Thread(target=reader, name="manta-prefetch", daemon=True)
        progress = TraceProgress(
            remaining, f"{self.pipeline.judge} · {run_id}", self.options.progress
        )
        outputs: list[MetadataOutput] = []
        failed: list[MetadataOutput] = []
        map_bucket = "llm" if spec.uses_llm else "map"

        def on_results(chunk: list[MetadataOutput]) -> None:
            errors = [o for o in chunk if o.error is not None]
            failed.extend(errors)
            progress.advance(len(chunk), len(errors))
            if budget is not None and len(failed) > budget:
                stop.set()  # the pool finishes the traces in hand and starts no new ones

        thread.start()
        try:
            while True:
                with self.clock("load"):
                    item = loaded.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                batch, contexts = item
                with self.clock(map_bucket):
                    batch_outputs = worker.map(contexts, on_results)
                outputs.extend(batch_outputs)
                with self.clock("persist"):
                    worker.commit(batch, batch_outputs, durable=False)
                if budget is not None and len(failed) > budget:
                    raise ComputationAborted(
                        f"{len(failed)} traces failed, more than max_failures="
                        f"{self.options.max_failures!r} allows; stopped after "
                        f"{len(outputs)} of {remaining} traces, finished work was kept"
                        + (" (persisted)" if self.persist else "")
                        + f". First error: {_first_error(failed)}"
                    )
        finally:
            stop.set()
            progress.close()
            worker.close()
            if self.writer is not None:
                with self.clock("persist"):
                    self.writer.flush()
            thread.join(timeout=5)
            reader_store.close()
        return outputs

    def _stream_source(
        self,
        run_id: str,
        refs: Sequence[TraceRef],
        done: set[str],
        shards: Sequence[int] | None,
        shard_count: int,
    ) -> Callable[[MantaService], Iterator[tuple[TraceBatch, list[TraceContext]]]] | None:
        """Stream the whole scope with one trace query and one span stream (no limits only).

        With a limit the scope is a small subset: loading it batch by batch is cheaper than
        streaming the run. Batches follow storage order; traces outside the planned scope
        (arrived since planning) or already done are dropped.
        """
        if self.options.limits.active or len(refs) <= self.options.batch_size:
            return None
        wanted = {ref.trace_id for ref in refs} - done
        size = self.options.batch_size

        def stream(service: MantaService) -> Iterator[tuple[TraceBatch, list[TraceContext]]]:
            chunks = service.iter_trace_batches(
                run_id, batch_size=size, shards=shards, shard_count=shard_count
            )
            for index, chunk in enumerate(chunks):
                ids = tuple(c.trace_id for c in chunk)
                contexts = [c for c in chunk if c.trace_id in wanted]
                if contexts:
                    yield TraceBatch(batch_id(index, ids), run_id, ids), contexts

        return stream

    # ---- reduce --------------------------------------------------------------------------

    def reduce(
        self,
        level: EntityLevel,
        run_id: str,
        refs: Sequence[TraceRef],
        children: Sequence[MetadataOutput],
    ) -> list[MetadataOutput]:
        """Compute ``level`` from the outputs of the level below it and write them."""
        spec = self.pipeline.level(level)
        below = self.pipeline.below(level).level
        with self.clock("llm" if spec.uses_llm else "reduce"):
            executor = IsolatedExecutor(
                self.options.max_workers if spec.uses_llm else 1,
                timeout_s=self.options.timeout_s,
                chunked=not spec.uses_llm,
            )
            with executor:
                outputs = reduce_level(
                    spec,
                    below,
                    run_id,
                    refs,
                    children,
                    judge=self.pipeline.judge,
                    judge_version=self.judge_version,
                    executor=executor,
                )
        if self.writer is not None:
            with self.clock("persist"):
                self.writer.add(outputs)
                self.writer.flush()
        return outputs

    def load_outputs(
        self, level: EntityLevel, run_id: str, entity_ids: Sequence[str] | None = None
    ) -> list[MetadataOutput]:
        """Outputs of ``level`` stored for this judge version (for resume and Dagster)."""
        stored = load_entities(
            self.store,
            project_id=self.pipeline.project_id,
            run_id=run_id,
            judge=self.pipeline.judge,
            level=level,
            judge_version=self.judge_version,
            entity_ids=entity_ids,
        )
        return outputs_from_stored(
            stored,
            schema=self.pipeline.level(level).schema,
            level=level,
            run_id=run_id,
            judge=self.pipeline.judge,
        )

    # ---- whole run -----------------------------------------------------------------------

    def run(self, run_id: str, refs: Sequence[TraceRef]) -> dict[EntityLevel, list[MetadataOutput]]:
        """All levels for ``refs`` (the scope), bottom-up."""
        result: dict[EntityLevel, list[MetadataOutput]] = {}
        children = self.map_traces(run_id, refs)
        result[EntityLevel.TRACE] = children
        for spec in self.pipeline.levels[1:]:
            children = self.reduce(spec.level, run_id, refs, children)
            result[spec.level] = children
        return result


def _first_error(failed: Sequence[MetadataOutput]) -> str:
    """The failure with the smallest entity id (deterministic whatever finished first)."""
    first = min(failed, key=lambda o: o.entity_id)
    return f"{first.entity_id}: {first.error}"


def register_judge(pipeline: MapReduceComputation, store: Store, settings: MantaSettings) -> str:
    """Register the judge and its columns (every level) with Kestrel or the local registry."""
    from manta_lib.kestrel import JudgeSpec, columns_from_schema
    from manta_lib.kestrel import register_judge as _register

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
    return _register(spec, columns, project_id=pipeline.project_id, settings=settings, store=store)


def run_computation(
    pipeline: MapReduceComputation,
    run_id: str,
    *,
    mode: str,
    options: RunOptions,
    settings: MantaSettings | None = None,
) -> dict[EntityLevel, list[MetadataOutput]]:
    """Plan, register, map, reduce and write one run; log a runs-log row either way."""
    settings = settings or load_settings()
    if mode == "modal":
        from manta_lib.pipeline.modal_runner import run_on_modal

        return run_on_modal(pipeline, run_id, options=options, settings=settings)
    pipeline.check_pip_install()
    clock = BucketClock()
    created_at = utc_now()
    status, error = "failed", None
    summary: dict[str, Any] = {}
    try:
        with Store.open(settings) as store:
            with clock("load"):
                MantaService(store).require_run(run_id)
                refs = plan_scope(store, run_id, limits=options.limits)
            persist = options.persist and not options.limits.active
            if options.persist and options.limits.active:
                log.warning(
                    "subset mode (%s): results are not persisted", options.limits.describe()
                )
            if persist:
                with clock("register"):
                    where = register_judge(pipeline, store, settings)
                log.debug("judge %s registered in %s", pipeline.judge, where)
            engine = Engine(pipeline, store, options=options, persist=persist, clock=clock)
            result = engine.run(run_id, refs)
        summary = summarize_result(result)
        status = "succeeded"
        log.info(
            "%s on %s: %s%s",
            pipeline.judge,
            run_id,
            ", ".join(f"{k} {v}" for k, v in summary.items()),
            "" if persist else " (not persisted)",
        )
        return result
    except BaseException as exc:
        error = describe_exception(exc)
        raise
    finally:
        log_computation_run(
            pipeline, run_id, mode, status, error, created_at, clock, summary, settings
        )


def summarize_result(result: dict[EntityLevel, list[MetadataOutput]]) -> dict[str, str]:
    """Entities per level, with the failed count: ``{"traces": "200 (3 failed)", ...}``."""
    summary = {}
    for level, outputs in result.items():
        errors = sum(1 for o in outputs if o.error is not None)
        summary[level.value + "s"] = f"{len(outputs)}" + (f" ({errors} failed)" if errors else "")
    return summary


def log_computation_run(
    pipeline: MapReduceComputation,
    run_id: str,
    mode: str,
    status: str,
    error: str | None,
    created_at: datetime,
    clock: BucketClock,
    summary: dict[str, Any],
    settings: MantaSettings,
) -> None:
    """Append the computation's row to the JSONL runs log (best effort, never raises)."""
    try:
        from manta_lib.runs_log import append_run, make_run_row

        row = make_run_row(
            run_id=f"{created_at:%Y%m%d_%H%M%S}_{uuid.uuid4().hex[:8]}",
            workflow_id=f"manta__{pipeline.judge}",
            status=status,
            created_at=created_at,
            finished_at=utc_now(),
            wall_time_breakdown=clock.breakdown(),
            tenant_id=pipeline.project_id or "default",
            plan_signature=pipeline.judge_version,
            error=error,
            trace_run_id=run_id,
            mode=mode,
            summary=summary,
        )
        append_run(row, settings.runs_log_dir)
    except Exception:  # noqa: BLE001 - bookkeeping must never break a computation
        log.warning("could not append to the runs log", exc_info=True)
