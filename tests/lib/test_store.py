from __future__ import annotations

from manta_lib.store import SCHEMA_VERSION, Store, ensure_schema
from manta_lib.store.schema import current_version


def test_schema_is_created_once_and_records_its_version(store: Store) -> None:
    tables = {row[0] for row in store.rows("SHOW TABLES FROM {db}")}
    assert {"traces", "spans", "entity_metadata", "judges", "progress"} <= tables
    ensure_schema(store)  # idempotent
    assert current_version(store) == SCHEMA_VERSION
    assert store.rows("SELECT count() FROM {db}.schema_migrations FINAL")[0][0] == SCHEMA_VERSION
