from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel

from manta_lib.entities import MetadataOutput
from manta_lib.models import EntityLevel
from manta_lib.store import SCHEMA_VERSION, Store, ensure_schema
from manta_lib.store.metadata import MetadataWriter, load_entities
from manta_lib.store.schema import current_version


def test_schema_is_created_once_and_records_its_version(store: Store) -> None:
    tables = {row[0] for row in store.rows("SHOW TABLES FROM {db}")}
    assert {"traces", "spans", "entity_metadata", "judges"} <= tables
    assert "progress" not in tables, "resume reads entity_metadata; nothing else is written"
    ensure_schema(store)  # idempotent
    assert current_version(store) == SCHEMA_VERSION
    # A new store is created at the current version directly: no migration ran.
    assert store.rows("SELECT version FROM {db}.schema_migrations FINAL") == [(SCHEMA_VERSION,)]


_V1_METADATA = """
CREATE TABLE {db}.entity_metadata (
    project_id LowCardinality(String), run_id String, judge LowCardinality(String),
    entity_level LowCardinality(String), entity_id String, column String,
    value_type LowCardinality(String), value_number Nullable(Float64),
    value_string Nullable(String), value_bool Nullable(Bool), value_json Nullable(String),
    judge_version String, computed_at DateTime64(6, 'UTC')
) ENGINE = ReplacingMergeTree(computed_at)
ORDER BY (project_id, run_id, judge, entity_level, entity_id, column)
"""


def test_a_version_1_store_migrates_keeping_trace_results_only(store: Store) -> None:
    store.command("DROP TABLE {db}.entity_metadata")
    store.command(_V1_METADATA)
    store.command("CREATE TABLE {db}.progress (x UInt8) ENGINE = MergeTree ORDER BY x")
    store.command("TRUNCATE TABLE {db}.schema_migrations")
    store.command("INSERT INTO {db}.schema_migrations (version) VALUES (1)")
    store.command(
        "INSERT INTO {db}.traces (trace_id, run_id, step_number, phase, datapoint_id, status, "
        "cost_usd, duration_ms, turn_count, tokens_input, tokens_output, model_name, env_name, "
        "meta) VALUES ('t1', 'r', 7, 'train', 'dp_1', 'ok', 0, 0, 0, 0, 0, '', '', '{}')"
    )
    for level, entity in (("trace", "t1"), ("datapoint", "dp_1"), ("step", "7")):
        store.command(
            "INSERT INTO {db}.entity_metadata VALUES ('p', 'r', 'j', {level:String}, "
            "{entity:String}, '__status__', 'string', NULL, 'ok', NULL, NULL, 'v1', now64(6))",
            {"level": level, "entity": entity},
        )

    ensure_schema(store)

    assert current_version(store) == SCHEMA_VERSION
    tables = {row[0] for row in store.rows("SHOW TABLES FROM {db}")}
    assert "progress" not in tables and "entity_metadata_v2" not in tables
    rows = store.rows(
        "SELECT entity_level, entity_id, datapoint_id, step_number, judge_version "
        "FROM {db}.entity_metadata"
    )
    # Reduce results of the old grouping are gone (recomputed by the next run); trace results
    # stay, with their datapoint and step filled in from traces.
    assert rows == [("trace", "t1", "dp_1", 7, "v1")]
    sorting_key = store.rows(
        "SELECT sorting_key FROM system.tables WHERE database = {d:String} "
        "AND name = 'entity_metadata'",
        {"d": store.database},
    )[0][0]
    assert "judge_version" in sorting_key


class Everything(BaseModel):
    count: int
    ratio: float
    missing: float | None
    label: str
    empty: str
    unicode: str
    flag: bool
    tags: list[str]
    nested: dict[str, list[int]]


