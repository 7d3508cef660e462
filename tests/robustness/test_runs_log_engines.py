"""The DuckDB runs-log engine under many distinct bucket names and odd bytes (issue 26, point
6): its connections carry a memory limit, its bucket statistics no longer pivot one column per
bucket name (memory grew with the number of names up to the OOM killer), both engines give the
same figures on a log with many buckets, and a byte-order mark inside a file is treated alike."""

from __future__ import annotations

import json
import random
from datetime import timedelta
from pathlib import Path

import pytest

from manta_lib.runs_log import duckdb_engine
from manta_lib.runs_log.duckdb_engine import workflow_bucket_percentiles
from manta_lib.runs_log.stats import compute_stats
from tests.lib.runs_log.helpers import NOW, add

BUCKETS = 600


@pytest.fixture
def log_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "runs_log"
    path.mkdir()
    monkeypatch.setenv("MANTA_RUNS_LOG_DIR", str(path))
    return path


def many_buckets_log(log_dir: Path, rows: int = 400, seed: int = 3) -> None:
    """Rows of two workflows, each with 8 of ``BUCKETS`` bucket names (some differing only in
    case, some holding quotes, dots and slashes)."""
    rng = random.Random(seed)
    names = [f"step_{i}" for i in range(BUCKETS - 4)] + ["Step_1", "a'b", 'q"x.y/z', "ü~1"]
    for index in range(rows):
        breakdown: dict[str, float] = {
            name: round(rng.expovariate(1 / 10), 3) for name in rng.sample(names, 8)
        }
        add(
            log_dir,
            f"run-{index:05d}",
            NOW - timedelta(minutes=index),
            breakdown,
            workflow_id=rng.choice(["wf-a", "wf-b"]),
        )


def test_connections_carry_a_memory_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MANTA_RUNS_LOG_DUCKDB_MEMORY", "256MB")
    with duckdb_engine.connect() as conn:
        row = conn.execute("SELECT current_setting('memory_limit')").fetchone()
    assert row is not None and row[0] in ("256.0 MiB", "244.1 MiB", "256MB", "244.1MB")


def test_both_engines_agree_on_a_log_with_many_buckets(
    log_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MANTA_RUNS_LOG_DUCKDB_MEMORY", "256MB")
    many_buckets_log(log_dir)
    for workflow_id in ("wf-a", "wf-b"):
        for last in (0, 50):
            python = compute_stats(log_dir, workflow_id, engine="python", now=NOW, last=last)
            duck = compute_stats(log_dir, workflow_id, engine="duckdb", now=NOW, last=last)
            assert python.run_count == duck.run_count
            assert python.buckets == duck.buckets
            assert len(python.buckets) > 100
    with duckdb_engine.connect() as conn:
        rows = workflow_bucket_percentiles(conn, log_dir, last=0)
    for workflow_id in ("wf-a", "wf-b"):
        python = compute_stats(log_dir, workflow_id, engine="python", now=NOW, last=0)
        mine = {r["bucket"]: (r["count"], r["p50"], r["p95"], r["p99"]) for r in rows
                if r["workflow_id"] == workflow_id}  # fmt: skip
        assert mine == {b: (s.count, s.p50, s.p95, s.p99) for b, s in python.buckets.items()}


def test_a_byte_order_mark_inside_a_file_is_corrupt_in_both_engines(log_dir: Path) -> None:
    for index in range(6):
        add(log_dir, f"run-{index}", NOW - timedelta(minutes=index), {"think": index + 1.0})
    (shard,) = log_dir.iterdir()
    lines = shard.read_bytes().splitlines(keepends=True)
    lines[0] = b"\xef\xbb\xbf" + lines[0]  # at the start of the file: skipped by both
    lines[3] = b"\xef\xbb\xbf" + lines[3]  # inside the file (files joined by cat): corrupt
    shard.write_bytes(b"".join(lines))
    assert json.loads(lines[3][3:])["run_id"]

    python = compute_stats(log_dir, "wf", engine="python", now=NOW, last=0)
    duck = compute_stats(log_dir, "wf", engine="duckdb", now=NOW, last=0)

    assert python.run_count == duck.run_count == 5
    assert python.buckets == duck.buckets
    assert python.report.corrupt == duck.report.corrupt == 1
