"""What every page handler shares: rendering, the per-request service, query parameters, errors.

Templates are rendered by one Jinja environment with autoescaping on for every template, so
a value is always escaped unless a template says otherwise (none does).
"""

from __future__ import annotations

import json
import math
import re
import threading
import weakref
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar, cast
from urllib.parse import urlencode

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse

from manta_lib.explorer import links
from manta_lib.explorer.charts import format_number
from manta_lib.explorer.store_lease import StoreLease
from manta_lib.explorer.write_guard import AccessPolicy, annotator, csrf_token
from manta_lib.service import MantaService
from manta_lib.store.explorer_queries import table_fingerprint

T = TypeVar("T")


class PageError(Exception):
    """An error page: ``status`` with a title, a message and optional helpful links."""

    status = 400

    def __init__(
        self, title: str, message: str, suggestions: Sequence[tuple[str, str]] = ()
    ) -> None:
        super().__init__(message)
        self.title = title
        self.message = message
        self.suggestions = list(suggestions)


class NotFound(PageError):
    status = 404


class BadRequest(PageError):
    status = 400


class AggregateCache:
    """Aggregates reused while the tables they read hold the same data parts.

    The key includes a fingerprint of each table's active parts (read once per request, a few
    ms), so an import, a merge or a newly stored result makes the entries that read that table
    stale at once: a cached figure is never older than the data it was computed from.
    """

    def __init__(self, max_entries: int = 256) -> None:
        self.max_entries = max_entries
        self._entries: dict[tuple[Hashable, ...], Any] = {}
        # Fingerprints per service, i.e. per request: the aggregates of a page share them.
        self._fingerprints: weakref.WeakKeyDictionary[MantaService, dict[str, int]] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()

    def fingerprint(self, svc: MantaService, table: str) -> int:
        known = self._fingerprints.setdefault(svc, {})
        if table not in known:
            known[table] = table_fingerprint(svc.store, table)
        return known[table]

    def get(
        self,
        svc: MantaService,
        key: tuple[Hashable, ...],
        compute: Callable[[], T],
        tables: tuple[str, ...] = ("traces",),
    ) -> T:
        full_key = (*(self.fingerprint(svc, t) for t in tables), *key)
        with self._lock:
            if full_key in self._entries:
                return cast(T, self._entries[full_key])
        value = compute()
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
            self._entries[full_key] = value
        return value


@dataclass
class Explorer:
    """The app's state: where the data is, how to render, where Dagster is."""

    lease: StoreLease
    templates: jinja2.Environment
    dagster_url: str
    cache: AggregateCache = field(default_factory=AggregateCache)
    # Results tables and comparisons can hold a row per trace: keep only a few of them.
    large_cache: AggregateCache = field(default_factory=lambda: AggregateCache(max_entries=8))
    policy: AccessPolicy = field(default_factory=AccessPolicy)

    @contextmanager
    def service(self) -> Iterator[MantaService]:
        """A service on the shared store, held only for the duration of the block."""
        with self.lease.acquire() as store:
            yield MantaService(store)

    def cached(
        self,
        svc: MantaService,
        key: tuple[Hashable, ...],
        compute: Callable[[], T],
        tables: tuple[str, ...] = ("traces",),
        *,
        large: bool = False,
    ) -> T:
        """``compute()``, or its value from an earlier request if ``tables`` are unchanged.

        ``large`` values (a row per entity) go to a cache of a few entries only.
        """
        return (self.large_cache if large else self.cache).get(svc, key, compute, tables)


def template_environment(dagster_url: str = links.DEFAULT_DAGSTER_URL) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("manta_lib.explorer", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = _num
    env.filters["pct"] = _pct
    env.filters["usd"] = _usd
    env.filters["when"] = _when
    env.filters["cell"] = _cell
    env.globals.update(
        search=None,  # the trace page's search_marks.Highlighter when it marks a phrase
        run_url=lambda run_id: links.run_url(run_id, base=""),
        dagster_asset_url=lambda judge, level, partition=None: links.dagster_asset_url(
            judge, level, partition=partition, base=dagster_url
        ),
        trace_url=lambda trace_id: links.trace_url(trace_id, base=""),
        traces_url=lambda run_id=None, **f: links.traces_url(run_id, base="", **f),
        results_url=lambda judge, run_id, level="trace", **kw: links.results_url(
            judge, run_id, level, base="", **kw
        ),
        group_url=lambda run_id, datapoint_id, step=None, **kw: links.group_url(
            run_id, datapoint_id, step, base="", **kw
        ),
        entity_url=lambda level, entity_id, run_id: links.entity_url(
            level, str(entity_id), run_id, base=""
        ),
    )
    return env


def explorer(request: Request) -> Explorer:
    state: Explorer = request.app.state.explorer
    return state


def render(
    request: Request, template: str, context: dict[str, Any], *, status: int = 200
) -> HTMLResponse:
    """Render ``template``; an htmx request for a fragment gets the ``content`` block only."""
    state = explorer(request)
    page = state.templates.get_template(template)
    values = {
        "request": request,
        "dagster_url": state.dagster_url,
        "query": request.query_params,
        "csrf_token": csrf_token(request),
        "annotating": state.policy.annotate,
        "annotator": annotator(request) if state.policy.annotate else None,
        **context,
    }
    fragment = (
        request.headers.get("HX-Request") == "true" and request.headers.get("HX-Boosted") != "true"
    )
    values["fragment"] = fragment
    response = HTMLResponse(visible_controls(page.render(values)), status_code=status)
    if fragment and request.headers.get("HX-Target") not in _LIVE_TARGETS:
        # The address bar shows the filters that are set, not every empty form field.
        response.headers["HX-Push-Url"] = clean_url(request)
    return response


_LIVE_TARGETS = ("live-region", "live-badge")  # a live refresh keeps the address and history

# Characters a browser would hide or act on: C0 controls but tab and newlines (NUL included),
# DEL, and the bidirectional overrides and isolates that reorder the text around them.
_INVISIBLE = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]"
)


