"""The failure-mode example end to end on demo data, judged by the loopback server."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import ModuleType

import pytest

from manta_lib.demo import seed_demo
from manta_lib.models import EntityLevel
from manta_lib.store import Store
from tests.lib.fake_openai import FakeOpenAIServer

# Seeded stores or seconds per test: make test runs them, make check leaves them out.
pytestmark = pytest.mark.slow


@pytest.mark.slow
def test_failure_modes_on_demo_data(
    example: ModuleType, fake: FakeOpenAIServer, store: Store
) -> None:
    seed_demo(store, traces=120, seed=3)
    run_id = store.rows(
        "SELECT run_id FROM {db}.traces GROUP BY run_id ORDER BY count() DESC LIMIT 1"
    )[0][0]
    result = example.pipeline.run(run_id=run_id, mode="local", progress=False)

    traces = result[EntityLevel.TRACE]
    assert traces and [t.error for t in traces if t.error] == []
    judged = [t.output for t in traces if t.output.judged]
    assert judged and len(judged) < len(traces)  # passed rollouts cost no call
    assert fake.stats()["completions"] == len(judged)
    assert all(t.category != "passed" for t in judged)
    runs = result[EntityLevel.RUN]  # one per phase: train and eval are summarised apart
    assert sorted(r.phase for r in runs) == sorted({t.phase for t in traces})
    for run in runs:
        of_phase = [t for t in traces if t.phase == run.phase]
        assert run.output.rollouts == len(of_phase)
        assert sum(run.output.counts.values()) == len(of_phase)
    assert sum(r.output.failed for r in runs) == len(judged)
    # The runs' judge cost is exactly what the calls cost (each rollout counted once).
    assert sum(r.output.judge_cost_usd for r in runs) == pytest.approx(
        example.judge.usage.snapshot().cost_usd
    )
    assert all(t.judge_cost_usd and t.judge_cost_usd > 0 for t in judged)
    steps = result[EntityLevel.STEP]
    assert sum(s.output.rollouts for s in steps) == len(traces)  # each rollout counted once
    for step in steps:
        at_step = [
            t.output for t in traces if (t.step_number, t.phase) == (step.step_number, step.phase)
        ]
        assert step.output.rollouts == len(at_step)
        assert step.output.failed == sum(t.category != "passed" for t in at_step)
    groups = len(result[EntityLevel.DATAPOINT])
    [(expected_groups,)] = store.rows(
        "SELECT uniqExact(datapoint_id, step_number) FROM {db}.traces WHERE run_id = {r:String}",
        {"r": run_id},
    )
    assert groups == expected_groups

    # Mapping every trace again (results not persisted, so nothing is skipped): no new call.
    example.judge.close()
    again = example.pipeline.run(run_id=run_id, mode="local", progress=False, persist_results=False)
    assert fake.stats()["completions"] == len(judged)
    assert example.judge.usage.snapshot().cache_hits == len(judged)
    assert [t.output for t in again[EntityLevel.TRACE]] == [t.output for t in traces]


def test_llm_estimate_cli_projects_the_run(
    example: ModuleType, fake: FakeOpenAIServer, store: Store
) -> None:
    from typer.testing import CliRunner

    from manta_lib.cli import _register_commands, app

    _register_commands()
    seed_demo(store, traces=120, seed=3)
    run_id = store.rows(
        "SELECT run_id FROM {db}.traces GROUP BY run_id ORDER BY count() DESC LIMIT 1"
    )[0][0]
    scope = store.rows("SELECT count() FROM {db}.traces WHERE run_id = {r:String}", {"r": run_id})
    result = CliRunner().invoke(
        app, ["llm-estimate", "examples.failure_modes:pipeline", run_id, "--sample", "10", "--json"]
    )
    assert result.exit_code == 0, result.output
    estimate = json.loads(result.output)
    assert estimate["sample_size"] == 10 and estimate["scope_size"] == scope[0][0]
    calls_in_sample = fake.stats()["completions"]
    assert calls_in_sample <= 10
    assert estimate["calls"] == round(calls_in_sample * estimate["scope_size"] / 10)
    assert estimate["cost_usd"] > 0

    text = CliRunner().invoke(app, ["llm-estimate", "examples.failure_modes:pipeline", run_id])
    assert text.exit_code == 0, text.output
    assert "cost with an empty cache: $" in text.output and "wall time:" in text.output

    bad = CliRunner().invoke(app, ["llm-estimate", "examples.failure_modes", run_id])
    assert bad.exit_code != 0


@pytest.mark.slow
def test_run_with_a_cost_cap_stops_cleanly_and_a_higher_cap_continues(
    example: ModuleType, fake: FakeOpenAIServer, store: Store
) -> None:
    from manta_lib.errors import LLMBudgetExceeded

    seed_demo(store, traces=120, seed=3)
    run_id = store.rows(
        "SELECT run_id FROM {db}.traces GROUP BY run_id ORDER BY count() DESC LIMIT 1"
    )[0][0]
    pipeline = example.pipeline
    with pytest.raises(LLMBudgetExceeded, match=r"Stopped after \d+ of \d+ traces"):
        pipeline.run(run_id=run_id, mode="local", progress=False, max_cost_usd=0.0005)
    paid = fake.stats()["completions"]
    assert paid > 0
    stored_errors = store.rows(
        "SELECT count() FROM {db}.entity_metadata FINAL WHERE column = '__error__' "
        "AND value_string LIKE 'LLMBudgetExceeded%'"
    )[0][0]
    assert stored_errors == 0  # refused traces are not results

    result = pipeline.run(run_id=run_id, mode="local", progress=False, max_cost_usd=5.0)
    traces = result[EntityLevel.TRACE]
    assert [t.error for t in traces if t.error] == []
    judged = sum(t.output.judged for t in traces)
    assert fake.stats()["completions"] == judged  # nothing paid twice

    rows = [
        json.loads(line)
        for path in sorted(Path(os.environ["MANTA_RUNS_LOG_DIR"]).rglob("*.jsonl"))
        for line in path.read_text().splitlines()
    ]
    stopped, finished = rows[-2]["summary"], rows[-1]["summary"]
    assert stopped["llm_calls"] == paid and 0 < stopped["llm_cost_usd"] <= 0.0005
    assert finished["llm_calls"] == judged - paid  # stored results are not mapped again

    estimate = pipeline.estimate(run_id, sample=10)
    assert estimate.scope_size == len(traces) and estimate.cache_hit_rate == 1.0


def test_modal_workers_get_the_llm_settings(
    example: ModuleType, monkeypatch: pytest.MonkeyPatch, manta_env: dict[str, str]
) -> None:
    from manta_lib.pipeline.modal import build_modal_app
    from manta_lib.settings import load_settings

    monkeypatch.setenv("CLICKHOUSE_URL", "https://ch.example.com:8443")
    monkeypatch.setenv("MANTA_LLM_RPM", "600")
    _, _, spec = build_modal_app(example.pipeline, load_settings())
    assert spec.secret_env["OPENAI_API_KEY"] == "test-key"
    assert spec.secret_env["OPENAI_BASE_URL"] == os.environ["OPENAI_BASE_URL"]
    assert spec.secret_env["MANTA_LLM_RPM"] == "600"


def test_the_progress_bar_shows_the_llm_figures(
    example: ModuleType, fake: FakeOpenAIServer, store: Store, capfd: pytest.CaptureFixture[str]
) -> None:
    seed_demo(store, traces=60, seed=4)
    run_id = store.rows("SELECT any(run_id) FROM {db}.traces")[0][0]
    example.pipeline.run(run_id=run_id, mode="local", progress=True, persist_results=False)
    err = capfd.readouterr().err
    assert "LLM" in err and "calls/s" in err and "cached" in err  # cut at 80 columns
