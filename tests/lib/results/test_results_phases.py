"""Steps in numeric order and train/eval apart, in every view, on a demo store with 11 steps.

The demo training runs evaluate every other step: a step-level or run-level value is one
phase's, and steps 0, 1, 2 … 10 come in that order (never 0, 1, 10, 2 …). Reference figures
are SQL over ``traces``.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator

import pytest
from pydantic import BaseModel
from starlette.testclient import TestClient

from manta import EntityLevel, EntityRef, MapReduceComputation, TraceContext
from manta_lib.demo import seed_demo
from manta_lib.explorer import create_app
from manta_lib.service import MantaService
from manta_lib.settings import load_settings
from manta_lib.store import Store
from tests.conftest import _ENV_VARS, StoreTemplates, drop_database
from tests.lib.results.conftest import run_main

# Seeded stores or seconds per test: make test runs them, make check leaves them out.
pytestmark = pytest.mark.slow

RUN_A, RUN_B = "run_grpo_math_v1", "run_grpo_math_v2"
JUDGE = "phase_pass_rate"


class Rollout(BaseModel):
    passed: bool


class Rate(BaseModel):
    passes: int
    n: int
    pass_rate: float


def map_rollout(trace: TraceContext) -> Rollout:
    return Rollout(passed=trace.score is not None and trace.score >= 0.5)


def rate_of_rollouts(entity: EntityRef, rollouts: list[Rollout]) -> Rate:
    passes = sum(r.passed for r in rollouts)
    return Rate(passes=passes, n=len(rollouts), pass_rate=passes / len(rollouts))


def rate_of_rates(entity: EntityRef, rates: list[Rate]) -> Rate:
    passes, n = sum(r.passes for r in rates), sum(r.n for r in rates)
    return Rate(passes=passes, n=n, pass_rate=passes / n)


pass_rate = (
    MapReduceComputation("Phase pass rate", project_id="prj_demo")
    .add_level(EntityLevel.TRACE, map_rollout, Rollout)
    .add_level(EntityLevel.DATAPOINT, rate_of_rollouts, Rate)
    .add_level(EntityLevel.STEP, rate_of_rates, Rate)
    .add_level(EntityLevel.RUN, rate_of_rates, Rate)
)

#: SQL's pass rate of a run per (step, phase): the reference every view is checked against.
STEP_SQL = (
    "SELECT step_number, toString(phase), avg(ifNull(score >= 0.5, 0)), count() "
    "FROM {db}.traces WHERE run_id = {r:String} GROUP BY step_number, phase"
)


def _build_phases() -> None:
    with Store.open(load_settings()) as store:
        seed_demo(store, traces=3000, seed=7, progress=False)
    for run in (RUN_A, RUN_B):
        pass_rate.run(run, mode="local", progress=False)


@pytest.fixture(scope="module")
def phases_env(store_templates: StoreTemplates) -> Iterator[dict]:
    """A fresh database with 3,000 demo traces (11 steps per training run) and the judge's
    results for two training runs (a copy of one built once per test process)."""
    env = store_templates.copy("phases", _build_phases, prefix="ph")
    with pytest.MonkeyPatch.context() as patch:
        for name in _ENV_VARS:
            patch.delenv(name, raising=False)
        for name, value in env.items():
            patch.setenv(name, value)
        yield env
    drop_database(env["CLICKHOUSE_URL"], env["MANTA_DATABASE"])


@pytest.fixture
def svc(phases_env: dict) -> Iterator[MantaService]:
    with MantaService() as service:
        yield service


def sql_rates(svc: MantaService, run_id: str) -> dict[tuple[int, str], tuple[float, int]]:
    return {(s, p): (rate, n) for s, p, rate, n in svc.store.rows(STEP_SQL, {"r": run_id})}


def test_the_step_level_is_one_value_per_step_and_phase_equal_to_sql(svc: MantaService) -> None:
    expected = sql_rates(svc, RUN_A)
    assert {p for _, p in expected} == {"train", "eval"}
    assert max(s for s, _ in expected) >= 10, "the order checks need steps past 9"
    steps = svc.results(JUDGE, RUN_A, level="step")
    got = {(int(r.step_number), r.phase): (r.pass_rate, int(r.n)) for r in steps.itertuples()}
    assert got.keys() == expected.keys()
    for key, (rate, n) in expected.items():
        assert got[key] == (pytest.approx(rate, abs=1e-12), n), key
    # The trace-level series and the step-level series draw the same per-phase points.
    for level, column in (("trace", "passed"), ("step", "pass_rate")):
        curve = svc.series(JUDGE, column, RUN_A, level=level)
        points = {(int(r.step_number), r.phase): r.mean for r in curve.itertuples()}
        assert points == {k: pytest.approx(rate, abs=1e-12) for k, (rate, _) in expected.items()}


def test_the_run_level_is_one_value_per_phase(svc: MantaService) -> None:
    expected = dict(
        svc.store.rows(
            "SELECT toString(phase), avg(ifNull(score >= 0.5, 0)) FROM {db}.traces "
            "WHERE run_id = {r:String} GROUP BY phase",
            {"r": RUN_A},
        )
    )
    run = svc.results(JUDGE, RUN_A, level="run")
    assert list(run.phase) == ["eval", "train"]
    assert dict(zip(run.phase, run.pass_rate, strict=True)) == pytest.approx(expected)


def _ordered(keys: list[tuple[int, str]]) -> bool:
    return keys == sorted(keys) and len(keys) > 11


def test_steps_come_in_numeric_order_from_the_api_and_a_run_result(svc: MantaService) -> None:
    steps = svc.results(JUDGE, RUN_A, level="step")
    keys = list(zip(steps.step_number.astype(int), steps.phase, strict=True))
    assert _ordered(keys)
    assert [int(s) for s in steps.step_number][:4] == [0, 0, 1, 2]
    result = pass_rate.run(RUN_A, mode="local", progress=False)  # all stored: nothing to do
    frame = result.to_pandas(EntityLevel.STEP)
    assert list(zip(frame.step_number.astype(int), frame.phase, strict=True)) == keys
    assert [(o.step_number, o.phase) for o in result[EntityLevel.STEP]] == keys
    limited = svc.results(JUDGE, RUN_A, level="step", limit=3)
    assert list(zip(limited.step_number, limited.phase, strict=False)) == keys[:3]
    # Datapoint groups: by step as a number, phase, then datapoint.
    groups = svc.results(JUDGE, RUN_A, level="datapoint")
    group_keys = list(
        zip(groups.step_number.astype(int), groups.phase, groups.datapoint_id, strict=True)
    )
    assert group_keys == sorted(group_keys)


def test_the_cli_lists_steps_in_numeric_order(
    phases_env: dict, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["results", JUDGE, "--run", RUN_A, "--level", "step", "--format", "csv"]
    code, out, _ = run_main(args, monkeypatch, capsys)
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and list(rows[0])[:3] == ["run_id", "step_number", "phase"]
    assert _ordered([(int(r["step_number"]), r["phase"]) for r in rows])
    code, out, _ = run_main([*args, "--limit", "3"], monkeypatch, capsys)
    first = [(int(r["step_number"]), r["phase"]) for r in csv.DictReader(io.StringIO(out))]
    assert code == 0 and first == [(0, "eval"), (0, "train"), (1, "train")]


def test_compare_matches_steps_per_phase_in_numeric_order(svc: MantaService) -> None:
    result = svc.compare_runs(JUDGE, RUN_A, RUN_B, level="step", seed=1)
    keys = list(zip(result.joined.step_number.astype(int), result.joined.phase, strict=True))
    assert _ordered(keys)
    a, b = sql_rates(svc, RUN_A), sql_rates(svc, RUN_B)
    for row in result.joined.itertuples():
        key = (int(row.step_number), row.phase)
        assert (row.pass_rate_a, row.pass_rate_b) == pytest.approx((a[key][0], b[key][0]))
    # The distribution figures compare eval steps with eval steps, train with train.
    shifts = {n.phase: n for n in result.numeric if n.column == "pass_rate"}
    assert set(shifts) == {"eval", "train"}
    eval_a = [rate for (_, phase), (rate, _) in a.items() if phase == "eval"]
    assert shifts["eval"].n_a == len(eval_a)
    assert shifts["eval"].mean_a == pytest.approx(sum(eval_a) / len(eval_a))


@pytest.fixture
def client(phases_env: dict) -> Iterator[TestClient]:
    with TestClient(create_app(load_settings()), base_url="http://127.0.0.1") as test_client:
        yield test_client


def test_the_explorer_datapoint_table_lists_steps_in_numeric_order(
    svc: MantaService, client: TestClient
) -> None:
    datapoint = svc.store.rows(
        "SELECT datapoint_id FROM {db}.traces WHERE run_id = {r:String} GROUP BY datapoint_id "
        "HAVING min(step_number) < 10 AND max(step_number) >= 10 ORDER BY datapoint_id LIMIT 1",
        {"r": RUN_A},
    )[0][0]
    page = client.get(
        f"/results/{JUDGE}",
        params={"run": RUN_A, "level": "datapoint", "where": f"datapoint_id == '{datapoint}'"},
    )
    assert page.status_code == 200
    steps = [int(s) for s in re.findall(r"step_min=(\d+)&amp;step_max=\1", page.text)]
    assert len(steps) > 1 and steps == sorted(steps) and steps[-1] >= 10


def _lines(html: str) -> dict[str, list[tuple[int, str]]]:
    """The chart's drawn lines: legend label -> its points' tooltips (step, text)."""
    titles = re.findall(r"<title>([^<]*), step (\d+): ([^<]*)</title>", html)
    lines: dict[str, list[tuple[int, str]]] = {}
    for label, step, text in titles:
        lines.setdefault(label, []).append((int(step), text))
    return lines


def test_the_explorer_draws_train_and_eval_as_separate_lines(
    svc: MantaService, client: TestClient
) -> None:
    expected = sql_rates(svc, RUN_A)
    metric = f"r/{JUDGE}/step/pass_rate"
    page = client.get("/curves", params={"run": RUN_A, "metric": metric})
    assert page.status_code == 200
    lines = _lines(page.text)
    assert set(lines) == {f"{RUN_A} · eval", f"{RUN_A} · train"}
    assert page.text.count("<polyline") == 2
    for phase in ("eval", "train"):
        drawn = lines[f"{RUN_A} · {phase}"]
        assert [s for s, _ in drawn] == sorted(s for s, p in expected if p == phase)
        for step, text in drawn:
            assert f"mean {expected[(step, phase)][0]:.6g}," in text
    # The phase selector applies to judge curves: one line, named by the run.
    only = _lines(
        client.get("/curves", params={"run": RUN_A, "metric": metric, "phase": "eval"}).text
    )
    assert list(only) == [RUN_A] and len(only[RUN_A]) == len(lines[f"{RUN_A} · eval"])
    # The run page's score by step: one line per phase too.
    run_page = client.get(f"/runs/{RUN_A}").text
    score = run_page.split("Score by step", 1)[1].split("</svg>", 1)[0]
    assert set(_lines(score)) == {f"{RUN_A} · eval", f"{RUN_A} · train"}


def test_a_run_with_one_phase_draws_one_line_named_by_the_run(client: TestClient) -> None:
    run = "run_eval_gpt4o_mini_math"
    page = client.get(f"/runs/{run}").text
    score = page.split("Score by step", 1)[1].split("</svg>", 1)[0]
    assert list(_lines(score)) == [run]
