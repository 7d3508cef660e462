"""Reading rollouts together: the group page, result columns in trace lists, the span tree
and live pages, checked against SQL over the same store and against ``svc.results``."""

from __future__ import annotations

import re
from html import unescape
from html.parser import HTMLParser
from pathlib import Path

import pytest

from manta_lib.explorer.links import group_url
from manta_lib.explorer.web import _num
from manta_lib.store import Store
from tests.lib.builders import trace_line
from tests.lib.explorer.conftest import RESULTS_RUN, ExplorerData

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def sql(data: ExplorerData, query: str, params: dict | None = None) -> list[tuple]:
    with Store.open(data.settings, ensure_schema=False) as store:
        return store.rows(query, params)


def a_group(data: ExplorerData) -> tuple[str, int, list[str]]:
    """A datapoint with several rollouts at one step of the results run, and their ids."""
    dp, step = sql(
        data,
        "SELECT datapoint_id, step_number FROM {db}.traces WHERE run_id = {r:String} "
        "GROUP BY datapoint_id, step_number HAVING count() > 1 ORDER BY count() DESC, 1, 2 "
        "LIMIT 1",
        {"r": RESULTS_RUN},
    )[0]
    ids = sql(
        data,
        "SELECT trace_id FROM {db}.traces WHERE run_id = {r:String} AND datapoint_id = "
        "{d:String} AND step_number = {s:Int64} ORDER BY trace_id",
        {"r": RESULTS_RUN, "d": dp, "s": step},
    )
    return dp, int(step), [r[0] for r in ids]


def section(html: str, label: str) -> str:
    return html.split(f'aria-label="{label}"', 1)[1].split("</section>", 1)[0]


# ---- the group page ------------------------------------------------------------------------


def test_group_page_lists_exactly_the_datapoints_rollouts_at_that_step(
    explorer_data: ExplorerData,
) -> None:
    dp, step, ids = a_group(explorer_data)
    response = explorer_data.client.get(group_url(RESULTS_RUN, dp, step, base=""))
    assert response.status_code == 200, response.text
    summary = section(response.text, f"group at step {step}")
    shown = re.findall(r'<td class="small"><a href="/traces/([^"]+)">', summary)
    assert shown == ids
    scores = sql(
        explorer_data,
        "SELECT score, turn_count FROM {db}.traces WHERE trace_id IN {ids:Array(String)} "
        "ORDER BY trace_id",
        {"ids": ids},
    )
    assert f"{len(ids)} rollouts" in response.text
    row = summary.split("<th>score</th>", 1)[1].split("</tr>", 1)[0]
    shown_scores = re.findall(r'<td class="num">([^<]*)</td>', row)
    assert shown_scores == [_num(s[0]) for s in scores]
    turns = summary.split("<th>turns</th>", 1)[1].split("</tr>", 1)[0]
    assert re.findall(r'<td class="num">([^<]*)</td>', turns) == [str(s[1]) for s in scores]


def test_group_page_diffs_two_rollouts_and_shows_another_step(
    explorer_data: ExplorerData,
) -> None:
    dp, step, ids = a_group(explorer_data)
    steps = [
        r[0]
        for r in sql(
            explorer_data,
            "SELECT DISTINCT step_number FROM {db}.traces WHERE run_id = {r:String} "
            "AND datapoint_id = {d:String} ORDER BY 1",
            {"r": RESULTS_RUN, "d": dp},
        )
    ]
    other = next(s for s in steps if s != step) if len(steps) > 1 else None
    url = group_url(RESULTS_RUN, dp, step, base="", a=ids[0], b=ids[1], vs=other)
    page = explorer_data.client.get(url)
    assert page.status_code == 200, page.text
    diff = section(page.text, "diff")
    assert f"{ids[0]} → {ids[1]}" in unescape(diff)
    assert "Final answers" in diff and "Conversations" in diff
    if other is not None:
        assert f'aria-label="group at step {other}"' in page.text
    # A trace outside the group is refused with a clear message.
    bad = explorer_data.client.get(group_url(RESULTS_RUN, dp, step, base="", a="nope", b=ids[0]))
    assert bad.status_code == 400 and "nope" in unescape(bad.text)
    missing = explorer_data.client.get(group_url(RESULTS_RUN, dp, 10**6, base=""))
    assert missing.status_code == 404 and "its steps are" in missing.text


