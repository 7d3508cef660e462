"""The factory that turns a pipeline into level assets: one map asset, one reduce asset per level.

One asset per level, key ``[judge, level]`` (``tool_errors/trace``), in an asset group named
after the judge, each depending on the level directly below it. A materialization calls the
steps of the library's one run path for exactly the partition(s) of its op:

- the map asset plans the traces of its ``run|shard`` partitions and calls
  :func:`manta_lib.pipeline.map_scope`, which skips traces already stored for the judge version
  and writes each trace as it completes, so a retried partition resumes from what was persisted;
- a reduce asset receives the level below from the IO manager (``entity_metadata``) and calls
  :func:`manta_lib.pipeline.reduce_scope` over the same scope (its shards, or the whole run for
  step and run levels).

Each op appends one runs-log row (:func:`manta_lib.pipeline.record_computation`) and runs
its checks in the same op (``check_specs``).

Example::

    from manta_dagster.assets import build_pipeline_assets
    from examples.tool_errors import pipeline

    built = build_pipeline_assets(pipeline, shard_count=64)
    built.assets  # [tool_errors/trace, tool_errors/datapoint, tool_errors/step]
"""

import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import dagster as dg
from pydantic import BaseModel

from manta_dagster.automation import DEFAULT_BACKFILL_CRON, level_condition
from manta_dagster.checks import (
    CompleteTally,
    OpChecks,
    check_specs,
    tally_complete,
    tally_schema,
)
from manta_dagster.gaps import failed_below_failure, incomplete_failure
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
    SHARDED_LEVELS,
    run_shard_partitions,
    scopes_from_keys,
)
from manta_dagster.resources import ClickHouseResource, KestrelResource
from manta_dagster.split import PartitionSplit, split_partitions
from manta_dagster.summary import first_failures, markdown_summary
from manta_dagster.ui_links import explorer_base
from manta_lib import EntityLevel, MetadataOutput
from manta_lib.explorer.links import results_url
from manta_lib.pipeline import (
    BucketClock,
    LevelSpec,
    Outputs,
    PipelineDefinition,
    RunOptions,
    Scope,
    map_scope,
    missing_entities,
    plan_scope,
    record_computation,
    reduce_scope,
)
from manta_lib.store import Store, outputs_from_stored

__all__ = [
    "DEFAULT_ERROR_RATE_THRESHOLD",
    "IO_MANAGER_KEY",
    "KIND",
    "AssetOptions",
    "PipelineAssets",
    "build_map_asset",
    "build_pipeline_assets",
    "build_reduce_asset",
    "code_version",
    "level_key",
    "level_partitions",
]

KIND = "clickhouse"
DEFAULT_ERROR_RATE_THRESHOLD = 0.05


@dataclass(frozen=True)
class AssetOptions:
    """How a pipeline becomes assets (the same for every level of it).

    Attributes:
        shard_count: hash shards of datapoint_id per run (the ``shard`` dimension).
        error_rate_threshold: the ``error_rate`` check fails above this share of failures.
        max_workers: thread pool of the map (default: 4, or 32 when a level uses an LLM).
        batch_size: traces loaded per batch by the map.
        max_failures: a map op stops once more traces failed than this count (or fraction
            of its scope); what it finished is kept and the op fails.
        automation: attach the declarative automation conditions (see ``automation.py``).
        backfill_cron: when the scheduled backfill of missing/outdated partitions runs.
    """

    shard_count: int = DEFAULT_SHARD_COUNT
    error_rate_threshold: float = DEFAULT_ERROR_RATE_THRESHOLD
    max_workers: int | None = None
    batch_size: int = 1000
    max_failures: int | float | None = None
    automation: bool = True
    backfill_cron: str = DEFAULT_BACKFILL_CRON


def level_key(pipeline: PipelineDefinition, level: EntityLevel) -> dg.AssetKey:
    """``[judge, level]``, e.g. ``AssetKey(["tool_errors", "trace"])``."""
    return dg.AssetKey([pipeline.judge, level.value])


