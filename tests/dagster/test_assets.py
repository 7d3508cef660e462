"""Level assets materialized for real: same results as ``pipeline.run``, resume, checks.

Every test materializes on an ephemeral Dagster instance against a real chDB database holding
300 demo traces; 4 shards per run.
"""

from __future__ import annotations

from collections.abc import Iterator

import dagster as dg
import pytest

from examples import run_summary, tool_errors
from manta_dagster.assets import level_key
from manta_dagster.partitions import shard_key
from manta_lib.demo import seed_demo
from manta_lib.explorer.links import results_url, trace_url
from manta_lib.models import EntityLevel
from manta_lib.settings import load_settings
from manta_lib.store import Store
from manta_lib.store.metadata import load_entities
from tests.dagster import judges
from tests.dagster.helpers import (
    DEMO_TRACES,
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

# Real Dagster materializations over a seeded store: end to end (make test runs them).
pytestmark = pytest.mark.slow

TRACE, DATAPOINT, STEP, RUN = (
    EntityLevel.TRACE,
    EntityLevel.DATAPOINT,
    EntityLevel.STEP,
    EntityLevel.RUN,
)


@pytest.fixture
def judge() -> Iterator[None]:
    judges.reset()
    yield
    judges.reset()


def _values(store: Store, pipeline: object, level: EntityLevel, run_id: str) -> dict[str, dict]:
    stored = load_entities(store, pipeline.result_key(run_id, level))  # type: ignore[attr-defined]
    return {e.entity_id: {"values": e.values, "ok": e.ok, "error": e.error} for e in stored}


def test_every_level_materializes_what_pipeline_run_computes(
    store: Store, demo: Demo, instance: dg.DagsterInstance, manta_env: dict[str, str]
) -> None:
    defs = build([tool_errors.pipeline, run_summary.pipeline])
    register(instance, RUN_ID)
    lower = [level_key(tool_errors.pipeline, TRACE), level_key(tool_errors.pipeline, DATAPOINT)]
    lower.append(level_key(run_summary.pipeline, TRACE))
    first = materialize(defs, instance, lower, tags=all_shards(RUN_ID))
    upper = [level_key(tool_errors.pipeline, STEP), level_key(run_summary.pipeline, RUN)]
    second = materialize(defs, instance, upper, partition_key=RUN_ID)

    # The local engine on a copy of the data in another database gives the same values.
    local = load_settings(database=manta_env["MANTA_DATABASE"] + "_local")
    with Store.open(local) as other:
        seed_demo(other, traces=DEMO_TRACES)
    tool_errors.pipeline.run(RUN_ID, mode="local", settings=local, progress=False)
    run_summary.pipeline.run(RUN_ID, mode="local", settings=local, progress=False)
    with Store.open(local) as other:
        for pipeline, levels in (
            (tool_errors.pipeline, (TRACE, DATAPOINT, STEP)),
            (run_summary.pipeline, (TRACE, RUN)),
        ):
            for level in levels:
                ours = _values(store, pipeline, level, RUN_ID)
                theirs = _values(other, pipeline, level, RUN_ID)
                assert ours, f"{pipeline.judge}/{level.value} wrote nothing"
                assert ours == theirs, f"{pipeline.judge}/{level.value} differs from local"

    assert len(_values(store, tool_errors.pipeline, TRACE, RUN_ID)) == demo.runs[RUN_ID]
    events = {
        (e.materialization.asset_key.to_user_string(), e.partition): metadata_values(
            e.materialization
        )
        for e in [
            *first.get_asset_materialization_events(),
            *second.get_asset_materialization_events(),
        ]
    }
    assert {key for key, _ in events} == {
        "tool_errors/trace",
        "tool_errors/datapoint",
        "tool_errors/step",
        "run_summary/trace",
        "run_summary/run",
    }
    step = events[("tool_errors/step", RUN_ID)]
    # One step entity per (step, phase): the eval steps are entities of their own.
    [(steps,)] = store.rows(
        "SELECT uniqExact(step_number, phase) FROM {db}.traces WHERE run_id = {r:String}",
        {"r": RUN_ID},
    )
    assert step["entities"] == steps and step["errors"] == 0
    assert step["judge_version"] == tool_errors.pipeline.judge_version
    assert "Histogram of" in str(step["summary"]) and "| mean_error_rate |" in str(step["summary"])
    assert step["first_failures"] == "No failures."
    assert step["explorer"] == results_url("tool_errors", RUN_ID, "step")
    trace = events[("tool_errors/trace", f"{RUN_ID}|01")]
    assert trace["op_entities"] == demo.runs[RUN_ID]  # the op covered every shard of the run
    assert 0 < int(trace["entities"]) < demo.runs[RUN_ID]  # type: ignore[call-overload]
    checks = [*first.get_asset_check_evaluations(), *second.get_asset_check_evaluations()]
    assert {(c.asset_key.to_user_string(), c.check_name) for c in checks} >= {
        ("tool_errors/trace", "complete"),
        ("tool_errors/trace", "error_rate"),
        ("tool_errors/trace", "schema"),
        ("tool_errors/step", "schema"),
        ("run_summary/run", "error_rate"),
    }
    assert all(c.passed for c in checks)


def test_one_shard_materializes_only_its_traces(
    store: Store, demo: Demo, instance: dg.DagsterInstance, judge: None
) -> None:
    defs = build([judges.pipeline])
    register(instance, RUN_ID)
    shard, traces, datapoints = store.rows(
        "SELECT cityHash64(datapoint_id) % 4 AS shard, groupArray(trace_id), "
        "groupUniqArray(concat(datapoint_id, '@', toString(step_number))) "
        "FROM {db}.traces WHERE run_id = {r:String} "
        "GROUP BY shard ORDER BY length(groupArray(trace_id)) DESC LIMIT 1",
        {"r": RUN_ID},
    )[0]
    assert 0 < len(traces) < demo.runs[RUN_ID]
    keys = [level_key(judges.pipeline, TRACE), level_key(judges.pipeline, DATAPOINT)]

    materialize(defs, instance, keys, partition_key=f"{RUN_ID}|{shard_key(shard, SHARDS)}")

    assert dict(judges.CALLS) == dict.fromkeys(traces, 1)
    assert set(stored_status(store, judges.pipeline, TRACE, RUN_ID)) == set(traces)
    assert set(stored_status(store, judges.pipeline, DATAPOINT, RUN_ID)) == set(datapoints)


def test_a_failed_partition_resumes_from_what_was_persisted(
    store: Store, demo: Demo, instance: dg.DagsterInstance, judge: None
) -> None:
    defs = build([judges.pipeline], max_failures=0)
    register(instance, RUN_ID)
    key = level_key(judges.pipeline, TRACE)
    total = demo.runs[RUN_ID]
    judges.BEHAVIOUR["fail_after"] = 40

    failed = materialize(defs, instance, [key], tags=all_shards(RUN_ID), raise_on_error=False)

    assert not failed.success
    stored = stored_status(store, judges.pipeline, TRACE, RUN_ID)
    persisted = {tid for tid, ok in stored.items() if ok}
    assert 0 < len(persisted) < total
    judges.reset()

    retried = materialize(defs, instance, [key], tags=all_shards(RUN_ID))

    assert retried.success
    assert sum(judges.CALLS.values()) == total - len(persisted)  # only what was missing
    assert not set(judges.CALLS) & set(persisted)
    assert len(stored_status(store, judges.pipeline, TRACE, RUN_ID)) == total
    computed = [
        int(metadata_values(e.materialization)["computed_now"])  # type: ignore[call-overload]
        for e in retried.get_asset_materialization_events()
    ]
    assert len(computed) == SHARDS  # one per partition, each counting its own shard
    assert sum(computed) == total - len(persisted)


def test_error_rate_check_fails_and_metadata_lists_the_first_failures(
    store: Store, demo: Demo, instance: dg.DagsterInstance, judge: None
) -> None:
    defs = build([judges.pipeline], error_rate_threshold=0.1)
    register(instance, RUN_ID)
    judges.BEHAVIOUR["fail_every"] = 3

    result = materialize(
        defs,
        instance,
        [level_key(judges.pipeline, TRACE)],
        tags=all_shards(RUN_ID),
        raise_on_error=False,  # error_rate is blocking: the step fails after materializing
    )

    checks = {c.check_name: c for c in result.get_asset_check_evaluations() if not c.partition}
    assert not checks["error_rate"].passed
    rate = metadata_values(checks["error_rate"])["error_rate"]
    assert 0.25 < float(rate) < 0.4  # type: ignore[arg-type]
    assert checks["complete"].passed  # a recorded error counts as an outcome
    assert checks["schema"].passed
    metas = [metadata_values(e.materialization) for e in result.get_asset_materialization_events()]
    failed = sorted(t for t, ok in stored_status(store, judges.pipeline, TRACE, RUN_ID).items()
                    if not ok)  # fmt: skip
    assert sum(int(m["errors"]) for m in metas) == len(failed) > 0  # type: ignore[call-overload]
    meta = next(m for m in metas if f"`{failed[0]}`" in str(m["first_failures"]))
    link = f"[`{failed[0]}`]({trace_url(failed[0])})"  # each failure opens its explorer page
    assert f"{link}: ValueError: cannot judge {failed[0]}" in str(meta["first_failures"])
    assert "judges.py:" in str(meta["first_failures"]) and "in map_trace" in str(
        meta["first_failures"]
    )


@pytest.mark.filterwarnings("ignore:Pydantic serializer warnings")
def test_schema_check_fails_on_outputs_that_bypassed_validation(
    store: Store, demo: Demo, instance: dg.DagsterInstance, judge: None
) -> None:
    defs = build([judges.pipeline])
    register(instance, RUN_ID)
    judges.BEHAVIOUR["bad_every"] = 5

    result = materialize(
        defs,
        instance,
        [level_key(judges.pipeline, TRACE)],
        tags=all_shards(RUN_ID),
        raise_on_error=False,  # error_rate is blocking: the step fails after materializing
    )

    checks = {c.check_name: c for c in result.get_asset_check_evaluations() if not c.partition}
    assert not checks["schema"].passed
    meta = metadata_values(checks["schema"])
    assert int(meta["invalid"]) > 0  # type: ignore[call-overload]
    assert "score" in str(meta["first_invalid"])
    assert checks["error_rate"].passed and checks["complete"].passed


def test_complete_check_fails_when_traces_arrive_during_the_map(
    store: Store, demo: Demo, instance: dg.DagsterInstance, judge: None
) -> None:
    defs = build([judges.pipeline])
    register(instance, RUN_ID)
    existing = store.rows(
        "SELECT trace_id FROM {db}.traces WHERE run_id = {r:String} ORDER BY trace_id LIMIT 1",
        {"r": RUN_ID},
    )[0][0]

    def late_trace() -> None:
        """A copy of an existing trace (same datapoint, so same shard) under a new id."""
        names, columns = store.columns(
            "SELECT * FROM {db}.traces WHERE trace_id = {t:String}", {"t": existing}
        )
        row = {name: list(column) for name, column in zip(names, columns, strict=True)}
        row["trace_id"] = ["tr_late_zz"]
        store.insert_columns("traces", row)

    judges.BEHAVIOUR["on_first_call"] = late_trace
    key = level_key(judges.pipeline, TRACE)

    result = materialize(defs, instance, [key], tags=all_shards(RUN_ID))

    completes = [c for c in result.get_asset_check_evaluations() if c.check_name == "complete"]
    complete = next(c for c in completes if not c.partition)  # the whole step
    assert not complete.passed
    assert "tr_late_zz" in str(metadata_values(complete)["missing_trace_ids"])
    late = [c for c in completes if c.partition and not c.passed]  # and its partition
    assert len(late) == 1 and "tr_late_zz" in str(metadata_values(late[0])["missing_trace_ids"])

    # The next materialization maps just the late trace and the check passes again.
    judges.CALLS.clear()
    again = materialize(defs, instance, [key], tags=all_shards(RUN_ID))
    assert dict(judges.CALLS) == {"tr_late_zz": 1}
    assert all(c.passed for c in again.get_asset_check_evaluations() if c.check_name == "complete")


def _messages(instance: dg.DagsterInstance, result: dg.ExecuteInProcessResult) -> str:
    return "\n".join(entry.user_message for entry in instance.all_logs(result.run_id))


def test_the_level_below_is_read_back_from_the_store_for_exactly_the_partitions(
    store: Store, demo: Demo, instance: dg.DagsterInstance
) -> None:
    defs = build([tool_errors.pipeline])
    register(instance, RUN_ID)
    trace, datapoint = (level_key(tool_errors.pipeline, lvl) for lvl in (TRACE, DATAPOINT))

    together = materialize(defs, instance, [trace, datapoint], tags=all_shards(RUN_ID))
    first = _values(store, tool_errors.pipeline, DATAPOINT, RUN_ID)
    alone = materialize(defs, instance, [datapoint], tags=all_shards(RUN_ID))
    one_shard = materialize(
        defs, instance, [datapoint], partition_key=f"{RUN_ID}|{shard_key(1, SHARDS)}"
    )

    traces = demo.runs[RUN_ID]
    for result in (together, alone):
        assert f"loaded tool_errors/trace for 1 run(s): {traces} entities" in _messages(
            instance, result
        )
    shard_traces = store.rows(
        "SELECT count() FROM {db}.traces WHERE run_id = {r:String} "
        "AND cityHash64(datapoint_id) % 4 = 1",
        {"r": RUN_ID},
    )[0][0]
    assert 0 < shard_traces < traces
    assert f"loaded tool_errors/trace for 1 run(s): {shard_traces} entities" in _messages(
        instance, one_shard
    )
    # Every path gives the reduce the same children, hence the same datapoint values.
    assert first and _values(store, tool_errors.pipeline, DATAPOINT, RUN_ID) == first
