"""Stored results as a typed table: one row per entity, one column per output field.

The pivot (one row per entity out of one row per entity and column) runs in ClickHouse and
arrives as Arrow; Python only fixes types column-wise:

- ``number`` columns are integers or floats as the registered output field declares them (the
  local registry records ``number_type`` ``integer`` / ``number``); without such a
  registration of the version read (a judge registered with Kestrel only, or by an older
  Manta), a column whose values are all whole numbers becomes integers;
- ``json`` columns (lists, dicts, nested models) and union fields stored with several kinds
  are decoded into Python values (pandas) or nested Arrow types when Arrow can type them.

Plus the entity keys (``run_id`` and ``trace_id`` / ``datapoint_id`` / ``step_number`` as the
level has them, and ``phase`` at every level: a step or run row is one phase's), ``status``
(``ok``/``error``), ``error``, ``judge_version``, ``computed_at``. Rows come in one order at
every level: run, step (as a number), phase, datapoint, entity.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from manta_lib.errors import QueryError
from manta_lib.models import EntityLevel
from manta_lib.results import catalog
from manta_lib.results.conditions import table_condition
from manta_lib.results.expr import Condition
from manta_lib.store import Store
from manta_lib.store import results_queries as q
from manta_lib.store.metadata import ERROR_COLUMN, STATUS_COLUMN

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

log = logging.getLogger(__name__)

BOOKKEEPING_COLUMNS = ("status", "error", "judge_version", "computed_at")
KEY_COLUMNS = ("run_id", "trace_id", "datapoint_id", "step_number", "phase")


@dataclass(frozen=True)
class ResultsQuery:
    """Which stored results to read as a table: ``judge``'s results at ``level`` of one run, a
    list of runs or (``run_id=None``) every run with results; ``version`` None for each run's
    latest version, a version (or list), or ``"all"``; ``where`` a condition on the columns;
    ``columns`` only these output columns; at most ``limit`` rows."""

    judge: str
    run_id: str | Sequence[str] | None = None
    level: EntityLevel | str = EntityLevel.TRACE
    version: str | Sequence[str] | None = None
    where: str | Condition | None = None
    columns: Sequence[str] | None = None
    limit: int | None = None
    project_id: str | None = None


@dataclass(frozen=True)
class ResultsSelection:
    """A resolved results read: scope, versions and columns (what the table will hold)."""

    scope: q.Scope
    choice: catalog.VersionChoice
    columns: list[q.ResultColumn]

    def query(self, prefix: str = "q_") -> q.EntityQuery:
        return q.EntityQuery(
            self.scope,
            self.columns,
            self.choice.versions,
            prefix=prefix,
            latest_pairs=self.choice.pairs if self.choice.versions is None else None,
        )


def select_results(store: Store, query: ResultsQuery) -> ResultsSelection:
    """Resolve the query's judge, level, runs, version and columns (its ``where`` and
    ``limit`` aside), or raise naming the close matches."""
    judge, project_id, columns = query.judge, query.project_id, query.columns
    level_value = catalog.parse_level(query.level).value
    runs = catalog.as_run_ids(query.run_id)
    if not isinstance(judge, str) or not judge:
        raise QueryError(f"judge must be a judge name, got {judge!r}")
    selection = _select(store, judge, runs, level_value, query.version, project_id)
    listed = [(level_value, run, ver) for run, ver in selection.choice.pairs]
    if not catalog.confirm_listed(store, judge, project_id, listed):
        # The catalog was stale and has been recomputed from the results: read it again.
        selection = _select(store, judge, runs, level_value, query.version, project_id)
    if columns is not None:
        _require_columns(store, selection, columns, judge, project_id)
        selection = replace(
            selection, columns=[c for c in selection.columns if c.name in set(columns)]
        )
    return selection


def _require_columns(
    store: Store,
    selection: ResultsSelection,
    wanted: Sequence[str],
    judge: str,
    project_id: str | None,
) -> None:
    """Raise for a column the selection lacks; one stored at another level of the judge is
    named with that level (the default level is trace: "unknown" would mislead)."""
    names = {c.name for c in selection.columns}
    missing = [name for name in wanted if name not in names]
    if not missing:
        return
    level = selection.scope.level
    facts = q.judge_facts(store, judge, missing, selection.scope.run_ids, project_id)
    for name in missing:
        levels = sorted(
            {row[0] for row in facts if row[3] == name and row[0] != level}, key=catalog.level_rank
        )
        if levels:
            raise QueryError(
                f"column {name!r} of judge {judge!r} is not stored at level {level!r}; it "
                f"exists at level{'s' if len(levels) > 1 else ''} {', '.join(levels)}: pass "
                f"level={levels[0]!r} "
                f"(--level {levels[0]} on the command line)"
            )
    catalog.require_columns(selection.columns, wanted, judge)


def _select(
    store: Store,
    judge: str,
    runs: tuple[str, ...],
    level_value: str,
    version: str | Sequence[str] | None,
    project_id: str | None,
) -> ResultsSelection:
    # One catalog read answers which runs and versions exist and how each column is stored.
    facts = q.judge_facts(store, judge, None, runs, project_id, level_value)
    if not facts:
        catalog.require_judge(store, judge, runs, level_value)  # raises, naming close matches
    scope = q.Scope(judge, level_value, runs, project_id)
    versions = [(run, ver, last) for _lv, run, ver, col, _k, last in facts if col == STATUS_COLUMN]
    catalog.require_runs(judge, level_value, runs, {run for run, _v, _l in versions})
    choice = catalog.choose_versions(store, scope, version, versions)
    if not runs:
        scope = q.Scope(judge, level_value, tuple(sorted({r for r, _ in choice.pairs})), project_id)
    chosen = set(choice.pairs)
    kinds: dict[str, set[str]] = {}
    for _lv, run, ver, col, value_kinds, _last in facts:
        if (run, ver) in chosen and col not in (STATUS_COLUMN, ERROR_COLUMN):
            kinds.setdefault(col, set()).update(value_kinds)
    return ResultsSelection(scope, choice, catalog.read_columns(store, scope, choice, kinds=kinds))


def results_arrow(store: Store, query: ResultsQuery) -> pa.Table:
    """The results table as a ``pyarrow.Table`` (``polars.from_arrow`` takes it as is).

    JSON columns hold nested Arrow values when Arrow can give all of a column's values one
    type, else their JSON text.
    """

    table, selection = _fetch(store, query)
    for column in selection.columns:
        index = table.schema.get_field_index(column.alias)
        array = table.column(index)
        if column.kind == "number":
            array = _integral(array, column.integral)
        elif column.kind in ("json", "mixed"):
            array = _json_arrow(array)
        table = table.set_column(index, column.alias, array)
    return table.rename_columns(_names(table.column_names, selection, query.judge))


def results_frame(store: Store, query: ResultsQuery) -> pd.DataFrame:
    """The results table as a pandas DataFrame with nullable dtypes (``Int64``, ``boolean``),
    so an integer column stays integer even where an entity failed; JSON columns hold Python
    lists and dicts."""
    import pandas as pd
    import pyarrow as pa

    table, selection = _fetch(store, query)
    decoded: dict[str, Any] = {}
    for column in selection.columns:
        index = table.schema.get_field_index(column.alias)
        if column.kind == "number":
            table = table.set_column(
                index, column.alias, _integral(table.column(index), column.integral)
            )
        elif column.kind in ("json", "mixed"):
            decoded[column.alias] = _json_objects(table.column(index))
    mapping = {pa.int64(): pd.Int64Dtype(), pa.bool_(): pd.BooleanDtype()}
    frame = table.to_pandas(types_mapper=mapping.get)
    for alias, values in decoded.items():
        frame[alias] = pd.Series(values, dtype=object, index=frame.index)
    frame.columns = _names(list(frame.columns), selection, query.judge)
    return frame


def _fetch(store: Store, query: ResultsQuery) -> tuple[pa.Table, ResultsSelection]:
    judge, where, columns, limit = query.judge, query.where, query.columns, query.limit
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise QueryError(f"limit must be a whole number >= 0, got {limit!r}")
    selection = select_results(store, replace(query, columns=None))
    condition: str | None = None
    params: dict[str, Any] = {}
    if where is not None:  # compiled over every column: a condition may use unselected ones
        fields = q.key_fields(selection.scope.level)
        condition, params = table_condition(where, judge, selection.columns, fields)
    if columns is not None:
        _require_columns(store, selection, columns, judge, query.project_id)
        shown = [c for c in selection.columns if c.name in set(columns)]
        query_columns = selection.columns if where is not None else shown
        selection = replace(selection, columns=shown)
    else:
        query_columns = selection.columns
    entities = replace(selection, columns=list(query_columns)).query()
    sql, query_params = q.pivot_sql(entities, condition, limit)
    table = q.query_arrow(store, sql, {**query_params, **params})
    shown_aliases = {c.alias for c in selection.columns}
    hidden = [c.alias for c in query_columns if c.alias not in shown_aliases]
    return _plain_strings(table.drop_columns(hidden)), selection


def _plain_strings(table: pa.Table) -> pa.Table:
    """Dictionary-encoded (LowCardinality) columns as plain strings."""
    import pyarrow as pa

    for index, schema_field in enumerate(table.schema):
        if pa.types.is_dictionary(schema_field.type):
            table = table.set_column(
                index, schema_field.name, table.column(index).cast(schema_field.type.value_type)
            )
        elif pa.types.is_large_string(schema_field.type) or pa.types.is_binary(schema_field.type):
            table = table.set_column(
                index, schema_field.name, table.column(index).cast(pa.string())
            )
    return table


def _integral(array: pa.ChunkedArray, declared: bool | None = None) -> pa.ChunkedArray:
    """A number column as int64 or float64.

    ``declared``: the registered field type (True: int, False: float, None: unknown). A float
    field stays float64 even when its values happen to be whole; an int field, or an unknown
    one whose values are all whole numbers below 2**53, becomes int64 (a non-whole value keeps
    the column float rather than truncating it).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    if declared is False:
        return array
    if array.null_count == len(array):
        return array.cast(pa.int64()) if declared else array
    whole = pc.all(pc.equal(array, pc.floor(array))).as_py()
    small = pc.max(pc.abs(array)).as_py() < 2**53
    if whole and small:
        return array.cast(pa.int64())
    return array


