from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

import pytest
from pydantic import BaseModel

from manta_lib.entities import MetadataOutput
from manta_lib.errors import QueryError
from manta_lib.models import EntityLevel
from manta_lib.results import ResultsQuery, results_frame
from manta_lib.store import SCHEMA_VERSION, ResultKey, Store, ensure_schema
from manta_lib.store.metadata import MetadataWriter, load_entities
from manta_lib.store.schema import current_version

# Seeded stores or seconds per test: make test runs them, make check leaves them out.
pytestmark = pytest.mark.slow


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
    assert store.rows("SELECT toString(phase) FROM {db}.entity_metadata") == [("train",)]
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

    stored = load_entities(store, ResultKey("prj", "run_rt", "rt", EntityLevel.TRACE, "v1"))
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


class Loose(BaseModel):
    value: int | str | None
    note: str = ""


class Other(BaseModel):
    score: float


def test_a_mixed_batch_is_written_row_for_row(store: Store) -> None:
    """One group of entities with two output schemas, a field whose type changes from entity
    to entity, a failure with its place and keys on every row: each reads back as written."""
    at = datetime(2026, 12, 7, 9, 30, tzinfo=UTC)
    items = [
        ("t1", Loose(value=3, note="a"), None, None, "dp1", 1, "train"),
        ("t2", Loose(value="three"), None, None, "dp1", 1, "train"),
        ("t3", Loose(value=None, note="n"), None, None, "dp2", 2, "eval"),
        ("t4", Other(score=0.25), None, None, None, None, None),
        ("t5", None, "ValueError: boom", "map", "dp3", 3, "train"),
    ]
    writer = MetadataWriter(store, project_id="prj", judge="mixed")
    writer.add_results(
        items, level=EntityLevel.TRACE, run_id="run_mx", judge_version="v1", computed_at=at
    )
    writer.flush()
    rows = store.rows(
        "SELECT entity_id, column, value_type, value_number, value_string, datapoint_id, "
        "step_number, phase, run_id, entity_level, judge_version, computed_at "
        "FROM {db}.entity_metadata WHERE judge = 'mixed' ORDER BY entity_id, column"
    )
    got = {(r[0], r[1]): r[2:5] for r in rows}
    assert got[("t1", "value")] == ("number", 3.0, None)
    assert got[("t2", "value")] == ("string", None, "three")
    assert got[("t3", "value")] == ("null", None, None)
    assert got[("t1", "note")] == ("string", None, "a")
    assert got[("t4", "score")] == ("number", 0.25, None)
    assert got[("t5", "__status__")] == ("string", None, "error")
    assert got[("t5", "__error__")] == ("string", None, "ValueError: boom")
    assert got[("t5", "__error_at__")] == ("string", None, "map")
    assert got[("t4", "__status__")] == ("string", None, "ok")
    assert len(rows) == 3 * 2 + 1 + 5 * 2 + 1 == writer.rows_written
    keys = {r[0]: r[5:8] for r in rows}
    assert keys["t1"] == ("dp1", 1, "train") and keys["t3"] == ("dp2", 2, "eval")
    assert keys["t4"] == ("", None, "") and keys["t5"] == ("dp3", 3, "train")
    assert {r[8:11] for r in rows} == {("run_mx", "trace", "v1")}
    assert {r[11].replace(tzinfo=UTC) for r in rows} == {at}


def test_the_timer_thread_writes_a_full_buffer_without_the_caller(store: Store) -> None:
    """With the timer running, ``flush_rows`` waiting rows are written by the timer thread at
    once (not after ``flush_seconds``); without it, by the adding call itself."""
    at = datetime(2026, 12, 7, tzinfo=UTC)

    def add(writer: MetadataWriter, first: int) -> None:
        items = [
            (f"t{i}", Other(score=i), None, None, "", None, "") for i in range(first, first + 5)
        ]
        writer.add_results(
            items, level=EntityLevel.TRACE, run_id="run_tm", judge_version="v1", computed_at=at
        )

    inline = MetadataWriter(store, project_id="prj", judge="timer", flush_rows=10)
    add(inline, 0)  # 5 entities x 3 rows: past flush_rows, written by this call
    assert inline.rows_written == 15

    timed = MetadataWriter(store, project_id="prj", judge="timer", flush_rows=10)
    with timed.flushing_every(seconds=60):
        add(timed, 100)
        deadline = time.monotonic() + 20
        while timed.rows_written < 15 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert timed.rows_written == 15  # the timer wrote it, long before its 60 s tick
    count = store.rows("SELECT count() FROM {db}.entity_metadata WHERE judge = 'timer'")
    assert count[0][0] == 30


