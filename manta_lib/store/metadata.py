"""entity_metadata: typed value rows in, validated outputs back out.

Each computed entity is stored as one row per output column plus two bookkeeping columns,
``__status__`` (``ok`` / ``error``) and ``__error__`` (``Type: message`` or empty), all with
the judge version, ``computed_at`` and the entity's ``datapoint_id`` / ``step_number`` where
its level has them, and its ``phase`` (every level: a step or run entity is one phase's).
The table is a ReplacingMergeTree keyed by identity (project, run, judge, judge version,
level, entity, column), so rewriting an entity with the same version replaces its
values (the newest computation wins), while each version keeps its own results to compare;
reads use FINAL.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from manta_lib.entities import MetadataOutput, new_output
from manta_lib.errors import PersistenceError
from manta_lib.models import EntityLevel
from manta_lib.store.client import Store
from manta_lib.store.result_key import ResultKey
from manta_lib.store.trace_queries import TraceFilter

if TYPE_CHECKING:
    import pyarrow as pa

    from manta_lib.store.metadata_batches import EntityResult

log = logging.getLogger(__name__)

#: Levels whose entities belong to one datapoint, so a datapoint hash shard selects them.
SHARDED_LEVELS = (EntityLevel.TRACE, EntityLevel.DATAPOINT, EntityLevel.DATAPOINT_ACROSS_STEPS)

#: A writer whose timer thread has this many ``flush_rows`` waiting flushes in the caller.
_BACKLOG_FLUSHES = 4

STATUS_COLUMN = "__status__"
ERROR_COLUMN = "__error__"
ERROR_AT_COLUMN = "__error_at__"


def utc_now() -> datetime:
    return datetime.now(UTC)


def _untyped(
    value_type: str, number: float | None, string: str | None, flag: bool | None, raw: str | None
) -> Any:
    if value_type == "number":
        assert number is not None
        return int(number) if number.is_integer() and abs(number) < 2**53 else number
    if value_type == "string":
        return string
    if value_type == "boolean":
        return flag
    if value_type == "json":
        return json.loads(raw) if raw is not None else None
    return None


class MetadataWriter:
    """Buffers outcomes as Arrow record batches and writes them to entity_metadata.

    Thread-safe: map threads add each outcome as it completes. While :meth:`flushing_every`
    runs, a timer thread writes what is buffered every ``flush_seconds`` whether or not
    anything new arrived (a killed process loses at most the last ``flush_seconds`` of
    completed work), and at once when ``flush_rows`` rows are waiting, so adding does not wait
    for the insert; only a timer lagging ``_BACKLOG_FLUSHES`` flushes behind makes the adding
    thread write itself. Without the timer, the adding thread writes every ``flush_rows``
    rows. The buffer is swapped, then written outside the buffer's lock.
    """

    def __init__(
        self,
        store: Store,
        *,
        project_id: str,
        judge: str,
        flush_rows: int = 50_000,
        flush_seconds: float = 2.0,
    ) -> None:
        self.store = store
        self.project_id = project_id
        self.judge = judge
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self.rows_written = 0
        self.entities_written = 0
        self.seconds_spent = 0.0
        self._buffer: list[pa.RecordBatch] = []
        self._buffered_rows = 0
        self._buffered_entities = 0
        self._lock = threading.Lock()  # guards the buffer
        self._write_lock = threading.Lock()  # one insert at a time, in buffer order
        self._timer_error: BaseException | None = None
        self._timer_running = False
        self._wake = threading.Event()  # asks the timer thread to flush now

    def add(self, outcomes: Iterable[MetadataOutput]) -> None:
        """Encode outcomes into the buffer; write now if ``flush_rows`` rows are waiting."""
        groups: dict[tuple[str, EntityLevel, str, datetime], list[EntityResult]] = {}
        for o in outcomes:
            key = (o.run_id, o.entity_level, o.judge_version, o.computed_at)
            groups.setdefault(key, []).append(
                (
                    o.entity_id,
                    o.output,
                    o.error,
                    o.error_at,
                    o.datapoint_id,
                    o.step_number,
                    o.phase,
                )
            )
        for (run_id, level, version, computed_at), items in groups.items():
            self.add_results(
                items, level=level, run_id=run_id, judge_version=version, computed_at=computed_at
            )

    def add_results(
        self,
        items: Sequence[EntityResult],
        *,
        level: EntityLevel,
        run_id: str,
        judge_version: str,
        computed_at: datetime,
    ) -> None:
        """Encode :data:`EntityResult` tuples of one level, column by
        column (one pass per output field for the whole group, not one per value); write now
        if ``flush_rows`` rows are waiting."""
        if not items:
            return
        from manta_lib.store.metadata_batches import RowEncoder  # deferred: pyarrow

        encoder = RowEncoder(
            project_id=self.project_id,
            judge=self.judge,
            run_id=run_id,
            level=level.value,
            judge_version=judge_version,
            computed_at=computed_at,
        )
        batches = encoder.encode(
            items,
            status_column=STATUS_COLUMN,
            error_column=ERROR_COLUMN,
            error_at_column=ERROR_AT_COLUMN,
        )
        with self._lock:
            self._buffer.extend(batches)
            self._buffered_rows += sum(b.num_rows for b in batches)
            self._buffered_entities += len(items)
            rows = self._buffered_rows
        if rows < self.flush_rows:
            return
        if self._timer_running and rows < _BACKLOG_FLUSHES * self.flush_rows:
            self._wake.set()  # the timer thread inserts; the caller goes on mapping
        else:
            self.flush()  # no timer, or it lags behind: the caller waits (bounds memory)

    def flush(self) -> None:
        """Write everything buffered now."""
        with self._write_lock:
            with self._lock:
                buffer, self._buffer = self._buffer, []
                self._buffered_rows = 0
                entities, self._buffered_entities = self._buffered_entities, 0
            self._write(buffer, entities)

    @contextmanager
    def flushing_every(self, seconds: float | None = None) -> Iterator[MetadataWriter]:
        """Flush every ``seconds`` (default ``flush_seconds``) from a timer thread, and once
        more on exit; an insert that failed in the timer is raised on exit."""
        interval = self.flush_seconds if seconds is None else seconds
        stop = threading.Event()

        def tick() -> None:
            while True:
                self._wake.wait(interval)
                self._wake.clear()
                if stop.is_set():
                    return
                try:
                    self.flush()
                except BaseException as exc:  # noqa: BLE001 - re-raised on exit
                    self._timer_error = exc
                    self._timer_running = False
                    return

        timer = threading.Thread(target=tick, name="manta-flush", daemon=True)
        self._timer_running = True
        timer.start()
        try:
            yield self
        finally:
            self._timer_running = False
            stop.set()
            self._wake.set()
            timer.join()
            self.flush()
            if self._timer_error is not None:
                error, self._timer_error = self._timer_error, None
                raise error

    def _write(self, buffer: list[pa.RecordBatch], entities: int) -> None:
        if not buffer:
            return
        import pyarrow as pa  # deferred: only a flush needs it, and its import is slow

        # One chunk per column: the engine reads one large record batch far faster than many.
        table = pa.Table.from_batches(buffer).combine_chunks()
        count = table.num_rows
        started = time.perf_counter()
        try:
            self.store.insert_arrow("entity_metadata", table)
        except Exception as exc:  # noqa: BLE001 - re-raised with context
            raise PersistenceError(
                f"writing {count} rows to {self.store.database}.entity_metadata failed: {exc}"
            ) from exc
        self.rows_written += count
        self.entities_written += entities
        self.seconds_spent += time.perf_counter() - started


@dataclass(frozen=True)
class StoredEntity:
    """One entity as read back from entity_metadata."""

    entity_id: str
    values: dict[str, Any]
    ok: bool
    error: str | None
    judge_version: str
    computed_at: datetime
    error_at: str | None = None
    datapoint_id: str | None = None
    step_number: int | None = None
    phase: str | None = None


def load_status(
    store: Store, key: ResultKey, entity_ids: Sequence[str] | None = None
) -> dict[str, bool]:
    """``{entity_id: ok}`` for the entities already written with the key's judge version."""
    where, params = key.where(entity_ids)
    params["status_col"] = STATUS_COLUMN
    rows = store.rows(
        f"SELECT entity_id, value_string FROM {{db}}.entity_metadata FINAL "
        f"WHERE {where} AND column = {{status_col:String}}",
        params,
    )
    return {entity_id: status == "ok" for entity_id, status in rows}


