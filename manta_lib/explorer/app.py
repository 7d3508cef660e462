"""The explorer web app: Starlette routes, Jinja templates, static files served by the app.

Read-only: every route is a GET (a POST, PUT or DELETE gets 405 before any handler runs).
Only the host names it serves are answered (loopback names, ``MANTA_EXPLORER_HOSTS``, the host
of ``MANTA_EXPLORER_URL``; ``manta explore --allow-remote`` adds its address): any other
``Host`` header gets 400, so a page of another site that rebinds its DNS name to 127.0.0.1
cannot read traces through the user's browser.
Pages are rendered on the server; the only script is the vendored htmx, served from
``/static`` (no CDN, so the app works offline). A strict Content-Security-Policy allows
scripts and styles from the app itself only, so even a value that escaped the templates'
autoescaping could not run.

Example::

    import uvicorn
    from manta_lib.explorer import create_app

    uvicorn.run(create_app(), host="127.0.0.1", port=8050)
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from urllib.parse import urlparse

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from manta_lib.errors import MantaError, QueryError, StoreUnavailableError
from manta_lib.explorer import links
from manta_lib.explorer.pages_compare import compare_page
from manta_lib.explorer.pages_curves import curves_page
from manta_lib.explorer.pages_group import group_page
from manta_lib.explorer.pages_live import live_page
from manta_lib.explorer.pages_results import results_page
from manta_lib.explorer.pages_runs import run_page, runs_page
from manta_lib.explorer.pages_traces import span_text, trace_page, traces_page
from manta_lib.explorer.store_lease import StoreLease
from manta_lib.explorer.web import Explorer, PageError, render, template_environment
from manta_lib.settings import MantaSettings, load_settings

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
_READ_METHODS = {"GET", "HEAD"}
STORE_RETRY_S = 5
"""How soon a 503 page (another process holds the embedded store) reloads itself."""
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1", "[::1]")
_SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
]


class ReadOnlyHeaders:
    """Refuse every method but GET/HEAD; add the security headers and a ``Server-Timing``
    header (milliseconds spent in the app until the response started) to each response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] not in _READ_METHODS:
            response = Response(
                "The explorer is read-only: only GET and HEAD are served.\n",
                status_code=405,
                headers={"Allow": "GET, HEAD"},
                media_type="text/plain",
            )
            await response(scope, receive, send)
            return

        started = time.perf_counter()

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                elapsed_ms = (time.perf_counter() - started) * 1000
                timing = (b"server-timing", f"app;dur={elapsed_ms:.1f}".encode())
                message["headers"] = [*message.get("headers", []), *_SECURITY_HEADERS, timing]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _page_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PageError)
    return _error_page(request, exc.status, exc.title, exc.message, exc.suggestions)


def _manta_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, StoreUnavailableError):
        response = _error_page(
            request, 503, "Store unavailable", str(exc), [], retry_s=STORE_RETRY_S
        )
        response.headers["Retry-After"] = str(STORE_RETRY_S)
        return response
    if isinstance(exc, QueryError):
        return _error_page(request, 400, "Invalid query", str(exc), [])
    log.warning("explorer request %s failed: %s", request.url.path, exc)
    return _error_page(request, 500, "Error", str(exc), [])


def _not_found(request: Request, exc: Exception) -> Response:
    return _error_page(
        request,
        404,
        "Page not found",
        f"The explorer has no page at {request.url.path!r}.",
        [("/", "runs"), ("/traces", "traces"), ("/curves", "curves")],
    )


def _error_page(
    request: Request,
    status: int,
    title: str,
    message: str,
    suggestions: list[tuple[str, str]],
    *,
    retry_s: int | None = None,
) -> Response:
    """The error page; with ``retry_s`` it reloads itself after that many seconds."""
    return render(
        request,
        "error.html",
        {
            "status": status,
            "title": title,
            "message": message,
            "suggestions": suggestions,
            "retry_s": retry_s,
        },
        status=status,
    )


def default_allowed_hosts() -> list[str]:
    """Host names the explorer answers by default: the loopback names, the comma-separated
    ``MANTA_EXPLORER_HOSTS`` and the host of ``MANTA_EXPLORER_URL``."""
    configured = os.environ.get("MANTA_EXPLORER_HOSTS", "")
    hosts = [*LOOPBACK_HOSTS, *(h.strip() for h in configured.split(",") if h.strip())]
    url_host = urlparse(links.explorer_base_url()).hostname
    if url_host:
        hosts.append(url_host)
    return list(dict.fromkeys(hosts))


def create_app(
    settings: MantaSettings | None = None,
    *,
    dagster_url: str | None = None,
    keep_store_open: bool | None = None,
    allowed_hosts: Sequence[str] | None = None,
) -> Starlette:
    """The explorer app over the store ``settings`` name (default: the environment).

    The store is opened when a request needs it and closed when no request is in flight, so
    other processes (a Dagster run) can use the embedded store between page views.
    ``keep_store_open`` keeps one connection for the app's life instead (the default with a
    ClickHouse server, where no lock is involved). ``dagster_url`` defaults to
    ``MANTA_DAGSTER_URL`` (or ``http://127.0.0.1:3000``). ``allowed_hosts``: the ``Host``
    names answered (default :func:`default_allowed_hosts`); any other gets 400.
    """
    lease = StoreLease(settings or load_settings(), keep_open=keep_store_open)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        lease.close()

    dagster = (dagster_url or links.dagster_base_url()).rstrip("/")
    state = Explorer(lease=lease, templates=template_environment(dagster), dagster_url=dagster)
    routes = [
        Route("/", runs_page, name="runs"),
        Route("/runs/{run_id:path}", run_page, name="run"),
        Route("/traces", traces_page, name="traces"),
        Route("/traces/{trace_id:path}/spans/{span_id:path}.txt", span_text, name="span_text"),
        Route("/traces/{trace_id:path}", trace_page, name="trace"),
        Route("/curves", curves_page, name="curves"),
        Route("/group", group_page, name="group"),
        Route("/live", live_page, name="live"),
        Route("/results/{judge}", results_page, name="results"),
        Route("/compare/{judge}", compare_page, name="compare"),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[
            Middleware(
                TrustedHostMiddleware,
                allowed_hosts=list(allowed_hosts or default_allowed_hosts()),
                www_redirect=False,
            ),
            Middleware(ReadOnlyHeaders),
        ],
        exception_handlers={
            PageError: _page_error,
            MantaError: _manta_error,
            404: _not_found,
        },
    )
    app.state.explorer = state
    return app
