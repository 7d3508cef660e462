"""The factory that turns a :class:`MapReduceComputation` into level assets.

One asset per level, key ``[judge, level]`` (``tool_errors/trace``), in an asset group named
after the judge, each depending on the level directly below it. A materialization runs the
library's :class:`~manta_lib.pipeline.engine.Engine` — the code behind
``pipeline.run(mode="local")`` — for exactly the partition(s) of its step:

- the trace level plans the traces of its ``run|shard`` partitions and calls
  ``Engine.map_traces``, which skips traces already stored for the judge version and writes as
  it goes, so a retried partition resumes from what was persisted;
- a reduce level receives the level below from the IO manager (``entity_metadata``) and calls
  ``Engine.reduce`` over the same scope (its shards, or the whole run for step and run levels).

The asset returns a :class:`~manta_dagster.io_manager.LevelResult`; the IO manager makes sure
every outcome is stored under its identity. Checks run in the same step (``check_specs``).

Example::

    from manta_dagster.assets import build_pipeline_assets
    from examples.tool_errors import pipeline

    built = build_pipeline_assets(pipeline, shard_count=64)
    built.assets  # [tool_errors/trace, tool_errors/datapoint, tool_errors/step]
"""

import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from manta_dagster.checks import (
    check_complete,
    check_error_rate,
    check_schema,
    check_specs,
)
from manta_dagster.io_manager import (
    IO_MANAGER_KEY,
    META_JUDGE,
    META_LEVEL,
    META_PROJECT,
    META_SHARDS,
    META_VERSION,
    LevelInput,
    LevelResult,
)
from manta_dagster.partitions import (
    DEFAULT_SHARD_COUNT,
    RUN_PARTITIONS,
    RunScope,
    run_shard_partitions,
    scopes_from_keys,
)
from manta_dagster.resources import ClickHouseResource, KestrelResource
from manta_dagster.schedules import DEFAULT_BACKFILL_CRON, level_condition
from manta_dagster.summary import first_failures, markdown_summary
from manta_lib.entities import MetadataOutput
from manta_lib.models import EntityLevel
from manta_lib.pipeline.computation import LevelSpec, MapReduceComputation
from manta_lib.pipeline.engine import Engine, RunOptions, log_computation_run
from manta_lib.pipeline.executor import describe_exception
from manta_lib.pipeline.planner import TraceRef, plan_scope
from manta_lib.pipeline.progress import BucketClock
from manta_lib.store import Store
from manta_lib.store.metadata import outputs_from_stored, utc_now

__all__ = [
    "DEFAULT_ERROR_RATE_THRESHOLD",
    "IO_MANAGER_KEY",
    "KIND",
    "AssetOptions",
    "PipelineAssets",
    "build_level_asset",
    "build_pipeline_assets",
    "code_version",
    "level_key",
    "level_partitions",
]

KIND = "clickhouse"
DEFAULT_ERROR_RATE_THRESHOLD = 0.05
SHARDED_LEVELS = (EntityLevel.TRACE, EntityLevel.DATAPOINT)


@dataclass(frozen=True)
class AssetOptions:
    """How a pipeline becomes assets (the same for every level of it).

    Attributes:
        shard_count: hash shards of datapoint_id per run (the ``shard`` dimension).
        error_rate_threshold: the ``error_rate`` check fails above this share of failures.
        max_workers: thread pool of the map (default: 4, or 32 when a level uses an LLM).
        batch_size: traces per batch of the engine.
        automation: attach the declarative automation conditions (see ``schedules.py``).
        backfill_cron: when the scheduled backfill of missing/outdated partitions runs.
    """

    shard_count: int = DEFAULT_SHARD_COUNT
    error_rate_threshold: float = DEFAULT_ERROR_RATE_THRESHOLD
    max_workers: int | None = None
    batch_size: int = 1000
    automation: bool = True
    backfill_cron: str = DEFAULT_BACKFILL_CRON


def level_key(pipeline: MapReduceComputation, level: EntityLevel) -> dg.AssetKey:
    """``[judge, level]``, e.g. ``AssetKey(["tool_errors", "trace"])``."""
    return dg.AssetKey([pipeline.judge, level.value])


def level_partitions(
    level: EntityLevel, shard_count: int = DEFAULT_SHARD_COUNT
) -> dg.PartitionsDefinition:
    """``run × shard`` for trace and datapoint levels, ``run`` for step and run levels."""
    if level in SHARDED_LEVELS:
        return run_shard_partitions(shard_count)
    return RUN_PARTITIONS


def code_version(pipeline: MapReduceComputation) -> str:
    """The judge version: every level's function, its module's source, its output schema and
    the manual version string.

    Every level gets the whole pipeline's version, not its own: outputs are stored under the
    judge version, so changing any level makes every stored level outdated, and the UI must
    show them all as stale.
    """
    return pipeline.judge_version


