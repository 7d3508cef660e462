"""The entity_metadata IO manager: level outputs in, the level below out.

``handle_output`` receives a :class:`LevelResult` (the outputs a level asset computed for the
partition(s) of its op). The library wrote every one of them to ``entity_metadata`` as it
computed it (that is what makes a retried partition resume), so there is nothing left to store:
it reports the counts.

``load_input`` reads the level below for the downstream partition(s) from ``entity_metadata``,
in one query per run: the shards of the run for a datapoint level (selected inside the query
from the traces' datapoint hash), the whole run for step and run levels. Nothing is cached
between ops or Dagster runs.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from manta_dagster.partitions import DEFAULT_SHARD_COUNT, scopes_from_keys
from manta_dagster.resources import ClickHouseResource
from manta_lib import EntityLevel, MetadataOutput
from manta_lib.store import ResultKey, StoredEntity, load_entities

IO_MANAGER_KEY = "manta_io_manager"
"""The resource key of :class:`EntityMetadataIOManager` in the definitions."""

# Keys of the asset definition metadata the IO manager reads to know what a level stores.
META_JUDGE = "manta/judge"
META_PROJECT = "manta/project_id"
META_LEVEL = "manta/level"
META_VERSION = "manta/judge_version"
META_SHARDS = "manta/shard_count"


@dataclass
class LevelResult:
    """What a level asset returns: its outputs for the partition(s) of the op."""

    project_id: str
    judge: str
    judge_version: str
    level: EntityLevel
    outputs: list[MetadataOutput] = field(default_factory=list)


@dataclass
class LevelInput:
    """The stored outputs of the level below, per run, for a downstream op."""

    level: EntityLevel
    by_run: dict[str, list[StoredEntity]]


def _meta(metadata: Mapping[str, Any], key: str) -> Any:
    value = metadata[key]
    return getattr(value, "value", value)


class EntityMetadataIOManager(dg.ConfigurableIOManager):
    """Stores level outputs in ``entity_metadata`` and loads the level below for a reduce."""

    clickhouse: ClickHouseResource

    def handle_output(self, context: dg.OutputContext, obj: LevelResult | None) -> None:
        """Nothing to write (see the module docstring): log what the op stored."""
        if obj is None:
            return
        partitions = len(context.asset_partition_keys) if context.has_asset_partitions else 0
        context.log.debug(
            "%s/%s (%d partition(s)): %d entities in entity_metadata",
            obj.judge,
            obj.level.value,
            partitions,
            len(obj.outputs),
        )

    def load_input(self, context: dg.InputContext) -> LevelInput:
        upstream = context.upstream_output
        if upstream is None:
            raise dg.DagsterInvariantViolationError(
                "EntityMetadataIOManager loads level assets only (no upstream output)"
            )
        metadata = upstream.definition_metadata or {}
        level = EntityLevel(_meta(metadata, META_LEVEL))
        shard_count = int(_meta(metadata, META_SHARDS) or DEFAULT_SHARD_COUNT)
        keys = context.asset_partition_keys if context.has_asset_partitions else []
        by_run: dict[str, list[StoredEntity]] = {}
        with self.clickhouse.open() as store:
            for scope in scopes_from_keys(keys, shard_count):
                stored = ResultKey(
                    project_id=_meta(metadata, META_PROJECT),
                    run_id=scope.run_id,
                    judge=_meta(metadata, META_JUDGE),
                    level=level,
                    judge_version=_meta(metadata, META_VERSION),
                )
                by_run[scope.run_id] = load_entities(
                    store, stored, shards=scope.shards, shard_count=shard_count
                )
        context.log.debug(
            "loaded %s/%s for %d run(s): %d entities",
            _meta(metadata, META_JUDGE),
            level.value,
            len(by_run),
            sum(len(v) for v in by_run.values()),
        )
        return LevelInput(level, by_run)
