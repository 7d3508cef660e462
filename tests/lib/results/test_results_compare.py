"""Comparisons match reference figures computed here by hand (no numpy/scipy)."""

from __future__ import annotations

import json
import math

import pytest

from manta_lib.errors import QueryError
from manta_lib.service import MantaService
from tests.lib.results.conftest import EVAL_RUN, TRAIN_RUN

# Seeded stores or seconds per test: make test runs them, make check leaves them out.
pytestmark = pytest.mark.slow


def ref_percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    rank = q * (len(ordered) - 1)
    below = int(rank)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (rank - below)


def ref_kappa(a: list[str], b: list[str]) -> float:
    n = len(a)
    agree = sum(1 for x, y in zip(a, b, strict=True) if x == y) / n
    chance = sum((a.count(label) / n) * (b.count(label) / n) for label in set(a) | set(b))
    return (agree - chance) / (1 - chance)


def ref_pearson(a: list[float], b: list[float]) -> float:
    n = len(a)
    ma, mb = sum(a) / n, sum(b) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b, strict=True))
    return cov / math.sqrt(sum((x - ma) ** 2 for x in a) * sum((y - mb) ** 2 for y in b))


def test_two_judges_agreement_matches_a_direct_computation(svc: MantaService) -> None:
    strict, lenient, ids = [], [], []
    strict_errors, lenient_errors = [], []
    for batch in svc.iter_trace_batches(EVAL_RUN):
        for trace in batch:
            errors = trace.tool_error_count
            ids.append(trace.trace_id)
            strict.append("bad" if errors else "good")
            lenient.append("bad" if errors > 1 else "good")
            strict_errors.append(float(errors))
            lenient_errors.append(float(max(errors - 1, 0)))
    result = svc.compare_judges("strict_labels", "lenient_labels", EVAL_RUN)
    by_column = {c.column: c for c in result.columns}
    label, errors = by_column["label"], by_column["errors"]
    assert result.common == len(ids) and result.only_a == result.only_b == 0
    assert label.accuracy == pytest.approx(
        sum(x == y for x, y in zip(strict, lenient, strict=True)) / len(ids)
    )
    assert label.kappa == pytest.approx(ref_kappa(strict, lenient))
    assert set(label.disagreeing) == {
        i for i, x, y in zip(ids, strict, lenient, strict=True) if x != y
    }
    assert errors.correlation == pytest.approx(ref_pearson(strict_errors, lenient_errors))
    assert errors.mad == pytest.approx(
        sum(abs(x - y) for x, y in zip(strict_errors, lenient_errors, strict=True)) / len(ids)
    )


def test_runs_at_the_step_level_join_common_steps_with_deltas(svc: MantaService) -> None:
    a = svc.results("typed_results", EVAL_RUN, level="step")
    b = svc.results("typed_results", TRAIN_RUN, level="step")
    result = svc.compare_runs("typed_results", EVAL_RUN, TRAIN_RUN, level="step", seed=3)
    # Steps are matched per phase: the eval-only run meets the training run's eval steps.
    common = sorted(
        set(zip(a.step_number, a.phase, strict=False))
        & set(zip(b.step_number, b.phase, strict=False))
    )
    joined = sorted(zip(result.joined.step_number, result.joined.phase, strict=False))
    assert joined == common and result.note == ""
    assert {phase for _, phase in common} == {"eval"}
    # Distribution figures are per phase too: eval steps against eval steps only.
    assert {n.phase for n in result.numeric if n.column == "mean_errors"} == {"eval", "train"}
    shift = next(n for n in result.numeric if n.column == "mean_errors" and n.phase == "eval")
    values_a = list(a[a.phase == "eval"].mean_errors)
    values_b = list(b[b.phase == "eval"].mean_errors)
    assert shift.mean_a == pytest.approx(sum(values_a) / len(values_a))
    assert shift.delta_mean == pytest.approx(
        sum(values_b) / len(values_b) - sum(values_a) / len(values_a)
    )
    assert shift.p95_b == pytest.approx(ref_percentile(values_b, 0.95))
    assert shift.delta_p50 == pytest.approx(
        ref_percentile(values_b, 0.5) - ref_percentile(values_a, 0.5)
    )
    assert shift.ci_low is not None and shift.ci_high is not None
    assert shift.ci_low < shift.ci_high
    again = svc.compare_runs("typed_results", EVAL_RUN, TRAIN_RUN, level="step", seed=3)
    assert next(n for n in again.numeric if n.column == "mean_errors") == shift
    for row in result.joined.itertuples():
        assert row.rollouts_delta == row.rollouts_b - row.rollouts_a


def test_categorical_shift_and_no_common_entities_is_said(svc: MantaService) -> None:
    result = svc.compare_runs("typed_results", EVAL_RUN, TRAIN_RUN, level="trace")
    assert result.joined.empty and "no common trace entities" in result.note
    labels = next(c for c in result.categorical if c.column == "label" and c.phase == "eval")
    a = svc.results("typed_results", EVAL_RUN, where="status == 'ok' and phase == 'eval'")
    b = svc.results("typed_results", TRAIN_RUN, where="status == 'ok' and phase == 'eval'")
    a, b = a.label.tolist(), b.label.tolist()
    assert labels.shares_a["bad"] == pytest.approx(a.count("bad") / len(a))
    assert labels.total_variation == pytest.approx(
        0.5 * sum(abs(a.count(v) / len(a) - b.count(v) / len(b)) for v in ("bad", "good"))
    )
    # The eval-only run has no train traces: that phase has no shift to report.
    train = next(c for c in result.categorical if c.column == "label" and c.phase == "train")
    assert train.n_a == 0 and train.total_variation is None


