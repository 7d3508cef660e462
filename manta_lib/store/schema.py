"""DDL for Manta's tables, created idempotently, with a schema-version record.

The column lists are what the rest of Manta reads and writes; engines and sort keys are
tuned for per-run scans (traces) and batch range reads by (run_id, trace_id) (spans).
``entity_metadata`` is a ReplacingMergeTree keyed by identity only, versioned by
``computed_at``: a retry or a resumed run replaces a value instead of duplicating it, and
the newest computation wins.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol


class Store(Protocol):
    """What the DDL needs of a store (the client module imports this one, not the reverse)."""

    database: str

    def command(self, template: str, parameters: dict[str, Any] | None = None) -> Any: ...

    def rows(
        self, template: str, parameters: dict[str, Any] | None = None
    ) -> list[tuple[Any, ...]]: ...


log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

TRACES_DDL = """
CREATE TABLE IF NOT EXISTS {db}.traces (
    project_id    LowCardinality(String) DEFAULT '',
    trace_id      String,
    run_id        String,
    step_number   Int64,
    phase         LowCardinality(String),
    datapoint_id  String,
    score         Nullable(Float64),
    status        LowCardinality(String),
    cost_usd      Float64,
    duration_ms   Int64,
    turn_count    Int64,
    tokens_input  Int64,
    tokens_output Int64,
    model_name    LowCardinality(String),
    env_name      LowCardinality(String),
    meta          String,
    created_at    DateTime64(3, 'UTC')
) ENGINE = ReplacingMergeTree
ORDER BY (run_id, trace_id)
"""

SPANS_DDL = """
CREATE TABLE IF NOT EXISTS {db}.spans (
    trace_id       String,
    run_id         String,
    span_id        String,
    parent_span_id String,
    seq            Int64,
    kind           LowCardinality(String),
    name           String,
    role           LowCardinality(String),
    content        String,
    tool_name      LowCardinality(String),
    tool_arguments String,
    tool_result    String,
    is_error       Bool,
    model_name     LowCardinality(String),
    tokens_input   Int64,
    tokens_output  Int64,
    cost_usd       Float64,
    started_at     Nullable(DateTime64(3, 'UTC')),
    ended_at       Nullable(DateTime64(3, 'UTC')),
    attributes     String
) ENGINE = ReplacingMergeTree
ORDER BY (run_id, trace_id, seq, span_id)
"""

ENTITY_METADATA_DDL = """
CREATE TABLE IF NOT EXISTS {db}.entity_metadata (
    project_id    LowCardinality(String),
    run_id        String,
    judge         LowCardinality(String),
    entity_level  LowCardinality(String),
    entity_id     String,
    column        String,
    value_type    LowCardinality(String),
    value_number  Nullable(Float64),
    value_string  Nullable(String),
    value_bool    Nullable(Bool),
    value_json    Nullable(String),
    judge_version String,
    computed_at   DateTime64(6, 'UTC')
) ENGINE = ReplacingMergeTree(computed_at)
ORDER BY (project_id, run_id, judge, entity_level, entity_id, column)
"""

JUDGES_DDL = """
CREATE TABLE IF NOT EXISTS {db}.judges (
    project_id    LowCardinality(String),
    judge         String,
    version       String,
    description   String,
    levels        Array(String),
    uses_llm      Bool,
    columns       String,
    registered_at DateTime64(6, 'UTC')
) ENGINE = ReplacingMergeTree(registered_at)
ORDER BY (project_id, judge)
"""

LLM_CACHE_DDL = """
CREATE TABLE IF NOT EXISTS {db}.llm_cache (
    namespace     String,
    key           String,
    model         LowCardinality(String),
    response      String,
    input_tokens  Int64,
    output_tokens Int64,
    cost_usd      Nullable(Float64),
    latency_ms    Float64,
    created_at    DateTime64(3, 'UTC')
) ENGINE = ReplacingMergeTree(created_at)
ORDER BY (namespace, key)
"""

MIGRATIONS_DDL = """
CREATE TABLE IF NOT EXISTS {db}.schema_migrations (
    version    UInt32,
    applied_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplacingMergeTree
ORDER BY version
"""

TABLES_DDL: dict[str, str] = {
    "traces": TRACES_DDL,
    "spans": SPANS_DDL,
    "entity_metadata": ENTITY_METADATA_DDL,
    "judges": JUDGES_DDL,
    "llm_cache": LLM_CACHE_DDL,
}

# version -> statements that bring a store from version-1 to version. Version 1 is the
# initial DDL above; later versions append ALTERs here.
MIGRATIONS: dict[int, list[str]] = {1: []}


def ensure_schema(store: Store) -> None:
    """Create the database and tables if missing and apply pending migrations."""
    store.command("CREATE DATABASE IF NOT EXISTS {db}")
    store.command(MIGRATIONS_DDL)
    current = current_version(store)
    if current == SCHEMA_VERSION:
        return
    for ddl in TABLES_DDL.values():
        store.command(ddl)
    for version in range(current + 1, SCHEMA_VERSION + 1):
        for statement in MIGRATIONS.get(version, []):
            store.command(statement)
        store.command(
            "INSERT INTO {db}.schema_migrations (version) VALUES ({v:UInt32})", {"v": version}
        )
        log.debug("schema of %s migrated to version %d", store.database, version)


def current_version(store: Store) -> int:
    """The highest applied schema version (0 for a new store)."""
    rows = store.rows("SELECT max(version) FROM {db}.schema_migrations")
    return int(rows[0][0] or 0) if rows else 0
