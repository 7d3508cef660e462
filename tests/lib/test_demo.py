"""Demo data: deterministic, shaped like GRPO runs, laid out as docs/span_conventions.md says."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from typing import Any

import pytest
from typer.testing import CliRunner

from manta_lib.cli import _register_commands, app
from manta_lib.demo import DEMO_PROJECT_ID, DEMO_RUN_IDS, generate_demo, seed_demo
from manta_lib.errors import MantaError
from manta_lib.models import SPAN_COLUMNS, TRACE_COLUMNS
from manta_lib.settings import MantaSettings, load_settings
from manta_lib.store import Store

# Seeded stores or seconds per test: make test runs them, make check leaves them out.
pytestmark = pytest.mark.slow

CHECKSUM = """
SELECT (SELECT (count(), sum(cityHash64(*))) FROM {db}.traces),
       (SELECT (count(), sum(cityHash64(*))) FROM {db}.spans)
"""


@pytest.fixture(scope="module")
def seeded_rows() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """300 demo traces and their spans as dicts (generated once, in memory)."""
    traces: list[dict[str, Any]] = []
    spans: list[dict[str, Any]] = []
    for batch in generate_demo(traces=300, seed=11, batch_traces=128):
        traces += [
            dict(zip(TRACE_COLUMNS, row, strict=True))
            for row in zip(*batch.traces.values(), strict=True)
        ]
        spans += [
            dict(zip(SPAN_COLUMNS, row, strict=True))
            for row in zip(*batch.spans.values(), strict=True)
        ]
    return traces, spans


def test_same_seed_gives_identical_rows_in_the_store(store: Store, settings: MantaSettings) -> None:
    seed_demo(store, traces=300, seed=5)
    first = store.rows(CHECKSUM)[0]
    with Store.open(load_settings(database=f"{settings.database}_b")) as other:
        seed_demo(other, traces=300, seed=5)
        assert other.rows(CHECKSUM)[0] == first
        other.command("DROP DATABASE {db}")
    with Store.open(load_settings(database=f"{settings.database}_c")) as other:
        seed_demo(other, traces=300, seed=6)
        different = other.rows(CHECKSUM)[0]
        other.command("DROP DATABASE {db}")
    assert different != first
    assert first[0][0] == different[0][0] == 300


def test_trace_count_is_exact_and_scales_steps_and_datapoints() -> None:
    def shape(n: int) -> tuple[int, int, int]:
        steps: set[tuple[str, int]] = set()
        datapoints: set[tuple[str, str]] = set()
        total = 0
        for batch in generate_demo(traces=n, seed=1):
            total += batch.trace_count
            steps.update(zip(batch.traces["run_id"], batch.traces["step_number"], strict=True))
            datapoints.update(
                zip(batch.traces["run_id"], batch.traces["datapoint_id"], strict=True)
            )
        return total, len(steps), len(datapoints)

    assert shape(1)[0] == 1
    assert shape(7)[0] == 7
    small, large = shape(300), shape(5000)
    assert small[0] == 300 and large[0] == 5000
    assert large[1] > 2 * small[1] and large[2] > 2 * small[2]
    only = list(generate_demo(traces=50, seed=1, runs=["run_grpo_code_v1"]))
    assert {run for batch in only for run in batch.traces["run_id"]} == {"run_grpo_code_v1"}
    assert sum(batch.trace_count for batch in only) == 50
    with pytest.raises(MantaError, match="unknown demo run"):
        list(generate_demo(traces=10, runs=["run_nope"]))


def test_runs_phases_steps_and_grpo_groups(seeded_rows: Any) -> None:
    traces, _ = seeded_rows
    assert {t["run_id"] for t in traces} == set(DEMO_RUN_IDS)
    assert {t["project_id"] for t in traces} == {DEMO_PROJECT_ID}
    phases: dict[str, set[str]] = defaultdict(set)
    for t in traces:
        phases[t["run_id"]].add(t["phase"])
    assert phases == {
        "run_grpo_math_v1": {"train", "eval"},
        "run_grpo_math_v2": {"train", "eval"},
        "run_grpo_code_v1": {"train", "eval"},
        "run_eval_gpt4o_mini_math": {"eval"},
    }
    # A datapoint recurs at several steps of a run (the datapoint/step hierarchy needs it).
    steps_of: dict[tuple[str, str], set[int]] = defaultdict(set)
    for t in traces:
        steps_of[(t["run_id"], t["datapoint_id"])].add(t["step_number"])
    for run_id in DEMO_RUN_IDS:
        assert max(len(s) for (run, _), s in steps_of.items() if run == run_id) >= 2
    # Train groups are K=8 rollouts of one datapoint at one step (only the very last group of
    # a run may be cut short to hit the exact trace count); meta names the group.
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for t in traces:
        meta = json.loads(t["meta"])
        assert meta["group_id"] == f"{t['run_id']}/{t['step_number']}/{t['datapoint_id']}"
        assert {"temperature", "seed", "rollout_index"} <= meta.keys()
        groups[meta["group_id"]].append(meta)
    train_sizes = Counter(len(members) for gid, members in groups.items() if "/dp_eval_" not in gid)
    assert train_sizes[8] >= 20 and sum(n for size, n in train_sizes.items() if size != 8) <= 3
    for members in groups.values():
        assert [m["rollout_index"] for m in members] == list(range(len(members)))


def test_statuses_scores_and_totals(seeded_rows: Any) -> None:
    traces, spans = seeded_rows
    by_trace: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for span in spans:
        by_trace[span["trace_id"]].append(span)
    statuses = Counter(t["status"] for t in traces)
    assert statuses["error"] > 0 and statuses["timeout"] > 0
    assert statuses["completed"] > 0.9 * len(traces)
    assert set(statuses) == {"completed", "error", "timeout"}
    assert 15 <= len(spans) / len(traces) <= 25
    for t in traces:
        own = by_trace[t["trace_id"]]
        assert [s["seq"] for s in own] == list(range(len(own)))
        graders = [s for s in own if s["kind"] == "grader"]
        system_names = [s["name"] for s in own if s["kind"] == "system"]
        assert system_names[0] == "setup" and system_names[-1] == "teardown"
        if t["status"] == "completed":
            assert len(graders) == 1
            assert t["score"] == json.loads(graders[0]["attributes"])["score"]
            assert 0.0 <= t["score"] <= 1.0
        else:
            assert t["score"] is None and not graders
            assert t["status"] in system_names  # the `timeout` / `error` system span
        assert t["tokens_input"] == sum(s["tokens_input"] for s in own)
        assert t["tokens_output"] == sum(s["tokens_output"] for s in own)
        assert t["cost_usd"] == pytest.approx(sum(s["cost_usd"] for s in own))
        assert t["duration_ms"] == own[-1]["ended_at"] - t["created_at"] >= 0
        assert t["turn_count"] == sum(1 for s in own if s["kind"] == "llm")


def test_spans_follow_the_span_conventions(seeded_rows: Any) -> None:
    _, spans = seeded_rows
    assert {s["kind"] for s in spans} == {"message", "tool", "grader", "llm", "system"}
    by_id = {(s["trace_id"], s["span_id"]): s for s in spans}
    tool_errors = 0
    for s in spans:
        attributes = json.loads(s["attributes"])
        assert s["started_at"] <= s["ended_at"]
        if s["kind"] == "message":
            assert s["role"] in {"system", "user", "assistant", "tool"} and s["content"]
            if s["role"] == "assistant":
                assert attributes["tool_call_ids"]
            if s["role"] == "tool":
                assert attributes["tool_call_id"].startswith("call_")
        elif s["kind"] == "tool":
            assert s["tool_name"] in {"search", "python", "read_file", "submit"}
            assert isinstance(json.loads(s["tool_arguments"]), dict)
            parent = by_id[(s["trace_id"], s["parent_span_id"])]
            assert parent["kind"] == "message" and parent["role"] == "assistant"
            assert attributes["call_id"] in json.loads(parent["attributes"])["tool_call_ids"]
            assert s["is_error"] == ("error_type" in attributes)
            tool_errors += s["is_error"]
        elif s["kind"] == "llm":
            assert s["model_name"] and s["name"] == "chat.completions"
            assert s["tokens_input"] > 0 and s["tokens_output"] > 0 and s["cost_usd"] > 0
            assert {"finish_reason", "turn"} <= attributes.keys()
        elif s["kind"] == "grader":
            assert s["name"] and s["content"]
            assert {"score", "passed", "criteria", "messages"} <= attributes.keys()
            for criterion in attributes["criteria"]:
                assert criterion.keys() == {"name", "score", "passed", "reason"}
            if s["model_name"]:
                assert s["tokens_input"] > 0 and attributes["messages"]
        else:
            assert s["name"] in {"setup", "teardown", "timeout", "error"}
            assert s["is_error"] == (s["name"] in {"timeout", "error"})
    assert tool_errors > 0


def test_scores_improve_with_the_step_in_train_runs() -> None:
    scores: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    last_step: dict[str, int] = {}
    for batch in generate_demo(traces=4000, seed=2):
        columns = batch.traces
        for run_id, phase, step, score in zip(
            columns["run_id"],
            columns["phase"],
            columns["step_number"],
            columns["score"],
            strict=True,
        ):
            if phase == "train" and score is not None:
                scores[run_id][step].append(score)
                last_step[run_id] = max(last_step.get(run_id, 0), step)
    assert set(scores) == {"run_grpo_math_v1", "run_grpo_math_v2", "run_grpo_code_v1"}
    for run_id, per_step in scores.items():
        third = last_step[run_id] // 3
        early = [x for step, xs in per_step.items() if step <= third for x in xs]
        late = [x for step, xs in per_step.items() if step >= 2 * third for x in xs]
        assert sum(late) / len(late) > sum(early) / len(early) + 0.05, run_id


def test_seeding_again_writes_nothing_and_other_arguments_are_refused(store: Store) -> None:
    summary = seed_demo(store, traces=120, seed=1)
    assert (summary.traces, len(summary.runs)) == (120, 4)
    assert summary.spans == store.rows("SELECT count() FROM {db}.spans")[0][0]
    again = seed_demo(store, traces=120, seed=1)
    assert again.skipped and again.traces == 0 and again.already_stored == 120
    assert "all 120 demo traces of seed 1 are already stored" in again.message
    skipped = seed_demo(store, traces=120, seed=1, if_empty=True)
    assert skipped.skipped and skipped.traces == 0
    with pytest.raises(MantaError, match="120 demo traces of seed 1 written with another --traces"):
        seed_demo(store, traces=60, seed=1)
    with pytest.raises(MantaError, match="written with another --seed"):
        seed_demo(store, traces=120, seed=2)
    other = seed_demo(store, traces=120, seed=2, if_empty=True)
    assert other.skipped and "nothing seeded" in other.message
    with pytest.raises(MantaError, match="--traces must be between 1 and"):
        seed_demo(store, traces=10**12)
    assert store.rows("SELECT count() FROM {db}.traces")[0][0] == 120


def test_cli_demo_seed_and_runs_overview(store: Store) -> None:
    if not any(command.name == "import" for command in app.registered_commands):
        _register_commands()
    runner = CliRunner()

    result = runner.invoke(app, ["demo", "seed", "--traces", "200", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert "200" in result.stdout and "run_grpo_math_v1" in result.stdout
    assert store.rows("SELECT count() FROM {db}.traces")[0][0] == 200

    again = runner.invoke(app, ["demo", "seed", "--if-empty"])
    assert again.exit_code == 0 and "nothing seeded" in again.stdout

    overview = runner.invoke(app, ["runs-overview"])
    assert overview.exit_code == 0, overview.output
    for run_id in DEMO_RUN_IDS:
        assert run_id in overview.stdout
    assert runner.invoke(app, ["demo", "seed", "--traces", "0"]).exit_code == 2


def test_an_interrupted_seed_is_completed_by_the_same_call(store: Store) -> None:
    batches = list(generate_demo(traces=150, seed=4, batch_traces=50))
    expected_spans = sum(batch.span_count for batch in batches)
    # What a seed killed after the span insert of its second batch leaves behind.
    store.insert_columns("spans", batches[0].spans)
    store.insert_columns("traces", batches[0].traces)
    store.insert_columns("spans", batches[1].spans)

    summary = seed_demo(store, traces=150, seed=4, batch_traces=50)

    stored = batches[0].trace_count
    assert (summary.traces, summary.already_stored) == (150 - stored, stored)
    assert f"resumed: {stored} traces were already stored" in summary.message
    rows = store.rows("SELECT count(), uniqExact(trace_id, span_id) FROM {db}.spans")
    assert rows == [(expected_spans, expected_spans)]
    assert store.rows("SELECT count(), uniqExact(trace_id) FROM {db}.traces") == [(150, 150)]


def test_if_empty_completes_an_unfinished_seed_of_the_same_arguments(store: Store) -> None:
    first = next(generate_demo(traces=100, seed=4, batch_traces=40))
    store.insert_columns("spans", first.spans)
    store.insert_columns("traces", first.traces)

    summary = seed_demo(store, traces=100, seed=4, if_empty=True)

    assert not summary.skipped and summary.traces == 100 - first.trace_count
    assert store.rows("SELECT count() FROM {db}.traces")[0][0] == 100


def test_cli_runs_delete_asks_then_deletes_a_run(store: Store) -> None:
    if not any(command.name == "import" for command in app.registered_commands):
        _register_commands()
    runner = CliRunner()
    seed_demo(store, traces=100, seed=2)
    run_id = "run_grpo_math_v1"
    before = store.rows(
        "SELECT count() FROM {db}.traces WHERE run_id != {r:String}", {"r": run_id}
    )[0][0]
    spans = store.rows("SELECT count() FROM {db}.spans WHERE run_id = {r:String}", {"r": run_id})

    declined = runner.invoke(app, ["runs-delete", run_id], input="n\n")
    assert declined.exit_code == 1 and "nothing deleted" in declined.stderr
    assert f"{spans[0][0]:,} spans" in declined.stderr  # the prompt says what would go

    result = runner.invoke(app, ["runs-delete", run_id, "--yes"])
    assert result.exit_code == 0, result.output
    assert f"deleted run '{run_id}'" in result.stdout
    for table in ("traces", "spans"):
        assert store.rows(
            f"SELECT count() FROM {{db}}.{table} WHERE run_id = {{r:String}}", {"r": run_id}
        ) == [(0,)]
    assert store.rows("SELECT count() FROM {db}.traces")[0][0] == before
    missing = runner.invoke(app, ["runs-delete", run_id, "--yes"])
    assert isinstance(missing.exception, MantaError)  # main() prints it as one line, exit 1
    assert "nothing to delete" in str(missing.exception)
    # The demo can be completed again after a run was dropped.
    assert seed_demo(store, traces=100, seed=2).traces == 100 - before
