"""Computed entities encoded as entity_metadata rows, straight into Arrow record batches.

One batch per output field of a group of entities (and one per bookkeeping column): the
entity key arrays are built once per group and shared by its batches, constant columns are
repeated in C, and value columns are converted from one Python list each. No Python list per
table column grows with the buffer, so a writer holding many thousands of rows costs a few
bytes per value, not a Python object per value.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import pyarrow as pa
from pydantic import BaseModel

#: The entity_metadata columns an insert carries, typed like its DDL, in DDL order.
METADATA_SCHEMA = pa.schema(
    [
        ("project_id", pa.string()),
        ("run_id", pa.string()),
        ("judge", pa.string()),
        ("entity_level", pa.string()),
        ("entity_id", pa.string()),
        ("datapoint_id", pa.string()),
        ("step_number", pa.int64()),
        ("phase", pa.string()),
        ("column", pa.string()),
        ("value_type", pa.string()),
        ("value_number", pa.float64()),
        ("value_string", pa.string()),
        ("value_bool", pa.bool_()),
        ("value_json", pa.string()),
        ("judge_version", pa.string()),
        ("computed_at", pa.timestamp("us", tz="UTC")),
    ]
)

#: One computed entity as the writer takes it:
#: (entity_id, output, error, error_at, datapoint_id, step_number, phase).
EntityResult = tuple[
    str, BaseModel | None, str | None, str | None, str | None, int | None, str | None
]

_NUMBER = frozenset({int, float})
_STRING = pa.string()


def typed_value(value: Any) -> tuple[str, float | None, str | None, bool | None, str | None]:
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


class RowEncoder:
    """Encodes entities of one level, run, judge version and time (:meth:`encode`)."""

    def __init__(
        self,
        *,
        project_id: str,
        judge: str,
        run_id: str,
        level: str,
        judge_version: str,
        computed_at: datetime,
    ) -> None:
        self._constants = (project_id, run_id, judge, level)
        self._version = judge_version
        self._computed_at = pa.scalar(computed_at, type=METADATA_SCHEMA.field("computed_at").type)
        self._repeated: dict[tuple[str, int], pa.Array] = {}
        self._batches: list[pa.RecordBatch] = []

    def encode(
        self,
        items: Sequence[EntityResult],
        *,
        status_column: str,
        error_column: str,
        error_at_column: str,
    ) -> list[pa.RecordBatch]:
        """The entity_metadata rows of ``items``: one row per output field of each entity
        with an output, then the status and error rows of every entity, then the failure
        place of the failed ones."""
        self._batches = []
        by_fields: dict[tuple[str, ...], tuple[list[EntityResult], list[dict[str, Any]]]] = {}
        for item in items:
            if item[1] is not None:
                values = item[1].model_dump(mode="json")
                group = by_fields.setdefault(tuple(values), ([], []))
                group[0].append(item)
                group[1].append(values)
        all_keys = _keys(items)
        for fields, (owners, rows) in by_fields.items():
            keys = all_keys if len(owners) == len(items) else _keys(owners)
            for name in fields:
                self._field(keys, name, [row[name] for row in rows])
        self._strings(all_keys, status_column, ["ok" if i[2] is None else "error" for i in items])
        self._strings(all_keys, error_column, [i[2] or "" for i in items])
        failed = [i for i in items if i[3]]
        if failed:
            self._strings(_keys(failed), error_at_column, [str(i[3]) for i in failed])
        return self._batches

    def _repeat(self, value: str, count: int) -> pa.Array:
        key = (value, count)
        array = self._repeated.get(key)
        if array is None:
            array = self._repeated[key] = pa.repeat(pa.scalar(value, _STRING), count)
        return array

    def _add(self, keys: Sequence[pa.Array], column: str, values: Sequence[pa.Array]) -> None:
        """Rows of ``column`` for the entities of ``keys`` (entity_id, datapoint_id,
        step_number, phase arrays) with the typed value arrays ``values``."""
        count = len(keys[0])
        project_id, run_id, judge, level = self._constants
        arrays = [
            self._repeat(project_id, count),
            self._repeat(run_id, count),
            self._repeat(judge, count),
            self._repeat(level, count),
            *keys,
            self._repeat(column, count),
            *values,
            self._repeat(self._version, count),
            pa.repeat(self._computed_at, count),
        ]
        self._batches.append(pa.RecordBatch.from_arrays(arrays, schema=METADATA_SCHEMA))

    def _strings(self, keys: Sequence[pa.Array], column: str, values: list[str]) -> None:
        count = len(values)
        first = values[0] if count else ""
        if values.count(first) == count:  # one value (all "ok", all ""): repeated in C
            string = self._repeat(first, count)
        else:
            string = pa.array(values, _STRING)
        self._add(keys, column, self._value_arrays("string", count, string=string))

    def _value_arrays(
        self,
        value_type: str,
        count: int,
        *,
        number: pa.Array | None = None,
        string: pa.Array | None = None,
    ) -> list[pa.Array]:
        return [
            self._repeat(value_type, count),
            number if number is not None else pa.nulls(count, pa.float64()),
            string if string is not None else pa.nulls(count, _STRING),
            pa.nulls(count, pa.bool_()),
            pa.nulls(count, _STRING),
        ]

    def _field(self, keys: Sequence[pa.Array], column: str, values: list[Any]) -> None:
        """One output field of many entities; a field of one plain type skips the per-value
        type dispatch."""
        kinds = set(map(type, values))
        count = len(values)
        if kinds == {str}:
            self._strings(keys, column, values)
            return
        if kinds <= _NUMBER:
            numbers = pa.array(list(map(float, values)), pa.float64())
            self._add(keys, column, self._value_arrays("number", count, number=numbers))
            return
        typed = list(zip(*map(typed_value, values), strict=True))
        self._add(
            keys,
            column,
            [
                pa.array(typed[0], _STRING),
                pa.array(typed[1], pa.float64()),
                pa.array(typed[2], _STRING),
                pa.array(typed[3], pa.bool_()),
                pa.array(typed[4], _STRING),
            ],
        )


def _keys(owners: Sequence[EntityResult]) -> list[pa.Array]:
    return [
        pa.array([o[0] for o in owners], _STRING),
        pa.array([o[4] or "" for o in owners], _STRING),
        pa.array([o[5] for o in owners], pa.int64()),
        pa.array([o[6] or "" for o in owners], _STRING),
    ]
