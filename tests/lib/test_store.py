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
    assert store.rows("SELECT count() FROM {db}.schema_migrations FINAL")[0][0] == SCHEMA_VERSION


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
