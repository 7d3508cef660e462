"""verl rollout dumps: every dump shape imports with its steps, groups, scores and reward fields;
re-import adds nothing; a half-written last line waits for the next import."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from typer.testing import CliRunner

from manta_lib import MantaService, import_files, import_records
from manta_lib.cli import _register_commands, app
from manta_lib.errors import ValidationError
from manta_lib.importers import detect_format
from manta_lib.importers.verl import GRADER_NAME, prompt_datapoint
from manta_lib.store import Store
from tests.lib.importers.verl_dumps import VERSIONS, simulate_run

# Seeded stores or seconds per test: make test runs them, make check leaves them out.
pytestmark = pytest.mark.slow


def _stored(store: Store, run_id: str) -> list[tuple[str, int, str, float | None, str]]:
    rows = store.rows(
        "SELECT toString(phase), step_number, datapoint_id, score, meta FROM {db}.traces "
        "WHERE run_id = {run:String}",
        {"run": run_id},
    )
    return [(r[0], r[1], r[2], r[3], r[4]) for r in rows]


@pytest.mark.parametrize("version", VERSIONS)
def test_dump_shapes_import_with_steps_groups_scores_and_reward_fields(
    store: Store, tmp_path: Path, version: str
) -> None:
    run = simulate_run(tmp_path / "outputs", version)
    assert detect_format(run.root) == "verl"
    assert detect_format(run.train_dir / "1.jsonl") == "verl"

    report = import_files([run.root], store=store, run_id=f"grpo_{version}")
    expected_lines = sum(len(lines) for lines in run.lines.values())
    assert report.ok, report.errors[:3]
    assert report.traces_loaded == expected_lines
    assert report.spans_loaded == 3 * expected_lines

    stored = _stored(store, f"grpo_{version}")
    # steps and phases: one (phase, step) per dump file, with its number of lines
    per_file = Counter((phase, step) for phase, step, *_ in stored)
    assert per_file == {key: len(lines) for key, lines in run.lines.items()}
    # groups: each train step has k rollouts per prompt, one datapoint per prompt text
    for (phase, step), lines in run.lines.items():
        groups = Counter(dp for ph, st, dp, _, _ in stored if (ph, st) == (phase, step))
        expected = Counter(prompt_datapoint(line["input"]) for line in lines)
        assert groups == expected
        if phase == "train":
            assert set(groups.values()) == {run.k}
    # scores per step equal verl's own numbers
    by_step: dict[tuple[str, int], list[float]] = defaultdict(list)
    for phase, step, _, score, _ in stored:
        assert score is not None
        by_step[(phase, step)].append(score)
    for key, lines in run.lines.items():
        assert sorted(by_step[key]) == sorted(line["score"] for line in lines)
    # the same prompt is the same datapoint at every step
    dp_steps = defaultdict(set)
    for phase, step, dp, _, _ in stored:
        if phase == "train":
            dp_steps[dp].add(step)
    assert max(len(steps) for steps in dp_steps.values()) > 1


def test_grader_span_criteria_and_pass_rate_per_step(store: Store, tmp_path: Path) -> None:
    run = simulate_run(tmp_path / "outputs", "v3", steps=4)
    assert import_files([run.root], store=store, run_id="grpo").ok
    service = MantaService(store)
    traces = service.get_traces("grpo")
    contexts = service.load_contexts(traces)
    passes: dict[tuple[str, int], list[bool]] = defaultdict(list)
    for context in contexts:
        trace = context.trace
        grader = context.grader_result()
        assert grader is not None and grader.name == GRADER_NAME
        assert grader.score == trace.score
        assert grader.passed is not None
        passes[(trace.phase, trace.step_number)].append(grader.passed)
        user, assistant = (m.content for m in context.messages())
        line = next(
            line
            for line in run.lines[(trace.phase, trace.step_number)]
            if line["input"] == user
            and line["output"] == assistant
            and line["uid"] == trace.meta["uid"]
        )
        criteria = {c.name: c for c in grader.criteria}
        assert criteria["acc"].passed is line["acc"]
        assert criteria["pred"].reason == line["pred"]
        assert json.loads(criteria["sub_scores"].reason) == line["sub_scores"]
        assert "too_short" not in criteria  # verl does not dump a field of another length
        assert trace.meta["gts"] == line["gts"]
        assert grader.feedback == f"ground truth: {line['gts']}"
        if trace.phase == "eval":
            assert criteria["reward"].score == line["score"]
    # the GRPO pass rate per step, through the store, equals the one over the JSON files
    for key, lines in run.lines.items():
        direct = sum(line["acc"] for line in lines) / len(lines)
        assert sum(passes[key]) / len(passes[key]) == pytest.approx(direct)
    steps = {s.step_number: s for s in service.list_steps("grpo", phase="train")}
    for (phase, step), lines in run.lines.items():
        if phase == "train":
            mean = sum(line["score"] for line in lines) / len(lines)
            assert steps[step].mean_score == pytest.approx(mean)
            assert steps[step].datapoint_count == len({line["input"] for line in lines})


def test_reimport_adds_nothing_and_half_written_line_waits(store: Store, tmp_path: Path) -> None:
    run = simulate_run(tmp_path / "outputs", "v2", steps=2, val_steps=())
    # the trainer is writing step 3: one complete line and half of the next
    lines = run.lines[("train", 2)]
    complete = json.dumps({**lines[0], "step": 3})
    partial = json.dumps({**lines[1], "step": 3})
    step3 = run.train_dir / "3.jsonl"
    step3.write_text(complete + "\n" + partial[: len(partial) // 2])

    first = import_files([run.train_dir], store=store, run_id="live")
    assert first.ok and first.traces_loaded == len(lines) * 2 + 1
    again = import_files([run.train_dir], store=store, run_id="live")
    assert again.ok and again.traces_loaded == 0
    assert again.traces_already_present == first.traces_loaded

    step3.write_text(complete + "\n" + partial + "\n")  # the dump finished
    (run.train_dir / "4.jsonl").write_text(complete.replace('"step": 3', '"step": 4') + "\n")
    last = import_files([run.train_dir], store=store, run_id="live")
    assert last.ok and (last.traces_loaded, last.traces_already_present) == (2, first.traces_loaded)
    per_step = Counter(step for _, step, *_ in _stored(store, "live"))
    assert per_step == {1: len(lines), 2: len(lines), 3: 2, 4: 1}


def test_phase_flag_datapoint_path_bad_lines_and_run_id(store: Store, tmp_path: Path) -> None:
    run = simulate_run(tmp_path / "out", "v3", steps=1, prompts_per_step=2, k=2, val_steps=())
    with (run.train_dir / "2.jsonl").open("w") as handle:
        handle.write(json.dumps({"input": 5, "output": "x", "score": 1.0, "step": 2}) + "\n")
        handle.write("{not json\n")
        handle.write(json.dumps({"input": "q", "output": "x", "score": "high"}) + "\n")
    with pytest.raises(ValidationError, match="--run-id"):
        import_files([run.train_dir], store=store)
    report = import_files([run.train_dir], store=store, run_id="r", phase="eval", datapoint="uid")
    assert report.traces_loaded == 4
    errors = [str(e) for e in report.errors]
    assert any("2.jsonl:1: input: expected the decoded prompt" in e for e in errors)
    assert any("2.jsonl:2: invalid JSON" in e for e in errors)
    assert any("2.jsonl:3: score: expected a number" in e for e in errors)
    stored = _stored(store, "r")
    assert {phase for phase, *_ in stored} == {"eval"}
    uids = {line["uid"] for line in run.lines[("train", 1)]}
    assert {dp for _, _, dp, _, _ in stored} == uids
    # dump lines held in memory
    lines = run.lines[("train", 1)]
    in_memory = import_records(lines, store=store, format="verl", run_id="mem")
    assert in_memory.ok and in_memory.traces_loaded == len(lines)
    again = import_records(lines, store=store, format="verl", run_id="mem")
    assert again.traces_already_present == len(lines)
    assert Counter(step for _, step, *_ in _stored(store, "mem")) == {1: len(lines)}


def test_cli_imports_a_dump_directory(store: Store, tmp_path: Path) -> None:
    _register_commands()
    store.close()
    run = simulate_run(tmp_path / "outputs", "v1", steps=1, val_steps=(1,))
    cli = CliRunner()
    first = cli.invoke(app, ["import", str(run.root), "--run-id", "cli_run"])
    total = sum(len(lines) for lines in run.lines.values())
    assert first.exit_code == 0, first.output
    assert f"{total} traces and {3 * total} spans loaded" in first.stdout
    again = cli.invoke(app, ["import", str(run.val_dir), "--format", "verl", "--run-id", "cli_run"])
    assert again.exit_code == 0 and f"{len(run.lines[('eval', 1)])} traces already" in again.stdout
    empty = tmp_path / "empty"
    empty.mkdir()
    refused = cli.invoke(app, ["import", str(empty), "--run-id", "x"])
    assert isinstance(refused.exception, ValidationError)
    assert "not a verl dump directory" in str(refused.exception)
