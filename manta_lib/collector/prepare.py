"""The CPU-heavy part of accepting an OTLP request, runnable in worker processes.

:func:`prepare` decodes one request body, maps and checks each of its traces as it would be
stored, and shapes what the collector keeps of each trace: the spans as the JSON text stored
in ``otel_spans`` (by span id) and the checked trace rows. It touches no store and no shared
state, so the collector runs it in a pool of ``spawn``ed processes (:class:`PreparePool`;
never forked: the collector process holds chDB) while its own process only serves HTTP,
spools and writes the store. Everything it returns is plain data (it crosses a pipe).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import pickle
import queue
import struct
import subprocess
import sys
import threading
from dataclasses import dataclass
from typing import IO, Any

from manta_lib.importers.base import Hierarchy, Problems
from manta_lib.importers.otel_decode import (
    OtelSpan,
    parse_protobuf,
    spans_from_json,
    spans_from_proto,
)
from manta_lib.importers.otel_join import span_payload
from manta_lib.importers.otel_map import trace_from_spans
from manta_lib.ingest.loader import CheckedTrace, check_trace

log = logging.getLogger(__name__)

__all__ = ["PROTOBUF", "PreparePool", "Prepared", "PreparedTrace", "prepare"]

PROTOBUF = "application/x-protobuf"
RUN_KEY = "manta.run_id"
# Shapes the decoders did not foresee: such a request is refused whole like any bad payload.
UNREADABLE = (RecursionError, ValueError, TypeError, AttributeError, OverflowError)


@dataclass(slots=True)
class PreparedTrace:
    """The spans of one OTel trace in one request, as the collector buffers them."""

    trace_id: str  # the OTel trace id
    payloads: dict[str, str]  # span id -> span_payload() text (the first copy of a repeat)
    spans: int  # spans received (repeats included)
    has_run: bool  # a span or the resource names the run (manta.run_id)
    checked: CheckedTrace | None = None  # mapped and checked (when asked and it has a run)


@dataclass(slots=True)
class Prepared:
    """A request body prepared: its traces, or the problems that refuse it whole."""

    traces: list[PreparedTrace]
    problems: list[tuple[str, str]]


def decode(body: bytes, content_type: str) -> dict[str, list[OtelSpan]]:
    """A request body's spans grouped by OTel trace id; raises :class:`Problems`."""
    if content_type == PROTOBUF:
        spans = spans_from_proto(parse_protobuf(body))
    else:
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise Problems([("", f"invalid JSON ({exc})")]) from None
        spans = spans_from_json(doc)
    by_trace: dict[str, list[OtelSpan]] = {}
    for span in spans:
        by_trace.setdefault(span.trace_id, []).append(span)
    return by_trace


def has_run(spans: list[OtelSpan]) -> bool:
    return any(RUN_KEY in s.attributes or RUN_KEY in s.resource for s in spans)


def prepare(body: bytes, content_type: str, hierarchy: Hierarchy, check: bool = True) -> Prepared:
    """Decode ``body`` and shape each trace of it; with ``check``, also map and check each
    trace as it would be stored: a request holding a trace the store would refuse is refused
    whole (its problems returned, nothing else)."""
    try:
        by_trace = decode(body, content_type)
        traces = [_shaped(trace_id, members) for trace_id, members in by_trace.items()]
        if check:
            problems = _check(by_trace, traces, hierarchy)
            if problems:
                return Prepared([], problems)
    except Problems as exc:
        return Prepared([], list(exc.problems))
    except UNREADABLE as exc:
        log.debug("unreadable OTLP request", exc_info=True)
        return Prepared([], [("", f"cannot read the request ({type(exc).__name__}: {exc})")])
    return Prepared(traces, [])


def _shaped(trace_id: str, members: list[OtelSpan]) -> PreparedTrace:
    payloads: dict[str, str] = {}
    for span in members:
        if span.span_id not in payloads:
            payloads[span.span_id] = span_payload(span)
    return PreparedTrace(trace_id, payloads, len(members), has_run(members))


def _check(
    by_trace: dict[str, list[OtelSpan]], traces: list[PreparedTrace], hierarchy: Hierarchy
) -> list[tuple[str, str]]:
    """Map and check each trace; keep the checked traces (a trace whole in one request is not
    mapped again when written); the problems of those the store would refuse."""
    problems: list[tuple[str, str]] = []
    for trace in traces:
        members = by_trace[trace.trace_id]
        used = hierarchy
        if not hierarchy.run_id and not trace.has_run:
            # a later part without the run id: checked as part of a run
            used = dataclasses.replace(hierarchy, run_id="-")
        try:
            checked = check_trace(trace_from_spans(members, used))
        except Problems as exc:
            checked = list(exc.problems)
        if isinstance(checked, CheckedTrace):
            if used is hierarchy:
                trace.checked = checked
            continue
        problems.extend(
            (f"trace {trace.trace_id}: {f}" if f else f"trace {trace.trace_id}", r)
            for f, r in checked
        )
    return problems


# ---- the worker processes ------------------------------------------------------------------
#
# Plain child processes (``python -c``) talking length-prefixed pickles over their stdin and
# stdout, rather than multiprocessing: no re-import of the caller's ``__main__`` (a script
# without a main guard works), and a worker ends by itself when the collector dies (its stdin
# closes), even when the collector is killed with SIGKILL.

