"""Schema 8: a store of schema 7 gains the annotation tables and keeps its results."""

from __future__ import annotations

import pytest

from manta_lib.annotations import Annotations, AnnotationTask
from manta_lib.store import SCHEMA_VERSION, Store, ensure_schema
from manta_lib.store.schema import current_version

# Seeded stores or seconds per test: make test runs them, make check leaves them out.
pytestmark = pytest.mark.slow

_TABLES = ("annotation_tasks", "annotation_queues", "annotation_items", "annotation_events")


def test_a_version_7_store_is_upgraded_and_can_annotate(
    store: Store, demo_run: str, task: AnnotationTask
) -> None:
    for table in _TABLES:
        store.command(f"DROP TABLE {{db}}.{table}")
    store.command("TRUNCATE TABLE {db}.schema_migrations")
    store.command("INSERT INTO {db}.schema_migrations (version) VALUES (7)")
    store.command(
        "INSERT INTO {db}.entity_metadata (project_id, run_id, judge, entity_level, entity_id, "
        "column, value_type, value_number, judge_version, computed_at) VALUES "
        "('p', {r:String}, 'j', 'trace', 't1', 'n', 'number', 1, 'v1', now64(6))",
        {"r": demo_run},
    )

    ensure_schema(store)

    assert current_version(store) == SCHEMA_VERSION == 8
    assert set(_TABLES) <= {row[0] for row in store.rows("SHOW TABLES FROM {db}")}
    assert store.rows("SELECT judge, value_number FROM {db}.entity_metadata") == [("j", 1.0)]
    ann = Annotations(store)
    queue = ann.create_queue(task, demo_run, sample=2, seed=0)
    item = ann.next_item(queue.queue_id, "ana")
    assert item is not None
    ann.save_label(queue.queue_id, item.position, "ana", {"category": "passed"})
    assert ann.progress(queue.queue_id).labelled == 1
