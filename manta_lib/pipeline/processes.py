"""Processes mode: the batch mapper with local worker processes, for a CPU-heavy map.

``pipeline.run(run_id, mode="processes", workers=2)`` comes here. Threads of one process
share one core under the GIL, so a map that spends its time in Python (parsing, scoring,
regular expressions) runs no faster with more threads; worker processes each take a core.

It is the :class:`~manta_lib.pipeline.batches.BatchMapper` Modal mode uses (batches, rounds
of retries, a worker's death isolated to its batch, resume from the stored status) over a
:class:`ProcessRunner`. The embedded chDB store admits one process at a time, so this
process keeps it: it reads each batch's trace rows, and their spans as the engine's undecoded
Native bytes (:mod:`manta_lib.store.native_rows`; decoded and pickled here they would cost
this process as much as the map), ships them to the workers, which build the same
:class:`~manta_lib.context.TraceContext` objects local mode maps, and writes the outputs they
send back. Workers never open the store (with a ClickHouse server as well: one reader and one
writer, whatever the number of workers).

Inside a worker, the traces of a part run on the same :class:`IsolatedPool` local mode uses:
each trace's exception, invalid output or ``timeout_s`` becomes that trace's error. A
worker process that dies (a segfault, ``os._exit`` in the map) takes down the batches in
flight; each is run again alone in a fresh process so that only the culprit's batch fails,
and the batch mapper retries it in its next round.

Example::

    result = pipeline.run("run_xxx", mode="processes", workers=2)
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from manta_lib.context import TraceContext
from manta_lib.entities import new_output
from manta_lib.errors import PipelineDefinitionError
from manta_lib.models import EntityLevel, TraceRecord
from manta_lib.pipeline.batches import MAX_ATTEMPTS, BatchMapper, Outcome, Payload
from manta_lib.pipeline.definition import PipelineDefinition
from manta_lib.pipeline.pool import IsolatedPool, ItemResult
from manta_lib.pipeline.remote import _encode, pipeline_ref, resolve_pipeline
from manta_lib.service import MantaService
from manta_lib.settings import MantaSettings
from manta_lib.store.client import Store
from manta_lib.store.metadata import MetadataWriter, utc_now
from manta_lib.store.native_rows import NativeRows, decode_span_rows, span_rows_native

log = logging.getLogger(__name__)

#: Batches loaded and in the workers' hands at once: some mapped while the next wait, so no
#: worker idles while this process reads, even when its queries are slow on a busy machine
#: (memory: this many batches of trace rows and undecoded spans, a few MB each).
IN_FLIGHT_BATCHES = 4

#: A worker's answer for one trace: (trace id, output, error, where the error was raised).
TraceAnswer = tuple[str, BaseModel | None, str | None, str | None]


def default_workers() -> int:
    """Worker processes when none are given: one per core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def check_workers(workers: object) -> int:
    """``workers`` as a positive process count, or a :class:`PipelineDefinitionError`."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise PipelineDefinitionError(
            f"workers must be a positive number of processes (mode='processes'), got "
            f"{workers!r}; leave it unset for one per core ({default_workers()} here)"
        )
    return workers


# ---- in a worker process --------------------------------------------------------------------

#: How often a worker checks that the process that started it is still alive.
PARENT_CHECK_S = 1.0


def _watch_parent(parent_pid: int) -> None:
    """Pool initializer: exit when the driver is gone (killed with SIGKILL, a worker would
    otherwise wait on its task queue forever)."""

    def watch() -> None:
        while True:
            time.sleep(PARENT_CHECK_S)
            if os.getppid() != parent_pid:
                os._exit(0)

    threading.Thread(target=watch, name="manta-parent-watch", daemon=True).start()


@functools.cache
def _pipeline(ref: str) -> PipelineDefinition:
    return resolve_pipeline(ref)


def map_part(
    ref: str,
    judge_version: str,
    traces: list[TraceRecord],
    spans: NativeRows,
    threads: int,
    timeout_s: float | None,
) -> list[TraceAnswer]:
    """Map ``traces`` (their spans as the driver read them) with the pipeline ``ref``, in a
    worker process; each trace's answer.

    Raises:
        PipelineDefinitionError: the worker's pipeline is not the version the driver planned.
    """
    pipeline = _pipeline(ref)
    if pipeline.judge_version != judge_version:
        raise PipelineDefinitionError(
            f"judge version mismatch for {ref}: the driver planned version {judge_version} "
            f"but this worker's code is version {pipeline.judge_version}. The pipeline's "
            f"module changed while the run started its workers; run again"
        )
    grouped = decode_span_rows(spans)
    contexts = [TraceContext(trace, grouped.get(trace.trace_id, [])) for trace in traces]
    del grouped
    spec = pipeline.level(EntityLevel.TRACE)
    pool = IsolatedPool(threads, timeout_s=timeout_s, chunked=not spec.uses_llm)
    answers: list[TraceAnswer] = []

    def keep(result: ItemResult[TraceContext]) -> None:
        answers.append((result.item.trace_id, result.output, result.error, result.where))

    pool.run(spec.fn, contexts, spec.schema, keep)
    return answers


# ---- in the driver --------------------------------------------------------------------------


@dataclass(eq=False)
class _Batch:
    """One payload in flight: its traces, split in parts across the workers."""

    payload: Payload
    traces: dict[str, TraceRecord]
    #: The arguments of each part's :func:`map_part` call after the pipeline and version.
    calls: list[tuple[list[TraceRecord], NativeRows]] = field(default_factory=list)
    parts: int = 0
    answers: list[TraceAnswer] = field(default_factory=list)
    crashed: bool = False
    error: BaseException | None = None


class ProcessRunner:
    """A :class:`~manta_lib.pipeline.batches.BatchRunner` over ``workers`` local processes.

    This process reads the traces of each payload and writes the outputs of the batches that
    came back whole (a batch is written entirely or not at all, so a failed batch leaves no
    trace half-counted); the timer of the writer flushes every ``MANTA_FLUSH_SECONDS``.
    Processes are started with ``spawn`` (a fork would copy chDB's threads) once, on the
    first batch, and reused until :meth:`close`.
    """

    def __init__(
        self, pipeline: PipelineDefinition, settings: MantaSettings, *, workers: int
    ) -> None:
        self.pipeline = pipeline
        self.ref = pipeline_ref(pipeline)
        self.settings = settings
        self.workers = check_workers(workers)
        self._pool: ProcessPoolExecutor | None = None
        self._store: Store | None = None

    # -- the pool ---------------------------------------------------------------------------

    def _new_pool(self, workers: int) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_watch_parent,
            initargs=(os.getpid(),),
        )

    def _shared_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = self._new_pool(self.workers)
        return self._pool

    def _discard_pool(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool.shutdown(wait=True, cancel_futures=True)

    def _open_store(self) -> Store:
        if self._store is None:
            self._store = Store.open(self.settings, ensure_schema=False)
        return self._store

    # -- BatchRunner --------------------------------------------------------------------------

    def run(self, payloads: Sequence[Payload]) -> Iterator[tuple[Payload, Outcome]]:
        if not payloads:
            return
        store = self._open_store()
        writer = MetadataWriter(
            store,
            project_id=self.pipeline.project_id,
            judge=self.pipeline.judge,
            flush_seconds=self.settings.flush_seconds,
        )
        waiting = list(reversed(payloads))
        in_flight: dict[Future[list[TraceAnswer]], _Batch] = {}
        with writer.flushing_every():
            try:
                while waiting or in_flight:
                    while waiting and len({id(b) for b in in_flight.values()}) < (
                        IN_FLIGHT_BATCHES
                    ):
                        self._submit(waiting.pop(), store, in_flight)
                    done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                    touched: dict[int, _Batch] = {}
                    broken = False
                    for future in done:
                        batch = in_flight.pop(future)
                        touched[id(batch)] = batch
                        batch.parts -= 1
                        try:
                            batch.answers.extend(future.result())
                        except BrokenProcessPool:
                            batch.crashed = broken = True
                        except Exception as exc:  # noqa: BLE001 - the batch's outcome
                            batch.error = exc
                    whole = [b for b in touched.values() if b.parts == 0 and not b.crashed]
                    for batch in whole:
                        yield batch.payload, self._settle(batch, writer)
                    if broken:
                        hit = {id(b): b for b in in_flight.values()}
                        hit.update(
                            (k, b) for k, b in touched.items() if all(b is not w for w in whole)
                        )
                        in_flight.clear()
                        yield from self._after_crash(list(hit.values()), writer)
            finally:
                for future in in_flight:
                    future.cancel()

    def _submit(
        self,
        payload: Payload,
        store: Store,
        in_flight: dict[Future[list[TraceAnswer]], _Batch],
    ) -> None:
        """Read the payload's traces and hand them to the workers, one part per worker.

        Spans go undecoded (the engine's Native bytes): decoding and pickling them here would
        cost this process more than the workers' map.
        """
        run_id = payload["run_id"]
        traces = MantaService(store).get_traces(
            run_id, trace_ids=list(payload["trace_ids"]), order_by="trace_id"
        )
        batch = _Batch(payload, {t.trace_id: t for t in traces})
        if not traces:
            batch.parts = 1
            empty: Future[list[TraceAnswer]] = Future()
            empty.set_result([])
            in_flight[empty] = batch
            return
        size = -(-len(traces) // self.workers)
        pool = self._shared_pool()
        for start in range(0, len(traces), size):
            part = traces[start : start + size]
            spans = span_rows_native(store, run_id, [t.trace_id for t in part])
            batch.calls.append((part, spans))
            future: Future[list[TraceAnswer]]
            try:
                future = pool.submit(map_part, self.ref, payload["judge_version"], part, spans,
                                     *_knobs(payload))  # fmt: skip
            except BrokenProcessPool as exc:  # a worker died since the last wait
                future = Future()
                future.set_exception(exc)
            in_flight[future] = batch
            batch.parts += 1

    def _after_crash(
        self, batches: list[_Batch], writer: MetadataWriter
    ) -> Iterator[tuple[Payload, Outcome]]:
        """A worker died: the pool is broken and every batch in flight went down with it.

        A lone batch is reported as crashed; several are each run again alone in a fresh
        process, so that only the culprit's batch fails.
        """
        self._discard_pool()
        if len(batches) == 1:
            yield batches[0].payload, RuntimeError(_DIED)
            return
        for batch in batches:
            yield batch.payload, self._run_alone(batch, writer)

    def _run_alone(self, batch: _Batch, writer: MetadataWriter) -> Outcome:
        pool = self._new_pool(1)
        answers: list[TraceAnswer] = []
        try:
            for part, spans in batch.calls:
                answers += pool.submit(
                    map_part, self.ref, batch.payload["judge_version"], part, spans,
                    *_knobs(batch.payload),
                ).result()  # fmt: skip
        except BrokenProcessPool:
            return RuntimeError(_DIED)
        except Exception as exc:  # noqa: BLE001 - the batch's outcome
            return exc
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        batch.answers, batch.error, batch.crashed = answers, None, False
        return self._settle(batch, writer)

    def _settle(self, batch: _Batch, writer: MetadataWriter) -> Outcome:
        """The report of a batch whose parts all came back (its outputs handed to the writer),
        or the exception that stopped one of its parts."""
        if batch.crashed:
            return RuntimeError(_DIED)
        if batch.error is not None:
            return batch.error
        payload = batch.payload
        persist = bool(payload.get("persist", True))
        computed_at = utc_now()
        items = []
        failed = 0
        first_error: tuple[str, str] | None = None
        for trace_id, output, error, where in sorted(batch.answers, key=lambda a: a[0]):
            trace = batch.traces[trace_id]
            if error is not None:
                failed += 1
                if first_error is None:
                    first_error = (trace_id, error)
            items.append(
                (
                    trace_id,
                    output,
                    error,
                    where,
                    trace.datapoint_id,
                    trace.step_number,
                    trace.phase.value,
                )
            )
        report: dict[str, Any] = {
            "index": payload.get("index", 0),
            "attempt": payload.get("attempt", 1),
            "mapped": len(items),
            "skipped": 0,
            "errors": failed,
            "first_error": ": ".join(first_error) if first_error else None,
        }
        if persist:
            writer.add_results(
                items,
                level=EntityLevel.TRACE,
                run_id=payload["run_id"],
                judge_version=payload["judge_version"],
                computed_at=computed_at,
            )
        else:
            report["outputs"] = [
                _encode(
                    new_output(
                        level=EntityLevel.TRACE,
                        entity_id=trace_id,
                        run_id=payload["run_id"],
                        judge=self.pipeline.judge,
                        judge_version=payload["judge_version"],
                        output=output,
                        error=error,
                        computed_at=computed_at,
                        error_at=where,
                        datapoint_id=datapoint_id,
                        step_number=step_number,
                        phase=phase,
                    )
                )
                for trace_id, output, error, where, datapoint_id, step_number, phase in items
            ]
        return report

    def close(self) -> None:
        """Stop the worker processes and let the store go."""
        try:
            self._discard_pool()
        finally:
            if self._store is not None:
                store, self._store = self._store, None
                store.close()


def _knobs(payload: Payload) -> tuple[int, float | None]:
    """Threads per worker and the per-trace timeout of a payload."""
    return int(payload.get("max_workers", 1)), payload.get("timeout_s")


_DIED = (
    "a worker process died while mapping this batch (a crash in the map function or a "
    "library it calls; or the worker could not start: a script that calls pipeline.run() "
    'must do it under `if __name__ == "__main__":`, each worker imports it)'
)


def processes_mapper(
    pipeline: PipelineDefinition,
    *,
    settings: MantaSettings,
    workers: int | None = None,
    max_attempts: int = MAX_ATTEMPTS,
) -> BatchMapper:
    """The batch mapper of ``mode="processes"``: ``workers`` processes (one per core by
    default). A pipeline defined in a script or notebook fails here (workers import it)."""
    runner = ProcessRunner(
        pipeline, settings, workers=default_workers() if workers is None else workers
    )
    log.info("mapping %s in %d worker processes", pipeline.judge, runner.workers)
    return BatchMapper(runner, max_attempts=max_attempts)