def _description(pipeline: MapReduceComputation, spec: LevelSpec) -> str:
    doc = (spec.fn.__doc__ or "").strip().splitlines()
    what = spec.description or (doc[0] if doc else "")
    kind = "map per trace" if spec.is_map else f"reduce per {spec.level.value}"
    fields = ", ".join(f"`{name}`" for name in spec.schema.model_fields)
    lines = [
        f"**{pipeline.name}** — {spec.level.value} level ({kind}: "
        f"`{getattr(spec.fn, '__qualname__', spec.fn)}` → `{spec.schema.__name__}`).",
    ]
    if what:
        lines.append(what)
    if pipeline.description:
        lines.append(f"Pipeline: {pipeline.description}")
    lines.append(f"Columns: {fields}.")
    lines.append(
        f"Stored in ClickHouse `entity_metadata` (judge `{pipeline.judge}`, level "
        f"`{spec.level.value}`)."
    )
    return "\n\n".join(lines)


def _refs(store: Store, scope: RunScope, shard_count: int) -> list[TraceRef]:
    return plan_scope(store, scope.run_id, shards=scope.shards, shard_count=shard_count)


def _children(
    pipeline: MapReduceComputation, spec: LevelSpec, inputs: LevelInput, run_id: str
) -> list[MetadataOutput]:
    below = pipeline.below(spec.level)
    if inputs.outputs_by_run is not None:
        return inputs.outputs_by_run.get(run_id, [])
    return outputs_from_stored(
        inputs.by_run.get(run_id, []),
        schema=below.schema,
        level=below.level,
        run_id=run_id,
        judge=pipeline.judge,
    )


def _metadata(
    spec: LevelSpec,
    outputs: Sequence[MetadataOutput],
    *,
    judge_version: str,
    seconds: float,
    computed: int,
    scopes: Sequence[RunScope],
) -> dict[str, Any]:
    errors = sum(1 for o in outputs if o.error is not None)
    return {
        "entities": len(outputs),
        "computed_now": computed,
        "errors": errors,
        "error_rate": dg.MetadataValue.float(round(errors / len(outputs), 6) if outputs else 0.0),
        "duration_s": dg.MetadataValue.float(round(seconds, 3)),
        "judge_version": judge_version,
        "runs": ", ".join(s.run_id for s in scopes),
        "summary": dg.MetadataValue.md(markdown_summary(spec.schema, outputs)),
        "first_failures": dg.MetadataValue.md(first_failures(outputs)),
    }


def build_level_asset(
    pipeline: MapReduceComputation,
    spec: LevelSpec,
    options: AssetOptions = AssetOptions(),
) -> dg.AssetsDefinition:
    """The asset of one level of ``pipeline`` (see the module docstring)."""
    key = level_key(pipeline, spec.level)
    shard_count = options.shard_count
    version = code_version(pipeline)
    run_options = RunOptions(
        max_workers=options.max_workers or (32 if pipeline.uses_llm else 4),
        batch_size=options.batch_size,
        progress=False,
    )
    ins: dict[str, dg.AssetIn] = {}
    if not spec.is_map:
        ins["children"] = dg.AssetIn(key=level_key(pipeline, pipeline.below(spec.level).level))

    def materialize(
        context: dg.AssetExecutionContext,
        clickhouse: ClickHouseResource,
        kestrel: KestrelResource,
        children: LevelInput | None,
    ) -> Iterator[dg.Output[LevelResult] | dg.AssetCheckResult]:
        started = time.perf_counter()
        created_at = utc_now()
        clock = BucketClock()
        scopes = scopes_from_keys(context.partition_keys, shard_count)
        outputs: list[MetadataOutput] = []
        computed = 0
        status, error = "failed", None
        checks: list[dg.AssetCheckResult] = []
        try:
            with clickhouse.open() as store:
                if spec.is_map:
                    pipeline.check_pip_install()  # as pipeline.run(mode="local") does
                    with clock("register"):
                        kestrel.register(pipeline, store)
                engine = Engine(pipeline, store, options=run_options, persist=True, clock=clock)
                for scope in scopes:
                    with clock("load"):
                        refs = _refs(store, scope, shard_count)
                    if spec.is_map:
                        done = len(engine.pending_traces(scope.run_id, refs))
                        scope_outputs = engine.map_traces(
                            scope.run_id, refs, shards=scope.shards, shard_count=shard_count
                        )
                        computed += len(scope_outputs) - done
                    else:
                        assert children is not None
                        below = _children(pipeline, spec, children, scope.run_id)
                        scope_outputs = engine.reduce(spec.level, scope.run_id, refs, below)
                        computed += len(scope_outputs)
                    context.log.info(
                        "%s on %s%s: %d entities",
                        key.to_user_string(),
                        scope.run_id,
                        "" if scope.shards is None else f" shards {list(scope.shards)}",
                        len(scope_outputs),
                    )
                    outputs.extend(scope_outputs)
                checks = _run_checks(store, pipeline, spec, key, options, scopes, outputs)
            status = "succeeded"
        except BaseException as exc:
            error = describe_exception(exc)
            raise
        finally:
            log_computation_run(
                pipeline,
                ",".join(s.run_id for s in scopes),
                "dagster",
                status,
                error,
                created_at,
                clock,
                {"asset": key.to_user_string(), "entities": len(outputs)},
                clickhouse.settings(),
            )
        result = LevelResult(
            project_id=pipeline.project_id,
            judge=pipeline.judge,
            judge_version=engine.judge_version,
            level=spec.level,
            outputs=outputs,
        )
        yield dg.Output(
            result,
            metadata=_metadata(
                spec,
                outputs,
                judge_version=engine.judge_version,
                seconds=time.perf_counter() - started,
                computed=computed,
                scopes=scopes,
            ),
        )
        yield from checks

    # Dagster reads the inputs from the signature: the map level has none, a reduce level one.
    if spec.is_map:

        def compute(
            context: dg.AssetExecutionContext,
            clickhouse: ClickHouseResource,
            kestrel: KestrelResource,
        ) -> Iterator[dg.Output[LevelResult] | dg.AssetCheckResult]:
            yield from materialize(context, clickhouse, kestrel, None)

    else:

        def compute(  # type: ignore[misc]
            context: dg.AssetExecutionContext,
            clickhouse: ClickHouseResource,
            kestrel: KestrelResource,
            children: LevelInput,
        ) -> Iterator[dg.Output[LevelResult] | dg.AssetCheckResult]:
            yield from materialize(context, clickhouse, kestrel, children)

    compute.__name__ = f"{pipeline.judge}__{spec.level.value}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)  # backfill_policy is beta in 1.13
        decorate = dg.asset(
            key=key,
            ins=ins,
            group_name=pipeline.judge,
            description=_description(pipeline, spec),
            partitions_def=level_partitions(spec.level, shard_count),
            backfill_policy=dg.BackfillPolicy.single_run(),
            code_version=version,
            kinds={KIND, "python"},
            tags={"manta/judge": pipeline.judge, "manta/level": spec.level.value},
            metadata={
                META_JUDGE: pipeline.judge,
                META_PROJECT: pipeline.project_id,
                META_LEVEL: spec.level.value,
                META_VERSION: version,
                META_SHARDS: shard_count,
                "manta/function": getattr(spec.fn, "__qualname__", repr(spec.fn)),
                "manta/module": getattr(spec.fn, "__module__", ""),
                "manta/schema": spec.schema.__name__,
            },
            io_manager_key=IO_MANAGER_KEY,
            check_specs=check_specs(key, spec.level, options.error_rate_threshold),
            automation_condition=(
                level_condition(is_map=spec.is_map, cron=options.backfill_cron)
                if options.automation
                else None
            ),
        )
        return decorate(compute)


