"""Live pages: while traces arrive, a page polls ``/live`` for its runs' trace count.

The page renders its count (``base``) into a badge that htmx polls every few seconds (not
while the tab is hidden: ``static/live.js`` cancels those requests). Each poll is one count
on the traces table's primary key. An unchanged count answers 204 (htmx swaps nothing); a new
one answers the badge ("N new traces") with an ``HX-Trigger: manta-new-traces`` header, on
which the page's ``#live-region`` fetches itself again and swaps only that region.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response

from manta_lib.explorer.web import explorer, int_param, list_param, render
from manta_lib.store import Store
from manta_lib.store.explorer_queries import trace_count

POLL_SECONDS = 5
NEW_TRACES_EVENT = "manta-new-traces"


def live_context(store: Store, run_ids: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """What a live page's badge needs: its runs and their trace count now."""
    count = trace_count(store, run_ids)
    return badge(list(run_ids), count, count)


def badge(run_ids: list[str], base: int, seen: int) -> dict[str, Any]:
    query = urlencode([*(("run", r) for r in run_ids), ("base", base), ("seen", seen)])
    return {
        "live_url": f"/live?{query}",
        "live_new": max(seen - base, 0),
        "live_seconds": POLL_SECONDS,
    }


def live_page(request: Request) -> Response:
    runs = list_param(request, "run")
    base = int_param(request, "base", 0, minimum=0) or 0
    seen = int_param(request, "seen", base, minimum=0)
    with explorer(request).service() as svc:
        now = trace_count(svc.store, runs)
    if now == seen:
        return Response(status_code=204)
    response = render(request, "live_badge.html", {"live": badge(runs, base, now)})
    response.headers["HX-Trigger"] = NEW_TRACES_EVENT
    if "HX-Push-Url" in response.headers:  # a poll never changes the address
        del response.headers["HX-Push-Url"]
    return response
