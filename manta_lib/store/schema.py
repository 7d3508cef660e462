"""DDL for Manta's tables, created idempotently, with a schema-version record.

The column lists are what the rest of Manta reads and writes; engines and sort keys are
tuned for per-run scans (traces) and batch range reads by (run_id, trace_id) (spans).
``entity_metadata`` is a ReplacingMergeTree keyed by identity (judge version included),
versioned by ``computed_at``: a retry or a resumed run replaces a value instead of duplicating
it, the newest computation wins, and each judge version keeps its own results.

``entity_metadata_catalog`` says what is stored without scanning the results: one row per
(project, judge, level, run, judge version, column) with the value kinds seen and the first and
last ``computed_at``. A materialized view fills it on every insert into ``entity_metadata``;
whatever deletes results deletes the matching catalog rows first (see ``delete_run``).

A new store is created at the current schema version; an older one is brought up to it by the
migrations below, each recorded in ``schema_migrations``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol


class Store(Protocol):
    """What the DDL needs of a store (the client module imports this one, not the reverse)."""

    database: str

    def command(self, template: str, parameters: dict[str, Any] | None = None) -> Any: ...

    def rows(
        self, template: str, parameters: dict[str, Any] | None = None
    ) -> list[tuple[Any, ...]]: ...


log = logging.getLogger(__name__)

SCHEMA_VERSION = 8

#: What a text search looks in (``manta_lib.store.text_search``): a span's content, tool
#: arguments and tool result, lower-cased, joined by a NUL (which no search phrase contains,
#: so a phrase never matches across two columns). The index is built on exactly this
#: expression, and a search must spell it the same way for ClickHouse to use the index (a
#: ``char(0)`` instead of the literal is already another expression).
SPAN_TEXT_EXPR = "lowerUTF8(concat(content, '\\0', tool_arguments, '\\0', tool_result))"

#: Phrases shorter than this many characters cannot use the index (they scan the spans).
NGRAM = 4

#: The spans' search index: a bloom filter of the 4-grams of :data:`SPAN_TEXT_EXPR` per
#: granule (8,192 spans, 256 KiB, 3 hashes). A ``LIKE '%phrase%'`` reads only the granules
#: whose filter admits every 4-gram of the phrase. Chosen by measurement on chDB: a token
#: bloom filter cannot serve substring phrases (their first and last words may be parts of
#: words), and the inverted ``text`` index took many times longer to build.
SPAN_TEXT_INDEX = (
    f"INDEX span_text {SPAN_TEXT_EXPR} TYPE ngrambf_v1({NGRAM}, 262144, 3, 0) GRANULARITY 1"
)

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
    cost_usd      Nullable(Float64),
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
    cost_usd       Nullable(Float64),
    started_at     Nullable(DateTime64(3, 'UTC')),
    ended_at       Nullable(DateTime64(3, 'UTC')),
    attributes     String,
    {text_index}
) ENGINE = ReplacingMergeTree
ORDER BY (run_id, trace_id, seq, span_id)
""".replace("{text_index}", SPAN_TEXT_INDEX)

