"""The explorer web app: Starlette routes, Jinja templates, static files served by the app.

Read-only unless created with ``annotate=True`` (``manta explore --annotate``): then the
annotation endpoints accept form posts, each checked for its Origin and CSRF token; any other
write gets 405 before a handler runs. Once a token is configured every request needs it
(:mod:`manta_lib.explorer.write_guard`).
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

from manta_lib.errors import AnnotationError, MantaError, QueryError, StoreUnavailableError
from manta_lib.explorer import links
from manta_lib.explorer.pages_annotate import annotate_routes
from manta_lib.explorer.pages_calibration import calibration_page
from manta_lib.explorer.pages_compare import compare_page
from manta_lib.explorer.pages_curves import curves_page
from manta_lib.explorer.pages_group import group_page
from manta_lib.explorer.pages_live import live_page
from manta_lib.explorer.pages_login import login_page
from manta_lib.explorer.pages_results import results_page
from manta_lib.explorer.pages_runs import run_page, runs_page
from manta_lib.explorer.pages_traces import span_text, trace_page, traces_page
from manta_lib.explorer.store_lease import StoreLease
from manta_lib.explorer.web import Explorer, PageError, render, template_environment
from manta_lib.explorer.write_guard import AccessGuard, AccessPolicy, access_policy
from manta_lib.settings import MantaSettings, load_settings

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
STORE_RETRY_S = 5
"""How soon a 503 page (another process holds the embedded store) reloads itself."""
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1", "[::1]")


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
    if isinstance(exc, AnnotationError):  # nothing was stored
        return _error_page(request, 400, "Not stored", str(exc), [("/annotate", "queues")])
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
    annotate: bool = False,
    policy: AccessPolicy | None = None,
) -> Starlette:
    """The explorer app over the store ``settings`` name (default: the environment).

    The store is opened when a request needs it and closed when no request is in flight, so
    other processes (a Dagster run) can use the embedded store between page views.
    ``keep_store_open`` keeps one connection for the app's life instead (the default with a
    ClickHouse server, where no lock is involved). ``dagster_url`` defaults to
    ``MANTA_DAGSTER_URL`` (or ``http://127.0.0.1:3000``). ``allowed_hosts``: the ``Host``
    names answered (default :func:`default_allowed_hosts`); any other gets 400.
    ``annotate`` turns on the annotation endpoints (the only writes); ``policy`` replaces the
    access policy built from ``settings`` (its tokens) and ``annotate``.
    """
    settings = settings or load_settings()
    policy = policy or access_policy(settings, annotate=annotate)
    lease = StoreLease(settings, keep_open=keep_store_open)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        lease.close()

    dagster = (dagster_url or links.dagster_base_url()).rstrip("/")
    state = Explorer(
        lease=lease, templates=template_environment(dagster), dagster_url=dagster, policy=policy
    )
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
        Route("/calibration", calibration_page, name="calibration"),
        Route("/login", login_page, methods=["GET", "POST"], name="login"),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    if policy.annotate:
        routes[:0] = annotate_routes()
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[
            Middleware(
                TrustedHostMiddleware,
                allowed_hosts=list(allowed_hosts or default_allowed_hosts()),
                www_redirect=False,
            ),
            Middleware(AccessGuard, policy=policy),
        ],
        exception_handlers={
            PageError: _page_error,
            MantaError: _manta_error,
            404: _not_found,
        },
    )
    app.state.explorer = state
    return app
