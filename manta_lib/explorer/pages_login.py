"""The login form of an explorer that needs a token (``MANTA_EXPLORER_TOKEN`` or a tokens file).

A valid token is kept in an HttpOnly, SameSite=Strict cookie; scripts and API clients send
``Authorization: Bearer TOKEN`` instead.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from manta_lib.explorer.web import explorer, render
from manta_lib.explorer.write_guard import TOKEN_COOKIE, read_form, safe_next, set_cookie


async def login_page(request: Request) -> Response:
    """GET: the form; POST: check the token, set the cookie and go on to ``next``."""
    policy = explorer(request).policy
    if request.method == "GET":
        target = safe_next(request.query_params.get("next"))
        if not policy.needs_token:
            return RedirectResponse(target, 303)
        return render(request, "login.html", {"next": target, "error": None})
    form = await read_form(request)
    target = safe_next(str(form.get("next", "")))
    known, _ = policy.token_name(str(form.get("token", "")).strip())
    if not known:
        return render(
            request,
            "login.html",
            {"next": target, "error": "That token is not valid for this explorer."},
            status=401,
        )
    response = RedirectResponse(target, 303)
    set_cookie(request, response, TOKEN_COOKIE, str(form.get("token", "")).strip())
    return response
