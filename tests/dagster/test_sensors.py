"""Run discovery: the sensor (cursor, new and growing runs, a held store) and register-runs.

The sensor is evaluated with ``build_sensor_context`` against a real chDB database and an
ephemeral instance; the dynamic-partition requests it returns are applied to the instance as
the daemon would, and its run request is executed to show it materializes every shard at once.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from typer.testing import CliRunner

from examples import tool_errors
from manta_dagster.assets import level_key
from manta_dagster.partitions import RUNS_PARTITIONS_NAME, shard_key
from manta_dagster.sensors import DISCOVERY_SENSOR_NAME
from manta_lib.cli import _register_commands, app
from manta_lib.demo import seed_demo
from manta_lib.models import EntityLevel
from manta_lib.settings import load_settings
from manta_lib.store import Store
from tests.dagster import judges
from tests.dagster.helpers import RUN_ID, SHARDS, Demo, build, materialize, stored_status

# Real Dagster materializations over a seeded store: end to end (make test runs them).
pytestmark = pytest.mark.slow

PIPELINES = (judges.pipeline, tool_errors.pipeline)
TRACE_KEYS = {level_key(p, EntityLevel.TRACE) for p in PIPELINES}


class _Sensor:
    """Ticks the discovery sensor, keeping its cursor and applying its partition requests."""

    def __init__(self, defs: dg.Definitions, instance: dg.DagsterInstance) -> None:
        self.defs = defs
        self.instance = instance
        self.cursor: str | None = None
        self.sensor = defs.resolve_sensor_def(DISCOVERY_SENSOR_NAME)

    def tick(self) -> dg.SensorResult | dg.SkipReason:
        with dg.build_sensor_context(
            instance=self.instance, cursor=self.cursor, resources=self.defs.resources
        ) as context:
            result = self.sensor(context)
        assert isinstance(result, dg.SensorResult | dg.SkipReason)
        if isinstance(result, dg.SensorResult):
            self.cursor = result.cursor
            for request in result.dynamic_partitions_requests or []:
                assert isinstance(request, dg.AddDynamicPartitionsRequest)
                self.instance.add_dynamic_partitions(
                    request.partitions_def_name, list(request.partition_keys)
                )
        return result


def _requests(result: dg.SensorResult | dg.SkipReason) -> dict[str, dg.RunRequest]:
    assert isinstance(result, dg.SensorResult)
    return {str(r.tags["manta/run_id"]): r for r in result.run_requests or []}


def _grow(store: Store, run_id: str, count: int) -> None:
    """Append ``count`` traces to ``run_id`` (copies of its first traces under new ids)."""
    names, columns = store.columns(
        "SELECT * FROM {db}.traces WHERE run_id = {r:String} ORDER BY trace_id LIMIT {n:UInt32}",
        {"r": run_id, "n": count},
    )
    data = {name: list(column) for name, column in zip(names, columns, strict=True)}
    data["trace_id"] = [f"{t}_late" for t in data["trace_id"]]
    store.insert_columns("traces", data)


@pytest.fixture
def sensor(demo: Demo, instance: dg.DagsterInstance) -> _Sensor:
    judges.reset()
    return _Sensor(build(PIPELINES), instance)


def test_new_runs_become_partitions_and_are_requested_exactly_once(
    store: Store, demo: Demo, instance: dg.DagsterInstance, sensor: _Sensor
) -> None:
    first = sensor.tick()

    assert set(instance.get_dynamic_partitions(RUNS_PARTITIONS_NAME)) == set(demo.run_ids)
    requests = _requests(first)
    assert set(requests) == set(demo.run_ids)
    request = requests[RUN_ID]
    assert set(request.asset_selection or []) == TRACE_KEYS
    assert request.run_key == f"{RUN_ID}@{demo.runs[RUN_ID]}"
    assert request.tags["dagster/asset_partition_range_start"] == f"{RUN_ID}|{shard_key(0, 4)}"
    assert request.tags["dagster/asset_partition_range_end"] == f"{RUN_ID}|{shard_key(3, 4)}"
    assert json.loads(str(sensor.cursor)) == demo.runs

    second = sensor.tick()

    assert _requests(second) == {}
    assert isinstance(second, dg.SensorResult) and not second.dynamic_partitions_requests
    assert "no new or grown runs" in str(second.skip_reason)


def test_a_growing_run_is_requested_again_once_per_size(
    store: Store, demo: Demo, sensor: _Sensor
) -> None:
    sensor.tick()
    _grow(store, RUN_ID, 5)

    grown = _requests(sensor.tick())

    assert set(grown) == {RUN_ID}
    assert grown[RUN_ID].run_key == f"{RUN_ID}@{demo.runs[RUN_ID] + 5}"
    assert _requests(sensor.tick()) == {}


def test_runs_registered_before_the_sensor_are_not_requested(
    store: Store, demo: Demo, instance: dg.DagsterInstance, sensor: _Sensor
) -> None:
    instance.add_dynamic_partitions(RUNS_PARTITIONS_NAME, [RUN_ID])

    requests = _requests(sensor.tick())

    assert set(requests) == set(demo.run_ids) - {RUN_ID}  # the nightly backfill handles it
    _grow(store, RUN_ID, 2)
    assert set(_requests(sensor.tick())) == {RUN_ID}  # but it is followed from then on


def test_the_run_request_materializes_every_shard_in_one_run(
    store: Store, demo: Demo, instance: dg.DagsterInstance, sensor: _Sensor
) -> None:
    request = _requests(sensor.tick())[RUN_ID]

    result = materialize(
        sensor.defs, instance, list(request.asset_selection or []), tags=dict(request.tags)
    )

    partitions = {(e.asset_key, e.partition) for e in result.get_asset_materialization_events()}
    assert partitions == {
        (key, f"{RUN_ID}|{shard_key(i, SHARDS)}") for key in TRACE_KEYS for i in range(SHARDS)
    }
    for pipeline in PIPELINES:
        stored = stored_status(store, pipeline, EntityLevel.TRACE, RUN_ID)
        assert len(stored) == demo.runs[RUN_ID]


HOLD_STORE = """
import sys
from manta_lib.store import Store
with Store.open():
    print("holding", flush=True)
    sys.stdin.read()
