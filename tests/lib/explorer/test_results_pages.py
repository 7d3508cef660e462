"""Judges, results tables, results filters and stored results on the trace page, read through
the results API from a real pipeline run (examples/tool_errors.py)."""

from __future__ import annotations

import re

import pytest

from manta_lib.explorer.charts import format_number
from manta_lib.service import MantaService
from manta_lib.store import Store
from tests.lib.explorer.conftest import (
    HOSTILE_RUN,
    RESULTS_RUN,
    SCRIPT,
    SECOND_RUN,
    ExplorerData,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def sql(data: ExplorerData, query: str, params: dict | None = None) -> list[tuple]:
    with Store.open(data.settings, ensure_schema=False) as store:
        return store.rows(query, params)


def tool_error_traces(data: ExplorerData, run_id: str = RESULTS_RUN) -> set[str]:
    rows = sql(
        data,
        "SELECT DISTINCT trace_id FROM {db}.spans WHERE run_id = {r:String} "
        "AND kind = 'tool' AND is_error",
        {"r": run_id},
    )
    return {r[0] for r in rows}


def result_rows(html: str) -> list[str]:
    return re.findall(r"<tr class=\"[^\"]*\">\s*<td class=\"small\"><a href=\"([^\"]+)\"", html)


def test_run_page_lists_judge_levels_with_counts_and_dagster_links(
    explorer_data: ExplorerData,
) -> None:
    page = explorer_data.client.get(f"/runs/{RESULTS_RUN}").text
    judges = page.split('id="judges"', 1)[1].split("</table>", 1)[0]
    assert "tool_errors" in judges
    for level in ("trace", "datapoint", "step"):
        assert f'href="/results/tool_errors?run={RESULTS_RUN}&amp;level={level}"' in judges
    assert f'<td class="num">{explorer_data.runs[RESULTS_RUN]:,}</td>' in judges  # trace entities
    assert 'href="http://dagster.test:3000/assets/tool_errors/trace"' in judges
    assert f'href="http://dagster.test:3000/assets/tool_errors/step?partition={RESULTS_RUN}"' in (
        judges
    )


def test_trace_level_table_sorts_and_links_to_traces(explorer_data: ExplorerData) -> None:
    page = explorer_data.client.get(
        f"/results/tool_errors?run={RESULTS_RUN}&level=trace&sort=tool_errors&desc=1"
    )
    assert page.status_code == 200
    total = explorer_data.runs[RESULTS_RUN]
    assert f"{total:,} rows" in page.text
    links = result_rows(page.text)
    assert len(links) == 50 and all(link.startswith("/traces/") for link in links)
    most = sql(
        explorer_data,
        "SELECT max(c) FROM (SELECT trace_id, countIf(kind = 'tool' AND is_error) c "
        "FROM {db}.spans WHERE run_id = {r:String} GROUP BY trace_id)",
        {"r": RESULTS_RUN},
    )[0][0]
    first_row = page.text.split('id="results-table"', 1)[1].split("<tbody>", 1)[1]
    first_row = first_row.split("</tr>", 1)[0]
    assert f'<td class="num">{most}</td>' in first_row


def test_where_filters_the_table_like_sql(explorer_data: ExplorerData) -> None:
    page = explorer_data.client.get(
        "/results/tool_errors", params={"run": RESULTS_RUN, "where": "tool_errors > 0"}
    )
    expected = tool_error_traces(explorer_data)
    assert f"{len(expected):,} rows" in page.text
    bad = explorer_data.client.get(
        "/results/tool_errors", params={"run": RESULTS_RUN, "where": "tool_errors >"}
    )
    assert bad.status_code == 400 and "position" in bad.text


def test_datapoint_rows_link_to_their_rollouts(explorer_data: ExplorerData) -> None:
    page = explorer_data.client.get(f"/results/tool_errors?run={RESULTS_RUN}&level=datapoint")
    links = [link.replace("&amp;", "&") for link in result_rows(page.text)]
    assert links and all(f"/traces?run={RESULTS_RUN}&datapoint=" in link for link in links)
    # A datapoint row is that datapoint at one step: the link keeps only that step's traces.
    found = re.search(r"datapoint=([^&]+)&step_min=(-?\d+)&step_max=(-?\d+)", links[0])
    assert found and found.group(2) == found.group(3)
    count = sql(
        explorer_data,
        "SELECT count() FROM {db}.traces WHERE run_id = {r:String} AND datapoint_id = {d:String} "
        "AND step_number = {s:Int64}",
        {"r": RESULTS_RUN, "d": found.group(1), "s": int(found.group(2))},
    )[0][0]
    assert count > 0
    rollouts = explorer_data.client.get(links[0]).text
    assert f'Traces <span class="muted">{count:,}</span>' in rollouts


def test_a_dagster_partition_link_narrows_to_its_shard(explorer_data: ExplorerData) -> None:
    shard, count = sql(
        explorer_data,
        "SELECT cityHash64(datapoint_id) % 64 AS s, count() FROM {db}.traces "
        "WHERE run_id = {r:String} GROUP BY s ORDER BY 2 DESC, s LIMIT 1",
        {"r": RESULTS_RUN},
    )[0]
    page = explorer_data.client.get(f"/results/tool_errors?run={RESULTS_RUN}&shard={shard}")
    assert f"{count:,} rows" in page.text and f"{RESULTS_RUN}|{shard:02d}" in page.text


def test_unknown_judge_is_a_helpful_404(explorer_data: ExplorerData) -> None:
    page = explorer_data.client.get(f"/results/tool_error?run={RESULTS_RUN}")
    assert page.status_code == 404
    assert "Judge &#39;tool_error&#39; has no stored results" in page.text
    assert f'href="/results/tool_errors?run={RESULTS_RUN}&amp;level=trace"' in page.text


def test_trace_list_filters_by_a_stored_result(explorer_data: ExplorerData) -> None:
    page = explorer_data.client.get(
        "/traces",
        params={"run": RESULTS_RUN, "results": "tool_errors.tool_errors > 0", "per": 200},
    )
    assert page.status_code == 200
    shown = set(re.findall(r'<td><a href="/traces/([^"]+)">', page.text))
    assert shown == tool_error_traces(explorer_data)
    bad = explorer_data.client.get("/traces", params={"results": "nope.column > 1"})
    assert bad.status_code == 400


def test_trace_page_shows_every_stored_result(explorer_data: ExplorerData) -> None:
    page = explorer_data.client.get(f"/traces/{explorer_data.error_trace}").text
    section = page.split('aria-label="stored results"', 1)[1].split("</section>", 1)[0]
    for level in ("trace", "datapoint", "step"):
        assert f"tool_errors</a></strong> · {level}" in section
    assert "<td>tool_errors</td>" in section and "failing_tools" in section


def test_stored_hostile_values_are_escaped(explorer_data: ExplorerData) -> None:
    trace = explorer_data.client.get(f"/traces/{explorer_data.hostile_trace}").text
    table = explorer_data.client.get(f"/results/echo_errors?run={HOSTILE_RUN}").text
    for html in (trace, table):
        assert "echo_errors" in html
        assert SCRIPT not in html and "&lt;script&gt;" in html


def test_curve_of_a_result_column_matches_sql(explorer_data: ExplorerData) -> None:
    metric = "r/tool_errors/trace/tool_errors"
    page = explorer_data.client.get("/curves", params={"run": RESULTS_RUN, "metric": metric})
    assert page.status_code == 200
    assert f'<option value="{metric}" selected>' in page.text
    assert page.text.count("<polyline") == 2  # train and eval
    step, count, mean = sql(
        explorer_data,
        "SELECT t.step_number, count(), avg(e) FROM {db}.traces AS t LEFT JOIN "
        "(SELECT trace_id, countIf(kind = 'tool' AND is_error) AS e FROM {db}.spans "
        "WHERE run_id = {r:String} GROUP BY trace_id) AS s ON s.trace_id = t.trace_id "
        "WHERE t.run_id = {r:String} AND t.phase = 'train' GROUP BY t.step_number "
        "ORDER BY 1 LIMIT 1",
        {"r": RESULTS_RUN},
    )[0]
    label = f"{RESULTS_RUN} · train"
    assert f"{label}, step {step}: mean {mean:.6g}, n={count}</title>" in page.text
    bad = explorer_data.client.get("/curves", params={"run": RESULTS_RUN, "metric": "bogus"})
    assert bad.status_code == 400 and "r/JUDGE/LEVEL/COLUMN" in bad.text


def test_compare_two_runs_shows_shifts_and_links_both_sides(explorer_data: ExplorerData) -> None:
    page = explorer_data.client.get(
        "/compare/tool_errors",
        params={"run": [RESULTS_RUN, SECOND_RUN], "level": "datapoint"},
    )
    assert page.status_code == 200
    with (
        Store.open(explorer_data.settings, ensure_schema=False) as store,
        MantaService(store) as svc,
    ):
        a = svc.results("tool_errors", RESULTS_RUN, level="datapoint")
        b = svc.results("tool_errors", SECOND_RUN, level="datapoint")
    shifts = page.text.split('id="numeric-shifts"', 1)[1].split("</table>", 1)[0]
    # Per phase: the train datapoints of one run against the other's.
    row = shifts.split('<td>error_rate <span class="tag">train</span></td>', 1)[1]
    row = row.split("</tr>", 1)[0]
    a, b = a[a.phase == "train"], b[b.phase == "train"]
    assert f'<td class="num">{format_number(float(a.error_rate.mean()))}</td>' in row
    assert f'<td class="num">{format_number(float(b.error_rate.mean()))}</td>' in row
    rows = page.text.split('id="compare-rows"', 1)[1].split("</table>", 1)[0]
    assert f"/traces?run={RESULTS_RUN}&amp;datapoint=" in rows
    assert f"/traces?run={SECOND_RUN}&amp;datapoint=" in rows


def test_compare_with_the_grader_and_a_version_with_itself(explorer_data: ExplorerData) -> None:
    grader = explorer_data.client.get(
        "/compare/tool_errors", params={"run": RESULTS_RUN, "against": "grader", "column": "score"}
    )
    assert grader.status_code == 200
    row = grader.text.split('id="agreement"', 1)[1].split("<td>score</td>", 1)[1]
    row = row.split("</tr>", 1)[0]
    assert '<td class="num">1</td>' in row  # the column is the trace score: correlation 1
    with (
        Store.open(explorer_data.settings, ensure_schema=False) as store,
        MantaService(store) as svc,
    ):
        version = next(j for j in svc.judges(run_id=RESULTS_RUN) if j.judge == "tool_errors")
    latest = version.versions[0].version
    same = explorer_data.client.get(
        "/compare/tool_errors",
        params={"run": RESULTS_RUN, "version": [latest, latest], "level": "trace"},
    )
    assert same.status_code == 200 and "Disagreeing on" not in same.text
    assert "100.0%" in same.text
    choose = explorer_data.client.get("/compare/tool_errors", params={"run": RESULTS_RUN})
    assert "Compare runs" in choose.text and "Choose two runs" in choose.text


def test_a_step_row_links_to_its_datapoint_groups(explorer_data: ExplorerData) -> None:
    page = explorer_data.client.get(f"/results/tool_errors?run={RESULTS_RUN}&level=step")
    links = [link.replace("&amp;", "&") for link in result_rows(page.text)]
    found = re.search(r"&step=(\d+)&phase=(\w+)$", links[0])
    assert found, links[0]
    step, phase = int(found.group(1)), found.group(2)
    # Datapoint results are per (datapoint, step): the row lists the step's datapoint groups.
    assert links[0].startswith(f"/results/tool_errors?run={RESULTS_RUN}&level=datapoint")
    expected = sql(
        explorer_data,
        "SELECT uniqExact(datapoint_id) FROM {db}.traces WHERE run_id = {r:String} "
        "AND step_number = {s:Int64} AND phase = {p:String}",
        {"r": RESULTS_RUN, "s": step, "p": phase},
    )[0][0]
    assert f"{expected:,} rows" in explorer_data.client.get(links[0]).text