def _run_checks(
    store: Store,
    pipeline: MapReduceComputation,
    spec: LevelSpec,
    key: dg.AssetKey,
    options: AssetOptions,
    scopes: Sequence[RunScope],
    outputs: Sequence[MetadataOutput],
) -> list[dg.AssetCheckResult]:
    version = pipeline.judge_version
    results = []
    if spec.is_map:
        results.append(
            check_complete(
                store,
                key,
                project_id=pipeline.project_id,
                judge=pipeline.judge,
                judge_version=version,
                scopes=scopes,
                shard_count=options.shard_count,
            )
        )
    results.append(check_error_rate(key, outputs, options.error_rate_threshold))
    results.append(
        check_schema(
            store,
            key,
            schema=spec.schema,
            level=spec.level,
            project_id=pipeline.project_id,
            judge=pipeline.judge,
            judge_version=version,
            outputs=outputs,
        )
    )
    return results


@dataclass(frozen=True)
class PipelineAssets:
    """The level assets of one pipeline, bottom-up."""

    pipeline: MapReduceComputation
    assets: list[dg.AssetsDefinition] = field(default_factory=list)

    @property
    def keys(self) -> list[dg.AssetKey]:
        return [level_key(self.pipeline, spec.level) for spec in self.pipeline.levels]

    @property
    def trace_key(self) -> dg.AssetKey:
        """The map level's key: what the discovery sensor requests for a new run."""
        return level_key(self.pipeline, EntityLevel.TRACE)


def build_pipeline_assets(
    pipeline: MapReduceComputation,
    *,
    shard_count: int = DEFAULT_SHARD_COUNT,
    error_rate_threshold: float = DEFAULT_ERROR_RATE_THRESHOLD,
    backfill_cron: str = DEFAULT_BACKFILL_CRON,
    automation: bool = True,
    max_workers: int | None = None,
    batch_size: int = 1000,
) -> PipelineAssets:
    """One asset per level of ``pipeline`` (see :class:`AssetOptions` for the knobs)."""
    options = AssetOptions(
        shard_count=shard_count,
        error_rate_threshold=error_rate_threshold,
        max_workers=max_workers,
        batch_size=batch_size,
        automation=automation,
        backfill_cron=backfill_cron,
    )
    return PipelineAssets(
        pipeline, [build_level_asset(pipeline, spec, options) for spec in pipeline.levels]
    )
