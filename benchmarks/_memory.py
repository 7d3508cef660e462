"""Peak RSS of this process and the phase of the run it was reached in, sampled; and the peak
of its anonymous part (RSS minus file-backed pages: the embedded engine's ~500 MB library
counts in RSS as its code pages are touched, but it is not memory the process holds)."""

from __future__ import annotations

import sys
import threading
import types

import psutil

#: Functions of the run path (innermost first wins) and the phase each one names.
_PHASES = (
    ("reduce_streamed", "reduce"),
    ("reduce_scope", "reduce"),
    ("map_scope", "map"),
    ("plan_scope", "plan"),
    ("register_judge", "register"),
    ("stored_counts", "result"),
)


class PeakRss:
    """Samples this process's RSS every ``interval`` s from a thread; :attr:`peak_mb` is the
    largest seen and :attr:`phase` what the main thread was doing then: a phase of the
    pipeline (plan, map, reduce, ...) from its call stack, else the label set with
    :meth:`label` (``"seed"``, ``"ceiling"``, ...)."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.peak_mb = 0.0
        #: The largest anonymous RSS seen (RSS minus the resident file-backed pages).
        self.anon_peak_mb = 0.0
        self.phase = ""
        #: The peak of each label's stretch (``{"seed": 930.1, "pipeline": 700.4}``).
        self.peaks: dict[str, float] = {}
        self._label = ""
        self._main = threading.main_thread().ident
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="peak-rss", daemon=True)

    def label(self, name: str) -> None:
        self._label = name

    def _current_phase(self) -> str:
        frame: types.FrameType | None = sys._current_frames().get(self._main or 0)
        names = set()
        while frame is not None:
            names.add(frame.f_code.co_name)
            frame = frame.f_back
        for function, phase in _PHASES:
            if function in names:
                return f"{self._label}/{phase}" if self._label else phase
        return self._label or "other"

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.wait(self.interval):
            info = me.memory_info()
            rss = info.rss / 2**20
            self.anon_peak_mb = max(self.anon_peak_mb, (info.rss - info.shared) / 2**20)
            label = self._label or "other"
            self.peaks[label] = max(self.peaks.get(label, 0.0), rss)
            if rss > self.peak_mb:
                self.peak_mb, self.phase = rss, self._current_phase()

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
