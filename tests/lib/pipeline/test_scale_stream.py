"""Spans streamed as column blocks: one slice per trace, equal to the spans read per trace."""

from __future__ import annotations

import pytest

from manta import MantaService
from manta_lib.context import SpanColumns
from manta_lib.demo import seed_demo
from manta_lib.models import SPAN_COLUMNS
from manta_lib.store import Store
from manta_lib.store.trace_reads import trace_span_slices

# Seeded stores or seconds per test: make test runs them, make check leaves them out.
pytestmark = pytest.mark.slow


def _block(rows: list[tuple[str, str, int]]) -> list[list[object]]:
    """A column block in SPAN_COLUMNS order from (trace_id, run_id, seq) rows."""
    filled = [
        {"trace_id": t, "run_id": r, "seq": s, "kind": "tool", "is_error": s % 2 == 1}
        for t, r, s in rows
    ]
    return [[row.get(name, "") for row in filled] for name in SPAN_COLUMNS]


def test_a_trace_cut_by_a_block_boundary_is_one_slice() -> None:
    blocks = [
        _block([("a", "r", 0), ("b", "r", 0), ("b", "r", 1)]),
        _block([("b", "r", 2), ("b", "r", 3)]),
        _block([("b", "r", 4), ("c", "r", 0)]),
        _block([("d", "r", 0)]),
    ]
    slices = list(trace_span_slices(iter(blocks)))
    assert [key for key, _ in slices] == [("r", "a"), ("r", "b"), ("r", "c"), ("r", "d")]
    seq = SPAN_COLUMNS.index("seq")
    assert [row[seq] for row in slices[1][1]] == [0, 1, 2, 3, 4]
    assert [len(s) for _, s in slices] == [1, 5, 1, 1]


def test_column_slices_answer_like_rows(store: Store) -> None:
    seed_demo(store, traces=300, seed=5)
    svc = MantaService(store)
    streamed = [t for batch in svc.iter_trace_batches(batch_size=64) for t in batch]
    assert len(streamed) == 300
    assert any(isinstance(t._rows, SpanColumns) for t in streamed)
    by_id = {t.trace_id: t for t in svc.load_contexts(svc.get_traces(order_by="trace_id"))}
    for trace in streamed:
        other = by_id[trace.trace_id]
        # totals first: they read the columns before any row tuple is built
        assert trace.tool_error_count == other.tool_error_count
        assert trace.tool_call_count == other.tool_call_count
        assert trace.llm_tokens == other.llm_tokens
        assert trace.llm_cost_usd == other.llm_cost_usd
        assert trace.has_error == other.has_error
        assert trace.spans() == other.spans()
        assert trace.conversation().to_text() == other.conversation().to_text()


def test_a_block_of_several_runs_is_cut_by_run_and_trace() -> None:
    blocks = [
        _block([("a", "r1", 0), ("a", "r1", 1), ("a", "r2", 0), ("b", "r2", 0)]),
        _block([("b", "r2", 1), ("c", "r2", 0), ("c", "r2", 1), ("c", "r2", 2)]),
    ]
    slices = list(trace_span_slices(iter(blocks)))
    assert [key for key, _ in slices] == [("r1", "a"), ("r2", "a"), ("r2", "b"), ("r2", "c")]
    assert [len(s) for _, s in slices] == [2, 1, 2, 3]


def test_the_streams_read_a_table_of_many_parts_without_buffering_each_part(
    store: Store,
) -> None:
    # Merges stopped: every insert of the seed stays a part of its own.
    for table in ("traces", "spans"):
        store.command(f"SYSTEM STOP MERGES {{db}}.{table}")
    seed_demo(store, traces=400, seed=5, batch_traces=50)
    parts = store.rows(
        "SELECT count() FROM system.parts WHERE database = {d:String} AND table = 'spans' "
        "AND active",
        {"d": store.database},
    )[0][0]
    assert parts > 4
    svc = MantaService(store)
    batches = svc.iter_trace_batches(batch_size=16)
    first = next(batches)
    with store.sibling() as probe:
        running = probe.rows(
            "SELECT Settings['max_threads'], Settings['read_in_order_use_buffering'] "
            "FROM system.processes WHERE query NOT LIKE '%system.processes%'"
        )
    rest = [t for batch in batches for t in batch]
    # both streams (traces, spans) were open, each on one thread without per-part buffers
    assert sorted(running) == [("1", "0"), ("1", "0")]
    assert len(first) + len(rest) == 400