def test_judge_against_grader(svc: MantaService) -> None:
    frame = svc.results("typed_results", TRAIN_RUN, where="status == 'ok'")
    graders = {
        t.trace_id: t.grader_result() for batch in svc.iter_trace_batches(TRAIN_RUN) for t in batch
    }
    pairs = [
        (bool(row.passed), graders[row.trace_id].passed)
        for row in frame.itertuples()
        if graders[row.trace_id] is not None and graders[row.trace_id].passed is not None
    ]
    result = svc.compare_with_grader("typed_results", TRAIN_RUN, "passed")
    column = result.columns[0]
    assert column.n == len(pairs)
    assert column.accuracy == pytest.approx(sum(x == y for x, y in pairs) / len(pairs))
    scores = svc.compare_with_grader("typed_results", TRAIN_RUN, "score").columns[0]
    assert scores.mad == 0.0  # the judge copied the trace score
    with pytest.raises(QueryError, match="compare a boolean column"):
        svc.compare_with_grader("typed_results", TRAIN_RUN, "label")


def test_versions_without_common_entities_say_so(svc: MantaService) -> None:
    version = svc.results("typed_results", EVAL_RUN).judge_version.iloc[0]
    with pytest.raises(QueryError, match="version 'nope' of judge 'typed_results'"):
        svc.compare_versions("typed_results", EVAL_RUN, version, "nope")
    same = svc.compare_versions("typed_results", EVAL_RUN, version, version)
    assert all(c.accuracy in (None, 1.0) and not c.disagreeing for c in same.columns)


def test_compare_cli_shapes_and_exit_codes(cli) -> None:
    code, out, _ = cli(
        "compare", "strict_labels", "-r", EVAL_RUN, "--against", "lenient_labels", "-f", "json"
    )
    summary = json.loads(out)
    assert code == 0 and {c["column"] for c in summary["columns"]} == {"label", "errors"}
    code, out, _ = cli(
        "compare", "typed_results", "-r", EVAL_RUN, "-r", TRAIN_RUN, "-l", "step", "-f", "csv"
    )
    assert code == 0 and out.splitlines()[0].startswith("step_number,")
    code, out, _ = cli("compare", "typed_results", "-r", TRAIN_RUN, "--against", "grader",
                       "-c", "passed", "-f", "table")  # fmt: skip
    assert code == 0 and "accuracy" in out
    assert cli("compare", "typed_results", "-r", TRAIN_RUN)[0] == 2
    code, _, err = cli("compare", "typed_results", "-r", TRAIN_RUN, "--against", "strict_label")
    assert code == 1 and "did you mean: strict_labels" in err


def test_agreement_shows_each_sides_mean_in_one_a_b_order_everywhere(
    svc: MantaService, cli
) -> None:
    strict_errors, lenient_errors = [], []
    for batch in svc.iter_trace_batches(EVAL_RUN):
        for trace in batch:
            strict_errors.append(float(trace.tool_error_count))
            lenient_errors.append(float(max(trace.tool_error_count - 1, 0)))
    result = svc.compare_judges("strict_labels", "lenient_labels", EVAL_RUN)
    errors = {c.column: c for c in result.columns}["errors"]
    # Agreement alone hides which side is higher: the means say it.
    assert errors.mean_a == pytest.approx(sum(strict_errors) / len(strict_errors))
    assert errors.mean_b == pytest.approx(sum(lenient_errors) / len(lenient_errors))
    assert errors.mean_a > errors.mean_b
    frame = svc.results("typed_results", TRAIN_RUN, where="status == 'ok'")
    graders = {
        t.trace_id: t.grader_result() for batch in svc.iter_trace_batches(TRAIN_RUN) for t in batch
    }
    pairs = [
        (float(bool(row.passed)), float(graders[row.trace_id].passed))
        for row in frame.itertuples()
        if graders[row.trace_id] is not None and graders[row.trace_id].passed is not None
    ]
    passed = svc.compare_with_grader("typed_results", TRAIN_RUN, "passed").columns[0]
    assert passed.mean_a == pytest.approx(sum(a for a, _ in pairs) / len(pairs))  # pass rates
    assert passed.mean_b == pytest.approx(sum(b for _, b in pairs) / len(pairs))
    # JSON, table and explorer name A and B the same way, A first.
    args = ("compare", "strict_labels", "-r", EVAL_RUN, "--against", "lenient_labels")
    summary = json.loads(cli(*args, "-f", "json")[1])
    assert (summary["a"], summary["b"]) == ("strict_labels", "lenient_labels")
    column = {c["column"]: c for c in summary["columns"]}["errors"]
    assert (column["mean_a"], column["mean_b"]) == pytest.approx((errors.mean_a, errors.mean_b))
    table = cli(*args, "-f", "table")[1]
    assert "A strict_labels vs B lenient_labels" in " ".join(table.split())
    from starlette.testclient import TestClient

    from manta_lib.explorer import create_app
    from manta_lib.settings import load_settings

    version_a = svc.results("typed_results", EVAL_RUN).judge_version.iloc[0]
    page = TestClient(create_app(load_settings()), base_url="http://127.0.0.1").get(
        f"/compare/typed_results?run={EVAL_RUN}&version={version_a}&version={version_a}"
    )
    assert page.status_code == 200
    heading = page.text.split("<h2>", 1)[1].split("</h2>", 1)[0]
    assert heading.startswith(f"A typed_results {version_a}") and " vs B typed_results " in heading
    assert '<th class="num">mean A</th><th class="num">mean B</th>' in page.text
