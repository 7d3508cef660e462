"""The trace list (filters, sorting, pages) and the trace page."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from manta_lib.annotations import Annotations
from manta_lib.errors import QueryError
from manta_lib.explorer.links import trace_url
from manta_lib.explorer.pages_live import live_context
from manta_lib.explorer.pages_results import RESULT_TABLES, cached_judges
from manta_lib.explorer.search_marks import Highlighter, trace_link_suffix
from manta_lib.explorer.trace_results import trace_results
from manta_lib.explorer.trace_view import build_trace_view
from manta_lib.explorer.web import (
    BadRequest,
    Explorer,
    NotFound,
    choice_param,
    explorer,
    float_param,
    int_param,
    list_param,
    render,
    text_param,
    url_with,
)
from manta_lib.models import TraceRecord
from manta_lib.results.expr import comparisons, parse_condition
from manta_lib.results.trace_columns import (
    ColumnValues,
    TraceKey,
    column_values,
    order_by_column,
    resolve_columns,
)
from manta_lib.service import MantaService
from manta_lib.store.explorer_queries import trace_facets, trace_keys
from manta_lib.store.text_search import SEARCHED_COLUMNS, first_hits
from manta_lib.store.trace_queries import ORDERABLE_COLUMNS

PAGE_SIZES = (20, 50, 100, 200)
DEFAULT_PAGE_SIZE = 50
_STEP_BOUND = 2**62


def trace_filters(request: Request) -> dict[str, Any]:
    """The trace list's query parameters as ``MantaService`` trace filters."""
    filters: dict[str, Any] = {}
    runs = list_param(request, "run")
    if runs:
        filters["run_id"] = runs
    for param, name in (
        ("phase", "phase"),
        ("status", "status"),
        ("model", "model_name"),
        ("datapoint", "datapoint_id"),
    ):
        values = list_param(request, param)
        if values:
            filters[name] = values
    step_min = int_param(request, "step_min")
    step_max = int_param(request, "step_max")
    if step_min is not None or step_max is not None:
        low = step_min if step_min is not None else -_STEP_BOUND
        high = step_max if step_max is not None else _STEP_BOUND
        if low > high:
            raise BadRequest(
                "Invalid filter",
                f"step range {low}..{high} is empty: step_min must not exceed step_max.",
            )
        filters["step"] = (low, high)
    for param in ("min_score", "max_score"):
        value = float_param(request, param)
        if value is not None:
            filters[param] = value
    condition = text_param(request, "results")
    if condition is not None:
        filters["results"] = condition  # a semi-join on stored results, run by the service
    phrase = text_param(request, "text")
    if phrase is not None:
        filters["text"] = phrase  # full-text search over the traces' spans
    shard = int_param(request, "shard", minimum=0)
    if shard is not None:
        if shard >= 64:
            raise BadRequest("Invalid filter", f"shard={shard} must be between 0 and 63.")
        filters["shards"] = [shard]
    return filters


def chosen_columns(request: Request) -> list[str]:
    """The ``cols=`` result columns (repeated or comma-separated); by default the fields of the
    ``results=`` condition, so a list filtered by a result shows that result."""
    names = [n.strip() for v in list_param(request, "cols") for n in v.split(",") if n.strip()]
    if names:
        return list(dict.fromkeys(names))
    condition = text_param(request, "results")
    if condition is None:
        return []
    try:
        fields = [str(c.field) for c in comparisons(parse_condition(condition))]
    except QueryError:
        return []  # the filter itself reports the error
    return list(dict.fromkeys(f for f in fields if "." in f))


def result_columns(
    state: Explorer, svc: MantaService, names: list[str], run_ids: tuple[str, ...]
) -> list[ColumnValues]:
    """Each chosen column's values over ``run_ids``, reused while the results are unchanged."""
    if not names:
        return []
    resolved = state.cached(
        svc,
        ("result_columns", tuple(names), run_ids),
        lambda: resolve_columns(svc.store, names, run_ids=run_ids),
        tables=RESULT_TABLES,
    )
    return [
        state.cached(
            svc,
            ("result_column", column, run_ids),
            lambda column=column: column_values(svc.store, column, run_ids),  # type: ignore[misc]
            tables=RESULT_TABLES,
            large=True,
        )
        for column in resolved
    ]


def _sorted_by_result(
    state: Explorer,
    svc: MantaService,
    filters: dict[str, Any],
    values: ColumnValues,
    descending: bool,
    offset: int,
    limit: int,
) -> list[TraceRecord]:
    """One page of the matching traces ordered by a result column (missing values last).

    The order is computed once (the keys of every matching trace, sorted in Python) and
    reused for the other pages while the traces and the results are unchanged.
    """

    def ordered() -> list[str]:
        rest = {k: v for k, v in filters.items() if k != "run_id"}
        flt = svc._trace_filter(filters.get("run_id"), rest)
        keys = [TraceKey(*row) for row in trace_keys(svc.store, flt)]
        return order_by_column(keys, values, descending=descending)

    key = ("sorted_by_result", repr(sorted(filters.items())), values.column, descending)
    order = state.cached(svc, key, ordered, tables=RESULT_TABLES, large=True)
    wanted = order[offset : offset + limit]
    if not wanted:
        return []
    found = {t.trace_id: t for t in svc.get_traces(trace_ids=wanted, limit=len(wanted))}
    return [found[t] for t in wanted if t in found]


