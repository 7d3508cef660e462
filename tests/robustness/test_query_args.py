"""Every public query method checks every argument: a bad one is one QueryError naming it,
never a driver traceback and never a silently wrong result."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from manta import MantaService, QueryError
from manta_lib.store import Store
from tests.lib.builders import load_traces, trace_line

BIG = 2**53


@pytest.fixture(scope="module")
def svc(chdb_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MantaService]:
    """One small store for the whole module (the checks never write)."""
    import uuid

    from manta_lib.settings import load_settings

    settings = load_settings(
        clickhouse_url=f"chdb://{chdb_path}", database=f"q_{uuid.uuid4().hex[:12]}"
    )
    tmp = tmp_path_factory.mktemp("query_args")
    with Store.open(settings) as store:
        lines = [
            trace_line("a0", step=0, score=0.2, meta={"temperature": 0.6, "seed": BIG + 1}),
            trace_line("a1", step=1, score=0.9, meta={"temperature": "0.6", "seed": BIG}),
            trace_line("a2", step=2, score=0.5, meta={"temperature": None, "flag": True}),
            trace_line("b0", run_id="run_b", step=0, meta={"flag": 1}),
        ]
        load_traces(store, lines, tmp)
        yield MantaService(store)
        store.command("DROP DATABASE IF EXISTS {db} SYNC")


BAD_CALLS: list[tuple[str, Callable[[MantaService], Any], str]] = [
    ("step=2**64", lambda s: s.get_traces("run_a", step=2**64), "=18446744073709551616 is out"),
    ("step range to 2**63", lambda s: s.count_traces("run_a", step=(0, 2**63)), "out of range"),
    ("step=(1,)", lambda s: s.get_traces("run_a", step=(1,)), "step range must be (first, last)"),
    ("step='abc'", lambda s: s.get_traces("run_a", step="abc"), "step must be a whole number"),
    ("step=1.5", lambda s: s.count_traces("run_a", step=1.5), "step must be a whole number"),
    ("step=True", lambda s: s.count_traces("run_a", step=True), "step must be a whole number"),
    ("run_id=5", lambda s: s.get_traces(5), "run_id must be a string or a list of strings"),
    ("run_id=[5]", lambda s: s.count_traces([5]), "got an element 5 of type int"),
    ("phase=5", lambda s: s.get_traces("run_a", phase=5), "phase must be a string"),
    ("min_score='abc'", lambda s: s.get_traces(min_score="abc"), "min_score must be a number"),
    ("min_score=nan", lambda s: s.get_traces(min_score=float("nan")), "min_score must be a finite"),
    ("max_score=inf", lambda s: s.count_traces(max_score=float("inf")), "must be a finite"),
    ("min above max", lambda s: s.count_traces(min_score=0.9, max_score=0.1), "no score can match"),
    ("meta='str'", lambda s: s.get_traces(meta="str"), "meta must be a dict"),
    ("meta nan", lambda s: s.count_traces(meta={"k": float("nan")}), "never NaN or infinite"),
    ("meta 2**64", lambda s: s.count_traces(meta={"k": 2**64}), "64-bit integers"),
    ("meta key 5", lambda s: s.count_traces(meta={5: 1}), "meta filter keys must be strings"),
    ("trace_ids=[1, 2]", lambda s: s.get_traces(trace_ids=[1, 2]), "trace_ids must be a string"),
    ("limit='5'", lambda s: s.get_traces("run_a", limit="5"), "limit must be a whole number"),
    ("limit=-1", lambda s: s.get_traces("run_a", limit=-1), "limit must be at least 0"),
    ("offset=1.0", lambda s: s.get_traces("run_a", offset=1.0), "offset must be a whole number"),
    ("descending=1", lambda s: s.get_traces(descending="yes"), "descending must be True"),
    ("order_by=[]", lambda s: s.get_traces("run_a", order_by=[]), "order_by needs at least one"),
    ("get_spans(None)", lambda s: s.get_spans(None), "trace_ids must be a string or a list"),
    ("get_spans([1])", lambda s: s.get_spans([1]), "trace_ids must be a string or a list"),
    ("is_error='no'", lambda s: s.get_spans("a0", is_error="no"), "is_error must be True or False"),
    ("kind=5", lambda s: s.get_spans("a0", kind=5), "kind must be a string"),
    ("get_trace(5)", lambda s: s.get_trace(5), "trace_id must be a string"),
    ("shard_count=0", lambda s: s.count_traces(shards=[0], shard_count=0), "shard_count=0 is out"),
    ("shard 64 of 64", lambda s: s.count_traces("run_a", shards=[64]), "shard=64 is out of range"),
    ("batch_size=0", lambda s: s.iter_trace_batches("run_a", batch_size=0), "batch_size=0 is out"),
    ("batch_size='9'", lambda s: s.iter_trace_batches(batch_size="9"), "batch_size must be a"),
    ("list_steps(5)", lambda s: s.list_steps(5), "run_id must be a string"),
    ("list_datapoints step", lambda s: s.list_datapoints("run_a", step="x"), "step must be"),
    ("project_id=5", lambda s: s.list_runs(project_id=5), "project_id must be a string"),
    ("unknown filter", lambda s: s.count_traces(stepp=1), "unknown trace filter(s) stepp"),
]  # fmt: skip


@pytest.mark.parametrize(("label", "call", "message"), BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
def test_a_bad_argument_is_one_query_error(
    svc: MantaService, label: str, call: Callable[[MantaService], Any], message: str
) -> None:
    with pytest.raises(QueryError) as excinfo:
        call(svc)
    assert message in str(excinfo.value), label


UNKNOWN_RUN_CALLS: list[Callable[[MantaService], Any]] = [
    lambda s: s.get_traces("run_aa"),
    lambda s: s.count_traces("run_aa"),
    lambda s: s.count_traces(["run_a", "run_aa"]),
    lambda s: s.list_steps("run_aa"),
    lambda s: s.list_datapoints("run_aa"),
    lambda s: next(s.iter_trace_batches("run_aa")),
    lambda s: next(s.iter_trace_batches("run_aa", order_by="score")),
    lambda s: s.require_run("run_aa"),
]


@pytest.mark.parametrize("call", UNKNOWN_RUN_CALLS)
def test_an_unknown_run_fails_the_same_way_in_every_method(svc: MantaService, call: Any) -> None:
    with pytest.raises(QueryError) as excinfo:
        call(svc)
    assert "run_id 'run_aa' not found;" in str(excinfo.value)
    assert "existing runs (closest first): run_a, run_b" in str(excinfo.value)


def test_values_that_used_to_give_wrong_results(svc: MantaService) -> None:
    # a limit beyond the 64-bit range means "no limit", not "nothing"
    assert len(svc.get_traces("run_a", limit=2**64)) == 3
    assert svc.get_traces("run_a", offset=2**64) == []
    # one trace id given as a string is that id, not its characters
    assert [t.trace_id for t in svc.get_traces(trace_ids="a1")] == ["a1"]
    assert svc.count_traces(trace_ids="a1") == 1
    # None matches a key that is present with a null value, not every trace
    assert [t.trace_id for t in svc.get_traces(meta={"temperature": None})] == ["a2"]
    assert svc.count_traces(meta={"missing_key": None}) == 0
    # whole numbers above 2**53 compare exactly
    assert [t.trace_id for t in svc.get_traces(meta={"seed": BIG + 1})] == ["a0"]
    assert [t.trace_id for t in svc.get_traces(meta={"seed": BIG})] == ["a1"]
    assert [t.trace_id for t in svc.get_traces(meta={"seed": float(BIG)})] == ["a1"]


def test_meta_values_compare_by_the_documented_rule(svc: MantaService) -> None:
    def ids(value: Any, key: str = "temperature") -> list[str]:
        return sorted(t.trace_id for t in svc.get_traces(meta={key: value}))

    assert ids(0.6) == ["a0"]  # a number matches stored numbers only
    assert ids("0.6") == ["a0", "a1"]  # a string spelling a number also matches the number
    assert ids("0.60") == ["a0"]  # the same number, another spelling: not the string "0.6"
    assert ids(True, "flag") == ["a2"]  # a bool never matches 1
    assert ids(1, "flag") == ["b0"]
    assert ids(1.0, "flag") == ["b0"]


JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.binary(max_size=4),
    st.lists(st.one_of(st.integers(), st.text(max_size=4), st.none()), max_size=3),
    st.tuples(st.integers(min_value=-(2**66), max_value=2**66), st.text(max_size=2)),
    st.dictionaries(st.text(max_size=4), st.one_of(st.none(), st.floats(), st.text(max_size=4))),
)
FILTERS = [
    "run_id", "phase", "step", "datapoint_id", "trace_ids", "status", "model_name", "env_name",
    "min_score", "max_score", "meta", "project_id", "shards", "shard_count",
]  # fmt: skip


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(name=st.sampled_from(FILTERS), value=JUNK)
def test_any_value_of_any_filter_answers_or_raises_query_error(
    svc: MantaService, name: str, value: Any
) -> None:
    try:
        count = svc.count_traces(**{name: value})
    except QueryError:
        return
    assert isinstance(count, int) and count >= 0


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(limit=JUNK, offset=JUNK, order_by=JUNK, descending=JUNK, kind=JUNK, is_error=JUNK, ids=JUNK)
def test_paging_ordering_and_span_arguments_never_raise_anything_else(
    svc: MantaService, limit: Any, offset: Any, order_by: Any, descending: Any, kind: Any,
    is_error: Any, ids: Any,
) -> None:  # fmt: skip
    for call in (
        lambda: svc.get_traces("run_a", limit=limit, offset=offset),
        lambda: svc.get_traces("run_a", order_by=order_by, descending=descending),
        lambda: svc.get_spans(ids, kind=kind, is_error=is_error),
    ):
        with contextlib.suppress(QueryError):
            call()
