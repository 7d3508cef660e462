"""Who may read and who may write in the explorer.

The explorer is read-only unless it was started with ``annotate=True`` (``manta explore
--annotate``); then POSTs to the annotation endpoints (``/annotate/...``) are served and
every other write still gets 405. Every write served, whatever the mode, must

- come from the explorer's own pages: its ``Origin`` (or, without one, its ``Referer``) is the
  address the request was sent to (or ``MANTA_EXPLORER_URL``), so no page of another site can
  post a label through the user's browser;
- carry the CSRF token of the session (double submit: the ``manta_csrf`` cookie, HttpOnly and
  SameSite=Strict, must equal the form's ``csrf_token`` field or the ``X-CSRF-Token`` header);
- be a URL-encoded form of at most :data:`MAX_FORM_BYTES`.

When a token is configured (``MANTA_EXPLORER_TOKEN``, or ``MANTA_EXPLORER_TOKENS_FILE``: a JSON
object mapping each token to the annotator name it stands for), every request needs one, reads
included: an ``Authorization: Bearer TOKEN`` header, or the ``manta_token`` cookie the login
form (``/login``) sets. A browser without one is sent to the login form. The annotator name
is the token's name (tokens file), else the name the user gave (a cookie set by a form).
"""

from __future__ import annotations

import hmac
import json
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, parse_qsl, quote, urlparse

from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from manta_lib.errors import ConfigError
from manta_lib.explorer import links
from manta_lib.settings import MantaSettings

READ_METHODS = frozenset({"GET", "HEAD"})
WRITE_PREFIX = "/annotate/"
LOGIN_PATH = "/login"
CSRF_COOKIE = "manta_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
TOKEN_COOKIE = "manta_token"
ANNOTATOR_COOKIE = "manta_annotator"
MAX_FORM_BYTES = 64 * 1024
MIN_TOKEN_CHARS = 16
_SCOPE_CSRF = "manta.csrf"
_SCOPE_TOKEN_NAME = "manta.token_annotator"
_ANNOTATOR_NAME = re.compile(r"^[\w.@+ -]{1,64}$")
_SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
]


@dataclass(frozen=True)
class AccessPolicy:
    """What the explorer lets requests do.

    ``annotate``: the annotation endpoints accept writes. ``tokens``: token → the annotator
    name it stands for (``None``: a shared token, the user gives a name); empty means no token
    is needed (loopback use).
    """

    annotate: bool = False
    tokens: Mapping[str, str | None] = field(default_factory=dict)

    @property
    def needs_token(self) -> bool:
        return bool(self.tokens)

    def token_name(self, given: str | None) -> tuple[bool, str | None]:
        """Whether ``given`` is a known token, and the annotator name it stands for."""
        if not given:
            return False, None
        found, name = False, None
        for token, token_name in self.tokens.items():
            # compare against every token, in constant time each
            if hmac.compare_digest(token.encode(), given.encode()):
                found, name = True, token_name
        return found, name


def access_policy(settings: MantaSettings, *, annotate: bool = False) -> AccessPolicy:
    """The policy the settings describe: tokens from ``MANTA_EXPLORER_TOKEN`` and
    ``MANTA_EXPLORER_TOKENS_FILE``; :class:`ConfigError` for a short token or a bad file."""
    tokens: dict[str, str | None] = {}
    if settings.explorer_token is not None:
        token = settings.explorer_token.get_secret_value().strip()
        _check_token(token, "MANTA_EXPLORER_TOKEN")
        tokens[token] = None
    if settings.explorer_tokens_file is not None:
        tokens.update(read_tokens_file(settings.explorer_tokens_file))
    return AccessPolicy(annotate=annotate, tokens=tokens)


