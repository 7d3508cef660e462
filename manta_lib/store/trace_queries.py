"""SQL for reading traces and spans: filters become bound parameters, never formatted values.

Only identifiers from fixed allow-lists (our column names, sort direction) are placed in SQL
text; every user value travels as a clickhouse-connect query parameter.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from manta_lib.errors import QueryError
from manta_lib.models import SPAN_COLUMNS, TRACE_COLUMNS, Phase, SpanKind
from manta_lib.store import query_args as args
from manta_lib.store import text_search
from manta_lib.store.client import Store
from manta_lib.store.result_key import ResultKey

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

#: Trace statuses that count as errors (in error counts and the error rate).
ERROR_STATUSES = ("error", "timeout")

#: Rows per block of a streamed span query. A block stays in memory while any trace of it is
#: being mapped, so it is kept well below ClickHouse's default of 65,536 rows (message
#: contents make a span row a kilobyte or more).
SPAN_STREAM_BLOCK_ROWS = 16_384

#: One engine thread for a streamed read (traces, spans, stored outputs; see
#: :func:`stream_read_settings`). The Python consumer is slower than one thread, and each
#: extra thread holds read buffers for every column (at 1M traces in chDB, ~65 MB more for
#: the span stream and ~100 MB more for the stored-output pivot), for no gain in speed.
ONE_READER_THREAD = "max_threads = 1"

#: Off: ClickHouse's buffering of chunks from each part ahead of an in-order merge of the
#: parts (ClickHouse 24.7+, where it is on by default). It holds chunks of every part a read
#: spans, so a stream's memory grew with the table's part count (the span stream of a
#: 10M-trace run in 11 parts: 302 MB with it, 116 MB without, at the same speed).
NO_IN_ORDER_BUFFERING = "read_in_order_use_buffering = 0"


def stream_read_settings(store: Store) -> str:
    """The SETTINGS of a streamed read on ``store``: :data:`ONE_READER_THREAD`, and
    :data:`NO_IN_ORDER_BUFFERING` where the engine has the setting."""
    if store.client.min_version("24.7"):
        return f"{ONE_READER_THREAD}, {NO_IN_ORDER_BUFFERING}"
    return ONE_READER_THREAD


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


LONG_LIST = 100
"""From this many values on, ``IN`` takes the list through a subquery (see :func:`in_strings`)."""


def in_strings(column: str, param: str, values: list[str], params: dict[str, Any]) -> str:
    """``column IN`` the bound string ``values``, adding the parameter to ``params``.

    A long list goes through ``IN (SELECT arrayJoin(...))``, from which ClickHouse builds one
    hash set: written as ``IN {p:Array(String)}``, chDB compared every row with the array's
    elements one by one, and 100,000 trace ids took minutes instead of about a second.
    """
    params[param] = values
    if len(values) >= LONG_LIST:
        return f"{column} IN (SELECT arrayJoin({{{param}:Array(String)}}))"
    return f"{column} IN {{{param}:Array(String)}}"


@dataclass(frozen=True)
class Unmapped:
    """The traces of ``key``'s run without a stored result of its judge version (with
    ``retry_errors``, or whose stored result is an error): what a resumed computation still
    has to map."""

    key: ResultKey
    retry_errors: bool = True

    def clause(self, params: dict[str, Any]) -> str:
        """``trace_id NOT IN (...)``: the key's stored trace statuses."""
        params.update(
            f_un_project=self.key.project_id,
            f_un_run=self.key.run_id,
            f_un_judge=self.key.judge,
            f_un_version=self.key.versioned(),
        )
        done = " AND value_string = 'ok'" if self.retry_errors else ""
        return (
            "trace_id NOT IN (SELECT entity_id FROM {db}.entity_metadata FINAL "
            "WHERE project_id = {f_un_project:String} AND run_id = {f_un_run:String} "
            "AND judge = {f_un_judge:String} AND judge_version = {f_un_version:String} "
            f"AND entity_level = 'trace' AND column = '{_STATUS}'{done})"
        )


_STATUS = "__status__"


