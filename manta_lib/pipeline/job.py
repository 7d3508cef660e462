"""A map job: the pending traces of a scope, what to do with their outputs, and the tally of
what was mapped (progress, the ``max_failures`` budget). Mappers
(:mod:`manta_lib.pipeline.mapping`) and the crash guard read it; it runs nothing itself."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from manta_lib.entities import MetadataOutput
from manta_lib.errors import ComputationAborted
from manta_lib.models import EntityLevel
from manta_lib.pipeline.definition import PipelineDefinition
from manta_lib.pipeline.options import Outputs, RunOptions, failure_budget
from manta_lib.pipeline.planner import ListedTraces, Scope, StreamedTraces
from manta_lib.pipeline.progress import BucketClock, TraceProgress
from manta_lib.settings import MantaSettings
from manta_lib.store.client import Store
from manta_lib.store.result_key import ResultKey


class MapTally:
    """Traces mapped and failed so far, the progress bar, and the ``max_failures`` budget.

    Thread-safe. Once more traces failed than the budget allows, :attr:`stop` is set (mappers
    finish the traces in hand and start no new ones) and :meth:`raise_if_over_budget` raises.
    """

    def __init__(
        self,
        total: int,
        *,
        scope_size: int,
        max_failures: int | float | None,
        description: str = "",
        progress: bool | None = False,
        persisted: bool = False,
    ) -> None:
        self.total = total
        self.max_failures = max_failures
        self.budget = failure_budget(max_failures, scope_size)
        self.persisted = persisted
        self.stop = threading.Event()
        self.mapped = 0
        self.failed = 0
        self._first_error: tuple[str, str] | None = None
        self._lock = threading.Lock()
        self._progress = TraceProgress(total, description, progress)
        #: Called on each update for a status after the bar (the LLM judges' figures).
        self.note: Callable[[], str] | None = None

    def add(self, mapped: int, failed: int = 0, first_error: tuple[str, str] | None = None) -> None:
        """Count ``mapped`` traces, ``failed`` of them failed (``(trace id, error)`` of one)."""
        with self._lock:
            self.mapped += mapped
            self.failed += failed
            if first_error is not None and (
                self._first_error is None or first_error[0] < self._first_error[0]
            ):
                self._first_error = first_error
            over = self.budget is not None and self.failed > self.budget
        self._progress.advance(mapped, failed)
        if self.note is not None and self._progress.enabled:
            self._progress.note(self.note())
        if over:
            self.stop.set()

    def add_output(self, output: MetadataOutput) -> None:
        if output.error is None:
            self.add(1)
        else:
            self.add(1, 1, (output.entity_id, output.error))

    @property
    def first_error(self) -> str | None:
        """``"<trace id>: <error>"`` of the failure with the smallest trace id so far."""
        return None if self._first_error is None else ": ".join(self._first_error)

    def raise_if_over_budget(self) -> None:
        if self.budget is None or self.failed <= self.budget:
            return
        raise ComputationAborted(
            f"{self.failed} traces failed, more than max_failures={self.max_failures!r} "
            f"allows; stopped after {self.mapped} of {self.total} traces, finished work was kept"
            + (" (persisted)" if self.persisted else "")
            + f". First error: {self.first_error}"
        )

    def close(self) -> None:
        self._progress.close()


@dataclass
class MapJob:
    """Map the pending ``traces`` of ``scope`` (listed, or streamed from the store) and do
    with each output what ``outputs`` says."""

    pipeline: PipelineDefinition
    judge_version: str
    scope: Scope
    traces: ListedTraces | StreamedTraces
    outputs: Outputs
    options: RunOptions
    tally: MapTally
    settings: MantaSettings
    store: Store | None = None  # the caller's open store, for in-process mappers
    clock: BucketClock = field(default_factory=BucketClock)

    @property
    def pending_count(self) -> int:
        return len(self.traces)

    def ids(self) -> list[str]:
        """The job's trace ids (a mapper that cannot stream the scope needs them)."""
        if isinstance(self.traces, StreamedTraces):
            raise ValueError("this MapJob streams its scope: it has no list of trace ids")
        return self.traces.ids

    @property
    def result_key(self) -> ResultKey:
        """Where the job's trace outputs are stored (its run and judge version)."""
        return self.pipeline.result_key(self.scope.run_id, judge_version=self.judge_version)

    @property
    def map_bucket(self) -> str:
        return "llm" if self.pipeline.level(EntityLevel.TRACE).uses_llm else "map"
