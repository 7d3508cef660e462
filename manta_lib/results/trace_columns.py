"""Stored result columns shown next to traces: ``tool_errors.tool_errors`` on each trace row.

A column is named like a trace filter field: ``judge.column`` (the column at the trace level,
or at the only level that has it), ``judge.level.column``, or ``judge.status`` /
``judge.error``. Each trace gets the value of the entity covering it (its own result, its
datapoint's at its step, its datapoint's across steps, its step's or its run's), read from
the same table :meth:`MantaService.results` returns (each run's latest version), so a shown
value is always the value ``svc.results`` has.

Example::

    cols = resolve_columns(store, ["tool_errors.tool_errors"], run_ids=["run_a"])
    values = column_values(store, cols[0], ["run_a"])
    values.get(trace)  # None when no entity covering the trace has a result
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, NamedTuple, Protocol

from manta_lib.errors import QueryError
from manta_lib.results import catalog
from manta_lib.results.catalog import JudgeInfo, list_judges
from manta_lib.results.table import ResultsQuery, results_frame
from manta_lib.store import Store

_BOOKKEEPING = ("status", "error")
# level -> the trace attributes that name its entity
_LEVEL_KEYS: dict[str, tuple[str, ...]] = {
    "trace": ("trace_id",),
    "datapoint": ("run_id", "datapoint_id", "step_number"),
    "datapoint_across_steps": ("run_id", "datapoint_id"),
    "step": ("run_id", "step_number", "phase"),  # a step or run value is one phase's
    "run": ("run_id", "phase"),
}


class _TraceKeys(Protocol):
    @property
    def trace_id(self) -> str: ...
    @property
    def run_id(self) -> str: ...
    @property
    def datapoint_id(self) -> str: ...
    @property
    def step_number(self) -> int: ...
    @property
    def phase(self) -> str: ...


class TraceKey(NamedTuple):
    """The columns of a trace that name the entities covering it."""

    trace_id: str
    run_id: str
    datapoint_id: str
    step_number: int
    phase: str


@dataclass(frozen=True)
class ResultColumn:
    """A resolved column: ``name`` as the user wrote it, its judge, level and column."""

    name: str
    judge: str
    level: str
    column: str


@dataclass
class ColumnValues:
    """One column's values keyed by the entity each covers; :meth:`get` takes a trace."""

    column: ResultColumn
    by_entity: dict[Hashable, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # One key field: the key is its value; several: the tuple of their values.
        self.key: Callable[[Any], Hashable] = attrgetter(*_LEVEL_KEYS[self.column.level])

    def get(self, trace: _TraceKeys) -> Any:
        return self.by_entity.get(self.key(trace))


def resolve_columns(
    store: Store, names: Sequence[str], *, run_ids: Sequence[str] = ()
) -> list[ResultColumn]:
    """Check and resolve ``judge.column`` names against the judges stored for ``run_ids``.

    Raises :class:`QueryError` naming the column and the close matches when one is unknown
    or exists at several levels (then ``judge.level.column`` says which).
    """
    if not names:
        return []
    judges = {j.judge: j for j in list_judges(store, run_id=list(run_ids) or None)}
    return [_resolve(name.strip(), judges, run_ids) for name in names]


def _resolve(name: str, judges: dict[str, JudgeInfo], run_ids: Sequence[str]) -> ResultColumn:
    parts = name.split(".")
    if len(parts) not in (2, 3) or not all(parts):
        raise QueryError(
            f"result column {name!r} is not judge.column or judge.level.column, "
            f"e.g. tool_errors.tool_errors"
        )
    judge, column = parts[0], parts[-1]
    if judge not in judges:
        raise QueryError(
            f"result column {name!r}: judge {judge!r} has no stored results"
            + (f" for run(s) {', '.join(run_ids)}" if run_ids else "")
            + catalog.closest(judge, list(judges), "judges")
        )
    latest: dict[str, set[str]] = {}  # level -> columns of its newest version
    for version in judges[judge].versions:  # newest first
        latest.setdefault(version.level, set(version.columns))
    ranked = sorted(latest, key=catalog.level_rank)
    if len(parts) == 3:
        level = catalog.parse_level(parts[1]).value
        if level not in latest:
            raise QueryError(
                f"result column {name!r}: judge {judge!r} has no results at level {level!r} "
                f"(it has {', '.join(ranked)})"
            )
        having = [level] if column in _BOOKKEEPING or column in latest[level] else []
    elif column in _BOOKKEEPING:
        having = ["trace"] if "trace" in latest else ranked[:1]
    else:
        having = [lv for lv in ranked if column in latest[lv]]
        having = ["trace"] if "trace" in having else having
    if not having:
        known = sorted({c for cols in latest.values() for c in cols})
        raise QueryError(
            f"result column {name!r}: judge {judge!r} has no column {column!r}"
            f"{catalog.closest(column, known, 'columns')}"
        )
    if len(having) > 1:
        raise QueryError(
            f"result column {name!r}: {column!r} exists at levels {', '.join(having)}; say "
            f"which, e.g. {judge}.{having[0]}.{column}"
        )
    return ResultColumn(name, judge, having[0], column)


def column_values(store: Store, column: ResultColumn, run_ids: Sequence[str]) -> ColumnValues:
    """The column's value for every entity of ``run_ids`` (every run when empty), as
    :func:`results_frame` (``svc.results``) returns them: each run's latest version."""
    selected = None if column.column in _BOOKKEEPING else [column.column]
    frame = results_frame(
        store, ResultsQuery(column.judge, list(run_ids) or None, column.level, columns=selected)
    )
    keys = _LEVEL_KEYS[column.level]
    values = ColumnValues(column)
    if frame.empty:
        return values
    key_columns = [[_plain(k) for k in frame[name].tolist()] for name in keys]
    entity_keys = key_columns[0] if len(keys) == 1 else zip(*key_columns, strict=True)
    for key, value in zip(entity_keys, frame[column.column], strict=True):
        values.by_entity[key] = _plain(value)
    return values


def _plain(value: Any) -> Any:
    """pandas' missing values (NA, NaT, NaN) as None, numpy scalars as Python values."""
    if value is None:
        return None
    import pandas as pd

    if value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float) and value != value:
        return None
    if hasattr(value, "item") and type(value).__module__ == "numpy":
        return value.item()
    return value


def sort_key(value: Any) -> tuple[int, Any]:
    """Order values of one column: numbers, then text, then anything else; missing last."""
    if value is None:
        return (3, 0)
    if isinstance(value, bool | int | float):
        return (0, value)
    if isinstance(value, str):
        return (1, value)
    return (2, repr(value))


def order_by_column(
    traces: Sequence[_TraceKeys], values: ColumnValues, *, descending: bool = False
) -> list[str]:
    """Trace ids of ``traces`` ordered by their value of one column (ties by trace id);
    traces without a value come last either way."""
    get, key = values.by_entity.get, values.key
    valued = [(get(key(t)), t.trace_id) for t in traces]
    present = [item for item in valued if item[0] is not None]
    try:  # values of one type (the usual case): compare the pairs natively
        present.sort(reverse=descending)
    except TypeError:  # mixed types: numbers, then text, then the rest
        present.sort(key=lambda item: (sort_key(item[0]), item[1]), reverse=descending)
    return [tid for _v, tid in present] + [tid for v, tid in valued if v is None]
