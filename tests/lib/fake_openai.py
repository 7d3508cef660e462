"""A loopback OpenAI-compatible chat-completions server for judge tests and the benchmark.

It answers ``POST /v1/chat/completions`` with a JSON object matching the request's
``response_format`` schema (or what ``answer`` returns) and a ``usage`` block, ``GET /v1/models``
with one model, and ``GET /_stats`` with its counters. It can be told to misbehave:

* ``plan(...)`` queues faults for the next chat requests: ``Fault(429)``,
  ``Fault(429, retry_after=0.2)``, ``Fault(500)``, ``Fault(400, message=...)``,
  ``Fault("slow", delay=2)``, ``Fault("malformed")`` (content that is not JSON),
  ``Fault("schema")`` (valid JSON that violates the schema), ``Fault("html")`` (a 200 with a
  gateway's HTML page), ``Fault("huge_usage")`` (a usage block of a billion prompt tokens);
* ``rps_limit`` answers 429 to every request beyond that many in the last second, with
  ``Retry-After: <retry_after>``, or with ``retry-after-ms`` until the window has room when
  ``retry_after="exact"`` (as OpenAI's own limiter does), or with no hint;
* ``limit_headers`` adds ``x-ratelimit-limit-requests`` (the limit per minute) to answers, as
  OpenAI does;
* ``latency`` delays every answer; ``context_tokens`` refuses longer prompts like OpenAI does.

Usage tokens are deterministic: ``ceil(chars / 4)`` of the message contents plus 4 per message,
and ``ceil(chars / 4)`` of the answer. Run it alone with
``python -m tests.lib.fake_openai --latency 0.1 --rps 200`` (prints its base URL).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

from tests.lib.http_fixtures import LoopbackServer


class HTML(str):
    """A body sent as ``text/html`` instead of JSON."""


@dataclass(frozen=True)
class Fault:
    """One misbehaviour for one chat request: an HTTP status, ``"slow"``, ``"malformed"``,
    or ``"schema"``."""

    kind: int | str
    retry_after: float | None = None
    delay: float = 0.0
    message: str = "fault injected by the test"


def prompt_tokens(messages: list[dict[str, Any]]) -> int:
    chars = sum(len(str(message.get("content") or "")) for message in messages)
    return math.ceil(chars / 4) + 4 * len(messages)


def completion_tokens(content: str) -> int:
    return math.ceil(len(content) / 4)


def instance_of(schema: dict[str, Any], seed: str, defs: dict[str, Any] | None = None) -> Any:
    """A value matching a (strict) JSON schema, chosen deterministically from ``seed``."""
    defs = defs if defs is not None else schema.get("$defs", {})
    if "$ref" in schema:
        return instance_of(defs[schema["$ref"].split("/")[-1]], seed, defs)
    if "anyOf" in schema:
        options = [option for option in schema["anyOf"] if option.get("type") != "null"]
        return instance_of(options[0], seed, defs) if options else None
    digest = int(hashlib.sha256(seed.encode()).hexdigest()[:8], 16)
    if "enum" in schema:
        return schema["enum"][digest % len(schema["enum"])]
    kind = schema.get("type")
    if kind == "object":
        return {
            name: instance_of(sub, f"{seed}/{name}", defs)
            for name, sub in schema.get("properties", {}).items()
        }
    if kind == "array":
        return [instance_of(schema.get("items", {}), f"{seed}/0", defs)]
    if kind == "integer":
        return digest % 100
    if kind == "number":
        return (digest % 1000) / 10
    if kind == "boolean":
        return bool(digest % 2)
    # Answers of varied length, so token counts (and costs) differ between prompts.
    return "because " + "x" * (digest % 120)


class FakeOpenAIServer(LoopbackServer):
    """The server, on 127.0.0.1 at a random port, in a background thread."""

    def __init__(
        self,
        *,
        latency: float = 0.0,
        rps_limit: float | None = None,
        retry_after: float | Literal["exact"] | None = None,
        context_tokens: int | None = None,
        answer: Callable[[dict[str, Any]], Any] | None = None,
        record: bool = True,
        limit_headers: bool = False,
        port: int = 0,
    ) -> None:
        self.latency = latency
        self.rps_limit = rps_limit
        self.retry_after = retry_after
        self.context_tokens = context_tokens
        self.answer = answer
        self.record = record
        self.limit_headers = limit_headers
        self.requests: list[dict[str, Any]] = []
        self.arrivals: list[float] = []  # time.monotonic() of each chat request (when recording)
        self.chat_requests = 0
        self.completions = 0
        self.rate_limited = 0
        self.faults_served = 0
        self.max_in_flight = 0
        self._in_flight = 0
        self._faults: deque[Fault] = deque()
        self._window: deque[float] = deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        # The listen backlog is taken when the socket starts listening: set it before that
        # (the default of 5 refuses connections of a busy pool on a loaded machine).
        self._server = ThreadingHTTPServer(
            ("127.0.0.1", port), self._handler_class(), bind_and_activate=False
        )
        self._server.daemon_threads = True
        self._server.request_queue_size = 512
        try:
            self._server.server_bind()
            self._server.server_activate()
        except OSError:
            self._server.server_close()
            raise
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        """Base URL to use as ``OPENAI_BASE_URL`` (ends in ``/v1``)."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def plan(self, *faults: Fault) -> FakeOpenAIServer:
        """Queue faults for the next chat requests (in order); chainable."""
        with self._lock:
            self._faults.extend(faults)
        return self

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "chat_requests": self.chat_requests,
                "completions": self.completions,
                "rate_limited": self.rate_limited,
                "faults_served": self.faults_served,
                "max_in_flight": self.max_in_flight,
            }

    # -- request handling --------------------------------------------------------------------

    def _admit(self, body: dict[str, Any]) -> tuple[Fault | None, float | None]:
        """(fault to serve, seconds until the rate window has room when limited)."""
        now = time.monotonic()
        with self._lock:
            self.chat_requests += 1
            if self.record:
                self.requests.append(body)
                self.arrivals.append(now)
            if self.rps_limit is not None:
                while self._window and now - self._window[0] >= 1.0:
                    self._window.popleft()
                if len(self._window) >= self.rps_limit:
                    self.rate_limited += 1
                    return None, max(0.001, 1.0 - (now - self._window[0]))
                self._window.append(now)
            fault = self._faults.popleft() if self._faults else None
            if fault is not None:
                self.faults_served += 1
                if fault.kind == 429:
                    self.rate_limited += 1
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
            return fault, None

    def _done(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _chat(self, body: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        fault, room_in = self._admit(body)
        if room_in is not None:
            headers = {}
            if self.retry_after == "exact":  # like OpenAI's retry-after-ms: when there is room
                headers["retry-after-ms"] = f"{room_in * 1000:.0f}"
            elif self.retry_after is not None:
                headers["Retry-After"] = f"{self.retry_after:g}"
            return 429, _error("Rate limit reached for requests", "rate_limit_exceeded"), headers
        try:
            status, payload, headers = self._chat_answer(body, fault)
        finally:
            self._done()
        if self.limit_headers and self.rps_limit is not None:
            headers["x-ratelimit-limit-requests"] = f"{self.rps_limit * 60:g}"
        return status, payload, headers

    def _chat_answer(self, body: dict[str, Any], fault: Fault | None) -> tuple[int, Any, dict]:
        delay = self.latency + (fault.delay if fault is not None and fault.kind == "slow" else 0)
        if delay and self._stopping.wait(delay):
            return 503, _error("server stopping", "stopping"), {}
        if fault is not None and isinstance(fault.kind, int):
            headers = {}
            if fault.retry_after is not None:
                headers["Retry-After"] = f"{fault.retry_after:g}"
            return fault.kind, _error(fault.message, f"http_{fault.kind}"), headers
        if fault is not None and fault.kind == "html":
            page = "<!DOCTYPE html><html><body><h1>Sign in to the gateway</h1></body></html>"
            return 200, HTML(page), {}
        messages = body.get("messages", [])
        used = prompt_tokens(messages)
        if fault is not None and fault.kind == "huge_usage":
            used = 10**9
        if self.context_tokens is not None and used > self.context_tokens:
            message = (
                f"This model's maximum context length is {self.context_tokens} tokens. However, "
                f"your messages resulted in {used} tokens. Please reduce the length."
            )
            return 400, _error(message, "context_length_exceeded"), {}
        content = self._content(body, fault)
        with self._lock:
            self.completions += 1
        completion = {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "fake"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": used,
                "completion_tokens": completion_tokens(content),
                "total_tokens": used + completion_tokens(content),
            },
        }
        return 200, completion, {}

    def _content(self, body: dict[str, Any], fault: Fault | None) -> str:
        if fault is not None and fault.kind == "malformed":
            return '{"category": "tool_misuse", "rationale": '  # cut off mid-object
        if fault is not None and fault.kind == "schema":
            return json.dumps({"unexpected": "field", "category": 42})
        if self.answer is not None:
            value = self.answer(body)
            return value if isinstance(value, str) else json.dumps(value)
        schema = (body.get("response_format") or {}).get("json_schema", {}).get("schema")
        seed = json.dumps(body.get("messages", []), sort_keys=True) + str(body.get("seed"))
        if body.get("temperature", 0) > 0:
            seed += str(time.monotonic_ns())  # sampling: answers differ between requests
        if schema is None:
            return "a plain answer"
        return json.dumps(instance_of(schema, seed))

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like real providers

            def _send(self, status: int, payload: Any, headers: dict[str, str]) -> None:
                html = isinstance(payload, HTML)
                data = str(payload).encode() if html else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "text/html" if html else "application/json")
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up before the answer

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                if self.path.rstrip("/").endswith("/chat/completions"):
                    status, payload, headers = server._chat(json.loads(raw or b"{}"))
                    self._send(status, payload, headers)
                else:
                    self._send(404, _error(f"no route {self.path}", "not_found"), {})

            def do_GET(self) -> None:
                if self.path.rstrip("/").endswith("/models"):
                    model = {"id": "fake-judge", "object": "model", "owned_by": "manta-tests"}
                    self._send(200, {"object": "list", "data": [model]}, {})
                elif self.path.rstrip("/").endswith("/_stats"):
                    self._send(200, server.stats(), {})
                else:
                    self._send(404, _error(f"no route {self.path}", "not_found"), {})

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                """Keep test output quiet."""

        return Handler


def _error(message: str, code: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "code": code}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--rps", type=float, default=None, help="requests/second limit")
    parser.add_argument("--limit-headers", action="store_true", help="announce the limit")
    parser.add_argument(
        "--retry-after", default=None, help="seconds, or 'exact' (retry-after-ms until room)"
    )
    args = parser.parse_args()
    server = FakeOpenAIServer(
        latency=args.latency,
        rps_limit=args.rps,
        retry_after=(
            args.retry_after if args.retry_after in (None, "exact") else float(args.retry_after)
        ),
        record=False,
        limit_headers=args.limit_headers,
        port=args.port,
    )
    server.start()
    print(server.url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
