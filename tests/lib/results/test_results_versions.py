"""Versions: each judge version keeps its own results; the latest per run by default, others
on request; one version's values never mix with another's; two versions compared on the same
entities."""

from __future__ import annotations

import math

import pytest

from manta_lib import EntityLevel, MapReduceComputation
from manta_lib.demo import seed_demo
from manta_lib.errors import QueryError
from manta_lib.results.entity import trace_results
from manta_lib.service import MantaService
from manta_lib.store import Store
from tests.lib.results import defs
from tests.lib.results.conftest import EVAL_RUN, TRAIN_RUN

# Seeded stores or seconds per test: make test runs them, make check leaves them out.
pytestmark = pytest.mark.slow


@pytest.fixture
def evolved(store: Store) -> MantaService:
    seed_demo(store, traces=300, seed=5)
    defs.evolving_v1.run(EVAL_RUN, mode="local", progress=False)
    defs.evolving_v1.run(TRAIN_RUN, mode="local", progress=False)
    defs.evolving_v2.run(TRAIN_RUN, mode="local", progress=False)  # kept beside v1's rows
    return MantaService(store)


def tool_errors(svc: MantaService, run_id: str) -> dict[str, int]:
    return {t.trace_id: t.tool_error_count for b in svc.iter_trace_batches(run_id) for t in b}


def test_latest_version_per_run_and_no_stale_columns(evolved: MantaService) -> None:
    v1, v2 = defs.evolving_v1.judge_version, defs.evolving_v2.judge_version
    assert v1 != v2
    train = evolved.results("evolving", TRAIN_RUN)
    # v1's rows (with `dropped_later`) are still stored for TRAIN_RUN, beside v2's: the latest
    # version there is v2 (computed last), and none of v1's columns or values show with it.
    assert "dropped_later" not in train.columns and train.added_later.all()
    assert set(train.judge_version) == {v2}
    errors = tool_errors(evolved, TRAIN_RUN)
    assert dict(zip(train.trace_id, train.errors, strict=True)) == {
        t: 10 * e for t, e in errors.items()
    }
    # "Latest" is per run: EVAL_RUN only has v1, so v1 is its latest.
    both = evolved.results("evolving", [EVAL_RUN, TRAIN_RUN])
    by_run = both.groupby("run_id").judge_version.unique().to_dict()
    assert list(by_run[EVAL_RUN]) == [v1] and list(by_run[TRAIN_RUN]) == [v2]
    assert len(both) == len(errors) + len(tool_errors(evolved, EVAL_RUN))
    eval_rows = both[both.run_id == EVAL_RUN]
    assert eval_rows.added_later.isna().all() and (eval_rows.dropped_later == "v1").all()
    assert both[both.run_id == TRAIN_RUN].dropped_later.isna().all()


