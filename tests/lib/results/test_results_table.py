"""results(): one typed row per entity, read back from real pipeline results on demo data."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from manta_lib.errors import QueryError
from manta_lib.service import MantaService
from tests.lib.results import defs
from tests.lib.results.conftest import EVAL_RUN, TRAIN_RUN

# Seeded stores or seconds per test: make test runs them, make check leaves them out.
pytestmark = pytest.mark.slow


def test_every_output_type_round_trips_with_its_python_type(svc: MantaService) -> None:
    frame = svc.results("typed_results", EVAL_RUN)
    expected = {}
    for batch in svc.iter_trace_batches(EVAL_RUN):
        for trace in batch:
            if not defs.failing_trace(trace.trace_id):
                expected[trace.trace_id] = defs.map_typed(trace).model_dump(mode="json")
    ok = frame[frame.status == "ok"].set_index("trace_id")
    assert set(ok.index) == set(expected)
    assert str(frame.tool_errors.dtype) == "Int64"
    assert str(frame.passed.dtype) == "boolean"
    assert frame.score.dtype == "float64"
    for trace_id, values in expected.items():
        row = ok.loc[trace_id].to_dict()
        for name, value in values.items():
            got = row[name]
            if value is None:
                assert got is None or math.isnan(got), name
            else:
                assert got == value, (trace_id, name, got, value)
                assert isinstance(got, type(value)) or (type(value) is int and int(got) == got)
        assert type(row["either"]) is type(values["either"])
        assert isinstance(row["tags"], list) and isinstance(row["counts"], dict)


def test_failed_entities_have_status_error_the_message_and_null_values(svc: MantaService) -> None:
    frame = svc.results("typed_results", EVAL_RUN)
    failed = frame[frame.status == "error"]
    assert len(failed) and set(failed.trace_id) == {
        t for t in frame.trace_id if defs.failing_trace(t)
    }
    assert failed.error.str.contains("ValueError: cannot judge").all()
    assert failed.tool_errors.isna().all() and failed.tags.isna().all()
    assert frame[frame.status == "ok"].error.isna().all()


def test_keys_bookkeeping_and_several_runs(svc: MantaService) -> None:
    frame = svc.results("typed_results", [EVAL_RUN, TRAIN_RUN])
    assert list(frame.columns[:9]) == [
        "run_id", "trace_id", "datapoint_id", "step_number", "phase",
        "status", "error", "judge_version", "computed_at",
    ]  # fmt: skip
    direct = {
        (r.run_id, r.trace_id): (r.datapoint_id, r.step_number, r.phase.value)
        for run in (EVAL_RUN, TRAIN_RUN)
        for r in svc.get_traces(run, limit=None)
    }
    assert len(frame) == len(direct)
    got = {
        (r.run_id, r.trace_id): (r.datapoint_id, r.step_number, r.phase) for r in frame.itertuples()
    }
    assert got == direct
    assert frame.judge_version.nunique() == 1
    assert frame.judge_version.iloc[0] == defs.typed.judge_version


def test_datapoint_and_step_levels_have_their_keys(svc: MantaService) -> None:
    datapoints = svc.results("typed_results", TRAIN_RUN, level="datapoint")
    assert "datapoint_id" in datapoints and "trace_id" not in datapoints
    assert set(datapoints.datapoint_id) == {d.datapoint_id for d in svc.list_datapoints(TRAIN_RUN)}
    # One row per datapoint at one step, counting that step's judged traces only.
    groups: dict[tuple[str, int], int] = {}
    across: dict[str, int] = {}
    for trace in svc.get_traces(TRAIN_RUN):
        across[trace.datapoint_id] = across.get(trace.datapoint_id, 0) + 1
        if not defs.failing_trace(trace.trace_id):
            key = (trace.datapoint_id, trace.step_number)
            groups[key] = groups.get(key, 0) + 1
    got = zip(datapoints.datapoint_id, datapoints.step_number, datapoints.rollouts, strict=True)
    assert {(d, int(s)): int(n) for d, s, n in got} == groups
    # One row per datapoint over the run: all of its traces, whatever their step.
    history = svc.results("datapoint_history", TRAIN_RUN, level="datapoint_across_steps")
    assert "step_number" not in history and "trace_id" not in history
    assert dict(zip(history.datapoint_id, history.rollouts, strict=True)) == across
    assert len(across) < len(groups)  # datapoints recur over steps in the demo data
    steps = svc.results("typed_results", TRAIN_RUN, level="step")
    assert str(steps.step_number.dtype) == "Int64"
    # One row per step and phase, as the traces have them.
    assert list(zip(steps.step_number, steps.phase, strict=False)) == sorted(
        (s.step_number, p) for s in svc.list_steps(TRAIN_RUN) for p in s.phases
    )
    assert str(steps.rollouts.dtype) == "Int64" and steps.mean_errors.dtype == "float64"


def test_where_limit_and_columns(svc: MantaService) -> None:
    frame = svc.results("typed_results", EVAL_RUN)
    picked = svc.results(
        "typed_results", EVAL_RUN, where="tool_errors >= 1 and label == 'bad'", columns=["label"]
    )
    ok = frame[(frame.status == "ok") & (frame.tool_errors >= 1)]
    assert sorted(picked.trace_id) == sorted(ok.trace_id)
    assert "tool_errors" not in picked and "label" in picked
    errors = svc.results("typed_results", EVAL_RUN, where="status == 'error'")
    assert len(errors) == (frame.status == "error").sum()
    negated = svc.results("typed_results", EVAL_RUN, where="not tool_errors >= 1")
    # A failed entity has no value: `not` does not select it.
    assert len(negated) == ((frame.status == "ok") & (frame.tool_errors < 1)).sum()
    assert len(svc.results("typed_results", EVAL_RUN, limit=5)) == 5
    steps = svc.results("typed_results", TRAIN_RUN, where="step_number >= 2 and tool_errors > 0")
    everything = svc.results("typed_results", TRAIN_RUN)
    expected = everything[(everything.step_number >= 2) & (everything.tool_errors > 0)]
    assert sorted(steps.trace_id) == sorted(expected.trace_id)
    one = svc.results("typed_results", TRAIN_RUN, level="step", where="step_number == 1")
    assert list(zip(one.step_number, one.phase, strict=False)) == [(1, "eval"), (1, "train")]
    eval_only = svc.results("typed_results", TRAIN_RUN, level="step", where="phase == 'eval'")
    assert set(eval_only.phase) == {"eval"} and len(eval_only) < len(steps)


def test_arrow_table_is_typed_and_polars_ready(svc: MantaService) -> None:
    import pyarrow as pa

    table = svc.results_arrow("typed_results", EVAL_RUN)
    assert table.schema.field("tool_errors").type == pa.int64()
    assert table.schema.field("passed").type == pa.bool_()
    assert pa.types.is_list(table.schema.field("tags").type)
    assert pa.types.is_struct(table.schema.field("detail").type)
    frame = svc.results("typed_results", EVAL_RUN)
    assert table.num_rows == len(frame)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        ({"judge": "typed_result"}, "judge 'typed_result' is unknown; did you mean: typed_results"),
        ({"level": "datapont"}, "level 'datapont' is unknown; did you mean: datapoint"),
        ({"version": "abc"}, "version 'abc' of judge 'typed_results' has no stored results"),
        ({"columns": ["tool_error"]}, "column 'tool_error' of judge 'typed_results' is unknown"),
        ({"where": "tool_errors > 'x'"}, "is a number but is compared with the text 'x'"),
        ({"where": "passed > true"}, "column 'passed' is boolean: use == or !="),
        ({"where": "tags == 'a'"}, "holds JSON values"),
        ({"where": "tool_errors >> 1"}, "position 14: expected a value"),
        ({"where": "tool_errors > 1 and"}, "expected a column name, found the end"),
        ({"run_id": "run_nope"}, "has no results for run run_nope"),
        ({"level": "run"}, "has no results at level 'run'; it has results at:"),
        (
            {"run_id": [EVAL_RUN, "run_grpo_math_v2"]},
            "judge 'typed_results' has no trace results for run run_grpo_math_v2",
        ),
    ],
)
def test_bad_input_names_the_value_and_close_matches(
    svc: MantaService, call: dict, message: str
) -> None:
    arguments = {"judge": "typed_results", "run_id": EVAL_RUN, **call}
    with pytest.raises(QueryError, match=None) as raised:
        svc.results(**arguments)
    assert message in str(raised.value)


def test_judges_lists_versions_levels_counts_and_columns(svc: MantaService) -> None:
    judges = {j.judge: j for j in svc.judges()}
    assert {"typed_results", "strict_labels", "lenient_labels"} <= set(judges)
    typed = judges["typed_results"]
    assert typed.levels == ("trace", "datapoint", "step")
    assert typed.registered_version == defs.typed.judge_version
    trace = next(v for v in typed.versions if v.level == "trace")
    frame = svc.results("typed_results", [EVAL_RUN, TRAIN_RUN])
    assert (trace.runs, trace.entities, trace.errors) == (
        2, len(frame), int((frame.status == "error").sum()),
    )  # fmt: skip
    assert "tool_errors" in trace.columns
    types = {(c.name, c.level): c.type for c in typed.columns}
    assert types[("tool_errors", "trace")] == "number" and types[("tags", "trace")] == "json"
    only_eval = {j.judge for j in svc.judges(run_id=TRAIN_RUN)}
    assert only_eval == {"typed_results", "datapoint_history"}


def test_frame_is_pandas(svc: MantaService) -> None:
    assert isinstance(svc.results("typed_results", EVAL_RUN, limit=1), pd.DataFrame)
