"""Mappers: what runs a pipeline's map function over the pending traces of a scope.

The orchestration (:mod:`manta_lib.pipeline.run`) decides *which* traces to map; a mapper
decides *where*: :class:`ThreadMapper` on threads of this process (local mode, a Dagster
partition, and inside every remote worker), :class:`~manta_lib.pipeline.batches.BatchMapper`
in batches on worker processes or Modal containers. Every mapper writes each completed trace
as it completes (when the job persists) and reports it to the job's :class:`MapTally`, which
keeps the progress bar and the ``max_failures`` budget.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from manta_lib.context import TraceContext
from manta_lib.entities import MetadataOutput, new_output
from manta_lib.llm.scope import is_budget_refusal
from manta_lib.models import EntityLevel
from manta_lib.pipeline import crash_guard
from manta_lib.pipeline.crash_journal import map_suspects
from manta_lib.pipeline.job import MapJob
from manta_lib.pipeline.planner import StreamedTraces, split
from manta_lib.pipeline.pool import IsolatedPool, ItemResult
from manta_lib.read_ahead import read_ahead
from manta_lib.service import MantaService
from manta_lib.store.metadata import MetadataWriter, utc_now
from manta_lib.store.trace_queries import Unmapped

log = logging.getLogger(__name__)

#: Batches of loaded traces waiting for the map (bounds memory whatever the run size).
PREFETCH = 2


class Mapper(Protocol):
    """Runs a :class:`MapJob` somewhere (see the module docstring)."""

    #: Whether :meth:`map` runs in this process, with the caller's open store
    #: (``MapJob.store``), and can stream the scope (:class:`StreamedTraces`). With False
    #: the caller closes its store first (an embedded chDB store admits one process at a
    #: time) and lists the pending traces.
    in_process: bool

    def map(self, job: MapJob) -> list[MetadataOutput]:
        """Map the job's traces; return their outputs (none unless ``job.outputs.returns``)."""
        ...

    def summary(self) -> dict[str, Any]:
        """Counts for the runs-log row (batches, retries, ...)."""
        ...

    def close(self) -> None:
        """Release what the mapper set up (called once, when the computation ends)."""
        ...


