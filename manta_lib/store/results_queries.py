"""SQL over stored results (``entity_metadata``): versions, column kinds, the typed pivot, the
trace semi-join of results filters, per-step series and the judges listing.

``entity_metadata`` holds one row per (entity, judge version, column), with the entity's
``datapoint_id`` / ``step_number`` as key columns. Reads of values go through
:meth:`EntityQuery.grouped_sql`: FINAL (the newest write of each value wins), the chosen
versions only, grouped by (entity, version), so one version's results never mix with
another's. "Latest" is per run: the version whose newest computation is the most recent.

Which judges, levels, runs, versions and columns exist (and each column's value kinds) is read
from ``entity_metadata_catalog`` (kept by a materialized view), never by scanning the results;
:func:`missing_versions` checks that what the catalog lists is still stored.

Entity keys (trace_id / datapoint_id / step_number / phase) come from :func:`level_keys`, the
one place that knows how a level's identity maps to trace columns; :func:`order_by` is the one
order of entities (steps as numbers).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from manta_lib.store.client import Store
from manta_lib.store.metadata import ERROR_COLUMN, STATUS_COLUMN
from manta_lib.store.schema import CATALOG_TABLE, catalog_select

_PROBE_CHUNK = 64
VALUE_COLUMNS = {
    "number": "value_number",
    "string": "value_string",
    "boolean": "value_bool",
    "json": "value_json",
}
# A column stored with several value kinds (a union field) is read as JSON text.
MIXED_VALUE_SQL = (
    "multiIf(value_type = 'number', toString(value_number), "
    "value_type = 'string', toJSONString(assumeNotNull(value_string)), "
    "value_type = 'boolean', if(assumeNotNull(value_bool), 'true', 'false'), "
    "value_type = 'json', value_json, NULL)"
)


@dataclass(frozen=True)
class LevelKeys:
    """How one level's entities map to keys and to the traces they cover.

    ``select``: ``(name, SQL over an entity group)`` key columns of the results table, in order;
    ``trace_columns``: the ``traces`` columns a covered trace matches on, with ``row_exprs``
    the matching expressions over one entity_metadata row (its ``datapoint_id`` and
    ``step_number`` key columns).
    """

    select: tuple[tuple[str, str], ...]
    trace_columns: tuple[str, ...]
    row_exprs: tuple[str, ...]


_DATAPOINT, _STEP, _PHASE = "any(datapoint_id)", "any(step_number)", "toString(any(phase))"
# Every level is keyed by phase: a step or run value is one phase's (train and eval apart),
# and an entity covers the traces of its phase only.
_LEVEL_KEYS = {
    "trace": LevelKeys(
        (
            ("trace_id", "entity_id"),
            ("datapoint_id", _DATAPOINT),
            ("step_number", _STEP),
            ("phase", _PHASE),
        ),
        ("run_id", "trace_id"),
        ("run_id", "entity_id"),
    ),
    # One datapoint at one step: the traces of that datapoint at that step only.
    "datapoint": LevelKeys(
        (("datapoint_id", _DATAPOINT), ("step_number", _STEP), ("phase", _PHASE)),
        ("run_id", "datapoint_id", "step_number", "phase"),
        ("run_id", "datapoint_id", "assumeNotNull(step_number)", "phase"),
    ),
    # One datapoint over the run: all of its traces, whatever their step.
    "datapoint_across_steps": LevelKeys(
        (("datapoint_id", _DATAPOINT), ("phase", _PHASE)),
        ("run_id", "datapoint_id", "phase"),
        ("run_id", "datapoint_id", "phase"),
    ),
    "step": LevelKeys(
        (("step_number", _STEP), ("phase", _PHASE)),
        ("run_id", "step_number", "phase"),
        ("run_id", "assumeNotNull(step_number)", "phase"),
    ),
    "run": LevelKeys((("phase", _PHASE),), ("run_id", "phase"), ("run_id", "phase")),
}

#: The one order of entities in every results read: run, then step as a number, phase,
#: datapoint id and entity id (the order a pipeline computes them in), so step 10 follows
#: step 9, never step 1, whatever the level.
ENTITY_ORDER = ("step_number", "phase", "datapoint_id")


def order_by(level: str, table: str = "e") -> str:
    """``ORDER BY`` terms of :data:`ENTITY_ORDER` over a grouped entity query (``_k_`` keys)."""
    names = {name for name, _ in level_keys(level).select}
    keys = [f"{table}._k_{name}" for name in ENTITY_ORDER if name in names]
    return ", ".join([f"{table}.run_id", *keys, f"{table}.entity_id"])


def level_keys(level: str) -> LevelKeys:
    """Keys of ``level``: which key columns its results carry and which traces they cover."""
    return _LEVEL_KEYS[level]


def key_fields(level: str) -> dict[str, tuple[str, str]]:
    """The entity keys a results-table condition may use: name -> (SQL in :func:`pivot_sql`'s
    WHERE, kind)."""
    kinds = {"step_number": "number"}
    fields = {"run_id": ("e.run_id", "string")}
    for name, _expr in level_keys(level).select:
        fields[name] = (f"_k_{name}", kinds.get(name, "string"))
    return fields


@dataclass(frozen=True)
class Scope:
    """Which stored results: one judge at one level, some runs (all when empty), a project."""

    judge: str
    level: str
    run_ids: tuple[str, ...] = ()
    project_id: str | None = None

    def where(self, prefix: str) -> tuple[str, dict[str, Any]]:
        params: dict[str, Any] = {f"{prefix}judge": self.judge, f"{prefix}level": self.level}
        sql = f"judge = {{{prefix}judge:String}} AND entity_level = {{{prefix}level:String}}"
        if self.run_ids:
            params[f"{prefix}runs"] = list(self.run_ids)
            sql += f" AND run_id IN {{{prefix}runs:Array(String)}}"
        if self.project_id is not None:
            params[f"{prefix}project"] = self.project_id
            sql += f" AND project_id = {{{prefix}project:String}}"
        return sql, params


def latest_versions_sql(scope: Scope, prefix: str) -> tuple[str, dict[str, Any]]:
    """``SELECT run_id, version``: the most recently computed version of each run."""
    where, params = scope.where(prefix)
    params[f"{prefix}status"] = STATUS_COLUMN
    return (
        f"SELECT run_id, argMax(judge_version, last) FROM ("
        f"SELECT run_id, judge_version, max(last_computed_at) AS last FROM {{db}}.{CATALOG_TABLE} "
        f"WHERE {where} AND column = {{{prefix}status:String}} GROUP BY run_id, judge_version"
        f") GROUP BY run_id"
    ), params


def stored_versions(store: Store, scope: Scope) -> list[tuple[str, str, Any]]:
    """``(run_id, version, last computed_at)`` of the versions with entities in ``scope``,
    each run's newest last (from the catalog)."""
    where, params = scope.where("v_")
    params["v_status"] = STATUS_COLUMN
    return store.rows(
        f"""
        SELECT run_id, judge_version, max(last_computed_at) AS last FROM {{db}}.{CATALOG_TABLE}
        WHERE {where} AND column = {{v_status:String}}
        GROUP BY run_id, judge_version ORDER BY run_id, last
        """,
        params,
    )


