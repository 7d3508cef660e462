"""Apply a user function to many items on threads, isolating each item's failure.

One item's exception, invalid output or timeout becomes an error string for that item and
never stops the others.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError

from manta_lib.errors import ComputationAborted

T = TypeVar("T")

#: Timed-out calls that may still run on abandoned threads (Python cannot stop a thread)
#: before the pool stops: ``max(max_workers, ABANDONED_MIN)``.
ABANDONED_MIN = 8


@dataclass(slots=True)
class ItemResult(Generic[T]):
    """The outcome of one item: a validated output or an error text."""

    item: T
    output: BaseModel | None
    error: str | None
    seconds: float
    where: str | None = None


def describe_exception(exc: BaseException) -> str:
    """``Type: message`` (first line of each pydantic error for invalid outputs)."""
    if isinstance(exc, PydanticValidationError):
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'output'}: {err['msg']}"
            for err in exc.errors()[:5]
        )
        return f"InvalidOutput: {exc.title} does not match the schema ({problems})"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def validate_output(raw: Any, schema: type[BaseModel]) -> BaseModel:
    """Accept an instance of ``schema`` or a mapping validated into it."""
    if isinstance(raw, schema):
        return raw
    if isinstance(raw, BaseModel):
        raw = raw.model_dump()
    if not isinstance(raw, dict):
        raise TypeError(
            f"the function returned {type(raw).__name__}, expected a {schema.__name__} "
            f"instance or a dict of its fields"
        )
    return schema.model_validate(raw)


class IsolatedPool:
    """Threads that apply a user function to many items, each item's failure isolated.

    Every result is handed to ``on_result`` as soon as its item finishes (from the thread that
    ran it), so a caller can write it at once whatever the other items do. Threads are daemons:
    a hung user function never keeps the process from exiting.

    - ``chunked`` (CPU-bound functions, no timeout): ``max_workers`` threads take the items in
      chunks (a hand-off per item costs more than a trivial map function).
    - otherwise (LLM calls, or ``timeout_s`` set): each item runs on its own thread, at most
      ``max_workers`` at a time; an item past ``timeout_s`` is reported as a ``TimeoutError``
      and its slot goes to the next item at once (the stuck thread is abandoned). Python cannot
      stop a thread: an abandoned one runs until its call returns. Once more than
      ``abandoned_limit`` of them are still running, the pool starts no new item and raises
      :class:`~manta_lib.errors.ComputationAborted`: its threads never number more than
      ``max_workers + abandoned_limit``.
    """

    def __init__(self, max_workers: int, *, timeout_s: float | None = None, chunked: bool) -> None:
        self.max_workers = max(1, max_workers)
        self.timeout_s = timeout_s
        self.chunked = chunked and timeout_s is None
        self.abandoned_limit = max(self.max_workers, ABANDONED_MIN)
        self.abandoned = 0  # timed-out calls still running, over every run() of this pool
        self._abandoned_lock = threading.Lock()

    def _abandon(self, change: int) -> int:
        with self._abandoned_lock:
            self.abandoned += change
            return self.abandoned

    def run(
        self,
        fn: Callable[[T], Any],
        items: Sequence[T],
        schema: type[BaseModel],
        on_result: Callable[[ItemResult[T]], None],
        *,
        stop: threading.Event | None = None,
        tick: Callable[[], None] | None = None,
    ) -> None:
        """Apply ``fn`` to ``items`` (until ``stop`` is set); ``on_result`` gets each result.

        ``tick`` is called in the calling thread about every 0.1 s while items run (to hand
        results on in groups). An exception raised by ``on_result`` stops the pool and is
        raised here.
        """
        if not items:
            return
        stop = stop or threading.Event()
        tick = tick or _nothing
        if self.chunked:
            self._run_chunked(fn, items, schema, on_result, stop, tick)
        else:
            _PerItemRun(self, fn, items, schema, on_result, stop, tick).run()

    def _run_chunked(
        self,
        fn: Callable[[T], Any],
        items: Sequence[T],
        schema: type[BaseModel],
        on_result: Callable[[ItemResult[T]], None],
        stop: threading.Event,
        tick: Callable[[], None],
    ) -> None:
        size = max(1, min(64, len(items) // (self.max_workers * 4) or 1))
        chunks: queue.SimpleQueue[Sequence[T]] = queue.SimpleQueue()
        for start in range(0, len(items), size):
            chunks.put(items[start : start + size])
        failures: list[BaseException] = []

        def work() -> None:
            try:
                _work_on_chunks(fn, chunks, schema, on_result, stop)
            except BaseException as exc:  # noqa: BLE001 - raised in the calling thread
                failures.append(exc)
                stop.set()

        threads = [
            threading.Thread(target=work, name=f"manta-map-{i}", daemon=True)
            for i in range(min(self.max_workers, (len(items) + size - 1) // size))
        ]
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                while thread.is_alive():
                    thread.join(0.1)
                    tick()
        except BaseException:
            stop.set()  # Ctrl-C: the threads finish the item in hand and stop
            raise
        if failures:
            raise failures[0]


def _work_on_chunks(
    fn: Callable[[T], Any],
    chunks: queue.SimpleQueue[Sequence[T]],
    schema: type[BaseModel],
    on_result: Callable[[ItemResult[T]], None],
    stop: threading.Event,
) -> None:
    """Take chunks until none is left (or ``stop``), handing over each item's result."""
    while not stop.is_set():
        try:
            chunk = chunks.get_nowait()
        except queue.Empty:
            return
        for item in chunk:
            if stop.is_set():
                return
            on_result(apply(fn, item, schema))


