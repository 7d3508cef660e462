"""Full-text search (``text=``): the service, ``manta search`` and the explorer, each checked
against a ``positionCaseInsensitiveUTF8`` count over the same spans in SQL."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from typer.testing import CliRunner

from manta_lib.cli import _register_commands, app
from manta_lib.errors import QueryError
from manta_lib.service import MantaService
from manta_lib.store import Store
from manta_lib.store.schema import SPAN_TEXT_EXPR, SPANS_DDL, ensure_schema
from tests.lib.builders import load_traces, trace_line
from tests.lib.explorer.conftest import HOSTILE_RUN, RESULTS_RUN, SCRIPT, ExplorerData

# Seeded stores or seconds per test: make test runs them, make check leaves them out.
pytestmark = pytest.mark.slow

CODE_RUN = "run_grpo_code_v1"
# In tool results ("ZeroDivisionError: division by zero"), grader feedback ("... tests pass."),
# assistant messages, prompts, and the hostile trace's content, arguments and result.
PHRASES = ("division by zero", "DIVISION BY ZERO", "tests pass", "equivalent", "zero", SCRIPT)


@pytest.fixture(scope="module")
def svc(explorer_data: ExplorerData) -> Iterator[MantaService]:
    with (
        Store.open(explorer_data.settings, ensure_schema=False) as store,
        MantaService(store) as service,
    ):
        yield service


def matching_traces(svc: MantaService, phrase: str, where: str = "1", **params: Any) -> set:
    """(run_id, trace_id) of the traces with a span containing ``phrase`` in content, tool
    arguments or tool result, any case: the reference, without the index's expression."""
    rows = svc.store.rows(
        "SELECT run_id, trace_id FROM {db}.traces WHERE (run_id, trace_id) IN ("
        "SELECT run_id, trace_id FROM {db}.spans "
        "WHERE positionCaseInsensitiveUTF8(content, {q:String}) > 0 "
        "OR positionCaseInsensitiveUTF8(tool_arguments, {q:String}) > 0 "
        f"OR positionCaseInsensitiveUTF8(tool_result, {{q:String}}) > 0) AND {where}",
        {"q": phrase, **params},
    )
    return set(rows)


@pytest.mark.parametrize("phrase", PHRASES)
def test_search_counts_equal_a_case_insensitive_scan(svc: MantaService, phrase: str) -> None:
    expected = matching_traces(svc, phrase)
    assert expected, f"the test data has no {phrase!r}"
    assert svc.count_traces(text=phrase) == len(expected)
    found = svc.get_traces(text=phrase, order_by="trace_id")
    assert {(t.run_id, t.trace_id) for t in found} == expected


def test_search_looks_in_messages_tool_calls_and_grader_feedback(svc: MantaService) -> None:
    """Each searched column on its own yields matches (a phrase only one column holds)."""
    for column, phrase in (
        ("tool_result", "division by zero"),
        ("content", "tests pass."),  # grader feedback of the code run
        ("tool_arguments", '"code"'),
    ):
        in_column = svc.store.rows(
            f"SELECT count(DISTINCT run_id, trace_id) FROM {{db}}.spans "
            f"WHERE positionCaseInsensitiveUTF8({column}, {{q:String}}) > 0",
            {"q": phrase},
        )[0][0]
        assert in_column > 0
        assert svc.count_traces(text=phrase) == len(matching_traces(svc, phrase))


def test_search_combines_with_run_step_and_results_filters(svc: MantaService) -> None:
    expected = matching_traces(
        svc,
        "division by zero",
        "run_id = {r:String} AND step_number BETWEEN 0 AND 4",
        r=RESULTS_RUN,
    )
    filters = {"text": "division by zero", "step": (0, 4)}
    assert svc.count_traces(RESULTS_RUN, **filters) == len(expected) > 0
    found = svc.get_traces(RESULTS_RUN, **filters)
    assert {(t.run_id, t.trace_id) for t in found} == expected

    frame = svc.results("tool_errors", RESULTS_RUN)
    with_errors = set(frame.loc[frame["tool_errors"] > 0, "trace_id"])
    condition = "tool_errors.tool_errors > 0"
    searched = svc.get_traces(RESULTS_RUN, text="zero", results=condition, phase="train")
    reference = {
        trace_id
        for run_id, trace_id in matching_traces(
            svc, "zero", "run_id = {r:String} AND phase = 'train'", r=RESULTS_RUN
        )
        if trace_id in with_errors
    }
    assert {t.trace_id for t in searched} == reference
    assert svc.count_traces(RESULTS_RUN, text="zero", results=condition, phase="train") == len(
        reference
    )