def column_kinds(
    store: Store,
    scope: Scope,
    versions: Sequence[tuple[str, str]],
    names: Sequence[str] | None = None,
) -> dict[str, set[str]]:
    """``{column: {value kinds}}`` stored under the given (run_id, version) pairs (only the
    columns in ``names`` when given), from the catalog."""
    where, params = scope.where("k_")
    params["k_pairs"] = [tuple(pair) for pair in versions]
    params["k_meta"] = [STATUS_COLUMN, ERROR_COLUMN]
    if names is not None:
        params["k_names"] = list(names)
        where += " AND column IN {k_names:Array(String)}"
    rows = store.rows(
        f"""
        SELECT column, groupUniqArrayArray(value_types) FROM {{db}}.{CATALOG_TABLE}
        WHERE {where} AND (run_id, judge_version) IN {{k_pairs:Array(Tuple(String, String))}}
          AND column NOT IN {{k_meta:Array(String)}}
        GROUP BY column ORDER BY column
        """,
        params,
    )
    return {column: set(kinds) for column, kinds in rows}


def missing_versions(
    store: Store, judge: str, project_id: str | None, listed: Sequence[tuple[str, str, str]]
) -> list[tuple[str, str, str]]:
    """The ``(level, run_id, version)`` entries of ``listed`` (read from the catalog) that have
    no stored results: a catalog that went stale because results were deleted behind Manta's
    back. One key-range probe per entry that stops at its first row."""
    missing: list[tuple[str, str, str]] = []
    for start in range(0, len(listed), _PROBE_CHUNK):
        chunk = list(dict.fromkeys(listed[start : start + _PROBE_CHUNK]))
        params: dict[str, Any] = {"j": judge, "status": STATUS_COLUMN}
        project = ""
        if project_id is not None:
            params["project"] = project_id
            project = " AND project_id = {project:String}"
        probes = []
        for index, (level, run, version) in enumerate(chunk):
            params.update({f"l{index}": level, f"r{index}": run, f"v{index}": version})
            probes.append(
                f"(SELECT {index} AS i FROM {{db}}.entity_metadata "
                f"WHERE run_id = {{r{index}:String}} AND judge = {{j:String}} "
                f"AND judge_version = {{v{index}:String}} AND entity_level = {{l{index}:String}} "
                f"AND column = {{status:String}}{project} LIMIT 1)"
            )
        found = {int(row[0]) for row in store.rows(" UNION ALL ".join(probes), params)}
        missing.extend(entry for index, entry in enumerate(chunk) if index not in found)
    return missing


