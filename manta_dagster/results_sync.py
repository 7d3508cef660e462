"""Results computed outside Dagster (``pipeline.run()``, the CLI, a notebook) as materialized
partitions: the results-sync sensor.

Each tick opens the store, counts the stored outcomes per (judge, level, run) for the current
judge versions in one aggregate query and closes the store again. Only the (judge, level, run)
whose count changed since the last tick (the cursor) are looked at: a partition is complete
when every entity of its level in it has an output or a recorded error
(:func:`manta_lib.pipeline.complete_shards` for ``run|shard`` partitions,
:func:`manta_lib.pipeline.missing_entities` for run partitions). Each complete partition whose
latest Dagster materialization is not of the current judge version (none, or an older one) gets
a runless :class:`~dagster.AssetMaterialization` with the judge version as its code version,
so it shows as materialized and up to date. A partition Dagster materialized itself already
has that code version and is not reported again.

Runs without a partition yet are left for the next tick (the discovery sensor or ``manta
dagster register-runs`` adds them). With the embedded store, a tick while a materialization
holds it is skipped.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import dagster as dg
from dagster._core.definitions.data_version import CODE_VERSION_TAG
from dagster._core.events import DagsterEventType

from manta_dagster.automation import sensors_default_status
from manta_dagster.partitions import (
    DEFAULT_SHARD_COUNT,
    RUNS_PARTITIONS_NAME,
    SHARDED_LEVELS,
    shard_key,
)
from manta_dagster.resources import ClickHouseResource
from manta_lib import EntityLevel, StoreUnavailableError
from manta_lib.explorer.links import results_url
from manta_lib.pipeline import (
    PipelineDefinition,
    Scope,
    complete_shards,
    missing_entities,
    plan_scope,
)
from manta_lib.store import Store
from manta_lib.store.partition_queries import stored_outcome_counts

SYNC_SENSOR_NAME = "manta_results_sync"
SOURCE = "outside Dagster (pipeline.run, CLI or notebook), found by the results-sync sensor"


def complete_partitions(
    store: Store, pipeline: PipelineDefinition, level: EntityLevel, scope: Scope
) -> list[str]:
    """The partitions of ``level``'s asset for ``scope``'s run holding a full result."""
    if level in SHARDED_LEVELS:
        return [
            dg.MultiPartitionKey({"run": scope.run_id, "shard": shard_key(s, scope.shard_count)})
            for s in complete_shards(store, pipeline, level, scope)
        ]
    gap = missing_entities(store, pipeline, level, scope)
    return [scope.run_id] if gap.expected and gap.complete else []


def _unreported(
    instance: dg.DagsterInstance, key: dg.AssetKey, partitions: Sequence[str], version: str
) -> list[str]:
    """``partitions`` whose latest materialization is not of code version ``version``."""
    if not partitions:
        return []
    latest = instance.event_log_storage.get_latest_storage_id_by_partition(
        key, DagsterEventType.ASSET_MATERIALIZATION, {str(p) for p in partitions}
    )
    versions: dict[str, str | None] = {}
    if latest:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, storage_ids=list(latest.values())),
            limit=len(latest),
        ).records
        for record in records:
            event = record.asset_materialization
            if event is not None and event.partition is not None:
                versions[str(event.partition)] = (event.tags or {}).get(CODE_VERSION_TAG)
    return [p for p in partitions if versions.get(str(p)) != version]


def build_results_sync_sensor(
    pipelines: Sequence[PipelineDefinition],
    *,
    shard_count: int = DEFAULT_SHARD_COUNT,
    name: str = SYNC_SENSOR_NAME,
    minimum_interval_seconds: int = 120,
) -> dg.SensorDefinition:
    """The results-sync sensor for ``pipelines`` (level assets with ``shard_count`` shards)."""
    by_judge = {p.judge: p for p in pipelines}

    @dg.sensor(
        name=name,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=sensors_default_status(),
        description="Reports partitions whose results were computed outside Dagster "
        "(pipeline.run, CLI, notebook) as materialized, for the current judge version.",
    )
    def sync_results(
        context: dg.SensorEvaluationContext, clickhouse: ClickHouseResource
    ) -> dg.SensorResult | dg.SkipReason:
        cursor: dict[str, int] = json.loads(context.cursor) if context.cursor else {}
        known = set(context.instance.get_dynamic_partitions(RUNS_PARTITIONS_NAME))
        events: list[dg.AssetMaterialization] = []
        try:
            with clickhouse.open() as store:
                counts = stored_outcome_counts(
                    store, {j: p.judge_version for j, p in by_judge.items()}
                )
                scopes: dict[str, Scope] = {}
                for (judge, level_name, run_id), count in sorted(counts.items()):
                    pipeline = by_judge[judge]
                    mark = f"{judge}@{pipeline.judge_version}|{level_name}|{run_id}"
                    levels = {spec.level.value for spec in pipeline.levels}
                    if cursor.get(mark) == count or run_id not in known or level_name not in levels:
                        continue
                    level = EntityLevel(level_name)
                    if run_id not in scopes:
                        scopes[run_id] = plan_scope(store, run_id, shard_count=shard_count)
                    key = dg.AssetKey([judge, level_name])
                    partitions = complete_partitions(store, pipeline, level, scopes[run_id])
                    for partition in _unreported(
                        context.instance, key, partitions, pipeline.judge_version
                    ):
                        _, sep, shard_part = str(partition).rpartition("|")
                        shard = shard_part if sep else None
                        events.append(
                            dg.AssetMaterialization(
                                asset_key=key,
                                partition=partition,
                                tags={CODE_VERSION_TAG: pipeline.judge_version},
                                metadata={
                                    "judge_version": pipeline.judge_version,
                                    "computed": SOURCE,
                                    "explorer": dg.MetadataValue.url(
                                        results_url(judge, run_id, level_name, shard=shard)
                                    ),
                                },
                            )
                        )
                    cursor[mark] = count
        except StoreUnavailableError as exc:
            return dg.SkipReason(f"ClickHouse is unavailable (a run holds the store?): {exc}")
        if events:
            context.log.info("reporting %d partition(s) computed outside Dagster", len(events))
        return dg.SensorResult(
            asset_events=events,
            cursor=json.dumps(cursor, sort_keys=True),
            skip_reason=None if events else "no new results computed outside Dagster",
        )

    return sync_results