# entity_metadata of schema versions 2 and 3 (before results were per phase).
_V3_METADATA = """
CREATE TABLE {db}.entity_metadata (
    project_id LowCardinality(String), run_id String, judge LowCardinality(String),
    entity_level LowCardinality(String), entity_id String, datapoint_id String DEFAULT '',
    step_number Nullable(Int64), column String, value_type LowCardinality(String),
    value_number Nullable(Float64), value_string Nullable(String), value_bool Nullable(Bool),
    value_json Nullable(String), judge_version String, computed_at DateTime64(6, 'UTC')
) ENGINE = ReplacingMergeTree(computed_at)
ORDER BY (project_id, run_id, judge, judge_version, entity_level, entity_id, column)
"""

_V3_ROW = (
    "INSERT INTO {db}.entity_metadata (project_id, run_id, judge, entity_level, entity_id, "
    "datapoint_id, step_number, column, value_type, value_number, value_string, judge_version, "
    "computed_at) VALUES ('p', {run:String}, 'j', {level:String}, {entity:String}, "
    "{dp:String}, {step:Nullable(Int64)}, {column:String}, {kind:String}, {n:Nullable(Float64)}, "
    "{text:Nullable(String)}, 'v1', {at:DateTime64(6, 'UTC')})"
)


def _as_older_store(store: Store, version: int) -> None:
    """Turn the fresh store into one of schema ``version`` (2 or 3): results without phase."""
    store.command("DROP VIEW {db}.entity_metadata_catalog_mv")
    if version < 3:
        store.command("DROP TABLE {db}.entity_metadata_catalog")
    store.command("DROP TABLE {db}.entity_metadata")
    store.command(_V3_METADATA)
    store.command("TRUNCATE TABLE {db}.schema_migrations")
    store.command(
        "INSERT INTO {db}.schema_migrations (version) VALUES ({v:UInt32})", {"v": version}
    )


def test_a_version_2_store_gets_a_results_catalog_filled_from_its_results(store: Store) -> None:
    _as_older_store(store, 2)
    insert = (
        "INSERT INTO {db}.entity_metadata VALUES ('p', {run:String}, 'j', 'trace', {t:String}, "
        "'dp', 0, {column:String}, {kind:String}, 1, NULL, NULL, NULL, 'v1', "
        "{at:DateTime64(6, 'UTC')})"
    )
    at = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
    for trace, column, kind in (
        ("t1", "__status__", "string"),
        ("t1", "n", "number"),
        ("t2", "__status__", "string"),
        ("t2", "n", "null"),
    ):
        store.command(
            insert, {"run": "r_old", "t": trace, "column": column, "kind": kind, "at": at}
        )
    for trace in ("t1", "t2"):
        _trace(store, trace, "r_old", 0, "train", "dp")

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
    store.command(
        _V3_ROW,
        {"run": "r_new", "level": "trace", "entity": "t9", "dp": "dp", "step": 0, "column": "n",
         "kind": "number", "n": 1, "text": None, "at": at},
    )  # fmt: skip
    assert ("r_new", "n", ["number"], at.replace(tzinfo=None)) in store.rows(catalog)


def test_a_version_3_store_learns_that_a_cost_can_be_unknown(store: Store) -> None:
    for table in ("traces", "spans"):
        store.command(f"ALTER TABLE {{db}}.{table} MODIFY COLUMN cost_usd Float64 DEFAULT 0")
    store.command("DROP TABLE {db}.judge_versions")
    store.command("TRUNCATE TABLE {db}.schema_migrations")
    store.command("INSERT INTO {db}.schema_migrations (version) VALUES (3)")
    store.command(
        "INSERT INTO {db}.traces (trace_id, run_id, step_number, phase, datapoint_id, status, "
        "cost_usd, duration_ms, turn_count, tokens_input, tokens_output, model_name, env_name, "
        "meta) VALUES ('t1', 'r', 7, 'train', 'dp_1', 'ok', 0.25, 0, 0, 0, 0, '', '', '{}')"
    )

    ensure_schema(store)

    assert current_version(store) == SCHEMA_VERSION
    assert "judge_versions" in {row[0] for row in store.rows("SHOW TABLES FROM {db}")}
    types = dict(
        store.rows(
            "SELECT table, type FROM system.columns WHERE database = {d:String} "
            "AND name = 'cost_usd' AND table IN ('traces', 'spans')",
            {"d": store.database},
        )
    )
    assert types == {"traces": "Nullable(Float64)", "spans": "Nullable(Float64)"}
    assert store.rows("SELECT cost_usd FROM {db}.traces") == [(0.25,)]  # kept as it was
    store.command(
        "INSERT INTO {db}.traces (trace_id, run_id, status, meta) VALUES ('t2', 'r', 'ok', '{}')"
    )  # a cost not given is not known: NULL, not the old 0
    assert store.rows("SELECT cost_usd FROM {db}.traces WHERE trace_id = 't2'") == [(None,)]