def read_tokens_file(path: Path) -> dict[str, str]:
    """Token → annotator name from a JSON object ``{"<token>": "<annotator>", ...}``."""
    where = f"MANTA_EXPLORER_TOKENS_FILE={str(path)!r}"
    try:
        data = json.loads(path.expanduser().read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read it ({exc.strerror}); fix the path") from None
    except ValueError as exc:
        raise ConfigError(
            f'{where} is not JSON ({exc}); write an object {{"<token>": "<annotator name>"}}'
        ) from None
    if not isinstance(data, dict) or not data:
        raise ConfigError(
            f'{where} must hold a non-empty JSON object {{"<token>": "<annotator name>"}}'
        )
    tokens: dict[str, str] = {}
    for token, name in data.items():
        _check_token(token, where)
        if not isinstance(name, str) or not valid_annotator(name):
            raise ConfigError(
                f"{where}: annotator name {name!r} is invalid; use 1-64 letters, digits, "
                f"spaces or . @ + - _"
            )
        tokens[token] = name
    return tokens


def _check_token(token: str, where: str) -> None:
    if len(token) < MIN_TOKEN_CHARS:
        raise ConfigError(
            f"{where}: a token of {len(token)} characters is too easy to guess; use at least "
            f"{MIN_TOKEN_CHARS} (e.g. python -c 'import secrets; print(secrets.token_urlsafe())')"
        )


def valid_annotator(name: str) -> bool:
    """Whether ``name`` is an acceptable annotator name (1-64 word characters, . @ + - space)."""
    return bool(_ANNOTATOR_NAME.match(name)) and name.strip() == name


async def read_form(request: Request) -> FormData:
    """The posted form (URL-encoded: :class:`AccessGuard` lets no other write through)."""
    body = await request.body()
    fields: list[tuple[str, str | UploadFile]] = []
    fields.extend(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
    return FormData(fields)


def csrf_token(request: Request) -> str:
    """The session's CSRF token, for the forms of the page being rendered."""
    return str(request.scope.get(_SCOPE_CSRF, ""))


def annotator(request: Request) -> str | None:
    """Who is annotating: the name the token stands for, else the name the user gave."""
    fixed = request.scope.get(_SCOPE_TOKEN_NAME)
    if fixed:
        return str(fixed)
    name = request.cookies.get(ANNOTATOR_COOKIE, "")
    return name if valid_annotator(name) else None


def name_is_fixed(request: Request) -> bool:
    """Whether the annotator name comes from the token (and cannot be changed in a form)."""
    return bool(request.scope.get(_SCOPE_TOKEN_NAME))


def safe_next(target: str | None, default: str = "/") -> str:
    """``target`` when it is a path of this app (never another site), else ``default``."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return default
    return target


def set_cookie(request: Request, response: Response, name: str, value: str) -> None:
    """An HttpOnly, SameSite=Strict cookie for the whole app (Secure over https)."""
    response.set_cookie(
        name,
        value,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )


class AccessGuard:
    """ASGI middleware: tokens, allowed methods, Origin and CSRF checks, security headers and
    a ``Server-Timing`` header (milliseconds in the app until the response started)."""

    def __init__(self, app: ASGIApp, policy: AccessPolicy | None = None) -> None:
        self.app = app
        self.policy = policy or AccessPolicy()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request = Request(scope)
        cookie = request.cookies.get(CSRF_COOKIE, "")
        new_csrf = None if len(cookie) >= 32 else secrets.token_urlsafe(32)
        scope[_SCOPE_CSRF] = new_csrf or cookie

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                elapsed_ms = (time.perf_counter() - started) * 1000
                headers = [*message.get("headers", []), *_SECURITY_HEADERS]
                headers.append((b"server-timing", f"app;dur={elapsed_ms:.1f}".encode()))
                if new_csrf is not None:
                    secure = "; Secure" if scope.get("scheme") == "https" else ""
                    headers.append(
                        (
                            b"set-cookie",
                            f"{CSRF_COOKIE}={new_csrf}; HttpOnly; Path=/; "
                            f"SameSite=Strict{secure}".encode(),
                        )
                    )
                message["headers"] = headers
            await send(message)

        refusal = self._authenticate(request, scope)
        if refusal is None:
            refusal = self._check_method(request)
        if refusal is not None:
            await refusal(scope, receive, send_with_headers)
            return
        if scope["method"] in READ_METHODS:
            await self.app(scope, receive, send_with_headers)
            return
        body, refusal = await self._read_form(request, receive)
        if refusal is None:
            refusal = self._check_origin(request) or self._check_csrf(request, body, cookie)
        if refusal is not None:
            await refusal(scope, receive, send_with_headers)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send_with_headers)

    # ---- checks: each returns a refusal, or None to go on --------------------------------

    def _authenticate(self, request: Request, scope: Scope) -> Response | None:
        if not self.policy.needs_token:
            return None
        path = request.url.path
        header = request.headers.get("authorization", "")
        given = header[7:].strip() if header.lower().startswith("bearer ") else None
        known, name = self.policy.token_name(given or request.cookies.get(TOKEN_COOKIE))
        if known:
            scope[_SCOPE_TOKEN_NAME] = name
            return None
        if path == LOGIN_PATH or path.startswith("/static/"):
            return None
        if header:
            return _refuse(401, "The token is not valid for this explorer.", bearer=True)
        if request.method in READ_METHODS:
            target = path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"{LOGIN_PATH}?next={quote(target, safe='')}", 303)
        return _refuse(401, "This explorer needs a token: log in at /login first.", bearer=True)

    def _check_method(self, request: Request) -> Response | None:
        if request.method in READ_METHODS:
            return None
        path = request.url.path
        if path == LOGIN_PATH and self.policy.needs_token:
            return None
        if self.policy.annotate and path.startswith(WRITE_PREFIX):
            return None
        if self.policy.annotate:
            message = "Only the annotation endpoints (/annotate/...) accept writes.\n"
        else:
            message = (
                "The explorer is read-only: only GET and HEAD are served "
                "(`manta explore --annotate` turns on the annotation endpoints).\n"
            )
        return PlainTextResponse(message, status_code=405, headers={"Allow": "GET, HEAD"})

    async def _read_form(self, request: Request, receive: Receive) -> tuple[bytes, Response | None]:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/x-www-form-urlencoded":
            return b"", _refuse(415, "A write is a form post (application/x-www-form-urlencoded).")
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return b"", _refuse(400, "The request ended before its body.")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_FORM_BYTES:
                return b"", _refuse(413, f"A form is at most {MAX_FORM_BYTES} bytes.")
            chunks.append(chunk)
            more = message.get("more_body", False)
        return b"".join(chunks), None

    def _check_origin(self, request: Request) -> Response | None:
        source = request.headers.get("origin")
        if source is None or source == "null":
            referer = request.headers.get("referer")
            if source is None and referer:
                parsed = urlparse(referer)
                source = f"{parsed.scheme}://{parsed.netloc}"
        if not source or source == "null":
            return _refuse(
                403,
                "A write must come from the explorer's own pages (the request had no Origin "
                "or Referer header).",
            )
        if _origin(source) not in self._own_origins(request):
            return _refuse(
                403, f"A write from {source} is refused: only the explorer's own pages can write."
            )
        return None

    @staticmethod
    def _own_origins(request: Request) -> set[str]:
        own = {_origin(f"{request.url.scheme}://{request.headers.get('host', '')}")}
        configured = urlparse(links.explorer_base_url())
        if configured.scheme and configured.netloc:
            own.add(_origin(f"{configured.scheme}://{configured.netloc}"))
        return own

    @staticmethod
    def _check_csrf(request: Request, body: bytes, cookie: str) -> Response | None:
        try:
            fields = parse_qs(body.decode("utf-8"), keep_blank_values=True)
        except UnicodeDecodeError:
            return _refuse(400, "The form is not UTF-8.")
        given = request.headers.get(CSRF_HEADER) or (fields.get(CSRF_FIELD) or [""])[0]
        if len(cookie) < 32 or not hmac.compare_digest(cookie.encode(), given.encode()):
            return _refuse(
                403,
                "The form's CSRF token is missing or stale: reload the page and submit again.",
            )
        return None


def _origin(value: str) -> str:
    """``scheme://host:port`` with the default port made explicit, lower-cased."""
    parsed = urlparse(value.strip().lower())
    try:
        port = parsed.port
    except ValueError:
        return ""
    port = port or {"http": 80, "https": 443}.get(parsed.scheme)
    return f"{parsed.scheme}://{parsed.hostname}:{port}"


def _refuse(status: int, message: str, *, bearer: bool = False) -> Response:
    headers = {"WWW-Authenticate": 'Bearer realm="manta explorer"'} if bearer else None
    return PlainTextResponse(message + "\n", status_code=status, headers=headers)
