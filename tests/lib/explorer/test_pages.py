"""Route tests: every page against a real chDB store (demo runs + hostile traces)."""

from __future__ import annotations

import re
from html import unescape
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from manta_lib.explorer import create_app
from manta_lib.settings import MantaSettings
from manta_lib.store import Store
from tests.lib.builders import load_traces, trace_line
from tests.lib.explorer.conftest import HOSTILE_RUN, LONG_LINE, REPLACED, SCRIPT, ExplorerData

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def trace_ids_on(html: str) -> list[str]:
    table = html.split('id="trace-table"', 1)[1]
    return re.findall(r'<td><a href="/traces/([^"]+)">', table)


def sql(data: ExplorerData, query: str, params: dict | None = None) -> list[tuple]:
    with Store.open(data.settings, ensure_schema=False) as store:
        return store.rows(query, params)


def test_runs_page_lists_every_run_with_its_counts(explorer_data: ExplorerData) -> None:
    page = explorer_data.client.get("/")
    assert page.status_code == 200
    for run_id, count in explorer_data.runs.items():
        assert f'href="/runs/{run_id}"' in page.text
        row = page.text.split(f'href="/runs/{run_id}"', 1)[1].split("</tr>", 1)[0]
        assert f'<td class="num">{count:,}</td>' in row


def test_runs_page_sorts_by_trace_count(explorer_data: ExplorerData) -> None:
    ascending = explorer_data.client.get("/?sort=traces&desc=0").text
    order = re.findall(r'<td><a href="/runs/([^"]+)">', ascending)
    expected = sorted(explorer_data.runs, key=lambda r: explorer_data.runs[r])
    assert [explorer_data.runs[r] for r in order] == [explorer_data.runs[r] for r in expected]
    descending = explorer_data.client.get("/?sort=traces&desc=1").text
    assert re.findall(r'<td><a href="/runs/([^"]+)">', descending)[0] == expected[-1]


def test_run_page_shows_steps_and_a_score_curve(explorer_data: ExplorerData) -> None:
    run_id = "run_grpo_math_v1"
    page = explorer_data.client.get(f"/runs/{run_id}")
    assert page.status_code == 200
    steps = sql(
        explorer_data,
        "SELECT step_number, count() FROM {db}.traces WHERE run_id = {r:String} GROUP BY 1",
        {"r": run_id},
    )
    assert f'Steps <span class="muted">{len(steps)}</span>' in page.text
    assert "<polyline" in page.text and "<polygon" in page.text  # mean line and p25-p75 band


def test_unknown_run_is_a_helpful_404(explorer_data: ExplorerData) -> None:
    page = explorer_data.client.get("/runs/run_grpo_math_v9")
    assert page.status_code == 404
    assert "There is no run &#39;run_grpo_math_v9&#39;" in page.text
    assert 'href="/runs/run_grpo_math_v1"' in page.text  # the closest run is suggested


def test_unknown_trace_and_unknown_page_are_404_pages(explorer_data: ExplorerData) -> None:
    trace = explorer_data.client.get("/traces/tr_does_not_exist")
    assert trace.status_code == 404 and "Trace not found" in trace.text
    assert 'href="/traces"' in trace.text
    typo = explorer_data.error_trace[:-1]  # a copied id one character short
    near = explorer_data.client.get(f"/traces/{typo}")
    assert near.status_code == 404 and "the closest stored ids are below" in near.text
    assert f'href="/traces/{explorer_data.error_trace}"' in near.text
    page = explorer_data.client.get("/no/such/page")
    assert page.status_code == 404 and "Page not found" in page.text


def test_trace_list_filters_by_run_and_status(explorer_data: ExplorerData) -> None:
    run_id = "run_grpo_math_v1"
    expected = sql(
        explorer_data,
        "SELECT trace_id FROM {db}.traces WHERE run_id = {r:String} AND status = 'completed' "
        "AND step_number BETWEEN 2 AND 5 AND score >= 0.5 ORDER BY step_number, trace_id",
        {"r": run_id},
    )
    page = explorer_data.client.get(
        f"/traces?run={run_id}&status=completed&step_min=2&step_max=5&min_score=0.5&per=200"
    )
    assert page.status_code == 200
    assert f'Traces <span class="muted">{len(expected):,}</span>' in page.text
    assert trace_ids_on(page.text) == [r[0] for r in expected]