def _decode_json(array: pa.ChunkedArray) -> tuple[list[Any], Any]:
    """``(distinct decoded values, row -> index array)`` of a column of JSON texts.

    Each distinct text is parsed once (with one parser call for all of them): result columns
    repeat values a lot (``[]``, the same tool lists), and per-row parsing dominated the read.
    """
    import pyarrow.compute as pc

    encoded = pc.dictionary_encode(pc.fill_null(array, "null")).combine_chunks()
    texts = encoded.dictionary.to_pylist()
    distinct = json.loads("[" + ",".join(texts) + "]") if texts else []
    return distinct, encoded.indices


def _json_objects(array: pa.ChunkedArray) -> Any:
    """The column as a numpy object array of Python values; equal values share one object
    (copy a list or dict before changing it in place)."""
    import numpy as np

    distinct, indices = _decode_json(array)
    values = np.empty(len(distinct), dtype=object)
    for index, value in enumerate(distinct):
        values[index] = value
    return values.take(indices.to_numpy(zero_copy_only=False))


def _json_arrow(array: pa.ChunkedArray) -> pa.ChunkedArray:
    """Nested Arrow values when all of the column's values share one shape, else the text."""
    import pyarrow as pa

    distinct, indices = _decode_json(array)
    try:
        return pa.chunked_array([pa.array(distinct).take(indices)])
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return array


def _names(current: Sequence[str], selection: ResultsSelection, judge: str) -> list[str]:
    """Aliases back to column names; a result column named like a key or bookkeeping column
    is prefixed with its judge (``judge.status``) rather than hiding it."""
    reserved = set(BOOKKEEPING_COLUMNS) | set(KEY_COLUMNS)
    by_alias = {}
    for column in selection.columns:
        name = column.name
        if name in reserved:
            log.warning("result column %r of judge %r is shown as %s.%s", name, judge, judge, name)
            name = f"{judge}.{name}"
        by_alias[column.alias] = name
    return [by_alias.get(name, name) for name in current]
