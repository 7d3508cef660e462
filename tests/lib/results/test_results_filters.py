"""Trace filters on stored results: each kind of condition matches a direct SQL computation."""

from __future__ import annotations

import pytest

from manta_lib.errors import QueryError
from manta_lib.service import MantaService
from manta_lib.store.results_queries import has_key_columns
from tests.lib.results import defs
from tests.lib.results.conftest import EVAL_RUN, TRAIN_RUN


def direct_ids(svc: MantaService, level: str, column: str, predicate: str) -> set[str]:
    """Trace ids covered by entities of ``typed_results`` at ``level`` whose ``column``
    satisfies ``predicate`` (SQL over the raw value columns), written by hand."""
    entities = (
        f"SELECT entity_id FROM {{db}}.entity_metadata FINAL WHERE judge = 'typed_results' "
        f"AND entity_level = '{level}' AND run_id = {{r:String}} AND column = '{column}' "
        f"AND {predicate}"
    )
    if has_key_columns(svc.store):  # entity_metadata carries datapoint_id / step_number
        keys = {"datapoint": "datapoint_id, step_number", "step": "step_number"}.get(level)
        if keys is not None:
            entities = entities.replace("SELECT entity_id", f"SELECT {keys}", 1)
        key = {
            "trace": "trace_id",
            "datapoint": "(datapoint_id, step_number)",
            "step": "step_number",
        }
    else:
        key = {"trace": "trace_id", "datapoint": "datapoint_id", "step": "toString(step_number)"}
    rows = svc.store.rows(
        f"SELECT trace_id FROM {{db}}.traces WHERE run_id = {{r:String}} "
        f"AND {key[level]} IN ({entities})",
        {"r": TRAIN_RUN},
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
        ("typed_results.step.rollouts >= 115", "step", "rollouts", "value_number >= 115"),
    ],
)
def test_each_kind_of_condition_matches_direct_sql(
    svc: MantaService, condition: str, level: str, column: str, predicate: str
) -> None:
    expected = direct_ids(svc, level, column, predicate)
    assert expected, "the demo data should make this condition select something"
    assert filtered_ids(svc, condition) == expected


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