class ThreadMapper:
    """Maps on a thread pool of this process, loading the next batch of traces meanwhile.

    A reader thread loads batches of traces (two queries each: trace rows, then their spans;
    or one stream over the whole scope when it is large and unlimited) at most ``PREFETCH``
    ahead of the map. Finished traces go to the writer in groups about every 0.1 s (whatever
    the per-trace time: nothing waits for a batch or a chunk to fill), and the writer's timer
    flushes every ``MANTA_FLUSH_SECONDS``.
    """

    in_process = True

    def summary(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        return None

    def map(self, job: MapJob) -> list[MetadataOutput]:
        if not job.pending_count:
            return []
        assert job.store is not None, "ThreadMapper needs the caller's open store"
        writer = None
        if job.outputs.writes:
            writer = MetadataWriter(
                job.store,
                project_id=job.pipeline.project_id,
                judge=job.pipeline.judge,
                flush_seconds=job.settings.flush_seconds,
            )
        outputs: list[MetadataOutput] = []
        if writer is None:
            self._map(job, None, outputs)
            return outputs
        try:
            with writer.flushing_every():
                self._map(job, writer, outputs)
        finally:
            job.clock.add("persist", writer.seconds_spent)
        return outputs

    def _map(
        self, job: MapJob, writer: MetadataWriter | None, outputs: list[MetadataOutput]
    ) -> None:
        spec = job.pipeline.level(EntityLevel.TRACE)
        pool = IsolatedPool(
            job.options.max_workers, timeout_s=job.options.timeout_s, chunked=not spec.uses_llm
        )
        judge, version, run_id = job.pipeline.judge, job.judge_version, job.scope.run_id
        finished: deque[ItemResult[TraceContext]] = deque()
        handing = threading.Lock()  # the mapping thread, or a crash handler's last flush

        def on_result(result: ItemResult[TraceContext]) -> None:
            # In the pool thread: a thread-safe append; failures count at once (the budget).
            if is_budget_refusal(result.error):
                # The LLM cap refused this trace's call: not a result (not written, not a
                # failure); the next run maps it. Start no new traces.
                job.tally.stop.set()
                return
            finished.append(result)
            if result.error is not None:
                job.tally.add(0, 1, (result.item.trace_id, result.error))

        def hand_on() -> None:
            with handing:
                _hand_on()

        def _hand_on() -> None:
            """Outputs of the traces finished so far, to the writer in one group."""
            count = len(finished)
            if not count:
                return
            computed_at = utc_now()
            if writer is not None and not job.outputs.returns:
                items = [
                    (
                        r.item.trace_id,
                        r.output,
                        r.error,
                        r.where,
                        r.item.datapoint_id,
                        r.item.step_number,
                        r.item.phase.value,
                    )
                    for r in (finished.popleft() for _ in range(count))
                ]
                writer.add_results(
                    items,
                    level=EntityLevel.TRACE,
                    run_id=run_id,
                    judge_version=version,
                    computed_at=computed_at,
                )
                job.tally.add(count)
                return
            group = [
                new_output(
                    level=EntityLevel.TRACE,
                    entity_id=result.item.trace_id,
                    run_id=run_id,
                    judge=judge,
                    judge_version=version,
                    output=result.output,
                    error=result.error,
                    computed_at=computed_at,
                    error_at=result.where,
                    datapoint_id=result.item.datapoint_id,
                    step_number=result.item.step_number,
                    phase=result.item.phase.value,
                )
                for result in (finished.popleft() for _ in range(count))
            ]
            if writer is not None:
                writer.add(group)
            outputs.extend(group)
            job.tally.add(count)

        assert job.store is not None
        label = f"judge {judge!r} on run {run_id!r}"
        # On a native crash: start no new trace, write the finished ones (crash_guard).
        on_crash = (job.tally.stop.set, hand_on, writer.flush if writer is not None else None)
        reader_store = job.store.sibling()
        guards = contextlib.ExitStack()
        try:
            fn = guards.enter_context(crash_guard.guarded_map(job, pool, spec.fn, label, on_crash))
            service = MantaService(reader_store)
            handled = map_suspects(job, fn, service, on_result, hand_on, writer)
            batches = read_ahead(
                self._batches(job, service),
                depth=PREFETCH,
                name="manta-prefetch",
                waiting=lambda: job.clock("load"),
                join_timeout_s=5,
            )
            for contexts in batches:
                if handled:  # mapped one at a time already
                    contexts = [c for c in contexts if c.trace_id not in handled]
                with job.clock(job.map_bucket):
                    pool.run(
                        fn,
                        contexts,
                        spec.schema,
                        on_result,
                        stop=job.tally.stop,
                        tick=hand_on,
                    )
                hand_on()
                if job.tally.stop.is_set():
                    break
        finally:
            hand_on()  # what finished before an interruption is written too
            reader_store.close()
            guards.close()

    @staticmethod
    def _batches(job: MapJob, service: MantaService) -> Iterator[list[TraceContext]]:
        """The job's traces with their spans, a batch at a time."""
        size = job.options.batch_size
        if isinstance(job.traces, StreamedTraces):
            # The scope's traces without a stored result, selected in ClickHouse, in storage
            # order: one trace stream and one span stream.
            unmapped = Unmapped(job.result_key, job.options.retry_errors)
            yield from service.iter_trace_batches(
                job.scope.run_id,
                batch_size=size,
                shards=job.scope.shards,
                shard_count=job.scope.shard_count,
                unmapped=unmapped,
            )
            return
        listed = job.traces.ids
        stream = (
            not job.options.subset and len(listed) > size and len(job.scope.refs) >= len(listed)
        )
        if not stream:
            for ids in split(listed, size):
                traces = service.get_traces(
                    job.scope.run_id, trace_ids=list(ids), order_by="trace_id"
                )
                yield service.load_contexts(traces)
            return
        # One trace query and one span stream over the scope, in storage order; traces outside
        # the job (already done, or arrived since planning) are dropped.
        wanted = set(listed)
        chunks = service.iter_trace_batches(
            job.scope.run_id,
            batch_size=size,
            shards=job.scope.shards,
            shard_count=job.scope.shard_count,
        )
        for chunk in chunks:
            contexts = [c for c in chunk if c.trace_id in wanted]
            if contexts:
                yield contexts


def ordered(refs_ids: Sequence[str], *groups: Sequence[MetadataOutput]) -> list[MetadataOutput]:
    """The outputs of ``groups`` in the order of ``refs_ids`` (later groups win)."""
    by_id: dict[str, MetadataOutput] = {}
    for group in groups:
        by_id.update((o.entity_id, o) for o in group)
    return [by_id[i] for i in refs_ids if i in by_id]
