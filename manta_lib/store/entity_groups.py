"""A level's stored outputs streamed group by group, pivoted in ClickHouse.

A reduce reads its children from the store: one row per child entity (its output fields as
columns, pivoted in ClickHouse from the one-row-per-value layout), sorted by the group key
(``datapoint_id`` / ``step_number`` / ``phase``), so a reduce holds one group's children at a
time, whatever the run size. ClickHouse sorts on disk past a few tens of megabytes
(:data:`~manta_lib.store.metadata.SPILL_SETTINGS`), on one engine thread
(:func:`~manta_lib.store.trace_queries.stream_read_settings`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from itertools import groupby, repeat
from operator import attrgetter
from typing import Any, NamedTuple

from pydantic import BaseModel

from manta_lib.store.client import Store
from manta_lib.store.metadata import (
    ERROR_COLUMN,
    SHARDED_LEVELS,
    SPILL_SETTINGS,
    STATUS_COLUMN,
)
from manta_lib.store.result_key import ResultKey
from manta_lib.store.trace_queries import SHARD_EXPR, stream_read_settings

#: Key columns a level's entities can be grouped by (all rows of an entity share them).
GROUP_COLUMNS = ("datapoint_id", "step_number", "phase")

#: Entities per block of the stream.
BLOCK_ROWS = 8192

_VALUES = ("value_type", "value_number", "value_string", "value_bool", "value_json")


class StoredChild(NamedTuple):
    """One stored entity as a reduce reads it: its keys, and its output (validated into the
    level's schema) or its error."""

    entity_id: str
    datapoint_id: str | None
    step_number: int | None
    phase: str | None
    output: BaseModel | None
    error: str | None


def iter_output_groups(
    store: Store,
    key: ResultKey,
    *,
    schema: type[BaseModel],
    group_by: Sequence[str],
    shards: Sequence[int] | None = None,
    shard_count: int = 64,
) -> Iterator[tuple[tuple[Any, ...], list[StoredChild]]]:
    """``(group key, outputs)`` per value of the ``group_by`` columns (some of
    ``datapoint_id``, ``step_number``, ``phase``), in group key order: the stored outputs of
    ``key`` (its level and judge version), validated into ``schema``. An empty ``group_by``
    gives one group of every entity.

    ``shards`` keeps the entities of those datapoint hash shards (the Dagster layout). Uses
    its own connection, so the caller may write with ``store`` while iterating.
    """
    unknown = [c for c in group_by if c not in GROUP_COLUMNS]
    if unknown:
        raise ValueError(f"entities group by {GROUP_COLUMNS}, not {unknown}")
    fields = list(schema.model_fields)
    level = key.level
    where, params = key.where()
    params.update(status_col=STATUS_COLUMN, error_col=ERROR_COLUMN)
    params["cols"] = [STATUS_COLUMN, ERROR_COLUMN, *fields]
    if shards is not None:
        if level not in SHARDED_LEVELS:
            raise ValueError(f"the {level.value} level is not sharded")
        params.update({"f_shards": list(shards), "f_shard_count": shard_count})
        where += f" AND {SHARD_EXPR} IN {{f_shards:Array(UInt32)}}"
    picks = []
    for index, name in enumerate(fields):
        params[f"c{index}"] = name
        picks += [f"anyIf({value}, column = {{c{index}:String}})" for value in _VALUES]
    # Within a group, scope order: (step, datapoint, entity).
    order = ", ".join(dict.fromkeys([*group_by, "step_number", "datapoint_id", "entity_id"]))
    sql = f"""
        SELECT entity_id, any(datapoint_id) AS datapoint_id, any(step_number) AS step_number,
               toString(any(phase)) AS phase,
               anyIf(value_string, column = {{status_col:String}}) AS status,
               anyIf(value_string, column = {{error_col:String}}),
               {", ".join(picks) or "0"}
        FROM {{db}}.entity_metadata FINAL
        WHERE {where} AND column IN {{cols:Array(String)}}
        GROUP BY entity_id
        HAVING status IS NOT NULL
        ORDER BY {order}
        SETTINGS max_block_size = {BLOCK_ROWS}, {SPILL_SETTINGS},
                 optimize_aggregation_in_order = 1, {stream_read_settings(store)}
    """
    reader = store.sibling()
    try:
        with reader.stream_columns(sql, params) as blocks:
            outputs = (
                child for block in blocks for child in _block_children(block, fields, schema)
            )
            key_of = _key_function(group_by)
            for group_key, group in groupby(outputs, key=key_of):
                yield group_key, list(group)
    finally:
        reader.close()


def _key_function(group_by: Sequence[str]) -> Any:
    if not group_by:
        return lambda _output: ()
    get = attrgetter(*group_by)
    if len(group_by) == 1:
        return lambda output: (get(output),)
    return get


def _block_children(
    block: Sequence[Sequence[Any]], fields: list[str], schema: type[BaseModel]
) -> Iterator[StoredChild]:
    entity_ids, datapoints, steps, phases, statuses, errors = block[:6]
    values = [_values(block[6 + 5 * i : 11 + 5 * i]) for i in range(len(fields))]
    # A field with no row in some entity is left out of that entity's payload.
    gaps = any(_MISSING in column for column in values)
    validate = schema.__pydantic_validator__.validate_python  # model_validate, minus a call
    rows = zip(*values, strict=True) if values else repeat(())
    for entity_id, datapoint, step, phase, status, error, row in zip(
        entity_ids, datapoints, steps, phases, statuses, errors, rows, strict=False
    ):
        if status == "ok":
            payload = (
                {
                    name: value
                    for name, value in zip(fields, row, strict=True)
                    if value is not _MISSING
                }
                if gaps
                else dict(zip(fields, row, strict=True))
            )
            output, failure = validate(payload), None
        else:
            output, failure = None, error or None
        yield StoredChild(entity_id, datapoint or None, step, phase or None, output, failure)


_MISSING = object()


def _values(columns: Sequence[Sequence[Any]]) -> list[Any]:
    """One field's Python values from its (type, number, string, bool, json) columns: whole
    numbers as int, JSON decoded, a field with no row as :data:`_MISSING`."""
    kinds, numbers, strings, flags, raws = columns
    distinct = set(kinds)
    if distinct == {"number"}:
        return [int(n) if n.is_integer() and abs(n) < 2**53 else n for n in numbers]
    if distinct == {"string"}:
        return list(strings)
    out: list[Any] = []
    for kind, number, string, flag, raw in zip(kinds, numbers, strings, flags, raws, strict=True):
        if kind == "number":
            out.append(int(number) if number.is_integer() and abs(number) < 2**53 else number)
        elif kind == "string":
            out.append(string)
        elif kind == "boolean":
            out.append(flag)
        elif kind == "json":
            out.append(json.loads(raw) if raw is not None else None)
        elif kind == "null":
            out.append(None)
        else:
            out.append(_MISSING)
    return out