def refresh_catalog(store: Store, judge: str, run_ids: Sequence[str]) -> None:
    """Recompute the catalog rows of ``judge`` in ``run_ids`` from the stored results."""
    params = {"j": judge, "runs": sorted(set(run_ids))}
    where = "judge = {j:String} AND run_id IN {runs:Array(String)}"
    store.command(f"DELETE FROM {{db}}.{CATALOG_TABLE} WHERE {where}", params)
    store.command(f"INSERT INTO {{db}}.{CATALOG_TABLE} {catalog_select(where)}", params)


@dataclass(frozen=True)
class ResultColumn:
    """One output column of a judge as read: its name, SQL alias and storage kind."""

    name: str
    alias: str
    kind: str  # number | string | boolean | json | mixed
    #: A number column: True for an integer field, False for a float one, None when unknown
    #: (the stored values decide).
    integral: bool | None = None

    @property
    def value_sql(self) -> str:
        return MIXED_VALUE_SQL if self.kind == "mixed" else VALUE_COLUMNS[self.kind]


@dataclass
class EntityQuery:
    """Entities of a scope grouped into one row per (entity, version), with chosen columns as
    ``alias`` values.

    ``versions``: None for each run's latest version, a list of versions, or ``"all"``.
    """

    scope: Scope
    columns: Sequence[ResultColumn]
    versions: Sequence[str] | str | None = None
    # (run, version) pairs already resolved for ``versions=None``: bound instead of a subquery.
    latest_pairs: Sequence[tuple[str, str]] | None = None
    prefix: str = "q_"
    params: dict[str, Any] = field(default_factory=dict)

    def grouped_sql(self, extra_select: Sequence[str] = (), *, with_error: bool = True) -> str:
        """Inner query: one row per entity and version with ``_status``, ``_version``,
        ``_computed_at`` (of its status row), keys and values (``_v_i``, written at ``_vv_i``).

        Each judge version keeps its own rows (the version is part of the table's key), so the
        chosen versions are selected here, before grouping.
        """
        p = self.prefix
        where, params = self.scope.where(p)
        self.params.update(params)
        self.params[f"{p}status"] = STATUS_COLUMN
        wanted = [STATUS_COLUMN] + [c.name for c in self.columns]
        selects = [
            "run_id",
            "entity_id",
            "judge_version AS _version",
            f"anyIf(value_string, column = {{{p}status:String}}) AS _status",
            f"anyIf(computed_at, column = {{{p}status:String}}) AS _computed_at",
        ]
        if with_error:
            self.params[f"{p}error"] = ERROR_COLUMN
            wanted.append(ERROR_COLUMN)
            selects.append(f"anyIf(value_string, column = {{{p}error:String}}) AS _error")
            selects.append(f"anyIf(computed_at, column = {{{p}error:String}}) AS _error_at")
        self.params[f"{p}cols"] = wanted
        for index, column in enumerate(self.columns):
            name = f"{p}c{index}"
            self.params[name] = column.name
            selects.append(f"anyIf({column.value_sql}, column = {{{name}:String}}) AS _v_{index}")
            selects.append(f"anyIf(computed_at, column = {{{name}:String}}) AS _vv_{index}")
        selects.extend(extra_select)
        return (
            f"SELECT {', '.join(selects)} FROM {{db}}.entity_metadata FINAL "
            f"WHERE {where} AND column IN {{{p}cols:Array(String)}} AND {self.version_clause()} "
            f"GROUP BY run_id, judge_version, entity_id HAVING _status != ''"
        )

    def version_clause(self) -> str:
        """The rows of the chosen versions (SQL over entity_metadata rows)."""
        p = self.prefix
        if self.versions == "all":
            return "1"
        if self.versions is None and self.latest_pairs is not None:
            self.params[f"{p}pairs"] = [tuple(pair) for pair in self.latest_pairs]
            return f"(run_id, judge_version) IN {{{p}pairs:Array(Tuple(String, String))}}"
        if self.versions is None:
            latest, params = latest_versions_sql(self.scope, f"{p}l_")
            self.params.update(params)
            return f"(run_id, judge_version) IN ({latest})"
        self.params[f"{p}versions"] = list(self.versions)
        return f"judge_version IN {{{p}versions:Array(String)}}"

    def value_expr(self, index: int) -> str:
        """A column's value; NULL unless written together with the entity's status (one
        computation writes all its rows with one ``computed_at``), so a stale value of an
        overwritten computation never shows."""
        return f"if(_vv_{index} = _computed_at, _v_{index}, NULL)"

    @staticmethod
    def error_expr() -> str:
        """The entity's error text, NULL when it succeeded."""
        return "if(_error_at = _computed_at AND _error != '', _error, NULL)"