def test_trace_list_paginates_without_overlap(explorer_data: ExplorerData) -> None:
    run_id = "run_grpo_math_v1"
    first = explorer_data.client.get(f"/traces?run={run_id}&per=20&page=1").text
    second = explorer_data.client.get(f"/traces?run={run_id}&per=20&page=2").text
    ids_1, ids_2 = trace_ids_on(first), trace_ids_on(second)
    assert len(ids_1) == len(ids_2) == 20 and not set(ids_1) & set(ids_2)
    total = explorer_data.runs[run_id]
    assert f"page 1 of {(total + 19) // 20}" in first
    assert 'rel="next"' in first and 'rel="prev"' in second
    expected = sql(
        explorer_data,
        "SELECT trace_id FROM {db}.traces WHERE run_id = {r:String} "
        "ORDER BY step_number, trace_id LIMIT 20 OFFSET 20",
        {"r": run_id},
    )
    assert ids_2 == [r[0] for r in expected]


def test_trace_list_sorts_by_score_descending(explorer_data: ExplorerData) -> None:
    page = explorer_data.client.get("/traces?run=run_grpo_code_v1&sort=score&desc=1&per=20")
    expected = sql(
        explorer_data,
        "SELECT trace_id FROM {db}.traces WHERE run_id = 'run_grpo_code_v1' "
        "ORDER BY score DESC, trace_id DESC LIMIT 20",
    )
    assert trace_ids_on(page.text) == [r[0] for r in expected]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("step_min=abc", "step_min=&#39;abc&#39; is not a whole number"),
        ("step_min=5&step_max=2", "step range 5..2 is empty"),
        ("min_score=high", "min_score=&#39;high&#39; is not a number"),
        ("sort=secret", "sort=&#39;secret&#39; is not one of"),
        ("phase=warmup", "phase &#39;warmup&#39; is not valid"),
        ("per=7", "per=7 must be one of"),
    ],
)
def test_bad_filters_get_a_400_naming_the_value(
    explorer_data: ExplorerData, query: str, message: str
) -> None:
    page = explorer_data.client.get(f"/traces?{query}")
    assert page.status_code == 400
    assert message in page.text


def test_trace_page_shows_conversation_tool_error_grader_llm_calls(
    explorer_data: ExplorerData,
) -> None:
    trace_id = explorer_data.error_trace
    spans = sql(
        explorer_data,
        "SELECT kind, tool_name, is_error, tokens_output FROM {db}.spans "
        "WHERE trace_id = {t:String} ORDER BY seq",
        {"t": trace_id},
    )
    page = explorer_data.client.get(f"/traces/{trace_id}")
    assert page.status_code == 200
    html = page.text
    failed_tools = [s[1] for s in spans if s[0] == "tool" and s[2]]
    assert html.count('class="bubble tool tool-error"') == len(failed_tools)
    assert html.count("bubble role-user") >= 1 and html.count("bubble role-assistant") >= 1
    llm = [s for s in spans if s[0] == "llm"]
    assert f'LLM calls <span class="muted">{len(llm)}</span>' in html
    total_out = sum(s[3] for s in llm)
    assert f'<th class="num">{total_out:,}</th>' in html  # the tokens total row
    if any(s[0] == "grader" for s in spans):
        assert 'class="verdict' in html and "criterion" in html
    assert html.count("<rect x=") == len(spans)  # one timeline bar per span
    assert "setup" in html  # a system event


def test_hostile_content_is_escaped_everywhere(explorer_data: ExplorerData) -> None:
    page = explorer_data.client.get(f"/traces/{explorer_data.hostile_trace}")
    assert page.status_code == 200
    html = page.text
    assert SCRIPT not in html and "<img src=x" not in html and "<b>bold</b>" not in html
    assert "&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt;" in html
    assert REPLACED in unescape(html)  # replacement characters shown as they are
    assert "ToolError&lt;img src=x onerror=alert(1)&gt;" in html
    # The 30k-character result is collapsed behind <details>, with its size named.
    assert "show all 30," in html and '<details class="long">' in html
    listing = explorer_data.client.get(f"/traces?run={HOSTILE_RUN}").text
    assert "<b>bold</b>" not in listing and "dp_&lt;b&gt;bold&lt;/b&gt;" in listing
    assert page.headers["content-security-policy"].startswith("default-src 'self'")


def test_span_text_is_served_as_plain_text(explorer_data: ExplorerData) -> None:
    trace_id = explorer_data.hostile_trace
    full = explorer_data.client.get(
        f"/traces/{trace_id}/spans/{trace_id}-t0.txt", params={"field": "tool_result"}
    )
    assert full.status_code == 200
    assert full.headers["content-type"].startswith("text/plain")
    assert full.headers["x-content-type-options"] == "nosniff"
    assert full.text == f"Traceback: {SCRIPT}\n{LONG_LINE}"
    missing = explorer_data.client.get(f"/traces/{trace_id}/spans/nope.txt")
    assert missing.status_code == 404


