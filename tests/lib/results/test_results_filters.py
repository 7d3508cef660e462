"""Trace filters on stored results: each kind of condition matches a direct SQL computation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from manta_lib.errors import QueryError
from manta_lib.models import EntityLevel
from manta_lib.service import MantaService
from tests.lib.results import defs
from tests.lib.results.conftest import EVAL_RUN, TRAIN_RUN

# Seeded stores or seconds per test: make test runs them, make check leaves them out.
pytestmark = pytest.mark.slow

# The traces an entity covers, from its key columns: a datapoint result is that datapoint at
# that step, a datapoint-across-steps result all of that datapoint's traces.
ENTITY_KEYS = {
    "trace": ("trace_id", "entity_id"),
    "datapoint": (
        "(datapoint_id, step_number, phase)",
        "datapoint_id, assumeNotNull(step_number), phase",
    ),
    "datapoint_across_steps": ("(datapoint_id, phase)", "datapoint_id, phase"),
    # A step entity is one phase's: it covers that phase's traces at that step only.
    "step": ("(step_number, phase)", "assumeNotNull(step_number), phase"),
}


def direct_ids(
    svc: MantaService, level: str, column: str, predicate: str, judge: str = "typed_results"
) -> set[str]:
    """Trace ids covered by entities of ``judge`` at ``level`` whose ``column`` satisfies
    ``predicate`` (SQL over the raw value columns), written by hand."""
    trace_key, entity_key = ENTITY_KEYS[level]
    rows = svc.store.rows(
        f"SELECT trace_id FROM {{db}}.traces WHERE run_id = {{r:String}} AND {trace_key} IN ("
        f"SELECT {entity_key} FROM {{db}}.entity_metadata FINAL WHERE judge = {{j:String}} "
        f"AND entity_level = {{l:String}} AND run_id = {{r:String}} AND column = {{c:String}} "
        f"AND {predicate})",
        {"r": TRAIN_RUN, "j": judge, "l": level, "c": column},
    )
    return {r[0] for r in rows}


def filtered_ids(svc: MantaService, condition: str, **filters: object) -> set[str]:
    ids = {t.trace_id for t in svc.get_traces(TRAIN_RUN, results=condition, **filters)}
    assert svc.count_traces(TRAIN_RUN, results=condition, **filters) == len(ids)
    streamed = {
        t.trace_id
        for batch in svc.iter_trace_batches(TRAIN_RUN, results=condition, batch_size=50, **filters)
        for t in batch
    }
    assert streamed == ids
    return ids


@pytest.mark.parametrize(
    ("condition", "level", "column", "predicate"),
    [
        ("typed_results.tool_errors > 0", "trace", "tool_errors", "value_number > 0"),
        ("typed_results.tool_errors in [1, 2]", "trace", "tool_errors", "value_number IN (1, 2)"),
        ("typed_results.label == 'bad'", "trace", "label", "value_string = 'bad'"),
        ("typed_results.passed == true", "trace", "passed", "value_bool"),
        ("typed_results.score is null", "trace", "score", "value_type = 'null'"),
        ("typed_results.status == 'error'", "trace", "__status__", "value_string = 'error'"),
        ("typed_results.error != ''", "trace", "__error__", "value_string != ''"),
        (
            "typed_results.datapoint.mean_errors > 0.2",
            "datapoint",
            "mean_errors",
            "value_number > 0.2",
        ),
    ],
)
def test_each_kind_of_condition_matches_direct_sql(
    svc: MantaService, condition: str, level: str, column: str, predicate: str
) -> None:
    expected = direct_ids(svc, level, column, predicate)
    assert expected, "the demo data should make this condition select something"
    assert filtered_ids(svc, condition) == expected


def test_a_step_condition_selects_the_traces_of_the_matching_steps(svc: MantaService) -> None:
    # A step's rollouts are that step's judged traces only (the map fails on some): the
    # threshold is the median over steps, so the condition keeps some steps and drops others.
    rollouts: dict[tuple[int, str], int] = {}
    for trace in svc.get_traces(TRAIN_RUN):
        if not defs.failing_trace(trace.trace_id):
            key = (trace.step_number, trace.phase.value)
            rollouts[key] = rollouts.get(key, 0) + 1
    stored = svc.results("typed_results", TRAIN_RUN, level="step")
    keys = zip(stored.step_number, stored.phase, strict=True)
    assert dict(zip(keys, stored.rollouts, strict=True)) == rollouts
    per_step = sorted(rollouts.values())
    threshold = per_step[len(per_step) // 2]
    assert per_step[0] < threshold, "the demo steps should differ in size"
    expected = direct_ids(svc, "step", "rollouts", f"value_number >= {threshold}")
    assert expected and filtered_ids(svc, f"typed_results.step.rollouts >= {threshold}") == expected


def test_datapoint_levels_select_one_step_or_all_steps(svc: MantaService) -> None:
    across = filtered_ids(svc, "datapoint_history.datapoint_across_steps.bad >= 1")
    assert across == direct_ids(
        svc, "datapoint_across_steps", "bad", "value_number >= 1", judge="datapoint_history"
    )
    traces = {t.trace_id: t for batch in svc.iter_trace_batches(TRAIN_RUN) for t in batch}
    bad_datapoints = {traces[t].datapoint_id for t in traces if traces[t].tool_error_count}
    assert across == {t for t, trace in traces.items() if trace.datapoint_id in bad_datapoints}
    steps_of = {traces[t].datapoint_id for t in across}
    assert any(
        len({trace.step_number for trace in traces.values() if trace.datapoint_id == dp}) > 1
        for dp in steps_of
    ), "a datapoint-across-steps result should select traces of several steps"
    # At the datapoint level (one datapoint at one step) only that step's traces match.
    heavy = filtered_ids(svc, "typed_results.datapoint.mean_errors > 0.2")
    groups = {(traces[t].datapoint_id, traces[t].step_number) for t in heavy}
    assert heavy == {
        t for t, trace in traces.items() if (trace.datapoint_id, trace.step_number) in groups
    }


def test_status_error_selects_exactly_the_failed_map_calls(svc: MantaService) -> None:
    ids = filtered_ids(svc, "typed_results.status == 'error'")
    all_ids = {t.trace_id for t in svc.get_traces(TRAIN_RUN)}
    assert ids == {t for t in all_ids if defs.failing_trace(t)}


def test_combined_with_other_filters_and_across_levels(svc: MantaService) -> None:
    errors = direct_ids(svc, "trace", "tool_errors", "value_number > 0")
    heavy = direct_ids(svc, "datapoint", "mean_errors", "value_number > 0.2")
    scored = {t.trace_id for t in svc.get_traces(TRAIN_RUN, min_score=0.5)}
    assert filtered_ids(
        svc, "typed_results.tool_errors > 0 and typed_results.datapoint.mean_errors > 0.2"
    ) == (errors & heavy)
    assert filtered_ids(
        svc, "typed_results.tool_errors > 0 or typed_results.datapoint.mean_errors > 0.2"
    ) == (errors | heavy)
    assert filtered_ids(svc, "typed_results.tool_errors > 0", min_score=0.5) == errors & scored
    ok_no_errors = direct_ids(svc, "trace", "tool_errors", "value_number <= 0")
    # `not` selects entities with a value that fails the comparison, not missing ones.
    assert filtered_ids(svc, "not typed_results.tool_errors > 0") == ok_no_errors


def test_filter_by_another_judge_on_the_same_traces(svc: MantaService) -> None:
    bad = {t.trace_id for t in svc.get_traces(EVAL_RUN, results="strict_labels.label == 'bad'")}
    both = {
        t.trace_id
        for t in svc.get_traces(
            EVAL_RUN,
            results="strict_labels.label == 'bad' and lenient_labels.label == 'good'",
        )
    }
    assert both and both < bad
    assert svc.count_traces(EVAL_RUN, results="strict_labels.errors == 1") == len(both)


def test_a_listed_run_without_results_is_an_error_not_an_empty_match(svc: MantaService) -> None:
    with pytest.raises(QueryError, match="has no trace results for run run_grpo_math_v2"):
        svc.count_traces([TRAIN_RUN, "run_grpo_math_v2"], results="typed_results.tool_errors > 0")


@pytest.mark.parametrize(
    ("condition", "message"),
    [
        ("tool_errors > 0", "does not say which judge: write judge.column"),
        ("typed_result.tool_errors > 0", "judge 'typed_result' is unknown; did you mean"),
        ("typed_results.tool_eror > 0", "column 'tool_eror' of judge 'typed_results' is unknown"),
        ("typed_results.rollouts > 0", "exists at levels datapoint, step: say which"),
        ("typed_results.tool_errors > 'many'", "is a number but is compared with the text"),
        ("typed_results.status == 'failed'", "use 'ok' or 'error'"),
        ("typed_results.tool_errors > 0 and", "position 34: expected a column name"),
        ("typed_results.tool_errors = = 1", "position 29: expected a value"),
    ],
)
def test_bad_conditions_say_what_and_where(svc: MantaService, condition: str, message: str) -> None:
    with pytest.raises(QueryError) as raised:
        svc.count_traces(TRAIN_RUN, results=condition)
    assert message in str(raised.value)


def test_a_run_filtered_by_another_judges_results_maps_exactly_the_traces_sql_selects(
    svc: MantaService, results_env: dict
) -> None:
    selected = direct_ids(svc, "trace", "tool_errors", "value_number > 0")
    assert 0 < len(selected) < svc.count_traces(TRAIN_RUN)

    # Batches smaller than the selection: the traces are streamed and the others dropped.
    outputs = defs.strict.run(
        TRAIN_RUN,
        mode="local",
        progress=False,
        results="typed_results.tool_errors > 0",
        batch_size=7,
    )

    mapped = [o.entity_id for o in outputs[EntityLevel.TRACE]]
    assert sorted(mapped) == sorted(selected)
    assert all(o.output is not None and o.output.errors > 0 for o in outputs[EntityLevel.TRACE])
    # A filtered run is a subset run: nothing written, and the runs log says so.
    assert svc.store.rows(
        "SELECT count() FROM {db}.entity_metadata WHERE judge = 'strict_labels' "
        "AND run_id = {r:String}",
        {"r": TRAIN_RUN},
    ) == [(0,)]
    shards = sorted(Path(results_env["MANTA_RUNS_LOG_DIR"]).glob("*.jsonl"))
    rows = [json.loads(line) for shard in shards for line in shard.read_text().splitlines()]
    row = [r for r in rows if r["workflow_id"] == "manta__strict_labels"][-1]
    assert row["subset"] is True and row["traces_total"] == len(selected)
    assert row["summary"]["results_filter"] == "typed_results.tool_errors > 0"

    # A limit applies to the selected traces, in (step, datapoint, trace) order.
    first = defs.strict.run(
        TRAIN_RUN,
        mode="local",
        progress=False,
        results="typed_results.tool_errors > 0",
        limit_traces=2,
    )
    assert [o.entity_id for o in first[EntityLevel.TRACE]] == mapped[:2]


def test_a_run_filter_that_does_not_parse_fails_before_anything_runs() -> None:
    with pytest.raises(QueryError, match="position"):
        defs.strict.run(TRAIN_RUN, mode="local", results="typed_results.tool_errors >")
