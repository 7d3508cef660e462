"""SQL of human annotation: label tasks, queues, their items and the append-only event log.

``annotation_events`` is the history: every hand-out (``lease``), ``label``, ``skip`` and
``undo`` with who and when, numbered per queue by ``seq``. Nothing in it is ever updated or
deleted; a queue's state (who holds which item, the current labels) is folded from it by
``manta_lib.annotations``. The current label of an entity is also written to
``entity_metadata`` (judge = the task) by the same package, so it reads like any result.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from manta_lib.models import EntityLevel
from manta_lib.store.client import Store
from manta_lib.store.trace_queries import TraceFilter


@dataclass(frozen=True)
class QueueRow:
    """One stored queue (its definition: enough to sample it again)."""

    queue_id: str
    project_id: str
    task: str
    task_version: str
    run_id: str
    level: str
    sample: int
    stratify: str
    condition: str
    seed: int
    overlap: float
    created_at: datetime


@dataclass(frozen=True)
class ItemRow:
    """One sampled entity of a queue, at its hand-out ``position``; ``copies``: how many
    annotators label it (2 for the overlap share, else 1)."""

    queue_id: str
    position: int
    entity_id: str
    run_id: str
    step_number: int | None
    phase: str
    datapoint_id: str
    trace_id: str
    copies: int


@dataclass(frozen=True)
class EventRow:
    """One entry of the label history."""

    queue_id: str
    seq: int
    position: int
    annotator: str
    action: str
    label: str
    at: datetime


_QUEUE_COLUMNS = (
    "queue_id, project_id, task, task_version, run_id, level, sample, stratify, condition, "
    "seed, overlap, created_at"
)
_ITEM_COLUMNS = (
    "queue_id, position, entity_id, run_id, step_number, phase, datapoint_id, trace_id, copies"
)
_EVENT_COLUMNS = "queue_id, seq, position, annotator, action, label, at"


def save_task(store: Store, task: str, version: str, level: str, spec: str, at: datetime) -> None:
    store.insert_columns(
        "annotation_tasks",
        {"task": [task], "version": [version], "level": [level], "spec": [spec],
         "created_at": [at]},
    )  # fmt: skip


def task_specs(store: Store, task: str | None = None) -> list[tuple[str, str, str, datetime]]:
    """``(task, version, spec, created_at)`` of stored tasks, newest first per task."""
    where = "1" if task is None else "task = {task:String}"
    return [
        (str(t), str(v), str(s), _utc(c))
        for t, v, s, c in store.rows(
            "SELECT task, version, spec, created_at FROM {db}.annotation_tasks FINAL "
            f"WHERE {where} ORDER BY task, created_at DESC",
            {"task": task} if task is not None else None,
        )
    ]


def candidates(
    store: Store, flt: TraceFilter, level: EntityLevel
) -> list[tuple[str, int, str, str, str]]:
    """``(entity_id, step_number, phase, datapoint_id, trace_id)`` of the entities whose
    traces match ``flt``, ordered by entity id (a trace, or a datapoint at one step and phase
    with an empty trace id)."""
    where, params = flt.where()
    if level == EntityLevel.TRACE:
        sql = (
            "SELECT trace_id, step_number, toString(phase), datapoint_id, trace_id "
            f"FROM {{db}}.traces FINAL WHERE {where} ORDER BY trace_id"
        )
    else:
        sql = (
            "SELECT concat(datapoint_id, '@', toString(step_number)) AS entity, step_number, "
            "toString(phase) AS ph, datapoint_id, '' "
            f"FROM {{db}}.traces FINAL WHERE {where} "
            "GROUP BY datapoint_id, step_number, ph ORDER BY entity, ph"
        )
    return [(str(e), int(s), str(p), str(d), str(t)) for e, s, p, d, t in store.rows(sql, params)]


def run_project(store: Store, run_id: str) -> str | None:
    """The project of ``run_id`` (None for an unknown run)."""
    rows = store.rows(
        "SELECT any(project_id), count() FROM {db}.traces WHERE run_id = {run:String}",
        {"run": run_id},
    )
    return str(rows[0][0]) if rows and rows[0][1] else None


def save_queue(store: Store, queue: QueueRow, items: Sequence[ItemRow]) -> None:
    """Store the items first, then the queue: a queue row exists only with all its items."""
    names = [c.strip() for c in _ITEM_COLUMNS.split(",")]
    store.insert_columns("annotation_items", {n: [getattr(i, n) for i in items] for n in names})
    names = [c.strip() for c in _QUEUE_COLUMNS.split(",")]
    store.insert_columns("annotation_queues", {n: [getattr(queue, n)] for n in names})


def queues(store: Store, queue_id: str | None = None) -> list[QueueRow]:
    where = "1" if queue_id is None else "queue_id = {queue:String}"
    rows = store.rows(
        f"SELECT {_QUEUE_COLUMNS} FROM {{db}}.annotation_queues FINAL WHERE {where} "
        "ORDER BY created_at, queue_id",
        {"queue": queue_id} if queue_id is not None else None,
    )
    return [
        QueueRow(str(q), str(p), str(t), str(v), str(r), str(lv), int(n), str(s), str(c),
                 int(seed), float(o), _utc(at))
        for q, p, t, v, r, lv, n, s, c, seed, o, at in rows
    ]  # fmt: skip


def items(store: Store, queue_id: str) -> list[ItemRow]:
    rows = store.rows(
        f"SELECT {_ITEM_COLUMNS} FROM {{db}}.annotation_items FINAL "
        "WHERE queue_id = {queue:String} ORDER BY position",
        {"queue": queue_id},
    )
    return [_item(row) for row in rows]


def items_of_entity(store: Store, run_id: str, entity_id: str) -> list[ItemRow]:
    """The queue items (of any queue) that are ``entity_id`` of ``run_id``."""
    rows = store.rows(
        f"SELECT {_ITEM_COLUMNS} FROM {{db}}.annotation_items FINAL "
        "WHERE run_id = {run:String} AND entity_id = {entity:String} ORDER BY queue_id, position",
        {"run": run_id, "entity": entity_id},
    )
    return [_item(row) for row in rows]


def _item(row: tuple[Any, ...]) -> ItemRow:
    q, pos, e, r, s, ph, d, t, c = row
    return ItemRow(str(q), int(pos), str(e), str(r), None if s is None else int(s), str(ph),
                   str(d), str(t), int(c))  # fmt: skip


def events(store: Store, queue_ids: Sequence[str]) -> list[EventRow]:
    """The history of ``queue_ids``, in order (by queue, then ``seq``)."""
    if not queue_ids:
        return []
    rows = store.rows(
        f"SELECT {_EVENT_COLUMNS} FROM {{db}}.annotation_events "
        "WHERE queue_id IN {queues:Array(String)} ORDER BY queue_id, seq",
        {"queues": list(queue_ids)},
    )
    return [
        EventRow(str(q), int(s), int(p), str(a), str(act), str(lb), _utc(at))
        for q, s, p, a, act, lb, at in rows
    ]


def append_events(store: Store, rows: Sequence[EventRow]) -> None:
    names = [c.strip() for c in _EVENT_COLUMNS.split(",")]
    store.insert_columns("annotation_events", {n: [getattr(r, n) for r in rows] for n in names})


def delete_label(
    store: Store,
    *,
    project_id: str,
    run_id: str,
    judge: str,
    version: str,
    level: str,
    entity_id: str,
) -> None:
    """Remove an entity's stored label from ``entity_metadata`` (its last label was undone)."""
    store.command(
        "DELETE FROM {db}.entity_metadata WHERE project_id = {project:String} "
        "AND run_id = {run:String} AND judge = {judge:String} AND judge_version = {version:String} "
        "AND entity_level = {level:String} AND entity_id = {entity:String}",
        {"project": project_id, "run": run_id, "judge": judge, "version": version,
         "level": level, "entity": entity_id},
    )  # fmt: skip


def _utc(value: datetime) -> datetime:
    """A stored time (read back naive, in UTC) as an aware UTC datetime."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value
