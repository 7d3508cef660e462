"""Run discovery: new run ids in ClickHouse become partitions, new and growing runs are requested.

Each tick (in the code server) opens the store, runs one ``GROUP BY run_id`` count over
``traces`` and closes the store again. The cursor maps each run id to the trace count it was
last requested (or first seen) with:

- a run id without a partition is added to the ``manta_runs`` dynamic partitions and its trace
  level (every pipeline, every shard) is requested as one run (a partition key range);
- a run whose trace count grew since it was last requested is requested again (the
  materialization maps only the new traces: the rest is already in entity_metadata);
- a run that already had a partition when the sensor first saw it (registered by
  ``manta dagster register-runs``) is only recorded: the nightly automation backfills it.

The run key is ``<run_id>@<trace count>``, so a run is requested once per size it reaches.
With the embedded store a running materialization holds the store: the tick is skipped.
"""

import json
from collections.abc import Sequence

import dagster as dg

from manta_dagster.automation import sensors_default_status
from manta_dagster.partitions import (
    DEFAULT_SHARD_COUNT,
    RUN_PARTITIONS,
    RUNS_PARTITIONS_NAME,
    is_valid_run_id,
    run_key_range,
)
from manta_dagster.resources import ClickHouseResource
from manta_lib import StoreUnavailableError
from manta_lib.store import Store

DISCOVERY_SENSOR_NAME = "manta_run_discovery"


def run_trace_counts(store: Store) -> dict[str, int]:
    """``{run_id: trace count}`` of every run in ``traces`` (one aggregate query)."""
    rows = store.rows("SELECT run_id, count() FROM {db}.traces GROUP BY run_id")
    return {str(run_id): int(count) for run_id, count in rows}


def run_request(
    run_id: str, trace_count: int, trace_keys: Sequence[dg.AssetKey], shard_count: int
) -> dg.RunRequest:
    """One run materializing every shard of ``run_id`` for the given trace-level assets."""
    keys = run_key_range(run_id, shard_count)
    return dg.RunRequest(
        run_key=f"{run_id}@{trace_count}",
        asset_selection=list(trace_keys),
        tags={
            "dagster/asset_partition_range_start": keys.start,
            "dagster/asset_partition_range_end": keys.end,
            "manta/run_id": run_id,
            "manta/trace_count": str(trace_count),
        },
    )


def build_run_discovery_sensor(
    trace_keys: Sequence[dg.AssetKey],
    *,
    shard_count: int = DEFAULT_SHARD_COUNT,
    name: str = DISCOVERY_SENSOR_NAME,
    minimum_interval_seconds: int = 60,
) -> dg.SensorDefinition:
    """The discovery sensor for the trace levels ``trace_keys`` (all with ``shard_count``)."""

    @dg.sensor(
        name=name,
        asset_selection=list(trace_keys),
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=sensors_default_status(),
        description="Adds run ids found in ClickHouse `traces` as partitions and requests the "
        "trace level of new runs and of runs that grew.",
    )
    def discover_runs(
        context: dg.SensorEvaluationContext, clickhouse: ClickHouseResource
    ) -> dg.SensorResult | dg.SkipReason:
        try:
            with clickhouse.open() as store:
                counts = run_trace_counts(store)
        except StoreUnavailableError as exc:
            return dg.SkipReason(f"ClickHouse is unavailable (a run holds the store?): {exc}")
        cursor: dict[str, int] = json.loads(context.cursor) if context.cursor else {}
        known = set(context.instance.get_dynamic_partitions(RUNS_PARTITIONS_NAME))
        new, grown, invalid = [], [], []
        for run_id in sorted(counts):
            count = counts[run_id]
            if not is_valid_run_id(run_id):
                invalid.append(run_id)
            elif run_id not in known:
                new.append(run_id)
            elif run_id not in cursor:
                cursor[run_id] = count  # registered elsewhere: baseline only
            elif count > cursor[run_id]:
                grown.append(run_id)
        if invalid:
            context.log.warning(
                "run ids that cannot be partition keys (contain | , ... [ ] *): %s",
                ", ".join(invalid),
            )
        requests = []
        for run_id in new + grown:
            cursor[run_id] = counts[run_id]
            requests.append(run_request(run_id, counts[run_id], trace_keys, shard_count))
        if new or grown:
            context.log.info("new runs: %s; grown runs: %s", new or "none", grown or "none")
        return dg.SensorResult(
            run_requests=requests,
            dynamic_partitions_requests=[RUN_PARTITIONS.build_add_request(new)] if new else [],
            cursor=json.dumps(cursor, sort_keys=True),
            skip_reason=None if requests else f"no new or grown runs among {len(counts)}",
        )

    return discover_runs