def level_partitions(
    level: EntityLevel, shard_count: int = DEFAULT_SHARD_COUNT
) -> dg.PartitionsDefinition:
    """``run × shard`` for trace, datapoint and datapoint-across-steps levels, ``run`` for step
    and run levels."""
    if level in SHARDED_LEVELS:
        return run_shard_partitions(shard_count)
    return RUN_PARTITIONS


def code_version(pipeline: PipelineDefinition) -> str:
    """The judge version: every level's function, its module's source, its output schema and
    the manual version string.

    Every level gets the whole pipeline's version, not its own: outputs are stored under the
    judge version, so changing any level makes every stored level outdated, and the UI must
    show them all as stale.
    """
    return pipeline.judge_version


def _description(pipeline: PipelineDefinition, spec: LevelSpec) -> str:
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


EMPTY_PARTITION = (
    "no trace of the run is in this partition (no datapoint hashes to its shard): nothing to "
    "compute"
)


def _metadata(
    outputs: Sequence[MetadataOutput],
    schema: type[BaseModel],
    *,
    judge_version: str,
    seconds: float,
    computed: int,
    runs: Sequence[str],
    links: dict[str, str],
    llm: dict[str, Any] | None = None,
) -> dict[str, Any]:
    errors = sum(1 for o in outputs if o.error is not None)
    # The LLM judges' calls, cache hits, tokens, 429s and dollars ("unknown" if unpriced).
    llm_fields = {k: "unknown" if v is None else v for k, v in (llm or {}).items()}
    return {
        **{name: dg.MetadataValue.url(url) for name, url in links.items()},
        **llm_fields,
        "entities": len(outputs),
        "computed_now": computed,
        "errors": errors,
        "error_rate": dg.MetadataValue.float(round(errors / len(outputs), 6) if outputs else 0.0),
        "duration_s": dg.MetadataValue.float(round(seconds, 3)),
        "judge_version": judge_version,
        "runs": ", ".join(dict.fromkeys(runs)),
        "summary": dg.MetadataValue.md(markdown_summary(schema, outputs)),
        "first_failures": dg.MetadataValue.md(first_failures(outputs)),
        **({"empty": EMPTY_PARTITION} if not outputs else {}),
    }


def explorer_links(judge: str, level: EntityLevel, partitions: Sequence[str]) -> dict[str, str]:
    """``{"explorer": url}`` of the results page of the materialized partition(s) in the Manta
    explorer (one shard when a single ``run|shard`` partition), or ``{"explorer <run_id>": url}``
    per run when they span several runs."""
    shards: dict[str, set[str]] = {}
    for key in partitions:
        run_id, sep, shard = key.rpartition("|")
        shards.setdefault(run_id if sep else key, set()).update([shard] if sep else [])
    links = {
        run_id: results_url(
            judge,
            run_id,
            level.value,
            shard=next(iter(found)) if len(found) == 1 else None,
            base=explorer_base(),
        )
        for run_id, found in shards.items()
    }
    if len(links) == 1:
        return {"explorer": next(iter(links.values()))}
    return {f"explorer {run_id}": url for run_id, url in links.items()}


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _partition_metadata(
    context: dg.AssetExecutionContext,
    split: PartitionSplit,
    outputs: Sequence[MetadataOutput],
    schema: type[BaseModel],
    *,
    judge: str,
    level: EntityLevel,
    judge_version: str,
    seconds: float,
    since: datetime,
) -> None:
    """In an op over a range, each partition's materialization describes that partition only: its
    entities, errors, summary and failures (``op_*`` keys give the whole op's)."""
    if not split.is_range:
        return
    for partition, mine in split.group(outputs).items():
        metadata = _metadata(
            mine,
            schema,
            judge_version=judge_version,
            seconds=seconds,
            computed=sum(1 for o in mine if _utc(o.computed_at) >= since),
            runs=[str(partition).split("|")[0]],
            links=explorer_links(judge, level, [str(partition)]),
        )
        metadata["op_partitions"] = len(split.keys)
        metadata["op_entities"] = len(outputs)
        context.add_asset_metadata(metadata, partition_key=partition)


