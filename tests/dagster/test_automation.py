"""Code versions and declarative automation: staleness after a change, scheduled backfills.

The pipeline lives in a module written to a temporary directory, so "changing the analysis"
is what a user does: edit the module's source. The automation sensor is evaluated tick by tick
at frozen times (``dagster._core.test_utils.freeze_time``) with the same code the daemon runs.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._core.loader import LoadingContextForTest
from dagster._core.test_utils import freeze_time

from manta_dagster.assets import level_key
from manta_dagster.automation import AUTOMATION_SENSOR_NAME
from manta_dagster.partitions import shard_key
from manta_lib.models import EntityLevel
from manta_lib.pipeline.computation import MapReduceComputation
from manta_lib.store import Store
from tests.dagster.helpers import (
    RUN_ID,
    SHARDS,
    Demo,
    all_shards,
    build,
    materialize,
    register,
    stored_status,
)

# Real Dagster materializations over a seeded store: end to end (make test runs them).
pytestmark = pytest.mark.slow

SOURCE = '''
from pydantic import BaseModel

from manta import EntityLevel, MapReduceComputation


class Calls(BaseModel):
    tool_calls: int


class Count(BaseModel):
    traces: int


def offset() -> int:
    """A helper: changing it changes the results, so it changes the code version."""
    return {offset}


def map_trace(trace):
    return Calls(tool_calls=trace.tool_call_count + offset())


def reduce_children(entity, children):
    return Count(traces=len(children))


pipeline = (
    MapReduceComputation("Versioned judge", project_id="prj_test")
    .add_level(EntityLevel.TRACE, map_trace, Calls)
    .add_level(EntityLevel.DATAPOINT, reduce_children, Count)
    .add_level(EntityLevel.RUN, reduce_children, Count)
)
'''

LOWER = (EntityLevel.TRACE, EntityLevel.DATAPOINT)


@pytest.fixture
def write_pipeline(tmp_path: Path) -> Iterator[object]:
    """``write_pipeline(name, offset)`` imports a fresh module and returns its pipeline."""
    names: list[str] = []

    def write(name: str, offset: int) -> MapReduceComputation:
        path = tmp_path / f"{name}.py"
        path.write_text(SOURCE.format(offset=offset))
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        names.append(name)
        spec.loader.exec_module(module)
        return module.pipeline  # type: ignore[no-any-return]

    yield write
    for name in names:
        sys.modules.pop(name, None)


def _materialize_run(defs: dg.Definitions, instance: dg.DagsterInstance, pipeline: object) -> None:
    lower = [level_key(pipeline, level) for level in LOWER]  # type: ignore[arg-type]
    materialize(defs, instance, lower, tags=all_shards(RUN_ID))
    materialize(
        defs,
        instance,
        [level_key(pipeline, EntityLevel.RUN)],  # type: ignore[arg-type]
        partition_key=RUN_ID,
    )


def _partitions(pipeline: object) -> dict[dg.AssetKey, set[str]]:
    shards = {f"{RUN_ID}|{shard_key(i, SHARDS)}" for i in range(SHARDS)}
    return {
        level_key(pipeline, EntityLevel.TRACE): shards,  # type: ignore[arg-type]
        level_key(pipeline, EntityLevel.DATAPOINT): shards,  # type: ignore[arg-type]
        level_key(pipeline, EntityLevel.RUN): {RUN_ID},  # type: ignore[arg-type]
    }


def _statuses(
    defs: dg.Definitions, instance: dg.DagsterInstance, pipeline: object
) -> dict[tuple[str, str], StaleStatus]:
    """The stale status the UI shows for every partition of the run (same resolver)."""
    resolver = CachingStaleStatusResolver(
        instance,
        asset_graph=defs.resolve_asset_graph(),
        loading_context=LoadingContextForTest(instance),
    )
    return {
        (key.to_user_string(), partition): resolver.get_status(key, partition)
        for key, partitions in _partitions(pipeline).items()
        for partition in partitions
    }


def test_changing_a_helper_of_the_map_function_makes_every_level_stale(
    store: Store, demo: Demo, instance: dg.DagsterInstance, write_pipeline: object
) -> None:
    v1 = write_pipeline("versioned_judge_a", 0)  # type: ignore[operator]
    defs_v1 = build([v1])
    register(instance, RUN_ID)
    assert set(_statuses(defs_v1, instance, v1).values()) == {StaleStatus.MISSING}

    _materialize_run(defs_v1, instance, v1)
    assert set(_statuses(defs_v1, instance, v1).values()) == {StaleStatus.FRESH}

    v2 = write_pipeline("versioned_judge_b", 1)  # type: ignore[operator]
    assert v2.judge == v1.judge and v2.judge_version != v1.judge_version
    defs_v2 = build([v2])
    assert set(_statuses(defs_v2, instance, v2).values()) == {StaleStatus.STALE}
    resolver = CachingStaleStatusResolver(
        instance,
        asset_graph=defs_v2.resolve_asset_graph(),
        loading_context=LoadingContextForTest(instance),
    )
    causes = resolver.get_stale_causes(level_key(v2, EntityLevel.TRACE), f"{RUN_ID}|00")
    assert any("code version" in cause.reason for cause in causes)

    _materialize_run(defs_v2, instance, v2)
    assert set(_statuses(defs_v2, instance, v2).values()) == {StaleStatus.FRESH}
    assert len(stored_status(store, v2, EntityLevel.TRACE, RUN_ID)) == demo.runs[RUN_ID]


class _Ticks:
    """Evaluates the automation sensor of successive definitions, keeping its cursor."""

    def __init__(self, instance: dg.DagsterInstance) -> None:
        self.instance = instance
        self.cursor: str | None = None

    def __call__(self, defs: dg.Definitions, at: datetime) -> list[dg.RunRequest]:
        sensor = defs.resolve_sensor_def(AUTOMATION_SENSOR_NAME)
        with freeze_time(at):
            context = dg.build_sensor_context(
                instance=self.instance,
                cursor=self.cursor,
                repository_def=defs.get_repository_def(),
            )
            data = sensor.evaluate_tick(context)
        self.cursor = data.cursor
        return list(data.run_requests or [])


def _requested(requests: list[dg.RunRequest]) -> dict[dg.AssetKey, set[str]]:
    """Asset partitions of the backfill requests (each must be a backfill, not a run)."""
    requested: dict[dg.AssetKey, set[str]] = {}
    for request in requests:
        subset = request.asset_graph_subset
        assert subset is not None, "the automation sensor must emit backfills"
        for asset_partition in subset.iterate_asset_partitions():
            requested.setdefault(asset_partition.asset_key, set()).add(
                str(asset_partition.partition_key)
            )
    return requested


@pytest.mark.filterwarnings("ignore::dagster.BetaWarning")  # use_user_code_server, for the test
def test_automation_backfills_missing_then_stale_partitions_after_the_cron_tick(
    store: Store, demo: Demo, instance: dg.DagsterInstance, write_pipeline: object
) -> None:
    v1 = write_pipeline("versioned_judge_c", 0)  # type: ignore[operator]
    defs_v1 = build([v1], backfill_cron="0 3 * * *", automation_in_code_server=True)
    register(instance, RUN_ID)
    tick = _Ticks(instance)
    day = (datetime.now(UTC) + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)

    assert tick(defs_v1, day + timedelta(hours=1)) == []  # first tick: no cron tick passed yet
    assert _requested(tick(defs_v1, day + timedelta(hours=4))) == _partitions(v1)  # missing
    assert tick(defs_v1, day + timedelta(hours=5)) == []  # once per cron tick

    _materialize_run(defs_v1, instance, v1)
    next_day = day + timedelta(days=1)
    assert tick(defs_v1, next_day + timedelta(hours=1)) == []  # up to date: nothing to do
    assert tick(defs_v1, next_day + timedelta(hours=4)) == []

    v2 = write_pipeline("versioned_judge_d", 2)  # type: ignore[operator]
    defs_v2 = build([v2], backfill_cron="0 3 * * *", automation_in_code_server=True)
    third_day = next_day + timedelta(days=1)
    assert tick(defs_v2, third_day + timedelta(hours=1)) == []  # changed, but before the cron
    assert _requested(tick(defs_v2, third_day + timedelta(hours=4))) == _partitions(v2)  # stale
