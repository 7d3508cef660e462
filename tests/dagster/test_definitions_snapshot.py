"""A snapshot of ``manta_dagster.definitions.defs``: an accidental change to the graph fails here.

Asset keys, groups, dependencies, partitions, kinds, automation, checks, sensors and resources
of the default definitions (the three example pipelines, 64 shards). Update the snapshot on
purpose when the graph is meant to change.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from examples import pass_at_k, run_summary, tool_errors
from manta_dagster.definitions import build_definitions, defs, embedded_store, load_pipelines
from manta_lib.errors import PipelineDefinitionError

RUN_SHARD = {"run": "dynamic:manta_runs", "shard": "static:00..63"}
RUN = "dynamic:manta_runs"
LEVEL_KINDS = ["clickhouse", "python"]

ASSETS = {
    "pass_at_k/datapoint": ("pass_at_k", ["pass_at_k/trace"], RUN_SHARD, LEVEL_KINDS),
    "pass_at_k/run": ("pass_at_k", ["pass_at_k/step"], RUN, LEVEL_KINDS),
    "pass_at_k/step": ("pass_at_k", ["pass_at_k/datapoint"], RUN, LEVEL_KINDS),
    "pass_at_k/trace": ("pass_at_k", [], RUN_SHARD, LEVEL_KINDS),
    "run_summary/run": ("run_summary", ["run_summary/trace"], RUN, LEVEL_KINDS),
    "run_summary/trace": ("run_summary", [], RUN_SHARD, LEVEL_KINDS),
    "tool_errors/datapoint": ("tool_errors", ["tool_errors/trace"], RUN_SHARD, LEVEL_KINDS),
    "tool_errors/step": ("tool_errors", ["tool_errors/datapoint"], RUN, LEVEL_KINDS),
    "tool_errors/trace": ("tool_errors", [], RUN_SHARD, LEVEL_KINDS),
    "wall_time_percentiles": ("runs_log", [], None, ["duckdb"]),
}

CHECKS = sorted(
    [f"{key}:{name}" for key in ASSETS if key.endswith("/trace") for name in ("complete",)]
    + [f"{key}:{name}" for key in ASSETS if "/" in key for name in ("error_rate", "schema")]
)


def _partitions(partitions_def: dg.PartitionsDefinition | None) -> Any:
    if partitions_def is None:
        return None
    if isinstance(partitions_def, dg.MultiPartitionsDefinition):
        return {d.name: _partitions(d.partitions_def) for d in partitions_def.partitions_defs}
    if isinstance(partitions_def, dg.DynamicPartitionsDefinition):
        return f"dynamic:{partitions_def.name}"
    if isinstance(partitions_def, dg.StaticPartitionsDefinition):
        keys = partitions_def.get_partition_keys()
        return f"static:{keys[0]}..{keys[-1]}"
    return repr(partitions_def)


def test_asset_specs_match_the_snapshot() -> None:
    specs = {spec.key.to_user_string(): spec for spec in defs.resolve_all_asset_specs()}
    actual = {
        key: (
            spec.group_name,
            sorted(dep.asset_key.to_user_string() for dep in spec.deps),
            _partitions(spec.partitions_def),
            sorted(spec.kinds),
        )
        for key, spec in specs.items()
    }
    assert actual == ASSETS
    assert all(spec.automation_condition is not None for spec in specs.values())


def test_level_assets_carry_the_judge_version_and_a_single_run_backfill_policy() -> None:
    graph = defs.resolve_asset_graph()
    for pipeline in (tool_errors.pipeline, pass_at_k.pipeline, run_summary.pipeline):
        for spec in pipeline.levels:
            node = graph.get(dg.AssetKey([pipeline.judge, spec.level.value]))
            assert node.code_version == pipeline.judge_version
            assert node.backfill_policy == dg.BackfillPolicy.single_run()
            assert node.description and spec.schema.__name__ in node.description


def test_checks_sensors_resources_and_executor_match_the_snapshot() -> None:
    graph = defs.resolve_asset_graph()
    checks = sorted(f"{k.asset_key.to_user_string()}:{k.name}" for k in graph.asset_check_keys)
    assert checks == CHECKS
    assert sorted(s.name for s in defs.sensors or []) == [
        "manta_automation",
        "manta_results_sync",
        "manta_run_discovery",
    ]
    assert sorted(defs.resources or {}) == ["clickhouse", "duckdb", "kestrel", "manta_io_manager"]
    assert embedded_store()  # the tests' environment: no ClickHouse server URL
    assert defs.executor == dg.in_process_executor


def test_a_server_url_switches_to_the_multiprocess_executor(
    monkeypatch: Any,
) -> None:
    monkeypatch.setenv("CLICKHOUSE_URL", "http://127.0.0.1:8123")

    server_defs = build_definitions([run_summary.pipeline], include_wall_time=False)

    assert server_defs.executor == dg.multiprocess_executor


def test_manta_pipelines_adds_user_pipelines_to_the_examples(monkeypatch: Any) -> None:
    monkeypatch.setenv("MANTA_PIPELINES", "examples, tests.dagster.judges:pipeline")

    user_defs = build_definitions(include_wall_time=False)

    keys = {key.to_user_string() for key in user_defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"tool_errors/trace", "dagster_test_judge/trace", "dagster_test_judge/step"} <= keys
    assert [p.judge for p in load_pipelines("tests.dagster.judges")] == ["dagster_test_judge"]


def test_a_wrong_manta_pipelines_entry_says_what_is_wrong() -> None:
    with pytest.raises(PipelineDefinitionError, match="has no attribute 'nope'"):
        load_pipelines("tests.dagster.judges:nope")
    with pytest.raises(PipelineDefinitionError, match="cannot import 'no_such_module_x'"):
        load_pipelines("no_such_module_x")
    with pytest.raises(PipelineDefinitionError, match="not a MapReduceComputation"):
        load_pipelines("tests.dagster.judges:CALLS")


@pytest.mark.slow  # a subprocess importing Dagster
def test_the_definitions_load_from_outside_the_checkout(tmp_path: Path) -> None:
    """A code server started elsewhere still finds the example pipelines (no ClickHouse)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MANTA_PIPELINES")}
    env["CLICKHOUSE_URL"] = "http://127.0.0.1:9"  # nothing listens: importing must not connect
    script = (
        "from manta_dagster.definitions import defs; "
        "print(sorted(k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "'tool_errors/trace'" in done.stdout and "'run_summary/run'" in done.stdout
