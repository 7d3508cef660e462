"""``wall_time_percentiles``: p50/p95/p99 per workflow × wall-time bucket of the runs log.

Built with dagster-duckdb's :class:`~dagster_duckdb.DuckDBResource` (in memory: the month
shards are read with ``read_json``/``read_parquet``, nothing is stored in a DuckDB file, which
allows one writer only) by :func:`manta_lib.runs_log.duckdb_engine.workflow_bucket_percentiles`:
per workflow, the newest ``last`` runs with ``status``, and for every bucket the same figures
as ``mantis runs stats <workflow_id>``. The table is shown as markdown in the materialization
metadata (``percentiles``; ``rows`` holds the same rows as JSON for programs) and the asset is
refreshed daily at 06:00 UTC by declarative automation (``on_cron``).

A missing or empty runs log is not an error: the asset materializes an empty table and says why
in the ``note`` metadata entry (a fresh install has no runs yet, and a daily failure would be
noise). Corrupt lines are skipped, as by the CLI. The asset never opens the ClickHouse store,
so it can run beside level materializations.
"""

# No `from __future__ import annotations`: Dagster resolves the config and resource types from
# the asset function's evaluated annotations.
from pathlib import Path
from typing import Any

import dagster as dg
from dagster_duckdb import DuckDBResource
from pydantic import Field

from manta_dagster.automation import WALL_TIME_CRON
from manta_lib import load_settings
from manta_lib.runs_log import list_shards
from manta_lib.runs_log.duckdb_engine import memory_limit, workflow_bucket_percentiles

WALL_TIME_KEY = dg.AssetKey("wall_time_percentiles")

TABLE_HEADER = "| workflow | bucket | runs | n | p50 (s) | p95 (s) | p99 (s) |"
"""First line of the markdown table; ``runs`` = runs selected, ``n`` = runs with the bucket."""


class WallTimeConfig(dg.Config):
    """Which runs count (the options of ``mantis runs stats``, same defaults)."""

    log_dir: str | None = Field(
        default=None, description="Runs log directory; default MANTA_RUNS_LOG_DIR."
    )
    last: int = Field(default=100, description="Newest runs per workflow (0 = all).")
    status: str = Field(default="succeeded", description="Status to keep ('' = any).")
    since: str | None = Field(default=None, description="Only runs finished within 7d, 24h …")


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The percentile rows as a markdown table, seconds to the millisecond.

    >>> print(markdown_table([{"workflow_id": "wf", "bucket": "total_time_s",
    ...     "run_count": 2, "count": 2, "p50": 1.5, "p95": 1.95, "p99": 1.99}]))
    | workflow | bucket | runs | n | p50 (s) | p95 (s) | p99 (s) |
    |---|---|---:|---:|---:|---:|---:|
    | wf | total_time_s | 2 | 2 | 1.500 | 1.950 | 1.990 |
    """
    lines = [TABLE_HEADER, "|---|---|---:|---:|---:|---:|---:|"]
    lines += [
        f"| {_cell(r['workflow_id'])} | {_cell(r['bucket'])} | {r['run_count']} | "
        f"{r['count']} | {r['p50']:.3f} | {r['p95']:.3f} | {r['p99']:.3f} |"
        for r in rows
    ]
    return "\n".join(lines)


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|")


def _empty_reason(log_dir: Path) -> str | None:
    """Why ``log_dir`` has nothing to read, or ``None`` when it holds month shards."""
    if not log_dir.is_dir():
        return f"runs log directory {log_dir} does not exist yet: no run has been logged"
    if not list_shards(log_dir):
        return f"runs log directory {log_dir} holds no month shard yet: no run has been logged"
    return None


@dg.asset(
    key=WALL_TIME_KEY,
    group_name="runs_log",
    kinds={"duckdb"},
    description="p50/p95/p99 of each wall-time bucket per workflow over the JSONL runs log "
    "(the figures of `mantis runs stats`), computed with DuckDB, refreshed daily.",
    automation_condition=dg.AutomationCondition.on_cron(WALL_TIME_CRON, "UTC"),
)
def wall_time_percentiles(
    context: dg.AssetExecutionContext, config: WallTimeConfig, duckdb: DuckDBResource
) -> dg.MaterializeResult[Any]:
    """Percentiles of every (workflow, bucket); the table goes to the metadata."""
    log_dir = Path(config.log_dir) if config.log_dir else load_settings().runs_log_dir
    rows: list[dict[str, Any]] = []
    note = _empty_reason(log_dir)
    if note is None:
        with duckdb.get_connection() as conn:
            rows = workflow_bucket_percentiles(
                conn, log_dir, status=config.status, last=config.last, since=config.since
            )
        if not rows:
            note = f"no {config.status or 'terminal'} run matches in {log_dir}"
    if note:
        context.log.warning(note)
    workflows = sorted({r["workflow_id"] for r in rows})
    context.log.info(f"{len(workflows)} workflows, {len(rows)} buckets from {log_dir}")
    metadata: dict[str, Any] = {
        "percentiles": dg.MetadataValue.md(markdown_table(rows)),
        "rows": dg.MetadataValue.json(rows),
        "workflows": len(workflows),
        "dagster/row_count": len(rows),
        "log_dir": dg.MetadataValue.path(str(log_dir)),
        "selection": f"newest {config.last or 'all'} {config.status or 'terminal'} runs per "
        f"workflow" + (f" finished within {config.since}" if config.since else ""),
    }
    if note:
        metadata["note"] = note
    return dg.MaterializeResult(metadata=metadata)


WALL_TIME_RESOURCES: dict[str, Any] = {
    "duckdb": DuckDBResource(
        database=":memory:", connection_config={"memory_limit": memory_limit()}
    )
}
"""The resources ``wall_time_percentiles`` needs, merged into ``definitions.py``'s."""