def test_curves_overlay_runs_with_the_numbers_of_sql(explorer_data: ExplorerData) -> None:
    runs = ["run_grpo_math_v1", "run_grpo_math_v2"]
    page = explorer_data.client.get("/curves", params={"run": runs, "metric": "score"})
    assert page.status_code == 200
    # One line per run and phase: the eval steps are a curve of their own.
    assert page.text.count("<polyline") == 4
    first_step = sql(
        explorer_data,
        "SELECT step_number, count(score), avg(score), toString(phase) FROM {db}.traces "
        "WHERE run_id = {r:String} GROUP BY step_number, phase ORDER BY 4, 1 LIMIT 1",
        {"r": runs[0]},
    )[0]
    assert first_step[3] == "eval"
    tooltip = f"{runs[0]} · eval, step {first_step[0]}: mean {first_step[2]:.6g}"
    assert tooltip in page.text and f"n={first_step[1]}</title>" in page.text
    errors = explorer_data.client.get("/curves", params={"run": runs[0], "metric": "error_rate"})
    assert "error rate" in errors.text
    unknown = explorer_data.client.get("/curves?run=nope")
    assert unknown.status_code == 400 and "not in this store" in unknown.text


def test_read_only_and_static_assets(explorer_data: ExplorerData) -> None:
    for method in ("post", "put", "delete"):
        assert getattr(explorer_data.client, method)("/traces").status_code == 405
    script = explorer_data.client.get("/static/htmx.min.js")
    assert script.status_code == 200 and "htmx" in script.text[:2000]
    assert explorer_data.client.get("/static/explorer.css").status_code == 200


def test_htmx_requests_get_the_content_fragment_only(explorer_data: ExplorerData) -> None:
    full = explorer_data.client.get("/traces?run=run_grpo_math_v1")
    fragment = explorer_data.client.get(
        "/traces?run=run_grpo_math_v1", headers={"HX-Request": "true"}
    )
    assert "<html" in full.text and "<html" not in fragment.text
    assert trace_ids_on(fragment.text) == trace_ids_on(full.text)


def test_cached_aggregates_follow_new_data(
    store: Store, settings: MantaSettings, tmp_path: Path
) -> None:
    load_traces(store, [trace_line("t1", run_id="run_first")], tmp_path)
    client = TestClient(create_app(settings), base_url="http://127.0.0.1")
    assert "run_first" in client.get("/").text
    assert "run_second" not in client.get("/").text  # the second view is served from cache
    load_traces(store, [trace_line("t2", run_id="run_second", score=0.25)], tmp_path)
    page = client.get("/").text
    assert "run_first" in page and "run_second" in page
    assert "0.25" in client.get("/runs/run_second").text


def test_embedded_store_is_released_between_requests(explorer_data: ExplorerData) -> None:
    lease = explorer_data.client.app.state.explorer.lease  # type: ignore[attr-defined]
    assert explorer_data.client.get("/").status_code == 200
    assert not lease.is_open  # another process could open the store now
    kept = TestClient(
        create_app(explorer_data.settings, keep_store_open=True), base_url="http://127.0.0.1"
    )
    with kept:
        assert kept.get("/").status_code == 200
        assert kept.app.state.explorer.lease.is_open  # type: ignore[attr-defined]
    assert not kept.app.state.explorer.lease.is_open  # type: ignore[attr-defined]


def _breakdown(html: str, fact: str) -> str:
    """The text of the breakdown line under one header fact (``tokens`` or ``cost``)."""
    cell = html.split(f"<dt>{fact}</dt>", 1)[1].split("</dd>", 1)[0]
    line = cell.split('class="small muted breakdown">', 1)[1].split("</div>", 1)[0]
    return " ".join(unescape(line).split())