def _shown(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code < 0x20:
        return chr(0x2400 + code)  # the Control Pictures sign: NUL -> U+2400
    if code == 0x7F:
        return "\u2421"
    return f"[U+{code:04X}]"


def visible_controls(html: str) -> str:
    """``html`` with control and bidirectional-override characters shown as visible signs."""
    if _INVISIBLE.search(html) is None:
        return html
    return _INVISIBLE.sub(_shown, html)


def clean_url(request: Request) -> str:
    """The request's path and query without empty parameters."""
    params = [(k, v) for k, v in request.query_params.multi_items() if v.strip()]
    return request.url.path + (f"?{urlencode(params)}" if params else "")


def url_with(request: Request, **changes: Any) -> str:
    """The current URL with some query parameters replaced (None removes one)."""
    params = [
        (k, v) for k, v in request.query_params.multi_items() if k not in changes and v.strip()
    ]
    for key, value in changes.items():
        if value is None or value == "":
            continue
        if isinstance(value, list | tuple):
            params.extend((key, str(v)) for v in value)
        else:
            params.append((key, str(value)))
    return request.url.path + (f"?{urlencode(params)}" if params else "")


# ---- query parameters ----------------------------------------------------------------------


def text_param(request: Request, name: str) -> str | None:
    value = request.query_params.get(name, "").strip()
    return value or None


def list_param(request: Request, name: str) -> list[str]:
    return [v.strip() for v in request.query_params.getlist(name) if v.strip()]


def int_param(
    request: Request, name: str, default: int | None = None, *, minimum: int | None = None
) -> int | None:
    raw = text_param(request, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(
            "Invalid filter", f"{name}={raw!r} is not a whole number; use e.g. {name}=10."
        ) from None
    if minimum is not None and value < minimum:
        raise BadRequest("Invalid filter", f"{name}={value} must be at least {minimum}.")
    return value


def float_param(request: Request, name: str) -> float | None:
    raw = text_param(request, name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise BadRequest(
            "Invalid filter", f"{name}={raw!r} is not a number; use e.g. {name}=0.5."
        ) from None
    if not math.isfinite(value):
        raise BadRequest("Invalid filter", f"{name}={raw!r} must be a finite number.")
    return value


def choice_param(request: Request, name: str, choices: Sequence[str], default: str) -> str:
    raw = text_param(request, name)
    if raw is None:
        return default
    if raw not in choices:
        raise BadRequest(
            "Invalid parameter",
            f"{name}={raw!r} is not one of: {', '.join(choices)}.",
        )
    return raw


# ---- filters -------------------------------------------------------------------------------


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != value:
            return "NaN"
        return format_number(value) if digits == 3 else f"{value:.{digits}f}"
    return str(value)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.1f}%"


def _usd(value: float | None) -> str:
    if value is None:
        return "unknown"  # a cost nobody recorded or could price is never shown as $0
    return f"${value:,.2f}" if value >= 1 else f"${value:.4f}"


def _cell(value: Any) -> str:
    """A table cell: numbers short, nested values as compact JSON (at most 300 characters)."""
    if value is None:
        return "–"
    if isinstance(value, bool | int | float):
        return _num(value)
    if isinstance(value, list | dict | tuple):
        text = json.dumps(value, ensure_ascii=False, default=str, separators=(", ", ": "))
        return text if len(text) <= 300 else text[:299] + "…"
    if isinstance(value, datetime):
        return _when(value)
    text = str(value)
    return text if len(text) <= 300 else text[:299] + "…"


def _when(value: datetime | None) -> str:
    return "–" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")