def test_the_group_is_reachable_from_trace_results_and_run_pages(
    explorer_data: ExplorerData,
) -> None:
    dp, step, ids = a_group(explorer_data)
    target = group_url(RESULTS_RUN, dp, step, base="").replace("&", "&amp;")
    trace = explorer_data.client.get(f"/traces/{ids[0]}").text
    assert target in trace and f"its group at step {step}" in trace
    run = explorer_data.client.get(f"/runs/{RESULTS_RUN}").text
    assert 'id="datapoints"' in run and target in run
    results = explorer_data.client.get(
        f"/results/tool_errors?run={RESULTS_RUN}&level=datapoint"
    ).text
    assert "/group?run=" in results and ">group</a>" in results


# ---- result columns in the trace list ------------------------------------------------------


def list_rows(html: str, columns: int) -> dict[str, list[str]]:
    """trace id -> the texts of its last ``columns`` result cells, in page order."""
    table = html.split('id="trace-table"', 1)[1].split("</table>", 1)[0]
    rows = {}
    for row in table.split("<tr")[2:]:
        trace = re.search(r'<a href="/traces/([^"]+)">', row)
        cells = re.findall(r'<td class="result-col[^"]*">([^<]*)</td>', row)
        assert trace and len(cells) == columns, row
        rows[unescape(trace.group(1))] = [unescape(c) for c in cells]
    return rows


def test_chosen_result_columns_equal_svc_results(explorer_data: ExplorerData) -> None:
    from manta_lib.explorer.web import _cell
    from manta_lib.service import MantaService

    cols = ["tool_errors.tool_errors", "tool_errors.error_rate", "tool_errors.step.mean_score"]
    page = explorer_data.client.get(
        "/traces", params={"run": RESULTS_RUN, "per": 200, "cols": cols}
    )
    assert page.status_code == 200, page.text
    rows = list_rows(page.text, 3)
    assert len(rows) == explorer_data.runs[RESULTS_RUN]
    with Store.open(explorer_data.settings, ensure_schema=False) as store:
        svc = MantaService(store)
        per_trace = svc.results("tool_errors", RESULTS_RUN).set_index("trace_id")
        per_dp = svc.results("tool_errors", RESULTS_RUN, level="datapoint").set_index(
            ["datapoint_id", "step_number"]
        )
        per_step = svc.results("tool_errors", RESULTS_RUN, level="step").set_index(
            ["step_number", "phase"]
        )
        traces = {t.trace_id: t for t in svc.get_traces(trace_ids=list(rows))}
    for trace_id, cells in rows.items():
        t = traces[trace_id]
        expected = [
            per_trace.loc[trace_id, "tool_errors"],
            per_dp.loc[(t.datapoint_id, t.step_number), "error_rate"],
            per_step.loc[(t.step_number, str(t.phase)), "mean_score"],
        ]
        assert cells == [_cell(_plain(v)) for v in expected], trace_id


def _plain(value: object) -> object:
    return value.item() if hasattr(value, "item") else value  # type: ignore[union-attr]


def test_a_result_column_sorts_the_list_and_a_results_filter_shows_its_column(
    explorer_data: ExplorerData,
) -> None:
    from manta_lib.service import MantaService

    page = explorer_data.client.get(
        "/traces",
        params={
            "run": RESULTS_RUN,
            "cols": "tool_errors.tool_errors",
            "sort": "tool_errors.tool_errors",
            "desc": "1",
            "per": 20,
        },
    )
    assert page.status_code == 200, page.text
    rows = list_rows(page.text, 1)
    with Store.open(explorer_data.settings, ensure_schema=False) as store:
        frame = MantaService(store).results("tool_errors", RESULTS_RUN)
    top = sorted(frame["tool_errors"].tolist(), reverse=True)[:20]
    assert [int(c[0].replace(",", "")) for c in rows.values()] == top
    # The filtered column is shown by default.
    filtered = explorer_data.client.get(
        "/traces", params={"run": RESULTS_RUN, "results": "tool_errors.tool_errors > 0"}
    )
    shown = list_rows(filtered.text, 1)
    assert shown and all(int(c[0]) > 0 for c in shown.values())
    # An ambiguous or unknown column is a clear error.
    bad = explorer_data.client.get(
        "/traces", params={"run": RESULTS_RUN, "cols": "tool_errors.mean_score"}
    )
    assert bad.status_code == 400 and "tool_errors.datapoint.mean_score" in unescape(bad.text)
    unknown = explorer_data.client.get(
        "/traces", params={"run": RESULTS_RUN, "cols": "tool_errors.tool_erors"}
    )
    assert unknown.status_code == 400 and "tool_errors" in unescape(unknown.text)


