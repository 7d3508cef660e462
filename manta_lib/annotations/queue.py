"""Annotation queues: sampling, hand-out, labels, skips and undo over the store.

**Concurrency rule.** ClickHouse has no row locks, so every write of a queue (a hand-out, a
label, a skip, an undo) runs under one lock per store in this process, and reads the queue's
history, decides and appends to it inside that lock: two clients of one process (two explorer
tabs, two threads) can never be handed the same item beyond its share of copies, and no label
is lost (the history is append-only; nothing is overwritten). Embedded chDB is opened by one
process, the explorer is that process, so this covers it. With a ClickHouse server, run one
annotating process per store (one ``manta explore --annotate``); two processes writing one
queue at once are not coordinated.

**Hand-out.** An item is labelled by ``copies`` annotators (2 for the overlap share, else 1).
``next_item`` gives an annotator the lowest-positioned item they already hold unfinished, else
the first item they never touched whose holders (annotators who labelled it, or leased it less
than :data:`LEASE_SECONDS` ago) are fewer than its copies, and leases it to them. A skip frees
the item for others (never handed back to whoever skipped it); an expired lease frees it too.

**Labels.** Each save is appended to the history with who and when; the entity's current label
(the latest saved by any annotator, with an ``annotator`` column saying whose) is written to
``entity_metadata`` under judge = the task's name and version = the task's schema hash, so it
reads like any judge's result. Undo pops the annotator's last save or skip; the entity's stored
label is rewritten from what remains (or removed when nothing does).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, create_model

from manta_lib.annotations.sampling import Candidate, parse_stratify, stratified_sample
from manta_lib.annotations.task import ANNOTATOR_COLUMN, AnnotationTask
from manta_lib.errors import AnnotationError
from manta_lib.models import EntityLevel
from manta_lib.results.catalog import closest
from manta_lib.results.conditions import compile_trace_condition
from manta_lib.store import Store
from manta_lib.store import annotations as sql
from manta_lib.store.metadata import MetadataWriter
from manta_lib.store.trace_queries import TraceFilter

log = logging.getLogger(__name__)

#: A hand-out not finished (labelled or skipped) within this many seconds goes to others.
LEASE_SECONDS = 30 * 60

_LOCKS: dict[tuple[str, str], threading.RLock] = {}
_LOCKS_GUARD = threading.Lock()
# A queue's definition and items, and a task version's fields, never change once stored:
# they are read once per process (a label then costs two reads and two writes, not seven).
_QUEUES: dict[tuple[str, str, str], tuple[sql.QueueRow, list[sql.ItemRow]]] = {}
_TASKS: dict[tuple[str, str, str, str], AnnotationTask] = {}
# Each queue's state, folded from its history and brought up to date with the events appended
# since (one small read); only ever used under the store's lock.
_STATES: dict[tuple[str, str, str], _State] = {}


def _store_key(store: Store) -> tuple[str, str]:
    return (str(store.settings.clickhouse_dsn), store.database)


def _store_lock(store: Store) -> threading.RLock:
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(_store_key(store), threading.RLock())


@dataclass(frozen=True)
class QueueItem:
    """One item to label: an entity of a run at its position in the queue.

    ``trace_id`` is set for trace-level tasks, None for datapoint-group tasks (whose
    ``entity_id`` is ``"{datapoint_id}@{step_number}"``). ``copies``: how many annotators
    label it (2 for the overlap share).
    """

    queue_id: str
    position: int
    entity_id: str
    run_id: str
    step_number: int | None
    phase: str
    datapoint_id: str
    trace_id: str | None
    copies: int = 1


@dataclass(frozen=True)
class QueueProgress:
    """How far a queue is: items with at least one label, items skipped and not labelled, and
    labels per annotator. ``double_labelled``: overlap items labelled by two annotators."""

    total: int
    labelled: int
    skipped: int
    per_annotator: dict[str, int]
    overlap_total: int = 0
    double_labelled: int = 0


@dataclass(frozen=True)
class QueueSummary(sql.QueueRow):
    """A stored queue: its definition and progress."""

    progress: QueueProgress


@dataclass(frozen=True)
class StoredLabel:
    """One annotator's current label of one queue item."""

    queue_id: str
    position: int
    task: str
    task_version: str
    run_id: str
    entity_id: str
    annotator: str
    values: dict[str, Any]
    labelled_at: datetime
    #: Earlier labels of the same item by the same annotator (oldest first): the revisions.
    history: tuple[dict[str, Any], ...] = ()


