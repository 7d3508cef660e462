"""Raw SQL on ``entity_metadata`` after resumes (issue 26, point 11): a resumed run writes its
reduce outputs again, so the table holds several rows per key until ClickHouse merges them.
The queries docs/results.md gives for reading it in SQL (``FINAL``, ``argMax``) must return
exactly one row per key, with the newest values."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from manta_lib.store import Store
from tests.lib.builders import load_traces, trace_line
from tests.lib.results import defs

# Seeded stores or seconds per test: make test runs them, make check leaves them out.
pytestmark = pytest.mark.slow

DOCS = Path(__file__).resolve().parents[2] / "docs" / "results.md"
RUN = "run_sql_readers"


def documented_queries() -> list[str]:
    text = DOCS.read_text()
    section = text.split("## Reading `entity_metadata` in SQL", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sql\n(.*?)```", section, flags=re.DOTALL)


def test_documented_sql_reads_one_row_per_key_after_resumes(store: Store, tmp_path: Path) -> None:
    lines = [
        trace_line(f"t_{n}", run_id=RUN, step=n % 2, datapoint=f"dp_{n % 3}")
        for n in range(1, 14)  # the test judge fails t_7: each resume maps it again
    ]
    load_traces(store, lines, tmp_path)
    for _ in range(3):  # the first run and two resumes, each rewriting the reduce outputs
        defs.typed.run(RUN, mode="local", progress=False, max_failures=1.0)
    key = "project_id, run_id, judge, judge_version, entity_level, entity_id, column"
    raw, keys = store.rows(
        f"SELECT count(), uniqExact({key}) FROM {{db}}.entity_metadata "
        "WHERE run_id = {r:String} AND entity_level = 'datapoint'",
        {"r": RUN},
    )[0]
    assert keys > 0 and raw > keys  # the resumes wrote the datapoint outputs again
    expected = sorted(
        store.rows(
            "SELECT entity_id, column, value_number, value_string FROM {db}.entity_metadata "
            "FINAL WHERE run_id = {r:String} AND entity_level = 'datapoint'",
            {"r": RUN},
        )
    )
    assert len(expected) == keys

    queries = documented_queries()
    assert len(queries) == 2
    for query in queries:
        sql = (
            query.replace("manta.", "{db}.")
            .replace("'tool_errors'", "'typed_results'")
            .replace("'grpo_v1'", "{r:String}")
        )
        assert sorted(store.rows(sql, {"r": RUN})) == expected, query
