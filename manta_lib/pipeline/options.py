"""How a pipeline runs: the knobs of ``run()``, checked once, what a map does with its
outputs, and the failure budget."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum

from manta_lib.errors import PipelineDefinitionError
from manta_lib.pipeline.planner import Limits
from manta_lib.results.expr import parse_condition


@dataclass(frozen=True)
class RunOptions:
    """Execution knobs of :meth:`MapReduceComputation.run` (validated on construction).

    ``persist_results`` is what the caller asked for; :attr:`writes` is what happens: a
    subset run (any limit set, or a ``results`` condition) never writes results.
    """

    limits: Limits = field(default_factory=Limits)
    #: A condition on stored results (``"tool_errors.tool_errors > 0"``): only the traces it
    #: selects are mapped, as ``count_traces(run, results=...)`` counts them.
    results: str | None = None
    persist_results: bool = True
    max_workers: int = 4
    batch_size: int = 1000
    max_failures: int | float | None = None
    timeout_s: float | None = None
    retry_errors: bool = True
    progress: bool | None = None
    max_cost_usd: float | None = None

    def __post_init__(self) -> None:
        if self.results is not None:
            if not isinstance(self.results, str) or not self.results.strip():
                raise PipelineDefinitionError(
                    f"results must be a condition on stored results such as "
                    f"'tool_errors.tool_errors > 0', got {self.results!r}"
                )
            parse_condition(self.results)  # a syntax error names its position now
        if isinstance(self.max_workers, bool) or not isinstance(self.max_workers, int):
            raise PipelineDefinitionError(
                f"max_workers must be a positive integer, got {self.max_workers!r}"
            )
        if self.max_workers < 1:
            raise PipelineDefinitionError(
                f"max_workers must be at least 1, got {self.max_workers}: it is the number of "
                f"threads mapping traces at once"
            )
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int):
            raise PipelineDefinitionError(
                f"batch_size must be a positive integer, got {self.batch_size!r}"
            )
        if self.batch_size < 1:
            raise PipelineDefinitionError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.timeout_s is not None and (
            isinstance(self.timeout_s, bool)
            or not isinstance(self.timeout_s, int | float)
            or not math.isfinite(self.timeout_s)
            or self.timeout_s <= 0
        ):
            raise PipelineDefinitionError(
                f"timeout_s must be a number of seconds > 0 (or None for no limit), got "
                f"{self.timeout_s!r}"
            )
        failure_budget(self.max_failures, 0)  # validates
        if self.max_cost_usd is not None and (
            isinstance(self.max_cost_usd, bool)
            or not isinstance(self.max_cost_usd, int | float)
            or not math.isfinite(self.max_cost_usd)
            or self.max_cost_usd < 0
        ):
            raise PipelineDefinitionError(
                f"max_cost_usd must be a number of dollars >= 0 (or None for no cap), got "
                f"{self.max_cost_usd!r}"
            )

    @property
    def subset(self) -> bool:
        """Whether the run covers part of its run: a limit or a results condition."""
        return self.limits.active or self.results is not None

    def describe_subset(self) -> str:
        """``limit_traces=10``, ``results='judge.col > 0'``, both, or ``no limit``."""
        parts = [self.limits.describe()] if self.limits.active else []
        if self.results is not None:
            parts.append(f"results={self.results!r}")
        return ", ".join(parts) or "no limit"

    @property
    def writes(self) -> bool:
        """Whether results are written: asked for, and not a subset run."""
        return self.persist_results and not self.subset


class Outputs(Enum):
    """What a map does with each trace's output."""

    #: Kept and returned; nothing is written (a run that does not persist).
    RETURN = "return"
    #: Written as the trace completes, then dropped: memory does not grow with the run (a
    #: persisted run, which reads its reduce inputs back from the store).
    WRITE = "write"
    #: Written and also returned (a Dagster partition, whose checks read them).
    WRITE_AND_RETURN = "write and return"

    @classmethod
    def of(cls, writes: bool, returns: bool) -> Outputs:
        """The plan that writes and returns as asked (one of the two at least)."""
        if writes:
            return cls.WRITE_AND_RETURN if returns else cls.WRITE
        if not returns:
            raise ValueError("a map that neither writes nor returns its outputs loses them")
        return cls.RETURN

    @property
    def writes(self) -> bool:
        return self is not Outputs.RETURN

    @property
    def returns(self) -> bool:
        return self is not Outputs.WRITE


def failure_budget(max_failures: int | float | None, scope: int) -> int | None:
    """Failures allowed before aborting: a count, or a fraction (0 < f < 1) of the scope."""
    if max_failures is None:
        return None
    if (
        isinstance(max_failures, bool)
        or not isinstance(max_failures, int | float)
        or not max_failures >= 0  # also rejects NaN
        or math.isinf(max_failures)
    ):
        raise PipelineDefinitionError(
            f"max_failures must be a count >= 0 or a fraction between 0 and 1, got {max_failures!r}"
        )
    if isinstance(max_failures, float) and max_failures < 1:
        return int(max_failures * scope)
    return int(max_failures)
