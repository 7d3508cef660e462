"""An OTLP/HTTP trace collector: ``POST /v1/traces`` from any OpenTelemetry exporter -> the store.

``manta collect`` (or :class:`Collector` in a process of your own) accepts
``ExportTraceServiceRequest`` bodies as protobuf (``application/x-protobuf``) or JSON
(``application/json``), optionally gzip-compressed, and answers as the OTLP specification
says: ``200`` with an ``ExportTraceServiceResponse`` (``partial_success`` counts the spans it
refused and says why), ``400`` for a body that does not decode or holds invalid ids (nothing
of such a request is kept), ``401`` without the bearer token, ``413`` past the body limit,
``415`` for another content type or encoding, ``503`` with ``Retry-After`` while its buffer is
full. A request is validated whole before any span is buffered.

Spans are buffered per trace; a trace is complete when no span of it arrived for
``idle_timeout`` seconds, then it is mapped (:mod:`manta_lib.importers.otel_map`) and
written with the other complete traces in one batch through the validated loader. The store
is opened when traces arrive and closed again as soon as a flush finds nothing to write (so
the embedded store is usable by other processes whenever the collector is quiet); a batch
that cannot be written stays buffered and is retried. On
shutdown (SIGTERM, SIGINT, :meth:`Collector.stop`) every buffered trace is written; traces
that still cannot be written, or that cannot be mapped, go to a JSON Lines file under
``$MANTA_DATA_DIR/collector/`` so nothing is lost.

The HTTP server is the standard library's ``ThreadingHTTPServer``: one thread per connection
is plenty for a handful of exporters sending batches, it adds no dependency, and the work per
request (protobuf decoding in C, a dict insert) is small next to the batched store write,
which runs on its own thread.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import logging
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from manta_lib.gc_pacing import relaxed_gc
from manta_lib.importers.base import Hierarchy, Problems
from manta_lib.importers.otel_decode import (
    OtelSpan,
    parse_protobuf,
    proto_module,
    spans_from_json,
    spans_from_proto,
)
from manta_lib.importers.otlp import group_traces
from manta_lib.ingest import SourceRecord, load_records
from manta_lib.settings import MantaSettings, load_settings
from manta_lib.store import Store

log = logging.getLogger(__name__)

__all__ = ["Collector", "CollectorStats"]

_PROTOBUF = "application/x-protobuf"
_JSON = "application/json"
_RUN_KEY = "manta.run_id"
_MAX_DRAIN_BYTES = 128 << 20  # a refused body up to this size is read so the client sees 4xx
_FLUSHED_MEMORY = 200_000  # trace ids remembered to recognise late spans


@dataclass
class CollectorStats:
    """Counters since start (read them for monitoring or tests)."""

    requests: int = 0
    bad_requests: int = 0
    spans_received: int = 0
    spans_rejected: int = 0
    traces_stored: int = 0
    spans_stored: int = 0
    traces_failed: int = 0
    late_spans: int = 0
    batches: int = 0


@dataclass
class _Pending:
    spans: list[OtelSpan] = field(default_factory=list)
    last_seen: float = 0.0
    has_run: bool = False


class _Buffer:
    """Spans per OTel trace id, with the time the last span of each arrived."""

    def __init__(self, max_spans: int) -> None:
        self.lock = threading.Lock()
        self.traces: dict[str, _Pending] = {}
        self.count = 0
        self.max_spans = max_spans
        self.flushed: OrderedDict[str, None] = OrderedDict()

    def add(self, spans: list[OtelSpan], default_run: bool) -> tuple[int, int, int] | None:
        """Buffer spans; ``(accepted, rejected for want of a run id, late)`` or None if full."""
        by_trace: dict[str, list[OtelSpan]] = {}
        for span in spans:
            by_trace.setdefault(span.trace_id, []).append(span)
        now = time.monotonic()
        accepted = rejected = late = 0
        with self.lock:
            if self.count + len(spans) > self.max_spans:
                return None
            for trace_id, members in by_trace.items():
                pending = self.traces.get(trace_id)
                has_run = default_run or any(
                    _RUN_KEY in s.attributes or _RUN_KEY in s.resource for s in members
                )
                if pending is None and not has_run:
                    rejected += len(members)
                    continue
                if trace_id in self.flushed:
                    late += len(members)
                if pending is None:
                    pending = self.traces[trace_id] = _Pending()
                pending.spans.extend(members)
                pending.last_seen = now
                pending.has_run = pending.has_run or has_run
                accepted += len(members)
                self.count += len(members)
        return accepted, rejected, late

    def take(self, idle_seconds: float | None) -> list[list[OtelSpan]]:
        """Remove and return the traces idle for ``idle_seconds`` (all with None)."""
        now = time.monotonic()
        with self.lock:
            done = [
                trace_id
                for trace_id, pending in self.traces.items()
                if idle_seconds is None or now - pending.last_seen >= idle_seconds
            ]
            groups = [self.traces.pop(trace_id).spans for trace_id in done]
            self.count -= sum(len(group) for group in groups)
            for trace_id in done:
                self.flushed[trace_id] = None
            while len(self.flushed) > _FLUSHED_MEMORY:
                self.flushed.popitem(last=False)
        return groups

    def put_back(self, groups: list[list[OtelSpan]]) -> None:
        with self.lock:
            for group in groups:
                pending = self.traces.setdefault(group[0].trace_id, _Pending(has_run=True))
                pending.spans[:0] = group
                pending.last_seen = 0.0
                self.count += len(group)
                self.flushed.pop(group[0].trace_id, None)


class Collector:
    """An OTLP/HTTP trace receiver writing complete traces to the store in batches.

    Example::

        with Collector(port=4318, idle_timeout=5) as collector:
            ...  # exporters send to http://127.0.0.1:4318/v1/traces
        print(collector.stats)
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 4318,
        token: str | None = None,
        idle_timeout: float = 30.0,
        flush_interval: float = 1.0,
        max_body_bytes: int = 16 << 20,
        max_buffered_spans: int = 1_000_000,
        hierarchy: Hierarchy | None = None,
        settings: MantaSettings | None = None,
        batch_size: int = 5000,
    ) -> None:
        self.settings = settings or load_settings()
        self.hierarchy = hierarchy or Hierarchy()
        self.token = token or None
        self.idle_timeout = idle_timeout
        self.flush_interval = flush_interval
        self.max_body_bytes = max_body_bytes
        self.batch_size = batch_size
        self.stats = CollectorStats()
        self._stats_lock = threading.Lock()
        self._buffer = _Buffer(max_buffered_spans)
        self._stop = threading.Event()
        self._write_lock = threading.Lock()
        self._store: Store | None = None  # open while traces keep coming, closed when quiet
        self._server = ThreadingHTTPServer((host, port), _handler_class(self))
        self._server.daemon_threads = True
        self._threads: list[threading.Thread] = []
        self.dead_letter = self.settings.data_dir / "collector" / "unwritten.jsonl"

    @property
    def address(self) -> tuple[str, int]:
        """The bound ``(host, port)`` (port 0 asks the system for a free one)."""
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def endpoint(self) -> str:
        host, port = self.address
        return f"http://{host}:{port}/v1/traces"

    def start(self) -> Collector:
        """Serve and flush on background threads; returns at once."""
        serve = threading.Thread(target=self._server.serve_forever, name="otlp-http", daemon=True)
        flush = threading.Thread(target=self._flush_loop, name="otlp-flush", daemon=True)
        self._threads = [serve, flush]
        for thread in self._threads:
            thread.start()
        log.info("collecting OTLP/HTTP traces on %s", self.endpoint)
        return self

    def stop(self) -> None:
        """Stop accepting requests, write every buffered trace, release the port."""
        self._server.shutdown()
        self._server.server_close()
        self._stop.set()
        for thread in self._threads:
            thread.join()
        self.flush(everything=True, final=True)
        self._release_store()
        log.info("collector stopped: %s", dataclasses.asdict(self.stats))

    def __enter__(self) -> Collector:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- writing -------------------------------------------------------------------------

    def _flush_loop(self) -> None:
        while not self._stop.wait(self.flush_interval):
            try:
                self.flush()
            except Exception:  # keep flushing later; the traces were put back
                log.exception("collector flush failed; retrying")

    def flush(self, *, everything: bool = False, final: bool = False) -> int:
        """Write complete traces (all buffered ones with ``everything``); returns how many."""
        with self._write_lock:
            groups = self._buffer.take(None if everything else self.idle_timeout)
            if not groups:
                # quiet: release the store (the embedded one is then free for other processes)
                self._release_store()
                return 0
            with relaxed_gc():  # the batch's objects are freed before collection resumes
                return self._write(groups, final)

    def _write(self, groups: list[list[OtelSpan]], final: bool) -> int:
        """Map, validate and store the traces ``groups``; keep any that cannot be stored."""
        unmapped: list[SourceRecord] = []

        def mapped() -> Iterator[SourceRecord]:  # one trace at a time: bounded memory
            for number, group in enumerate(groups, start=1):
                record = self._map(number, group)
                if record.problems:
                    unmapped.append(record)
                else:
                    yield record

        try:
            store = self._store or Store.open(self.settings)
            self._store = store
            report = load_records(
                mapped(),
                source="collector",
                store=store,
                batch_size=self.batch_size,
                progress=False,
            )
        except Exception as exc:  # any store failure: keep the traces (written ones are
            # found present on the retry, so a retry never duplicates)
            self._release_store()
            if not final:
                log.warning("cannot write %d traces yet (%s); will retry", len(groups), exc)
                self._buffer.put_back(groups)
                return 0
            self._dead_letter(groups, f"store unavailable: {exc}")
            return 0
        problems = [(r.line, f, why) for r in unmapped for f, why in r.problems]
        problems += [(e.line, e.field, e.reason) for e in report.errors]
        failed = sorted({line for line, _, _ in problems})
        with self._stats_lock:
            self.stats.traces_stored += report.traces_loaded
            self.stats.spans_stored += report.spans_loaded
            self.stats.traces_failed += len(failed)
            self.stats.batches += 1
        if failed:
            reasons = "; ".join(f"{f}: {why}" if f else why for _, f, why in problems)
            log.error("%d traces could not be stored: %s", len(failed), reasons[:2000])
            self._dead_letter([groups[line - 1] for line in failed], reasons)
        return report.traces_loaded

    def _map(self, number: int, group: list[OtelSpan]) -> SourceRecord:
        """One buffered trace as a record; a mapping failure becomes the record's problem."""
        try:
            (record,) = group_traces([(number, s) for s in group], self.hierarchy, "collector")
        except Exception as exc:  # an unexpected shape must not lose the other traces
            log.debug("mapping trace %s failed", group[0].trace_id, exc_info=True)
            return SourceRecord(
                "collector", number, None, (("", f"cannot map the trace ({exc!r})"),)
            )
        return record

    def _release_store(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def _dead_letter(self, groups: list[list[OtelSpan]], reason: str) -> None:
        if not groups:
            return
        self.dead_letter.parent.mkdir(parents=True, exist_ok=True)
        with self.dead_letter.open("a", encoding="utf-8") as handle:
            for group in groups:
                row = {
                    "trace_id": group[0].trace_id,
                    "reason": reason,
                    "spans": [dataclasses.asdict(s) for s in group],
                }
                handle.write(json.dumps(row, default=str) + "\n")
        log.error("kept %d unwritten traces in %s", len(groups), self.dead_letter)

    # ---- receiving (called by the request handler threads) --------------------------------

    def receive(self, body: bytes, content_type: str) -> tuple[int, int, str]:
        """Validate and buffer one request body; ``(accepted, rejected, message)``.

        Raises :class:`Problems` for an invalid body and :class:`BufferError` when full.
        """
        if content_type == _PROTOBUF:
            spans = spans_from_proto(parse_protobuf(body))
        else:
            try:
                doc = json.loads(body)
            except (ValueError, UnicodeDecodeError) as exc:
                raise Problems([("", f"invalid JSON ({exc})")]) from None
            spans = spans_from_json(doc)
        result = self._buffer.add(spans, default_run=bool(self.hierarchy.run_id))
        if result is None:
            raise BufferError("the collector's buffer is full")
        accepted, rejected, late = result
        with self._stats_lock:
            self.stats.spans_received += accepted
            self.stats.spans_rejected += rejected
            self.stats.late_spans += late
        if late:
            log.warning(
                "%d spans arrived after their trace was written (raise --idle-timeout)", late
            )
        message = ""
        if rejected:
            message = (
                f"{rejected} spans have no run id: set the resource attribute {_RUN_KEY} "
                f"(OTEL_RESOURCE_ATTRIBUTES={_RUN_KEY}=RUN) or start the collector with --run-id"
            )
        return accepted, rejected, message


def _handler_class(collector: Collector) -> type[BaseHTTPRequestHandler]:
    class Handler(_OTLPHandler):
        owner = collector

    return Handler


class _OTLPHandler(BaseHTTPRequestHandler):
    owner: Collector
    protocol_version = "HTTP/1.1"
    server_version = "manta-collect"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        if self.path.split("?")[0] in ("/", "/health"):
            self._reply(200, b"ok\n", "text/plain")
        else:
            self._reply(405 if self.path.startswith("/v1/traces") else 404, b"", "text/plain")

    def do_POST(self) -> None:
        owner = self.owner
        with owner._stats_lock:
            owner.stats.requests += 1
        if self.path.split("?")[0] != "/v1/traces":
            self._drain_or_close()
            self._error(404, "only POST /v1/traces is served", _JSON)
            return
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        reply_type = _PROTOBUF if content_type == _PROTOBUF else _JSON
        if owner.token and not hmac.compare_digest(
            (self.headers.get("Authorization") or "").encode(), f"Bearer {owner.token}".encode()
        ):
            self._drain_or_close()
            self._error(401, "missing or wrong bearer token", reply_type)
            return
        if content_type not in (_PROTOBUF, _JSON):
            self._drain_or_close()
            self._error(
                415,
                f"unsupported content type {content_type!r}; send {_PROTOBUF} or {_JSON}",
                _JSON,
            )
            return
        length_text = self.headers.get("Content-Length")
        if length_text is None or not length_text.isdigit():
            self.close_connection = True
            self._error(411, "a Content-Length header is required", reply_type)
            return
        length = int(length_text)
        if length > owner.max_body_bytes:
            self._drain_or_close()
            self._error(
                413,
                f"body of {length} bytes exceeds the limit of {owner.max_body_bytes}",
                reply_type,
            )
            return
        body = self.rfile.read(length)
        encoding = (self.headers.get("Content-Encoding") or "identity").strip().lower()
        if encoding == "gzip":
            try:
                body = _gunzip(body, owner.max_body_bytes)
            except ValueError as exc:
                self._error(413 if "limit" in str(exc) else 400, str(exc), reply_type)
                return
        elif encoding != "identity":
            self._error(415, f"unsupported Content-Encoding {encoding!r} (use gzip)", reply_type)
            return
        try:
            accepted, rejected, message = owner.receive(body, content_type)
        except (RecursionError, ValueError, TypeError, AttributeError) as exc:
            # shapes the decoders did not foresee: refused whole like any bad payload
            log.debug("unreadable OTLP request", exc_info=True)
            with owner._stats_lock:
                owner.stats.bad_requests += 1
            self._error(400, f"cannot read the request ({type(exc).__name__}: {exc})", reply_type)
            return
        except Problems as exc:
            with owner._stats_lock:
                owner.stats.bad_requests += 1
            shown = "; ".join(f"{f}: {r}" if f else r for f, r in exc.problems[:5])
            more = len(exc.problems) - 5
            self._error(400, shown + (f" (and {more} more)" if more > 0 else ""), reply_type)
            return
        except BufferError as exc:
            self._error(503, f"{exc}; retry later", reply_type, retry_after=2)
            return
        self._success(rejected, message, reply_type)

    def _drain_or_close(self) -> None:
        """Read and drop the body of a refused request (so the client reads our answer), or
        close the connection after answering when the body is too big to bother."""
        length_text = self.headers.get("Content-Length") or ""
        if not length_text.isdigit() or int(length_text) > _MAX_DRAIN_BYTES:
            self.close_connection = True
            return
        remaining = int(length_text)
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, 1 << 20))
            if not chunk:
                self.close_connection = True
                return
            remaining -= len(chunk)

    def _success(self, rejected: int, message: str, reply_type: str) -> None:
        if reply_type == _PROTOBUF:
            response = proto_module().ExportTraceServiceResponse()
            if rejected:
                response.partial_success.rejected_spans = rejected
                response.partial_success.error_message = message
            self._reply(200, response.SerializeToString(), _PROTOBUF)
            return
        payload: dict[str, Any] = {}
        if rejected:
            payload["partialSuccess"] = {"rejectedSpans": str(rejected), "errorMessage": message}
        self._reply(200, json.dumps(payload).encode(), _JSON)

    def _error(
        self, code: int, message: str, reply_type: str, retry_after: int | None = None
    ) -> None:
        body, kind = _status_body(code, message, reply_type)
        headers = {"Retry-After": str(retry_after)} if retry_after else {}
        self._reply(code, body, kind, headers)

    def _reply(
        self, code: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)


_GRPC_CODES = {400: 3, 401: 16, 404: 5, 411: 3, 413: 8, 415: 3, 503: 14}


def _status_body(code: int, message: str, reply_type: str) -> tuple[bytes, str]:
    """A ``google.rpc.Status`` body, protobuf when the request was protobuf (if available)."""
    if reply_type == _PROTOBUF:
        try:
            from google.rpc import status_pb2

            status = status_pb2.Status(code=_GRPC_CODES.get(code, 2), message=message)
            return status.SerializeToString(), _PROTOBUF
        except ImportError:
            pass
    return json.dumps({"code": _GRPC_CODES.get(code, 2), "message": message}).encode(), _JSON


def _gunzip(body: bytes, limit: int) -> bytes:
    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = decompressor.decompress(body, limit + 1)
    except zlib.error as exc:
        raise ValueError(f"body is not valid gzip ({exc})") from None
    if len(out) > limit or decompressor.unconsumed_tail:
        raise ValueError(f"decompressed body exceeds the limit of {limit} bytes")
    if not decompressor.eof:
        raise ValueError("gzip body is truncated")
    return out
