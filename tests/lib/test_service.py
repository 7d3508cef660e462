"""MantaService: every filter, ordering, paging, hierarchy listing and batched span loading."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from manta import MantaService, QueryError
from manta_lib.store import Store
from manta_lib.store.trace_queries import SpanFilter
from tests.lib.builders import load_traces, trace_line


class CountingStore(Store):
    """A real store that counts the queries it runs (to prove batching)."""

    queries = 0

    def rows(self, template: str, parameters: dict[str, Any] | None = None) -> list[tuple]:
        CountingStore.queries += 1
        return super().rows(template, parameters)


@pytest.fixture
def svc(store: Store, tmp_path: Path) -> MantaService:
    lines = [
        trace_line("a0", run_id="run_a", step=0, datapoint="dp1", score=0.2, phase="train",
                   model_name="m-small", env_name="math", meta={"temp": 0.7, "tag": "x y"}),
        trace_line("a1", run_id="run_a", step=0, datapoint="dp2", score=0.9, phase="train",
                   model_name="m-large", env_name="math", tool_errors=1, tool_calls=2,
                   meta={"temp": 1.0, "tag": "z", "greedy": True}),
        trace_line("a2", run_id="run_a", step=1, datapoint="dp1", score=None, status="error",
                   phase="train", model_name="m-small", env_name="code"),
        trace_line("a3", run_id="run_a", step=2, datapoint="dp3", score=0.5, phase="eval",
                   model_name="m-small", env_name="code", meta={"temp": 0.7}),
        trace_line("b0", run_id="run_b", step=0, datapoint="dp1", score=1.0, phase="eval"),
    ]  # fmt: skip
    load_traces(store, lines, tmp_path)
    return MantaService(store)


def ids(traces: list[Any]) -> list[str]:
    return [t.trace_id for t in traces]


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"run_id": "run_a"}, ["a0", "a1", "a2", "a3"]),
        ({"run_id": ["run_a", "run_b"], "phase": "eval"}, ["b0", "a3"]),
        ({"run_id": "run_a", "step": 0}, ["a0", "a1"]),
        ({"run_id": "run_a", "step": (1, 2)}, ["a2", "a3"]),
        ({"datapoint_id": "dp1"}, ["a0", "b0", "a2"]),
        ({"run_id": "run_a", "status": "error"}, ["a2"]),
        ({"run_id": "run_a", "model_name": "m-large"}, ["a1"]),
        ({"run_id": "run_a", "env_name": ["code"]}, ["a2", "a3"]),
        ({"run_id": "run_a", "min_score": 0.5}, ["a1", "a3"]),
        ({"run_id": "run_a", "min_score": 0.1, "max_score": 0.6}, ["a0", "a3"]),
        ({"meta": {"temp": 0.7}}, ["a0", "a3"]),
        ({"meta": {"tag": "x y"}}, ["a0"]),
        ({"meta": {"greedy": True}}, ["a1"]),
        ({"meta": {"temp": 0.7, "tag": "z"}}, []),
        ({"trace_ids": ["a3", "b0", "zz"]}, ["b0", "a3"]),
        ({"run_id": "run_a", "datapoint_id": "dp1' OR 1=1 --"}, []),
    ],
)
def test_trace_filters(svc: MantaService, filters: dict[str, Any], expected: list[str]) -> None:
    assert ids(svc.get_traces(**filters)) == expected
    assert svc.count_traces(**filters) == len(expected)


def test_ordering_limit_and_offset(svc: MantaService) -> None:
    by_score = svc.get_traces("run_a", order_by="score", descending=True)
    assert ids(by_score) == ["a1", "a3", "a0", "a2"]  # NULL score last
    assert ids(svc.get_traces("run_a", order_by="score", descending=True, limit=2)) == ["a1", "a3"]
    assert ids(svc.get_traces("run_a", order_by="score", descending=True, limit=2, offset=2)) == [
        "a0",
        "a2",
    ]


def test_trace_records_carry_the_seed_properties(svc: MantaService) -> None:
    (trace,) = svc.get_traces(trace_ids=["a1"])
    assert (trace.run_id, trace.step_number, trace.phase, trace.datapoint_id) == (
        "run_a",
        0,
        "train",
        "dp2",
    )
    assert trace.score == 0.9 and trace.status == "completed"
    assert trace.meta == {"temp": 1.0, "tag": "z", "greedy": True}


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda s: s.get_traces(phase="trian"),
            "phase 'trian' is not valid (expected one of: train, eval, prod)",
        ),
        (
            lambda s: s.get_spans("a0", kind="tools"),
            "kind 'tools' is not valid (expected one of: message, tool, grader, llm, system)",
        ),
        (lambda s: s.get_traces(order_by="phase"), "order_by 'phase' is not valid"),
        (lambda s: s.get_traces(stepp=1), "unknown trace filter(s) stepp"),
        (lambda s: s.get_traces(step=(3, 1)), "step range 3..1 is empty"),
        (lambda s: s.get_trace("nope"), "trace_id 'nope' not found"),
        (lambda s: s.get_traces(meta={"k": [1]}), "meta filter 'k'=[1] is not supported"),
        (
            lambda s: s.get_traces("run_a' OR 1=1 --"),
            'run_id "run_a\' OR 1=1 --" not found;',
        ),
    ],
)
def test_invalid_queries_say_what_is_valid(svc: MantaService, call: Any, message: str) -> None:
    with pytest.raises(QueryError) as excinfo:
        call(svc)
    assert message in str(excinfo.value)


def test_hierarchy_listings(svc: MantaService) -> None:
    runs = {r.run_id: r for r in svc.list_runs()}
    assert set(runs) == {"run_a", "run_b"}
    run_a = runs["run_a"]
    assert (run_a.trace_count, run_a.step_count, run_a.datapoint_count) == (4, 3, 3)
    assert run_a.phases == ["eval", "train"]
    assert run_a.error_count == 1
    assert run_a.mean_score == pytest.approx((0.2 + 0.9 + 0.5) / 3)

    steps = svc.list_steps("run_a")
    assert [(s.step_number, s.trace_count, s.datapoint_count) for s in steps] == [
        (0, 2, 2),
        (1, 1, 1),
        (2, 1, 1),
    ]
    datapoints = {d.datapoint_id: d for d in svc.list_datapoints("run_a")}
    assert datapoints["dp1"].steps == [0, 1]
    assert datapoints["dp1"].trace_count == 2
    assert [d.datapoint_id for d in svc.list_datapoints("run_a", step=0)] == ["dp1", "dp2"]


def test_span_filters(svc: MantaService) -> None:
    tools = svc.get_spans(["a0", "a1"], kind="tool")
    assert {tid: [s.tool_name for s in spans] for tid, spans in tools.items()} == {
        "a0": ["search"],
        "a1": ["search", "python"],
    }
    assert list(svc.get_spans(["a0", "a1"], is_error=True)) == ["a1"]
    assert [s.role for s in svc.get_spans("a0", role="user")["a0"]] == ["user"]
    assert [s.seq for s in svc.get_spans("a1", tool_name="python")["a1"]] == [3]
    assert [s.kind for s in svc.get_spans("a1", name="exact_match")["a1"]] == ["grader"]
    assert svc.get_spans("a1", kind=["grader", "message"])["a1"][0].attributes == {}


def test_spans_of_many_traces_take_one_query_per_batch(settings: Any, tmp_path: Path) -> None:
    with CountingStore.open(settings) as store:
        lines = [trace_line(f"t{i:03d}", tool_calls=3) for i in range(50)]
        load_traces(store, lines, tmp_path)
        svc = MantaService(store)
        CountingStore.queries = 0
        batches = list(svc.iter_trace_batches("run_a", batch_size=20, order_by="score"))
        # With an explicit order: the run check, one query for the trace rows, one span query
        # per batch.
        assert CountingStore.queries == 1 + 1 + 3
        assert [len(b) for b in batches] == [20, 20, 10]
        first = batches[0][0]
        assert first.tool_call_count == 3
        assert [m.role for m in first.messages()] == ["user", "assistant"]

        CountingStore.queries = 0
        spans = svc.get_spans([f"t{i:03d}" for i in range(50)])
        assert CountingStore.queries == 1
        assert sum(len(v) for v in spans.values()) == 50 * 6


def test_get_trace_returns_a_loaded_context(svc: MantaService) -> None:
    trace = svc.get_trace("a1")
    assert trace.tool_error_count == 1
    grade = trace.grader_result()
    assert grade is not None and grade.score == 0.9


def test_service_without_a_store_opens_and_closes_its_own(svc: MantaService, settings: Any) -> None:
    with MantaService(settings=settings) as own:
        assert own.count_traces() == 5
    assert own._store is None


def test_storage_order_iteration_merges_one_span_stream(settings: Any, tmp_path: Path) -> None:
    with CountingStore.open(settings) as store:
        lines = [trace_line(f"t{i:03d}", tool_calls=i % 3) for i in range(25)]
        lines.append(trace_line("t_nospans", score=None, tool_calls=0))
        load_traces(store, lines, tmp_path)
        svc = MantaService(store)
        CountingStore.queries = 0
        batches = list(svc.iter_trace_batches("run_a", batch_size=10))
        # Trace rows and spans arrive as two streams on their own connections: only the run
        # check runs on this one, no per-batch query at all.
        assert CountingStore.queries == 1
        contexts = [c for b in batches for c in b]
        assert [len(b) for b in batches] == [10, 10, 6]
        assert [c.trace_id for c in contexts] == sorted(c.trace_id for c in contexts)
        by_id = {c.trace_id: c for c in contexts}
        assert by_id["t004"].tool_call_count == 1 and by_id["t005"].tool_call_count == 2
        assert len(by_id["t_nospans"].spans()) == 2  # user + assistant, no tools, no grader
        # Every context got exactly its own spans.
        assert all(s.trace_id == c.trace_id for c in contexts for s in c.spans())
        # Other queries work while iterating (nested use of the same service).
        for batch in svc.iter_trace_batches("run_a", batch_size=10, limit=12):
            assert svc.count_traces("run_a") == 26
            assert len(batch) in (10, 2)
        only_tools = next(svc.iter_trace_batches("run_a", span_filter=SpanFilter(kind="tool")))
        assert {s.kind for c in only_tools for s in c.spans()} == {"tool"}