@dataclass
class TraceFilter:
    """Which traces a query selects. Every field is optional; set fields are ANDed.

    ``step`` is one step number or an inclusive ``(first, last)`` range; ``meta`` matches
    top-level keys of the trace's meta object (see :func:`meta_clause` for the rule);
    ``shards`` keeps the traces whose ``datapoint_id`` hashes into the given shards out of
    ``shard_count`` (the Dagster layout); ``text`` is a phrase, or phrases that must all
    occur, searched in the traces' span texts (see :mod:`manta_lib.store.text_search`).
    Every value is checked when the filter is built: a wrong type or an out-of-range value
    raises :class:`QueryError` naming it.

    :meth:`where` is the one place that turns a filter into SQL; a new filter adds a field
    here, a check in ``__post_init__`` and a clause in :meth:`where`.
    """

    run_id: str | Sequence[str] | None = None
    phase: str | Sequence[str] | None = None
    step: int | tuple[int, int] | None = None
    datapoint_id: str | Sequence[str] | None = None
    trace_ids: str | Sequence[str] | None = None
    status: str | Sequence[str] | None = None
    model_name: str | Sequence[str] | None = None
    env_name: str | Sequence[str] | None = None
    min_score: float | None = None
    max_score: float | None = None
    meta: dict[str, Any] | None = field(default_factory=dict)
    project_id: str | None = None
    shards: Sequence[int] | None = None
    shard_count: int = 64
    # A compiled results condition (manta_lib.results.ResultsFilter): its semi-join SQL.
    results: Any = None
    # Only the traces a computation has not stored yet (needs run_id).
    unmapped: Unmapped | None = None
    text: str | Sequence[str] | None = None

    def __post_init__(self) -> None:
        self.run_id = args.optional_strings("run_id", self.run_id)
        if self.phase is not None:
            self.phase = [_choice(p, Phase, "phase") for p in args.strings("phase", self.phase)]
        if self.step is not None:
            self.step = args.step(self.step)
        self.datapoint_id = args.optional_strings("datapoint_id", self.datapoint_id)
        self.trace_ids = args.optional_strings("trace_ids", self.trace_ids)
        self.status = args.optional_strings("status", self.status)
        self.model_name = args.optional_strings("model_name", self.model_name)
        self.env_name = args.optional_strings("env_name", self.env_name)
        if self.min_score is not None:
            self.min_score = args.score("min_score", self.min_score)
        if self.max_score is not None:
            self.max_score = args.score("max_score", self.max_score)
        if (
            self.min_score is not None
            and self.max_score is not None
            and self.min_score > self.max_score
        ):
            raise QueryError(
                f"min_score={self.min_score:g} is above max_score={self.max_score:g}: "
                f"no score can match"
            )
        self.meta = args.meta(self.meta if self.meta is not None else {})
        if self.project_id is not None:
            self.project_id = args.string("project_id", self.project_id)
        if self.shards is not None:
            self.shards, self.shard_count = args.shards(self.shards, self.shard_count)
        else:
            self.shard_count = args.integer("shard_count", self.shard_count, low=1, high=2**32 - 1)
        if self.unmapped is not None and self.run_id != [self.unmapped.key.run_id]:
            raise QueryError(
                f"the unmapped-traces filter of run {self.unmapped.key.run_id!r} needs "
                f"run_id={self.unmapped.key.run_id!r}, not {self.run_id!r}"
            )
        self.text = text_search.phrases(self.text)

    def where(self) -> tuple[str, dict[str, Any]]:  # noqa: C901 - one flat clause per filter
        """The WHERE clause (``1`` when empty) and its parameters."""
        clauses: list[str] = []
        params: dict[str, Any] = {}

        def add_in(column: str, values: str | Sequence[str] | None, param: str) -> None:
            if values is not None:
                clauses.append(in_strings(column, param, _as_list(values), params))

        add_in("run_id", self.run_id, "f_run")
        run_clause = clauses[0] if clauses else None
        add_in("phase", self.phase, "f_phase")
        if isinstance(self.step, tuple):
            params.update(f_step_lo=self.step[0], f_step_hi=self.step[1])
            clauses.append("step_number BETWEEN {f_step_lo:Int64} AND {f_step_hi:Int64}")
        elif self.step is not None:
            params["f_step"] = self.step
            clauses.append("step_number = {f_step:Int64}")
        add_in("datapoint_id", self.datapoint_id, "f_dp")
        add_in("trace_id", self.trace_ids, "f_ids")
        add_in("status", self.status, "f_status")
        add_in("model_name", self.model_name, "f_model")
        add_in("env_name", self.env_name, "f_env")
        if self.min_score is not None:
            params["f_min_score"] = self.min_score
            clauses.append("score >= {f_min_score:Float64}")
        if self.max_score is not None:
            params["f_max_score"] = self.max_score
            clauses.append("score <= {f_max_score:Float64}")
        for index, (key, value) in enumerate(sorted((self.meta or {}).items())):
            clauses.append(meta_clause(index, key, value, params))
        if self.project_id is not None:
            params["f_project"] = self.project_id
            clauses.append("project_id = {f_project:String}")
        if self.shards is not None:
            params["f_shards"] = list(self.shards)
            params["f_shard_count"] = self.shard_count
            clauses.append(f"{SHARD_EXPR} IN {{f_shards:Array(UInt32)}}")
        if self.results is not None:
            if not hasattr(self.results, "sql"):
                raise QueryError(
                    "results filters are compiled by MantaService (get_traces / count_traces / "
                    "iter_trace_batches with results=...); TraceFilter needs the compiled form"
                )
            clauses.append(self.results.sql)
            params.update(self.results.params)
        if self.unmapped is not None:
            clauses.append(self.unmapped.clause(params))
        if self.text is not None:
            clauses.append(text_search.trace_clause(_as_list(self.text), run_clause, params))
        return (" AND ".join(clauses) or "1"), params

    @property
    def spans_filterable(self) -> bool:
        """Whether :meth:`where` also selects on the spans table: every set field is a
        column spans have (run, trace ids, unmapped)."""
        span_fields = {"run_id", "trace_ids", "unmapped", "shard_count", "meta"}
        return (
            self.run_id is not None
            and not self.meta
            and all(
                getattr(self, name) is None
                for name in self.__dataclass_fields__
                if name not in span_fields
            )
        )


