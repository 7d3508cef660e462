"""Which datapoint hash shard each trace of a run falls into (the Dagster partition layout)."""

from __future__ import annotations

from manta_lib.store.client import Store
from manta_lib.store.trace_queries import SHARD_EXPR


def trace_shards(store: Store, run_id: str, shard_count: int) -> dict[str, int]:
    """``{trace_id: shard}`` for every trace of ``run_id``, the shard being
    ``cityHash64(datapoint_id) % shard_count`` as the partitioned queries compute it."""
    rows = store.rows(
        f"SELECT trace_id, {SHARD_EXPR} FROM {{db}}.traces WHERE run_id = {{run_id:String}}",
        {"run_id": run_id, "f_shard_count": shard_count},
    )
    return {str(trace_id): int(shard) for trace_id, shard in rows}