ENTITY_METADATA_DDL = """
CREATE TABLE IF NOT EXISTS {db}.{table} (
    project_id    LowCardinality(String),
    run_id        String,
    judge         LowCardinality(String),
    entity_level  LowCardinality(String),
    entity_id     String,
    datapoint_id  String DEFAULT '',
    step_number   Nullable(Int64),
    phase         LowCardinality(String) DEFAULT '',
    column        String,
    value_type    LowCardinality(String),
    value_number  Nullable(Float64),
    value_string  Nullable(String),
    value_bool    Nullable(Bool),
    value_json    Nullable(String),
    judge_version String,
    computed_at   DateTime64(6, 'UTC')
) ENGINE = ReplacingMergeTree(computed_at)
ORDER BY (project_id, run_id, judge, judge_version, entity_level, entity_id, column)
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

CATALOG_TABLE = "entity_metadata_catalog"

# AggregatingMergeTree: rows of one key merge into the union of kinds and the min/max time, and
# a reader aggregates again (groupUniqArrayArray, min, max) for the parts not merged yet.
CATALOG_DDL = """
CREATE TABLE IF NOT EXISTS {db}.entity_metadata_catalog (
    project_id        LowCardinality(String),
    judge             LowCardinality(String),
    entity_level      LowCardinality(String),
    run_id            String,
    judge_version     String,
    column            String,
    value_types       SimpleAggregateFunction(groupUniqArrayArray, Array(String)),
    first_computed_at SimpleAggregateFunction(min, DateTime64(6, 'UTC')),
    last_computed_at  SimpleAggregateFunction(max, DateTime64(6, 'UTC'))
) ENGINE = AggregatingMergeTree
ORDER BY (project_id, judge, entity_level, run_id, judge_version, column)
"""

_CATALOG_KEYS = "project_id, judge, entity_level, run_id, judge_version, column"


def catalog_select(where: str = "1") -> str:
    """The catalog rows of the ``entity_metadata`` rows matching ``where``."""
    return (
        f"SELECT {_CATALOG_KEYS}, groupUniqArray(toString(value_type)) AS value_types, "
        "min(computed_at) AS first_computed_at, max(computed_at) AS last_computed_at "
        f"FROM {{db}}.entity_metadata WHERE {where} GROUP BY {_CATALOG_KEYS}"
    )


CATALOG_VIEW_DDL = (
    "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.entity_metadata_catalog_mv "
    "TO {db}.entity_metadata_catalog AS " + catalog_select()
)

OTEL_SPANS_DDL = """
CREATE TABLE IF NOT EXISTS {db}.otel_spans (
    otel_trace_id String,
    span_id       String,
    run_id        String,
    trace_id      String,
    payload       String
) ENGINE = ReplacingMergeTree
ORDER BY (otel_trace_id, span_id)
"""

MIGRATIONS_DDL = """
CREATE TABLE IF NOT EXISTS {db}.schema_migrations (
    version    UInt32,
    applied_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplacingMergeTree
ORDER BY version
"""

JUDGE_VERSIONS_DDL = """
CREATE TABLE IF NOT EXISTS {db}.judge_versions (
    project_id    LowCardinality(String),
    judge         String,
    version       String,
    label         String,
    source        String,
    registered_at DateTime64(6, 'UTC')
) ENGINE = ReplacingMergeTree(registered_at)
ORDER BY (project_id, judge, version)
"""

# Human annotation (manta_lib.annotations): label tasks, queues of sampled entities, and the
# append-only log of every hand-out, label, skip and undo (the labels' history). The current
# label of an entity is also written to entity_metadata (judge = the task), like any result.
ANNOTATION_TASKS_DDL = """
CREATE TABLE IF NOT EXISTS {db}.annotation_tasks (
    task       String,
    version    String,
    level      LowCardinality(String),
    spec       String,
    created_at DateTime64(6, 'UTC')
) ENGINE = ReplacingMergeTree(created_at)
ORDER BY (task, version)
"""

ANNOTATION_QUEUES_DDL = """
CREATE TABLE IF NOT EXISTS {db}.annotation_queues (
    queue_id     String,
    project_id   LowCardinality(String),
    task         String,
    task_version String,
    run_id       String,
    level        LowCardinality(String),
    sample       UInt32,
    stratify     String,
    condition    String,
    seed         Int64,
    overlap      Float64,
    created_at   DateTime64(6, 'UTC')
) ENGINE = ReplacingMergeTree(created_at)
ORDER BY queue_id
"""

ANNOTATION_ITEMS_DDL = """
CREATE TABLE IF NOT EXISTS {db}.annotation_items (
    queue_id     String,
    position     UInt32,
    entity_id    String,
    run_id       String,
    step_number  Nullable(Int64),
    phase        LowCardinality(String),
    datapoint_id String,
    trace_id     String,
    copies       UInt8
) ENGINE = ReplacingMergeTree
ORDER BY (queue_id, position)
"""

ANNOTATION_EVENTS_DDL = """
CREATE TABLE IF NOT EXISTS {db}.annotation_events (
    queue_id  String,
    seq       UInt64,
    position  UInt32,
    annotator String,
    action    LowCardinality(String),
    label     String,
    at        DateTime64(6, 'UTC')
) ENGINE = MergeTree
ORDER BY (queue_id, seq)
"""

ANNOTATION_DDL = (
    ANNOTATION_TASKS_DDL,
    ANNOTATION_QUEUES_DDL,
    ANNOTATION_ITEMS_DDL,
    ANNOTATION_EVENTS_DDL,
)

TABLES_DDL: dict[str, str] = {
    "judge_versions": JUDGE_VERSIONS_DDL,
    "traces": TRACES_DDL,
    "spans": SPANS_DDL,
    "entity_metadata": ENTITY_METADATA_DDL.replace("{table}", "entity_metadata"),
    "judges": JUDGES_DDL,
    "llm_cache": LLM_CACHE_DDL,
    "otel_spans": OTEL_SPANS_DDL,
    "annotation_tasks": ANNOTATION_TASKS_DDL,
    "annotation_queues": ANNOTATION_QUEUES_DDL,
    "annotation_items": ANNOTATION_ITEMS_DDL,
    "annotation_events": ANNOTATION_EVENTS_DDL,
}

_METADATA_V2_COPY = """
INSERT INTO {db}.entity_metadata_v2 (project_id, run_id, judge, entity_level, entity_id,
    datapoint_id, step_number, column, value_type, value_number, value_string, value_bool,
    value_json, judge_version, computed_at)
SELECT m.project_id, m.run_id, m.judge, m.entity_level, m.entity_id,
       t.datapoint_id, t.step_number, m.column, m.value_type, m.value_number, m.value_string,
       m.value_bool, m.value_json, m.judge_version, m.computed_at
FROM {db}.entity_metadata AS m FINAL
LEFT JOIN (SELECT run_id, trace_id, any(datapoint_id) AS datapoint_id,
                  any(step_number) AS step_number
           FROM {db}.traces GROUP BY run_id, trace_id) AS t
       ON t.run_id = m.run_id AND t.trace_id = m.entity_id
WHERE m.entity_level = 'trace'
"""


def _migrate_to_2(store: Store) -> None:
    """Datapoint results become per (datapoint, step); judge versions stop replacing each other.

    Results of the datapoint, step and run levels were computed with a datapoint's whole-run
    value copied into every step it appeared in; they are dropped rather than carried over as
    if they were right, and the next ``run()`` recomputes them from the stored trace results,
    which are kept (with their datapoint and step filled in from ``traces``). The per-batch
    ``progress`` table, which nothing reads any more, is dropped.
    """
    dropped = store.rows(
        "SELECT count(DISTINCT (run_id, judge, entity_level, entity_id)) "
        "FROM {db}.entity_metadata WHERE entity_level != 'trace'"
    )[0][0]
    store.command("DROP TABLE IF EXISTS {db}.entity_metadata_v2")
    store.command(ENTITY_METADATA_DDL.replace("{table}", "entity_metadata_v2"))
    store.command(_METADATA_V2_COPY)
    store.command("DROP TABLE {db}.entity_metadata")
    store.command("RENAME TABLE {db}.entity_metadata_v2 TO {db}.entity_metadata")
    store.command("DROP TABLE IF EXISTS {db}.progress")
    if dropped:
        log.warning(
            "store %s upgraded to schema 2: %d datapoint/step/run results computed with the old "
            "grouping (a datapoint's whole-run value in every step) were removed; run the "
            "pipelines again to recompute them from the stored trace results",
            store.database,
            dropped,
        )


def create_catalog(store: Store, *, backfill: bool = True) -> None:
    """(Re)create the results catalog and its materialized view, filled from the stored results
    (``backfill=False``: a new store, which holds none).

    The view exists before the back-fill reads, so a concurrent write is never missed (one seen
    twice only repeats a kind and a time, which the catalog's aggregation absorbs).
    """
    store.command("DROP VIEW IF EXISTS {db}.entity_metadata_catalog_mv")
    store.command("DROP TABLE IF EXISTS {db}.entity_metadata_catalog")
    store.command(CATALOG_DDL)
    store.command(CATALOG_VIEW_DDL)
    if backfill:
        store.command(f"INSERT INTO {{db}}.{CATALOG_TABLE} {catalog_select()}")


def _migrate_to_3(store: Store) -> None:
    """Add the results catalog (versions, columns and value kinds without a scan of results)."""
    create_catalog(store)


# Each stored entity gets the phase of the traces it covers. Trace rows take their trace's;
# datapoint rows the one phase of their traces (a datapoint whose traces mix phases is not
# copied). Step and run entities become one per phase, with the phase in their id
# ("train/3", "train/run_a"): those of a run with one phase are carried over under the new
# id; those of a run with several phases mixed them and are not copied.
_METADATA_V4_COPY = """
INSERT INTO {db}.entity_metadata_v4
WITH t AS (SELECT run_id, trace_id, datapoint_id, step_number, toString(phase) AS phase
           FROM {db}.traces FINAL)
SELECT m.project_id, m.run_id, m.judge, m.entity_level,
       if(m.entity_level IN ('step', 'run'), concat(p.ph, '/', m.entity_id), m.entity_id),
       m.datapoint_id, m.step_number,
       multiIf(m.entity_level = 'trace', tr.ph,
               m.entity_level = 'datapoint', dp.ph,
               m.entity_level = 'datapoint_across_steps', das.ph, p.ph),
       m.column, m.value_type, m.value_number, m.value_string, m.value_bool, m.value_json,
       m.judge_version, m.computed_at
FROM {db}.entity_metadata AS m FINAL
LEFT JOIN (SELECT run_id, trace_id, any(phase) AS ph FROM t GROUP BY run_id, trace_id) AS tr
       ON tr.run_id = m.run_id AND tr.trace_id = m.entity_id
LEFT JOIN (SELECT run_id, datapoint_id, step_number, any(phase) AS ph FROM t
           GROUP BY run_id, datapoint_id, step_number HAVING uniqExact(phase) = 1) AS dp
       ON dp.run_id = m.run_id
          AND dp.datapoint_id = m.datapoint_id AND dp.step_number = m.step_number
LEFT JOIN (SELECT run_id, datapoint_id, any(phase) AS ph FROM t
           GROUP BY run_id, datapoint_id HAVING uniqExact(phase) = 1) AS das
       ON das.run_id = m.run_id AND das.datapoint_id = m.datapoint_id
LEFT JOIN (SELECT run_id, any(phase) AS ph FROM t
           GROUP BY run_id HAVING uniqExact(phase) = 1) AS p
       ON p.run_id = m.run_id
WHERE m.entity_level = 'trace' OR (m.entity_level = 'datapoint' AND dp.ph != '')
   OR (m.entity_level = 'datapoint_across_steps' AND das.ph != '')
   OR (m.entity_level IN ('step', 'run') AND p.ph != '')
SETTINGS join_use_nulls = 0
"""


def _migrate_to_4(store: Store) -> None:
    """Results are per phase: every entity records its phase; a step or run value is one
    phase's (train and eval rollouts of one step are two step entities, not one).

    Stored results whose traces are all of one phase are kept (step and run entities under
    their new ids); the step and run results of a run with several phases, and a datapoint
    entity whose traces mix phases, averaged train and eval together: they are removed rather
    than shown as if they were right, and the next ``run()`` recomputes them per phase from the
    stored trace results.
    """
    before = _entity_counts(store, "entity_metadata")
    store.command("DROP VIEW IF EXISTS {db}.entity_metadata_catalog_mv")
    store.command("DROP TABLE IF EXISTS {db}.entity_metadata_v4")
    store.command(ENTITY_METADATA_DDL.replace("{table}", "entity_metadata_v4"))
    store.command(_METADATA_V4_COPY)
    store.command("DROP TABLE {db}.entity_metadata")
    store.command("RENAME TABLE {db}.entity_metadata_v4 TO {db}.entity_metadata")
    create_catalog(store)
    after = _entity_counts(store, "entity_metadata")
    dropped = {key: n - after.get(key, 0) for key, n in before.items() if n > after.get(key, 0)}
    if dropped:
        log.warning(
            "store %s upgraded to schema 4 (results per phase): %d results that mixed train and "
            "eval traces were removed (%s); run the pipelines again to recompute them per "
            "phase from the stored trace results",
            store.database,
            sum(dropped.values()),
            ", ".join(
                f"{judge} {level} of {run}: {n}" for (judge, level, run), n in dropped.items()
            ),
        )


def _entity_counts(store: Store, table: str) -> dict[tuple[str, str, str], int]:
    """``{(judge, level, run): entities}`` stored in ``table``."""
    rows = store.rows(
        f"SELECT judge, entity_level, run_id, count(DISTINCT (judge_version, entity_id)) "
        f"FROM {{db}}.{table} GROUP BY judge, entity_level, run_id"
    )
    return {(str(j), str(lv), str(r)): int(n) for j, lv, r, n in rows}


def _migrate_to_5(store: Store) -> None:
    """A trace's or span's cost may be unknown (NULL) instead of 0; judge versions keep a
    readable label and their source (``judge_versions``, created with the other tables).

    Rows already stored keep their value: a 0 written for a missing cost by an older Manta
    cannot be told from a real 0 and stays as it is; re-import such files to get NULL.
    """
    store.command(JUDGE_VERSIONS_DDL)
    for table in ("traces", "spans"):
        store.command(
            f"ALTER TABLE {{db}}.{table} MODIFY COLUMN cost_usd Nullable(Float64) DEFAULT NULL "
            "SETTINGS mutations_sync = 2"
        )


def _migrate_to_6(store: Store) -> None:
    """Add the spans' text index (full-text search) and build it for the stored spans.

    The build runs as a mutation and this waits for it, so a search right after the upgrade
    already skips granules; parts without the index would still be searched correctly, by a
    scan.
    """
    spans = store.rows("SELECT count() FROM {db}.spans")[0][0]
    if spans:
        log.warning(
            "store %s upgraded to schema 6: building the full-text index over %d stored spans "
            "(once; large stores take minutes)",
            store.database,
            spans,
        )
    add_index = SPAN_TEXT_INDEX.replace("INDEX", "INDEX IF NOT EXISTS", 1)
    store.command(f"ALTER TABLE {{db}}.spans ADD {add_index}")
    store.command("ALTER TABLE {db}.spans MATERIALIZE INDEX span_text SETTINGS mutations_sync = 2")


def _migrate_to_7(store: Store) -> None:
    """Keep the OpenTelemetry spans a trace was built from (``otel_spans``), so a later part
    of an OTLP trace joins it. The table itself is created with the others."""
    store.command(OTEL_SPANS_DDL)


def _migrate_to_8(store: Store) -> None:
    """Add human annotation: label tasks, queues, their items and the label history (the
    tables themselves are created with the others; stored results are untouched)."""
    for ddl in ANNOTATION_DDL:
        store.command(ddl)


#: version -> the function that brings a store from the previous version to version.
MIGRATIONS: dict[int, Callable[[Store], None]] = {
    2: _migrate_to_2,
    3: _migrate_to_3,
    4: _migrate_to_4,
    5: _migrate_to_5,
    6: _migrate_to_6,
    7: _migrate_to_7,
    8: _migrate_to_8,
}


def ensure_schema(store: Store) -> None:
    """Create the database and tables if missing and apply pending migrations."""
    store.command("CREATE DATABASE IF NOT EXISTS {db}")
    store.command(MIGRATIONS_DDL)
    current = current_version(store)
    if current == SCHEMA_VERSION:
        return
    new_store = current == 0 and not _has_table(store, "entity_metadata")
    for ddl in TABLES_DDL.values():
        store.command(ddl)  # IF NOT EXISTS: an existing table keeps its layout until migrated
    if new_store:
        create_catalog(store, backfill=False)
        _record_version(store, SCHEMA_VERSION)
        return
    for version in sorted(v for v in MIGRATIONS if v > max(current, 1)):
        MIGRATIONS[version](store)
        _record_version(store, version)


def _record_version(store: Store, version: int) -> None:
    store.command(
        "INSERT INTO {db}.schema_migrations (version) VALUES ({v:UInt32})", {"v": version}
    )
    log.debug("schema of %s at version %d", store.database, version)


def _has_table(store: Store, name: str) -> bool:
    rows = store.rows(
        "SELECT count() FROM system.tables WHERE database = {database:String} "
        "AND name = {name:String}",
        {"database": store.database, "name": name},
    )
    return bool(rows and rows[0][0])


def current_version(store: Store) -> int:
    """The highest applied schema version (0 for a new store)."""
    rows = store.rows("SELECT max(version) FROM {db}.schema_migrations")
    return int(rows[0][0] or 0) if rows else 0
