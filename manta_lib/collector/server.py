"""An OTLP/HTTP trace collector: ``POST /v1/traces`` from any OpenTelemetry exporter -> the store.

``manta collect`` (or :class:`Collector` in a process of your own) accepts
``ExportTraceServiceRequest`` bodies as protobuf (``application/x-protobuf``) or JSON
(``application/json``), optionally gzip-compressed (every gzip member), and answers as the
OTLP specification says: ``200`` with an ``ExportTraceServiceResponse`` (``partial_success``
counts the spans it refused and says why), ``400`` for a body that does not decode, holds
invalid ids or a trace that could not be stored (nothing of such a request is kept), ``401``
without the bearer token, ``408`` when the body does not arrive within ``body_timeout``,
``413`` past the body limit, ``415`` for another content type or encoding, ``503`` with
``Retry-After`` while its buffer is full. A request is validated whole (decoded, and each of
its traces mapped and checked like an import) before any span is kept.

**A 2xx means kept.** An accepted request is appended to a spool on disk and ``fsync``'d
before the answer (:mod:`manta_lib.collector.spool`; concurrent requests share an ``fsync``).
The spool is replayed when the collector starts, so a collector killed at any moment loses
no acknowledged span; a segment of it is deleted once its traces are in the store.

Spans are buffered per trace; a trace is complete when no span of it arrived for
``idle_timeout`` seconds, then it is mapped (:mod:`manta_lib.importers.otel_map`) and
written with the other complete traces in one batch through the validated loader. Each
``(trace_id, span_id)`` is stored once, and spans of a trace that arrive after it was written
join it (:mod:`manta_lib.importers.otel_join`: the trace is mapped again from all its spans).
The store is opened when traces arrive and closed again as soon as a flush finds nothing to
write (so the embedded store is usable by other processes whenever the collector is quiet); a
batch that cannot be written stays buffered (and spooled) and is retried, also by the next
start if the store is still unavailable at shutdown (SIGTERM, SIGINT, :meth:`Collector.stop`).
A trace that cannot be mapped at all goes to a JSON Lines file under
``$MANTA_DATA_DIR/collector/``.

``POST /v1/rollouts`` takes rollout-spool JSON Lines (:mod:`manta_lib.rollout_spool`, what a
:class:`~manta_lib.RolloutLogger`'s shipper sends while another process holds the store): each
line is mapped and checked, the valid ones written as an ``fsync``'d rollout shard before the
``200`` (which lists the refused lines with their reasons), and the flush thread imports the
shards into the store like the shipper would (trace ids are fixed, so a resent shard is
stored once).

The HTTP side is uvicorn serving a small ASGI application (:mod:`manta_lib.collector.http`,
the ``otlp`` extra); the spool's ``fsync`` runs on worker threads, the batched store write on
its own thread. Decoding, mapping and checking a request and shaping its spans run in worker
processes (:mod:`manta_lib.collector.prepare`; one per core beyond the second, up to 4,
``workers`` sets it), so one process is not the limit; the request's thread waits for them
before it spools and answers. The buffer keeps each span as the JSON text stored in
``otel_spans``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from manta_lib.collector.prepare import RUN_KEY, PreparedTrace, PreparePool
from manta_lib.errors import ConfigError
from manta_lib.gc_pacing import relaxed_gc
from manta_lib.importers.base import Hierarchy, Problems
from manta_lib.importers.otel_join import OtelPart, join_parts, span_from_payload
from manta_lib.ingest.loader import CheckedTrace, check_trace, load_records
from manta_lib.rollout_spool import SHARD_SUFFIX, parse_lines, shards, ship_once, spool_traces
from manta_lib.settings import MantaSettings, is_loopback_host, load_settings
from manta_lib.store import Store

log = logging.getLogger(__name__)

__all__ = ["Collector", "CollectorStats"]

_PROTOBUF = "application/x-protobuf"
_KINDS = {_PROTOBUF: 1, "application/json": 2}  # content type <-> spool record kind
_FLUSHED_MEMORY = 200_000  # trace ids remembered to recognise late spans
_BACKLOG = 2048
_SEGMENT_AGE_S = 5.0  # a spool segment older than this is closed (then deleted once written)


@dataclass
class CollectorStats:
    """Counters since start (read them for monitoring or tests)."""

    requests: int = 0
    bad_requests: int = 0
    spans_received: int = 0
    spans_rejected: int = 0
    spans_replayed: int = 0
    traces_stored: int = 0
    traces_joined: int = 0
    spans_stored: int = 0
    traces_failed: int = 0
    late_spans: int = 0
    batches: int = 0
    rollouts_received: int = 0
    rollouts_rejected: int = 0
    rollouts_stored: int = 0  # in the store after a flush (stored then, or already there)


@dataclass
class _Pending:
    trace_id: str  # the OTel trace id
    payloads: dict[str, str] = field(default_factory=dict)  # span id -> span_payload() text
    spans: int = 0  # spans received (repeats included)
    last_seen: float = 0.0
    has_run: bool = False
    segment: int = 0  # the oldest spool segment holding a span of it
    checked: CheckedTrace | None = None  # mapped and checked at receipt (while no span joined)


class _Buffer:
    """Spans per OTel trace id, with the time the last span of each arrived."""

    def __init__(self, max_spans: int) -> None:
        self.lock = threading.Lock()
        self.traces: dict[str, _Pending] = {}
        self.count = 0
        self.max_spans = max_spans
        self.flushed: OrderedDict[str, None] = OrderedDict()

    def add(
        self, traces: list[PreparedTrace], default_run: bool, segment: int
    ) -> tuple[int, int, int] | None:
        """Buffer spans; ``(accepted, rejected for want of a run id, late)`` or None if full.
        A trace's ``checked`` version is kept while no other span joins it."""
        now = time.monotonic()
        accepted = rejected = late = 0
        with self.lock:
            if self.count + sum(t.spans for t in traces) > self.max_spans:
                return None
            for trace in traces:
                trace_id = trace.trace_id
                pending = self.traces.get(trace_id)
                has_run = default_run or trace.has_run
                if pending is None and not has_run:
                    rejected += trace.spans
                    continue
                if trace_id in self.flushed:
                    late += trace.spans
                if pending is None:
                    pending = self.traces[trace_id] = _Pending(trace_id, segment=segment)
                    pending.checked = trace.checked
                    pending.payloads = trace.payloads
                else:
                    pending.checked = None
                    for span_id, payload in trace.payloads.items():
                        pending.payloads.setdefault(span_id, payload)  # the first copy is kept
                pending.spans += trace.spans
                pending.last_seen = now
                pending.has_run = pending.has_run or has_run
                pending.segment = min(pending.segment, segment)
                accepted += trace.spans
                self.count += trace.spans
        return accepted, rejected, late

    def take(self, idle_seconds: float | None) -> list[_Pending]:
        """Remove and return the traces idle for ``idle_seconds`` (all with None)."""
        now = time.monotonic()
        with self.lock:
            done = [
                trace_id
                for trace_id, pending in self.traces.items()
                if idle_seconds is None or now - pending.last_seen >= idle_seconds
            ]
            taken = [self.traces.pop(trace_id) for trace_id in done]
            self.count -= sum(p.spans for p in taken)
            for trace_id in done:
                self.flushed[trace_id] = None
            while len(self.flushed) > _FLUSHED_MEMORY:
                self.flushed.popitem(last=False)
        return taken

    def put_back(self, taken: list[_Pending]) -> None:
        with self.lock:
            for old in taken:
                trace_id = old.trace_id
                pending = self.traces.get(trace_id)
                if pending is None:
                    self.traces[trace_id] = old
                    old.checked = None  # mapped again when written
                    old.last_seen = 0.0
                else:  # spans arrived meanwhile: the older ones go first
                    pending.checked = None
                    merged = dict(old.payloads)
                    for span_id, payload in pending.payloads.items():
                        merged.setdefault(span_id, payload)
                    pending.payloads = merged
                    pending.spans += old.spans
                    pending.segment = min(pending.segment, old.segment)
                    pending.has_run = True
                    pending.last_seen = 0.0
                self.count += old.spans
                self.flushed.pop(trace_id, None)

    def oldest_segment(self) -> int | None:
        with self.lock:
            return min((p.segment for p in self.traces.values()), default=None)


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
        body_timeout: float = 30.0,
        spool_dir: Path | None = None,
        workers: int | None = None,
    ) -> None:
        self.settings = settings or load_settings()
        self.hierarchy = hierarchy or Hierarchy()
        self.token = token or None
        self.idle_timeout = idle_timeout
        self.flush_interval = flush_interval
        self.max_body_bytes = max_body_bytes
        self.body_timeout = body_timeout
        self.batch_size = batch_size
        # processes decoding, mapping and checking requests (0: on the request threads)
        self.workers = _default_workers() if workers is None else max(0, workers)
        self.stats = CollectorStats()
        self._stats_lock = threading.Lock()
        self._buffer = _Buffer(max_buffered_spans)
        self._stop = threading.Event()
        self._write_lock = threading.Lock()
        self._store: Store | None = None  # open while traces keep coming, closed when quiet
        self._threads: list[threading.Thread] = []
        self.dead_letter = self.settings.data_dir / "collector" / "unwritten.jsonl"
        self.spool_dir = spool_dir or self.settings.data_dir / "collector" / "spool"
        # rollouts accepted on /v1/rollouts, as rollout-spool shards until they are stored
        self.rollout_dir = self.spool_dir / "rollouts"
        self._socket = _listen(host, port)
        self._server: Any = None
        self._app: Any = None
        self._spool: Any = None
        self._pool: PreparePool | None = None
        if not self.token and not is_loopback_host(host):
            log.warning(
                "collecting on %s without a token: anyone who can reach this address can write "
                "traces to the store; set --token (or MANTA_COLLECT_TOKEN)",
                host,
            )

    @property
    def address(self) -> tuple[str, int]:
        """The bound ``(host, port)`` (port 0 asks the system for a free one)."""
        host, port = self._socket.getsockname()[:2]
        return str(host), int(port)

    @property
    def worker_pids(self) -> list[int]:
        """The ids of the worker processes that prepare requests (for monitoring)."""
        return self._pool.pids if self._pool is not None else []

    @property
    def endpoint(self) -> str:
        host, port = self.address
        return f"http://{host}:{port}/v1/traces"

    def start(self) -> Collector:
        """Start the worker processes, replay the spool, then serve and flush on background
        threads; returns once serving."""
        import uvicorn

        from manta_lib.collector.http import CollectorApp
        from manta_lib.collector.spool import Spool

        self._spool = Spool(self.spool_dir)
        self._pool = PreparePool(self.workers)
        self.rollout_dir.mkdir(exist_ok=True)
        for staging in self.rollout_dir.glob("*.new"):  # cut short by a crash, never answered
            staging.unlink()
        self._replay()
        self._app = CollectorApp(self, body_timeout=self.body_timeout)
        config = uvicorn.Config(
            self._app,
            log_config=None,
            log_level="warning",
            access_log=False,
            lifespan="off",
            backlog=_BACKLOG,
            timeout_keep_alive=max(5, int(self.body_timeout)),
            timeout_graceful_shutdown=max(1, int(self.body_timeout)),
        )
        self._server = uvicorn.Server(config)
        sock = self._socket
        serve = threading.Thread(
            target=lambda: self._server.run(sockets=[sock]), name="otlp-http", daemon=True
        )
        flush = threading.Thread(target=self._flush_loop, name="otlp-flush", daemon=True)
        self._threads = [serve, flush]
        for thread in self._threads:
            thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started and serve.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not self._server.started:
            raise ConfigError(f"the collector could not start serving on {self.endpoint}")
        log.info("collecting OTLP/HTTP traces on %s", self.endpoint)
        return self

    def stop(self) -> None:
        """Stop accepting requests, write every buffered trace, release the port."""
        if self._server is not None:
            self._server.should_exit = True
        self._stop.set()
        for thread in self._threads:
            thread.join()
        self._socket.close()
        if self._app is not None:
            self._app.executor.shutdown(wait=True)
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        if self._spool is not None:
            self.flush(everything=True, final=True)
            self._spool.close()
            self._spool = None
        self._release_store()
        log.info("collector stopped: %s", dataclasses.asdict(self.stats))

    def __enter__(self) -> Collector:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def count(self, name: str, number: int = 1) -> None:
        with self._stats_lock:
            setattr(self.stats, name, getattr(self.stats, name) + number)

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
            rollouts = self._ship_rollouts(final)
            taken = self._buffer.take(None if everything else self.idle_timeout)
            if not taken:
                if not rollouts:
                    # quiet: release the store (the embedded one is then free for others)
                    self._release_store()
                written = 0
            else:
                with relaxed_gc():  # the batch's objects are freed before collection resumes
                    written = self._write(taken, final)
            spool = self._spool
            if spool is not None:
                spool.rotate_if_due(0.0 if final else _SEGMENT_AGE_S)
                spool.release(self._buffer.oldest_segment())
            return written

    def _ship_rollouts(self, final: bool) -> int:
        """Import the rollout shards accepted on ``/v1/rollouts``; how many rollouts."""
        if not shards(self.rollout_dir):
            return 0
        try:
            store = self._store or Store.open(self.settings)
            self._store = store
            shipped = ship_once(self.rollout_dir, store)
        except Exception as exc:  # any store failure: the shards stay and are sent again
            # (trace ids are fixed, so a rollout stored before the failure is stored once)
            self._release_store()
            level = logging.ERROR if final else logging.WARNING
            log.log(level, "cannot store rollouts yet (%s); they stay in %s", exc, self.rollout_dir)
            return 0
        self.count("rollouts_stored", shipped)
        return shipped

    def _write(self, taken: list[_Pending], final: bool) -> int:
        """Join, map, validate and store the traces ``taken``; keep any that cannot be stored."""
        parts = [
            OtelPart("collector", n, [], p.checked, p.payloads, p.trace_id)
            for n, p in enumerate(taken, start=1)
        ]
        try:
            store = self._store or Store.open(self.settings)
            self._store = store
            joined = join_parts(store, parts, self.hierarchy)
            records = [r for r in joined.records if not r.problems]
            report = load_records(
                records, source="collector", store=store, batch_size=self.batch_size, progress=False
            )
        except Exception as exc:  # any store failure: keep the traces (written ones are
            # found present on the retry, so a retry never duplicates)
            self._release_store()
            self._buffer.put_back(taken)
            if final:
                log.error(
                    "cannot write %d traces (%s): they stay in the spool %s and are written "
                    "when the collector starts again",
                    len(taken),
                    exc,
                    self.spool_dir,
                )
            else:
                log.warning("cannot write %d traces yet (%s); will retry", len(taken), exc)
            return 0
        unmapped = [r for r in joined.records if r.problems]
        problems = [(r.line, f, why) for r in unmapped for f, why in r.problems]
        problems += [(records[e.line - 1].line, e.field, e.reason) for e in report.errors]
        failed = sorted({line for line, _, _ in problems})
        with self._stats_lock:
            self.stats.traces_stored += report.traces_loaded
            self.stats.traces_joined += joined.joined
            self.stats.spans_stored += report.spans_loaded
            self.stats.traces_failed += len(failed)
            self.stats.batches += 1
        if failed:
            reasons = "; ".join(f"{f}: {why}" if f else why for _, f, why in problems)
            log.error("%d traces could not be stored: %s", len(failed), reasons[:2000])
            self._dead_letter([taken[line - 1] for line in failed], reasons)
        return report.traces_loaded

    def _release_store(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def _dead_letter(self, groups: list[_Pending], reason: str) -> None:
        if not groups:
            return
        self.dead_letter.parent.mkdir(parents=True, exist_ok=True)
        with self.dead_letter.open("a", encoding="utf-8") as handle:
            for group in groups:
                row = {
                    "trace_id": group.trace_id,
                    "reason": reason,
                    "spans": [
                        dataclasses.asdict(span_from_payload(p)) for p in group.payloads.values()
                    ],
                }
                handle.write(json.dumps(row, default=str) + "\n")
            handle.flush()
        log.error("kept %d unwritten traces in %s", len(groups), self.dead_letter)

    # ---- receiving (called by the request handler threads) --------------------------------

    def receive(self, body: bytes, content_type: str) -> tuple[int, str]:
        """Validate one request body and keep it (buffered and spooled durably) before
        returning ``(spans rejected, message)``.

        Raises :class:`Problems` for an invalid body and :class:`BufferError` when full.
        """
        pool = self._pool
        if pool is None:
            raise BufferError("the collector is not running")
        prepared = pool.prepare(body, content_type, self.hierarchy)
        if prepared.problems:
            raise Problems(prepared.problems)
        spool = self._spool
        if spool is None:
            raise BufferError("the collector is not running")
        with spool.lock:
            result = self._buffer.add(prepared.traces, bool(self.hierarchy.run_id), spool.segment)
            if result is None:
                raise BufferError("the collector's buffer is full")
            accepted, rejected, late = result
            try:
                number = spool.append(_KINDS[content_type], body) if accepted else 0
            except OSError as exc:  # a full disk: not acknowledged (the exporter retries;
                # the spans buffered meanwhile are stored once, see otel_join)
                raise BufferError(f"cannot write the spool {self.spool_dir} ({exc})") from None
        if number:
            try:
                spool.sync(number)
            except OSError as exc:
                raise BufferError(f"cannot write the spool {self.spool_dir} ({exc})") from None
        with self._stats_lock:
            self.stats.spans_received += accepted
            self.stats.spans_rejected += rejected
            self.stats.late_spans += late
        if late:
            log.info("%d spans arrived after their trace was written: joining it", late)
        message = ""
        if rejected:
            message = (
                f"{rejected} spans have no run id: set the resource attribute {RUN_KEY} "
                f"(OTEL_RESOURCE_ATTRIBUTES={RUN_KEY}=RUN) or start the collector with --run-id"
            )
        return rejected, message

    def receive_rollouts(self, body: bytes) -> tuple[int, list[tuple[int, list[str]]]]:
        """Validate a JSON Lines body of rollout-spool records and keep the valid ones (a
        rollout-spool shard, ``fsync``'d) before returning ``(accepted, [(line, reasons)])``
        (lines numbered from 1, blank lines counted).

        Raises :class:`BufferError` when the shard cannot be written.
        """
        if self._spool is None:
            raise BufferError("the collector is not running")
        numbered = [(n, line) for n, line in enumerate(body.split(b"\n"), 1) if line.strip()]
        records, refused = parse_lines([line for _, line in numbered])
        traces, unmapped = spool_traces(records)
        refused.update(unmapped)
        for index, trace in traces:
            checked = check_trace(trace)
            if not isinstance(checked, CheckedTrace):
                refused[index] = [f"{f}: {why}" if f else why for f, why in checked]
        kept = [line for index, (_, line) in enumerate(numbered) if index not in refused]
        if kept:
            try:
                self._write_rollout_shard(kept)
            except OSError as exc:  # a full disk: not acknowledged (the shipper retries)
                raise BufferError(f"cannot write the spool {self.rollout_dir} ({exc})") from None
        with self._stats_lock:
            self.stats.rollouts_received += len(kept)
            self.stats.rollouts_rejected += len(refused)
        return len(kept), [(numbered[i][0], why) for i, why in sorted(refused.items())]

    def _write_rollout_shard(self, lines: list[bytes]) -> None:
        name = f"{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        staging = self.rollout_dir / f"{name}.new"
        with staging.open("xb") as handle:
            handle.write(b"".join(line + b"\n" for line in lines))
            handle.flush()
            os.fsync(handle.fileno())
        os.rename(staging, self.rollout_dir / f"{name}{SHARD_SUFFIX}")
        dir_fd = os.open(self.rollout_dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the shard's name is durable too
        finally:
            os.close(dir_fd)

    def _replay(self) -> None:
        """Buffer what an earlier process spooled (acknowledged, perhaps not yet written)."""
        assert self._pool is not None and self._spool is not None
        kinds = {number: name for name, number in _KINDS.items()}
        replayed = 0
        for segment, kind, body in self._spool.replay():
            content_type = kinds.get(kind)
            prepared = (
                self._pool.prepare(body, content_type, self.hierarchy, check=False)
                if content_type
                else None
            )
            if prepared is None or prepared.problems:  # it was valid when it came
                why = prepared.problems if prepared else f"unknown record kind {kind}"
                log.error("spool segment %d: a record does not decode (%s)", segment, why)
                continue
            result = self._buffer.add(
                prepared.traces, default_run=bool(self.hierarchy.run_id), segment=segment
            )
            replayed += result[0] if result else 0
        if replayed:
            self.count("spans_replayed", replayed)
            log.info("replayed %d spooled spans from %s", replayed, self.spool_dir)


def _default_workers() -> int:
    """A worker process per core beyond the second, up to 4. With two cores or fewer the
    collector's own process, the exporters usually beside it and the workers contend for the
    same cores, and handing each request over and back (pickled, through a pipe, waiting for
    the scheduler twice) costs more than it frees: the benchmark runs faster in-process."""
    cores = os.cpu_count() or 1
    return max(0, min(4, cores - 2))


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket (bound now, so the port is known and a bad address fails early)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, OverflowError) as exc:
        raise ConfigError(f"cannot listen on {host!r}: {exc}") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(_BACKLOG)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock
