"""Which entities of a level are missing in a scope: what an aggregate above it would miss.

A reduce over a scope whose lower level is incomplete would compute a normal-looking result
from part of the data. :func:`missing_entities` says, before any reduce work, which entities
of the level below have no stored outcome (neither an output nor a recorded error) for the
judge version, and in which datapoint hash shards they are, so an orchestrator can refuse the
reduce and name what fills the gap. ``pipeline.run()`` never needs it: it maps every pending
trace of its scope before reducing.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass

from manta_lib.models import EntityLevel
from manta_lib.pipeline.definition import PipelineDefinition
from manta_lib.pipeline.planner import Scope, TraceRef, entity_ids
from manta_lib.pipeline.resume import ID_FILTER_LIMIT
from manta_lib.store.client import Store
from manta_lib.store.metadata import load_status
from manta_lib.store.partition_queries import trace_shards


@dataclass(frozen=True)
class MissingEntities:
    """The entities of ``level`` in a scope without a stored outcome.

    Attributes:
        level: the level looked at (the one below the reduce).
        run_id: the scope's run.
        expected: how many entities of ``level`` the scope has.
        missing: ids of those without an output or a recorded error, in scope order.
        shards: the datapoint hash shards (out of the scope's ``shard_count``) holding traces
            of a missing entity, ascending; empty when nothing is missing.
    """

    level: EntityLevel
    run_id: str
    expected: int
    missing: list[str]
    shards: list[int]

    @property
    def complete(self) -> bool:
        """Whether every entity of the level has an outcome."""
        return not self.missing


def missing_entities(
    store: Store,
    pipeline: PipelineDefinition,
    level: EntityLevel,
    scope: Scope,
    *,
    present: Collection[str] | None = None,
) -> MissingEntities:
    """The entities of ``level`` in ``scope`` without a stored outcome for the pipeline's
    judge version.

    ``present`` (the ids already loaded by the caller, e.g. the children it is about to
    reduce) saves the status query. The shards of the missing entities cost one query over the
    run's traces, and only when something is missing.
    """
    expected = _level_ids(level, scope)
    if present is None:
        present = load_status(
            store,
            pipeline.result_key(scope.run_id, level),
            None if len(expected) > ID_FILTER_LIMIT else expected,
        ).keys()
    have = present if isinstance(present, set | frozenset) else set(present)
    missing = [entity_id for entity_id in expected if entity_id not in have]
    shards: list[int] = []
    if missing:
        wanted = set(missing)
        shards = [
            shard
            for shard, ids in entities_by_shard(store, level, scope).items()
            if wanted.intersection(ids)
        ]
    return MissingEntities(level, scope.run_id, len(expected), missing, shards)


def _level_ids(level: EntityLevel, scope: Scope) -> list[str]:
    return entity_ids(level, scope.refs, scope.run_id)


def complete_shards(
    store: Store, pipeline: PipelineDefinition, level: EntityLevel, scope: Scope
) -> list[int]:
    """The shards (of ``scope.shard_count``, ascending) in which every entity of ``level`` has a
    stored outcome for the pipeline's judge version; a shard without traces counts as
    complete. For a trace or datapoint level of a whole-run ``scope``: which Dagster
    partitions ``run|shard`` hold a full result."""
    stored = load_status(store, pipeline.result_key(scope.run_id, level))
    by_shard = entities_by_shard(store, level, scope)
    return [
        shard
        for shard in range(scope.shard_count)
        if all(entity_id in stored for entity_id in by_shard.get(shard, []))
    ]


def entities_by_shard(store: Store, level: EntityLevel, scope: Scope) -> dict[int, list[str]]:
    """``{shard: [ids of level's entities with traces in that shard]}`` for ``scope``, shards
    ascending (out of ``scope.shard_count``): one query over the run's traces.

    A trace or datapoint entity lies in exactly one shard; an entity spanning datapoints (a
    step) is listed under every shard holding one of its traces.
    """
    shard_of = trace_shards(store, scope.run_id, scope.shard_count)
    by_shard: dict[int, list[TraceRef]] = defaultdict(list)
    for ref in scope.refs:
        shard = shard_of.get(ref.trace_id)
        if shard is not None:
            by_shard[shard].append(ref)
    return {shard: entity_ids(level, by_shard[shard], scope.run_id) for shard in sorted(by_shard)}
