"""TraceContext accessors on the demo data agree with the same questions asked in SQL."""

from __future__ import annotations

from collections import Counter

import pytest

from manta import MantaService
from manta_lib.demo import seed_demo
from manta_lib.store import Store


@pytest.fixture
def demo(store: Store) -> MantaService:
    seed_demo(store, traces=400, seed=3)
    return MantaService(store)


def test_accessors_match_sql_aggregates(demo: MantaService) -> None:
    store = demo.store
    sql_tool_errors = dict(
        store.rows(
            "SELECT trace_id, countIf(kind = 'tool' AND is_error) FROM {db}.spans GROUP BY trace_id"
        )
    )
    sql_llm_cost = dict(
        store.rows(
            "SELECT trace_id, sum(cost_usd) FROM {db}.spans WHERE kind = 'llm' GROUP BY trace_id"
        )
    )
    seen = 0
    statuses: Counter[str] = Counter()
    for batch in demo.iter_trace_batches(batch_size=128):
        for trace in batch:
            seen += 1
            statuses[trace.status] += 1
            assert trace.tool_error_count == sql_tool_errors.get(trace.trace_id, 0)
            assert len(trace.tools(errors_only=True)) == trace.tool_error_count
            assert trace.llm_cost_usd == pytest.approx(sql_llm_cost.get(trace.trace_id, 0.0))
            conversation = trace.conversation()
            assert [t.seq for t in conversation] == sorted(t.seq for t in conversation)
            messages = conversation.to_openai_messages()
            assert messages[0]["role"] in ("system", "user")
            grade = trace.grader_result()
            if trace.status == "completed":
                assert grade is not None and grade.score == pytest.approx(trace.score)
            else:
                assert trace.has_error
    assert seen == 400
    assert statuses["completed"] > 300 and statuses["error"] + statuses["timeout"] > 0
