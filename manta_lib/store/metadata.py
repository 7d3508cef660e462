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
from typing import Any

from pydantic import BaseModel

from manta_lib.entities import MetadataOutput, new_output
from manta_lib.errors import PersistenceError
from manta_lib.models import EntityLevel
from manta_lib.store.client import Store
from manta_lib.store.result_key import ResultKey
from manta_lib.store.trace_queries import TraceFilter

log = logging.getLogger(__name__)

#: Levels whose entities belong to one datapoint, so a datapoint hash shard selects them.
SHARDED_LEVELS = (EntityLevel.TRACE, EntityLevel.DATAPOINT, EntityLevel.DATAPOINT_ACROSS_STEPS)

_TYPED_COLUMNS = ("value_type", "value_number", "value_string", "value_bool", "value_json")
STATUS_COLUMN = "__status__"
ERROR_COLUMN = "__error__"
ERROR_AT_COLUMN = "__error_at__"
METADATA_COLUMNS = (
    "project_id",
    "run_id",
    "judge",
    "entity_level",
    "entity_id",
    "datapoint_id",
    "step_number",
    "phase",
    "column",
    "value_type",
    "value_number",
    "value_string",
    "value_bool",
    "value_json",
    "judge_version",
    "computed_at",
)


def _metadata_arrow_table(columns: dict[str, list[Any]]) -> Any:
    """The buffered columns as an Arrow table typed like the entity_metadata DDL."""
    import pyarrow as pa  # deferred: only a flush needs it, and its import is slow

    types = {
        "value_number": pa.float64(),
        "value_bool": pa.bool_(),
        "step_number": pa.int64(),
        "computed_at": pa.timestamp("us", tz="UTC"),
    }
    return pa.table(
        {name: pa.array(columns[name], type=types.get(name, pa.string())) for name in columns}
    )


def utc_now() -> datetime:
    return datetime.now(UTC)


