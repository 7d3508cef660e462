"""Results computed outside Dagster (``pipeline.run()``, the CLI, a notebook) and empty shards
as materialized partitions: the results-sync sensor, RUNNING by default (it only reads the
store and records events; the sensors that launch runs stay opt-in).

Each tick opens the store, counts the stored outcomes per (judge, level, run) for the current
judge versions and the traces per run and shard, in two aggregate queries, and closes the
store again. Only what changed since the last tick (the cursor) is looked at:

- a ``run|shard`` partition that holds no trace of its run (no datapoint of the run hashes to
  that shard) is reported once per judge version as materialized and **empty** (metadata
  ``entities`` 0 and ``empty`` saying why), so it never shows as missing work;
- a partition holding traces is complete when every entity of its level in it has an output
  or a recorded error (:func:`manta_lib.pipeline.complete_shards` for ``run|shard``
  partitions, :func:`manta_lib.pipeline.missing_entities` for run partitions).

Each such partition whose latest Dagster materialization is not of the current judge version
(none, or an older one) gets a runless :class:`~dagster.AssetMaterialization` with the judge
version as its code version, so it shows as materialized and up to date. A partition Dagster
materialized itself already has that code version and is not reported again.
The first tick runs as soon as the daemon starts (``make ui``, ``dagster dev``), so Dagster
agrees with the store within about a minute, with no one switching anything on.

Runs without a partition yet are left for the next tick (the discovery sensor or ``manta
dagster register-runs`` adds them). With the embedded store, a tick while another process
holds it is skipped.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence

import dagster as dg
from dagster._core.definitions.data_version import CODE_VERSION_TAG
from dagster._core.events import DagsterEventType

from manta_dagster.partitions import (
    DEFAULT_SHARD_COUNT,
    RUNS_PARTITIONS_NAME,
    SHARDED_LEVELS,
    shard_key,
)
from manta_dagster.resources import ClickHouseResource
from manta_dagster.ui_links import explorer_base
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
from manta_lib.store.partition_queries import occupied_shards, stored_outcome_counts

SYNC_SENSOR_NAME = "manta_results_sync"
SOURCE = "outside Dagster (pipeline.run, CLI or notebook), found by the results-sync sensor"


def complete_partitions(
    store: Store,
    pipeline: PipelineDefinition,
    level: EntityLevel,
    scope: Scope,
    occupied: frozenset[int] | None = None,
) -> list[str]:
    """The partitions of ``level``'s asset for ``scope``'s run holding a full result (among
    the ``occupied`` shards only, when given: the empty ones are reported apart)."""
    if level in SHARDED_LEVELS:
        return [
            dg.MultiPartitionKey({"run": scope.run_id, "shard": shard_key(s, scope.shard_count)})
            for s in complete_shards(store, pipeline, level, scope)
            if occupied is None or s in occupied
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


def _event(
    key: dg.AssetKey, partition: str, version: str, metadata: dict[str, object]
) -> dg.AssetMaterialization:
    return dg.AssetMaterialization(
        asset_key=key,
        partition=partition,
        tags={CODE_VERSION_TAG: version},
        metadata={"judge_version": version, **metadata},  # type: ignore[dict-item]
    )


def _empty_shard_events(
    instance: dg.DagsterInstance,
    pipelines: Sequence[PipelineDefinition],
    occupancy: Mapping[str, tuple[int, frozenset[int]]],
    runs: Iterable[str],
    shard_count: int,
    cursor: dict[str, int],
) -> list[dg.AssetMaterialization]:
    """Shards of ``runs`` holding none of their traces, as done-and-empty partitions (the
    cursor keeps each run's empty shards as a bit mask: only a change is looked at)."""
    events: list[dg.AssetMaterialization] = []
    for run_id in sorted(runs):
        occupied = occupancy[run_id][1]
        empty = [s for s in range(shard_count) if s not in occupied]
        mask = sum(1 << s for s in empty)
        for pipeline in pipelines:
            for level in (spec.level for spec in pipeline.levels if spec.level in SHARDED_LEVELS):
                mark = f"{pipeline.judge}@{pipeline.judge_version}|{level.value}|{run_id}|empty"
                if cursor.get(mark) == mask:
                    continue
                key = dg.AssetKey([pipeline.judge, level.value])
                keys = [
                    dg.MultiPartitionKey({"run": run_id, "shard": shard_key(s, shard_count)})
                    for s in empty
                ]
                for partition in _unreported(instance, key, keys, pipeline.judge_version):
                    shard = str(partition).rpartition("|")[2]
                    events.append(
                        _event(
                            key,
                            partition,
                            pipeline.judge_version,
                            {
                                "entities": 0,
                                "empty": f"no trace of {run_id} is in shard {shard} (no "
                                f"datapoint of it hashes there): nothing to compute",
                            },
                        )
                    )
                cursor[mark] = mask
    return events


def sync_events(
    store: Store,
    instance: dg.DagsterInstance,
    pipelines: Sequence[PipelineDefinition],
    *,
    shard_count: int = DEFAULT_SHARD_COUNT,
    cursor: dict[str, int] | None = None,
) -> list[dg.AssetMaterialization]:
    """The materializations Dagster lacks for what ``store`` holds: empty shards and complete
    partitions of the current judge versions, for the runs registered in ``instance``.

    ``cursor`` (``{mark: count}``, updated in place) skips what did not change since it was
    filled; without one everything is looked at (events are still never reported twice).
    """
    cursor = {} if cursor is None else cursor
    by_judge = {p.judge: p for p in pipelines}
    known = set(instance.get_dynamic_partitions(RUNS_PARTITIONS_NAME))
    occupancy = occupied_shards(store, shard_count)
    events = _empty_shard_events(
        instance, pipelines, occupancy, known & set(occupancy), shard_count, cursor
    )
    counts = stored_outcome_counts(store, {j: p.judge_version for j, p in by_judge.items()})
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
        occupied = occupancy.get(run_id, (0, frozenset()))[1]
        partitions = complete_partitions(store, pipeline, level, scopes[run_id], occupied)
        for partition in _unreported(instance, key, partitions, pipeline.judge_version):
            _, sep, shard_part = str(partition).rpartition("|")
            link = results_url(
                judge, run_id, level_name, shard=shard_part if sep else None, base=explorer_base()
            )
            metadata = {"computed": SOURCE, "explorer": dg.MetadataValue.url(link)}
            events.append(_event(key, partition, pipeline.judge_version, metadata))
        cursor[mark] = count
    return events


def build_results_sync_sensor(
    pipelines: Sequence[PipelineDefinition],
    *,
    shard_count: int = DEFAULT_SHARD_COUNT,
    name: str = SYNC_SENSOR_NAME,
    minimum_interval_seconds: int = 60,
) -> dg.SensorDefinition:
    """The results-sync sensor for ``pipelines`` (level assets with ``shard_count`` shards);
    RUNNING by default: it launches nothing."""

    @dg.sensor(
        name=name,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Reports partitions whose results were computed outside Dagster "
        "(pipeline.run, CLI, notebook) and shards holding no trace as materialized, for the "
        "current judge version. Read-only: it launches no run.",
    )
    def sync_results(
        context: dg.SensorEvaluationContext, clickhouse: ClickHouseResource
    ) -> dg.SensorResult | dg.SkipReason:
        cursor: dict[str, int] = json.loads(context.cursor) if context.cursor else {}
        try:
            with clickhouse.open() as store:
                events = sync_events(
                    store, context.instance, pipelines, shard_count=shard_count, cursor=cursor
                )
        except StoreUnavailableError as exc:
            return dg.SkipReason(f"ClickHouse is unavailable (a run holds the store?): {exc}")
        if events:
            context.log.info("reporting %d partition(s) found in the store", len(events))
        return dg.SensorResult(
            asset_events=events,
            cursor=json.dumps(cursor, sort_keys=True),
            skip_reason=None if events else "no new results or empty shards in the store",
        )

    return sync_results
