"""No green result from partial data: reduces refuse an incomplete lower level, checks and
metadata describe each partition, and results computed outside Dagster show up in it.

Real chDB with 300 demo traces, a real ephemeral Dagster instance, 4 shards per run.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.definitions.data_version import CODE_VERSION_TAG
from pydantic import BaseModel

from examples import tool_errors
from manta import EntityRef, MapReduceComputation, TraceContext
from manta_dagster.assets import explorer_links, level_key
from manta_dagster.definitions import build_definitions
from manta_dagster.partitions import shard_key
from manta_dagster.results_sync import SYNC_SENSOR_NAME
from manta_dagster.sensors import DISCOVERY_SENSOR_NAME
from manta_dagster.ui_links import UI_URLS_FILE, explorer_base
from manta_lib.explorer.links import results_url
from manta_lib.models import EntityLevel
from manta_lib.pipeline import (
    Outputs,
    RunOptions,
    entities_by_shard,
    map_scope,
    missing_entities,
    plan_scope,
)
from manta_lib.settings import MantaSettings
from manta_lib.store import Store
from tests.dagster import judges
from tests.dagster.helpers import (
    RUN_ID,
    SHARDS,
    Demo,
    all_shards,
    build,
    materialize,
    metadata_values,
    register,
    stored_status,
)
from tests.dagster.test_sensors import HOLD_STORE

# Real Dagster materializations over a seeded store: end to end (make test runs them).
pytestmark = pytest.mark.slow

TRACE, DATAPOINT, STEP = EntityLevel.TRACE, EntityLevel.DATAPOINT, EntityLevel.STEP
PIPELINE = tool_errors.pipeline


@pytest.fixture
def judge() -> Iterator[None]:
    judges.reset()
    yield
    judges.reset()


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


def _shard_counts(store: Store) -> dict[str, int]:
    rows = store.rows(
        "SELECT cityHash64(datapoint_id) % {n:UInt32} AS s, count() FROM {db}.traces "
        "WHERE run_id = {r:String} GROUP BY s",
        {"n": SHARDS, "r": RUN_ID},
    )
    return {f"{RUN_ID}|{shard_key(int(s), SHARDS)}": int(c) for s, c in rows}


def test_a_whole_run_backfill_reports_metadata_and_checks_per_partition(
    store: Store, demo: Demo, instance: dg.DagsterInstance
) -> None:
    defs = build([PIPELINE])
    register(instance, RUN_ID)
    trace = level_key(PIPELINE, TRACE)

    result = materialize(defs, instance, [trace], tags=all_shards(RUN_ID))

    per_shard = _shard_counts(store)
    events = {
        str(e.partition): metadata_values(e.materialization)
        for e in result.get_asset_materialization_events()
    }
    assert len(events) == SHARDS
    for partition, meta in events.items():
        assert meta["entities"] == per_shard.get(partition, 0), partition
        assert meta["op_entities"] == demo.runs[RUN_ID]
        assert meta["runs"] == RUN_ID
        shard = int(partition.rpartition("|")[2])
        assert meta["explorer"] == results_url(PIPELINE.judge, RUN_ID, "trace", shard=shard)
        expected = per_shard.get(partition, 0)
        if expected:
            assert f"of {expected:,} entities computed" in str(meta["summary"])
        else:  # a shard no trace falls in says so, not "0 of 0 entities"
            assert "Empty partition" in str(meta["summary"])
    checks = result.get_asset_check_evaluations()
    by_partition = {(c.check_name, c.partition): c for c in checks if c.partition}
    for partition in events:
        evaluation = by_partition[("complete", partition)]
        assert evaluation.passed
        assert metadata_values(evaluation)["traces"] == per_shard.get(partition, 0)
        assert by_partition[("error_rate", partition)].blocking
        assert ("schema", partition) in by_partition

    # What Dagster materialized is not reported again; only the empty shards of the level
    # above, which no run computes, are reported done and empty.
    reported = _sync(defs, instance, None)[0]
    assert all(m.asset_key != trace for m in reported)
    assert all(metadata_values(m)["entities"] == 0 for m in reported)

    # A step over one partition: Dagster attaches its partition to each check.
    one = f"{RUN_ID}|{shard_key(1, SHARDS)}"
    single = materialize(defs, instance, [trace], partition_key=one)
    assert {c.partition for c in single.get_asset_check_evaluations()} == {one}


def test_a_failing_error_rate_blocks_the_level_above(
    store: Store, demo: Demo, instance: dg.DagsterInstance, judge: None
) -> None:
    defs = build([judges.pipeline], error_rate_threshold=0.1)
    register(instance, RUN_ID)
    judges.BEHAVIOUR["fail_every"] = 2
    trace, datapoint = (level_key(judges.pipeline, lvl) for lvl in (TRACE, DATAPOINT))

    result = materialize(
        defs, instance, [trace, datapoint], tags=all_shards(RUN_ID), raise_on_error=False
    )

    assert not result.success
    keys = {e.materialization.asset_key for e in result.get_asset_materialization_events()}
    assert keys == {trace}  # the traces are stored and shown, the level above is not fed
    rates = [c for c in result.get_asset_check_evaluations() if c.check_name == "error_rate"]
    whole = [c for c in rates if c.partition is None]
    assert len(whole) == 1 and not whole[0].passed and whole[0].blocking
    for check in rates:
        assert check.passed == (float(metadata_values(check)["error_rate"]) <= 0.1)  # type: ignore[arg-type]
    assert sum(not c.passed for c in rates if c.partition) >= 2
    assert not stored_status(store, judges.pipeline, DATAPOINT, RUN_ID)

    # Launched alone in a later run, the level above still refuses the mostly failed level.
    later = materialize(defs, instance, [datapoint], tags=all_shards(RUN_ID), raise_on_error=False)
    assert not later.success
    message = _failure_message(later)
    assert "failed" in message and "above the error_rate threshold of 10%" in message
    assert not stored_status(store, judges.pipeline, DATAPOINT, RUN_ID)


def test_explorer_links_name_each_run_when_a_step_spans_several() -> None:
    links = explorer_links("j", STEP, ["run_a", "run_b"])
    assert links == {
        "explorer run_a": results_url("j", "run_a", "step"),
        "explorer run_b": results_url("j", "run_b", "step"),
    }
    assert explorer_links("j", TRACE, ["run_a|00", "run_a|01"]) == {
        "explorer": results_url("j", "run_a", "trace")
    }


def test_explorer_links_follow_the_explorer_make_ui_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MANTA_EXPLORER_URL", raising=False)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    assert explorer_base() == "http://127.0.0.1:8050"  # nothing recorded: the default
    (tmp_path / UI_URLS_FILE).write_text('{"explorer": "http://127.0.0.1:8311/"}')
    assert explorer_links("j", TRACE, ["run_a|07"]) == {
        "explorer": "http://127.0.0.1:8311/results/j?run=run_a&level=trace&shard=7"
    }
    monkeypatch.setenv("MANTA_EXPLORER_URL", "http://explorer.internal")  # the setting wins
    assert explorer_base() == "http://explorer.internal"
    (tmp_path / UI_URLS_FILE).write_text("not json")
    monkeypatch.delenv("MANTA_EXPLORER_URL")
    assert explorer_base() == "http://127.0.0.1:8050"  # unreadable: the default, no crash


def _sync(
    defs: dg.Definitions, instance: dg.DagsterInstance, cursor: str | None
) -> tuple[list[dg.AssetMaterialization], str | None]:
    """One tick of the results-sync sensor; its events are reported as the daemon would."""
    sensor = defs.resolve_sensor_def(SYNC_SENSOR_NAME)
    with dg.build_sensor_context(
        instance=instance, cursor=cursor, resources=defs.resources
    ) as context:
        result = sensor(context)
    assert isinstance(result, dg.SensorResult)
    events = [e for e in result.asset_events if isinstance(e, dg.AssetMaterialization)]
    for event in events:
        instance.report_runless_asset_event(event)
    return events, result.cursor


def test_results_computed_outside_dagster_show_as_materialized_partitions(
    store: Store, demo: Demo, instance: dg.DagsterInstance, settings: MantaSettings
) -> None:
    defs = build([PIPELINE])
    register(instance, RUN_ID)
    trace, datapoint, step = (level_key(PIPELINE, lvl) for lvl in (TRACE, DATAPOINT, STEP))
    scope = plan_scope(store, RUN_ID, shard_count=SHARDS)
    by_shard = entities_by_shard(store, TRACE, scope)
    empty = {f"{RUN_ID}|{shard_key(s, SHARDS)}" for s in range(SHARDS) if s not in by_shard}
    first = min(by_shard)
    one_shard = plan_scope(store, RUN_ID, shards=[first], shard_count=SHARDS)
    map_scope(
        PIPELINE, one_shard, store=store, options=RunOptions(progress=False), outputs=Outputs.WRITE
    )

    events, cursor = _sync(defs, instance, None)

    assert {(e.asset_key, str(e.partition)) for e in events} == {
        (trace, p) for p in empty | {f"{RUN_ID}|{shard_key(first, SHARDS)}"}
    } | {(datapoint, p) for p in empty}  # one shard mapped: only it is complete (and the
    # shards without traces, done and empty at every sharded level); nothing above it is
    assert all(e.tags[CODE_VERSION_TAG] == PIPELINE.judge_version for e in events)

    PIPELINE.run(RUN_ID, mode="local", settings=settings, progress=False)
    events, cursor = _sync(defs, instance, cursor)

    every = {f"{RUN_ID}|{shard_key(s, SHARDS)}" for s in range(SHARDS)}
    assert instance.get_materialized_partitions(trace) == every
    assert instance.get_materialized_partitions(datapoint) == every
    assert instance.get_materialized_partitions(step) == {RUN_ID}
    assert _sync(defs, instance, cursor)[0] == []  # idempotent: nothing changed
    assert _sync(defs, instance, None)[0] == []  # a lost cursor reports nothing twice


def test_shards_without_traces_show_done_and_empty_for_every_registered_run(
    store: Store, demo: Demo, instance: dg.DagsterInstance
) -> None:
    shards = 64  # the production shard count: 300 demo traces leave most shards of a run empty
    defs = build_definitions([PIPELINE], shard_count=shards, include_wall_time=False)
    sync = defs.resolve_sensor_def(SYNC_SENSOR_NAME)
    assert sync.default_status == dg.DefaultSensorStatus.RUNNING  # read-only: on out of the box
    assert defs.resolve_sensor_def(DISCOVERY_SENSOR_NAME).default_status == (
        dg.DefaultSensorStatus.STOPPED  # launches runs: opt-in
    )
    register(instance, *demo.run_ids)
    occupied = {
        (str(run), int(shard))
        for run, shard in store.rows(
            "SELECT DISTINCT run_id, cityHash64(datapoint_id) % 64 FROM {db}.traces"
        )
    }
    empty = {
        f"{run}|{shard_key(s, shards)}"
        for run in demo.run_ids
        for s in range(shards)
        if (run, s) not in occupied
    }
    assert empty and len(empty) < len(demo.runs) * shards

    events, cursor = _sync(defs, instance, None)  # no judge has run: only the empty shards

    trace, datapoint = level_key(PIPELINE, TRACE), level_key(PIPELINE, DATAPOINT)
    assert {(e.asset_key, str(e.partition)) for e in events} == {
        (key, p) for key in (trace, datapoint) for p in empty
    }
    for event in events:
        values = metadata_values(event)
        assert values["entities"] == 0 and "nothing to compute" in str(values["empty"])
        assert "computed" not in values  # not presented as results computed elsewhere
        assert event.tags[CODE_VERSION_TAG] == PIPELINE.judge_version
    assert instance.get_materialized_partitions(trace) == empty
    assert _sync(defs, instance, cursor)[0] == []
    assert _sync(defs, instance, None)[0] == []  # never reported twice


def test_an_empty_partition_materialized_by_dagster_says_it_is_empty(
    store: Store, demo: Demo, instance: dg.DagsterInstance
) -> None:
    defs = build_definitions([PIPELINE], shard_count=64, include_wall_time=False)
    register(instance, RUN_ID)
    occupied = {int(s) for (s,) in store.rows(
        "SELECT DISTINCT cityHash64(datapoint_id) % 64 FROM {db}.traces WHERE run_id = {r:String}",
        {"r": RUN_ID},
    )}  # fmt: skip
    shard = min(set(range(64)) - occupied)
    result = materialize(
        defs, instance, [level_key(PIPELINE, TRACE)], partition_key=f"{RUN_ID}|{shard:02d}"
    )
    [event] = result.get_asset_materialization_events()
    values = metadata_values(event.materialization)
    assert values["entities"] == 0 and "nothing to compute" in str(values["empty"])
    assert "Empty partition: nothing to compute" in str(values["summary"])
    assert "0 of 0" not in str(values["summary"])


class _Rollout(BaseModel):
    passed: int


class _Counts(BaseModel):
    passes: int
    n: int


def _map_rollout(trace: TraceContext) -> _Rollout:
    return _Rollout(passed=int(trace.score is not None and trace.score >= 0.5))


def _count(entity: EntityRef, rollouts: list[_Rollout]) -> _Counts:
    return _Counts(passes=sum(r.passed for r in rollouts), n=len(rollouts))


def _total(entity: EntityRef, counts: list[_Counts]) -> _Counts:
    return _Counts(passes=sum(c.passes for c in counts), n=sum(c.n for c in counts))


ACROSS = (
    MapReduceComputation("Dagster across steps")
    .add_level(TRACE, _map_rollout, _Rollout)
    .add_level(DATAPOINT, _count, _Counts)
    .add_level(EntityLevel.DATAPOINT_ACROSS_STEPS, _total, _Counts)
)


def test_the_datapoint_across_steps_level_is_partitioned_like_the_datapoint_level(
    store: Store, demo: Demo, instance: dg.DagsterInstance
) -> None:
    defs = build([ACROSS])
    register(instance, RUN_ID)
    keys = [
        level_key(ACROSS, lvl) for lvl in (TRACE, DATAPOINT, EntityLevel.DATAPOINT_ACROSS_STEPS)
    ]
    graph = defs.resolve_asset_graph()
    assert graph.get(keys[2]).partitions_def == graph.get(keys[1]).partitions_def
    scope = plan_scope(store, RUN_ID, shard_count=SHARDS)
    shard = min(entities_by_shard(store, TRACE, scope))
    partition = f"{RUN_ID}|{shard_key(shard, SHARDS)}"

    one = materialize(defs, instance, keys, partition_key=partition)

    across = {
        e.materialization.asset_key: metadata_values(e.materialization)
        for e in one.get_asset_materialization_events()
    }[keys[2]]
    datapoints = entities_by_shard(store, EntityLevel.DATAPOINT_ACROSS_STEPS, scope)[shard]
    assert across["entities"] == len(datapoints) > 0  # datapoint ids of that shard only
    whole_run = materialize(
        defs, instance, [keys[2]], tags=all_shards(RUN_ID), raise_on_error=False
    )
    assert not whole_run.success and "have no stored outcome" in _failure_message(whole_run)


def test_the_results_sync_skips_a_tick_while_another_process_holds_the_store(
    manta_env: dict[str, str], instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MANTA_LOCK_TIMEOUT_S", "1")  # do not wait the default 30 s for the lock
    defs = build([PIPELINE])
    sensor = defs.resolve_sensor_def(SYNC_SENSOR_NAME)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_STORE],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        with dg.build_sensor_context(instance=instance, resources=defs.resources) as context:
            skipped = sensor(context)
        assert isinstance(skipped, dg.SkipReason)
        assert "in use by another process" in str(skipped.skip_message)
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)
