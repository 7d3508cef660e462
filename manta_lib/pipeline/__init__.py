"""Map/reduce analysis pipelines over traces.

The public surface: :class:`MapReduceComputation` to define and run a pipeline, and the
pieces of the one run path that other orchestrators (the Dagster assets) call per scope.
See docs/architecture.md for how they fit.
"""

from manta_lib.pipeline.computation import MapReduceComputation
from manta_lib.pipeline.coverage import (
    MissingEntities,
    complete_shards,
    entities_by_shard,
    missing_entities,
)
from manta_lib.pipeline.definition import LevelSpec, PipelineDefinition
from manta_lib.pipeline.options import Outputs, RunOptions
from manta_lib.pipeline.planner import Limits, Scope, TraceRef, entity_ids, plan_scope
from manta_lib.pipeline.pool import describe_exception
from manta_lib.pipeline.progress import BucketClock
from manta_lib.pipeline.record import ComputationRecord, record_computation
from manta_lib.pipeline.result import LevelOutputs, RunResult
from manta_lib.pipeline.resume import load_level
from manta_lib.pipeline.run import (
    ScopeOutputs,
    map_scope,
    reduce_scope,
    register_judge,
    run_pipeline,
)

__all__ = [
    "BucketClock",
    "ComputationRecord",
    "LevelOutputs",
    "LevelSpec",
    "Limits",
    "MapReduceComputation",
    "MissingEntities",
    "PipelineDefinition",
    "Outputs",
    "RunOptions",
    "RunResult",
    "Scope",
    "ScopeOutputs",
    "TraceRef",
    "complete_shards",
    "describe_exception",
    "entities_by_shard",
    "entity_ids",
    "load_level",
    "map_scope",
    "missing_entities",
    "plan_scope",
    "record_computation",
    "reduce_scope",
    "register_judge",
    "run_pipeline",
]