"""


def test_a_tick_while_another_process_holds_the_embedded_store_is_skipped(
    manta_env: dict[str, str], instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MANTA_LOCK_TIMEOUT_S", "1")  # do not wait the default 30 s for the lock
    with Store.open(load_settings()) as store:
        seed_demo(store, traces=40)
    ticker = _Sensor(build(PIPELINES), instance)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_STORE],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"

        skipped = ticker.tick()

        assert isinstance(skipped, dg.SkipReason)
        assert "in use by another process" in str(skipped.skip_message)
        assert instance.get_dynamic_partitions(RUNS_PARTITIONS_NAME) == []
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)

    assert _requests(ticker.tick())  # the store is free again: the runs are found


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    (tmp_path / "dagster_home").mkdir()
    if not any(group.name == "dagster" for group in app.registered_groups):
        _register_commands()
    yield CliRunner()


def test_register_runs_adds_every_run_once(
    manta_env: dict[str, str], cli: CliRunner, tmp_path: Path
) -> None:
    with Store.open(load_settings()) as store:
        summary = seed_demo(store, traces=40)

    first = cli.invoke(app, ["dagster", "register-runs"])
    second = cli.invoke(app, ["dagster", "register-runs"])

    assert first.exit_code == 0, first.output
    assert f"{len(summary.runs)} run(s) registered, 0 already registered" in first.output
    assert f"0 run(s) registered, {len(summary.runs)} already registered" in second.output
    with dg.DagsterInstance.from_config(str(tmp_path / "dagster_home")) as instance:
        assert set(instance.get_dynamic_partitions(RUNS_PARTITIONS_NAME)) == set(summary.runs)


def test_register_runs_refuses_a_throw_away_instance(
    manta_env: dict[str, str], cli: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DAGSTER_HOME")

    result = cli.invoke(app, ["dagster", "register-runs"])

    assert result.exit_code != 0
    assert "DAGSTER_HOME is not set" in str(result.exception)