def pivot_sql(
    query: EntityQuery, where: str | None, limit: int | None
) -> tuple[str, dict[str, Any]]:
    """The typed results table: keys, bookkeeping columns and one column per result."""
    keys = level_keys(query.scope.level)
    inner = query.grouped_sql([f"{expr} AS _k_{name}" for name, expr in keys.select])
    selects = ["e.run_id AS run_id"] + [f"_k_{name} AS {name}" for name, _ in keys.select]
    selects += [
        "_status AS status",
        f"{query.error_expr()} AS error",
        "_version AS judge_version",
        "_computed_at AS computed_at",
    ]
    selects += [f"{query.value_expr(i)} AS {c.alias}" for i, c in enumerate(query.columns)]
    sql = f"SELECT {', '.join(selects)} FROM ({inner}) AS e"
    if where:
        sql += f" WHERE ({where})"
    sql += f" ORDER BY {order_by(query.scope.level)}, e._version"
    if limit is not None:
        query.params["q_limit"] = int(limit)
        sql += " LIMIT {q_limit:UInt64}"
    return sql, query.params


def value_semi_join_sql(
    scope: Scope,
    column: str,
    predicate: str,
    versions: dict[str, str],
    prefix: str,
) -> tuple[tuple[str, ...], str, dict[str, Any]]:
    """``(trace columns, subquery, params)``: the keys of the traces covered by entities whose
    ``column`` row, written by its run's version in ``versions`` (run -> version), satisfies
    ``predicate`` (SQL over the value columns). One scan of one column, like a hand-written
    filter. Trace ids are unique in the store, and one run needs no run key."""
    keys = level_keys(scope.level)
    where, params = scope.where(prefix)
    params[f"{prefix}column"] = column
    params[f"{prefix}pairs"] = sorted(versions.items())
    trace_columns, row_exprs = keys.trace_columns, keys.row_exprs
    if scope.level == "trace" or (len(versions) == 1 and len(trace_columns) > 1):
        trace_columns, row_exprs = trace_columns[1:], row_exprs[1:]
    if len(versions) == 1:
        ((run, version),) = versions.items()
        params.update({f"{prefix}run": run, f"{prefix}version": version})
        version_sql = (
            f"run_id = {{{prefix}run:String}} AND judge_version = {{{prefix}version:String}}"
        )
    else:
        version_sql = f"(run_id, judge_version) IN {{{prefix}pairs:Array(Tuple(String, String))}}"
    if not trace_columns:  # the run level of one run
        trace_columns, row_exprs = ("run_id",), ("run_id",)
    sql = (
        f"SELECT {', '.join(row_exprs)} FROM {{db}}.entity_metadata FINAL "
        f"WHERE {where} AND column = {{{prefix}column:String}} AND {version_sql} "
        f"AND {predicate}"
    )
    return trace_columns, sql, params


