"""Helpers of the Dagster tests: definitions with 4 shards, materializations, stored status.

Level assets are built with 4 shards (not 64) to keep each materialization small; everything
else is the production code path: real chDB, a real Dagster instance, real materializations.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import dagster as dg

from manta_dagster.definitions import build_definitions
from manta_dagster.partitions import RUNS_PARTITIONS_NAME, shard_key
from manta_lib.models import EntityLevel
from manta_lib.pipeline.computation import MapReduceComputation
from manta_lib.store import Store
from manta_lib.store.metadata import load_status

SHARDS = 4
DEMO_TRACES = 300
RUN_ID = "run_grpo_math_v1"  # 105 of the 300 demo traces, 4 steps


@dataclass(frozen=True)
class Demo:
    """The seeded demo data: run ids and trace counts."""

    runs: dict[str, int]

    @property
    def run_ids(self) -> list[str]:
        return sorted(self.runs)


def build(pipelines: Iterable[MapReduceComputation], **kwargs: object) -> dg.Definitions:
    """Definitions for ``pipelines`` with 4 shards and no wall-time asset."""
    return build_definitions(
        list(pipelines),
        shard_count=SHARDS,
        include_wall_time=False,
        **kwargs,  # type: ignore[arg-type]
    )


def all_shards(run_id: str) -> dict[str, str]:
    """Run tags materializing every shard of ``run_id`` as one run (a partition range)."""
    return {
        "dagster/asset_partition_range_start": f"{run_id}|{shard_key(0, SHARDS)}",
        "dagster/asset_partition_range_end": f"{run_id}|{shard_key(SHARDS - 1, SHARDS)}",
    }


def materialize(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    keys: Sequence[dg.AssetKey],
    *,
    partition_key: str | None = None,
    tags: dict[str, str] | None = None,
    raise_on_error: bool = True,
) -> dg.ExecuteInProcessResult:
    """Materialize ``keys`` of ``defs`` in-process with its resources."""
    return dg.materialize(
        list(defs.assets or []),  # type: ignore[arg-type]
        instance=instance,
        resources=defs.resources,
        selection=list(keys),
        partition_key=partition_key,
        tags=tags,
        raise_on_error=raise_on_error,
    )


def register(instance: dg.DagsterInstance, *run_ids: str) -> None:
    instance.add_dynamic_partitions(RUNS_PARTITIONS_NAME, list(run_ids))


def stored_status(
    store: Store, pipeline: MapReduceComputation, level: EntityLevel, run_id: str
) -> dict[str, bool]:
    """``{entity_id: ok}`` stored in entity_metadata for the pipeline's current version."""
    return load_status(store, pipeline.result_key(run_id, level))


def metadata_values(event: dg.AssetMaterialization | dg.AssetCheckEvaluation) -> dict[str, object]:
    return {k: getattr(v, "value", v) for k, v in event.metadata.items()}