class _PerItemRun(Generic[T]):
    """One item per thread, ``max_workers`` slots, deadlines watched by the calling thread."""

    def __init__(
        self,
        pool: IsolatedPool,
        fn: Callable[[T], Any],
        items: Sequence[T],
        schema: type[BaseModel],
        on_result: Callable[[ItemResult[T]], None],
        stop: threading.Event,
        tick: Callable[[], None],
    ) -> None:
        self.pool = pool
        self.tick = tick
        self.fn = fn
        self.items = items
        self.schema = schema
        self.on_result = on_result
        self.stop = stop
        self.slots = threading.Semaphore(pool.max_workers)
        self.lock = threading.Lock()
        self.running: dict[int, float] = {}  # item index -> start time (monotonic)
        self.unsettled = 0
        self.failures: list[BaseException] = []

    def run(self) -> None:
        try:
            for index, item in enumerate(self.items):
                while not self.slots.acquire(timeout=0.05):
                    self._expire()
                if self.stop.is_set():
                    self.slots.release()
                    break
                with self.lock:
                    self.running[index] = time.monotonic()
                    self.unsettled += 1
                threading.Thread(
                    target=self._work, args=(index, item), name="manta-map", daemon=True
                ).start()
            while True:
                with self.lock:
                    if not self.unsettled:
                        break
                self._expire()
                time.sleep(0.01)
        except BaseException:
            self.stop.set()
            raise
        if self.failures:
            raise self.failures[0]

    def _settle(self, index: int) -> bool:
        """Mark ``index`` settled; False when it already was (timed out, or late)."""
        with self.lock:
            if self.running.pop(index, None) is None:
                return False
            self.unsettled -= 1
            return True

    def _deliver(self, result: ItemResult[T]) -> None:
        try:
            self.on_result(result)
        except BaseException as exc:  # noqa: BLE001 - raised in the calling thread
            self.failures.append(exc)
            self.stop.set()

    def _work(self, index: int, item: T) -> None:
        result = apply(self.fn, item, self.schema)
        if self._settle(index):
            self.slots.release()
            self._deliver(result)
        else:  # timed out earlier: this abandoned thread ends now
            self.pool._abandon(-1)

    def _expire(self) -> None:
        self.tick()
        timeout = self.pool.timeout_s
        if timeout is None:
            return
        now = time.monotonic()
        with self.lock:
            late = [(i, began) for i, began in self.running.items() if now - began > timeout]
        for index, began in late:
            if self._settle(index):
                abandoned = self.pool._abandon(1)
                self.slots.release()  # a fresh thread takes the slot; the stuck one is dropped
                self._deliver(
                    ItemResult(
                        self.items[index],
                        None,
                        f"TimeoutError: no result after {timeout:g} s",
                        now - began,
                    )
                )
                if abandoned > self.pool.abandoned_limit and not self.stop.is_set():
                    self.failures.append(self._too_many_abandoned(abandoned, timeout))
                    self.stop.set()

    def _too_many_abandoned(self, abandoned: int, timeout: float) -> ComputationAborted:
        return ComputationAborted(
            f"{abandoned} calls that passed timeout_s={timeout:g} are still running on "
            f"abandoned threads (Python cannot stop a thread), more than the "
            f"{self.pool.abandoned_limit} allowed (max(max_workers, {ABANDONED_MIN})), so the "
            f"run stopped; results written so far are kept. The function ignores its timeout: give "
            f"its blocking calls (network, subprocess, locks) a timeout of their own"
        )


def _nothing() -> None:
    return None


def apply(fn: Callable[[T], Any], item: T, schema: type[BaseModel]) -> ItemResult[T]:
    """``fn(item)`` validated into ``schema``; anything it raises becomes the item's error.

    Runs on a pool thread, where even ``SystemExit``, ``KeyboardInterrupt`` or a bare
    ``BaseException`` can only come from the user's function (a real Ctrl-C is delivered to the
    main thread), so they are that item's error too and never stop the others.
    """
    started = time.perf_counter()
    try:
        output = validate_output(fn(item), schema)
        return ItemResult(item, output, None, time.perf_counter() - started)
    except BaseException as exc:  # noqa: BLE001 - isolation is the point
        return ItemResult(
            item, None, describe_exception(exc), time.perf_counter() - started, user_frames(exc)
        )


_OWN_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # manta_lib/
_SHOWN_FRAMES = 3


def user_frames(exc: BaseException) -> str | None:
    """Where ``exc`` was raised, innermost last: the last frames outside Manta's own code,
    ``file:line in function`` (paths relative to the working directory when below it)."""
    frames = [
        frame
        for frame in traceback.extract_tb(exc.__traceback__)
        if not os.path.abspath(frame.filename).startswith(_OWN_DIR + os.sep)
    ]
    if not frames:
        return None
    shown = []
    for frame in frames[-_SHOWN_FRAMES:]:
        path = frame.filename
        with contextlib.suppress(ValueError):
            relative = os.path.relpath(path)
            path = path if relative.startswith("..") else relative
        shown.append(f"{path}:{frame.lineno} in {frame.name}")
    return " <- ".join(reversed(shown))
