"""Compaction to Parquet, month pruning under ``--last`` and the ``auto`` engine choice."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from manta_lib.runs_log import (
    BucketStats,
    compute_stats,
    iter_rows,
    list_shards,
    list_workflows,
)
from manta_lib.runs_log.compact import ARCHIVE_DIR, closed_months, compact
from manta_lib.runs_log.reader import Shard
from manta_lib.runs_log.schema import TOTAL_BUCKET, parse_timestamp
from manta_lib.runs_log.stats import (
    AUTO_DUCKDB_BYTES,
    AUTO_DUCKDB_BYTES_IMPORTED,
    choose_engine,
)
from tests.lib.runs_log.helpers import NOW, add, messy_log, ok

# Seeded stores or seconds per test: make test runs them, make check leaves them out.
pytestmark = pytest.mark.slow

ENGINES = ("python", "duckdb")
QUERIES: list[dict[str, object]] = [
    {},
    {"last": 7},
    {"last": 0, "status": ""},
    {"status": "failed", "last": 300},
    {"since": "60d", "last": 0},
]


def snapshot(log_dir: Path) -> dict[tuple[str, str, int], tuple[int, dict[str, BucketStats]]]:
    """Every query of QUERIES on every workflow and engine: run count and buckets."""
    out = {}
    for i, kwargs in enumerate(QUERIES):
        for workflow_id in ("wf-a", "wf-b", "wf-c"):
            for engine in ENGINES:
                result = compute_stats(log_dir, workflow_id, engine=engine, now=NOW, **kwargs)  # type: ignore[arg-type]
                out[(workflow_id, engine, i)] = (result.run_count, result.buckets)
    return out


def test_compaction_keeps_every_figure_and_archives_the_jsonl(log_dir: Path) -> None:
    messy_log(log_dir)
    before = snapshot(log_dir)
    bad_before = compute_stats(log_dir, "wf-a", last=0, engine="python", now=NOW).report
    workflows_before = list_workflows(log_dir, engine="python")
    jsonl = sorted(p.name for p in log_dir.glob("*.jsonl"))

    done = compact(log_dir, now=NOW)

    closed = [name.removesuffix(".jsonl") for name in jsonl if name < "2026-05"]
    assert [m.month for m in done] == closed
    assert sum(m.rows for m in done) > 0
    assert sorted(p.name for p in log_dir.glob("*.parquet")) == [f"{m}.parquet" for m in closed]
    assert sorted(p.name for p in log_dir.glob("*.jsonl")) == ["2026-05.jsonl"]
    assert sorted(p.name for p in (log_dir / ARCHIVE_DIR).glob("*.jsonl")) == [
        f"{m}.jsonl" for m in closed
    ]
    assert not list(log_dir.glob(".*.tmp"))
    assert snapshot(log_dir) == before
    for engine in ENGINES:
        after = compute_stats(log_dir, "wf-a", last=0, engine=engine, now=NOW).report
        # truncated lines of a compacted month are counted as corrupt, like DuckDB does
        assert after.corrupt + after.truncated == bad_before.corrupt + bad_before.truncated
        assert after.unknown_version == bad_before.unknown_version
        assert list_workflows(log_dir, engine=engine) == workflows_before
    assert compute_stats(log_dir, "wf-a", last=0, now=NOW).engine == "duckdb"  # auto


def test_compaction_is_idempotent_and_folds_in_late_rows(log_dir: Path) -> None:
    messy_log(log_dir, rows=300)
    compact(log_dir, now=NOW)
    assert compact(log_dir, now=NOW) == []
    counts = {
        engine: compute_stats(log_dir, "wf-a", last=0, engine=engine, now=NOW).run_count
        for engine in ENGINES
    }
    late = datetime(2026, 3, 31, 23, 59, 59, tzinfo=UTC)
    add(log_dir, "late-run", late, {"think": 12345.0}, workflow_id="wf-a")
    assert (log_dir / "2026-03.jsonl").exists() and (log_dir / "2026-03.parquet").exists()
    for engine in ENGINES:  # the late row is read once, beside the Parquet file
        result = compute_stats(log_dir, "wf-a", last=0, engine=engine, now=NOW)
        assert result.run_count == counts[engine] + 1
    with_late = snapshot(log_dir)
    assert [m.month for m in compact(log_dir, now=NOW)] == ["2026-03"]
    assert sorted(p.name for p in (log_dir / ARCHIVE_DIR).glob("2026-03*")) == [
        "2026-03.2.jsonl",
        "2026-03.jsonl",
    ]
    assert not (log_dir / "2026-03.jsonl").exists()
    assert snapshot(log_dir) == with_late


def test_an_interrupted_compaction_is_redone_from_the_archive(log_dir: Path) -> None:
    messy_log(log_dir, rows=300)
    before = snapshot(log_dir)
    compact(log_dir, now=NOW)
    (log_dir / "2026-03.parquet").unlink()  # as if it crashed between the two renames
    assert closed_months(log_dir, now=NOW) == ["2026-03"]
    assert [m.month for m in compact(log_dir, now=NOW)] == ["2026-03"]
    assert snapshot(log_dir) == before


def test_the_current_month_is_never_compacted(log_dir: Path) -> None:
    add(log_dir, "now", NOW - timedelta(hours=1), {"think": 1.0})
    assert compact(log_dir, now=NOW) == []
    assert [s.name for s in list_shards(log_dir)] == ["2026-05.jsonl"]


def test_cli_compact(log_dir: Path) -> None:
    messy_log(log_dir, rows=200)  # months before NOW (2026-05): all closed today
    expected = ok("stats", "wf-b", "--last", "0", "--engine", "python", "--json")
    output = ok("compact", "--log-dir", str(log_dir))
    assert "rows" in output and "MB Parquet" in output
    assert ok("compact", "--log-dir", str(log_dir)).startswith("Nothing to compact")
    for engine in ENGINES:
        assert ok("stats", "wf-b", "--last", "0", "--engine", engine, "--json") == expected


# --------------------------------------------------------------------------- pruning


def full_scan_reference(log_dir: Path, workflow_id: str, status: str, last: int) -> tuple:
    """The selection computed the naive way: every row of every shard, sorted, top N."""
    rows = []
    for row in iter_rows(log_dir):
        finished = parse_timestamp(row.get("finished_at"))
        if row.get("workflow_id") != workflow_id or finished is None:
            continue
        if status and row.get("status") != status:
            continue
        run_id = row.get("run_id") if isinstance(row.get("run_id"), str) else ""
        rows.append((finished, run_id, row))
    rows.sort(key=lambda item: item[:2], reverse=True)
    chosen = [item[2] for item in (rows[:last] if last else rows)]
    values: dict[str, list[float]] = {}
    for row in chosen:
        values.setdefault(TOTAL_BUCKET, []).append(float(row[TOTAL_BUCKET]))
        for name, seconds in row["wall_time_breakdown"].items():
            values.setdefault(name, []).append(float(seconds))
    return len(chosen), {name: BucketStats.of(vals) for name, vals in values.items()}


@pytest.mark.parametrize("compacted", [False, True])
@pytest.mark.parametrize(("status", "last"), [("succeeded", 1), ("", 40), ("failed", 250)])
def test_pruned_last_n_equals_a_full_scan(
    log_dir: Path, compacted: bool, status: str, last: int
) -> None:
    messy_log(log_dir, rows=900)
    if compacted:
        compact(log_dir, now=NOW)
        add(
            log_dir,
            "late",
            datetime(2026, 4, 30, 23, 0, tzinfo=UTC),
            {"think": 3.0},
            workflow_id="wf-c",
        )
    shards = len(list_shards(log_dir))
    for workflow_id in ("wf-a", "wf-c"):
        expected = full_scan_reference(log_dir, workflow_id, status, last)
        for engine in ENGINES:
            result = compute_stats(log_dir, workflow_id, last=last, status=status, engine=engine)
            assert (result.run_count, result.buckets) == expected
            if last < 50:
                assert result.report.shards_read < shards


# --------------------------------------------------------------------------- auto


def shard(size: int, name: str = "2026-05.jsonl") -> Shard:
    start = datetime(2026, 5, 1, tzinfo=UTC)
    return Shard(Path(name), start, start + timedelta(days=31), size)


def test_auto_picks_duckdb_by_total_size_and_for_parquet() -> None:
    # the tests import DuckDB, so the lower threshold applies
    assert AUTO_DUCKDB_BYTES_IMPORTED < AUTO_DUCKDB_BYTES
    assert choose_engine("auto", [shard(AUTO_DUCKDB_BYTES_IMPORTED - 1)]) == "python"
    small = AUTO_DUCKDB_BYTES_IMPORTED // 2
    assert choose_engine("auto", [shard(small), shard(small, "2026-04.jsonl")]) == "duckdb"
    assert choose_engine("auto", [shard(10, "2026-04.parquet")]) == "duckdb"
    assert choose_engine("python", [shard(1 << 40)]) == "python"