@dataclass
class _OpResult:
    outputs: list[MetadataOutput] = field(default_factory=list)
    computed: int = 0
    checks: list[dg.AssetCheckResult | dg.AssetCheckEvaluation] = field(default_factory=list)


#: (store, scope, clock, runs-log summary) -> (outputs, computed now)
ComputeScope = Callable[
    [Store, Scope, BucketClock, dict[str, Any]], tuple[list[MetadataOutput], int]
]
ComputeChecks = Callable[[Store, Sequence[Scope], list[MetadataOutput]], OpChecks]


def _run_op(
    context: dg.AssetExecutionContext,
    clickhouse: ClickHouseResource,
    pipeline: PipelineDefinition,
    spec: LevelSpec,
    shard_count: int,
    compute: ComputeScope,
    checks: ComputeChecks,
    prepare: Callable[[Store, BucketClock], None] | None = None,
) -> Iterator[dg.Output[LevelResult] | dg.AssetCheckResult | dg.AssetCheckEvaluation]:
    """Plan each partition scope, ``compute`` it, run ``checks``, record the runs-log row."""
    started = time.perf_counter()
    since = datetime.now(UTC)
    key = level_key(pipeline, spec.level)
    run_scopes = scopes_from_keys(context.partition_keys, shard_count)
    op = _OpResult()
    runs = ",".join(dict.fromkeys(s.run_id for s in run_scopes))
    with record_computation(pipeline, runs, "dagster", clickhouse.settings()) as record:
        clock = record.clock
        with clickhouse.open() as store:
            if prepare is not None:
                prepare(store, clock)
            planned: list[Scope] = []
            for run_scope in run_scopes:
                with clock("load"):
                    scope = plan_scope(
                        store, run_scope.run_id, shards=run_scope.shards, shard_count=shard_count
                    )
                planned.append(scope)
                outputs, computed = compute(store, scope, clock, record.summary)
                context.log.info(
                    "%s on %s: %d entities", key.to_user_string(), scope.describe(), len(outputs)
                )
                op.outputs.extend(outputs)
                op.computed += computed
            verdicts = checks(store, planned, op.outputs)
            split = split_partitions(
                store,
                spec.level,
                verdicts.complete.scopes if verdicts.complete else planned,
                list(context.partition_keys),
                shard_count,
            )
            op.checks = [*verdicts.results(), *verdicts.per_partition(split)]
        record.summary.update({"asset": key.to_user_string(), "entities": len(op.outputs)})
    result = LevelResult(
        project_id=pipeline.project_id,
        judge=pipeline.judge,
        judge_version=pipeline.judge_version,
        level=spec.level,
        outputs=op.outputs,
    )
    seconds = time.perf_counter() - started
    _partition_metadata(
        context,
        split,
        op.outputs,
        spec.schema,
        judge=pipeline.judge,
        level=spec.level,
        judge_version=pipeline.judge_version,
        seconds=seconds,
        since=since,
    )
    yield dg.Output(
        result,
        metadata=_metadata(
            op.outputs,
            spec.schema,
            judge_version=pipeline.judge_version,
            seconds=seconds,
            computed=op.computed,
            runs=[s.run_id for s in run_scopes],
            links=explorer_links(
                pipeline.judge, spec.level, [str(k) for k in context.partition_keys]
            ),
            llm={k: v for k, v in record.summary.items() if k.startswith("llm_")},
        ),
    )
    yield from op.checks


