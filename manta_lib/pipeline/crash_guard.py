"""A native crash in a map function ends the run at once, names the trace, keeps finished work.

chDB installs its own handlers for the fatal signals (SIGSEGV, SIGBUS, SIGFPE, SIGILL,
SIGABRT); a crash in a map function then stops in that handler with the interpreter lock held,
and the process hangs forever, still holding the embedded store. While a map runs,
:func:`guarding` puts Manta's handler in their place (the previous handlers come back when the
last map of the process ends). On a fatal signal, on the crashing thread:

1. the signal's default action is restored, so a second fault ends the process at once, and
   an alarm (SIGALRM, default action) ends it :data:`FLUSH_BOUND_S` seconds later whatever
   happens next;
2. the Python tracebacks of every thread go to stderr (``faulthandler``);
3. the trace whose map call crashed is named on stderr and in the crash journal
   (:mod:`manta_lib.pipeline.crash_journal`), so the next run maps it alone first;
4. every running map writes the traces it finished so far;
5. the signal is raised again: the process ends with it (exit status 128 + the signal's number
   in a shell), and the store's lock goes with the process.
"""

from __future__ import annotations

import contextlib
import ctypes
import faulthandler
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any

from manta_lib.pipeline.crash_journal import Watched, journaled
from manta_lib.pipeline.pool import apply

if TYPE_CHECKING:
    from manta_lib.context import TraceContext
    from manta_lib.pipeline.job import MapJob
    from manta_lib.pipeline.pool import IsolatedPool

log = logging.getLogger(__name__)

#: Seconds a crashing process may spend writing its finished traces before SIGALRM ends it.
FLUSH_BOUND_S = 10
_FATAL = tuple(
    getattr(signal, name)
    for name in ("SIGSEGV", "SIGBUS", "SIGFPE", "SIGILL", "SIGABRT")
    if hasattr(signal, name)
)
_SIGACTION_BYTES = 512  # larger than any platform's struct sigaction


@dataclass(eq=False)
class Guard:
    """One map in progress: ``on_crash`` runs in order on a crash (to write the traces it
    finished)."""

    label: str
    on_crash: tuple[Callable[[], object], ...]


_lock = threading.Lock()
_active: list[Guard] = []
_saved: dict[int, Any] = {}
_libc: Any = None


@contextmanager
def guarding(label: str, *on_crash: Callable[[], object] | None) -> Iterator[Guard]:
    """Handle fatal signals as the module docstring says while the block runs; ``on_crash``
    (None skipped) run in order on the crashing thread before the process ends."""
    guard = Guard(label, tuple(step for step in on_crash if step is not None))
    with _lock:
        _install()  # again on every entry: chDB puts its own back whenever it starts
        _active.append(guard)
    try:
        yield guard
    finally:
        with _lock:
            _active.remove(guard)
            if not _active:
                _restore()


@contextmanager
def guarded_map(
    job: MapJob,
    pool: IsolatedPool,
    fn: Callable[[TraceContext], Any],
    label: str,
    on_crash: tuple[Callable[[], object] | None, ...],
) -> Iterator[Watched[TraceContext, Any]]:
    """A map job's function, watched (its trace named on a crash, and marked in the crash
    journal while it runs when the job persists), with fatal signals handled."""
    with journaled(job, pool, fn, label) as watched, guarding(label, *on_crash):
        yield watched


def _load_libc() -> Any:
    global _libc
    if _libc is None and sys.platform != "win32":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.signal.argtypes = [ctypes.c_int, ctypes.c_void_p]
        libc.signal.restype = ctypes.c_void_p
        libc.sigaction.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
        libc.sigaction.restype = ctypes.c_int
        libc.alarm.argtypes = [ctypes.c_uint]
        libc.alarm.restype = ctypes.c_uint
        _libc = libc
    return _libc


def _install() -> None:
    try:
        libc = _load_libc()
    except OSError:
        log.debug("no C library to install the crash handler with", exc_info=True)
        return
    if libc is None:
        return
    ours = ctypes.cast(_HANDLER, ctypes.c_void_p)
    for signum in _FATAL:
        current = ctypes.create_string_buffer(_SIGACTION_BYTES)
        if libc.sigaction(signum, None, current) != 0:
            continue
        # The handler is the first field of struct sigaction.
        if ctypes.c_void_p.from_buffer(current).value == ours.value:
            continue
        _saved[signum] = current
        libc.signal(signum, ours)


def _restore() -> None:
    if _libc is None:
        return
    for signum, saved in _saved.items():
        _libc.sigaction(signum, saved, None)
    _saved.clear()


def _on_fatal_signal(signum: int) -> None:
    """The fatal-signal handler (a C callback into Python, on the crashing thread)."""
    libc = _libc
    libc.signal(signum, None)  # the default action from here on
    libc.signal(signal.SIGALRM, None)
    libc.alarm(FLUSH_BOUND_S)
    with contextlib.suppress(BaseException):  # the process ends below whatever happened
        _report_and_flush(signum)
    os.kill(os.getpid(), signum)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signum})
    os._exit(128 + signum)


def _report_and_flush(signum: int) -> None:
    name = f"{signal.Signals(signum).name} ({signal.strsignal(signum)})"
    trace_id, watched, entity = _crashing_call(sys._getframe())
    _say("")
    faulthandler.dump_traceback(2, all_threads=True)
    ending = f"the process ends. Writing the results finished so far (at most {FLUSH_BOUND_S} s)"
    if watched is not None:
        _say(
            f"manta: the map function of {watched.label} crashed the process with {name} on "
            f"trace {trace_id!r}; {ending}"
        )
        if watched.journal is not None:
            watched.journal.record_crash(trace_id, f"{name} in the map function")
    elif entity is not None and _active:
        _say(f"manta: {_active[-1].label} crashed the process with {name} on {entity}; {ending}")
    else:
        _say(f"manta: fatal signal {name} outside the pipeline's functions; {ending}")
    for guard in list(_active):
        try:
            for step in guard.on_crash:
                step()
        except Exception as exc:  # noqa: BLE001 - the next map may still be written
            _say(f"manta: could not write the finished results of {guard.label}: {exc}")
    if watched is not None and watched.journal is not None:
        _say(
            f"manta: finished traces written. Running the pipeline again maps trace "
            f"{trace_id!r} alone first; a trace that ends the process twice is recorded as "
            f"that trace's error and the run completes the rest"
        )


def _crashing_call(
    frame: FrameType | None,
) -> tuple[str | None, Watched[Any, Any] | None, str | None]:
    """On the crashing thread's stack: the trace id and :class:`Watched` call of a map, or
    ``"<level> <entity id>"`` of a reduce (the item its pool call was given)."""
    while frame is not None:
        if frame.f_code is _WATCHED_CODE:
            local = frame.f_locals
            return getattr(local.get("item"), "trace_id", None), local.get("self"), None
        if frame.f_code is _APPLY_CODE:
            item = frame.f_locals.get("item")
            ref = item[0] if isinstance(item, tuple) and item else item
            level, entity_id = getattr(ref, "level", None), getattr(ref, "entity_id", None)
            if entity_id is not None:
                return None, None, f"{getattr(level, 'value', 'entity')} {entity_id!r}"
        frame = frame.f_back
    return None, None, None


def _say(text: str) -> None:
    os.write(2, (text + "\n").encode(errors="replace"))


_WATCHED_CODE = Watched.__call__.__code__
_APPLY_CODE = apply.__code__
_HANDLER = ctypes.CFUNCTYPE(None, ctypes.c_int)(_on_fatal_signal)
