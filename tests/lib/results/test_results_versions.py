"""Versions: the latest by default, others on request, and one version's values never mix
with another's (a column an older version wrote is not shown with the newer one)."""

from __future__ import annotations

import pytest

from manta_lib.demo import seed_demo
from manta_lib.errors import QueryError
from manta_lib.service import MantaService
from manta_lib.store import Store
from tests.lib.results import defs
from tests.lib.results.conftest import EVAL_RUN, TRAIN_RUN


@pytest.fixture
def evolved(store: Store) -> MantaService:
    seed_demo(store, traces=300, seed=5)
    defs.evolving_v1.run(EVAL_RUN, mode="local", progress=False)
    defs.evolving_v1.run(TRAIN_RUN, mode="local", progress=False)
    defs.evolving_v2.run(TRAIN_RUN, mode="local", progress=False)  # replaces v1 on TRAIN_RUN
    return MantaService(store)


def test_latest_version_per_run_and_no_stale_columns(evolved: MantaService) -> None:
    v1, v2 = defs.evolving_v1.judge_version, defs.evolving_v2.judge_version
    assert v1 != v2
    train = evolved.results("evolving", TRAIN_RUN)
    # v1's `dropped_later` rows are still in entity_metadata, but not v2's: not shown.
    assert "dropped_later" not in train.columns and train.added_later.all()
    assert set(train.judge_version) == {v2}
    errors = {
        t.trace_id: t.tool_error_count for b in evolved.iter_trace_batches(TRAIN_RUN) for t in b
    }
    assert dict(zip(train.trace_id, train.errors, strict=True)) == {
        t: 10 * e for t, e in errors.items()
    }
    both = evolved.results("evolving", [EVAL_RUN, TRAIN_RUN])
    by_run = both.groupby("run_id").judge_version.unique().to_dict()
    assert list(by_run[EVAL_RUN]) == [v1] and list(by_run[TRAIN_RUN]) == [v2]
    eval_rows = both[both.run_id == EVAL_RUN]
    assert eval_rows.added_later.isna().all() and (eval_rows.dropped_later == "v1").all()
    assert both[both.run_id == TRAIN_RUN].dropped_later.isna().all()


def test_version_selection_and_filters_use_the_latest(evolved: MantaService) -> None:
    v1, v2 = defs.evolving_v1.judge_version, defs.evolving_v2.judge_version
    only_v1 = evolved.results("evolving", [EVAL_RUN, TRAIN_RUN], version=v1)
    assert set(only_v1.run_id) == {EVAL_RUN} and "added_later" not in only_v1.columns
    every = evolved.results("evolving", [EVAL_RUN, TRAIN_RUN], version="all")
    assert set(every.judge_version) == {v1, v2}
    with pytest.raises(QueryError, match="did you mean"):
        evolved.results("evolving", TRAIN_RUN, version=v2[:-1] + "x")
    # The stale v1 value "v1" of dropped_later does not match on TRAIN_RUN.
    with pytest.raises(QueryError, match="column 'dropped_later' of judge 'evolving' is unknown"):
        evolved.count_traces(TRAIN_RUN, results="evolving.dropped_later == 'v1'")
    assert evolved.count_traces(TRAIN_RUN, results="evolving.errors >= 10") == evolved.count_traces(
        TRAIN_RUN, results="evolving.errors >= 1"
    )  # v2 multiplied by ten: no value in 1..9 exists in the latest version
    assert evolved.count_traces(EVAL_RUN, results="evolving.dropped_later == 'v1'") == len(
        evolved.results("evolving", EVAL_RUN)
    )
    judges = {(v.version, v.level): v for j in evolved.judges() for v in j.versions}
    assert judges[(v2, "trace")].runs == 1 and judges[(v1, "trace")].runs == 1