def load_entities(
    store: Store,
    key: ResultKey,
    entity_ids: Sequence[str] | None = None,
    *,
    shards: Sequence[int] | None = None,
    shard_count: int = 64,
) -> list[StoredEntity]:
    """Every stored entity of the key's level (of its judge version, or the newest of any
    when the key has none).

    ``shards`` keeps the trace or datapoint entities of those datapoint hash shards of the run
    (the Dagster layout), selected inside the query.
    """
    level = key.level
    where, params = key.where(entity_ids, any_version=True)
    if shards is not None:
        if level not in SHARDED_LEVELS:
            raise ValueError(f"the {level.value} level is not sharded")
        shard_where, shard_params = TraceFilter(
            run_id=key.run_id, shards=shards, shard_count=shard_count
        ).where()
        params.update(shard_params)
        if level is EntityLevel.TRACE:
            where += f" AND entity_id IN (SELECT trace_id FROM {{db}}.traces WHERE {shard_where})"
        else:
            where += (
                f" AND datapoint_id IN (SELECT datapoint_id FROM {{db}}.traces WHERE {shard_where})"
            )
    rows = store.rows(
        _ENTITY_ROWS_SQL.format(
            where=where,
            order=_entity_order(level),
            block_rows=ENTITY_BLOCK_ROWS,
            spill=SPILL_SETTINGS,
        ),
        params,
    )
    return list(_fold_entities(rows, key.judge_version))