def _typed(value: Any) -> tuple[str, float | None, str | None, bool | None, str | None]:
    """(value_type, number, string, bool, json) for one JSON-mode value."""
    kind = type(value)
    if kind is str:
        return "string", None, value, None, None
    if kind is int or kind is float:
        return "number", float(value), None, None, None
    if value is None:
        return "null", None, None, None, None
    if isinstance(value, bool):
        return "boolean", None, None, value, None
    if isinstance(value, int | float):
        return "number", float(value), None, None, None
    if isinstance(value, str):
        return "string", None, value, None, None
    return "json", None, None, None, json.dumps(value, separators=(",", ":"), sort_keys=True)


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
    """Buffers outcomes and writes them to entity_metadata in column-oriented batches.

    Thread-safe: map threads add each outcome as it completes. What is buffered is written when
    ``flush_rows`` rows are waiting, on :meth:`flush`, and, while :meth:`flushing_every` runs,
    by a timer thread every ``flush_seconds`` whether or not anything new arrived: a killed
    process loses at most the last ``flush_seconds`` of completed work. Adding never waits for
    an insert in progress (the buffer is swapped, then written outside the buffer's lock).
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
        self._buffer: dict[str, list[Any]] = _empty_buffer()
        self._buffered_entities = 0
        self._lock = threading.Lock()  # guards the buffer
        self._write_lock = threading.Lock()  # one insert at a time, in buffer order
        self._timer_error: BaseException | None = None

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
        block = _encode_block(items)
        count = len(block["entity_id"])
        with self._lock:
            buf = self._buffer
            for name, values in block.items():
                buf[name].extend(values)
            buf["run_id"].extend([run_id] * count)
            buf["entity_level"].extend([level.value] * count)
            buf["judge_version"].extend([judge_version] * count)
            buf["computed_at"].extend([computed_at] * count)
            self._buffered_entities += len(items)
            due = len(buf["entity_id"]) >= self.flush_rows
        if due:
            self.flush()

    def flush(self) -> None:
        """Write everything buffered now."""
        with self._write_lock:
            with self._lock:
                buffer, self._buffer = self._buffer, _empty_buffer()
                entities, self._buffered_entities = self._buffered_entities, 0
            self._write(buffer, entities)

    @contextmanager
    def flushing_every(self, seconds: float | None = None) -> Iterator[MetadataWriter]:
        """Flush every ``seconds`` (default ``flush_seconds``) from a timer thread, and once
        more on exit; an insert that failed in the timer is raised on exit."""
        interval = self.flush_seconds if seconds is None else seconds
        stop = threading.Event()

        def tick() -> None:
            while not stop.wait(interval):
                try:
                    self.flush()
                except BaseException as exc:  # noqa: BLE001 - re-raised on exit
                    self._timer_error = exc
                    return

        timer = threading.Thread(target=tick, name="manta-flush", daemon=True)
        timer.start()
        try:
            yield self
        finally:
            stop.set()
            timer.join()
            self.flush()
            if self._timer_error is not None:
                error, self._timer_error = self._timer_error, None
                raise error

    def _write(self, buffer: dict[str, list[Any]], entities: int) -> None:
        count = len(buffer["entity_id"])
        if not count:
            return
        started = time.perf_counter()
        buffer["project_id"] = [self.project_id] * count
        buffer["judge"] = [self.judge] * count
        try:
            self.store.insert_arrow("entity_metadata", _metadata_arrow_table(buffer))
        except Exception as exc:  # noqa: BLE001 - re-raised with context
            raise PersistenceError(
                f"writing {count} rows to {self.store.database}.entity_metadata failed: {exc}"
            ) from exc
        self.rows_written += count
        self.entities_written += entities
        self.seconds_spent += time.perf_counter() - started


#: One computed entity as the writer takes it:
#: (entity_id, output, error, error_at, datapoint_id, step_number, phase).
EntityResult = tuple[
    str, BaseModel | None, str | None, str | None, str | None, int | None, str | None
]
_NUMBER = frozenset({int, float})


def _encode_block(items: Sequence[EntityResult]) -> dict[str, list[Any]]:
    """The entity key and typed value columns of ``items``, field by field."""
    block: dict[str, list[Any]] = {
        name: []
        for name in ("entity_id", "datapoint_id", "step_number", "phase", "column", *_TYPED_COLUMNS)
    }
    by_fields: dict[tuple[str, ...], tuple[list[EntityResult], list[dict[str, Any]]]] = {}
    for item in items:
        if item[1] is not None:
            values = item[1].model_dump(mode="json")
            group = by_fields.setdefault(tuple(values), ([], []))
            group[0].append(item)
            group[1].append(values)
    for fields, (owners, rows) in by_fields.items():
        for name in fields:
            _extend_column(block, owners, name, [row[name] for row in rows])
    _extend_strings(block, items, STATUS_COLUMN, ["ok" if i[2] is None else "error" for i in items])
    _extend_strings(block, items, ERROR_COLUMN, [i[2] or "" for i in items])
    failed = [i for i in items if i[3]]
    if failed:
        _extend_strings(block, failed, ERROR_AT_COLUMN, [str(i[3]) for i in failed])
    return block


def _extend_keys(block: dict[str, list[Any]], owners: Sequence[EntityResult], column: str) -> int:
    block["entity_id"].extend([o[0] for o in owners])
    block["datapoint_id"].extend([o[4] or "" for o in owners])
    block["step_number"].extend([o[5] for o in owners])
    block["phase"].extend([o[6] or "" for o in owners])
    block["column"].extend([column] * len(owners))
    return len(owners)


def _extend_strings(
    block: dict[str, list[Any]], owners: Sequence[EntityResult], column: str, values: list[str]
) -> None:
    count = _extend_keys(block, owners, column)
    block["value_type"].extend(["string"] * count)
    block["value_number"].extend([None] * count)
    block["value_string"].extend(values)
    block["value_bool"].extend([None] * count)
    block["value_json"].extend([None] * count)


def _extend_column(
    block: dict[str, list[Any]], owners: Sequence[EntityResult], column: str, values: list[Any]
) -> None:
    """One output field of many entities; a column of one plain type skips the per-value
    type dispatch."""
    kinds = set(map(type, values))
    if kinds == {str}:
        _extend_strings(block, owners, column, values)
        return
    count = _extend_keys(block, owners, column)
    if kinds <= _NUMBER:
        block["value_type"].extend(["number"] * count)
        block["value_number"].extend(map(float, values))
        block["value_string"].extend([None] * count)
        block["value_bool"].extend([None] * count)
        block["value_json"].extend([None] * count)
        return
    typed = list(map(_typed, values))
    for name, part in zip(_TYPED_COLUMNS, zip(*typed, strict=True), strict=True):
        block[name].extend(part)


def _empty_buffer() -> dict[str, list[Any]]:
    return {name: [] for name in METADATA_COLUMNS}


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
