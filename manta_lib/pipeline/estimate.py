"""Estimate a pipeline's LLM calls, tokens, dollars and wall time from a sample of its scope.

The sample is spread evenly over the scope in (step, trace id) order, so early and late
training steps (whose transcripts differ in length) are both represented. The map function
runs on it for real: its answers land in the response cache, and the run reuses them.
"""

from __future__ import annotations

from typing import Any

from manta_lib.errors import QueryError
from manta_lib.llm import registry
from manta_lib.llm.estimate import Estimate, estimate
from manta_lib.llm.scope import LLMRunScope
from manta_lib.models import EntityLevel
from manta_lib.pipeline.definition import PipelineDefinition
from manta_lib.service import MantaService
from manta_lib.settings import MantaSettings, load_settings

DEFAULT_LLM_WORKERS = 32  # the local pool size of a pipeline whose map uses_llm


def estimate_pipeline(
    pipeline: PipelineDefinition,
    run_id: str,
    *,
    sample: int = 50,
    max_workers: int | None = None,
    settings: MantaSettings | None = None,
    **filters: Any,
) -> Estimate:
    """Run ``pipeline``'s map function on ``sample`` traces of ``run_id`` and project the rest.

    ``filters`` narrow the scope like :meth:`MantaService.get_traces` (``phase``, ``step``...).

    Example::

        est = estimate_pipeline(pipeline, "run_grpo_math_v1", sample=50)
        print("\\n".join(est.lines()))
    """
    if sample < 1:
        raise QueryError(f"sample must be at least 1, got {sample}")
    settings = settings or load_settings()
    map_fn = pipeline.level(EntityLevel.TRACE).fn
    with MantaService(settings=settings) as service:
        service.require_run(run_id)
        scope_size = service.count_traces(run_id, **filters)
        if scope_size == 0:
            raise QueryError(f"run {run_id!r} has no traces matching {filters or 'the scope'}")
        count = min(sample, scope_size)
        offsets = sorted({int((i + 0.5) * scope_size / count) for i in range(count)})
        records = [
            record
            for offset in offsets
            for record in service.get_traces(
                run_id, order_by=["step_number", "trace_id"], limit=1, offset=offset, **filters
            )
        ]
        contexts = service.load_contexts(records)
    judges = registry.judges_used_by(spec.fn for spec in pipeline.levels) or None
    with LLMRunScope(settings=settings, judges=judges):
        return estimate(map_fn, contexts, scope_size, workers=max_workers or DEFAULT_LLM_WORKERS)