def test_version_selection_and_filters_use_the_latest(evolved: MantaService) -> None:
    v1, v2 = defs.evolving_v1.judge_version, defs.evolving_v2.judge_version
    # Versions keep their own rows, so asking for v1 returns v1's results wherever they were
    # computed: on both runs (v2 computed later on TRAIN_RUN no longer replaces them).
    only_v1 = evolved.results("evolving", [EVAL_RUN, TRAIN_RUN], version=v1)
    assert set(only_v1.run_id) == {EVAL_RUN, TRAIN_RUN} and "added_later" not in only_v1.columns
    assert set(only_v1.judge_version) == {v1} and (only_v1.dropped_later == "v1").all()
    train_v1 = only_v1[only_v1.run_id == TRAIN_RUN]
    assert dict(zip(train_v1.trace_id, train_v1.errors, strict=True)) == tool_errors(
        evolved, TRAIN_RUN
    )
    # "all": one row per entity and version (TRAIN_RUN twice: v1 and v2).
    every = evolved.results("evolving", [EVAL_RUN, TRAIN_RUN], version="all")
    assert set(every.judge_version) == {v1, v2}
    assert len(every) == len(only_v1) + len(evolved.results("evolving", TRAIN_RUN))
    with pytest.raises(QueryError, match="did you mean"):
        evolved.results("evolving", TRAIN_RUN, version=v2[:-1] + "x")
    # Filters read the latest version: v1's value "v1" of dropped_later does not match on
    # TRAIN_RUN, where v2 (without that column) is the latest.
    with pytest.raises(QueryError, match="column 'dropped_later' of judge 'evolving' is unknown"):
        evolved.count_traces(TRAIN_RUN, results="evolving.dropped_later == 'v1'")
    assert evolved.count_traces(TRAIN_RUN, results="evolving.errors >= 10") == evolved.count_traces(
        TRAIN_RUN, results="evolving.errors >= 1"
    )  # v2 multiplied by ten: no value in 1..9 exists in the latest version
    assert evolved.count_traces(EVAL_RUN, results="evolving.dropped_later == 'v1'") == len(
        evolved.results("evolving", EVAL_RUN)
    )
    judges = {(v.version, v.level): v for j in evolved.judges() for v in j.versions}
    # v1 has results in both runs now (they are no longer replaced by v2's on TRAIN_RUN).
    assert judges[(v2, "trace")].runs == 1 and judges[(v1, "trace")].runs == 2


def ref_kappa(a: list[object], b: list[object]) -> float | None:
    n = len(a)
    agree = sum(x == y for x, y in zip(a, b, strict=True)) / n
    chance = sum((a.count(c) / n) * (b.count(c) / n) for c in set(a) | set(b))
    return None if chance >= 1 else (agree - chance) / (1 - chance)


def ref_pearson(a: list[float], b: list[float]) -> float:
    n = len(a)
    ma, mb = sum(a) / n, sum(b) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b, strict=True))
    return cov / math.sqrt(sum((x - ma) ** 2 for x in a) * sum((y - mb) ** 2 for y in b))


def test_compare_versions_on_the_same_traces_matches_a_direct_computation(
    evolved: MantaService,
) -> None:
    v1, v2 = defs.evolving_v1.judge_version, defs.evolving_v2.judge_version
    errors = tool_errors(evolved, TRAIN_RUN)
    ids = sorted(errors)
    a = [float(errors[t]) for t in ids]  # v1: the error count
    b = [float(10 * errors[t]) for t in ids]  # v2: ten times it
    label_a = ["bad" if errors[t] else "good" for t in ids]  # v1's labels
    label_b = ["bad" if errors[t] > 1 else "good" for t in ids]  # v2's, more lenient
    result = evolved.compare_versions("evolving", TRAIN_RUN, v1, v2)
    assert result.common == len(ids) and result.only_a == result.only_b == 0
    by_column = {c.column: c for c in result.columns}
    assert set(by_column) == {"errors", "label"}  # the columns both versions have
    numbers, labels = by_column["errors"], by_column["label"]
    assert numbers.n == labels.n == len(ids)
    assert numbers.correlation == pytest.approx(ref_pearson(a, b))
    assert numbers.mad == pytest.approx(sum(abs(x - y) for x, y in zip(a, b, strict=True)) / len(a))
    assert set(numbers.disagreeing) == {t for t in ids if errors[t] != 0}
    assert labels.accuracy == pytest.approx(
        sum(x == y for x, y in zip(label_a, label_b, strict=True)) / len(ids)
    )
    assert labels.kappa == pytest.approx(ref_kappa(label_a, label_b))
    assert set(labels.disagreeing) == {t for t in ids if errors[t] == 1}
    assert labels.disagreeing and numbers.disagreeing  # the demo data has both kinds of trace


