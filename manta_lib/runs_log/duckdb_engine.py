"""The DuckDB engine: one column-pruned scan per batch of shards, ranking and percentiles in SQL.

It reads only the shards a query can need (``--since`` prunes months; with ``--last N`` it
reads shard by shard, newest first, and stops once N rows are held) and returns the same
selection and figures as the pure-Python engine (:mod:`manta_lib.runs_log.stats`).

How a query runs (see ``docs/runs_log.md``, "Engines"):

1. **Scan**: ``read_json`` with an explicit ``columns`` schema of the seven columns a query
   needs, ``wall_time_breakdown`` kept as ``JSON`` text (building a ``MAP`` per row costs
   more than parsing the whole line). Compacted months are read with ``read_parquet``. The scan
   classifies every line (corrupt, unknown version, matching, other) and keeps only the
   matching rows and the bad ones in a temporary table, typically a tenth of the log.
2. **Select**: the newest ``last`` rows by ``(finished_at, run_id)`` descending.
3. **Buckets**: the breakdowns of the selected rows unpivoted into one ``(bucket, value)`` row
   per key (``json_each``), grouped by bucket: ``count``/``quantile_cont`` per bucket (finite
   values only) in one pass, in memory that follows the number of values, not the number of
   distinct bucket names. Every connection the engine opens has a ``memory_limit``
   (``MANTA_RUNS_LOG_DUCKDB_MEMORY``, default 1GB).

DuckDB's ``quantile_cont`` is linear interpolation between closest ranks, numpy's default; it
can differ from numpy in the last bit, so both engines round to the microsecond.

Corrupt lines come back from ``read_json(..., ignore_errors=true)`` as all-NULL rows and are
counted; blank lines are skipped by DuckDB and not counted; truncated lines count as corrupt.
A breakdown value is used when it is a finite JSON number (or boolean), as in the Python
engine; the writer never writes anything else. A byte-order mark at the start of a file is
skipped, at the start of any later line the line is corrupt (both engines).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from manta_lib.runs_log.reader import (
    ReadReport,
    Shard,
    list_shards,
    month_groups,
    parquet_problem,
    unreadable_shard,
)
from manta_lib.runs_log.schema import SCHEMA_VERSION, TOTAL_BUCKET
from manta_lib.runs_log.selection import (
    DIGITS,
    BucketStats,
    RunFilter,
    Selection,
    WorkflowSummary,
    resolve_since,
)

JSON_COLUMNS = (
    "{schema_version: 'JSON', workflow_id: 'JSON', run_id: 'VARCHAR', status: 'VARCHAR', "
    "finished_at: 'VARCHAR', total_time_s: 'JSON', wall_time_breakdown: 'JSON', subset: 'JSON'}"
)
"""The ``read_json`` schema of every query: only the columns the engines use. The columns whose
JSON type matters are read as JSON and typed by :data:`TYPED_COLUMNS`, so that DuckDB's casts
do not accept what the Python engine rejects (``"schema_version": "1"``, a numeric string as
``total_time_s``)."""

TYPED_COLUMNS = f"""
    CASE WHEN schema_version IS NULL THEN NULL
         WHEN schema_version::VARCHAR = '{SCHEMA_VERSION}' THEN {SCHEMA_VERSION}
         ELSE -1 END AS schema_version,
    CASE WHEN json_type(workflow_id) = 'VARCHAR' THEN workflow_id ->> '$' END AS workflow_id,
    run_id, status, finished_at,
    CASE WHEN json_type(total_time_s) IN ('BIGINT', 'UBIGINT', 'DOUBLE')
         THEN total_time_s::DOUBLE END AS total_time_s,
    wall_time_breakdown::VARCHAR AS wall_time_breakdown,
    coalesce(subset::VARCHAR = 'true', false) AS subset