def _asset_decorator(
    pipeline: PipelineDefinition, spec: LevelSpec, options: AssetOptions
) -> Callable[[Callable[..., Any]], dg.AssetsDefinition]:
    """``@dg.asset(...)`` with what every level asset carries (key, partitions, checks, ...)."""
    key = level_key(pipeline, spec.level)
    version = code_version(pipeline)
    ins: dict[str, dg.AssetIn] = {}
    if not spec.is_map:
        ins["children"] = dg.AssetIn(key=level_key(pipeline, pipeline.below(spec.level).level))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)  # backfill_policy is beta in 1.13
        warnings.simplefilter("ignore", dg.PreviewWarning)  # partitioned checks: preview
        return dg.asset(
            key=key,
            ins=ins,
            group_name=pipeline.judge,
            description=_description(pipeline, spec),
            partitions_def=level_partitions(spec.level, options.shard_count),
            backfill_policy=dg.BackfillPolicy.single_run(),
            code_version=version,
            kinds={KIND, "python"},
            tags={"manta/judge": pipeline.judge, "manta/level": spec.level.value},
            metadata={
                META_JUDGE: pipeline.judge,
                META_PROJECT: pipeline.project_id,
                META_LEVEL: spec.level.value,
                META_VERSION: version,
                META_SHARDS: options.shard_count,
                "manta/function": getattr(spec.fn, "__qualname__", repr(spec.fn)),
                "manta/module": getattr(spec.fn, "__module__", ""),
                "manta/schema": spec.schema.__name__,
            },
            io_manager_key=IO_MANAGER_KEY,
            check_specs=check_specs(
                key,
                spec.level,
                options.error_rate_threshold,
                level_partitions(spec.level, options.shard_count),
            ),
            automation_condition=(
                level_condition(is_map=spec.is_map, cron=options.backfill_cron)
                if options.automation
                else None
            ),
        )


def _run_options(pipeline: PipelineDefinition, options: AssetOptions) -> RunOptions:
    return RunOptions(
        max_workers=options.max_workers or pipeline.default_max_workers,
        batch_size=options.batch_size,
        max_failures=options.max_failures,
        progress=False,
    )


def build_map_asset(
    pipeline: PipelineDefinition, options: AssetOptions = AssetOptions()
) -> dg.AssetsDefinition:
    """The trace level's asset: map the traces of its partitions not yet stored."""
    spec = pipeline.level(EntityLevel.TRACE)
    key = level_key(pipeline, spec.level)
    run_options = _run_options(pipeline, options)

    def prepare(kestrel: KestrelResource) -> Callable[[Store, BucketClock], None]:
        def register(store: Store, clock: BucketClock) -> None:
            pipeline.check_pip_install()  # as pipeline.run(mode="local") does
            with clock("register"):
                kestrel.register(pipeline, store)

        return register

    def compute(
        store: Store, scope: Scope, clock: BucketClock, summary: dict[str, Any]
    ) -> tuple[list[MetadataOutput], int]:
        mapped = map_scope(
            pipeline,
            scope,
            store=store,
            options=run_options,
            outputs=Outputs.WRITE_AND_RETURN,  # the op's checks read them
            clock=clock,
            summary=summary,
        )
        return mapped.outputs, mapped.computed

    def checks(store: Store, scopes: Sequence[Scope], outputs: list[MetadataOutput]) -> OpChecks:
        return _op_checks(
            store, pipeline, spec, key, options, outputs, tally_complete(store, scopes, outputs)
        )

    def materialize(
        context: dg.AssetExecutionContext,
        clickhouse: ClickHouseResource,
        kestrel: KestrelResource,
    ) -> Iterator[dg.Output[LevelResult] | dg.AssetCheckResult | dg.AssetCheckEvaluation]:
        yield from _run_op(
            context,
            clickhouse,
            pipeline,
            spec,
            options.shard_count,
            compute,
            checks,
            prepare(kestrel),
        )

    materialize.__name__ = f"{pipeline.judge}__{spec.level.value}"
    return _asset_decorator(pipeline, spec, options)(materialize)