def test_one_trace_shows_its_runs_latest_version_and_series_refuse_mixed_versions(
    evolved: MantaService,
) -> None:
    v1, v2 = defs.evolving_v1.judge_version, defs.evolving_v2.judge_version
    trace = next(iter(next(iter(evolved.iter_trace_batches(TRAIN_RUN)))))
    (train,) = [r for r in trace_results(evolved.store, trace) if r.judge == "evolving"]
    assert train.judge_version == v2 and train.values["errors"] == 10 * trace.tool_error_count
    assert "dropped_later" not in train.values
    other = next(iter(next(iter(evolved.iter_trace_batches(EVAL_RUN)))))
    (only_v1,) = [r for r in trace_results(evolved.store, other) if r.judge == "evolving"]
    assert only_v1.judge_version == v1 and only_v1.values["dropped_later"] == "v1"
    with pytest.raises(QueryError, match="several versions"):
        evolved.series("evolving", "errors", TRAIN_RUN, version="all")
    per_step = evolved.series("evolving", "errors", TRAIN_RUN, version=v1)
    assert int(per_step["count"].sum()) == len(tool_errors(evolved, TRAIN_RUN))


def test_versions_have_readable_labels_kept_sources_and_a_diff(
    evolved: MantaService, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import inspect

    from starlette.testclient import TestClient

    from manta_lib.explorer import create_app
    from manta_lib.store.judge_versions import version_records
    from tests.lib.results.conftest import run_main

    v1, v2 = defs.evolving_v1.judge_version, defs.evolving_v2.judge_version
    records = version_records(evolved.store, "evolving")
    # The hashed source is kept, whole: each version's level function is in its own record.
    assert records[("evolving", v1)][1] == defs.evolving_v1.version_source
    assert inspect.getsource(defs.map_v1) in records[("evolving", v1)][1]
    assert inspect.getsource(defs.map_v2) in records[("evolving", v2)][1]
    # The edited version names what changed; the label is shown beside the hash.
    label_v2 = records[("evolving", v2)][0]
    assert "changed trace: map_v2" in label_v2 and "changed" not in records[("evolving", v1)][0]
    (info,) = [j for j in evolved.judges() if j.judge == "evolving"]
    assert {v.version: v.label for v in info.versions}[v2] == label_v2
    # An explicit label renames the version without changing its hash.
    named = MapReduceComputation(
        "Evolving", project_id="prj_demo", version_label="errors x10"
    ).add_level(EntityLevel.TRACE, defs.map_v2, defs.EvolvingV2)
    assert named.judge_version == v2
    named.run(TRAIN_RUN, mode="local", progress=False)
    assert version_records(evolved.store, "evolving")[("evolving", v2)][0] == "errors x10"
    # Version comparison: labels, each side's mean, A then B in the API, CLI and explorer.
    result = evolved.compare_versions("evolving", TRAIN_RUN, v1, v2)
    assert result.label_a == f"evolving {v1}" + (
        f" ({records[('evolving', v1)][0]})" if records[("evolving", v1)][0] else ""
    )
    assert result.label_b == f"evolving {v2} (errors x10)"
    errors = {c.column: c for c in result.columns}["errors"]
    assert errors.mean_b == pytest.approx(10 * errors.mean_a)
    code, out, _ = run_main(
        ["compare", "evolving", "-r", TRAIN_RUN, "--version", v1, "--version", v2, "-f", "table"],
        monkeypatch,
        capsys,
    )
    assert code == 0 and f"vs B evolving {v2} (errors x10)" in " ".join(out.split())
    code, out, _ = run_main(["judges", "-f", "csv"], monkeypatch, capsys)
    assert code == 0 and "errors x10" in out
    page = TestClient(create_app(evolved.store.settings), base_url="http://127.0.0.1").get(
        f"/compare/evolving?run={TRAIN_RUN}&version={v1}&version={v2}"
    )
    assert page.status_code == 200 and 'id="source-diff"' in page.text
    diff = page.text.split('id="source-diff"', 1)[1]
    assert '<span class="diff-del">-def map_v1(' in diff
    assert '<span class="diff-add">+def map_v2(' in diff
    assert f"A evolving {v1}" in page.text and f"vs B evolving {v2} (errors x10)" in page.text