def test_cli_trace_listing_shows_and_sorts_by_result_columns(explorer_data: ExplorerData) -> None:
    import csv
    import io

    from typer.testing import CliRunner

    from manta_lib.cli import _register_commands, app
    from manta_lib.service import MantaService

    if not any(command.name == "traces" for command in app.registered_commands):
        _register_commands()
    result = CliRunner().invoke(
        app,
        ["traces", "--run", RESULTS_RUN, "--col", "tool_errors.tool_errors", "--col",
         "tool_errors.error_rate", "--sort", "tool_errors.tool_errors", "--desc",
         "--format", "csv"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == explorer_data.runs[RESULTS_RUN]
    with Store.open(explorer_data.settings, ensure_schema=False) as store:
        svc = MantaService(store)
        per_trace = svc.results("tool_errors", RESULTS_RUN).set_index("trace_id")
        per_dp = svc.results("tool_errors", RESULTS_RUN, level="datapoint").set_index(
            ["datapoint_id", "step_number"]
        )
    for row in rows:
        assert int(row["tool_errors.tool_errors"]) == per_trace.loc[row["trace_id"], "tool_errors"]
        expected = per_dp.loc[(row["datapoint_id"], int(row["step_number"])), "error_rate"]
        assert float(row["tool_errors.error_rate"]) == pytest.approx(float(expected), rel=1e-12)
    errors = [int(r["tool_errors.tool_errors"]) for r in rows]
    assert errors == sorted(errors, reverse=True)
    bad = CliRunner().invoke(app, ["traces", "--run", RESULTS_RUN, "--col", "nojudge.x"])
    assert bad.exit_code == 1 and "known judges: tool_errors" in str(bad.exception)


# ---- the span tree -------------------------------------------------------------------------

INSPECT_LOGS = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "inspect_logs"


@pytest.fixture(scope="module")
def inspect_trace(explorer_data: ExplorerData) -> str:
    """The imported Inspect sample with nested and untimed spans (16 spans, 11 untimed)."""
    from manta_lib import import_files

    logs = sorted([*INSPECT_LOGS.glob("*.json"), *INSPECT_LOGS.glob("*.eval")])
    if not logs:
        pytest.fail(f"no Inspect AI logs in {INSPECT_LOGS}")
    with Store.open(explorer_data.settings, ensure_schema=False) as store:
        assert import_files(logs, store=store).ok
        rows = store.rows(
            "SELECT trace_id FROM {db}.spans GROUP BY trace_id HAVING countIf(parent_span_id "
            "!= '') > 0 AND countIf(started_at IS NULL) > 0 ORDER BY count() DESC LIMIT 1"
        )
    assert rows, "the Inspect logs have no sample with nested and untimed spans"
    return str(rows[0][0])


class _TreeParser(HTMLParser):
    """Each data-span element of the span tree with the data-span of its enclosing node."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str | None] = []
        self.parent_of: dict[str, str | None] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in ("details", "div"):
            return
        span = dict(attrs).get("data-span")
        if span is not None:
            enclosing = [s for s in self.stack if s is not None]
            self.parent_of[span] = enclosing[-1] if enclosing else None
        self.stack.append(span if tag == "details" else None)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("details", "div") and self.stack:
            self.stack.pop()


def test_span_tree_nests_every_span_and_the_untimed_ones_are_listed(
    explorer_data: ExplorerData, inspect_trace: str
) -> None:
    spans = sql(
        explorer_data,
        "SELECT span_id, parent_span_id, started_at IS NULL FROM {db}.spans "
        "WHERE trace_id = {t:String}",
        {"t": inspect_trace},
    )
    page = explorer_data.client.get(f"/traces/{inspect_trace}")
    assert page.status_code == 200
    tree = section(page.text, "span tree")
    parser = _TreeParser()
    parser.feed(tree)
    ids = {s[0] for s in spans}
    assert set(parser.parent_of) == ids and len(re.findall("data-span=", tree)) == len(ids)
    for span_id, parent, _untimed in spans:
        assert parser.parent_of[span_id] == (parent if parent in ids else None), span_id
    timeline = section(page.text, "timeline")
    untimed = [s for s in spans if s[2]]
    bars = timeline.count("<rect ")
    rows = timeline.split('id="untimed-spans"', 1)[1].count("<tr") - 1 if untimed else 0
    assert bars == len(spans) - len(untimed) and rows == len(untimed)


def test_span_tree_survives_orphans_and_parent_cycles() -> None:
    from manta_lib.explorer.trace_view import build_span_tree
    from manta_lib.models import SpanRecord

    spans = [
        SpanRecord(span_id="a", seq=0, kind="system"),
        SpanRecord(span_id="b", parent_span_id="a", seq=1, kind="llm"),
        SpanRecord(span_id="c", parent_span_id="missing", seq=2, kind="tool"),
        SpanRecord(span_id="d", parent_span_id="e", seq=3, kind="system"),
        SpanRecord(span_id="e", parent_span_id="d", seq=4, kind="system"),
        SpanRecord(span_id="f", parent_span_id="f", seq=5, kind="message"),
    ]
    tree = build_span_tree(spans)
    assert sorted(n.span.span_id for n in tree.order) == list("abcdef")
    assert [n.span.span_id for n in tree.roots] == ["a", "c", "f", "d"]
    assert [c.span.span_id for c in tree.roots[0].children] == ["b"]
    assert [c.span.span_id for c in tree.roots[3].children] == ["e"]


# ---- live pages ----------------------------------------------------------------------------


def test_the_poll_reports_new_traces_after_an_insert(
    explorer_data: ExplorerData, tmp_path: Path
) -> None:
    from tests.lib.builders import load_traces  # noqa: PLC0415

    run = "run_live_poll"
    with Store.open(explorer_data.settings, ensure_schema=False) as store:
        load_traces(store, [trace_line("t_live_0", run_id=run, step=0)], tmp_path)
    page = explorer_data.client.get(f"/traces?run={run}").text
    poll = unescape(re.search(r'id="live-badge"[^>]*hx-get="([^"]+)"', page).group(1))
    assert 'id="live-region"' in page and "manta-new-traces from:body" in page
    quiet = explorer_data.client.get(poll, headers={"HX-Request": "true"})
    assert quiet.status_code == 204  # nothing new: htmx swaps nothing
    with Store.open(explorer_data.settings, ensure_schema=False) as store:
        lines = [trace_line(f"t_live_{i}", run_id=run, step=1) for i in range(1, 4)]
        load_traces(store, lines, tmp_path)
    fresh = explorer_data.client.get(
        poll, headers={"HX-Request": "true", "HX-Target": "live-badge"}
    )
    assert fresh.status_code == 200 and fresh.headers["HX-Trigger"] == "manta-new-traces"
    assert "3 new traces" in fresh.text and "HX-Push-Url" not in fresh.headers
    # The next poll, from the swapped badge, is quiet again until more traces arrive.
    again = unescape(re.search(r'hx-get="([^"]+)"', fresh.text).group(1))
    assert explorer_data.client.get(again).status_code == 204
    region = explorer_data.client.get(
        f"/traces?run={run}", headers={"HX-Request": "true", "HX-Target": "live-region"}
    )
    assert region.text.count("t_live_") >= 4 and "HX-Push-Url" not in region.headers
    # The run page and the curves poll the same way, for their runs.
    for url in (f"/runs/{run}", f"/curves?run={run}"):
        live = explorer_data.client.get(url).text
        assert 'id="live-region"' in live
        badge = unescape(re.search(r'id="live-badge"[^>]*hx-get="([^"]+)"', live).group(1))
        assert f"run={run}" in badge and "base=4" in badge


def test_order_by_column_puts_missing_values_last_and_survives_mixed_types() -> None:
    from manta_lib.results.trace_columns import (
        ColumnValues,
        ResultColumn,
        TraceKey,
        order_by_column,
    )

    keys = [TraceKey(f"t{i}", "r", "dp", 0, "train") for i in range(5)]
    numbers = ColumnValues(ResultColumn("j.c", "j", "trace", "c"))
    numbers.by_entity.update({"t0": 2, "t1": None, "t2": 5.5, "t3": 2})
    assert order_by_column(keys, numbers) == ["t0", "t3", "t2", "t1", "t4"]
    assert order_by_column(keys, numbers, descending=True) == ["t2", "t3", "t0", "t1", "t4"]
    mixed = ColumnValues(ResultColumn("j.c", "j", "step", "c"))
    mixed.by_entity.update({("r", 0): "text"})
    assert order_by_column(keys, mixed)[0] == "t0"  # one step: every trace has the value
    mixed_types = ColumnValues(ResultColumn("j.c", "j", "trace", "c"))
    mixed_types.by_entity.update({"t0": "b", "t1": 3, "t2": [1], "t3": "a"})
    assert order_by_column(keys, mixed_types) == ["t1", "t3", "t0", "t2", "t4"]
