"""The row schema of the runs log: stable keys, timestamps and shard names.

Shared by the writer and both query engines so that they agree on what a row is.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

SCHEMA_VERSION = 1
"""The only row version this code writes and aggregates; other versions are counted and skipped."""

TERMINAL_STATUSES = ("succeeded", "mostly_failed", "failed")
"""Statuses the runtime logs. ``mostly_failed``: the computation finished but more than
:data:`MOSTLY_FAILED_FRACTION` of its traces failed (see :func:`run_status`). Paused runs are
never logged: they land on their next terminal transition after ``action=resume``."""

MOSTLY_FAILED_FRACTION = 0.5
"""Above this fraction of failed traces a finished computation is ``mostly_failed``."""

STABLE_KEYS: tuple[str, ...] = (
    "schema_version",
    "run_id",
    "tenant_id",
    "profile_id",
    "workflow_id",
    "plan_signature",
    "model",
    "status",
    "created_at",
    "finished_at",
    "total_time_s",
    "wall_time_breakdown",
    "cost_breakdown",
    "steps_executed",
    "viable",
    "error",
    "subset",
    "traces_total",
    "traces_failed",
)
"""Keys every row carries, in this order; extra keys follow them and are kept as given."""


def run_status(*, error: bool, traces_total: int | None, traces_failed: int | None) -> str:
    """The status a computation logs: ``failed`` when it raised, ``mostly_failed`` when more
    than :data:`MOSTLY_FAILED_FRACTION` of its traces failed, else ``succeeded``.

    >>> run_status(error=False, traces_total=100, traces_failed=80)
    'mostly_failed'
    """
    if error:
        return "failed"
    if traces_total and traces_failed and traces_failed / traces_total > MOSTLY_FAILED_FRACTION:
        return "mostly_failed"
    return "succeeded"


TOTAL_BUCKET = "total_time_s"
"""The headline aggregate, always reported, taken from the row's top-level ``total_time_s``."""

SHARD_SUFFIX = ".jsonl"
_SHARD_RE = re.compile(r"^(\d{4})-(\d{2})\.jsonl$")


def parse_timestamp(value: object) -> datetime | None:
    """Parse an ISO-8601 timestamp into an aware UTC datetime, or ``None`` if it is not one.

    A timestamp without an offset is taken as UTC (the writer always writes ``Z``).

    >>> parse_timestamp("2026-05-13T18:09:34Z")
    datetime.datetime(2026, 5, 13, 18, 9, 34, tzinfo=datetime.timezone.utc)
    """
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def format_timestamp(value: datetime) -> str:
    """Format ``value`` as ISO-8601 UTC with a ``Z`` suffix (naive values are taken as UTC).

    Whole seconds are written without a fraction (``18:05:27Z``); anything finer keeps
    microseconds.
    """
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    spec = "seconds" if value.microsecond == 0 else "microseconds"
    return value.replace(tzinfo=None).isoformat(timespec=spec) + "Z"


def shard_name(finished_at: datetime) -> str:
    """File name of the month shard holding a row that finished at ``finished_at`` (UTC)."""
    utc = finished_at.astimezone(UTC) if finished_at.tzinfo else finished_at
    return f"{utc.year:04d}-{utc.month:02d}{SHARD_SUFFIX}"


def shard_month(file_name: str) -> tuple[int, int] | None:
    """``(year, month)`` of a shard file name such as ``2026-05.jsonl``, ``None`` otherwise."""
    match = _SHARD_RE.match(file_name)
    if match is None:
        return None
    year, month = int(match.group(1)), int(match.group(2))
    return (year, month) if 1 <= year <= 9999 and 1 <= month <= 12 else None