@dataclass
class _Mark:
    action: str  # lease | label | skip
    at: datetime
    seq: int
    values: dict[str, Any] | None = None


@dataclass
class _State:
    """A queue's state folded from its history."""

    marks: dict[tuple[int, str], _Mark] = field(default_factory=dict)
    stacks: dict[str, list[tuple[int, _Mark | None]]] = field(default_factory=dict)
    revisions: dict[tuple[int, str], list[dict[str, Any]]] = field(default_factory=dict)
    last_seq: int = 0
    last_at: datetime | None = None


def _apply(state: _State, event: sql.EventRow) -> None:
    """Fold one more event (the next ``seq``) into ``state``."""
    key = (event.position, event.annotator)
    state.last_seq = max(state.last_seq, event.seq)
    state.last_at = event.at if state.last_at is None else max(state.last_at, event.at)
    mark = state.marks.get(key)
    if event.action == "lease":
        if mark is None or mark.action == "lease":
            state.marks[key] = _Mark("lease", event.at, event.seq)
    elif event.action in ("label", "skip"):
        state.stacks.setdefault(event.annotator, []).append((event.position, mark))
        values = json.loads(event.label) if event.action == "label" else None
        if values is not None:
            state.revisions.setdefault(key, []).append(values)
        state.marks[key] = _Mark(event.action, event.at, event.seq, values)
    elif event.action == "undo":
        stack = state.stacks.get(event.annotator)
        if not stack:
            return
        position, previous = stack.pop()
        undone_key = (position, event.annotator)
        undone = state.marks.get(undone_key)
        if undone is not None and undone.action == "label" and state.revisions.get(undone_key):
            state.revisions[undone_key].pop()
        if previous is None or previous.action == "lease":
            state.marks[undone_key] = _Mark("lease", event.at, event.seq)
        else:
            state.marks[undone_key] = previous


