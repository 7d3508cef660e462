"""Items of an iterator made ahead of their consumer on a background thread.

The producer (a store read, a batch generator) then runs while the consumer works on the
previous item: useful when one side spends its time outside the GIL (a ClickHouse query or
insert). The thread holds at most ``depth`` finished items; an error it meets is raised in the
consumer; closing the generator (or leaving its ``for`` loop and dropping it) stops the thread.
"""

from __future__ import annotations

import queue
import sys
import threading
from collections.abc import Callable, Generator, Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import Any, TypeVar

T = TypeVar("T")

_DONE = object()

#: How often a producer with a full queue looks whether the consumer has stopped.
_PUT_POLL_S = 0.1


def read_ahead(
    items: Iterator[T],
    *,
    depth: int = 1,
    name: str = "manta-read-ahead",
    waiting: Callable[[], AbstractContextManager[Any]] = nullcontext,
    join_timeout_s: float | None = None,
) -> Generator[T]:
    """Yield ``items``, made up to ``depth`` ahead on a daemon thread called ``name``.

    ``waiting`` wraps each wait for the next item (a timer, for instance). On close the
    thread is told to stop and joined (up to ``join_timeout_s``; not at interpreter exit,
    when a daemon thread may never run again).
    """
    ready: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        """Hand ``item`` over; False once the consumer has stopped."""
        while not stop.is_set():
            try:
                ready.put(item, timeout=_PUT_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            put(exc)
        finally:
            _close(items)

    worker = threading.Thread(target=produce, name=name, daemon=True)
    worker.start()
    try:
        while True:
            with waiting():
                item = ready.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        if not sys.is_finalizing():
            worker.join(join_timeout_s)


def _close(items: Iterator[Any]) -> None:
    """Close a producer left at a yield (its consumer stopped early), on the producer's own
    thread: what it holds (an open query stream) is released now, not whenever the garbage
    collector gets to it. An open chDB stream blocks the store's other queries."""
    close = getattr(items, "close", None)
    if close is not None:
        close()
