"""Partitions of the level assets: runs (dynamic) × datapoint hash shards (static).

A trace, datapoint or datapoint-across-steps partition is ``"<run_id>|<shard>"`` (dimensions
``run`` and ``shard``, Dagster orders them by name), e.g. ``run_grpo_math_v1|07``; a step or
run partition is the run id alone. The shard of a datapoint is ``cityHash64(datapoint_id) %
shard_count`` computed in ClickHouse (:data:`manta_lib.store.trace_queries.SHARD_EXPR`), so all
the traces of a datapoint fall into one shard and a datapoint reduce never needs another shard.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import dagster as dg

from manta_lib import EntityLevel

RUNS_PARTITIONS_NAME = "manta_runs"
DEFAULT_SHARD_COUNT = 64

SHARDED_LEVELS = (EntityLevel.TRACE, EntityLevel.DATAPOINT, EntityLevel.DATAPOINT_ACROSS_STEPS)
"""Levels partitioned ``run × shard``: their entities lie within one datapoint hash shard (a
trace, a datapoint's group at one step, a datapoint across steps). Step and run levels span
every shard of their run and are partitioned by run."""

RUN_PARTITIONS = dg.DynamicPartitionsDefinition(name=RUNS_PARTITIONS_NAME)
"""Every run id found in ClickHouse ``traces`` (added by the sensor or ``manta dagster
register-runs``); shared by all pipelines."""

# "|" separates the dimensions of a multi-partition key; the others break Dagster keys or the
# `--partition-range a...b` syntax.
_FORBIDDEN = ("|", "...", ",", "[", "]", "*", "\n", "\r", "\t", "\0")


def shard_key(shard: int, shard_count: int = DEFAULT_SHARD_COUNT) -> str:
    """The partition key of a shard, zero-padded (at least two digits) so keys sort like
    numbers: ``7`` → ``07`` for 64 shards, ``007`` for 1000."""
    width = max(2, len(str(shard_count - 1)))
    return f"{shard:0{width}d}"


def shard_partitions(shard_count: int = DEFAULT_SHARD_COUNT) -> dg.StaticPartitionsDefinition:
    """The fixed shard dimension: ``00`` … ``63`` for the default 64 shards."""
    if not 1 <= shard_count <= 1000:
        raise ValueError(f"shard_count must be between 1 and 1000, got {shard_count}")
    return dg.StaticPartitionsDefinition([shard_key(i, shard_count) for i in range(shard_count)])


def run_shard_partitions(shard_count: int = DEFAULT_SHARD_COUNT) -> dg.MultiPartitionsDefinition:
    """``run`` (dynamic run ids) × ``shard`` (datapoint hash shards) for trace/datapoint levels."""
    return dg.MultiPartitionsDefinition(
        {"run": RUN_PARTITIONS, "shard": shard_partitions(shard_count)}
    )


def is_valid_run_id(run_id: str) -> bool:
    """Whether ``run_id`` can be a Dagster partition key (no ``|``, ``...``, ``,`` …)."""
    return bool(run_id) and not any(bad in run_id for bad in _FORBIDDEN)


def run_key_range(run_id: str, shard_count: int = DEFAULT_SHARD_COUNT) -> dg.PartitionKeyRange:
    """Every shard of one run as a partition key range (``run|00...run|63``)."""
    return dg.PartitionKeyRange(
        start=f"{run_id}|{shard_key(0, shard_count)}",
        end=f"{run_id}|{shard_key(shard_count - 1, shard_count)}",
    )


@dataclass(frozen=True)
class RunScope:
    """What one run contributes to an op: its id and shards (``None`` = every shard)."""

    run_id: str
    shards: tuple[int, ...] | None


def scopes_from_keys(keys: Iterable[str], shard_count: int) -> list[RunScope]:
    """Group partition keys (multi ``run|shard`` or plain run ids, in any order) by run.

    A run whose every shard is present gets ``shards=None`` so queries skip the shard filter.
    """
    shards_by_run: dict[str, set[int] | None] = {}
    for key in keys:
        run_id, sep, shard = str(key).rpartition("|")
        if not sep:
            shards_by_run[str(key)] = None
            continue
        current = shards_by_run.setdefault(run_id, set())
        if current is not None:
            current.add(int(shard))
    scopes = []
    for run_id in sorted(shards_by_run):
        shards = shards_by_run[run_id]
        if shards is None or len(shards) == shard_count:
            scopes.append(RunScope(run_id, None))
        else:
            scopes.append(RunScope(run_id, tuple(sorted(shards))))
    return scopes
