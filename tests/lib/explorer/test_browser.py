"""The explorer in headless Chromium: runs → run → curve → traces filtered by status and by a
stored result → a trace's tool error → a results page reached by a Dagster metadata link.

The app runs under uvicorn in a thread of this process (the embedded store allows one process
per path, and this process holds the test database); Chromium talks to it over 127.0.0.1.
Screenshots go to ``artifacts/explorer/``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from manta_lib.explorer import create_app, results_url
from tests.lib.explorer.browser import SHOTS, chromium_page
from tests.lib.explorer.conftest import ExplorerData, serve

pytestmark = [pytest.mark.serial, pytest.mark.slow, pytest.mark.timeout(180)]

RUN = "run_grpo_math_v1"


@pytest.fixture(scope="module")
def server(explorer_data: ExplorerData) -> Iterator[str]:
    with serve(create_app(explorer_data.settings, dagster_url="http://127.0.0.1:3000")) as base:
        yield base


def test_browse_from_runs_to_a_tool_error(server: str, explorer_data: ExplorerData) -> None:
    from playwright.sync_api import expect

    from manta_lib.store import Store

    with Store.open(explorer_data.settings, ensure_schema=False) as store:
        [(phases,)] = store.rows(
            "SELECT uniqExact(phase) FROM {db}.traces WHERE run_id = {r:String}", {"r": RUN}
        )
    with chromium_page("failure.png") as (page, errors):
        page.goto(server + "/")
        expect(page.locator("#runs")).to_contain_text(RUN)
        page.screenshot(path=str(SHOTS / "1_runs.png"))

        page.get_by_role("link", name=RUN, exact=True).click()
        expect(page.locator("h1")).to_have_text(RUN)
        # the score by step: one line per phase of the run (train and eval apart)
        expect(page.locator("figure.chart polyline")).to_have_count(phases)

        page.get_by_role("link", name="Curves", exact=True).last.click()
        page.locator("select[name=metric]").select_option("error_rate")
        expect(page.locator("svg[aria-label='error rate against step']")).to_be_visible()
        page.screenshot(path=str(SHOTS / "2_curve.png"))

        page.goto(f"{server}/traces?run={RUN}")
        total = page.locator("h1 .muted").inner_text()
        page.locator("select[name=status]").select_option("completed")  # htmx swap
        expect(page).to_have_url(
            f"{server}/traces?run={RUN}&status=completed&sort=step_number&desc=0&per=50"
        )
        expect(page.locator("h1 .muted")).not_to_have_text(total)
        statuses = page.locator("#trace-table .status").all_inner_texts()
        assert statuses and set(statuses) == {"completed"}
        page.screenshot(path=str(SHOTS / "3_traces_filtered.png"))

        # Filter by a stored result: the traces a judge found tool errors in.
        page.locator("input[name=results]").fill("tool_errors.tool_errors > 0")
        page.locator("input[name=results]").press("Enter")
        expect(page).to_have_url(re.compile(r"results=tool_errors.tool_errors"))
        expect(page.locator("#trace-table")).to_contain_text(explorer_data.error_trace)
        page.screenshot(path=str(SHOTS / "4_traces_by_result.png"))

        page.locator("#trace-table").get_by_role(
            "link", name=explorer_data.error_trace, exact=True
        ).click()
        error_call = page.locator(".bubble.tool-error").first
        expect(error_call).to_be_visible()
        expect(error_call.locator(".error-badge")).to_contain_text("error")
        error_call.scroll_into_view_if_needed()
        page.screenshot(path=str(SHOTS / "5_trace_tool_error.png"))
        expect(page.locator("section[aria-label='stored results']")).to_contain_text("tool_errors")

        # The URL a Dagster materialization's metadata carries lands on its results page.
        page.goto(results_url("tool_errors", RUN, "datapoint", shard=7, base=server))
        expect(page.locator("h1")).to_contain_text("tool_errors")
        expect(page.locator(".filters")).to_contain_text(f"partition {RUN}|07")
        page.screenshot(path=str(SHOTS / "6_results_partition.png"))

    assert not errors, errors  # no script error, no CSP violation, no missing asset


def test_read_a_group_then_list_with_a_result_column(
    server: str, explorer_data: ExplorerData
) -> None:
    """A trace → its group → a diff of two rollouts → the list with a result column."""
    from playwright.sync_api import expect

    with chromium_page("failure_group.png") as (page, errors):
        page.goto(f"{server}/traces/{explorer_data.error_trace}")
        expect(page.locator("section[aria-label='span tree']")).to_be_visible()
        page.get_by_role("link", name=re.compile(r"^its group at step")).click()
        expect(page.locator("h1")).to_contain_text("Group")
        summary = page.locator("table.group-summary").first
        expect(summary).to_contain_text(explorer_data.error_trace)
        rollouts = page.locator("select[name=a] option")
        assert rollouts.count() >= 2
        page.screenshot(path=str(SHOTS / "7_group.png"))

        second = rollouts.nth(1).get_attribute("value")
        page.locator("select[name=a]").select_option(index=0)
        page.locator("select[name=b]").select_option(index=1)
        page.get_by_role("button", name="Show").click()
        diff = page.locator("section[aria-label=diff]")
        expect(diff).to_contain_text(f"→ {second}")
        expect(diff.locator("pre.diff").first).to_be_visible()
        page.screenshot(path=str(SHOTS / "8_group_diff.png"))

        page.get_by_role("link", name="as a trace list").click()
        expect(page.locator("#trace-table")).to_contain_text(explorer_data.error_trace)
        page.locator("input[name=cols]").fill("tool_errors.tool_errors")
        page.locator("input[name=cols]").press("Enter")
        expect(page).to_have_url(re.compile(r"cols=tool_errors.tool_errors"))
        header = page.locator("#trace-table thead")
        expect(header).to_contain_text("tool_errors.tool_errors")
        expect(page.locator("#trace-table td.result-col").first).to_be_visible()
        expect(page.locator("#live-badge")).to_be_attached()
        page.screenshot(path=str(SHOTS / "9_list_result_column.png"))
    assert not errors, errors


def test_search_then_read_the_hit_and_its_group(server: str, explorer_data: ExplorerData) -> None:
    """The search box → the matching traces (the set SQL finds) → a trace page that marks the
    phrase and opens at it → the hit's group → a diff of two rollouts → the group as a trace
    list with a result column."""
    from playwright.sync_api import expect

    from manta_lib.store import Store

    with Store.open(explorer_data.settings, ensure_schema=False) as store:
        [(result,)] = store.rows(
            "SELECT tool_result FROM {db}.spans WHERE trace_id = {t:String} AND is_error "
            "ORDER BY seq LIMIT 1",
            {"t": explorer_data.error_trace},
        )
        phrase = result.strip()[:24].upper()  # another case than stored: search ignores case
        expected = {
            trace_id
            for (trace_id,) in store.rows(
                "SELECT DISTINCT trace_id FROM {db}.spans WHERE run_id = {r:String} AND ("
                "positionCaseInsensitiveUTF8(content, {p:String}) > 0 OR "
                "positionCaseInsensitiveUTF8(tool_arguments, {p:String}) > 0 OR "
                "positionCaseInsensitiveUTF8(tool_result, {p:String}) > 0)",
                {"r": RUN, "p": phrase},
            )
        }
    assert explorer_data.error_trace in expected
    with chromium_page("failure_search.png") as (page, errors):
        page.goto(f"{server}/traces?run={RUN}&per=200")
        page.locator("input[name=text]").fill(phrase)
        page.locator("input[name=text]").press("Enter")
        expect(page).to_have_url(re.compile(r"[?&]text="))
        expect(page.locator("h1 .muted")).to_contain_text(f"{len(expected):,}")
        links = page.locator("#trace-table tbody tr td:first-child a")
        shown = set(links.all_inner_texts())
        assert shown and shown <= expected, shown - expected
        page.screenshot(path=str(SHOTS / "10_search.png"))

        page.locator("#trace-table").get_by_role("link", name=sorted(shown)[0], exact=True).click()
        hit = page.locator("mark.hit").first
        expect(hit).to_be_visible()
        assert hit.inner_text().lower() == phrase.lower()
        expect(page).to_have_url(re.compile(r"#"))  # opened at the first occurrence
        page.screenshot(path=str(SHOTS / "11_search_hit.png"))

        page.get_by_role("link", name=re.compile(r"^its group at step")).click()
        expect(page.locator("h1")).to_contain_text("Group")
        expect(page.locator("table.group-summary").first).to_contain_text(sorted(shown)[0])

        # diff two of its rollouts, then back to the list with a result column
        second = page.locator("select[name=a] option").nth(1).get_attribute("value")
        page.locator("select[name=a]").select_option(index=0)
        page.locator("select[name=b]").select_option(index=1)
        page.get_by_role("button", name="Show").click()
        expect(page.locator("section[aria-label=diff]")).to_contain_text(f"→ {second}")
        page.get_by_role("link", name="as a trace list").click()
        page.locator("input[name=cols]").fill("tool_errors.tool_errors")
        page.locator("input[name=cols]").press("Enter")
        expect(page.locator("#trace-table thead")).to_contain_text("tool_errors.tool_errors")
        expect(page.locator("#trace-table td.result-col").first).to_be_visible()
        page.screenshot(path=str(SHOTS / "12_search_group_list.png"))
    assert not errors, errors
