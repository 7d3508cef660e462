"""Mapping in batches on remote workers: local worker processes or Modal containers.

:class:`BatchMapper` cuts the pending traces into batches and hands them to a
:class:`BatchRunner`, which ships each to :func:`~manta_lib.pipeline.remote.map_batch` somewhere
(Modal's ``Function.map`` in :mod:`manta_lib.pipeline.modal`; the tests use a local process
pool). Workers
read their traces, map them with the same :class:`~manta_lib.pipeline.mapping.ThreadMapper`
local mode uses and write ``entity_metadata`` themselves. A batch whose worker failed (a crash,
a lost container) is retried in the next round, at most ``max_attempts`` rounds in all; before
each retry the stored status says which of its traces the worker did write, and only the
others are sent again. If a batch still failed, the computation stops before any reduce (an
aggregate over missing traces would be silently wrong); what was written stays, and running
again maps only what is missing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from manta_lib.entities import MetadataOutput
from manta_lib.errors import ComputationAborted
from manta_lib.pipeline.job import MapJob
from manta_lib.pipeline.planner import split
from manta_lib.pipeline.pool import describe_exception
from manta_lib.pipeline.remote import decode_outputs, pipeline_ref
from manta_lib.pipeline.resume import completed_traces
from manta_lib.store.client import Store

log = logging.getLogger(__name__)

#: Rounds a batch gets (first try included) before the computation is reported as failed.
MAX_ATTEMPTS = 3

Payload = dict[str, Any]
Outcome = dict[str, Any] | BaseException


class BatchRunner(Protocol):
    """Runs :func:`~manta_lib.pipeline.remote.map_batch` over payloads, somewhere."""

    def run(self, payloads: Sequence[Payload]) -> Iterator[tuple[Payload, Outcome]]:
        """Yield each payload with its report, or the exception that stopped its batch."""
        ...

    def close(self) -> None:
        """Release what :meth:`run` set up (called once, when the computation ends)."""
        ...


class BatchMapper:
    """A :class:`~manta_lib.pipeline.mapping.Mapper` over a :class:`BatchRunner`."""

    in_process = False

    def __init__(self, runner: BatchRunner, *, max_attempts: int = MAX_ATTEMPTS) -> None:
        self.runner = runner
        self.max_attempts = max_attempts
        self.batches = 0
        self.retried = 0

    def summary(self) -> dict[str, Any]:
        return {"batches": self.batches, "batches_retried": self.retried}

    def close(self) -> None:
        self.runner.close()

    def map(self, job: MapJob) -> list[MetadataOutput]:
        pending = [list(ids) for ids in split(job.ids(), job.options.batch_size)]
        self.batches += len(pending)
        ref = pipeline_ref(job.pipeline)
        returned: list[MetadataOutput] = []
        errors: list[str] = []
        for attempt in range(1, self.max_attempts + 1):
            if attempt > 1:
                self.retried += len(pending)
                log.warning(
                    "retrying %d failed batch(es) of %s, attempt %d of %d",
                    len(pending),
                    job.scope.run_id,
                    attempt,
                    self.max_attempts,
                )
            payloads = [_payload(job, ref, i, ids, attempt) for i, ids in enumerate(pending)]
            failures = self._round(job, payloads, returned)
            if job.tally.stop.is_set():
                return returned
            pending = [pending[i] for i in sorted(failures)]
            errors = [failures[i] for i in sorted(failures)]
            pending, errors = self._still_missing(job, pending, errors)
            if not pending:
                break
        if pending:
            raise ComputationAborted(_failed_batches_message(job, pending, errors, self))
        return returned

    def _round(
        self, job: MapJob, payloads: list[Payload], returned: list[MetadataOutput]
    ) -> dict[int, str]:
        """Run ``payloads``; return ``{index in payloads: error}`` of the failed ones."""
        failures: dict[int, str] = {}
        results = self.runner.run(payloads)
        try:
            for payload, outcome in results:
                index = payload["index"]
                if isinstance(outcome, BaseException):
                    failures[index] = describe_exception(outcome)
                    log.warning(
                        "batch %d of %s failed (attempt %d): %s",
                        index,
                        job.scope.run_id,
                        payload["attempt"],
                        failures[index],
                    )
                    continue
                first = outcome.get("first_error")
                trace_id, _, error = (first or "").partition(": ")
                job.tally.add(
                    outcome["mapped"], outcome["errors"], (trace_id, error) if first else None
                )
                if job.outputs.returns:
                    returned.extend(decode_outputs(job.pipeline, job.scope.run_id, outcome))
                if job.tally.stop.is_set():
                    break
        finally:
            close = getattr(results, "close", None)
            if close is not None:
                close()
        return failures

    @staticmethod
    def _still_missing(
        job: MapJob, pending: list[list[str]], errors: list[str]
    ) -> tuple[list[list[str]], list[str]]:
        """The failed batches (and their errors) minus the traces their worker did write.

        The stored status is the truth: a worker can write its batch and still fail to
        report back (a container lost after writing); those traces are not mapped again.
        """
        if not job.outputs.writes or not pending:
            return pending, errors
        with Store.open(job.settings, ensure_schema=False) as store:
            done = completed_traces(
                store,
                job.result_key,
                [tid for ids in pending for tid in ids],
                retry_errors=job.options.retry_errors,
            )
        kept: list[list[str]] = []
        kept_errors: list[str] = []
        for ids, error in zip(pending, errors, strict=True):
            missing = [tid for tid in ids if tid not in done]
            if missing:
                kept.append(missing)
                kept_errors.append(error)
            else:
                log.info("a batch of %d traces was written although its worker failed", len(ids))
        return kept, kept_errors


def _failed_batches_message(
    job: MapJob, pending: list[list[str]], errors: list[str], mapper: BatchMapper
) -> str:
    shown = "; ".join(
        f"the batch from {ids[0]} ({len(ids)} traces): {error}"
        for ids, error in list(zip(pending, errors, strict=True))[:3]
    )
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return (
        f"{len(errors)} of {mapper.batches} batches of {job.scope.run_id} failed "
        f"{mapper.max_attempts} time(s) and were not written: {shown}{more}. The reduce levels "
        f"were not computed. "
        + (
            "Every trace written so far is kept: run again with the same run_id to map only "
            "the missing traces."
            if job.outputs.writes
            else "Nothing was persisted (subset or persist_results=False)."
        )
    )


def _payload(job: MapJob, ref: str, index: int, trace_ids: list[str], attempt: int) -> Payload:
    return {
        "pipeline": ref,
        "run_id": job.scope.run_id,
        "index": index,
        "trace_ids": trace_ids,
        "judge_version": job.judge_version,
        "attempt": attempt,
        "persist": job.outputs.writes,
        "return_outputs": job.outputs.returns,
        "retry_errors": job.options.retry_errors,
        "max_workers": job.options.max_workers,
        "timeout_s": job.options.timeout_s,
    }