def judge_facts(
    store: Store,
    judge: str,
    columns: Sequence[str] | None,
    run_ids: Sequence[str],
    project_id: str | None,
    level: str | None = None,
) -> list[tuple[Any, ...]]:
    """``(level, run_id, version, column, [value kinds], last computed_at)`` of ``judge`` for
    the status column and ``columns`` (all when None), at ``level`` (all when None): one read
    of the catalog answers levels, versions and value kinds."""
    params: dict[str, Any] = {"j": judge}
    where = "judge = {j:String}"
    if columns is not None:
        params["cols"] = [STATUS_COLUMN, *columns]
        where += " AND column IN {cols:Array(String)}"
    if level is not None:
        params["level"] = level
        where += " AND entity_level = {level:String}"
    if run_ids:
        params["runs"] = list(run_ids)
        where += " AND run_id IN {runs:Array(String)}"
    if project_id is not None:
        params["project"] = project_id
        where += " AND project_id = {project:String}"
    return store.rows(
        f"""
        SELECT entity_level, run_id, judge_version, column, groupUniqArrayArray(value_types),
               max(last_computed_at)
        FROM {{db}}.{CATALOG_TABLE} WHERE {where}
        GROUP BY entity_level, run_id, judge_version, column
        """,
        params,
    )


def series_sql(query: EntityQuery) -> tuple[str, dict[str, Any]]:
    """Mean, p50, p95 and count of column 0 per (run, phase, step), over ok entities with a
    value (the level must carry a step: trace or datapoint or step); train and eval steps are
    separate points."""
    keys = level_keys(query.scope.level)
    inner = query.grouped_sql(
        [f"{expr} AS _k_{name}" for name, expr in keys.select], with_error=False
    )
    value = f"toFloat64({query.value_expr(0)})"
    sql = f"""
        SELECT e.run_id AS run_id, e._k_phase AS phase, e._k_step_number AS step_number,
               avg({value}) AS mean, quantileExactInclusive(0.5)({value}) AS p50,
               quantileExactInclusive(0.95)({value}) AS p95, count({value}) AS count
        FROM ({inner}) AS e
        WHERE _status = 'ok' AND {value} IS NOT NULL
        GROUP BY run_id, phase, step_number ORDER BY run_id, phase, step_number
    """
    return sql, query.params


def judge_overview(
    store: Store, *, project_id: str | None, run_ids: Sequence[str]
) -> list[tuple[Any, ...]]:
    """``(project, judge, version, level, runs, entities, errors, first, last, columns)`` rows."""
    params: dict[str, Any] = {"status": STATUS_COLUMN, "meta": [STATUS_COLUMN, ERROR_COLUMN]}
    where = "1"
    if project_id is not None:
        params["project"] = project_id
        where += " AND project_id = {project:String}"
    if run_ids:
        params["runs"] = list(run_ids)
        where += " AND run_id IN {runs:Array(String)}"
    return store.rows(
        f"""
        SELECT project_id, judge, judge_version, entity_level,
               uniqExactIf(run_id, column = {{status:String}}),
               countIf(column = {{status:String}}),
               countIf(column = {{status:String}} AND value_string = 'error'),
               minIf(computed_at, column = {{status:String}}),
               maxIf(computed_at, column = {{status:String}}),
               arraySort(groupUniqArrayIf(column, column NOT IN {{meta:Array(String)}}))
        FROM {{db}}.entity_metadata FINAL WHERE {where}
        GROUP BY project_id, judge, judge_version, entity_level
        HAVING countIf(column = {{status:String}}) > 0
        ORDER BY project_id, judge, maxIf(computed_at, column = {{status:String}}) DESC,
                 entity_level
        """,
        params,
    )