def test_trace_page_totals_say_what_they_include(explorer_data: ExplorerData) -> None:
    # A trace whose grader used an LLM: the header's tokens include the grader's, the LLM-calls
    # table's total does not, and the page must say so instead of showing two silent numbers.
    [(trace_id, tokens_in, tokens_out, turns)] = sql(
        explorer_data,
        "SELECT t.trace_id, t.tokens_input, t.tokens_output, t.turn_count FROM {db}.traces t "
        "WHERE t.trace_id IN (SELECT trace_id FROM {db}.spans WHERE kind = 'grader' "
        "AND tokens_input > 0) ORDER BY t.trace_id LIMIT 1",
    )
    by_kind = dict(
        (kind, (int(i), int(o)))
        for kind, i, o in sql(
            explorer_data,
            "SELECT toString(kind), sum(tokens_input), sum(tokens_output) FROM {db}.spans "
            "WHERE trace_id = {t:String} GROUP BY kind",
            {"t": trace_id},
        )
    )
    llm, grader = by_kind["llm"], by_kind["grader"]
    assert grader[0] > 0 and llm[0] + grader[0] == tokens_in and llm[1] + grader[1] == tokens_out
    html = explorer_data.client.get(f"/traces/{trace_id}").text
    assert f"<dd>{tokens_in:,} in / {tokens_out:,} out" in html
    assert _breakdown(html, "tokens") == (
        f"= LLM calls {llm[0]:,} / {llm[1]:,} + grader {grader[0]:,} / {grader[1]:,}"
    )
    assert _breakdown(html, "cost").startswith("= LLM calls $")
    assert f'<th class="num">{llm[0]:,}</th>' in html  # the LLM-calls total ...
    assert "(LLM calls only: the grader's tokens are under Grader)" in html  # ... labelled
    # "turns" counts assistant turns; the conversation counts messages and tool calls.
    kinds = sql(
        explorer_data,
        "SELECT countIf(kind = 'message' AND role = 'assistant'), countIf(kind = 'tool') "
        "FROM {db}.spans WHERE trace_id = {t:String}",
        {"t": trace_id},
    )[0]
    assert kinds[0] == turns
    assert f"<dt>assistant turns</dt><dd>{turns}</dd>" in html
    assert f"messages, {kinds[1]} tool calls</span></h2>" in html


def test_trace_page_names_tokens_no_span_holds_and_unknown_cost(
    store: Store,
    settings: MantaSettings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    priced = trace_line("t_priced", run_id="run_costs", tool_calls=0)
    priced.update(tokens_input=500, tokens_output=50, cost_usd=0.002)
    priced["spans"].append(
        {"span_id": "l1", "kind": "llm", "model_name": "m", "tokens_input": 300,
         "tokens_output": 30, "cost_usd": 0.0015}
    )  # fmt: skip
    unpriced = trace_line("t_unpriced", run_id="run_costs", tool_calls=0)
    unpriced.update(tokens_input=900, tokens_output=90)  # no cost_usd: not known
    load_traces(store, [priced, unpriced], tmp_path)
    assert store.rows(
        "SELECT trace_id, cost_usd FROM {db}.traces WHERE run_id = 'run_costs' ORDER BY trace_id"
    ) == [("t_priced", 0.002), ("t_unpriced", None)]
    client = TestClient(create_app(settings), base_url="http://127.0.0.1")
    html = client.get("/traces/t_priced").text
    assert _breakdown(html, "tokens") == "= LLM calls 300 / 30 + in no span 200 / 20"
    assert _breakdown(html, "cost") == "= LLM calls $0.0015 + in no span $0.0005"
    # Unknown is not zero, in every view.
    page = client.get("/traces/t_unpriced").text
    assert "<dt>cost</dt><dd>unknown" in page and "$0.0000" not in page
    listing = client.get("/traces?run=run_costs").text
    row = listing.split('href="/traces/t_unpriced"', 1)[1].split("</tr>", 1)[0]
    assert ">unknown<" in row and "$0.0000" not in row
    run_page = client.get("/runs/run_costs").text
    assert "$0.0020" in run_page and "+ 1 traces of unknown cost" in run_page
    from tests.lib.results.conftest import run_main

    code, out, _err = run_main(["show", "t_unpriced"], monkeypatch, capsys)
    assert code == 0 and "cost unknown" in out and "$0.0000" not in out
    from manta_lib.service import MantaService

    (trace,) = MantaService(store).get_traces(trace_ids=["t_unpriced"])
    assert trace.cost_usd is None


def test_overlaying_a_run_without_the_judge_draws_the_others(explorer_data: ExplorerData) -> None:
    from tests.lib.explorer.conftest import RESULTS_RUN, SECOND_RUN

    metric = "r/tool_errors/trace/tool_errors"
    runs = [RESULTS_RUN, HOSTILE_RUN, SECOND_RUN]  # the hostile run has no tool_errors results
    page = explorer_data.client.get("/curves", params={"run": runs, "metric": metric})
    assert page.status_code == 200  # was a whole-page 400
    # one line per drawn run and phase: the same lines as overlaying the two runs that have it
    drawn = explorer_data.client.get(
        "/curves", params={"run": [RESULTS_RUN, SECOND_RUN], "metric": metric}
    )
    assert page.text.count("<polyline") == drawn.text.count("<polyline") >= 2
    note = page.text.split('id="missing-runs">', 1)[1].split("</p>", 1)[0]
    assert note == f"Not drawn: {HOSTILE_RUN} has no stored results of this column."
    chart = page.text.split('<div id="chart">', 1)[1]
    assert RESULTS_RUN in chart and SECOND_RUN in chart
    alone = explorer_data.client.get("/curves", params={"run": HOSTILE_RUN, "metric": metric})
    assert alone.status_code == 400 and "tool_errors" in alone.text  # nothing to draw at all