_FRAME = struct.Struct(">Q")
_CHILD = (
    "import json, sys; sys.path[:0] = json.loads(sys.argv[1]); "
    "from manta_lib.collector.prepare import serve; serve()"
)


def _send(stream: IO[bytes], obj: object) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_FRAME.pack(len(data)))
    stream.write(data)
    stream.flush()


def _receive(stream: IO[bytes]) -> Any:
    head = stream.read(_FRAME.size)
    if len(head) < _FRAME.size:
        raise EOFError("the other side closed the pipe")
    (size,) = _FRAME.unpack(head)
    data = stream.read(size)
    if len(data) < size:
        raise EOFError("the other side closed the pipe")
    return pickle.loads(data)


def serve() -> None:
    """A worker's loop: ``(body, content_type, hierarchy, check)`` in on stdin, ``("ok",
    Prepared)`` or ``("error", text)`` out on stdout, until stdin closes."""
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a stray print must not corrupt the answers
    sys.stdout = sys.stderr
    requests = sys.stdin.buffer
    _send(out, ("ready", os.getpid()))  # imports done
    while True:
        try:
            args = _receive(requests)
        except EOFError:
            return
        try:
            answer: tuple[str, object] = ("ok", prepare(*args))
        except Exception as exc:  # told to the collector (a 500 for that request)
            answer = ("error", f"{type(exc).__name__}: {exc}")
        _send(out, answer)


class _Worker:
    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", _CHILD, json.dumps(sys.path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            # not in the collector's process group: a Ctrl-C in its terminal stops the
            # collector, which then still needs its workers for the requests in flight
            start_new_session=True,
        )

    def ready(self) -> None:
        """Wait until the worker has started (raises EOFError if it could not)."""
        assert self.process.stdout is not None
        _receive(self.process.stdout)

    def call(self, args: tuple[object, ...]) -> Prepared:
        assert self.process.stdin is not None and self.process.stdout is not None
        _send(self.process.stdin, args)
        status, value = _receive(self.process.stdout)
        if status != "ok":
            raise RuntimeError(f"preparing the request failed ({value})")
        assert isinstance(value, Prepared)
        return value

    def close(self) -> None:
        if self.process.stdin is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


class PreparePool:
    """:func:`prepare` in ``workers`` child processes (in the calling thread with 0).

    A worker that dies is replaced (its request is tried again on the new one, once: a request
    that kills workers must not take the collector with them). Only when no worker can be
    started are requests prepared in this process."""

    def __init__(self, workers: int) -> None:
        # free workers; None once there are none left (passed on to every waiter)
        self._idle: queue.SimpleQueue[_Worker | None] = queue.SimpleQueue()
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        started: list[_Worker] = []
        for _ in range(workers):
            try:
                started.append(_Worker())
            except OSError as exc:
                log.warning("cannot start collector worker processes (%s): working in-process", exc)
                break
        for worker in started:  # they start side by side; ready when their imports are done
            try:
                worker.ready()
            except (OSError, EOFError) as exc:
                log.warning("a collector worker process did not start (%s)", exc)
                worker.close()
                continue
            self._workers.append(worker)
            self._idle.put(worker)

    @property
    def pids(self) -> list[int]:
        """The worker processes' ids (for monitoring)."""
        with self._lock:
            return [worker.process.pid for worker in self._workers]

    def prepare(
        self, body: bytes, content_type: str, hierarchy: Hierarchy, check: bool = True
    ) -> Prepared:
        """:func:`prepare` in a worker process (waiting for one to be free).

        A request whose worker dies is tried once more on another; if that one dies too
        (the request itself may kill them), :class:`RuntimeError`."""
        args = (body, content_type, hierarchy, check)
        for _attempt in range(2):
            with self._lock:
                working = bool(self._workers)
            worker = self._idle.get() if working else None
            if worker is None:
                self._idle.put(None)
                return prepare(*args)  # no workers (any more): in this process
            try:
                result = worker.call(args)
            except (OSError, EOFError, pickle.UnpicklingError) as exc:  # the worker died
                self._replace(worker, exc)
                continue
            except BaseException:
                self._idle.put(worker)
                raise
            self._idle.put(worker)
            return result
        raise RuntimeError("the worker processes preparing this request died")

    def _replace(self, dead: _Worker, exc: BaseException) -> None:
        log.warning("a collector worker process failed (%s); starting another", exc)
        dead.process.kill()
        dead.close()
        fresh: _Worker | None = None
        try:
            fresh = _Worker()
            fresh.ready()
        except (OSError, EOFError) as error:
            log.error("cannot start a collector worker process (%s)", error)
            if fresh is not None:
                fresh.close()
            fresh = None
        with self._lock:
            self._workers.remove(dead)
            if fresh is not None:
                self._workers.append(fresh)
            last = not self._workers
        if fresh is not None:
            self._idle.put(fresh)
        elif last:  # none left: requests are prepared in this process from now on
            self._idle.put(None)

    def shutdown(self) -> None:
        """End the worker processes (after the last request)."""
        with self._lock:
            workers, self._workers = self._workers, []
        self._idle.put(None)
        for worker in workers:
            worker.close()