# Each column's newest row: with several versions stored, the entity's newest status names
# the version, and columns of other versions are dropped when folding. Entities come in
# scope order (step as a number, phase, datapoint, entity id): all rows of an entity share
# those keys, so they stay together for folding.
_ENTITY_ROWS_SQL = """
    SELECT entity_id, column, value_type, value_number, value_string, value_bool, value_json,
           judge_version, computed_at, datapoint_id, step_number, toString(phase)
    FROM {{db}}.entity_metadata FINAL WHERE {where}
    ORDER BY {order}entity_id, column, computed_at DESC
    LIMIT 1 BY entity_id, column
    SETTINGS max_block_size = {block_rows}, {spill}
"""


def _entity_order(level: EntityLevel) -> str:
    """The sort keys before ``entity_id``: none for traces (ids are the stream's order, read
    in table order), the scope order for the levels whose ids hold a step number."""
    return "" if level is EntityLevel.TRACE else "step_number, phase, datapoint_id, "


#: Past this many bytes ClickHouse sorts (or groups) an entity stream on disk: a stream sorted
#: by group key (not the table's order) would otherwise hold the whole level in memory.
ENTITY_SORT_BYTES = 64_000_000

#: Settings that make a sort or a GROUP BY spill to disk past ``ENTITY_SORT_BYTES``. Without
#: the last two, ClickHouse only spills blocks of at least 100 MB and sizes the threshold from
#: the machine's memory: a 3M-trace sort held 600 MB (measured in chDB 26.9).
SPILL_SETTINGS = (
    f"max_bytes_before_external_sort = {ENTITY_SORT_BYTES}, "
    f"max_bytes_before_external_group_by = {ENTITY_SORT_BYTES}, "
    "min_external_sort_block_bytes = 1000000, max_bytes_ratio_before_external_sort = 0"
)

#: Rows per block of an entity stream: values can be long texts (an LLM judge's reasons), so
#: a block is kept well below ClickHouse's default of 65,536 rows.
ENTITY_BLOCK_ROWS = 8192


