"""Inspect AI logs: the real logs of Inspect's own test suite, imported and checked."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest
from inspect_ai.log import read_eval_log

from manta_lib import MantaService, import_files, import_records
from manta_lib.importers import detect_format
from manta_lib.importers.inspect_logs import inspect_run_id
from manta_lib.store import Store

# Seeded stores or seconds per test: make test runs them, make check leaves them out.
pytestmark = pytest.mark.slow

# The shared data folder sits beside the repository (../shared from the repository root).
REPO_ROOT = Path(__file__).resolve().parents[3]
LOGS = REPO_ROOT.parent / "shared" / "data" / "inspect_logs"


@pytest.fixture(scope="module")
def log_files() -> list[Path]:
    files = sorted([*LOGS.glob("*.eval"), *LOGS.glob("*.json")])
    if not files:
        pytest.fail(f"no Inspect AI logs in {LOGS}: the shared/ folder must sit beside the repo")
    return files


def test_each_log_reproduces_its_reported_accuracy(store: Store, log_files: list[Path]) -> None:
    assert {detect_format(path) for path in log_files} == {"inspect"}
    report = import_files(log_files, store=store)
    assert report.ok, report.errors
    service = MantaService(store)
    checked = 0
    for path in log_files:
        log = read_eval_log(str(path))
        if inspect_run_id(log.eval) not in service.run_ids():  # no sample imported
            assert not log.samples
            continue
        traces = [
            t
            for t in service.get_traces(inspect_run_id(log.eval))
            if t.meta["inspect"]["eval_id"] == log.eval.eval_id
        ]
        assert len(traces) == len(log.samples or [])
        contexts = service.load_contexts(traces)
        for reported in log.results.scores if log.results else []:
            accuracy = reported.metrics.get("accuracy")
            graders = [g for c in contexts for g in c.grader_results() if g.name == reported.name]
            if len(graders) < (log.results.total_samples if log.results else 0):
                # the log holds fewer scored samples than it reports: nothing to reproduce
                assert path.name in {
                    "2025-05-12T20-28-13-04-00_no-samples.json",
                    "log_tool_call_error.json",
                }
                continue
            assert accuracy is not None
            mean = sum(g.score for g in graders if g.score is not None) / len(graders)
            assert mean == pytest.approx(accuracy.value), path.name
            checked += 1
    assert checked == 6


def test_field_mapping_of_an_agent_log(store: Store, log_files: list[Path]) -> None:
    browser = LOGS / "2025-05-12T20-27-36-04-00_browser.json"
    assert import_files([browser], store=store, format="inspect").traces_loaded == 1
    log = read_eval_log(str(browser))
    sample = log.samples[0]
    service = MantaService(store)
    (trace,) = service.get_traces(inspect_run_id(log.eval))
    context = service.get_trace(trace.trace_id)
    assert trace.trace_id == f"{log.eval.eval_id}:1:1"
    assert (trace.phase.value, trace.datapoint_id, trace.env_name) == ("eval", "1", "browser")
    assert (trace.model_name, trace.score, trace.status) == ("openai/gpt-4o-mini", 1.0, "completed")
    usage = sample.model_usage["openai/gpt-4o-mini"]
    assert (trace.tokens_input, trace.tokens_output) == (usage.input_tokens, usage.output_tokens)
    assert trace.duration_ms == round(sample.total_time * 1000)
    calls = [m for m in sample.messages if m.role == "assistant" for _ in (m.tool_calls or [])]
    assert context.tool_call_count == len(calls)
    assert [t.tool_name for t in context.tools()] == [
        c.function for m in sample.messages if m.role == "assistant" for c in m.tool_calls or []
    ]
    assert context.tools()[0].arguments == {"url": "https://www.aisi.gov.uk/"}
    grader = context.grader_result()
    assert grader is not None and grader.name == "includes" and grader.passed is True
    assert grader.feedback == sample.scores["includes"].explanation
    llm = context.llm_calls()
    assert sum(c.tokens_input for c in llm) == usage.input_tokens
    assert llm[0].finish_reason == "tool_calls" and llm[0].duration_ms and llm[0].duration_ms > 0
    assert trace.meta["inspect"]["task"] == "browser"
    # the assistant's final answer is the last message
    assert context.conversation().to_openai_messages()[-1]["role"] == "assistant"


def test_model_graded_scorer_usage_goes_to_its_grader(store: Store, log_files: list[Path]) -> None:
    path = LOGS / "2025-05-12T20-28-26-04-00_security-guide.json"
    import_files([path], store=store)
    sample = read_eval_log(str(path)).samples[0]
    service = MantaService(store)
    context = service.get_trace(f"{read_eval_log(str(path)).eval.eval_id}:1:1")
    grader = context.grader_result()
    assert grader is not None and grader.name == "model_graded_fact"
    assert grader.model_name == "gpt-4o-mini-2024-07-18" or grader.model_name.endswith(
        "gpt-4o-mini"
    )
    (solver_call,) = context.llm_calls()
    usage = sample.model_usage["openai/gpt-4o-mini"]
    # the sample's usage is the solver's call plus the scorer's
    assert solver_call.tokens_input + grader.tokens_input == usage.input_tokens
    assert context.trace.tokens_input == solver_call.tokens_input
    assert grader.messages and grader.messages[-1].role == "assistant"


def test_tool_errors_and_hierarchy_options(store: Store, log_files: list[Path]) -> None:
    errors_log = LOGS / "log_tool_call_error.json"
    report = import_files([errors_log], store=store, run_id="inspect_run", step=3, project="p1")
    assert report.traces_loaded == 1
    (trace,) = MantaService(store).get_traces("inspect_run")
    assert (trace.step_number, trace.project_id) == (3, "p1")
    tools = MantaService(store).get_trace(trace.trace_id).tools()
    assert [t.error_type for t in tools][:3] == ["parsing", "timeout", "parsing"]
    assert all(t.is_error for t in tools) and len(tools) == 11


def test_reimport_eval_and_json_twins(store: Store, log_files: list[Path], tmp_path: Path) -> None:
    twins = [LOGS / "log_read_sample.eval", LOGS / "log_read_sample.json"]
    first = import_files(twins, store=store)
    assert first.traces_loaded == 2
    again = import_files(twins, store=store)
    assert (again.traces_loaded, again.traces_already_present) == (0, 2)
    # the in-memory entry takes EvalLog objects too
    log = read_eval_log(str(twins[0]))
    assert import_records([log], store=store, format="inspect", run_id="mem").traces_loaded == 1
    # score from a field path into the sample
    report = import_records(
        [log], store=store, format="inspect", run_id="mem2", score="scores.match.value"
    )
    assert report.errors and "expected a number" in report.errors[0].reason


def test_bad_log_is_reported_not_raised(store: Store, tmp_path: Path) -> None:
    broken = tmp_path / "broken.eval"
    shutil.copy(LOGS / "log_formats.eval", broken)
    broken.write_bytes(broken.read_bytes()[:2000])
    report = import_files([broken], store=store, format="inspect")
    assert report.traces_loaded == 0
    assert report.errors and str(report.errors[0]).startswith(f"{broken}:0: ")


def _reference_price(model: str, tokens_in: int, tokens_out: int) -> float | None:
    """The maintained table's price, computed here without Manta's code."""
    from genai_prices import Usage, calc_price

    try:
        price = calc_price(Usage(input_tokens=tokens_in, output_tokens=tokens_out), model_ref=model)
    except LookupError:
        return None
    return float(price.total_price)


def test_a_cost_the_log_lacks_is_estimated_or_unknown_never_zero(
    store: Store, log_files: list[Path]
) -> None:
    browser = LOGS / "2025-05-12T20-27-36-04-00_browser.json"
    ollama = LOGS / "log_formats.eval"
    assert import_files([browser, ollama], store=store).ok
    service = MantaService(store)
    log = read_eval_log(str(browser))
    assert all(u.total_cost is None for u in log.samples[0].model_usage.values())

    # gpt-4o-mini with known tokens: priced from the table per call, marked estimated.
    (trace,) = service.get_traces(inspect_run_id(log.eval))
    calls = service.get_trace(trace.trace_id).llm_calls()
    expected = [_reference_price(c.model_name, c.tokens_input, c.tokens_output) for c in calls]
    assert None not in expected and trace.tokens_input == 15235
    assert [c.cost_usd for c in calls] == pytest.approx(expected)
    assert trace.cost_usd == pytest.approx(sum(e or 0.0 for e in expected)) and trace.cost_usd > 0
    assert trace.meta["cost_estimated"] is True
    spans = service.get_spans(trace.trace_id)[trace.trace_id]
    assert all(s.attributes.get("cost_estimated") for s in spans if s.kind == "llm")

    # An ollama model the table does not know: null in the store and in results, not 0.
    unknown = read_eval_log(str(ollama))
    (local,) = service.get_traces(inspect_run_id(unknown.eval))
    assert local.tokens_input > 0 and local.cost_usd is None
    assert "cost_estimated" not in local.meta
    stored = store.rows(
        "SELECT cost_usd FROM {db}.traces WHERE trace_id = {t:String}", {"t": local.trace_id}
    )
    assert stored == [(None,)]
    assert service.get_trace(local.trace_id).llm_cost_usd is None


def test_an_inspect_run_keeps_its_task_name_and_date(store: Store, log_files: list[Path]) -> None:
    browser = LOGS / "2025-05-12T20-27-36-04-00_browser.json"
    import_files([browser], store=store)
    log = read_eval_log(str(browser))
    created = datetime.fromisoformat(log.eval.created).astimezone(UTC)
    run_id = f"{log.eval.task}_{created:%Y-%m-%dT%H-%M-%S}"
    assert run_id == "browser_2025-05-13T00-27-36"  # the log file's own name, in UTC
    assert MantaService(store).run_ids() == [run_id]
    (trace,) = MantaService(store).get_traces(run_id)
    assert trace.meta["inspect"]["run_id"] == log.eval.run_id  # Inspect's id is kept
    # The sample has no start time: the trace is dated by the eval, not by the import.
    assert getattr(log.samples[0], "started_at", None) is None
    assert trace.created_at.replace(tzinfo=UTC) == created
