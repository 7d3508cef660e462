"""The batch driver: plan, hand batches to an executor, track commits, retry, reduce.

Mode-independent: Modal mode plugs in a :class:`~manta_lib.pipeline.modal_runner.ModalExecutor`,
tests a :class:`ProcessPoolBatchExecutor`. Workers (:func:`~manta_lib.pipeline.remote.run_batch`)
read their traces, write ``entity_metadata`` and mark their batch ``committed`` in
``progress`` themselves; the driver only plans, tracks and reduces:

1. plan the scope and cut it into batches (over the whole scope, so batch ids are stable);
2. skip the batches already ``committed`` for this judge version (resume after a killed
   driver, a crashed worker or Ctrl-C);
3. run the pending batches; a batch that failed is recorded ``failed`` (with the error) and
   retried in the next round, at most ``max_attempts`` rounds in all;
4. if a batch still failed, raise :class:`~manta_lib.errors.ComputationAborted` **before** any
   reduce (an aggregate over missing traces would be silently wrong); the committed batches
   stay, and running again with the same run_id maps only the missing ones;
5. otherwise load the trace outputs from ``entity_metadata`` and run the reduce levels here.

The driver holds no store connection while the executor runs (chDB lets one process open a
store at a time, and local pool workers open it per batch).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Protocol

from manta_lib.entities import MetadataOutput
from manta_lib.errors import ComputationAborted, PersistenceError
from manta_lib.models import EntityLevel
from manta_lib.pipeline.computation import MapReduceComputation
from manta_lib.pipeline.engine import (
    Engine,
    RunOptions,
    failure_budget,
    log_computation_run,
    register_judge,
    summarize_result,
)
from manta_lib.pipeline.executor import describe_exception
from manta_lib.pipeline.planner import TraceBatch, make_batches, plan_scope
from manta_lib.pipeline.progress import BucketClock, TraceProgress
from manta_lib.pipeline.remote import decode_outputs, pipeline_ref, run_batch, worker_environment
from manta_lib.service import MantaService
from manta_lib.settings import MantaSettings
from manta_lib.store.client import Store
from manta_lib.store.metadata import committed_batches, record_batch, utc_now

log = logging.getLogger(__name__)

#: Rounds a batch gets (first try included) before the computation is reported as failed.
MAX_ATTEMPTS = 3

Payload = dict[str, Any]
Outcome = dict[str, Any] | BaseException


class BatchExecutor(Protocol):
    """Runs :func:`~manta_lib.pipeline.remote.run_batch` over payloads, somewhere."""

    def run(self, payloads: Sequence[Payload]) -> Iterator[tuple[Payload, Outcome]]:
        """Yield each payload with its report, or the exception that stopped its batch."""
        ...

    def close(self) -> None:
        """Release what :meth:`run` set up (called once, when the driver is done)."""
        ...


def _apply_environment(env: dict[str, str]) -> None:
    os.environ.update(env)


class ProcessPoolBatchExecutor:
    """Runs batches in local worker processes (``spawn``), the same protocol as Modal.

    Each batch opens and closes the store itself. With the embedded chDB store only one
    process can hold the store at a time, so keep ``max_workers=1`` there (more workers just
    queue on the lock); with a ClickHouse server any number works. At most ``max_workers``
    batches are in flight, so a dying worker process takes down only those (a process pool
    fails every future in flight when one process dies): a lone one is reported as crashed, and
    several are rerun one by one in fresh processes so that only the culprit is reported.
    """

    def __init__(self, settings: MantaSettings, max_workers: int = 1) -> None:
        self.env = worker_environment(settings)
        self.max_workers = max(1, max_workers)
        self._shared: ProcessPoolExecutor | None = None

    def _pool(self, workers: int) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_apply_environment,
            initargs=(self.env,),
        )

    def _shared_pool(self) -> ProcessPoolExecutor:
        if self._shared is None:
            self._shared = self._pool(self.max_workers)
        return self._shared

    def _discard_shared_pool(self) -> None:
        if self._shared is not None:
            self._shared.shutdown(wait=True, cancel_futures=True)
            self._shared = None

    def run(self, payloads: Sequence[Payload]) -> Iterator[tuple[Payload, Outcome]]:
        waiting = list(reversed(payloads))
        in_flight: dict[Future[Payload], Payload] = {}
        try:
            while waiting or in_flight:
                while waiting and len(in_flight) < self.max_workers:
                    payload = waiting.pop()
                    in_flight[self._shared_pool().submit(run_batch, payload)] = payload
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                crashed: list[Payload] = []
                for future in done:
                    payload = in_flight.pop(future)
                    try:
                        outcome: Outcome = future.result()
                    except BrokenProcessPool:
                        crashed.append(payload)
                        continue
                    except Exception as exc:  # noqa: BLE001 - reported to the driver
                        outcome = exc
                    yield payload, outcome
                if crashed:
                    # The whole pool is broken: everything still in flight went down with it.
                    crashed.extend(in_flight.values())
                    in_flight.clear()
                    self._discard_shared_pool()
                    if len(crashed) == 1:
                        yield (
                            crashed[0],
                            RuntimeError("the worker process died while mapping this batch"),
                        )
                    else:
                        for payload in crashed:
                            yield payload, self._run_alone(payload)
        finally:
            for future in in_flight:
                future.cancel()

    def _run_alone(self, payload: Payload) -> Outcome:
        pool = self._pool(1)
        try:
            return pool.submit(run_batch, payload).result()
        except BrokenProcessPool:
            return RuntimeError("the worker process died while mapping this batch")
        except Exception as exc:  # noqa: BLE001 - reported to the driver
            return exc
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        """Stop the worker processes."""
        self._discard_shared_pool()


@dataclass
class DriveStats:
    """Batch counts of one driven computation (for the log line and the runs-log summary)."""

    batches: int = 0
    already_committed: int = 0
    mapped: int = 0
    retried: int = 0


def drive(
    pipeline: MapReduceComputation,
    run_id: str,
    *,
    executor: BatchExecutor,
    options: RunOptions,
    settings: MantaSettings,
    clock: BucketClock | None = None,
    max_attempts: int = MAX_ATTEMPTS,
    stats: DriveStats | None = None,
) -> dict[EntityLevel, list[MetadataOutput]]:
    """Run ``pipeline`` over ``run_id`` with ``executor`` (see the module docstring).

    Raises:
        ComputationAborted: a batch failed ``max_attempts`` times, or more traces failed than
            ``options.max_failures`` allows; committed batches are kept either way.
    """
    clock = clock or BucketClock()
    stats = stats if stats is not None else DriveStats()
    ref = pipeline_ref(pipeline)
    version = pipeline.judge_version
    persist = options.persist and not options.limits.active
    if options.persist and options.limits.active:
        log.warning("subset mode (%s): results are not persisted", options.limits.describe())

    with Store.open(settings) as store:
        with clock("load"):
            MantaService(store).require_run(run_id)
            refs = plan_scope(store, run_id, limits=options.limits)
            done = _committed(store, pipeline, run_id, version) if persist else set()
        if persist:
            with clock("register"):
                register_judge(pipeline, store, settings)

    batches = make_batches(run_id, refs, options.batch_size)
    pending = [batch for batch in batches if batch.batch_id not in done]
    stats.batches = len(batches)
    stats.already_committed = len(batches) - len(pending)
    if stats.already_committed:
        log.info(
            "resuming %s on %s: %d of %d batches already committed for version %s",
            pipeline.judge,
            run_id,
            stats.already_committed,
            len(batches),
            version,
        )

    returned: dict[str, list[dict[str, Any]]] = {}
    failures = _map_pending(
        pipeline,
        run_id,
        pending,
        executor=executor,
        options=options,
        settings=settings,
        clock=clock,
        ref=ref,
        version=version,
        persist=persist,
        max_attempts=max_attempts,
        stats=stats,
        returned=returned,
        scope_size=len(refs),
    )
    if failures:
        shown = "; ".join(f"{bid}: {message}" for bid, message in sorted(failures.items())[:3])
        more = f" (and {len(failures) - 3} more)" if len(failures) > 3 else ""
        raise ComputationAborted(
            f"{len(failures)} of {len(batches)} batches of {run_id} failed {max_attempts} "
            f"time(s) and were not committed: {shown}{more}. The reduce levels were not "
            f"computed. "
            + (
                f"The {len(batches) - len(failures)} committed batches are kept: run again "
                f"with the same run_id to map only the failed batches."
                if persist
                else "Nothing was persisted (subset or persist_results=False)."
            )
        )

    with Store.open(settings) as store:
        engine = Engine(pipeline, store, options=options, persist=persist, clock=clock)
        with clock("load"):
            if persist:
                stored = engine.load_outputs(EntityLevel.TRACE, run_id)
            else:
                stored = [
                    output
                    for encoded in returned.values()
                    for output in decode_outputs(pipeline, run_id, version, encoded)
                ]
        by_id = {output.entity_id: output for output in stored}
        missing = [r.trace_id for r in refs if r.trace_id not in by_id]
        if missing:
            raise PersistenceError(
                f"{len(missing)} traces of {run_id} belong to committed batches but have no "
                f"stored result for version {version} (first: {', '.join(missing[:3])}); "
                f"entity_metadata lost rows, run again to recompute them"
            )
        children = [by_id[r.trace_id] for r in refs]
        result: dict[EntityLevel, list[MetadataOutput]] = {EntityLevel.TRACE: children}
        for spec in pipeline.levels[1:]:
            children = engine.reduce(spec.level, run_id, refs, children)
            result[spec.level] = children
    return result


def _map_pending(
    pipeline: MapReduceComputation,
    run_id: str,
    pending: list[TraceBatch],
    *,
    executor: BatchExecutor,
    options: RunOptions,
    settings: MantaSettings,
    clock: BucketClock,
    ref: str,
    version: str,
    persist: bool,
    max_attempts: int,
    stats: DriveStats,
    returned: dict[str, list[dict[str, Any]]],
    scope_size: int,
) -> dict[str, str]:
    """Run ``pending`` in rounds until every batch committed; return ``{batch_id: error}``."""
    budget = failure_budget(options.max_failures, scope_size)
    map_bucket = "llm" if pipeline.level(EntityLevel.TRACE).uses_llm else "map"
    progress = TraceProgress(
        sum(len(b.trace_ids) for b in pending), f"{pipeline.judge} · {run_id}", options.progress
    )
    failed_traces = 0
    first_error: str | None = None
    failures: dict[str, str] = {}
    try:
        for attempt in range(1, max_attempts + 1):
            if not pending:
                break
            if attempt > 1:
                stats.retried += len(pending)
                log.warning(
                    "retrying %d failed batch(es) of %s, attempt %d of %d",
                    len(pending),
                    run_id,
                    attempt,
                    max_attempts,
                )
            payloads = [
                _payload(batch, ref, version, attempt, options, persist) for batch in pending
            ]
            failures = {}
            results = executor.run(payloads)
            try:
                with clock(map_bucket):
                    for payload, outcome in results:
                        batch_id = payload["batch_id"]
                        if isinstance(outcome, BaseException):
                            failures[batch_id] = describe_exception(outcome)
                            log.warning(
                                "batch %s failed (attempt %d of %d): %s",
                                batch_id,
                                attempt,
                                max_attempts,
                                failures[batch_id],
                            )
                            continue
                        stats.mapped += 1
                        failed_traces += outcome["errors"]
                        first_error = first_error or outcome.get("first_error")
                        progress.advance(outcome["mapped"] + outcome["skipped"], outcome["errors"])
                        log.debug(
                            "batch %s committed: %d traces mapped, %d already done, %d errors",
                            batch_id,
                            outcome["mapped"],
                            outcome["skipped"],
                            outcome["errors"],
                        )
                        if not persist:
                            returned[batch_id] = outcome["outputs"]
                        if budget is not None and failed_traces > budget:
                            raise ComputationAborted(
                                f"{failed_traces} traces failed, more than max_failures="
                                f"{options.max_failures!r} allows; stopped after {stats.mapped} "
                                f"batches, committed batches were kept"
                                + (" (persisted)" if persist else "")
                                + f". First error: {first_error}"
                            )
            finally:
                close = getattr(results, "close", None)
                if close is not None:
                    close()
            if persist and failures:
                with Store.open(settings) as store:
                    _settle_failures(store, pipeline, run_id, version, pending, failures, attempt)
            pending = [batch for batch in pending if batch.batch_id in failures]
    finally:
        progress.close()
    return failures


def _settle_failures(
    store: Store,
    pipeline: MapReduceComputation,
    run_id: str,
    version: str,
    pending: list[TraceBatch],
    failures: dict[str, str],
    attempt: int,
) -> None:
    """Drop failures whose batch did commit; record the others as ``failed`` in progress.

    The progress table is the truth: a worker can commit its batch and still fail to report
    back (a container lost after writing), and such a batch must not be mapped again.
    """
    committed = _committed(store, pipeline, run_id, version)
    sizes = {batch.batch_id: len(batch.trace_ids) for batch in pending}
    for batch_id in sorted(failures):
        if batch_id in committed:
            log.info("batch %s committed although its worker reported an error", batch_id)
            del failures[batch_id]
            continue
        record_batch(
            store,
            project_id=pipeline.project_id,
            run_id=run_id,
            judge=pipeline.judge,
            judge_version=version,
            batch_id=batch_id,
            status="failed",
            trace_count=sizes[batch_id],
            attempt=attempt,
            message=failures[batch_id][:2000],
        )


def _committed(store: Store, pipeline: MapReduceComputation, run_id: str, version: str) -> set[str]:
    recorded = committed_batches(
        store,
        project_id=pipeline.project_id,
        run_id=run_id,
        judge=pipeline.judge,
        judge_version=version,
    )
    return {batch_id for batch_id, status in recorded.items() if status == "committed"}


def _payload(
    batch: TraceBatch, ref: str, version: str, attempt: int, options: RunOptions, persist: bool
) -> Payload:
    return {
        "pipeline": ref,
        "run_id": batch.run_id,
        "batch_id": batch.batch_id,
        "trace_ids": list(batch.trace_ids),
        "judge_version": version,
        "attempt": attempt,
        "persist": persist,
        "retry_errors": options.retry_errors,
        "max_workers": options.max_workers,
        "timeout_s": options.timeout_s,
    }


def run_with_executor(
    pipeline: MapReduceComputation,
    run_id: str,
    *,
    executor: BatchExecutor,
    options: RunOptions,
    settings: MantaSettings,
    mode: str,
    max_attempts: int = MAX_ATTEMPTS,
) -> dict[EntityLevel, list[MetadataOutput]]:
    """:func:`drive`, then close the executor and append the runs-log row (as local mode)."""
    clock = BucketClock()
    created_at = utc_now()
    stats = DriveStats()
    status, error = "failed", None
    summary: dict[str, Any] = {}
    try:
        result = drive(
            pipeline,
            run_id,
            executor=executor,
            options=options,
            settings=settings,
            clock=clock,
            max_attempts=max_attempts,
            stats=stats,
        )
        summary = summarize_result(result)
        status = "succeeded"
        log.info(
            "%s on %s (%s): %s; %d batches, %d already committed",
            pipeline.judge,
            run_id,
            mode,
            ", ".join(f"{k} {v}" for k, v in summary.items()),
            stats.batches,
            stats.already_committed,
        )
        return result
    except BaseException as exc:
        error = describe_exception(exc)
        raise
    finally:
        summary["batches"] = stats.batches
        summary["batches_already_committed"] = stats.already_committed
        summary["batches_retried"] = stats.retried
        try:
            executor.close()
        finally:
            log_computation_run(
                pipeline, run_id, mode, status, error, created_at, clock, summary, settings
            )