def iter_entities(store: Store, key: ResultKey) -> Iterator[StoredEntity]:
    """The stored entities of the key's level and judge version, streamed in trace id order
    (traces) or scope order (step as a number, phase, datapoint: the other levels): memory
    holds one block of rows, whatever the level's size. Uses its own connection, so the
    caller may use ``store`` while iterating."""
    version = key.versioned()
    where, params = key.where(any_version=True)
    reader = store.sibling()
    try:
        with reader.stream(
            _ENTITY_ROWS_SQL.format(
                where=where,
                order=_entity_order(key.level),
                block_rows=int(ENTITY_BLOCK_ROWS),
                spill=SPILL_SETTINGS,
            ),
            params,
        ) as blocks:
            yield from _fold_entities((row for block in blocks for row in block), version)
    finally:
        reader.close()


def count_entities(store: Store, key: ResultKey) -> tuple[int, int]:
    """``(entities, failed)`` stored for the key's level and judge version, counted in
    ClickHouse."""
    where, params = key.where()
    params["status_col"] = STATUS_COLUMN
    total, failed = store.rows(
        f"SELECT count(), countIf(value_string = 'error') FROM {{db}}.entity_metadata FINAL "
        f"WHERE {where} AND column = {{status_col:String}}",
        params,
    )[0]
    return int(total), int(failed)


def error_summary(store: Store, key: ResultKey, limit: int = 20) -> list[tuple[str, int, str]]:
    """``(error, entities, first entity id)`` per distinct error of the key's level and
    judge version, most frequent first, counted in ClickHouse."""
    where, params = key.where()
    params.update({"error_col": ERROR_COLUMN, "n": int(limit)})
    rows = store.rows(
        f"SELECT value_string, count(), min(entity_id) FROM {{db}}.entity_metadata FINAL "
        f"WHERE {where} AND column = {{error_col:String}} AND value_string != '' "
        "GROUP BY value_string ORDER BY count() DESC, value_string LIMIT {n:UInt64}",
        params,
    )
    return [(str(e), int(c), str(i)) for e, c, i in rows]


def _fold_entities(
    rows: Iterable[Sequence[Any]], judge_version: str | None
) -> Iterator[StoredEntity]:
    """Entities from value rows sorted by (entity_id, column)."""
    current: str | None = None
    values: dict[str, Any] = {}
    meta: dict[str, Any] = {}

    def close_entity() -> StoredEntity | None:
        if current is None or STATUS_COLUMN not in values:
            return None
        version = meta["version"]
        if judge_version is not None and version != judge_version:
            return None
        status = values.pop(STATUS_COLUMN)
        error = values.pop(ERROR_COLUMN, "") or None
        error_at = values.pop(ERROR_AT_COLUMN, None) if error is not None else None
        values.pop(ERROR_AT_COLUMN, None)
        stale = {c for c, v in meta["versions"].items() if v != version}
        for column in stale:
            values.pop(column, None)
        return StoredEntity(
            current,
            dict(values),
            status == "ok",
            error,
            version,
            meta["at"],
            error_at,
            meta["datapoint_id"] or None,
            meta["step_number"],
            meta["phase"] or None,
        )

    for row in rows:
        entity_id, column, vtype, number, string, flag, raw, version, computed_at, dp, step = row[
            :11
        ]
        if entity_id != current:
            entity = close_entity()
            if entity is not None:
                yield entity
            current, values = entity_id, {}
            meta = {"versions": {}, "datapoint_id": dp, "step_number": step, "phase": row[11]}
        values[column] = _untyped(vtype, number, string, flag, raw)
        meta["versions"][column] = version
        if column == STATUS_COLUMN:
            meta["version"], meta["at"] = version, computed_at
    entity = close_entity()
    if entity is not None:
        yield entity


def outputs_from_stored(
    stored: Iterable[StoredEntity], key: ResultKey, schema: type[BaseModel]
) -> list[MetadataOutput]:
    """Rebuild the :class:`MetadataOutput` objects of ``key``'s entities (outputs validated
    into ``schema``)."""
    return [
        new_output(
            level=key.level,
            entity_id=entity.entity_id,
            run_id=key.run_id,
            judge=key.judge,
            judge_version=entity.judge_version,
            output=schema.model_validate(entity.values) if entity.ok else None,
            error=entity.error,
            computed_at=entity.computed_at,
            error_at=entity.error_at,
            datapoint_id=entity.datapoint_id,
            step_number=entity.step_number,
            phase=entity.phase,
        )
        for entity in stored
    ]
