"""The collector's HTTP side: an ASGI application served by uvicorn.

Every request gets an answer: an unexpected failure is a ``500`` naming the exception (its
traceback goes to the debug log, not the console); a request body must arrive within
``body_timeout`` seconds (else ``408`` and the connection is closed); a client that goes away
is forgotten quietly. Handing a request to the collector (which decodes and validates it, in
a worker process when it has them, then waits for the spool's ``fsync``) runs on worker
threads, so the event loop keeps accepting connections (uvicorn's listen backlog is 2048).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import zlib
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from manta_lib.importers.base import Problems
from manta_lib.importers.otel_decode import proto_module


class SpanReceiver(Protocol):
    """What the HTTP side needs of the collector (:class:`manta_lib.collector.Collector`)."""

    token: str | None
    max_body_bytes: int

    def count(self, name: str, number: int = 1) -> None: ...

    def receive(self, body: bytes, content_type: str) -> tuple[int, str]: ...

    def receive_rollouts(self, body: bytes) -> tuple[int, list[tuple[int, list[str]]]]: ...


log = logging.getLogger(__name__)

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
NDJSON = ("application/x-ndjson", "application/jsonl", "application/jsonlines")
ROLLOUTS = "/v1/rollouts"
_GRPC_CODES = {400: 3, 401: 16, 404: 5, 405: 12, 408: 4, 413: 8, 415: 3, 500: 13, 503: 14}

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class _Reply(Exception):
    """An answer decided while reading the request."""

    def __init__(self, status: int, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


class _Gone(Exception):
    """The client went away before its request was read."""


class CollectorApp:
    """``POST /v1/traces``, ``POST /v1/rollouts`` (and ``GET /health``) for one
    :class:`Collector`."""

    def __init__(self, collector: SpanReceiver, *, body_timeout: float, workers: int = 8) -> None:
        self.collector = collector
        self.body_timeout = body_timeout
        self.executor = ThreadPoolExecutor(workers, thread_name_prefix="otlp-receive")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        reply_type = PROTOBUF if content_type == PROTOBUF else JSON
        try:
            status, body, kind = await self._handle(scope, headers, content_type, receive)
            extra: list[tuple[bytes, bytes]] = []
        except _Gone:
            log.debug("client %s went away before its request was read", scope.get("client"))
            return
        except _Reply as reply:
            status = reply.status
            body, kind = status_body(status, reply.message, reply_type)
            extra = [(b"retry-after", str(reply.retry_after).encode())] if reply.retry_after else []
            if status in (408, 413):
                extra.append((b"connection", b"close"))  # the rest of the body is not read
        except Exception as exc:  # every request gets an answer
            log.error("collector: request failed (%s: %s)", type(exc).__name__, exc)
            log.debug("collector request failure", exc_info=True)
            status = 500
            body, kind = status_body(500, f"internal error ({type(exc).__name__})", reply_type)
            extra = []
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [
                        (b"content-type", kind.encode()),
                        (b"content-length", str(len(body)).encode()),
                        *extra,
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
        except OSError:  # the client closed the connection: nothing to tell it
            log.debug("client %s went away before the answer", scope.get("client"))

    async def _handle(
        self, scope: Scope, headers: dict[str, str], content_type: str, receive: Receive
    ) -> tuple[int, bytes, str]:
        owner = self.collector
        path, method = scope["path"], scope["method"]
        if path in ("/", "/health"):
            if method in ("GET", "HEAD"):
                return 200, b"ok\n", "text/plain"
            raise _Reply(405, f"{method} {path} is not served; GET it")
        if path not in ("/v1/traces", ROLLOUTS):
            raise _Reply(404, f"only POST /v1/traces and POST {ROLLOUTS} are served")
        if method != "POST":
            raise _Reply(405, f"POST OTLP trace requests to /v1/traces, rollouts to {ROLLOUTS}")
        owner.count("requests")
        if owner.token and not hmac.compare_digest(
            headers.get("authorization", "").encode(), f"Bearer {owner.token}".encode()
        ):
            raise _Reply(401, "missing or wrong bearer token")
        rollouts = path == ROLLOUTS
        if rollouts and content_type not in NDJSON:
            raise _Reply(
                415,
                f"unsupported content type {content_type!r}; send rollout-spool JSON Lines "
                f"as {NDJSON[0]}",
            )
        if not rollouts and content_type not in (PROTOBUF, JSON):
            raise _Reply(
                415, f"unsupported content type {content_type!r}; send {PROTOBUF} or {JSON}"
            )
        encoding = headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("identity", "gzip"):
            raise _Reply(415, f"unsupported Content-Encoding {encoding!r} (use gzip)")
        limit = owner.max_body_bytes
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise _Reply(413, f"body of {length} bytes exceeds the limit of {limit}")
        body = await self._read_body(receive, limit)
        loop = asyncio.get_running_loop()
        if rollouts:
            return await loop.run_in_executor(self.executor, self._accept_rollouts, body, encoding)
        return await loop.run_in_executor(self.executor, self._accept, body, content_type, encoding)

    async def _read_body(self, receive: Receive, limit: int) -> bytes:
        chunks: list[bytes] = []
        size = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                raise _Reply(
                    408, f"the request body did not arrive within {self.body_timeout:g} s"
                ) from None
            if message["type"] == "http.disconnect":
                raise _Gone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise _Reply(413, f"body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _decompress(self, body: bytes, encoding: str) -> bytes:
        if encoding != "gzip":
            return body
        try:
            return gunzip(body, self.collector.max_body_bytes)
        except ValueError as exc:
            self.collector.count("bad_requests")
            raise _Reply(413 if "limit" in str(exc) else 400, str(exc)) from None

    def _accept_rollouts(self, body: bytes, encoding: str) -> tuple[int, bytes, str]:
        """Validate and keep one body of rollout lines (on a worker thread): ``200`` with
        ``{"accepted", "rejected", "rejections": [{"line", "reasons"}]}``."""
        body = self._decompress(body, encoding)
        try:
            accepted, rejections = self.collector.receive_rollouts(body)
        except BufferError as exc:
            raise _Reply(503, f"{exc}; retry later", retry_after=2) from None
        payload = {
            "accepted": accepted,
            "rejected": len(rejections),
            "rejections": [{"line": line, "reasons": why} for line, why in rejections],
        }
        return 200, json.dumps(payload).encode(), JSON

    def _accept(self, body: bytes, content_type: str, encoding: str) -> tuple[int, bytes, str]:
        """Decode, validate and keep one request (on a worker thread)."""
        owner = self.collector
        body = self._decompress(body, encoding)
        try:
            rejected, message = owner.receive(body, content_type)
        except (RecursionError, ValueError, TypeError, AttributeError, OverflowError) as exc:
            # shapes the decoders did not foresee: refused whole like any bad payload
            log.debug("unreadable OTLP request", exc_info=True)
            owner.count("bad_requests")
            raise _Reply(400, f"cannot read the request ({type(exc).__name__}: {exc})") from None
        except Problems as exc:
            owner.count("bad_requests")
            shown = "; ".join(f"{f}: {r}" if f else r for f, r in exc.problems[:5])
            more = len(exc.problems) - 5
            raise _Reply(400, shown + (f" (and {more} more)" if more > 0 else "")) from None
        except BufferError as exc:
            raise _Reply(503, f"{exc}; retry later", retry_after=2) from None
        return success_body(rejected, message, content_type)


def success_body(rejected: int, message: str, content_type: str) -> tuple[int, bytes, str]:
    """``200`` with an ``ExportTraceServiceResponse`` (``partial_success`` when some spans
    were refused)."""
    if content_type == PROTOBUF:
        response = proto_module().ExportTraceServiceResponse()
        if rejected:
            response.partial_success.rejected_spans = rejected
            response.partial_success.error_message = message
        return 200, response.SerializeToString(), PROTOBUF
    payload: dict[str, Any] = {}
    if rejected:
        payload["partialSuccess"] = {"rejectedSpans": str(rejected), "errorMessage": message}
    return 200, json.dumps(payload).encode(), JSON


def status_body(code: int, message: str, reply_type: str) -> tuple[bytes, str]:
    """A ``google.rpc.Status`` body, protobuf when the request was protobuf (if available)."""
    if reply_type == PROTOBUF:
        try:
            from google.rpc import status_pb2

            status = status_pb2.Status(code=_GRPC_CODES.get(code, 2), message=message)
            return status.SerializeToString(), PROTOBUF
        except ImportError:
            pass
    return json.dumps({"code": _GRPC_CODES.get(code, 2), "message": message}).encode(), JSON


def gunzip(body: bytes, limit: int) -> bytes:
    """A gzip body, every member of it (RFC 1952 allows several), up to ``limit`` bytes."""
    out: list[bytes] = []
    size = 0
    rest = body
    while rest:
        decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            chunk = decompressor.decompress(rest, limit + 1 - size)
        except zlib.error as exc:
            raise ValueError(f"body is not valid gzip ({exc})") from None
        size += len(chunk)
        if size > limit or decompressor.unconsumed_tail:
            raise ValueError(f"decompressed body exceeds the limit of {limit} bytes")
        if not decompressor.eof:
            raise ValueError("gzip body is truncated")
        out.append(chunk)
        rest = decompressor.unused_data
        if rest and not rest.lstrip(b"\0"):
            break  # zero padding after the last member, as gzip(1) accepts
    if not out:
        raise ValueError("body is not valid gzip (empty)")
    return b"".join(out)
