"""A real loopback HTTP server for client tests: programmable answers, recorded requests.

Example::

    with RecordingHTTPServer() as server:
        server.respond(503, json={"error": "busy"}, headers={"Retry-After": "0.1"})
        server.respond(200, json={"ok": True})
        httpx.put(server.url + "/v1/x", json={"a": 1})  # gets the 503
        assert server.requests[0].json() == {"a": 1}

Answers are served in the order they were queued; when the queue is empty every request gets
``default`` (200 ``{}`` unless changed).
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server received it (header names lower-cased)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    received_at: float  # time.monotonic()

    def json(self) -> Any:
        """The body decoded as JSON."""
        return json.loads(self.body)


@dataclass(frozen=True)
class CannedResponse:
    """An answer to serve: status, JSON (or raw) body, headers, and a delay before answering."""

    status: int = 200
    json: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    body: bytes | None = None

    def payload(self) -> bytes:
        if self.body is not None:
            return self.body
        return b"" if self.json is None else json.dumps(self.json).encode()


class LoopbackServer:
    """Start/stop and ``with`` for a ``ThreadingHTTPServer`` on 127.0.0.1 served by a thread.

    Subclasses set ``_server``, ``_thread`` and ``_stopping`` (set on stop, so handlers that
    sleep to simulate a slow answer wake up and give up).
    """

    _server: ThreadingHTTPServer
    _thread: threading.Thread
    _stopping: threading.Event

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RecordingHTTPServer(LoopbackServer):
    """A ``ThreadingHTTPServer`` on 127.0.0.1 (random port) run in a background thread."""

    def __init__(self, default: CannedResponse | None = None) -> None:
        self.default = default or CannedResponse(200, json={})
        self.requests: list[RecordedRequest] = []
        self._queue: deque[CannedResponse] = deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:40123`` (no trailing slash)."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def respond(
        self,
        status: int,
        json: Any = None,
        headers: dict[str, str] | None = None,
        delay: float = 0.0,
        body: bytes | None = None,
    ) -> RecordingHTTPServer:
        """Queue one answer (chainable)."""
        with self._lock:
            self._queue.append(CannedResponse(status, json, dict(headers or {}), delay, body))
        return self

    def _next(self, request: RecordedRequest) -> CannedResponse:
        with self._lock:
            self.requests.append(request)
            return self._queue.popleft() if self._queue else self.default

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                request = RecordedRequest(
                    method=self.command,
                    path=self.path,
                    headers={name.lower(): value for name, value in self.headers.items()},
                    body=body,
                    received_at=time.monotonic(),
                )
                canned = server._next(request)
                if canned.delay and server._stopping.wait(canned.delay):
                    return
                payload = canned.payload()
                try:
                    self.send_response(canned.status)
                    if canned.json is not None and canned.body is None:
                        self.send_header("Content-Type", "application/json")
                    for name, value in canned.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (e.g. timed out) before the answer

            do_GET = do_PUT = do_POST = do_PATCH = do_DELETE = _handle

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                """Keep test output quiet."""

        return Handler
