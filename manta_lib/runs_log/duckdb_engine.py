"""The DuckDB engine: ``read_json`` with explicit columns and ``quantile_cont``.

It reads only the shards a query can need (``--since`` prunes months; with ``--last N`` it
reads shard by shard, newest first, and stops once N rows are held) and returns the same
selection and figures as the pure-Python engine (:mod:`manta_lib.runs_log.stats`).
DuckDB's ``quantile_cont`` is linear interpolation between closest ranks, numpy's default; it
can differ from numpy in the last bit, so both engines round to the microsecond.

Corrupt lines come back from ``read_json(..., ignore_errors=true)`` as all-NULL rows and are
counted; blank lines are skipped by DuckDB and not counted; truncated lines count as corrupt.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from manta_lib.runs_log.reader import ReadReport, Shard, list_shards
from manta_lib.runs_log.schema import SCHEMA_VERSION, TOTAL_BUCKET
from manta_lib.runs_log.stats import (
    DIGITS,
    BucketStats,
    RunFilter,
    Selection,
    WorkflowSummary,
    resolve_since,
)

_SOURCE = """
    SELECT *, try_cast(finished_at AS TIMESTAMPTZ) AS ts
    FROM read_json(
        $files,
        format = 'newline_delimited',
        columns = {
            schema_version: 'BIGINT',
            workflow_id: 'VARCHAR',
            run_id: 'VARCHAR',
            status: 'VARCHAR',
            finished_at: 'VARCHAR',
            total_time_s: 'DOUBLE',
            wall_time_breakdown: 'MAP(VARCHAR, DOUBLE)'
        },
        ignore_errors = true,
        filename = true,
        maximum_object_size = 16777216
    )
"""

# An all-NULL row is a line DuckDB could not parse.
_KIND = f"""
    CASE
        WHEN schema_version IS NULL AND workflow_id IS NULL AND run_id IS NULL
             AND status IS NULL AND finished_at IS NULL AND total_time_s IS NULL
             AND wall_time_breakdown IS NULL THEN 'corrupt'
        WHEN schema_version IS DISTINCT FROM {SCHEMA_VERSION} THEN 'unknown_version'
        WHEN workflow_id IS DISTINCT FROM $workflow_id THEN 'other'
        WHEN $status <> '' AND status IS DISTINCT FROM $status THEN 'other'
        WHEN ts IS NULL THEN 'invalid'
        WHEN ($since IS NOT NULL AND ts < $since::TIMESTAMPTZ)
             OR ($until IS NOT NULL AND ts >= $until::TIMESTAMPTZ) THEN 'other'
        ELSE 'ok'
    END
"""

_VALUES = f"""
    SELECT '{TOTAL_BUCKET}' AS bucket, total_time_s AS v FROM chosen
    UNION ALL
    SELECT bucket, v FROM (
        SELECT unnest(map_keys(wall_time_breakdown)) AS bucket,
               unnest(map_values(wall_time_breakdown)) AS v
        FROM chosen
    ) WHERE bucket <> '{TOTAL_BUCKET}'
