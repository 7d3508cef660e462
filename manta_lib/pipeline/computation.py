"""MapReduceComputation: a pipeline definition with ``run()``, which picks how it runs.

Example::

    from pydantic import BaseModel
    from manta import EntityLevel, MapReduceComputation, TraceContext

    class TraceMetrics(BaseModel):
        tool_errors: int

    class DatapointMetrics(BaseModel):
        mean_tool_errors: float

    def map_fn(trace: TraceContext) -> TraceMetrics:
        return TraceMetrics(tool_errors=trace.tool_error_count)

    def reduce_fn(entity, children: list[TraceMetrics]) -> DatapointMetrics:
        return DatapointMetrics(
            mean_tool_errors=sum(c.tool_errors for c in children) / max(len(children), 1)
        )

    pipeline = (
        MapReduceComputation("Tool errors", project_id="prj_demo")
        .add_level(EntityLevel.TRACE, map_fn, TraceMetrics)
        .add_level(EntityLevel.DATAPOINT, reduce_fn, DatapointMetrics)
    )
    result = pipeline.run(run_id="run_grpo_math_v1", mode="local")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from manta_lib.errors import PipelineDefinitionError
from manta_lib.pipeline.definition import PipelineDefinition
from manta_lib.pipeline.estimate import estimate_pipeline
from manta_lib.pipeline.mapping import Mapper, ThreadMapper
from manta_lib.pipeline.modal import modal_mapper
from manta_lib.pipeline.options import RunOptions
from manta_lib.pipeline.planner import Limits
from manta_lib.pipeline.processes import processes_mapper
from manta_lib.pipeline.result import RunResult
from manta_lib.pipeline.run import run_pipeline
from manta_lib.settings import MantaSettings, load_settings

if TYPE_CHECKING:
    from manta_lib.llm.estimate import Estimate

Mode = Literal["local", "modal", "processes"]


class MapReduceComputation(PipelineDefinition):
    """A map function per trace, reduce functions up the hierarchy, persisted results.

    Args:
        name: human-readable name; the judge id is its slug (``"Tool errors"`` →
            ``tool_errors``).
        project_id: the project the results belong to (``prj_xxx``).
        pip_install: extra packages the functions need (checked importable in local mode,
            installed into the image in Modal mode).
        description: shown in Kestrel and Dagster.
        version: an optional manual version string mixed into the judge version.
        version_label: a readable name for this version, stored and shown beside the hash
            (default: the git commit of the judge's file and the functions changed since the
            previous version).
    """

    def run(
        self,
        run_id: str,
        mode: Mode = "modal",
        *,
        limit_traces: int | None = None,
        limit_datapoints: int | None = None,
        limit_steps: int | None = None,
        results: str | None = None,
        persist_results: bool = True,
        max_workers: int | None = None,
        batch_size: int = 1000,
        max_failures: int | float | None = None,
        timeout_s: float | None = None,
        retry_errors: bool = True,
        progress: bool | None = None,
        settings: MantaSettings | None = None,
        max_cost_usd: float | None = None,
        workers: int | None = None,
    ) -> RunResult:
        """Run the pipeline over one run and return every level's outputs.

        The :class:`~manta_lib.pipeline.result.RunResult` maps each level to its outputs, like
        a ``dict[EntityLevel, list[MetadataOutput]]``. A persisted run keeps none of them in
        memory: each level is read from the store when asked (``result[EntityLevel.TRACE]``
        streams it; ``counts()``, ``errors()`` and ``to_pandas()`` are computed in
        ClickHouse). A run that does not persist (a subset) holds its outputs, at most
        ``IN_MEMORY_TRACE_LIMIT`` (500,000) traces.

        Args:
            run_id: the run to analyse.
            mode: ``"modal"`` (the default, cloud workers), ``"local"`` (a thread pool) or
                ``"processes"`` (``workers`` processes on this machine, for a map that spends
                its time in Python: threads share one core under the GIL).
            limit_traces / limit_datapoints / limit_steps: analyse only the first N (one at a
                time); subset mode never writes results.
            results: analyse only the traces a condition on stored results selects, the same
                condition ``count_traces(run_id, results=...)`` takes, e.g.
                ``"tool_errors.tool_errors > 0"`` (each judge read at the run's latest
                version). A filtered run is a subset run: it never writes results (its
                reduce levels would describe the selected traces only). A limit applies to
                the selected traces.
            persist_results: register the judge and write entity_metadata (default True).
            max_workers: thread pool size (default 4, or 32 when a level ``uses_llm``); in
                ``"processes"`` mode, the threads of each worker process.
            batch_size: traces per batch (one trace query and one span query per batch).
            max_failures: abort once more traces failed than this count (int) or fraction
                of the scope (float < 1); finished work is kept.
            timeout_s: per-trace time limit of the map function (> 0 seconds).
            retry_errors: recompute entities whose stored result is an error (default True).
            progress: show a progress bar (default: when stderr is a terminal).
            settings: override the environment settings.
            max_cost_usd: stop cleanly before an LLM judge call could push this run's LLM
                spending past it (``LLMBudgetExceeded``; finished work is kept, and a run
                with a higher cap continues). Local mode.
            workers: worker processes of ``mode="processes"`` (default: one per core).
        """
        self.require_levels()
        if mode not in ("local", "modal", "processes"):
            raise PipelineDefinitionError(
                f"mode must be 'local', 'processes' or 'modal', got {mode!r}"
            )
        if workers is not None and mode != "processes":
            raise PipelineDefinitionError(
                f"workers sets the processes of mode='processes' (got mode={mode!r}); use "
                f"max_workers for the threads of mode='local'"
            )
        options = RunOptions(
            limits=Limits(limit_traces, limit_datapoints, limit_steps),
            results=results,
            persist_results=persist_results,
            max_workers=self.default_max_workers if max_workers is None else max_workers,
            batch_size=batch_size,
            max_failures=max_failures,
            timeout_s=timeout_s,
            retry_errors=retry_errors,
            progress=progress,
            max_cost_usd=max_cost_usd,
        )
        settings = settings or load_settings()
        mapper: Mapper
        if mode in ("modal", "processes") and max_cost_usd is not None:
            raise PipelineDefinitionError(
                f"max_cost_usd is enforced in the process that calls the judges: use "
                f"mode='local' (with mode={mode!r} each worker has its own limiter and "
                f"spending)"
            )
        if mode == "modal":
            mapper = modal_mapper(self, options=options, settings=settings)
        elif mode == "processes":
            self.check_pip_install()
            mapper = processes_mapper(self, settings=settings, workers=workers)
        else:
            self.check_pip_install()
            mapper = ThreadMapper()
        return run_pipeline(
            self, run_id, mapper=mapper, options=options, settings=settings, mode=mode
        )

    def estimate(
        self,
        run_id: str,
        *,
        sample: int = 50,
        max_workers: int | None = None,
        settings: MantaSettings | None = None,
    ) -> Estimate:
        """Run the map function on ``sample`` traces of ``run_id`` (spread over its steps) and
        project the LLM calls, tokens, dollars and wall time of the whole run.

        Example::

            print("\n".join(pipeline.estimate("run_grpo_math_v1", sample=50).lines()))
        """
        self.require_levels()
        return estimate_pipeline(
            self,
            run_id,
            sample=sample,
            max_workers=max_workers or self.default_max_workers,
            settings=settings,
        )
