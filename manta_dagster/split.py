"""Which partition of an op each entity belongs to, so an op over a range reports per
partition.

A single-run backfill materializes many partitions in one op (``context.partition_keys``);
Dagster would attach the op's metadata and check results to all of them alike. The
:class:`PartitionSplit` of the op groups its outputs by partition: a trace or datapoint
entity by the datapoint hash shard of its traces (one query per run, through
:func:`manta_lib.pipeline.entities_by_shard`), a step or run entity by its run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from manta_dagster.partitions import SHARDED_LEVELS, shard_key
from manta_lib import EntityLevel, MetadataOutput
from manta_lib.pipeline import Scope, entities_by_shard
from manta_lib.store import Store


@dataclass(frozen=True)
class PartitionSplit:
    """The partition keys of an op and which of them each ``(run_id, entity_id)`` is in."""

    keys: list[str]
    sharded: bool
    _by_entity: dict[tuple[str, str], list[str]] = field(default_factory=dict)

    @property
    def is_range(self) -> bool:
        """Whether the op covers more than one partition."""
        return len(self.keys) > 1

    def partitions_of(self, run_id: str, entity_id: str) -> list[str]:
        """The op's partition keys holding this entity (none for an unknown entity)."""
        if len(self.keys) == 1:
            return self.keys
        if not self.sharded:
            return [k for k in self.keys if str(k) == run_id]
        return self._by_entity.get((run_id, entity_id), [])

    def group(self, outputs: Sequence[MetadataOutput]) -> dict[str, list[MetadataOutput]]:
        """``{partition key: its outputs}`` for every key of the op (empty lists kept)."""
        groups: dict[str, list[MetadataOutput]] = {key: [] for key in self.keys}
        for outcome in outputs:
            for key in self.partitions_of(outcome.run_id, outcome.entity_id):
                groups[key].append(outcome)
        return groups


def split_partitions(
    store: Store,
    level: EntityLevel,
    scopes: Sequence[Scope],
    keys: Sequence[str],
    shard_count: int,
) -> PartitionSplit:
    """The split of an op over ``keys`` (the op's partition keys, as Dagster gave them)."""
    sharded = level in SHARDED_LEVELS
    ordered = sorted(keys, key=str)
    if len(ordered) <= 1 or not sharded:
        return PartitionSplit(ordered, sharded)
    by_str = {str(k): k for k in ordered}
    by_entity: dict[tuple[str, str], list[str]] = {}
    for scope in scopes:
        for shard, ids in entities_by_shard(store, level, scope).items():
            key = by_str.get(f"{scope.run_id}|{shard_key(shard, shard_count)}")
            if key is None:
                continue
            for entity_id in ids:
                by_entity.setdefault((scope.run_id, entity_id), []).append(key)
    return PartitionSplit(ordered, sharded, by_entity)