"""


@contextmanager
def connect() -> Iterator[duckdb.DuckDBPyConnection]:
    """A private in-memory DuckDB connection, closed on exit."""
    conn = duckdb.connect(":memory:")
    try:
        yield conn
    finally:
        conn.close()


def _files(shards: Sequence[Shard]) -> list[str]:
    return [str(shard.path) for shard in shards]


def duckdb_select(
    conn: duckdb.DuckDBPyConnection, shards: Sequence[Shard], flt: RunFilter, last: int
) -> Selection:
    """DuckDB twin of :func:`manta_lib.runs_log.stats.python_select` (same rows, same figures)."""
    report = ReadReport()
    table = f"runs_log_sel_{uuid.uuid4().hex}"
    conn.execute(
        f"CREATE TEMP TABLE {table} (kind VARCHAR, ts TIMESTAMPTZ, run_id VARCHAR, "
        "total_time_s DOUBLE, wall_time_breakdown MAP(VARCHAR, DOUBLE), filename VARCHAR)"
    )
    try:
        # With a cap, one shard at a time newest first; without one, all shards in one scan.
        batches = [[shard] for shard in shards] if last else [list(shards)]
        for batch in batches:
            if not batch:
                continue
            report.shards_read += len(batch)
            conn.execute(
                f"""
                INSERT INTO {table}
                SELECT kind, ts, coalesce(run_id, ''), total_time_s, wall_time_breakdown,
                       filename
                FROM (SELECT *, {_KIND} AS kind FROM ({_SOURCE}))
                WHERE kind <> 'other'
                """,
                {
                    "files": _files(batch),
                    "workflow_id": flt.workflow_id,
                    "status": flt.status,
                    "since": flt.since,
                    "until": flt.until,
                },
            )
            if last:
                held = _scalar(conn, f"SELECT count(*) FROM {table} WHERE kind = 'ok'")
                if held >= last:
                    break
        for kind, n, first in conn.execute(
            f"SELECT kind, count(*), min(filename) FROM {table} WHERE kind <> 'ok' "
            "GROUP BY kind ORDER BY kind"
        ).fetchall():
            setattr(report, kind, getattr(report, kind) + n)
            report.first_bad = report.first_bad or first
        limit = "LIMIT $last" if last else ""
        params = {"last": last} if last else {}
        rows = conn.execute(
            f"""
            WITH chosen AS (
                SELECT * FROM {table} WHERE kind = 'ok'
                ORDER BY ts DESC, run_id DESC {limit}
            )
            SELECT bucket, count(v), quantile_cont(v, [0.5, 0.95, 0.99]),
                   (SELECT count(*) FROM chosen)
            FROM ({_VALUES})
            WHERE v IS NOT NULL AND isfinite(v)
            GROUP BY bucket
            """,
            params,
        ).fetchall()
        run_count = rows[0][3] if rows else _count_chosen(conn, table, last)
    finally:
        conn.execute(f"DROP TABLE IF EXISTS {table}")
    buckets = {bucket: _bucket_stats(n, qs) for bucket, n, qs, _ in rows}
    return Selection(run_count=run_count, buckets=buckets, report=report)


def _count_chosen(conn: duckdb.DuckDBPyConnection, table: str, last: int) -> int:
    held = _scalar(conn, f"SELECT count(*) FROM {table} WHERE kind = 'ok'")
    return min(held, last) if last else held


def _scalar(conn: duckdb.DuckDBPyConnection, sql: str) -> int:
    row = conn.execute(sql).fetchone()
    return int(row[0]) if row else 0


def _bucket_stats(n: int, quantiles: Sequence[float]) -> BucketStats:
    p50, p95, p99 = (round(float(q), DIGITS) for q in quantiles)
    return BucketStats(count=int(n), p50=p50, p95=p95, p99=p99)


def duckdb_workflows(
    conn: duckdb.DuckDBPyConnection, shards: Sequence[Shard]
) -> tuple[list[WorkflowSummary], ReadReport]:
    """Run counts and newest finished_at per workflow, on DuckDB."""
    report = ReadReport(shards_read=len(shards))
    if not shards:
        return [], report
    rows = conn.execute(
        f"""
        WITH src AS ({_SOURCE}),
        classified AS (
            SELECT *, CASE
                WHEN schema_version IS NULL AND workflow_id IS NULL AND run_id IS NULL
                     AND status IS NULL AND finished_at IS NULL AND total_time_s IS NULL
                     AND wall_time_breakdown IS NULL THEN 'corrupt'
                WHEN schema_version IS DISTINCT FROM {SCHEMA_VERSION} THEN 'unknown_version'
                WHEN workflow_id IS NULL OR ts IS NULL THEN 'invalid'
                ELSE 'ok' END AS kind
            FROM src
        )
        SELECT kind, workflow_id, count(*), count(*) FILTER (status = 'succeeded'),
               count(*) FILTER (status = 'failed'), max(ts), min(filename)
        FROM classified GROUP BY kind, workflow_id ORDER BY workflow_id
        """,
        {"files": _files(shards)},
    ).fetchall()
    summaries = []
    for kind, workflow_id, runs, ok, failed, newest, first in rows:
        if kind == "ok":
            summaries.append(WorkflowSummary(workflow_id, runs, ok, failed, newest.astimezone(UTC)))
        else:
            setattr(report, kind, getattr(report, kind) + runs)
            report.first_bad = report.first_bad or first
    return summaries, report


def workflow_bucket_percentiles(
    conn: duckdb.DuckDBPyConnection,
    log_dir: Path | str,
    *,
    status: str = "succeeded",
    last: int = 100,
    since: str | datetime | None = None,
) -> list[dict[str, Any]]:
    """p50/p95/p99 per (workflow, bucket) for every workflow of the log, on ``conn``.

    For each workflow, the newest ``last`` runs (0 = all) with ``status`` (``""`` = any) that
    finished at or after ``since`` (``"7d"``, ``"24h"``, ``"30m"`` or a datetime): the same
    selection and figures as ``mantis runs stats <workflow_id>``. Returns one dict per
    (workflow, bucket) with keys ``workflow_id, bucket, run_count, count, p50, p95, p99``,
    ordered by workflow, then p50 descending, ``total_time_s`` last.

    >>> import duckdb
    >>> rows = workflow_bucket_percentiles(duckdb.connect(), "runs_log")  # doctest: +SKIP
    """
    cutoff = resolve_since(since)
    shards = list_shards(log_dir, since=cutoff)
    if not shards:
        return []
    qualify = "QUALIFY row_number() OVER (PARTITION BY workflow_id ORDER BY ts DESC, " + (
        "run_id DESC) <= $last" if last else "run_id DESC) > 0"
    )
    params: dict[str, Any] = {"files": _files(shards), "status": status, "since": cutoff}
    if last:
        params["last"] = last
    rows = conn.execute(
        f"""
        WITH chosen AS (
            SELECT workflow_id, ts, coalesce(run_id, '') AS run_id, total_time_s,
                   wall_time_breakdown
            FROM ({_SOURCE})
            WHERE schema_version = {SCHEMA_VERSION} AND workflow_id IS NOT NULL
              AND ts IS NOT NULL AND ($status = '' OR status = $status)
              AND ($since IS NULL OR ts >= $since::TIMESTAMPTZ)
            {qualify}
        ),
        runs AS (SELECT workflow_id, count(*) AS run_count FROM chosen GROUP BY workflow_id),
        vals AS (
            SELECT workflow_id, '{TOTAL_BUCKET}' AS bucket, total_time_s AS v FROM chosen
            UNION ALL
            SELECT workflow_id, bucket, v FROM (
                SELECT workflow_id, unnest(map_keys(wall_time_breakdown)) AS bucket,
                       unnest(map_values(wall_time_breakdown)) AS v
                FROM chosen
            ) WHERE bucket <> '{TOTAL_BUCKET}'
        )
        SELECT vals.workflow_id, bucket, any_value(runs.run_count), count(v),
               quantile_cont(v, [0.5, 0.95, 0.99])
        FROM vals JOIN runs USING (workflow_id)
        WHERE v IS NOT NULL AND isfinite(v)
        GROUP BY vals.workflow_id, bucket
        """,
        params,
    ).fetchall()
    result = []
    for workflow_id, bucket, run_count, n, quantiles in rows:
        stats = _bucket_stats(n, quantiles)
        result.append(
            {
                "workflow_id": workflow_id,
                "bucket": bucket,
                "run_count": int(run_count),
                "count": stats.count,
                "p50": stats.p50,
                "p95": stats.p95,
                "p99": stats.p99,
            }
        )
    result.sort(
        key=lambda r: (r["workflow_id"], r["bucket"] == TOTAL_BUCKET, -r["p50"], r["bucket"])
    )
    return result