"""
"""The engine's columns from a ``read_json`` over :data:`JSON_COLUMNS`: ``schema_version`` is
1 only for the JSON integer 1 (-1 for any other value), ``workflow_id`` only a JSON string,
``total_time_s`` only a JSON number (the Python engine's rules); ``subset`` is true only for
a JSON ``true``."""

DEFAULT_MAX_OBJECT = 16 << 20
"""``maximum_object_size`` of a scan; a longer line makes the scan retry with the file size."""

_READ_JSON = f"""
    SELECT {TYPED_COLUMNS}, filename
    FROM read_json(
        $NAME,
        format = 'newline_delimited',
        columns = {JSON_COLUMNS},
        ignore_errors = true,
        filename = true,
        maximum_object_size = {DEFAULT_MAX_OBJECT}
    )
"""

_READ_PARQUET = """
    SELECT schema_version, workflow_id, run_id, status, finished_at, total_time_s,
           wall_time_breakdown, SUBSET AS subset, filename
    FROM read_parquet($NAME, filename = true, union_by_name = true)
"""

# An all-NULL row is a line DuckDB could not parse.
_CORRUPT = """
    schema_version IS NULL AND workflow_id IS NULL AND run_id IS NULL AND status IS NULL
    AND finished_at IS NULL AND total_time_s IS NULL AND wall_time_breakdown IS NULL
"""


def execute(
    conn: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any], shards: Sequence[Shard]
) -> duckdb.DuckDBPyConnection:
    """Run a scan of ``shards``; a line above :data:`DEFAULT_MAX_OBJECT` bytes makes it run
    again with room for the largest file (such lines are rare: the writer caps rows at 1 MiB),
    and a shard DuckDB cannot read is one clear error, as in the Python engine."""
    try:
        try:
            return conn.execute(sql, params)
        except duckdb.InvalidInputException as exc:
            if "maximum_object_size" not in str(exc):
                raise
            largest = max((s.size for s in shards if not s.compacted), default=0) + 1
            bigger = f"maximum_object_size = {max(largest, DEFAULT_MAX_OBJECT)}"
            return conn.execute(
                sql.replace(f"maximum_object_size = {DEFAULT_MAX_OBJECT}", bigger), params
            )
    except (duckdb.IOException, duckdb.InvalidInputException) as exc:
        name = _file_in(str(exc), shards)
        if name is None:
            raise
        raise unreadable_shard(name, parquet_problem(exc)) from None


def _file_in(message: str, shards: Sequence[Shard]) -> Path | None:
    for shard in shards:
        if str(shard.path) in message:
            return shard.path
    return None


_KIND = f"""
    CASE
        WHEN {_CORRUPT} THEN 'corrupt'
        WHEN schema_version IS DISTINCT FROM {SCHEMA_VERSION} THEN 'unknown_version'
        WHEN workflow_id IS DISTINCT FROM $workflow_id THEN 'other'
        WHEN $status <> '' AND status IS DISTINCT FROM $status THEN 'other'
        WHEN subset AND NOT $include_subset THEN 'other'
        WHEN ts IS NULL THEN 'invalid'
        WHEN ($since IS NOT NULL AND ts < $since::TIMESTAMPTZ)
             OR ($until IS NOT NULL AND ts >= $until::TIMESTAMPTZ) THEN 'other'
        ELSE 'ok'
    END
"""


@contextmanager
def connect() -> Iterator[duckdb.DuckDBPyConnection]:
    """A private in-memory DuckDB connection, closed on exit."""
    conn = duckdb.connect(":memory:", config={"memory_limit": memory_limit()})
    try:
        yield conn
    finally:
        conn.close()


def memory_limit() -> str:
    """DuckDB's ``memory_limit`` for the engine's connections: ``MANTA_RUNS_LOG_DUCKDB_MEMORY``
    (a DuckDB size such as ``512MB`` or ``2GB``), default ``1GB``."""
    return os.environ.get("MANTA_RUNS_LOG_DUCKDB_MEMORY", "").strip() or "1GB"


def source_sql(
    shards: Sequence[Shard], params: dict[str, Any], *, one_workflow: bool = False
) -> str:
    """SQL of a relation over ``shards`` (JSONL and Parquet) with the engine's columns.

    Adds the file lists to ``params`` (``$jsonl``, ``$parquet``). Columns: ``schema_version,
    workflow_id, run_id, status, finished_at, total_time_s, wall_time_breakdown`` (JSON text, as
    VARCHAR: a cast to JSON would parse it again) and ``filename``. With ``one_workflow``, the
    Parquet part only holds the rows of workflow ``$workflow_id`` and the bad rows (two scans,
    so that the first can skip row groups by their min/max statistics, which an ``OR`` filter
    prevents).
    """
    parts = []
    jsonl = [str(s.path) for s in shards if not s.compacted]
    parquet = [str(s.path) for s in shards if s.compacted]
    if jsonl:
        params["jsonl"] = jsonl
        parts.append(_READ_JSON.replace("$NAME", "$jsonl"))
    if parquet:
        params["parquet"] = parquet
        # Months compacted before the subset flag existed have no such column.
        scan = _READ_PARQUET.replace("$NAME", "$parquet").replace(
            "SUBSET", "coalesce(subset, false)" if _has_subset(parquet) else "false"
        )
        if one_workflow:
            parts.append(f"{scan} WHERE workflow_id = $workflow_id")
            parts.append(
                f"{scan} WHERE workflow_id IS DISTINCT FROM $workflow_id AND (workflow_id IS NULL"
                f" OR schema_version IS DISTINCT FROM {SCHEMA_VERSION})"
            )
        else:
            parts.append(scan)
    if not parts:
        raise ValueError("source_sql needs at least one shard")
    return " UNION ALL ".join(parts)


def _has_subset(files: list[str]) -> bool:
    with connect() as conn:
        try:
            row = conn.execute(
                "SELECT count(*) FROM parquet_schema($files) WHERE name = 'subset'",
                {"files": files},
            ).fetchone()
        except duckdb.Error:
            return False  # reported by the scan itself, naming the file
    return bool(row and row[0])


def duckdb_select(
    conn: duckdb.DuckDBPyConnection, shards: Sequence[Shard], flt: RunFilter, last: int
) -> Selection:
    """DuckDB twin of :func:`manta_lib.runs_log.stats.python_select` (same rows, same figures)."""
    report = ReadReport()
    table = f"runs_log_sel_{uuid.uuid4().hex}"
    conn.execute(
        f"CREATE TEMP TABLE {table} (kind VARCHAR, ts TIMESTAMPTZ, run_id VARCHAR, "
        "total_time_s DOUBLE, wall_time_breakdown VARCHAR, filename VARCHAR)"
    )
    try:
        # With a cap, one month at a time newest first; without one, all shards in one scan.
        batches = month_groups(list(shards)) if last else [list(shards)]
        for batch in batches:
            if not batch:
                continue
            report.shards_read += len(batch)
            params: dict[str, Any] = {
                "workflow_id": flt.workflow_id,
                "status": flt.status,
                "since": flt.since,
                "until": flt.until,
                "include_subset": flt.include_subset,
            }
            source = source_sql(batch, params, one_workflow=True)
            execute(
                conn,
                f"""
                INSERT INTO {table}
                SELECT kind, ts, coalesce(run_id, ''), total_time_s, wall_time_breakdown,
                       filename
                FROM (
                    SELECT *, {_KIND} AS kind
                    FROM (
                        SELECT *, CASE WHEN workflow_id = $workflow_id
                                       THEN try_cast(finished_at AS TIMESTAMPTZ) END AS ts
                        FROM ({source})
                        WHERE workflow_id = $workflow_id OR workflow_id IS NULL
                              OR schema_version IS DISTINCT FROM {SCHEMA_VERSION}
                    )
                )
                WHERE kind <> 'other'
                """,
                params,
                batch,
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
        order = f"ORDER BY ts DESC, run_id DESC LIMIT {int(last)}" if last else ""
        conn.execute(
            f"""
            CREATE OR REPLACE TEMP VIEW {table}_chosen AS
            SELECT total_time_s, wall_time_breakdown FROM {table} WHERE kind = 'ok' {order}
            """
        )
        run_count = _scalar(conn, f"SELECT count(*) FROM {table}_chosen")
        buckets = _bucket_percentiles(conn, f"{table}_chosen", group_by=None).get(None, {})
    finally:
        conn.execute(f"DROP VIEW IF EXISTS {table}_chosen")
        conn.execute(f"DROP TABLE IF EXISTS {table}")
    return Selection(run_count=run_count, buckets=buckets, report=report)


# A breakdown value counts when it is a JSON number or boolean (the Python engine's rule); a
# numeric string does not.
_BUCKET_VALUE = """
    CASE WHEN e.type IN ('BIGINT', 'UBIGINT', 'HUGEINT', 'DOUBLE') THEN e.value::DOUBLE
         WHEN e.type = 'BOOLEAN' THEN CASE WHEN e.value::VARCHAR = 'true' THEN 1.0 ELSE 0.0 END
    END
"""


def _bucket_percentiles(
    conn: duckdb.DuckDBPyConnection, relation: str, group_by: str | None
) -> dict[Any, dict[str, BucketStats]]:
    """Per-bucket statistics of the rows of ``relation`` (``total_time_s`` and
    ``wall_time_breakdown`` columns), optionally per value of the ``group_by`` column.

    Returns ``{group: {bucket: BucketStats}}`` (group ``None`` without ``group_by``); a bucket
    no selected row has a finite value for is left out.

    The breakdowns are unpivoted into one ``(bucket, value)`` row per key (``json_each``) and
    grouped by bucket: memory follows the number of values, not rows times distinct bucket
    names (a column per bucket made DuckDB's memory grow with the number of names).
    """
    key = f"{group_by}, " if group_by else ""
    sql = f"""
        SELECT {key}bucket, count(v) FILTER (isfinite(v)),
               quantile_cont(v, [0.5, 0.95, 0.99]) FILTER (isfinite(v))
        FROM (
            SELECT {key}{_literal(TOTAL_BUCKET)} AS bucket, total_time_s AS v FROM {relation}
            UNION ALL
            SELECT {key}e.key AS bucket, {_BUCKET_VALUE} AS v
            FROM {relation} AS r,
                 json_each(CASE WHEN json_type(r.wall_time_breakdown) = 'OBJECT'
                                THEN r.wall_time_breakdown END) AS e
            WHERE e.key <> {_literal(TOTAL_BUCKET)}
        )
        GROUP BY {key}bucket
    """
    result: dict[Any, dict[str, BucketStats]] = {}
    for row in conn.execute(sql).fetchall():
        group = row[0] if group_by else None
        name, n, quantiles = row[1:] if group_by else row
        if n:
            result.setdefault(group, {})[str(name)] = _bucket_stats(n, quantiles)
    return result


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


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
    params: dict[str, Any] = {}
    source = source_sql(shards, params)
    rows = execute(
        conn,
        f"""
        WITH classified AS (
            SELECT *, CASE
                WHEN {_CORRUPT} THEN 'corrupt'
                WHEN schema_version IS DISTINCT FROM {SCHEMA_VERSION} THEN 'unknown_version'
                WHEN workflow_id IS NULL OR ts IS NULL THEN 'invalid'
                ELSE 'ok' END AS kind
            FROM (SELECT *, try_cast(finished_at AS TIMESTAMPTZ) AS ts FROM ({source}))
        )
        SELECT kind, workflow_id, count(*), count(*) FILTER (status = 'succeeded'),
               count(*) FILTER (status = 'failed'), max(ts), min(filename)
        FROM classified GROUP BY kind, workflow_id ORDER BY workflow_id
        """,
        params,
        shards,
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

    Subset runs are left out. For each workflow, the newest ``last`` runs (0 = all) with
    ``status`` (``""`` = any) that
    finished at or after ``since`` (``"7d"``, ``"24h"``, ``"30m"`` or a datetime): the same
    selection and figures as ``mantis runs stats <workflow_id>``. Returns one dict per
    (workflow, bucket) with keys ``workflow_id, bucket, run_count, count, p50, p95, p99``,
    ordered by workflow, then p50 descending, ``total_time_s`` last.

    Example::

        import duckdb
        rows = workflow_bucket_percentiles(duckdb.connect(), "runs_log")
    """
    cutoff = resolve_since(since)
    shards = list_shards(log_dir, since=cutoff)
    if not shards:
        return []
    qualify = (
        "QUALIFY row_number() OVER (PARTITION BY workflow_id ORDER BY ts DESC, run_id DESC) "
        f"<= {int(last)}"
        if last
        else ""
    )
    params: dict[str, Any] = {"status": status, "since": cutoff}
    source = source_sql(shards, params)
    table = f"runs_log_wbp_{uuid.uuid4().hex}"
    execute(
        conn,
        f"""
        CREATE TEMP TABLE {table} AS
        SELECT workflow_id, total_time_s, wall_time_breakdown
        FROM (
            SELECT workflow_id, try_cast(finished_at AS TIMESTAMPTZ) AS ts,
                   coalesce(run_id, '') AS run_id, total_time_s, wall_time_breakdown
            FROM ({source})
            WHERE schema_version = {SCHEMA_VERSION} AND workflow_id IS NOT NULL
              AND ($status = '' OR status = $status) AND NOT subset
        )
        WHERE ts IS NOT NULL AND ($since IS NULL OR ts >= $since::TIMESTAMPTZ)
        {qualify}
        """,
        params,
        shards,
    )
    try:
        run_counts = dict(
            conn.execute(
                f"SELECT workflow_id, count(*) FROM {table} GROUP BY workflow_id"
            ).fetchall()
        )
        per_workflow = _bucket_percentiles(conn, table, group_by="workflow_id")
    finally:
        conn.execute(f"DROP TABLE IF EXISTS {table}")
    result = []
    for workflow_id, buckets in per_workflow.items():
        for bucket, stats in buckets.items():
            result.append(
                {
                    "workflow_id": workflow_id,
                    "bucket": bucket,
                    "run_count": int(run_counts[workflow_id]),
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