# A JSON number as the filter spells it in a string ("0.6", "-3", "1e3"), nothing looser.
_JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")


def _number_in_string(text: str) -> int | float | None:
    """The number a string spells in JSON syntax (``"0.6"`` -> 0.6), else ``None``."""
    if not _JSON_NUMBER.fullmatch(text):
        return None
    if any(c in text for c in ".eE"):
        number = float(text)
        return number if math.isfinite(number) else None
    return int(text)


def meta_clause(index: int, key: str, value: Any, params: dict[str, Any]) -> str:
    """Match the top-level meta key ``key`` against ``value``; the documented rule:

    - a **number** matches a stored JSON number of the same value, compared exactly (a whole
      number as a 64-bit integer, so 2**53 + 1 does not match 2**53; ``1`` matches ``1.0``);
    - a **string** matches a stored string equal to it, and, when it spells a JSON number
      (``"0.6"``, ``"10"``), a stored number of that value too, as given on a command line;
    - a **bool** matches only a stored ``true``/``false`` (never ``1``/``0``);
    - **None** matches a key present with a JSON ``null`` (a trace without the key does not).
    """
    key_param, value_param = f"f_mk{index}", f"f_mv{index}"
    params[key_param] = key
    ref = f"meta, {{{key_param}:String}}"
    if value is None:
        return f"(JSONHas({ref}) AND JSONType({ref}) = 'Null')"
    if isinstance(value, bool):
        params[value_param] = value
        return f"(JSONType({ref}) = 'Bool' AND JSONExtractBool({ref}) = {{{value_param}:Bool}})"
    if isinstance(value, int | float):
        return "(" + " OR ".join(_number_clauses(ref, value_param, value, params)) + ")"
    if isinstance(value, str):
        params[value_param] = value
        options = [
            f"(JSONType({ref}) = 'String' AND JSONExtractString({ref}) = {{{value_param}:String}})"
        ]
        number = _number_in_string(value)
        if number is not None:
            options += _number_clauses(ref, f"{value_param}n", number, params)
        return "(" + " OR ".join(options) + ")"
    raise QueryError(
        f"meta filter {key!r}={value!r} is not supported: meta filters match a string, number, "
        f"boolean or None"
    )


