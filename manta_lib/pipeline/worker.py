"""The batch worker: load a batch of traces, map them, write the outcomes, checkpoint.

One implementation for every mode: local mode drives it from a prefetching loop, Modal
workers call :meth:`BatchWorker.process` remotely, Dagster materializations call it for
their partition.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from manta_lib.context import TraceContext
from manta_lib.entities import MetadataOutput
from manta_lib.models import EntityLevel, fast_construct
from manta_lib.pipeline.computation import MapReduceComputation
from manta_lib.pipeline.executor import IsolatedExecutor
from manta_lib.pipeline.planner import TraceBatch
from manta_lib.service import MantaService
from manta_lib.store.client import Store
from manta_lib.store.metadata import MetadataWriter, progress_row, utc_now

log = logging.getLogger(__name__)


@dataclass
class BatchReport:
    """What happened to one batch."""

    batch_id: str
    trace_count: int
    error_count: int
    load_s: float = 0.0
    map_s: float = 0.0
    persist_s: float = 0.0
    outputs: list[MetadataOutput] = field(default_factory=list)


class BatchWorker:
    """Maps batches of traces with the pipeline's TRACE level function."""

    def __init__(
        self,
        pipeline: MapReduceComputation,
        store: Store,
        *,
        judge_version: str,
        writer: MetadataWriter | None,
        max_workers: int,
        timeout_s: float | None = None,
        stop: threading.Event | None = None,
        reader_store: Store | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.spec = pipeline.level(EntityLevel.TRACE)
        self.store = store
        self.service = MantaService(reader_store or store)
        self.judge_version = judge_version
        self.writer = writer
        self.stop = stop or threading.Event()
        self.executor = IsolatedExecutor(
            max_workers, timeout_s=timeout_s, chunked=not self.spec.uses_llm
        )

    def close(self) -> None:
        self.executor.close()

    def load(self, batch: TraceBatch, skip: Collection[str] = ()) -> list[TraceContext]:
        """The batch's traces (minus ``skip``) with their spans: two queries in all."""
        wanted = [tid for tid in batch.trace_ids if tid not in skip]
        if not wanted:
            return []
        traces = self.service.get_traces(batch.run_id, trace_ids=wanted, order_by="trace_id")
        return self.service.load_contexts(traces)

    def map(
        self,
        contexts: list[TraceContext],
        on_results: Callable[[list[MetadataOutput]], None] | None = None,
    ) -> list[MetadataOutput]:
        """Run the map function over ``contexts``; failures become error outcomes."""
        outputs: list[MetadataOutput] = []
        for group in self.executor.map(self.spec.fn, contexts, self.spec.schema, stop=self.stop):
            computed_at = utc_now()
            chunk = [
                fast_construct(
                    MetadataOutput,
                    {
                        "entity_level": EntityLevel.TRACE,
                        "entity_id": result.item.trace_id,
                        "run_id": result.item.run_id,
                        "judge": self.pipeline.judge,
                        "judge_version": self.judge_version,
                        "output": result.output,
                        "error": result.error,
                        "computed_at": computed_at,
                    },
                )
                for result in group
            ]
            if self.writer is not None:
                self.writer.add(chunk)
            outputs.extend(chunk)
            if on_results is not None:
                on_results(chunk)
        return outputs

    def commit(
        self,
        batch: TraceBatch,
        outputs: list[MetadataOutput],
        attempt: int = 1,
        *,
        durable: bool = True,
    ) -> None:
        """Mark the batch committed once its outputs are written (the checkpoint).

        ``durable=True`` writes now (a remote worker returns only after its batch is safe);
        ``durable=False`` lets the checkpoint ride along with the writer's next timed flush.
        """
        if self.writer is None:
            return
        self.writer.checkpoint(
            progress_row(
                project_id=self.pipeline.project_id,
                run_id=batch.run_id,
                judge=self.pipeline.judge,
                judge_version=self.judge_version,
                batch_id=batch.batch_id,
                status="committed",
                trace_count=len(batch.trace_ids),
                error_count=sum(1 for o in outputs if o.error is not None),
                attempt=attempt,
            )
        )
        if durable:
            self.writer.flush()

    def process(
        self, batch: TraceBatch, skip: Collection[str] = (), attempt: int = 1
    ) -> BatchReport:
        """Load, map, write and commit one batch (the Modal worker's whole job)."""
        started = time.perf_counter()
        contexts = self.load(batch, skip)
        loaded = time.perf_counter()
        outputs = self.map(contexts)
        mapped = time.perf_counter()
        self.commit(batch, outputs, attempt)
        return BatchReport(
            batch_id=batch.batch_id,
            trace_count=len(contexts),
            error_count=sum(1 for o in outputs if o.error is not None),
            load_s=loaded - started,
            map_s=mapped - loaded,
            persist_s=time.perf_counter() - mapped,
            outputs=outputs,
        )