class Annotations:
    """Label tasks and annotation queues of one store (see module docs for the rules).

    Thread-safe: any number of threads (the explorer's request handlers) may share one, or
    open their own over the same store.

    Example::

        ann = Annotations(store)
        queue = ann.create_queue(task, "run_a", sample=100, stratify="step", seed=7)
        item = ann.next_item(queue.queue_id, "ana")
        ann.save_label(queue.queue_id, item.position, "ana", {"category": "looping"})
    """

    def __init__(self, store: Store | Any) -> None:
        self.store: Store = store if isinstance(store, Store) else store.store
        self._lock = _store_lock(self.store)
        self._stored_models: dict[tuple[str, str], type[BaseModel]] = {}

    # ---- tasks ---------------------------------------------------------------------------

    def register_task(self, task: AnnotationTask) -> str:
        """Store ``task`` (its fields, level and version) so the CLI and the explorer can
        rebuild it; returns its version. Registering the same schema again changes nothing."""
        with self._lock:
            known = {v for _, v, _, _ in sql.task_specs(self.store, task.name)}
            if task.version not in known:
                sql.save_task(
                    self.store, task.name, task.version, task.level.value, task.spec(), _now()
                )
        return task.version

    def tasks(self) -> list[AnnotationTask]:
        """Every stored task at its latest version."""
        latest: dict[str, str] = {}
        for name, _, spec, _ in sql.task_specs(self.store):
            latest.setdefault(name, spec)
        return [AnnotationTask.from_spec(spec) for spec in latest.values()]

    def get_task(self, name: str, version: str | None = None) -> AnnotationTask:
        """A stored task (its latest version unless ``version``)."""
        specs = sql.task_specs(self.store, name)
        for _, stored_version, spec, _ in specs:
            if version is None or stored_version == version:
                return AnnotationTask.from_spec(spec)
        if specs:
            raise AnnotationError(
                f"task {name!r} has no version {version!r} (versions: "
                f"{', '.join(v for _, v, _, _ in specs)})"
            )
        names = sorted({t for t, _, _, _ in sql.task_specs(self.store)})
        raise AnnotationError(
            f"no label task {name!r}{closest(name, names, 'tasks')} (declare one with "
            f"`manta annotate task {name} --category a,b,c` or Annotations.register_task)"
        )

    def task(self, queue_id: str) -> AnnotationTask:
        """The task of ``queue_id``, rebuilt from the stored schema."""
        queue = self._queue(queue_id)
        key = (*_store_key(self.store), queue.task, queue.task_version)
        if key not in _TASKS:
            _TASKS[key] = self.get_task(queue.task, queue.task_version)
        return _TASKS[key]

    # ---- queues --------------------------------------------------------------------------

    def create_queue(
        self,
        task: AnnotationTask | str,
        run_id: str,
        *,
        sample: int,
        stratify: str | None = None,
        where: str | None = None,
        seed: int = 0,
        overlap: float = 0.0,
        traces: Mapping[str, Any] | None = None,
    ) -> QueueSummary:
        """Sample ``sample`` entities of ``run_id`` (those whose traces match the results
        condition ``where``, e.g. ``"failure_modes.category != 'passed'"``, and the trace
        filters ``traces``, e.g. ``{"phase": "train", "max_score": 0.4}``), stratified by
        ``step`` or ``phase``, and store them as a queue. The same arguments over the same
        traces give the same queue (same id, same items in the same order): creating it again
        returns the stored one."""
        filters = dict(traces or {})
        reserved = {"run_id", "results", "shards", "shard_count", "unmapped"}
        unknown = sorted(
            (set(filters) - set(TraceFilter.__dataclass_fields__)) | (set(filters) & reserved)
        )
        if unknown:
            raise AnnotationError(
                f"unknown trace filter(s) {', '.join(unknown)} for a queue (e.g. phase, step, "
                f"status, min_score, max_score, datapoint_id, model_name, meta)"
            )
        if isinstance(task, str):
            task = self.get_task(task)
        self.register_task(task)
        strata = parse_stratify(stratify)
        project = sql.run_project(self.store, run_id)
        if project is None:
            raise AnnotationError(f"run {run_id!r} has no traces in {self.store.describe()}")
        definition = json.dumps(
            [task.name, task.version, run_id, sample, strata, where or "", seed, overlap]
            + ([filters] if filters else []),
            sort_keys=True,
            default=str,
        )
        condition = "; ".join(
            ([where] if where else []) + [f"{k}={v!r}" for k, v in sorted(filters.items())]
        )
        queue_id = f"{task.name}-{hashlib.sha256(definition.encode()).hexdigest()[:8]}"
        with self._lock:
            existing = sql.queues(self.store, queue_id)
            if existing:
                log.info("queue %s exists already (same definition): reusing it", queue_id)
                return self._summary(existing[0])
            results = (
                compile_trace_condition(self.store, where, run_ids=(run_id,)) if where else None
            )
            flt = TraceFilter(run_id=run_id, results=results, **filters)
            rows = sql.candidates(self.store, flt, task.level)
            if not rows:
                raise AnnotationError(
                    f"no {task.level.value} of run {run_id!r} matches {condition!r}: nothing "
                    f"to label"
                    if condition
                    else f"run {run_id!r} has no traces to label"
                )
            drawn = stratified_sample(
                [Candidate(*row) for row in rows], sample, stratify=strata, seed=seed,
                overlap=overlap,
            )  # fmt: skip
            items = [
                sql.ItemRow(queue_id, position, c.entity_id, run_id, c.step_number, c.phase,
                            c.datapoint_id, c.trace_id, copies)
                for position, (c, copies) in enumerate(drawn)
            ]  # fmt: skip
            queue = sql.QueueRow(
                queue_id, project, task.name, task.version, run_id, task.level.value,
                sample, strata, condition, seed, overlap, _now(),
            )  # fmt: skip
            sql.save_queue(self.store, queue, items)
            if len(items) < sample:
                log.warning(
                    "queue %s: only %d %s(s) match, fewer than --sample %d: all are in the queue",
                    queue_id, len(items), task.level.value, sample,
                )  # fmt: skip
            return self._summary(queue)

    def import_labels(
        self,
        task: AnnotationTask | str,
        run_id: str,
        labels: Sequence[tuple[str, str, dict[str, Any]]],
        *,
        source: str,
    ) -> QueueSummary:
        """Store labels made elsewhere: ``(entity_id, annotator, values)`` in the order they
        were made (a trace id, or ``datapoint@step`` for a datapoint task). All are validated
        first; one bad label stores nothing. They form a queue of their own (id derived from
        ``source`` and the labels, so importing the same labels again changes nothing) and
        are stored like labels given in a queue, history included."""
        if isinstance(task, str):
            task = self.get_task(task)
        if not labels:
            raise AnnotationError(f"{source}: no labels to import")
        checked = []
        for number, (entity, annotator, values) in enumerate(labels, start=1):
            try:
                name = _annotator(annotator)
                model = task.validate(dict(values))
            except AnnotationError as exc:
                raise AnnotationError(f"{source}, label {number} ({entity}): {exc}") from None
            checked.append((entity, name, model.model_dump(mode="json")))
        self.register_task(task)
        project = sql.run_project(self.store, run_id)
        if project is None:
            raise AnnotationError(f"{source}: run {run_id!r} has no traces in this store")
        entities = list(dict.fromkeys(entity for entity, _, _ in checked))
        wanted = set(entities)
        if task.level == EntityLevel.TRACE:
            flt = TraceFilter(run_id=run_id, trace_ids=entities)
        else:
            flt = TraceFilter(run_id=run_id, datapoint_id=sorted({e.split("@")[0] for e in wanted}))
        found = {row[0]: Candidate(*row) for row in sql.candidates(self.store, flt, task.level)}
        missing = [e for e in entities if e not in found]
        if missing:
            raise AnnotationError(
                f"{source}: {len(missing)} {task.level.value}(s) are not in run {run_id!r}: "
                f"{', '.join(missing[:5])}{' …' if len(missing) > 5 else ''}"
            )
        digest = hashlib.sha256(
            json.dumps([task.version, run_id, checked], sort_keys=True).encode()
        ).hexdigest()[:8]
        queue_id = f"{task.name}-import-{digest}"
        with self._lock:
            existing = sql.queues(self.store, queue_id)
            if existing:
                log.info("%s: these labels were imported already (queue %s)", source, queue_id)
                return self._summary(existing[0])
            annotators: dict[str, set[str]] = {}
            for entity, name, _ in checked:
                annotators.setdefault(entity, set()).add(name)
            items = [
                sql.ItemRow(queue_id, position, e, run_id, found[e].step_number, found[e].phase,
                            found[e].datapoint_id, found[e].trace_id, len(annotators[e]))
                for position, e in enumerate(entities)
            ]  # fmt: skip
            queue = sql.QueueRow(
                queue_id, project, task.name, task.version, run_id, task.level.value,
                len(items), "none", f"imported from {source}", 0, 0.0, _now(),
            )  # fmt: skip
            sql.save_queue(self.store, queue, items)
            positions = {e: i for i, e in enumerate(entities)}
            start = _now()
            events = [
                sql.EventRow(
                    queue_id,
                    seq,
                    positions[entity],
                    name,
                    "label",
                    json.dumps(values, sort_keys=True),
                    start + timedelta(microseconds=seq),
                )  # fmt: skip
                for seq, (entity, name, values) in enumerate(checked, start=1)
            ]
            sql.append_events(self.store, events)  # one insert, however many labels
            state = self._state(queue_id)
            self._write_current(task, items, state)
            return self._summary(queue)

    def queues(self) -> list[QueueSummary]:
        """Every stored queue with its progress, oldest first."""
        return [self._summary(q) for q in sql.queues(self.store)]

    def queue(self, queue_id: str) -> QueueSummary:
        return self._summary(self._queue(queue_id))

    def items(self, queue_id: str) -> list[QueueItem]:
        """The queue's items in hand-out order."""
        queue = self._queue(queue_id)
        return [_item(row, queue.level) for row in self._queue_items(queue_id)]

    def item(self, queue_id: str, position: int) -> QueueItem:
        queue = self._queue(queue_id)
        return _item(self._item_row(queue_id, position), queue.level)

    def progress(self, queue_id: str) -> QueueProgress:
        self._queue(queue_id)
        return self._progress(queue_id)

    # ---- hand-out and labels -------------------------------------------------------------

    def next_item(self, queue_id: str, annotator: str) -> QueueItem | None:
        """The item ``annotator`` should label next (see module docs), leased to them; None
        when nothing is left for them."""
        annotator = _annotator(annotator)
        queue = self._queue(queue_id)
        with self._lock:
            rows = self._queue_items(queue_id)
            state = self._state(queue_id)
            now = _now()
            fresh = now - timedelta(seconds=LEASE_SECONDS)

            held: dict[int, int] = {}  # position -> annotators holding it (one pass)
            for (pos, _), holding in state.marks.items():
                if holding.action == "label" or (holding.action == "lease" and holding.at > fresh):
                    held[pos] = held.get(pos, 0) + 1

            def holders(position: int) -> int:
                return held.get(position, 0)

            for row in rows:
                mark = state.marks.get((row.position, annotator))
                if (
                    mark is not None
                    and mark.action == "lease"
                    and (mark.at > fresh or holders(row.position) < row.copies)
                ):
                    if mark.at <= fresh:  # expired but still free: renew it
                        self._append(state, queue_id, row.position, annotator, "lease")
                    return _item(row, queue.level)
            for row in rows:
                if (row.position, annotator) in state.marks:
                    continue
                if holders(row.position) < row.copies:
                    self._append(state, queue_id, row.position, annotator, "lease")
                    return _item(row, queue.level)
        return None

    def save_label(
        self, queue_id: str, position: int, annotator: str, values: dict[str, object]
    ) -> StoredLabel:
        """Validate ``values`` against the task and store them as ``annotator``'s label of the
        item (a second save revises it; the history keeps both). Raises
        :class:`AnnotationError` (naming the field, the value and the fix) and stores nothing
        when invalid."""
        annotator = _annotator(annotator)
        task = self.task(queue_id)
        model = task.validate(dict(values))
        row = self._item_row(queue_id, position)
        stored = model.model_dump(mode="json")
        with self._lock:
            state = self._state(queue_id)
            event = self._append(state, queue_id, position, annotator, "label", stored)
            self._write_current(task, row, state)
        return StoredLabel(
            queue_id, position, task.name, task.version, row.run_id, row.entity_id, annotator,
            stored, event.at,
        )  # fmt: skip

    def skip(self, queue_id: str, position: int, annotator: str) -> None:
        """``annotator`` passes on the item: it goes to someone else, never back to them."""
        annotator = _annotator(annotator)
        task = self.task(queue_id)
        row = self._item_row(queue_id, position)
        with self._lock:
            state = self._state(queue_id)
            self._append(state, queue_id, position, annotator, "skip")
            self._write_current(task, row, state)

    def undo(self, queue_id: str, annotator: str) -> QueueItem | None:
        """Revert ``annotator``'s last label or skip in the queue and return that item (it is
        theirs to label again); None when they have nothing to undo."""
        annotator = _annotator(annotator)
        queue = self._queue(queue_id)
        task = self.task(queue_id)
        with self._lock:
            state = self._state(queue_id)
            stack = state.stacks.get(annotator)
            if not stack:
                return None
            position = stack[-1][0]
            row = self._item_row(queue_id, position)
            self._append(state, queue_id, position, annotator, "undo")
            self._write_current(task, row, state)
            return _item(row, queue.level)

    def labels(self, queue_id: str) -> list[StoredLabel]:
        """Every annotator's current label of every item of the queue."""
        queue = self._queue(queue_id)
        rows = {r.position: r for r in self._queue_items(queue_id)}
        with self._lock:
            return _labels(queue, rows, self._state(queue_id))

    def labels_for(self, run_id: str, entity_id: str) -> list[StoredLabel]:
        """Every current label of one entity (a trace id, or ``datapoint@step``), over all
        queues, oldest first: what a trace page shows."""
        found = sql.items_of_entity(self.store, run_id, entity_id)
        by_queue: dict[str, list[sql.ItemRow]] = {}
        for row in found:
            by_queue.setdefault(row.queue_id, []).append(row)
        labels: list[StoredLabel] = []
        for queue_id, rows in by_queue.items():
            queue = self._queue(queue_id)
            with self._lock:
                labels += _labels(queue, {r.position: r for r in rows}, self._state(queue_id))
        return sorted(labels, key=lambda label: label.labelled_at)

    def annotator_labels(self, task: str, run_id: str) -> list[StoredLabel]:
        """Every annotator's current label of ``task`` on ``run_id`` (all queues), in order
        of labelling: what inter-annotator agreement is computed on."""
        labels: list[StoredLabel] = []
        for queue in sql.queues(self.store):
            if queue.task == task and queue.run_id == run_id:
                labels += self.labels(queue.queue_id)
        return sorted(labels, key=lambda label: label.labelled_at)

    # ---- internals -----------------------------------------------------------------------

    def _queue(self, queue_id: str) -> sql.QueueRow:
        return self._stored_queue(queue_id)[0]

    def _queue_items(self, queue_id: str) -> list[sql.ItemRow]:
        return self._stored_queue(queue_id)[1]

    def _stored_queue(self, queue_id: str) -> tuple[sql.QueueRow, list[sql.ItemRow]]:
        key = (*_store_key(self.store), queue_id)
        cached = _QUEUES.get(key)
        if cached is not None:
            return cached
        found = sql.queues(self.store, queue_id)
        if not found:
            known = [q.queue_id for q in sql.queues(self.store)]
            raise AnnotationError(
                f"no annotation queue {queue_id!r}{closest(queue_id, known, 'queues')} "
                f"(`manta annotate status` lists them)"
            )
        stored = (found[0], sql.items(self.store, queue_id))  # the queue row follows its items
        _QUEUES[key] = stored
        return stored

    def _item_row(self, queue_id: str, position: int) -> sql.ItemRow:
        rows = self._queue_items(queue_id)
        if 0 <= position < len(rows) and rows[position].position == position:
            return rows[position]
        raise AnnotationError(
            f"queue {queue_id!r} has no item at position {position} (positions 0 to "
            f"{len(rows) - 1})"
        )

    def _summary(self, queue: sql.QueueRow) -> QueueSummary:
        definition = {f.name: getattr(queue, f.name) for f in fields(queue)}
        return QueueSummary(**definition, progress=self._progress(queue.queue_id))

    def _progress(self, queue_id: str) -> QueueProgress:
        rows = self._queue_items(queue_id)
        with self._lock:
            marks = list(self._state(queue_id).marks.items())
        labelled: dict[int, set[str]] = {}
        skipped: set[int] = set()
        per_annotator: dict[str, int] = {}
        for (position, who), mark in marks:
            if mark.action == "label":
                labelled.setdefault(position, set()).add(who)
                per_annotator[who] = per_annotator.get(who, 0) + 1
            elif mark.action == "skip":
                skipped.add(position)
        overlap = [r.position for r in rows if r.copies > 1]
        return QueueProgress(
            total=len(rows),
            labelled=len(labelled),
            skipped=len(skipped - set(labelled)),
            per_annotator=dict(sorted(per_annotator.items())),
            overlap_total=len(overlap),
            double_labelled=sum(len(labelled.get(p, ())) >= 2 for p in overlap),
        )

    def _state(self, queue_id: str) -> _State:
        """The queue's state, up to date (caller holds the lock): the cached fold plus the
        events appended since, by this process or another (one read of the tail)."""
        key = (*_store_key(self.store), queue_id)
        state = _STATES.setdefault(key, _State())
        for event in sql.events(self.store, [queue_id], after=state.last_seq):
            _apply(state, event)
        return state

    def _append(
        self,
        state: _State,
        queue_id: str,
        position: int,
        annotator: str,
        action: str,
        values: dict[str, Any] | None = None,
    ) -> sql.EventRow:
        """Append one event (caller holds the lock) and fold it into ``state``."""
        at = _now()
        if state.last_at is not None and at <= state.last_at:
            at = state.last_at + timedelta(microseconds=1)
        event = sql.EventRow(
            queue_id, state.last_seq + 1, position, annotator, action,
            "" if values is None else json.dumps(values, sort_keys=True), at,
        )  # fmt: skip
        sql.append_events(self.store, [event])
        _apply(state, event)
        return event

    def _write_current(
        self, task: AnnotationTask, rows: sql.ItemRow | Sequence[sql.ItemRow], state: _State
    ) -> None:
        """Write the items' current labels (each the latest of any annotator) to
        entity_metadata in one insert; remove the stored label of an item with none left."""
        items = [rows] if isinstance(rows, sql.ItemRow) else list(rows)
        if not items:
            return
        queue = self._queue(items[0].queue_id)
        latest: dict[int, tuple[_Mark, str]] = {}
        for (position, who), mark in state.marks.items():
            if mark.action == "label" and (
                position not in latest or mark.seq > latest[position][0].seq
            ):
                latest[position] = (mark, who)
        model = self._stored_model(task)
        results = []
        for row in items:
            if row.position not in latest:
                sql.delete_label(
                    self.store, project_id=queue.project_id, run_id=row.run_id,
                    judge=task.name, version=task.version, level=task.level.value,
                    entity_id=row.entity_id,
                )  # fmt: skip
                continue
            mark, who = latest[row.position]
            output = model(**(mark.values or {}), **{ANNOTATOR_COLUMN: who})
            results.append(
                (row.entity_id, output, None, None, row.datapoint_id, row.step_number, row.phase)
            )
        if not results:
            return
        writer = MetadataWriter(self.store, project_id=queue.project_id, judge=task.name)
        writer.add_results(
            results,
            level=task.level,
            run_id=queue.run_id,
            judge_version=task.version,
            computed_at=_now() if state.last_at is None else max(_now(), state.last_at),
        )
        writer.flush()

    def _stored_model(self, task: AnnotationTask) -> type[BaseModel]:
        key = (task.name, task.version)
        if key not in self._stored_models:
            self._stored_models[key] = create_model(
                f"{task.schema.__name__}Stored",
                __base__=task.schema,
                **{ANNOTATOR_COLUMN: (str, ...)},  # type: ignore[call-overload]
            )
        return self._stored_models[key]