def build_reduce_asset(
    pipeline: PipelineDefinition, spec: LevelSpec, options: AssetOptions = AssetOptions()
) -> dg.AssetsDefinition:
    """A reduce level's asset: reduce its partitions' scope from the stored level below."""
    key = level_key(pipeline, spec.level)
    below = pipeline.below(spec.level)
    run_options = _run_options(pipeline, options)

    def materialize(
        context: dg.AssetExecutionContext,
        clickhouse: ClickHouseResource,
        children: LevelInput,
    ) -> Iterator[dg.Output[LevelResult] | dg.AssetCheckResult | dg.AssetCheckEvaluation]:
        def compute(
            store: Store, scope: Scope, clock: BucketClock, summary: dict[str, Any]
        ) -> tuple[list[MetadataOutput], int]:
            loaded = children.by_run.get(scope.run_id, [])
            with clock("load"):
                gap = missing_entities(
                    store, pipeline, below.level, scope, present={e.entity_id for e in loaded}
                )
            if not gap.complete:
                raise incomplete_failure(pipeline, spec.level, gap, options.shard_count)
            errors = [(e.entity_id, e.error) for e in loaded if not e.ok]
            if loaded and len(errors) / len(loaded) > options.error_rate_threshold:
                raise failed_below_failure(
                    pipeline,
                    spec.level,
                    below.level,
                    scope.run_id,
                    errors,
                    len(loaded),
                    options.error_rate_threshold,
                )
            stored = outputs_from_stored(
                loaded, pipeline.result_key(scope.run_id, below.level), below.schema
            )
            outputs = reduce_scope(
                pipeline, store, spec.level, scope, stored, options=run_options, clock=clock
            )
            return outputs, len(outputs)

        def checks(
            store: Store, scopes: Sequence[Scope], outputs: list[MetadataOutput]
        ) -> OpChecks:
            return _op_checks(store, pipeline, spec, key, options, outputs)

        yield from _run_op(
            context, clickhouse, pipeline, spec, options.shard_count, compute, checks
        )

    materialize.__name__ = f"{pipeline.judge}__{spec.level.value}"
    return _asset_decorator(pipeline, spec, options)(materialize)


def _op_checks(
    store: Store,
    pipeline: PipelineDefinition,
    spec: LevelSpec,
    key: dg.AssetKey,
    options: AssetOptions,
    outputs: Sequence[MetadataOutput],
    complete: CompleteTally | None = None,
) -> OpChecks:
    return OpChecks(
        key=key,
        threshold=options.error_rate_threshold,
        schema_name=spec.schema.__name__,
        outputs=outputs,
        schema=tally_schema(store, pipeline, spec.level, outputs),
        complete=complete,
    )


@dataclass(frozen=True)
class PipelineAssets:
    """The level assets of one pipeline, bottom-up."""

    pipeline: PipelineDefinition
    assets: list[dg.AssetsDefinition] = field(default_factory=list)

    @property
    def keys(self) -> list[dg.AssetKey]:
        return [level_key(self.pipeline, spec.level) for spec in self.pipeline.levels]

    @property
    def trace_key(self) -> dg.AssetKey:
        """The map level's key: what the discovery sensor requests for a new run."""
        return level_key(self.pipeline, EntityLevel.TRACE)


def build_pipeline_assets(
    pipeline: PipelineDefinition,
    *,
    shard_count: int = DEFAULT_SHARD_COUNT,
    error_rate_threshold: float = DEFAULT_ERROR_RATE_THRESHOLD,
    backfill_cron: str = DEFAULT_BACKFILL_CRON,
    automation: bool = True,
    max_workers: int | None = None,
    batch_size: int = 1000,
    max_failures: int | float | None = None,
) -> PipelineAssets:
    """One asset per level of ``pipeline`` (see :class:`AssetOptions` for the knobs)."""
    options = AssetOptions(
        shard_count=shard_count,
        error_rate_threshold=error_rate_threshold,
        max_workers=max_workers,
        batch_size=batch_size,
        max_failures=max_failures,
        automation=automation,
        backfill_cron=backfill_cron,
    )
    return PipelineAssets(
        pipeline,
        [build_map_asset(pipeline, options)]
        + [build_reduce_asset(pipeline, spec, options) for spec in pipeline.levels[1:]],
    )
