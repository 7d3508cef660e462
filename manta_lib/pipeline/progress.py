"""Progress on a terminal (rich), silence elsewhere, and a bucketed wall-time clock."""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class TraceProgress:
    """Traces done, rate, errors and ETA; a no-op when ``enabled`` is False."""

    def __init__(self, total: int, description: str, enabled: bool | None = None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.done = 0
        self.errors = 0
        self._progress: Progress | None = None
        if self.enabled and total:
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TextColumn("[red]{task.fields[errors]} errors"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[note]}"),
                console=Console(stderr=True),
                transient=False,
            )
            self._started = time.monotonic()
            self._task = self._progress.add_task(
                description, total=total, errors=0, rate="", note=""
            )
            self._progress.start()

    def advance(self, count: int, errors: int = 0) -> None:
        self.done += count
        self.errors += errors
        if self._progress is not None:
            elapsed = max(time.monotonic() - self._started, 1e-9)
            self._progress.update(
                self._task,
                advance=count,
                errors=self.errors,
                rate=f"{self.done / elapsed:,.0f} traces/s",
            )

    def note(self, text: str) -> None:
        """A free-form status after the bar (e.g. the LLM judges' calls/s, 429s, dollars)."""
        if self._progress is not None:
            self._progress.update(self._task, note=text)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


class BucketClock:
    """Accumulates wall time per named bucket (load, map, llm, reduce, persist, ...)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._started = time.perf_counter()

    @contextmanager
    def __call__(self, bucket: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[bucket] += time.perf_counter() - started

    def add(self, bucket: str, seconds: float) -> None:
        self.seconds[bucket] += seconds

    def breakdown(self) -> dict[str, float]:
        """Buckets plus ``overhead`` so that they add up to the elapsed wall time."""
        total = time.perf_counter() - self._started
        result = {name: round(value, 3) for name, value in self.seconds.items()}
        result["overhead"] = round(max(total - sum(self.seconds.values()), 0.0), 3)
        return result