def test_every_value_type_round_trips_through_entity_metadata(store: Store) -> None:
    written = Everything(
        count=3,
        ratio=0.25,
        missing=None,
        label="dp_a",
        empty="",
        unicode="héllo ✓",
        flag=False,
        tags=["search", "python"],
        nested={"a": [1, 2]},
    )
    at = datetime(2026, 11, 26, 12, 0, 0, 123456, tzinfo=UTC)
    outcomes = [
        MetadataOutput(
            entity_level=EntityLevel.TRACE,
            entity_id=entity_id,
            run_id="run_rt",
            judge="rt",
            judge_version="v1",
            output=written if error is None else None,
            error=error,
            computed_at=at,
        )
        for entity_id, error in (("t_ok", None), ("t_bad", "ValueError: boom"))
    ]
    writer = MetadataWriter(store, project_id="prj", judge="rt")
    writer.add(outcomes)
    writer.flush()

    stored = load_entities(
        store,
        project_id="prj",
        run_id="run_rt",
        judge="rt",
        level=EntityLevel.TRACE,
        judge_version="v1",
    )
    by_id = {entity.entity_id: entity for entity in stored}
    assert Everything.model_validate(by_id["t_ok"].values) == written
    assert by_id["t_ok"].ok and by_id["t_ok"].error is None
    assert by_id["t_ok"].computed_at.replace(tzinfo=UTC) == at
    assert not by_id["t_bad"].ok and by_id["t_bad"].error == "ValueError: boom"
    assert by_id["t_bad"].values == {}
    types = dict(
        store.rows("SELECT column, value_type FROM {db}.entity_metadata WHERE entity_id = 't_ok'")
    )
    assert types["flag"] == "boolean" and types["tags"] == "json" and types["missing"] == "null"
    assert writer.rows_written == len(Everything.model_fields) + 2 + 2


def test_a_version_2_store_gets_a_results_catalog_filled_from_its_results(store: Store) -> None:
    store.command("DROP VIEW {db}.entity_metadata_catalog_mv")
    store.command("DROP TABLE {db}.entity_metadata_catalog")
    store.command("TRUNCATE TABLE {db}.schema_migrations")
    store.command("INSERT INTO {db}.schema_migrations (version) VALUES (2)")
    insert = (
        "INSERT INTO {db}.entity_metadata VALUES ('p', {run:String}, 'j', 'trace', 't1', 'dp', 0, "
        "{column:String}, {kind:String}, 1, NULL, NULL, NULL, 'v1', {at:DateTime64(6, 'UTC')})"
    )
    at = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
    for column, kind in (("__status__", "string"), ("n", "number"), ("n", "null")):
        store.command(insert, {"run": "r_old", "column": column, "kind": kind, "at": at})

    ensure_schema(store)

    assert current_version(store) == SCHEMA_VERSION
    catalog = (
        "SELECT run_id, column, arraySort(groupUniqArrayArray(value_types)), "
        "max(last_computed_at) FROM {db}.entity_metadata_catalog GROUP BY run_id, column "
        "ORDER BY run_id, column"
    )
    assert store.rows(catalog) == [
        ("r_old", "__status__", ["string"], at.replace(tzinfo=None)),
        ("r_old", "n", ["null", "number"], at.replace(tzinfo=None)),
    ]
    # From now on every write reaches the catalog through its materialized view.
    store.command(insert, {"run": "r_new", "column": "n", "kind": "number", "at": at})
    assert ("r_new", "n", ["number"], at.replace(tzinfo=None)) in store.rows(catalog)


def test_a_version_3_store_gains_the_otel_spans_table(store: Store) -> None:
    store.command("DROP TABLE {db}.otel_spans")
    store.command("TRUNCATE TABLE {db}.schema_migrations")
    store.command("INSERT INTO {db}.schema_migrations (version) VALUES (3)")

    ensure_schema(store)

    assert current_version(store) == SCHEMA_VERSION
    assert "otel_spans" in {row[0] for row in store.rows("SHOW TABLES FROM {db}")}