def _labels(queue: sql.QueueRow, rows: dict[int, sql.ItemRow], state: _State) -> list[StoredLabel]:
    labels = []
    for (position, who), mark in sorted(state.marks.items()):
        if mark.action != "label" or position not in rows:
            continue
        row = rows[position]
        revisions = state.revisions.get((position, who), [])
        labels.append(
            StoredLabel(
                queue.queue_id,
                position,
                queue.task,
                queue.task_version,
                row.run_id,
                row.entity_id,
                who,
                dict(mark.values or {}),
                mark.at,
                tuple(revisions[:-1]),
            )  # fmt: skip
        )
    return labels


def _item(row: sql.ItemRow, level: str) -> QueueItem:
    return QueueItem(
        row.queue_id, row.position, row.entity_id, row.run_id, row.step_number, row.phase,
        row.datapoint_id, row.trace_id if level == EntityLevel.TRACE.value else None, row.copies,
    )  # fmt: skip


def _annotator(name: str) -> str:
    text = (name or "").strip()
    if not text or len(text) > 100 or any(c in text for c in "\n\r\t"):
        raise AnnotationError(
            f"annotator {name!r} is not a usable name: give a non-empty name of at most 100 "
            f"characters on one line (e.g. --annotator ana)"
        )
    return text


def _now() -> datetime:
    return datetime.now(UTC)