def _number_clauses(ref: str, param: str, value: int | float, params: dict[str, Any]) -> list[str]:
    """Exact comparisons of a stored JSON number (Int64, UInt64 or Double) with ``value``."""
    clauses = []
    whole: int | None = None
    if isinstance(value, int):
        whole = value
    elif value.is_integer():
        whole = int(value)
    if whole is not None and args.INT64_MIN <= whole <= args.INT64_MAX:
        params[f"{param}i"] = whole
        clauses.append(
            f"(JSONType({ref}) = 'Int64' AND JSONExtractInt({ref}) = {{{param}i:Int64}})"
        )
    if whole is not None and 0 <= whole <= args.UINT64_MAX:
        params[f"{param}u"] = whole
        clauses.append(
            f"(JSONType({ref}) = 'UInt64' AND JSONExtractUInt({ref}) = {{{param}u:UInt64}})"
        )
    as_float = float(value)
    if whole is None or int(as_float) == whole:  # the stored double can hold it exactly
        params[f"{param}f"] = as_float
        clauses.append(
            f"(JSONType({ref}) = 'Double' AND JSONExtractFloat({ref}) = {{{param}f:Float64}})"
        )
    return clauses or ["0"]


# The hash shard of a datapoint: all traces of one datapoint land in one shard.
SHARD_EXPR = "toUInt32(cityHash64(datapoint_id) % {f_shard_count:UInt32})"


def order_clause(order_by: str | Sequence[str], descending: bool) -> str:
    """An ORDER BY over allow-listed columns with ``trace_id`` as the deterministic tie-break."""
    columns = args.strings("order_by", order_by)
    args.boolean("descending", descending)
    if not columns:
        raise QueryError(
            f"order_by needs at least one column (one of: {', '.join(ORDERABLE_COLUMNS)})"
        )
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

    def __post_init__(self) -> None:
        if self.kind is not None:
            self.kind = [_choice(k, SpanKind, "kind") for k in args.strings("kind", self.kind)]
        self.role = args.optional_strings("role", self.role)
        self.tool_name = args.optional_strings("tool_name", self.tool_name)
        self.name = args.optional_strings("name", self.name)
        if self.is_error is not None:
            self.is_error = args.boolean("is_error", self.is_error)

    def where(self) -> tuple[str, dict[str, Any]]:
        """The WHERE clause over ``spans`` (``1`` when empty) and its parameters."""
        clauses: list[str] = []
        params: dict[str, Any] = {}
        if self.kind is not None:
            params["s_kind"] = _as_list(self.kind)
            clauses.append("kind IN {s_kind:Array(String)}")
        for column, values in (("role", self.role), ("tool_name", self.tool_name)):
            if values is not None:
                params[f"s_{column}"] = _as_list(values)
                clauses.append(f"{column} IN {{s_{column}:Array(String)}}")
        if self.name is not None:
            params["s_name"] = _as_list(self.name)
            clauses.append("name IN {s_name:Array(String)}")
        if self.is_error is not None:
            params["s_is_error"] = self.is_error
            clauses.append("is_error = {s_is_error:Bool}")
        return (" AND ".join(clauses) or "1"), params


def count_traces(store: Store, flt: TraceFilter) -> int:
    """How many traces ``flt`` selects, counted in ClickHouse."""
    where, params = flt.where()
    return int(store.rows(f"SELECT count() FROM {{db}}.traces WHERE {where}", params)[0][0])


def similar_trace_ids(store: Store, wanted: str, limit: int = 5) -> list[str]:
    """The stored trace ids closest to ``wanted`` (edit distance, then id), for "not found"
    messages: a mistyped id gets the ids it was probably meant to be."""
    rows = store.rows(
        "SELECT trace_id FROM {db}.traces "
        "WHERE abs(toInt64(length(trace_id)) - {n:Int64}) <= 3 "
        "GROUP BY trace_id ORDER BY editDistance(trace_id, {w:String}), trace_id LIMIT {k:UInt32}",
        {"w": wanted, "n": len(wanted), "k": limit},
    )
    return [str(row[0]) for row in rows]
