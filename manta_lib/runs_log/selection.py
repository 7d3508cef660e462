"""The values both runs-log engines share: query filters, selections and their statistics.

The Python engine (:mod:`manta_lib.runs_log.stats`) and the DuckDB engine
(:mod:`manta_lib.runs_log.duckdb_engine`) both import from here, and neither from the other's
internals.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from manta_lib.errors import QueryError
from manta_lib.percentile import percentile
from manta_lib.runs_log.reader import ReadReport

PERCENTILES: tuple[tuple[str, float], ...] = (("p50", 0.50), ("p95", 0.95), ("p99", 0.99))
DIGITS = 6
"""Percentiles are rounded to this many decimals (microseconds) in every engine."""

_DURATION_RE = re.compile(r"^\s*(\d+)\s*([dhm])\s*$")
_UNITS = {"d": "days", "h": "hours", "m": "minutes"}


@dataclass(frozen=True)
class BucketStats:
    """p50/p95/p99 of one bucket in seconds, over ``count`` runs that reported it."""

    count: int
    p50: float
    p95: float
    p99: float

    @classmethod
    def of(cls, values: Iterable[float]) -> BucketStats:
        """Compute the three percentiles of ``values`` (non-empty)."""
        ordered = sorted(values)
        p50, p95, p99 = (round(percentile(ordered, q), DIGITS) for _, q in PERCENTILES)
        return cls(count=len(ordered), p50=p50, p95=p95, p99=p99)


@dataclass(frozen=True)
class RunFilter:
    """Which rows of one workflow count: a status (``""`` = any) and a finished_at window."""

    workflow_id: str
    status: str = "succeeded"
    since: datetime | None = None
    until: datetime | None = None
    include_subset: bool = False


@dataclass
class Selection:
    """What an engine returns: the runs kept and the per-bucket statistics over them."""

    run_count: int
    buckets: dict[str, BucketStats]
    report: ReadReport = field(default_factory=ReadReport)


@dataclass(frozen=True)
class WorkflowSummary:
    """One line of ``mantis runs workflows``."""

    workflow_id: str
    runs: int
    succeeded: int
    failed: int
    last_finished_at: datetime

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (timestamps as ISO-8601 UTC)."""
        return {
            "workflow_id": self.workflow_id,
            "runs": self.runs,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "last_finished_at": self.last_finished_at.isoformat().replace("+00:00", "Z"),
        }


def parse_duration(text: str, option: str = "--since") -> timedelta:
    """Parse ``7d`` / ``24h`` / ``30m`` into a timedelta; :class:`QueryError` names the forms."""
    match = _DURATION_RE.match(text or "")
    if match is None or int(match.group(1)) == 0:
        raise QueryError(
            f"{option} {text!r} is not a duration: use a positive whole number followed by "
            "d (days), h (hours) or m (minutes), e.g. 7d, 24h or 30m"
        )
    try:
        return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    except OverflowError:
        raise QueryError(f"{option} {text!r} is too long: {_TOO_LONG}") from None


_TOO_LONG = "a window must start after the year 1 (at most 700000d)"


def window_start(now: datetime, length: timedelta, option: str) -> datetime:
    """``now - length``, or :class:`QueryError` naming ``option`` when that is before year 1."""
    try:
        return now - length
    except OverflowError:
        raise QueryError(f"{option} {_show_duration(length)} is too long: {_TOO_LONG}") from None


def _show_duration(length: timedelta) -> str:
    return f"{length.days}d" if not length.seconds and not length.microseconds else str(length)


def resolve_since(
    since: str | timedelta | datetime | None, now: datetime | None = None
) -> datetime | None:
    """Turn ``--since`` (a duration string, a timedelta or a datetime) into a UTC cutoff."""
    if since is None or isinstance(since, datetime):
        return None if since is None else as_utc(since)
    now = as_utc(now or datetime.now(UTC))
    return window_start(now, parse_duration(since) if isinstance(since, str) else since, "--since")


def as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
