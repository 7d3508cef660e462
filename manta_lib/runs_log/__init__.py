"""The JSONL runs log: one line per terminal run, aggregated by ``mantis runs stats``.

Write with :func:`append_run` (pure stdlib, best effort, never raises); query with
:func:`compute_stats`, :func:`compare_windows` and :func:`list_workflows` (pure-Python or
DuckDB engine, identical figures). The DuckDB function used by the Dagster wall-time asset is
:func:`manta_lib.runs_log.duckdb_engine.workflow_bucket_percentiles` (imported lazily so that
writing never imports DuckDB).
"""

from manta_lib.percentile import percentile
from manta_lib.runs_log.reader import ReadReport, Shard, iter_rows, list_shards
from manta_lib.runs_log.schema import (
    MOSTLY_FAILED_FRACTION,
    SCHEMA_VERSION,
    STABLE_KEYS,
    TERMINAL_STATUSES,
    TOTAL_BUCKET,
    run_status,
    shard_name,
)
from manta_lib.runs_log.selection import BucketStats, WorkflowSummary, parse_duration
from manta_lib.runs_log.stats import (
    BucketChange,
    CompareResult,
    StatsResult,
    compare_windows,
    compute_stats,
    list_workflows,
)
from manta_lib.runs_log.writer import (
    MAX_ROW_BYTES,
    RunsLogWriter,
    append_run,
    make_run_row,
    validate_row,
)

__all__ = [
    "MAX_ROW_BYTES",
    "MOSTLY_FAILED_FRACTION",
    "SCHEMA_VERSION",
    "STABLE_KEYS",
    "TERMINAL_STATUSES",
    "TOTAL_BUCKET",
    "BucketChange",
    "BucketStats",
    "CompareResult",
    "ReadReport",
    "RunsLogWriter",
    "Shard",
    "StatsResult",
    "WorkflowSummary",
    "append_run",
    "compare_windows",
    "compute_stats",
    "iter_rows",
    "list_shards",
    "list_workflows",
    "make_run_row",
    "parse_duration",
    "percentile",
    "run_status",
    "shard_name",
    "validate_row",
]
