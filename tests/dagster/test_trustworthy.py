"""No green result from partial data: reduces refuse an incomplete lower level, checks and
metadata describe each partition, and results computed outside Dagster show up in it.

Real chDB with 300 demo traces, a real ephemeral Dagster instance, 4 shards per run.
"""

from __future__ import annotations

import dagster as dg

from examples import tool_errors
from manta_dagster.assets import level_key
from manta_dagster.partitions import shard_key
from manta_lib.models import EntityLevel
from manta_lib.pipeline import missing_entities, plan_scope
from manta_lib.settings import MantaSettings
from manta_lib.store import Store
from tests.dagster.helpers import (
    RUN_ID,
    SHARDS,
    Demo,
    build,
    materialize,
    register,
    stored_status,
)

TRACE, DATAPOINT, STEP = EntityLevel.TRACE, EntityLevel.DATAPOINT, EntityLevel.STEP
PIPELINE = tool_errors.pipeline


def _failure_message(result: dg.ExecuteInProcessResult) -> str:
    failures = [e for e in result.all_events if e.is_step_failure]
    assert failures, "the step did not fail"
    data = failures[0].step_failure_data
    assert data is not None and data.error is not None
    return data.error.message


def test_a_reduce_over_a_partial_lower_level_fails_naming_the_gap_and_the_fix(
    store: Store, demo: Demo, instance: dg.DagsterInstance, settings: MantaSettings
) -> None:
    defs = build([PIPELINE])
    register(instance, RUN_ID)
    trace, datapoint, step = (level_key(PIPELINE, lvl) for lvl in (TRACE, DATAPOINT, STEP))
    one_shard = f"{RUN_ID}|{shard_key(0, SHARDS)}"
    materialize(defs, instance, [trace, datapoint], partition_key=one_shard)

    result = materialize(defs, instance, [step], partition_key=RUN_ID, raise_on_error=False)

    assert not result.success
    assert not [e for e in result.get_asset_materialization_events()]
    message = _failure_message(result)
    expected_missing = missing_entities(
        store, PIPELINE, DATAPOINT, plan_scope(store, RUN_ID, shard_count=SHARDS)
    )
    assert expected_missing.shards and 0 not in expected_missing.shards
    assert f"{len(expected_missing.missing):,} of {expected_missing.expected:,}" in message
    assert ", ".join(f"{RUN_ID}|{shard_key(s, SHARDS)}" for s in expected_missing.shards) in message
    assert (
        "dagster asset materialize -m manta_dagster --select tool_errors/trace,"
        f"tool_errors/datapoint --partition-range '{RUN_ID}|00...{RUN_ID}|03'" in message
    )
    assert not stored_status(store, PIPELINE, STEP, RUN_ID)  # nothing written for the step

    # In library mode the run maps what is missing before it reduces: nothing is left out.
    PIPELINE.run(RUN_ID, mode="local", settings=settings, progress=False)
    full = plan_scope(store, RUN_ID, shard_count=SHARDS)
    assert missing_entities(store, PIPELINE, TRACE, full).complete
    assert missing_entities(store, PIPELINE, DATAPOINT, full).complete
    assert len(stored_status(store, PIPELINE, TRACE, RUN_ID)) == demo.runs[RUN_ID]