def registered_judges(store: Store, project_id: str | None) -> list[tuple[Any, ...]]:
    """Newest local registry row per (project, judge): ``(project, judge, version,
    description, levels, columns JSON)``."""
    params: dict[str, Any] = {}
    where = "1"
    if project_id is not None:
        params["project"] = project_id
        where = "project_id = {project:String}"
    return store.rows(
        f"""
        SELECT project_id, judge, argMax(version, registered_at),
               argMax(description, registered_at), argMax(levels, registered_at),
               argMax(columns, registered_at)
        FROM {{db}}.judges WHERE {where} GROUP BY project_id, judge
        """,
        params,
    )


def known_judges(store: Store) -> list[str]:
    """Every judge with stored results or a registration, for "did you mean" messages."""
    rows = store.rows(
        f"SELECT DISTINCT judge FROM {{db}}.{CATALOG_TABLE} UNION DISTINCT "
        "SELECT DISTINCT judge FROM {db}.judges"
    )
    return sorted(str(row[0]) for row in rows)


def judge_levels(store: Store, judge: str, run_ids: Sequence[str]) -> list[str]:
    """The levels ``judge`` has stored results at (in the given runs, or any)."""
    params: dict[str, Any] = {"j": judge}
    where = "judge = {j:String}"
    if run_ids:
        params["runs"] = list(run_ids)
        where += " AND run_id IN {runs:Array(String)}"
    rows = store.rows(
        f"SELECT DISTINCT entity_level FROM {{db}}.{CATALOG_TABLE} WHERE {where}", params
    )
    return sorted(str(row[0]) for row in rows)


def judge_runs(store: Store, judge: str) -> list[str]:
    """The runs ``judge`` has stored results for."""
    rows = store.rows(
        f"SELECT DISTINCT run_id FROM {{db}}.{CATALOG_TABLE} WHERE judge = {{j:String}} ORDER BY 1",
        {"j": judge},
    )
    return [str(row[0]) for row in rows]


def query_arrow(store: Store, sql: str, params: dict[str, Any]) -> Any:
    """Run ``sql`` and return a ``pyarrow.Table``."""
    with store._lock:
        return store.client.query_arrow(store.sql(sql), parameters=params)


def grader_verdicts(store: Store, run_ids: Sequence[str]) -> list[tuple[Any, ...]]:
    """``(run_id, trace_id, score, passed)`` of every trace of the runs: the trace's score and
    its last grader span's ``passed`` attribute (NULL without one)."""
    return store.rows(
        """
        SELECT t.run_id, t.trace_id, t.score, g.passed
        FROM (SELECT run_id, trace_id, score FROM {db}.traces
              WHERE run_id IN {runs:Array(String)}) AS t
        LEFT JOIN (SELECT run_id, trace_id,
                          argMax(JSONExtract(attributes, 'passed', 'Nullable(Bool)'), seq) AS passed
                   FROM {db}.spans WHERE run_id IN {runs:Array(String)} AND kind = 'grader'
                   GROUP BY run_id, trace_id) AS g
          ON t.run_id = g.run_id AND t.trace_id = g.trace_id
        """,
        {"runs": list(run_ids)},
    )


def entity_values(
    store: Store, run_id: str, entities: Sequence[tuple[str, str]]
) -> list[tuple[Any, ...]]:
    """Every stored value of the given ``(level, entity_id)`` entities of a run, each judge and
    level at the run's latest version (the one computed most recently): ``(level, entity_id,
    judge, column, value_type, number, string, bool, json, version, computed_at)``, by level,
    judge, column."""
    return store.rows(
        """
        SELECT entity_level, entity_id, judge, column, value_type, value_number, value_string,
               value_bool, value_json, judge_version, computed_at
        FROM {db}.entity_metadata FINAL
        WHERE run_id = {r:String}
          AND (entity_level, entity_id) IN {e:Array(Tuple(String, String))}
          AND (judge, entity_level, judge_version) IN (
              SELECT judge, entity_level, argMax(judge_version, computed_at)
              FROM {db}.entity_metadata
              WHERE run_id = {r:String} AND column = {status:String}
                AND entity_level IN {levels:Array(String)}
              GROUP BY judge, entity_level)
        ORDER BY entity_level, judge, column
        """,
        {
            "r": run_id,
            "e": [tuple(e) for e in entities],
            "status": STATUS_COLUMN,
            "levels": sorted({level for level, _ in entities}),
        },
    )
