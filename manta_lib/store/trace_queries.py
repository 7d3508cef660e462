"""SQL for reading traces and spans: filters become bound parameters, never formatted values.

Only identifiers from fixed allow-lists (our column names, sort direction) are placed in SQL
text; every user value travels as a clickhouse-connect query parameter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from manta_lib.errors import QueryError
from manta_lib.models import SPAN_COLUMNS, TRACE_COLUMNS, Phase, SpanKind

ORDERABLE_COLUMNS = (
    "trace_id",
    "step_number",
    "datapoint_id",
    "score",
    "cost_usd",
    "duration_ms",
    "turn_count",
    "tokens_input",
    "tokens_output",
    "created_at",
)

TRACE_SELECT = ", ".join(TRACE_COLUMNS)
SPAN_SELECT = ", ".join(SPAN_COLUMNS)


def _choice(value: str, enum: type[Phase] | type[SpanKind], field_name: str) -> str:
    try:
        return enum(value).value
    except ValueError:
        valid = ", ".join(member.value for member in enum)
        raise QueryError(
            f"{field_name} {value!r} is not valid (expected one of: {valid})"
        ) from None


def _as_list(value: str | Sequence[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


@dataclass
class TraceFilter:
    """Which traces a query selects. Every field is optional; set fields are ANDed.

    ``step`` is one step number or an inclusive ``(first, last)`` range; ``meta`` matches
    top-level keys of the trace's meta object by JSON value; ``shards`` keeps the traces whose
    ``datapoint_id`` hashes into the given shards out of ``shard_count`` (the Dagster layout).
    """

    run_id: str | Sequence[str] | None = None
    phase: str | Sequence[str] | None = None
    step: int | tuple[int, int] | None = None
    datapoint_id: str | Sequence[str] | None = None
    trace_ids: Sequence[str] | None = None
    status: str | Sequence[str] | None = None
    model_name: str | Sequence[str] | None = None
    env_name: str | Sequence[str] | None = None
    min_score: float | None = None
    max_score: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    project_id: str | None = None
    shards: Sequence[int] | None = None
    shard_count: int = 64
    # A compiled results condition (manta_lib.results.ResultsFilter): its semi-join SQL.
    results: Any = None

    def where(self) -> tuple[str, dict[str, Any]]:  # noqa: C901 - one flat clause per filter
        """The WHERE clause (``1`` when empty) and its parameters."""
        clauses: list[str] = []
        params: dict[str, Any] = {}

        def add_in(column: str, values: str | Sequence[str] | None, param: str) -> None:
            if values is None:
                return
            params[param] = _as_list(values)
            clauses.append(f"{column} IN {{{param}:Array(String)}}")

        add_in("run_id", self.run_id, "f_run")
        if self.phase is not None:
            params["f_phase"] = [_choice(p, Phase, "phase") for p in _as_list(self.phase)]
            clauses.append("phase IN {f_phase:Array(String)}")
        if self.step is not None:
            if isinstance(self.step, tuple | list):
                first, last = self.step
                if first > last:
                    raise QueryError(
                        f"step range {first}..{last} is empty: the first step must not exceed "
                        f"the last"
                    )
                params.update(f_step_lo=int(first), f_step_hi=int(last))
                clauses.append("step_number BETWEEN {f_step_lo:Int64} AND {f_step_hi:Int64}")
            else:
                params["f_step"] = int(self.step)
                clauses.append("step_number = {f_step:Int64}")
        add_in("datapoint_id", self.datapoint_id, "f_dp")
        if self.trace_ids is not None:
            params["f_ids"] = list(self.trace_ids)
            clauses.append("trace_id IN {f_ids:Array(String)}")
        add_in("status", self.status, "f_status")
        add_in("model_name", self.model_name, "f_model")
        add_in("env_name", self.env_name, "f_env")
        if self.min_score is not None:
            params["f_min_score"] = float(self.min_score)
            clauses.append("score >= {f_min_score:Float64}")
        if self.max_score is not None:
            params["f_max_score"] = float(self.max_score)
            clauses.append("score <= {f_max_score:Float64}")
        for index, (key, value) in enumerate(sorted(self.meta.items())):
            clauses.append(_meta_clause(index, key, value, params))
        if self.project_id is not None:
            params["f_project"] = self.project_id
            clauses.append("project_id = {f_project:String}")
        if self.shards is not None:
            params["f_shards"] = [int(s) for s in self.shards]
            params["f_shard_count"] = int(self.shard_count)
            clauses.append(f"{SHARD_EXPR} IN {{f_shards:Array(UInt32)}}")
        if self.results is not None:
            if not hasattr(self.results, "sql"):
                raise QueryError(
                    "results filters are compiled by MantaService (get_traces / count_traces / "
                    "iter_trace_batches with results=...); TraceFilter needs the compiled form"
                )
            clauses.append(self.results.sql)
            params.update(self.results.params)
        return (" AND ".join(clauses) or "1"), params


def _meta_clause(index: int, key: str, value: Any, params: dict[str, Any]) -> str:
    """Match a top-level meta key against a scalar JSON value of the same type."""
    key_param, value_param = f"f_mk{index}", f"f_mv{index}"
    params[key_param] = key
    ref = f"meta, {{{key_param}:String}}"
    if value is None:
        return f"JSONType({ref}) = 'Null'"
    if isinstance(value, bool):
        params[value_param] = value
        return f"JSONType({ref}) = 'Bool' AND JSONExtractBool({ref}) = {{{value_param}:Bool}}"
    if isinstance(value, int | float):
        params[value_param] = float(value)
        return (
            f"JSONType({ref}) IN ('Int64', 'UInt64', 'Double') "
            f"AND JSONExtractFloat({ref}) = {{{value_param}:Float64}}"
        )
    if isinstance(value, str):
        params[value_param] = value
        return f"JSONType({ref}) = 'String' AND JSONExtractString({ref}) = {{{value_param}:String}}"
    raise QueryError(
        f"meta filter {key!r}={value!r} is not supported: meta filters match a string, number, "
        f"boolean or null value"
    )


# The hash shard of a datapoint: all traces of one datapoint land in one shard.
SHARD_EXPR = "toUInt32(cityHash64(datapoint_id) % {f_shard_count:UInt32})"


def order_clause(order_by: str | Sequence[str], descending: bool) -> str:
    """An ORDER BY over allow-listed columns with ``trace_id`` as the deterministic tie-break."""
    columns = _as_list(order_by)
    for column in columns:
        if column not in ORDERABLE_COLUMNS:
            raise QueryError(
                f"order_by {column!r} is not valid "
                f"(expected one of: {', '.join(ORDERABLE_COLUMNS)})"
            )
    direction = " DESC" if descending else ""
    parts = [f"{column}{direction}" for column in columns]
    if "trace_id" not in columns:
        parts.append("trace_id")
    return ", ".join(parts)


@dataclass
class SpanFilter:
    """Which spans of the selected traces to load (all when every field is None)."""

    kind: str | Sequence[str] | None = None
    role: str | Sequence[str] | None = None
    tool_name: str | Sequence[str] | None = None
    name: str | Sequence[str] | None = None
    is_error: bool | None = None

    def where(self) -> tuple[str, dict[str, Any]]:
        clauses: list[str] = []
        params: dict[str, Any] = {}
        if self.kind is not None:
            params["s_kind"] = [_choice(k, SpanKind, "kind") for k in _as_list(self.kind)]
            clauses.append("kind IN {s_kind:Array(String)}")
        for column, values in (("role", self.role), ("tool_name", self.tool_name)):
            if values is not None:
                params[f"s_{column}"] = _as_list(values)
                clauses.append(f"{column} IN {{s_{column}:Array(String)}}")
        if self.name is not None:
            params["s_name"] = _as_list(self.name)
            clauses.append("name IN {s_name:Array(String)}")
        if self.is_error is not None:
            params["s_is_error"] = bool(self.is_error)
            clauses.append("is_error = {s_is_error:Bool}")
        return (" AND ".join(clauses) or "1"), params