def test_search_pages_and_streams(svc: MantaService) -> None:
    expected = sorted(trace_id for _, trace_id in matching_traces(svc, "equivalent"))
    assert len(expected) > 40
    pages = [
        [
            t.trace_id
            for t in svc.get_traces(text="equivalent", order_by="trace_id", limit=20, offset=start)
        ]  # fmt: skip
        for start in range(0, len(expected), 20)
    ]
    assert all(len(page) <= 20 for page in pages)
    assert [trace_id for page in pages for trace_id in page] == expected
    streamed = [
        trace.trace_id
        for batch in svc.iter_trace_batches(text="equivalent", batch_size=16)
        for trace in batch
    ]
    assert sorted(streamed) == expected
    ordered = svc.iter_trace_batches(text="equivalent", order_by="score", with_spans=False)
    assert sorted(t.trace_id for batch in ordered for t in batch) == expected


def test_phrase_is_literal_and_several_phrases_must_all_occur(svc: MantaService) -> None:
    # LIKE wildcards mean themselves: "%" and "_" match only those characters.
    assert svc.count_traces(text="division%zero") == 0
    assert svc.count_traces(text="division_by") == 0
    both = svc.count_traces(text=["division by zero", "tests pass"])
    reference = matching_traces(svc, "division by zero") & matching_traces(svc, "tests pass")
    assert both == len(reference) > 0
    # A phrase shorter than the index's n-grams still matches (by a scan).
    assert svc.count_traces(text="Q?") == len(matching_traces(svc, "Q?"))


@pytest.mark.parametrize(
    ("value", "message"),
    [("", "blank"), ("   ", "blank"), ([], "at least one"), (3, "string"), ("a\x00b", "NUL")],
)
def test_bad_search_text_is_a_clear_error(svc: MantaService, value: Any, message: str) -> None:
    with pytest.raises(QueryError, match=message):
        svc.count_traces(text=value)


def test_the_search_reads_only_granules_its_index_admits(svc: MantaService) -> None:
    """The query spells the indexed expression exactly, so ClickHouse uses the index."""
    plan = "\n".join(
        row[0]
        for row in svc.store.rows(
            f"EXPLAIN indexes = 1 SELECT count() FROM {{db}}.spans "
            f"WHERE {SPAN_TEXT_EXPR} LIKE lowerUTF8({{p:String}})",
            {"p": "%division by zero%"},
        )
    )
    assert "span_text" in plan


def test_an_older_store_gets_the_index_by_migration(explorer_data: ExplorerData) -> None:
    settings = explorer_data.settings.model_copy(update={"database": "t_search_migration"})
    with Store.open(settings, ensure_schema=False) as store:
        store.command("DROP DATABASE IF EXISTS {db}")
        ensure_schema(store)
        # Make it a schema-3 store: spans without the index, version 3 recorded.
        store.command("DROP TABLE {db}.spans")
        without_index = SPANS_DDL.split("    INDEX span_text")[0].rstrip(", \n")
        store.command(
            f"{without_index}\n) ENGINE = ReplacingMergeTree "
            "ORDER BY (run_id, trace_id, seq, span_id)"
        )
        store.command("TRUNCATE TABLE {db}.schema_migrations")
        store.command("INSERT INTO {db}.schema_migrations (version) VALUES (3)")
        store.command(
            "INSERT INTO {db}.spans (trace_id, run_id, span_id, seq, kind, content) "
            "VALUES ('t1', 'r1', 's1', 0, 'message', 'It said: I GIVE UP.'), "
            "('t1', 'r1', 's2', 1, 'message', 'ÉCHEC du test')"
        )
        indexes = "SELECT count() FROM system.data_skipping_indices WHERE database = {d:String} "
        indexes += "AND table = 'spans' AND name = 'span_text'"
        assert store.rows(indexes, {"d": store.database})[0][0] == 0
        ensure_schema(store)
        assert store.rows(indexes, {"d": store.database})[0][0] == 1
        rows = store.rows(
            f"SELECT span_id FROM {{db}}.spans WHERE {SPAN_TEXT_EXPR} LIKE lowerUTF8({{p:String}})",
            {"p": "%i give up%"},
        )
        assert rows == [("s1",)]
        store.command("INSERT INTO {db}.traces (trace_id, run_id) VALUES ('t1', 'r1')")
        with MantaService(store) as migrated:
            assert migrated.count_traces(text="échec") == 1  # any case, beyond ASCII
        store.command("DROP DATABASE {db}")


# ---- the CLI -------------------------------------------------------------------------------


