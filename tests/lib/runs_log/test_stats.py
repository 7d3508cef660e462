"""Percentiles, row selection and the two engines (pure Python and DuckDB) agreeing."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from manta_lib.errors import QueryError
from manta_lib.runs_log import (
    BucketStats,
    compare_windows,
    compute_stats,
    list_workflows,
    percentile,
)
from manta_lib.runs_log.duckdb_engine import workflow_bucket_percentiles
from tests.lib.runs_log.helpers import NOW, SEED_TABLE, SEED_TOTAL, SEED_WORKFLOW, add, messy_log

# Seeded stores or seconds per test: make test runs them, make check leaves them out.
pytestmark = pytest.mark.slow

ENGINES = ("python", "duckdb")

finite = st.floats(min_value=-1e9, max_value=1e9, allow_nan=False, allow_infinity=False)
samples = st.lists(finite, min_size=1, max_size=60)
quantiles = st.sampled_from([0.0, 0.5, 0.95, 0.99, 1.0]) | st.floats(0.0, 1.0)


@settings(max_examples=100, deadline=None)  # a fixed count; no wall-time limit on a busy machine
@given(values=samples, q=quantiles)
def test_percentile_is_numpys_default_linear_method_bit_for_bit(
    values: list[float], q: float
) -> None:
    assert percentile(sorted(values), q) == float(np.quantile(values, q))


@pytest.fixture(scope="module")
def conn() -> Iterator[duckdb.DuckDBPyConnection]:
    connection = duckdb.connect()
    yield connection
    connection.close()


@settings(max_examples=60, deadline=None)
@given(values=samples)
def test_duckdb_quantile_cont_is_numpys_linear_method(
    conn: duckdb.DuckDBPyConnection, values: list[float]
) -> None:
    row = conn.execute(
        "SELECT quantile_cont(v, [0.5, 0.95, 0.99]) FROM unnest($v::DOUBLE[]) AS t(v)",
        {"v": values},
    ).fetchone()
    assert row is not None
    expected = np.quantile(values, [0.5, 0.95, 0.99])
    # Same method; DuckDB's arithmetic can differ in the last bit, hence rounding in the engines.
    assert row[0] == pytest.approx(list(expected), rel=1e-12, abs=1e-9)


def test_small_cases_from_the_seed() -> None:
    assert percentile([10.0, 20.0], 0.5) == 15.0
    assert percentile([1.0, 7.0, 3.0][:0] + [1.0, 3.0, 7.0], 0.5) == 3.0
    assert BucketStats.of([4.0]) == BucketStats(count=1, p50=4.0, p95=4.0, p99=4.0)


# --------------------------------------------------------------------------- selection


@pytest.mark.parametrize("engine", ENGINES)
def test_seed_example_figures(seed_log: Path, engine: str) -> None:
    result = compute_stats(seed_log, SEED_WORKFLOW, engine=engine)
    assert result.engine == engine
    assert result.run_count == 100
    assert list(result.buckets) == [*SEED_TABLE, "total_time_s"]
    for name, (p50, p95, p99) in [*SEED_TABLE.items(), ("total_time_s", SEED_TOTAL)]:
        assert result.buckets[name] == BucketStats(100, p50, p95, p99)


@pytest.mark.parametrize("engine", ENGINES)
def test_last_keeps_the_newest_runs_with_a_deterministic_tie_break(
    log_dir: Path, engine: str
) -> None:
    # Three runs finish at the same second: run_id descending breaks the tie.
    add(log_dir, "a", NOW, {"think": 1.0})
    add(log_dir, "c", NOW, {"think": 3.0})
    add(log_dir, "b", NOW, {"think": 2.0})
    add(log_dir, "z-older", NOW - timedelta(seconds=1), {"think": 100.0})
    add(log_dir, "prev-month", NOW - timedelta(days=40), {"think": 1000.0})
    result = compute_stats(log_dir, "wf", last=2, engine=engine, now=NOW)
    assert result.run_count == 2
    assert result.buckets["think"] == BucketStats(2, 2.5, 2.95, 2.99)  # c and b
    assert compute_stats(log_dir, "wf", last=4, engine=engine).buckets["think"].p99 == 97.09
    everything = compute_stats(log_dir, "wf", last=0, engine=engine)
    assert everything.run_count == 5 and everything.buckets["think"].p50 == 3.0


@pytest.mark.parametrize("engine", ENGINES)
def test_since_keeps_runs_finished_at_or_after_now_minus_duration(
    log_dir: Path, engine: str
) -> None:
    add(log_dir, "at-cutoff", NOW - timedelta(days=7), {"think": 1.0})
    add(log_dir, "just-before", NOW - timedelta(days=7, microseconds=1), {"think": 50.0})
    add(log_dir, "inside", NOW - timedelta(hours=1), {"think": 3.0})
    week = compute_stats(log_dir, "wf", since="7d", engine=engine, now=NOW)
    assert week.run_count == 2 and week.buckets["think"].p50 == 2.0
    assert compute_stats(log_dir, "wf", since="2h", engine=engine, now=NOW).run_count == 1
    assert compute_stats(log_dir, "wf", since="90m", engine=engine, now=NOW).run_count == 1
    with pytest.raises(QueryError, match="the window is empty"):
        compute_stats(log_dir, "wf", since="30m", engine=engine, now=NOW)


@pytest.mark.parametrize("engine", ENGINES)
def test_status_filter_and_every_terminal_status(log_dir: Path, engine: str) -> None:
    add(log_dir, "ok", NOW, {"think": 1.0})
    add(log_dir, "ko", NOW, {"think": 9.0}, status="failed")
    assert compute_stats(log_dir, "wf", engine=engine).buckets["think"].p50 == 1.0
    failed = compute_stats(log_dir, "wf", status="failed", engine=engine)
    assert failed.buckets["think"].p50 == 9.0
    both = compute_stats(log_dir, "wf", status="", engine=engine)
    assert both.run_count == 2 and both.buckets["think"].p50 == 5.0


@pytest.mark.parametrize("engine", ENGINES)
def test_a_bucket_missing_from_some_rows_is_computed_over_the_rows_that_have_it(
    log_dir: Path, engine: str
) -> None:
    add(log_dir, "r1", NOW, {"think": 1.0, "claude_verify": 10.0})
    add(log_dir, "r2", NOW - timedelta(minutes=1), {"think": 2.0})
    add(log_dir, "r3", NOW - timedelta(minutes=2), {"think": 3.0, "claude_verify": 20.0})
    result = compute_stats(log_dir, "wf", engine=engine)
    assert result.run_count == 3
    assert result.buckets["claude_verify"] == BucketStats(2, 15.0, 19.5, 19.9)
    assert result.buckets["think"].count == 3
    assert result.to_json()["percentiles"]["claude_verify"]["count"] == 2


@pytest.mark.parametrize("engine", ENGINES)
def test_bucket_restriction_keeps_total_time(log_dir: Path, engine: str) -> None:
    add(log_dir, "r1", NOW, {"think": 1.0, "act": 2.0, "load": 3.0})
    result = compute_stats(log_dir, "wf", buckets=["act", "think"], engine=engine)
    assert list(result.buckets) == ["act", "think", "total_time_s"]
    with pytest.raises(QueryError, match=r"bucket\(s\) nap not found .*available buckets: act, "):
        compute_stats(log_dir, "wf", buckets=["nap"], engine=engine)


# --------------------------------------------------------------------------- engines agree


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"last": 10},
        {"last": 0},
        {"status": ""},
        {"status": "failed", "last": 37},
        {"since": "30d"},
        {"since": "45d", "last": 0, "status": ""},
        {"buckets": ["claude_verify"]},
    ],
)
def test_python_and_duckdb_engines_agree(log_dir: Path, kwargs: dict[str, object]) -> None:
    messy_log(log_dir)
    for workflow_id in ("wf-a", "wf-b", "wf-c"):
        python = compute_stats(log_dir, workflow_id, engine="python", now=NOW, **kwargs)  # type: ignore[arg-type]
        duck = compute_stats(log_dir, workflow_id, engine="duckdb", now=NOW, **kwargs)  # type: ignore[arg-type]
        assert python.run_count == duck.run_count
        assert python.buckets == duck.buckets
        assert list(python.buckets) == list(duck.buckets)
        assert python.report.shards_read == duck.report.shards_read
        assert python.report.corrupt + python.report.truncated == duck.report.corrupt
        assert python.report.unknown_version == duck.report.unknown_version


def test_last_reads_only_the_shards_it_needs(log_dir: Path) -> None:
    messy_log(log_dir)
    assert len(list(log_dir.iterdir())) >= 4
    for engine in ENGINES:
        newest = compute_stats(log_dir, "wf-a", last=5, engine=engine, now=NOW)
        assert newest.report.shards_read == 1
        window = compute_stats(log_dir, "wf-a", last=0, since="10d", engine=engine, now=NOW)
        assert window.report.shards_read == (1 if NOW.day > 10 else 2)


def test_list_workflows_agrees_between_engines(log_dir: Path) -> None:
    messy_log(log_dir)
    python = list_workflows(log_dir, engine="python")
    assert [w.workflow_id for w in python] == ["wf-a", "wf-b", "wf-c"]
    assert sum(w.runs for w in python) == 1500
    assert all(w.runs == w.succeeded + w.failed for w in python)
    assert python == list_workflows(log_dir, engine="duckdb")


@pytest.mark.parametrize(("status", "last"), [("succeeded", 100), ("", 0), ("failed", 7)])
def test_workflow_bucket_percentiles_matches_runs_stats_for_every_workflow(
    log_dir: Path, conn: duckdb.DuckDBPyConnection, status: str, last: int
) -> None:
    messy_log(log_dir)
    rows = workflow_bucket_percentiles(conn, log_dir, status=status, last=last)
    assert {r["workflow_id"] for r in rows} == {"wf-a", "wf-b", "wf-c"}
    for workflow_id in ("wf-a", "wf-b", "wf-c"):
        expected = compute_stats(log_dir, workflow_id, status=status, last=last, engine="python")
        mine = [r for r in rows if r["workflow_id"] == workflow_id]
        assert [r["bucket"] for r in mine] == list(expected.buckets)
        for r in mine:
            stats = expected.buckets[r["bucket"]]
            assert r["run_count"] == expected.run_count
            assert (r["count"], r["p50"], r["p95"], r["p99"]) == (
                stats.count,
                stats.p50,
                stats.p95,
                stats.p99,
            )


def test_workflow_bucket_percentiles_since(log_dir: Path, conn: duckdb.DuckDBPyConnection) -> None:
    add(log_dir, "new", datetime.now(UTC) - timedelta(hours=1), {"think": 1.0})
    add(log_dir, "old", datetime.now(UTC) - timedelta(days=3), {"think": 5.0})
    rows = workflow_bucket_percentiles(conn, log_dir, since="1d")
    assert [(r["bucket"], r["run_count"], r["p50"]) for r in rows] == [
        ("think", 1, 1.0),
        ("total_time_s", 1, 1.0),
    ]


# --------------------------------------------------------------------------- compare


def compare_log(log_dir: Path) -> None:
    for i in range(20):  # baseline: days 8-30 before NOW
        add(log_dir, f"b{i}", NOW - timedelta(days=8 + i), {"think": 10.0, "act": 5.0 + i % 2})
    for i in range(10):  # recent: think got 50% slower, act the same
        add(log_dir, f"r{i}", NOW - timedelta(hours=5 + i), {"think": 15.0, "act": 5.0 + i % 2})


@pytest.mark.parametrize("engine", ENGINES)
def test_compare_flags_the_bucket_that_regressed(log_dir: Path, engine: str) -> None:
    compare_log(log_dir)
    result = compare_windows(log_dir, "wf", engine=engine, now=NOW)
    assert (result.recent_runs, result.baseline_runs) == (10, 20)
    assert [c.bucket for c in result.changes] == ["think", "act", "total_time_s"]
    think = result.changes[0]
    assert (think.baseline and think.baseline.p50, think.recent and think.recent.p50) == (10, 15)
    assert think.p50_change_pct == 50.0 and think.regressed
    assert [c.bucket for c in result.regressions] == ["think", "total_time_s"]
    assert (
        compare_windows(log_dir, "wf", threshold_pct=60, engine=engine, now=NOW).regressions == []
    )


def test_compare_with_an_empty_window_says_so(log_dir: Path) -> None:
    compare_log(log_dir)
    with pytest.raises(QueryError, match="no succeeded runs of wf finished since .* before "):
        compare_windows(log_dir, "wf", recent="7d", baseline="1h", now=NOW)


# --------------------------------------------------------------------------- errors


def test_unknown_workflow_lists_the_closest_ids(log_dir: Path) -> None:
    add(log_dir, "r1", NOW, {"think": 1.0}, workflow_id="default__marketplace-listings-v1")
    add(log_dir, "r2", NOW, {"think": 1.0}, workflow_id="default__checkout-v3")
    with pytest.raises(
        QueryError,
        match=r"no runs of workflow 'default__marketplace-listing-v1' in the runs log at .*; "
        r"closest workflow ids: default__marketplace-listings-v1",
    ):
        compute_stats(log_dir, "default__marketplace-listing-v1")


def test_empty_log_and_bad_arguments(log_dir: Path) -> None:
    with pytest.raises(QueryError, match="holds no runs yet"):
        compute_stats(log_dir, "wf")
    with pytest.raises(QueryError, match="unknown engine 'spark'; use one of auto, python, duckdb"):
        compute_stats(log_dir, "wf", engine="spark")
    with pytest.raises(QueryError, match="--last -1 must be 0"):
        compute_stats(log_dir, "wf", last=-1)
    with pytest.raises(QueryError, match=r"--since '1w' is not a duration: .* e.g. 7d, 24h or 30m"):
        compute_stats(log_dir, "wf", since="1w")
