"""Compile parsed conditions to SQL over stored results, with type checks.

Two uses: the ``where`` of a results table (fields are the judge's columns, ``status`` and
``error``), and trace filters (fields name their judge: ``judge.column`` or
``judge.level.column``), which become semi-joins: ``(run_id, trace_id) IN (entities that
satisfy it)``, with datapoint- and step-level results covering all traces of their entity.

A comparison on an output column is true for an entity that succeeded and whose stored value
satisfies it (``is null`` tests a null output); a failed entity satisfies no comparison on its
values (test it with ``status == 'error'``), and ``not`` does not turn "unknown" into "true".
A trace filter reads each judge and level at each run's latest version, with one scan of one
column per comparison (``and``/``or`` combine the scans), the shape of a hand-written query.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from manta_lib.errors import QueryError
from manta_lib.models import EntityLevel
from manta_lib.results import catalog
from manta_lib.results.expr import And, Comparison, Condition, Not, Or, comparisons, parse_condition
from manta_lib.store import Store
from manta_lib.store import results_queries as q
from manta_lib.store.metadata import ERROR_COLUMN, STATUS_COLUMN

_BOOKKEEPING = ("status", "error")
_STATUS_VALUES = ("ok", "error")
_SQL_OPS = {"==": "=", "!=": "!=", ">": ">", ">=": ">=", "<": "<", "<=": "<="}
_PARAM_TYPES = {"number": "Float64", "string": "String", "boolean": "Bool", "status": "String"}


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the text {value!r}"
    return repr(value)


def check_value(field: str, kind: str, op: str, value: Any) -> None:
    """Raise when ``value`` cannot be compared with a ``kind`` column by ``op``."""
    if op in ("is_null", "not_null"):
        return
    if kind in ("json", "mixed"):
        raise QueryError(
            f"column {field!r} holds JSON values (lists, objects or mixed types): it can only be "
            f"tested with `is null` / `is not null`, not compared with {_describe(value)}"
        )
    values = value if op in ("in", "not_in") else (value,)
    for item in values:
        if item is None:
            raise QueryError(
                f"{field} {op} null: compare with null using `{field} is null` or "
                f"`{field} is not null`"
            )
        if kind == "number":
            ok = isinstance(item, int | float) and not isinstance(item, bool)
            expected = "a number"
        elif kind == "boolean":
            ok = isinstance(item, bool)
            expected = "true or false"
        elif kind == "status":
            ok = item in _STATUS_VALUES
            expected = "'ok' or 'error'"
        else:
            ok = isinstance(item, str)
            expected = "quoted text"
        if not ok:
            raise QueryError(
                f"column {field!r} is {_kind_name(kind)} but is compared with "
                f"{_describe(item)}; use {expected}"
            )
    if kind == "boolean" and op not in ("==", "!=", "in", "not_in"):
        raise QueryError(f"column {field!r} is boolean: use == or !=, not {op}")


def _kind_name(kind: str) -> str:
    return {
        "number": "a number",
        "string": "text",
        "boolean": "a boolean",
        "status": "the status (ok/error)",
    }.get(kind, kind)


class _Params:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.values: dict[str, Any] = {}

    def bind(self, value: Any, kind: str) -> str:
        name = f"{self.prefix}{len(self.values)}"
        self.values[name] = value
        ch_type = _PARAM_TYPES.get(kind, "String")
        if isinstance(value, list):
            ch_type = f"Array({ch_type})"
        return f"{{{name}:{ch_type}}}"


def _comparison_sql(expr: str, comparison: Comparison, kind: str, params: _Params) -> str:
    op, value = comparison.op, comparison.value
    if op == "is_null":
        return f"({expr}) IS NULL"
    if op == "not_null":
        return f"({expr}) IS NOT NULL"
    if kind == "number":
        value = [float(v) for v in value] if op in ("in", "not_in") else float(value)
    if op in ("in", "not_in"):
        negate = "NOT " if op == "not_in" else ""
        return f"({expr}) IS NOT NULL AND {negate}({expr}) IN {params.bind(list(value), kind)}"
    return f"({expr}) {_SQL_OPS[op]} {params.bind(value, kind)}"


def _value_leaf(sql: str) -> str:
    """A comparison on an output value: unknown (NULL) for a failed entity, which has none."""
    return f"if(_status = 'ok', ({sql}), NULL)"


def _compile(condition: Condition, leaf: Callable[[Comparison], str], negate: bool = False) -> str:
    """SQL for ``condition`` with ``not`` pushed to the leaves (missing values stay false)."""
    if isinstance(condition, Not):
        return _compile(condition.item, leaf, not negate)
    if isinstance(condition, And | Or):
        joiner = " AND " if isinstance(condition, And) != negate else " OR "
        return "(" + joiner.join(_compile(c, leaf, negate) for c in condition.items) + ")"
    sql = leaf(condition)
    # NOT over a missing value must stay false: wrap with a NULL-to-false coalesce first.
    return f"NOT coalesce(({sql}), true)" if negate else f"coalesce(({sql}), false)"


# ---------------------------------------------------------------- results-table conditions


def table_condition(
    text: str | Condition,
    judge: str,
    columns: Sequence[q.ResultColumn],
    keys: dict[str, tuple[str, str]] | None = None,
) -> tuple[str, dict[str, Any]]:
    """SQL over the grouped entity rows of :class:`EntityQuery` for a results-table ``where``.

    ``keys``: entity key fields usable too (``step_number >= 10``), name -> (SQL, kind).
    """
    keys = keys or {}
    condition = parse_condition(text) if isinstance(text, str) else text
    index = {c.name: (i, c) for i, c in enumerate(columns)}
    params = _Params("w_")

    def leaf(comparison: Comparison) -> str:
        parts = comparison.field.parts
        if len(parts) > 1 and parts[0] == judge:
            parts = parts[1:]
        if len(parts) != 1:
            raise QueryError(
                f"field {comparison.field} (position {comparison.field.position + 1}): a results "
                f"table of judge {judge!r} is filtered by its own columns; write the column name"
            )
        name = parts[0]
        if name == "status":
            check_value(name, "status", comparison.op, comparison.value)
            return _comparison_sql("_status", comparison, "status", params)
        if name == "error":
            check_value(name, "string", comparison.op, comparison.value)
            return _comparison_sql(q.EntityQuery.error_expr(), comparison, "string", params)
        if name not in index and name in keys:
            sql, kind = keys[name]
            check_value(name, kind, comparison.op, comparison.value)
            return _comparison_sql(sql, comparison, kind, params)
        if name not in index:
            hint = catalog.closest(name, [*index, *_BOOKKEEPING, *keys], "columns")
            raise QueryError(f"column {name!r} of judge {judge!r} is unknown{hint}")
        position, column = index[name]
        check_value(name, column.kind, comparison.op, comparison.value)
        expr = f"if(_vv_{position} = _computed_at, _v_{position}, NULL)"
        return _value_leaf(_comparison_sql(expr, comparison, column.kind, params))

    return _compile(condition, leaf), params.values


# ---------------------------------------------------------------- trace filters


@dataclass(frozen=True)
class ResultsFilter:
    """A compiled results condition on traces: ``sql`` for the traces WHERE and its params.

    Build it with :func:`compile_trace_condition` (the service does when ``results=`` is given).
    """

    text: str
    sql: str
    params: dict[str, Any]


def compile_trace_condition(
    store: Store,
    condition: str | Condition,
    *,
    run_ids: Sequence[str] = (),
    project_id: str | None = None,
    prefix: str = "rf_",
) -> ResultsFilter:
    """Resolve and compile a trace condition such as ``tool_errors.tool_errors > 0``.

    Fields are ``judge.column`` (the column at the trace level, or at the only level that has
    it), ``judge.level.column`` or ``judge.status`` / ``judge.error``. Each judge and level is
    read at each run's latest version.
    """
    text = condition if isinstance(condition, str) else repr(condition)
    parsed = parse_condition(condition) if isinstance(condition, str) else condition
    names: dict[str, set[str]] = {}  # judge -> the column names the condition uses
    for comparison in comparisons(parsed):
        if len(comparison.field.parts) == 1:
            raise QueryError(
                f"field {comparison.field.parts[0]!r} (position {comparison.field.position + 1}) "
                f"does not say which judge: write judge.column, e.g. "
                f"tool_errors.{comparison.field.parts[0]}"
            )
        names.setdefault(comparison.field.parts[0], set()).add(comparison.field.parts[-1])
    facts = {
        judge: _JudgeFacts.load(store, judge, used, run_ids, project_id)
        for judge, used in names.items()
    }
    resolved: dict[tuple[str, ...], tuple[str, str, str]] = {}  # field parts -> judge, level, col
    for comparison in comparisons(parsed):
        resolved[comparison.field.parts] = _resolve_field(
            store, comparison, facts[comparison.field.parts[0]], run_ids, project_id
        )
    params: dict[str, Any] = {}

    def leaf(comparison: Comparison, negate: bool) -> str:
        judge, level, column = resolved[comparison.field.parts]
        local = _Params(f"{prefix}{len(params)}_")
        if column == "status":
            kind, stored = "status", STATUS_COLUMN
        elif column == "error":
            kind, stored = "string", ERROR_COLUMN
        else:
            kind, stored = facts[judge].kind(level, column), column
        check_value(str(comparison.field), kind, comparison.op, comparison.value)
        value = (
            "value_string" if column in _BOOKKEEPING else q.VALUE_COLUMNS.get(kind, "value_json")
        )
        if column == "error":
            value = "nullIf(value_string, '')"
        predicate = _comparison_sql(value, comparison, kind, local)
        predicate = (
            f"NOT coalesce(({predicate}), true)" if negate else f"coalesce(({predicate}), false)"
        )
        scope = q.Scope(judge, level, tuple(run_ids), project_id)
        trace_columns, sql, scan_params = q.value_semi_join_sql(
            scope,
            stored,
            predicate,
            facts[judge].latest[level],
            prefix=f"{prefix}{len(params)}s_",
        )
        params.update(scan_params)
        params.update(local.values)
        target = trace_columns[0] if len(trace_columns) == 1 else f"({', '.join(trace_columns)})"
        return f"{target} IN ({sql})"

    def build(item: Condition, negate: bool = False) -> str:
        if isinstance(item, Comparison):
            return leaf(item, negate)
        if isinstance(item, Not):
            return build(item.item, not negate)
        joiner = " AND " if isinstance(item, And) != negate else " OR "
        return "(" + joiner.join(build(child, negate) for child in item.items) + ")"

    return ResultsFilter(text, build(parsed), params)


@dataclass
class _JudgeFacts:
    """What one catalog query says about a judge: each level's latest version per run, and the
    value kinds of the used columns under those versions."""

    judge: str
    latest: dict[str, dict[str, str]]  # level -> run -> version
    kinds: dict[tuple[str, str], set[str]]  # (level, column) -> value kinds

    @classmethod
    def load(
        cls,
        store: Store,
        judge: str,
        names: set[str],
        run_ids: Sequence[str],
        project_id: str | None,
    ) -> _JudgeFacts:
        facts = cls._read(store, judge, names, run_ids, project_id)
        listed = [
            (level, run, version)
            for level, versions in facts.latest.items()
            for run, version in versions.items()
        ]
        if catalog.confirm_listed(store, judge, project_id, listed):
            return facts
        # The catalog was stale and has been recomputed from the results: read it again.
        return cls._read(store, judge, names, run_ids, project_id)

    @classmethod
    def _read(
        cls,
        store: Store,
        judge: str,
        names: set[str],
        run_ids: Sequence[str],
        project_id: str | None,
    ) -> _JudgeFacts:
        rows = q.judge_facts(store, judge, sorted(names), run_ids, project_id)
        newest: dict[tuple[str, str], tuple[Any, str]] = {}
        for level, run, version, column, _kinds, last in rows:
            if column == STATUS_COLUMN and (
                (level, run) not in newest or last > newest[(level, run)][0]
            ):
                newest[(level, run)] = (last, version)
        latest: dict[str, dict[str, str]] = {}
        for (level, run), (_last, version) in newest.items():
            latest.setdefault(level, {})[run] = version
        kinds: dict[tuple[str, str], set[str]] = {}
        for level, run, version, column, value_kinds, _last in rows:
            if column != STATUS_COLUMN and latest.get(level, {}).get(run) == version:
                kinds.setdefault((level, column), set()).update(value_kinds)
        return cls(judge, latest, kinds)

    @property
    def levels(self) -> list[str]:
        return sorted(self.latest, key=catalog.level_rank)

    def has(self, level: str, column: str) -> bool:
        return (level, column) in self.kinds

    def kind(self, level: str, column: str) -> str:
        real = self.kinds[(level, column)] - {"null"}
        if len(real) == 1:
            return real.pop()
        return "mixed" if real else "json"


def _resolve_field(
    store: Store,
    comparison: Comparison,
    facts: _JudgeFacts,
    run_ids: Sequence[str],
    project_id: str | None,
) -> tuple[str, str, str]:
    """``(judge, level, column)`` of a ``judge.column`` / ``judge.level.column`` field."""
    parts = comparison.field.parts
    judge = parts[0]
    levels = facts.levels
    if not levels:
        catalog.require_judge(store, judge, run_ids, EntityLevel.TRACE.value)
    if len(parts) == 3:
        level = catalog.parse_level(parts[1]).value
        column = parts[2]
        if level not in levels:
            catalog.require_judge(store, judge, run_ids, level)
        catalog.require_runs(judge, level, run_ids, set(facts.latest[level]))
        if column not in _BOOKKEEPING and not facts.has(level, column):
            known = _all_names(store, judge, [level], run_ids, project_id)
            raise QueryError(
                f"column {column!r} of judge {judge!r} at level {level!r} is unknown"
                f"{catalog.closest(column, known, 'columns')}"
            )
        return judge, level, column
    column = parts[1]
    if column in _BOOKKEEPING:
        level = EntityLevel.TRACE.value if EntityLevel.TRACE.value in levels else levels[0]
        catalog.require_runs(judge, level, run_ids, set(facts.latest[level]))
        return judge, level, column
    having = [level for level in levels if facts.has(level, column)]
    chosen = EntityLevel.TRACE.value if EntityLevel.TRACE.value in having else None
    if chosen is None and len(having) == 1:
        chosen = having[0]
    if chosen is not None:
        catalog.require_runs(judge, chosen, run_ids, set(facts.latest[chosen]))
        return judge, chosen, column
    if not having:
        known = _all_names(store, judge, levels, run_ids, project_id)
        raise QueryError(
            f"column {column!r} of judge {judge!r} is unknown"
            f"{catalog.closest(column, known, 'columns')}"
        )
    raise QueryError(
        f"column {column!r} of judge {judge!r} exists at levels {', '.join(having)}: say which, "
        f"e.g. {judge}.{having[0]}.{column}"
    )


def _all_names(
    store: Store, judge: str, levels: Sequence[str], run_ids: Sequence[str], project_id: str | None
) -> list[str]:
    """Every column of ``judge`` at ``levels`` (for "did you mean" hints only)."""
    known: set[str] = set()
    for level in levels:
        scope = q.Scope(judge, level, tuple(run_ids), project_id)
        choice = catalog.choose_versions(store, scope, None)
        known.update(c.name for c in catalog.read_columns(store, scope, choice))
    return sorted(known)