def test_cli_search_lists_the_matching_traces_with_filters(
    svc: MantaService, explorer_data: ExplorerData
) -> None:
    if not any(command.name == "search" for command in app.registered_commands):
        _register_commands()
    arguments = ["search", "Division By Zero", "--run", CODE_RUN, "--step", "0..6"]
    result = CliRunner().invoke(app, [*arguments, "-f", "csv", "-n", "1000"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.startswith("tr_")]
    expected = matching_traces(
        svc, "division by zero", "run_id = {r:String} AND step_number BETWEEN 0 AND 6", r=CODE_RUN
    )
    assert {(line.split(",")[1], line.split(",")[0]) for line in lines} == expected
    assert all("division by zero" in line.lower() for line in lines)  # the snippet column

    paged = CliRunner().invoke(
        app, ["search", "zero", "--run", RESULTS_RUN, "--results", "tool_errors.tool_errors > 0",
              "-f", "csv", "-n", "2", "--offset", "1"],
    )  # fmt: skip
    assert paged.exit_code == 0, paged.output
    assert len([line for line in paged.stdout.splitlines() if line.startswith("tr_")]) == 2

    bad = CliRunner().invoke(app, ["search", "zero", "--step", "three"])
    assert bad.exit_code == 2
    assert "not a step" in bad.output


# ---- the explorer --------------------------------------------------------------------------


def trace_ids_on(page: str) -> set[str]:
    return set(re.findall(r'<a href="/traces/([^"?#/]+)(?:\?text=[^"#]*#hit-1)?">', page))


def test_explorer_search_box_filters_the_trace_list(
    svc: MantaService, explorer_data: ExplorerData
) -> None:
    page = explorer_data.client.get(
        f"/traces?run={RESULTS_RUN}&text=division+by+zero&step_min=0&step_max=8"
        f"&results={quote('tool_errors.tool_errors >= 0')}&per=200"
    )
    assert page.status_code == 200
    assert 'name="text"' in page.text and 'value="division by zero"' in page.text
    expected = matching_traces(
        svc,
        "division by zero",
        "run_id = {r:String} AND step_number BETWEEN 0 AND 8",
        r=RESULTS_RUN,
    )
    assert {(RESULTS_RUN, trace_id) for trace_id in trace_ids_on(page.text)} == expected
    # Each row links to its trace with the phrase, and shows where it occurs, marked.
    assert "?text=division%20by%20zero#hit-1" in page.text
    assert page.text.count('<mark class="hit"') >= len(expected)


def test_trace_page_marks_the_matches_and_anchors_the_first(
    explorer_data: ExplorerData,
) -> None:
    page = explorer_data.client.get(
        f"/traces/{explorer_data.hostile_trace}?text={quote(SCRIPT.upper())}"
    ).text
    # The hostile text is in the content, the tool arguments and the tool result.
    marks = re.findall(r'<mark class="hit"( id="hit-1")?>([^<]*)</mark>', page)
    assert len(marks) >= 3
    assert [anchor for anchor, _ in marks].count(' id="hit-1"') == 1
    assert all(html.unescape(text).lower() == SCRIPT.lower() for _, text in marks)
    assert SCRIPT not in page  # marked, still escaped
    assert "occurs in 3 spans" in page
    plain = explorer_data.client.get(f"/traces/{explorer_data.hostile_trace}").text
    assert '<mark class="hit"' not in plain
    absent = explorer_data.client.get(f"/traces/{explorer_data.hostile_trace}?text=nowhere+here")
    assert "does not occur" in absent.text


def test_explorer_search_of_a_run_without_matches(explorer_data: ExplorerData) -> None:
    page = explorer_data.client.get(f"/traces?run={HOSTILE_RUN}&text=division+by+zero")
    assert page.status_code == 200
    assert "No trace matches these filters." in page.text


def test_a_search_count_is_reused_only_while_the_spans_are_unchanged(
    svc: MantaService, explorer_data: ExplorerData, tmp_path: Path
) -> None:
    """The trace list keeps a search's count for its next pages, and a new matching trace
    shows at once (the count is recomputed when the traces or spans change)."""
    run_id, phrase = "run_search_fresh", "quokka overflow"

    def shown() -> str:
        page = explorer_data.client.get(f"/traces?run={run_id}&text={quote(phrase.upper())}")
        assert page.status_code == 200
        found = re.search(
            r'<h1 id="live-total">Traces <span class="muted">([^<]*)</span>', page.text
        )
        assert found, page.text[:500]
        return found.group(1)

    line = trace_line("t_fresh_0", run_id=run_id)
    line["spans"][0]["content"] = f"please handle a {phrase} here"
    load_traces(svc.store, [line], tmp_path)
    assert shown() == "1" == str(len(matching_traces(svc, phrase, "run_id = {r:String}", r=run_id)))
    assert shown() == "1"  # the next request (another page) reuses it
    more = trace_line("t_fresh_1", run_id=run_id)
    more["spans"][1]["content"] = f"the {phrase.title()} again"
    load_traces(svc.store, [more], tmp_path)
    assert shown() == "2" == str(len(matching_traces(svc, phrase, "run_id = {r:String}", r=run_id)))
