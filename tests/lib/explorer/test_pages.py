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

pytestmark = pytest.mark.timeout(120)


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
    assert page.text.count("<polyline") == 2
    first_step = sql(
        explorer_data,
        "SELECT step_number, count(score), avg(score) FROM {db}.traces "
        "WHERE run_id = {r:String} GROUP BY 1 ORDER BY 1 LIMIT 1",
        {"r": runs[0]},
    )[0]
    tooltip = f"{runs[0]}, step {first_step[0]}: mean {first_step[2]:.6g}"
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