def _trace(store: Store, trace_id: str, run: str, step: int, phase: str, dp: str) -> None:
    store.command(
        "INSERT INTO {db}.traces (trace_id, run_id, step_number, phase, datapoint_id, status, "
        "cost_usd, duration_ms, turn_count, tokens_input, tokens_output, model_name, env_name, "
        "meta) VALUES ({t:String}, {r:String}, {s:Int64}, {p:String}, {d:String}, 'ok', 0, 0, "
        "0, 0, 0, '', '', '{}')",
        {"t": trace_id, "r": run, "s": step, "p": phase, "d": dp},
    )


def test_a_version_3_store_keeps_one_phase_results_and_drops_mixed_ones(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    _as_older_store(store, 3)
    # r_mixed: step 0 has train and eval rollouts (its step and run values mixed them), and
    # datapoint dp_x was rolled out in both phases at step 2. r_train: train only.
    for args in (
        ("t1", "r_mixed", 0, "train", "dp_a"), ("t2", "r_mixed", 0, "eval", "dp_e"),
        ("t3", "r_mixed", 2, "train", "dp_x"), ("t4", "r_mixed", 2, "eval", "dp_x"),
        ("t5", "r_train", 0, "train", "dp_b"), ("t6", "r_train", 10, "train", "dp_b"),
    ):  # fmt: skip
        _trace(store, *args)
    at = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
    entities = [
        ("r_mixed", "trace", "t1", "dp_a", 0), ("r_mixed", "trace", "t2", "dp_e", 0),
        ("r_mixed", "datapoint", "dp_a@0", "dp_a", 0),
        ("r_mixed", "datapoint", "dp_x@2", "dp_x", 2),
        ("r_mixed", "step", "0", "", 0), ("r_mixed", "run", "r_mixed", "", None),
        ("r_train", "trace", "t5", "dp_b", 0),
        ("r_train", "datapoint_across_steps", "dp_b", "dp_b", None),
        ("r_train", "step", "0", "", 0), ("r_train", "step", "10", "", 10),
        ("r_train", "run", "r_train", "", None),
    ]  # fmt: skip
    for run, level, entity, dp, step in entities:
        for column, kind, n, text in (
            ("__status__", "string", None, "ok"),
            ("n", "number", 1, None),
        ):
            store.command(
                _V3_ROW,
                {"run": run, "level": level, "entity": entity, "dp": dp, "step": step,
                 "column": column, "kind": kind, "n": n, "text": text, "at": at},
            )  # fmt: skip

    with caplog.at_level(logging.WARNING, logger="manta_lib.store.schema"):
        ensure_schema(store)

    assert current_version(store) == SCHEMA_VERSION
    kept = store.rows(
        "SELECT run_id, entity_level, entity_id, toString(phase) FROM {db}.entity_metadata "
        "WHERE column = '__status__' ORDER BY run_id, entity_level, entity_id"
    )
    assert kept == [
        ("r_mixed", "datapoint", "dp_a@0", "train"),
        ("r_mixed", "trace", "t1", "train"),
        ("r_mixed", "trace", "t2", "eval"),
        ("r_train", "datapoint_across_steps", "dp_b", "train"),
        ("r_train", "run", "train/r_train", "train"),
        ("r_train", "step", "train/0", "train"),
        ("r_train", "step", "train/10", "train"),
        ("r_train", "trace", "t5", "train"),
    ]
    # The catalog no longer lists what was removed, so no read offers it.
    catalog = store.rows(
        "SELECT DISTINCT run_id, entity_level FROM {db}.entity_metadata_catalog "
        "WHERE run_id = 'r_mixed' ORDER BY entity_level"
    )
    assert catalog == [("r_mixed", "datapoint"), ("r_mixed", "trace")]
    message = " ".join(r.getMessage() for r in caplog.records)
    assert "schema 4" in message and "mixed train and eval" in message
    assert "j step of r_mixed: 1" in message and "j run of r_mixed: 1" in message
    assert "j datapoint of r_mixed: 1" in message and "r_train" not in message

    # A one-phase run reads as before (phase added, steps in numeric order); the mixed run's
    # step level is gone rather than shown, and says how to get it back.
    frame = results_frame(store, ResultsQuery("j", "r_train", level="step"))
    assert frame[["step_number", "phase", "n"]].values.tolist() == [
        [0, "train", 1],
        [10, "train", 1],
    ]
    with pytest.raises(QueryError, match="step"):
        results_frame(store, ResultsQuery("j", "r_mixed", level="step"))


def test_a_version_3_store_gains_the_otel_spans_table(store: Store) -> None:
    store.command("DROP TABLE {db}.otel_spans")
    store.command("TRUNCATE TABLE {db}.schema_migrations")
    store.command("INSERT INTO {db}.schema_migrations (version) VALUES (3)")

    ensure_schema(store)

    assert current_version(store) == SCHEMA_VERSION
    assert "otel_spans" in {row[0] for row in store.rows("SHOW TABLES FROM {db}")}
