"""Fewer garbage-collector passes while a computation runs.

A run allocates millions of short-lived objects (rows, contexts, outputs), most of them freed
by reference counting; with the default thresholds the collector still walks every tracked
object of the process dozens of times per 100k traces, about a quarter of a run's CPU time.
While a computation runs, the objects that existed before it are frozen (left out of
collections) and collections are rarer; cycles are still collected, later.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

#: Thresholds while a computation runs (the defaults are 700, 10, 10).
RUN_THRESHOLDS = (50_000, 20, 100)

_lock = threading.Lock()
_depth = 0
_saved: tuple[int, int, int] | None = None
_froze = False


@contextmanager
def relaxed_gc() -> Iterator[None]:
    """Freeze the objects that exist now (unless some are frozen already) and raise the
    collector's thresholds until the outermost of nested ``relaxed_gc()`` blocks exits, then
    restore both. Does nothing when the caller disabled the collector."""
    global _depth, _saved, _froze
    with _lock:
        active = gc.isenabled() or _depth > 0
        if active:
            if _depth == 0:
                _saved = gc.get_threshold()
                # Objects someone else froze (before a fork, say) stay as they were.
                _froze = gc.get_freeze_count() == 0
                if _froze:
                    gc.freeze()
                gc.set_threshold(*(max(a, b) for a, b in zip(_saved, RUN_THRESHOLDS, strict=True)))
            _depth += 1
    try:
        yield
    finally:
        if active:
            with _lock:
                _depth -= 1
                if _depth == 0 and _saved is not None:
                    gc.set_threshold(*_saved)
                    if _froze:
                        gc.unfreeze()
                    _saved, _froze = None, False
