"""Persistence: idempotent writes, resume without recomputation, versions, registration, log."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from pydantic import BaseModel

from manta import EntityLevel, MapReduceComputation, TraceContext
from manta_lib.kestrel import load_local_judge
from manta_lib.store import Store
from tests.lib import pipeline_defs
from tests.lib.builders import hierarchy_run, load_traces
from tests.lib.http_fixtures import RecordingHTTPServer
from tests.lib.pipeline.stored import metadata_snapshot

# Seeded stores or seconds per test: make test runs them, make check leaves them out.
pytestmark = pytest.mark.slow


@pytest.fixture
def hierarchy(store: Store, tmp_path: Path) -> Store:
    load_traces(store, hierarchy_run(), tmp_path)
    pipeline_defs.CALLS.clear()
    return store


def test_results_are_written_per_column_with_status(hierarchy: Store) -> None:
    pipeline_defs.full.run("run_h", mode="local")
    rows = {
        (level, entity, column): (vtype, number, string)
        for level, entity, column, vtype, number, string, *_ in metadata_snapshot(hierarchy)
    }
    assert rows[("trace", "t_dp_a_1_1", "tool_errors")] == ("number", 1.0, None)
    assert rows[("trace", "t_dp_a_1_1", "label")] == ("string", None, "dp_a")
    assert rows[("trace", "t_dp_a_1_1", "__status__")] == ("string", None, "ok")
    assert rows[("datapoint", "dp_a@1", "rollouts")] == ("number", 2.0, None)
    assert rows[("step", "train/1", "__status__")] == ("string", None, "ok")
    keys = dict(
        ((level, entity), (dp, step, phase))
        for level, entity, dp, step, phase in hierarchy.rows(
            "SELECT DISTINCT entity_level, entity_id, datapoint_id, step_number, toString(phase) "
            "FROM {db}.entity_metadata"
        )
    )
    assert keys[("trace", "t_dp_a_1_1")] == ("dp_a", 1, "train")
    assert keys[("datapoint", "dp_a@1")] == ("dp_a", 1, "train")
    assert keys[("step", "train/1")] == ("", 1, "train")
    assert keys[("run", "train/run_h")] == ("", None, "train")
    assert rows[("run", "train/run_h", "children")] == ("number", 2.0, None)
    assert hierarchy.rows("SELECT DISTINCT project_id, judge FROM {db}.entity_metadata") == [
        ("prj_test", "test_full")
    ]


def test_running_twice_recomputes_nothing_and_duplicates_nothing(hierarchy: Store) -> None:
    first = pipeline_defs.full.run("run_h", mode="local")
    assert len(pipeline_defs.CALLS) == 8
    snapshot = metadata_snapshot(hierarchy)

    second = pipeline_defs.full.run("run_h", mode="local")
    assert len(pipeline_defs.CALLS) == 8  # no trace mapped again
    assert metadata_snapshot(hierarchy) == snapshot
    distinct = hierarchy.rows(
        "SELECT count() FROM (SELECT DISTINCT entity_level, entity_id, column "
        "FROM {db}.entity_metadata)"
    )[0][0]
    final = hierarchy.rows("SELECT count() FROM {db}.entity_metadata FINAL")[0][0]
    assert final == distinct == len(snapshot)
    # The second run returns the stored trace outputs, equal to the first run's.
    dump = {o.entity_id: o.output.model_dump() for o in first[EntityLevel.TRACE]}
    assert {o.entity_id: o.output.model_dump() for o in second[EntityLevel.TRACE]} == dump


def test_failed_traces_are_retried_on_the_next_run(
    hierarchy: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MANTA_TEST_FAIL_ON", "t_dp_b")
    first = pipeline_defs.full.run("run_h", mode="local")
    errors = {o.entity_id: o.error for o in first[EntityLevel.TRACE] if o.error}
    assert errors == {
        "t_dp_b_0_0": "RuntimeError: cannot analyse t_dp_b_0_0",
        "t_dp_b_0_1": "RuntimeError: cannot analyse t_dp_b_0_1",
    }
    stored_error = hierarchy.rows(
        "SELECT value_string FROM {db}.entity_metadata FINAL "
        "WHERE entity_id = 't_dp_b_0_0' AND column = '__error__'"
    )
    assert stored_error == [("RuntimeError: cannot analyse t_dp_b_0_0",)]

    monkeypatch.delenv("MANTA_TEST_FAIL_ON")
    pipeline_defs.CALLS.clear()
    second = pipeline_defs.full.run("run_h", mode="local")
    assert sorted(pipeline_defs.CALLS) == ["t_dp_b_0_0", "t_dp_b_0_1"]
    assert all(o.error is None for o in second[EntityLevel.TRACE])


def test_a_new_version_recomputes_everything(hierarchy: Store) -> None:
    pipeline_defs.full.run("run_h", mode="local")
    old_version = pipeline_defs.full.judge_version

    class Out(BaseModel):
        tool_errors: int

    def changed_map(trace: TraceContext) -> Out:
        pipeline_defs.record_call(trace.trace_id)
        return Out(tool_errors=trace.tool_error_count * 10)

    changed = MapReduceComputation("Test full", project_id="prj_test").add_level(
        EntityLevel.TRACE, changed_map, Out
    )
    assert changed.judge_version != old_version
    pipeline_defs.CALLS.clear()
    changed.run("run_h", mode="local")
    assert len(pipeline_defs.CALLS) == 8
    versions = hierarchy.rows(
        "SELECT judge_version, count() FROM {db}.entity_metadata FINAL "
        "WHERE entity_level = 'trace' AND column = '__status__' GROUP BY judge_version"
    )
    # Each version keeps its own results (to compare them); neither replaced the other.
    assert dict(versions) == {old_version: 8, changed.judge_version: 8}
    # Columns only the old schema had are never read back into the new version's outputs.
    outputs = changed.run("run_h", mode="local")[EntityLevel.TRACE]
    assert {o.output.model_dump()["tool_errors"] for o in outputs} == {0, 10}
    assert all(set(o.output.model_dump()) == {"tool_errors"} for o in outputs)


def test_manual_version_changes_the_judge_version() -> None:
    def build(version: str | None) -> MapReduceComputation:
        return MapReduceComputation("v", version=version).add_level(
            EntityLevel.TRACE, pipeline_defs.map_trace, pipeline_defs.TraceOut
        )

    assert build(None).judge_version == build(None).judge_version
    assert build("2").judge_version != build(None).judge_version


def test_judge_registered_locally_when_kestrel_is_not_configured(
    hierarchy: Store, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    pipeline_defs.full.run("run_h", mode="local")
    judge = load_local_judge(hierarchy, "prj_test", "test_full")
    assert judge is not None
    assert judge["version"] == pipeline_defs.full.judge_version
    assert judge["levels"] == ["trace", "datapoint", "step", "run"]
    columns = {(c["entity_level"], c["name"]): c["type"] for c in judge["columns"]}
    assert columns[("trace", "tool_errors")] == "number"
    assert columns[("trace", "score")] == "number"
    assert columns[("datapoint", "step")] == "number"
    assert columns[("trace", "label")] == "string"
    assert "KESTREL_API_URL is not set" in caplog.text


def test_judge_and_columns_registered_with_kestrel(
    hierarchy: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    with RecordingHTTPServer() as kestrel:
        monkeypatch.setenv("KESTREL_API_URL", kestrel.url)
        monkeypatch.setenv("KESTREL_API_KEY", "secret-key")
        pipeline_defs.full.run("run_h", mode="local")
    paths = [(r.method, r.path) for r in kestrel.requests]
    assert paths == [
        ("PUT", "/v1/projects/prj_test/judges/test_full"),
        ("PUT", "/v1/projects/prj_test/judges/test_full/columns"),
    ]
    assert kestrel.requests[0].headers["authorization"] == "Bearer secret-key"
    judge = kestrel.requests[0].json()
    assert judge["version"] == pipeline_defs.full.judge_version
    assert judge["levels"] == ["trace", "datapoint", "step", "run"]
    columns = kestrel.requests[1].json()["columns"]
    assert {"name": "tool_errors", "entity_level": "trace", "type": "number"}.items() <= (
        columns[0].items()
    )


def test_every_computation_appends_a_runs_log_row(
    hierarchy: Store, manta_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline_defs.full.run("run_h", mode="local")
    monkeypatch.setenv("MANTA_TEST_FAIL_ON", "t_")
    with pytest.raises(Exception, match="max_failures"):
        pipeline_defs.full.run("run_h", mode="local", persist_results=False, max_failures=0)
    shards = sorted(Path(manta_env["MANTA_RUNS_LOG_DIR"]).glob("*.jsonl"))
    rows = [json.loads(line) for shard in shards for line in shard.read_text().splitlines()]
    assert [r["status"] for r in rows] == ["succeeded", "failed"]
    first = rows[0]
    assert first["schema_version"] == 1
    assert first["workflow_id"] == "manta__test_full"
    assert first["plan_signature"] == pipeline_defs.full.judge_version
    assert {"load", "map", "reduce", "persist", "register", "overhead"} <= set(
        first["wall_time_breakdown"]
    )
    assert abs(sum(first["wall_time_breakdown"].values()) - first["total_time_s"]) < 1.0
    assert rows[1]["error"].startswith("ComputationAborted: ")


def test_runs_log_rows_record_subset_runs_and_mostly_failed_ones(
    hierarchy: Store, manta_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline_defs.full.run("run_h", mode="local", limit_traces=3)
    monkeypatch.setenv("MANTA_TEST_FAIL_ON", "t_dp_")  # every trace of run_h fails...
    pipeline_defs.full.run("run_h", mode="local", persist_results=False)
    monkeypatch.setenv("MANTA_TEST_FAIL_ON", "t_dp_a_0_")  # ...then 2 of 8
    pipeline_defs.full.run("run_h", mode="local", persist_results=False)
    shards = sorted(Path(manta_env["MANTA_RUNS_LOG_DIR"]).glob("*.jsonl"))
    rows = [json.loads(line) for shard in shards for line in shard.read_text().splitlines()]
    assert [(r["status"], r["subset"], r["traces_total"], r["traces_failed"]) for r in rows] == [
        ("succeeded", True, 3, 0),
        ("mostly_failed", False, 8, 8),
        ("succeeded", False, 8, 2),
    ]
