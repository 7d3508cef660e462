"""Queries behind the Dagster partition layout: each trace's datapoint hash shard, and how many
outcomes each judge has stored per level and run (a cheap change detector)."""

from __future__ import annotations

from collections.abc import Mapping

from manta_lib.store.client import Store
from manta_lib.store.metadata import STATUS_COLUMN
from manta_lib.store.trace_queries import SHARD_EXPR


def trace_shards(store: Store, run_id: str, shard_count: int) -> dict[str, int]:
    """``{trace_id: shard}`` for every trace of ``run_id``, the shard being
    ``cityHash64(datapoint_id) % shard_count`` as the partitioned queries compute it."""
    rows = store.rows(
        f"SELECT trace_id, {SHARD_EXPR} FROM {{db}}.traces WHERE run_id = {{run_id:String}}",
        {"run_id": run_id, "f_shard_count": shard_count},
    )
    return {str(trace_id): int(shard) for trace_id, shard in rows}


def stored_outcome_counts(
    store: Store, versions: Mapping[str, str]
) -> dict[tuple[str, str, str], int]:
    """``{(judge, level, run_id): outcome rows}`` stored for each judge's version in
    ``versions`` (``{judge: judge_version}``), in one aggregate query.

    Counted without ``FINAL`` (a rewritten entity may count twice until merged): a number that
    changes when anything is written, not the number of entities.
    """
    if not versions:
        return {}
    rows = store.rows(
        "SELECT judge, judge_version, entity_level, run_id, count() FROM {db}.entity_metadata "
        "WHERE column = {status:String} AND judge IN {judges:Array(String)} "
        "GROUP BY judge, judge_version, entity_level, run_id",
        {"status": STATUS_COLUMN, "judges": sorted(versions)},
    )
    return {
        (str(judge), str(level), str(run_id)): int(count)
        for judge, version, level, run_id, count in rows
        if versions.get(str(judge)) == version
    }


def occupied_shards(store: Store, shard_count: int) -> dict[str, tuple[int, frozenset[int]]]:
    """``{run_id: (trace count, shards holding at least one of its traces)}`` of every run, in
    one aggregate query over ``traces`` (the shard as :func:`trace_shards` computes it)."""
    rows = store.rows(
        f"SELECT run_id, count(), groupUniqArray({SHARD_EXPR}) FROM {{db}}.traces GROUP BY run_id",
        {"f_shard_count": shard_count},
    )
    return {
        str(run_id): (int(count), frozenset(int(s) for s in shards))
        for run_id, count, shards in rows
    }