def _count(state: Explorer, svc: MantaService, filters: dict[str, Any]) -> int:
    """The number of matching traces. A search scans the spans of the whole scope, so its
    count is kept while the traces and spans are unchanged: the next pages of the same search
    reuse it."""
    if not filters.get("text"):
        return svc.count_traces(**filters)
    key = ("search_count", repr(sorted(filters.items())))
    return state.cached(svc, key, lambda: svc.count_traces(**filters), tables=("traces", "spans"))


def traces_page(request: Request) -> Response:
    filters = trace_filters(request)
    names = chosen_columns(request)
    sort = choice_param(request, "sort", [*ORDERABLE_COLUMNS, *names], "step_number")
    descending = text_param(request, "desc") == "1"
    per_page = int_param(request, "per", DEFAULT_PAGE_SIZE, minimum=1) or DEFAULT_PAGE_SIZE
    if per_page not in PAGE_SIZES:
        raise BadRequest("Invalid parameter", f"per={per_page} must be one of {PAGE_SIZES}.")
    page = int_param(request, "page", 1, minimum=1) or 1
    state = explorer(request)
    with state.service() as svc:
        total = _count(state, svc, filters)
        selected = tuple(filters.get("run_id", ()))
        columns = result_columns(state, svc, names, selected)
        if sort in names:
            traces = _sorted_by_result(
                state,
                svc,
                filters,
                columns[names.index(sort)],
                descending,
                (page - 1) * per_page,
                per_page,
            )
        else:
            traces = svc.get_traces(
                order_by=sort,
                descending=descending,
                limit=per_page,
                offset=(page - 1) * per_page,
                **filters,
            )
        run_ids = state.cached(svc, ("run_ids",), svc.run_ids)
        facets = state.cached(
            svc, ("trace_facets", selected), lambda: trace_facets(svc.store, selected)
        )
        judges = [
            j.judge for j in cached_judges(state, svc, selected[0] if len(selected) == 1 else None)
        ]
        live = live_context(svc.store, selected)
        phrase = filters.get("text")
        hits = (
            first_hits(svc.store, phrase, [(t.run_id, t.trace_id) for t in traces], 50)
            if phrase
            else {}
        )
    pages = max((total + per_page - 1) // per_page, 1)
    return render(
        request,
        "traces.html",
        {
            "traces": traces,
            "total": total,
            "page": page,
            "pages": pages,
            "per_page": per_page,
            "page_sizes": PAGE_SIZES,
            "sort": sort,
            "desc": descending,
            "run_ids": run_ids,
            "facets": facets,
            "selected_runs": filters.get("run_id", []),
            "judges": judges,
            "result_cols": columns,
            "col_names": names,
            "live": live,
            "hits": {key[1]: hit for key, hit in hits.items()},
            "search": Highlighter(phrase) if phrase else None,
            "trace_link_suffix": trace_link_suffix(phrase),
            "prev_url": url_with(request, page=page - 1) if page > 1 else None,
            "next_url": url_with(request, page=page + 1) if page < pages else None,
            "sort_url": lambda column: url_with(
                request,
                sort=column,
                desc="0" if (column == sort and descending) else "1",
                page=None,
            ),
        },
    )


def trace_page(request: Request) -> Response:
    return render(
        request, "trace.html", trace_page_values(request, request.path_params["trace_id"])
    )


def trace_page_values(request: Request, trace_id: str) -> dict[str, Any]:
    """What ``trace.html`` renders for ``trace_id`` (the trace page, or an item to label)."""
    with explorer(request).service() as svc:
        found = svc.get_traces(trace_ids=[trace_id], limit=1)
        if not found:
            close = svc.similar_trace_ids(trace_id)
            raise NotFound(
                "Trace not found",
                f"There is no trace {trace_id!r} in this store"
                + (": the closest stored ids are below." if close else ".")
                + " A result row links to its trace.",
                [(trace_url(c, base=""), c) for c in close]
                + [("/traces", "all traces"), ("/", "runs")],
            )
        context = svc.load_contexts(found)[0]
        results = trace_results(svc, context)
        labels = Annotations(svc.store).labels_for(context.trace.run_id, trace_id)
    view = build_trace_view(context)
    phrase = text_param(request, "text")
    search = Highlighter(phrase) if phrase else None
    search_spans = 0
    if search is not None:
        search_spans = sum(
            any(search.found(getattr(span, column)) for column in SEARCHED_COLUMNS)
            for span in context.spans()
        )
    return {
        "view": view,
        "t": context.trace,
        "results": results,
        "search": search,
        "search_spans": search_spans,
        "labels": labels,
    }


_SPAN_TEXT_FIELDS = ("content", "tool_arguments", "tool_result")


def span_text(request: Request) -> Response:
    """The full text of one span field, as text/plain (never interpreted by the browser)."""
    trace_id = request.path_params["trace_id"]
    span_id = request.path_params["span_id"]
    field = choice_param(request, "field", _SPAN_TEXT_FIELDS, "content")
    with explorer(request).service() as svc:
        spans = svc.get_spans(trace_id).get(trace_id, [])
    for span in spans:
        if span.span_id == span_id:
            return PlainTextResponse(getattr(span, field))
    raise NotFound(
        "Span not found",
        f"Trace {trace_id!r} has no span {span_id!r}.",
        [(f"/traces/{trace_id}", "the trace")],
    )
