"""Append one JSON line per terminal run to the month shard of the runs log.

The write path is pure stdlib (``json``, ``os``) and best effort: a row that cannot be written
(invalid row, full disk, EIO, read-only or unusable directory, oversized row) is logged with
what was dropped and swallowed, never raised, so a finishing run never fails because of its
bookkeeping.

Atomicity: each row is serialised to one ``bytes`` object and written with a single
``os.write`` on a descriptor opened with ``O_APPEND``, then ``fsync``'d. On a local POSIX file
system the kernel positions every ``O_APPEND`` write at the end of the file under the inode
lock, so concurrent writers on one host never interleave their lines. POSIX only *promises*
this for writes of at most ``PIPE_BUF`` bytes (4096 on Linux); longer rows are still written
with one ``write()`` and are atomic on Linux local file systems (ext4, xfs, tmpfs), but not
necessarily on network file systems (NFS offers no ``O_APPEND`` atomicity at all). Rows above
:data:`MAX_ROW_BYTES` are dropped. A short write (only part of the row made it, e.g. the disk
filled up mid-write) is terminated with a newline when possible so that the next row starts on
its own line; readers count the partial line as corrupt and skip it.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import select
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from manta_lib.errors import ValidationError
from manta_lib.runs_log.schema import (
    SCHEMA_VERSION,
    STABLE_KEYS,
    TERMINAL_STATUSES,
    format_timestamp,
    parse_timestamp,
    shard_name,
)

log = logging.getLogger(__name__)

PIPE_BUF: int = getattr(select, "PIPE_BUF", 4096)
"""Largest write POSIX guarantees to be atomic; longer rows rely on the file system."""

MAX_ROW_BYTES = 1 << 20
"""Rows whose JSON line is larger than this (1 MiB) are dropped and logged."""

_DEFAULTS: dict[str, Any] = {
    "tenant_id": "default",
    "profile_id": "default",
    "plan_signature": "",
    "model": "",
    "cost_breakdown": None,
    "steps_executed": 0,
    "viable": 0,
    "error": None,
    "subset": False,
    "traces_total": None,
    "traces_failed": None,
}


def make_run_row(
    *,
    run_id: str,
    workflow_id: str,
    status: str,
    created_at: datetime | str,
    finished_at: datetime | str,
    wall_time_breakdown: Mapping[str, float],
    tenant_id: str = "default",
    profile_id: str = "default",
    plan_signature: str = "",
    model: str = "",
    cost_breakdown: Mapping[str, Any] | None = None,
    steps_executed: int = 0,
    viable: int = 0,
    error: str | None = None,
    subset: bool = False,
    traces_total: int | None = None,
    traces_failed: int | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Build a runs-log row with the stable keys in order and ``total_time_s`` computed.

    ``created_at`` / ``finished_at`` are datetimes (naive ones are taken as UTC) or ISO-8601
    strings; both are written as UTC with a ``Z`` suffix. ``total_time_s`` is
    ``finished_at - created_at`` in seconds (rounded to the microsecond). Extra keyword
    arguments become extra keys after the stable ones.

    ``subset`` marks a computation over part of a run (``limit_traces`` and the like): it is
    logged but left out of ``mantis runs stats`` unless asked for. ``traces_total`` /
    ``traces_failed`` count the traces the computation mapped and how many failed; pass
    ``status=run_status(error=..., traces_total=..., traces_failed=...)`` to log a computation
    where most traces failed as ``mostly_failed`` rather than ``succeeded``.

    Raises :class:`~manta_lib.errors.ValidationError` when a timestamp cannot be parsed;
    :func:`append_run` does the remaining checks.

    >>> row = make_run_row(run_id="r1", workflow_id="wf", status="succeeded",
    ...     created_at="2026-05-13T18:05:27Z", finished_at="2026-05-13T18:09:34Z",
    ...     wall_time_breakdown={"think": 200.0, "act": 47.0})
    >>> row["total_time_s"]
    247.0
    """
    created = _as_datetime("created_at", created_at)
    finished = _as_datetime("finished_at", finished_at)
    total = round((finished - created).total_seconds(), 6)
    row: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "tenant_id": tenant_id,
        "profile_id": profile_id,
        "workflow_id": workflow_id,
        "plan_signature": plan_signature,
        "model": model,
        "status": status,
        "created_at": format_timestamp(created),
        "finished_at": format_timestamp(finished),
        "total_time_s": total,
        "wall_time_breakdown": dict(wall_time_breakdown),
        "cost_breakdown": dict(cost_breakdown) if cost_breakdown is not None else None,
        "steps_executed": steps_executed,
        "viable": viable,
        "error": error,
        "subset": subset,
        "traces_total": traces_total,
        "traces_failed": traces_failed,
    }
    for key, value in extra.items():
        row.setdefault(key, value)
    return row


def validate_row(row: Mapping[str, Any]) -> dict[str, Any]:  # noqa: C901 - one flat check per key
    """Check ``row`` against schema version 1 and return it normalised for writing.

    Missing optional stable keys get their defaults (``tenant_id="default"`` ...), the stable
    keys come first in their documented order and extra keys are kept after them. Raises
    :class:`~manta_lib.errors.ValidationError` naming the offending key and value.
    """
    if not isinstance(row, Mapping):
        raise ValidationError(f"a runs-log row must be a mapping, got {type(row).__name__}")
    version = row.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION or isinstance(version, bool):
        raise ValidationError(
            f"schema_version={version!r} is not supported; this writer writes version "
            f"{SCHEMA_VERSION}"
        )
    for key in ("run_id", "workflow_id"):
        value = row.get(key)
        if not isinstance(value, str) or not value:
            raise ValidationError(f"{key}={value!r} must be a non-empty string")
    status = row.get("status")
    if status not in TERMINAL_STATUSES:
        raise ValidationError(
            f"status={status!r} is not logged: only terminal statuses "
            f"{' | '.join(TERMINAL_STATUSES)} are (paused runs land on their next terminal "
            "transition)"
        )
    for key in ("created_at", "finished_at"):
        if parse_timestamp(row.get(key)) is None:
            raise ValidationError(f"{key}={row.get(key)!r} is not an ISO-8601 timestamp")
    total = row.get("total_time_s")
    if not _is_number(total):
        raise ValidationError(f"total_time_s={total!r} must be a finite number of seconds")
    breakdown = row.get("wall_time_breakdown")
    if not isinstance(breakdown, Mapping):
        raise ValidationError(
            f"wall_time_breakdown={breakdown!r} must be a mapping of bucket name to seconds"
        )
    for bucket, seconds in breakdown.items():
        if not isinstance(bucket, str) or not _is_number(seconds):
            raise ValidationError(
                f"wall_time_breakdown[{bucket!r}]={seconds!r} must be a finite number of seconds"
            )
    subset = row.get("subset", False)
    if not isinstance(subset, bool):
        raise ValidationError(f"subset={subset!r} must be true or false")
    counts = {key: row.get(key) for key in ("traces_total", "traces_failed")}
    for key, value in counts.items():
        if value is not None and (type(value) is not int or value < 0):
            raise ValidationError(f"{key}={value!r} must be a whole number >= 0 or null")
    total, failed = counts["traces_total"], counts["traces_failed"]
    if total is not None and failed is not None and failed > total:
        raise ValidationError(f"traces_failed={failed} is above traces_total={total}")
    normalised: dict[str, Any] = {"schema_version": SCHEMA_VERSION}
    for key in STABLE_KEYS[1:]:
        normalised[key] = row[key] if key in row else _DEFAULTS.get(key)
    normalised["wall_time_breakdown"] = dict(breakdown)
    for key, value in row.items():
        if key not in normalised:
            normalised[key] = value
    return normalised


def serialise_row(row: Mapping[str, Any]) -> bytes:
    """One compact UTF-8 JSON line (with its ``\\n``); raises ``ValueError``/``TypeError``."""
    text = json.dumps(row, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return (text + "\n").encode("utf-8")


class RunsLogWriter:
    """Appends rows to the month shards under one directory.

    Holds no open file between rows: every :meth:`append` opens the shard with ``O_APPEND``,
    issues one ``write()`` and one ``fsync`` and closes it, so a writer object is safe to share
    between threads and processes.

    Example::

        writer = RunsLogWriter("/tmp/runs_log")
        writer.append(make_run_row(...))
        # True
    """

    def __init__(self, log_dir: Path | str) -> None:
        self.log_dir = Path(log_dir)

    def append(self, row: Mapping[str, Any]) -> bool:
        """Validate and append ``row``; return True if it was written. Never raises."""
        what = _describe(row)
        try:
            normalised = validate_row(row)
            data = serialise_row(normalised)
        except (ValidationError, ValueError, TypeError) as exc:
            log.error("runs log: dropped %s: invalid row: %s", what, exc)
            return False
        if len(data) > MAX_ROW_BYTES:
            log.error(
                "runs log: dropped %s: row is %d bytes, above the %d-byte limit",
                what,
                len(data),
                MAX_ROW_BYTES,
            )
            return False
        if len(data) > PIPE_BUF:
            log.debug(
                "runs log: %s is %d bytes (> PIPE_BUF=%d); written in one write(), atomic on "
                "local file systems only",
                what,
                len(data),
                PIPE_BUF,
            )
        finished = parse_timestamp(normalised["finished_at"])
        assert finished is not None  # validate_row checked it
        path = self.log_dir / shard_name(finished)
        try:
            self._write(path, data)
        except OSError as exc:
            log.error(
                "runs log: dropped %s (%d bytes) for %s: %s",
                what,
                len(data),
                path,
                _os_error_text(exc),
            )
            return False
        return True

    def _write(self, path: Path, data: bytes) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        created = not path.exists()
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(path, flags, 0o644)
        try:
            written = os.write(fd, data)
            if written != len(data):
                self._terminate_partial_line(fd, path)
                raise OSError(
                    errno.EIO,
                    f"short write: {written} of {len(data)} bytes reached the file; the partial "
                    "line will be skipped by readers",
                )
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            _fsync_directory(self.log_dir)

    @staticmethod
    def _terminate_partial_line(fd: int, path: Path) -> None:
        try:
            os.write(fd, b"\n")
        except OSError as exc:
            log.warning(
                "runs log: %s ends with a partial line that could not be terminated (%s)",
                path,
                _os_error_text(exc),
            )


def append_run(row: Mapping[str, Any], log_dir: Path | str | None = None) -> bool:
    """Append one terminal run to the runs log; return True if it was written.

    ``log_dir`` defaults to ``MANTA_RUNS_LOG_DIR`` (else ``<MANTA_DATA_DIR>/runs_log``). Never
    raises: every failure is logged at ERROR level with the run it dropped.

    Example::

        append_run(make_run_row(run_id="r1", workflow_id="wf", status="failed",
            created_at="2026-05-13T18:05:27Z", finished_at="2026-05-13T18:06:00Z",
            wall_time_breakdown={"load": 3.0}), log_dir="/tmp/runs_log")
        # True
    """
    try:
        if log_dir is None:
            from manta_lib.settings import load_settings

            log_dir = load_settings().runs_log_dir
        writer = RunsLogWriter(log_dir)
    except Exception as exc:  # never break a finishing run over its bookkeeping
        log.error("runs log: dropped %s: cannot resolve the log directory: %s", _describe(row), exc)
        return False
    try:
        return writer.append(row)
    except Exception:  # defensive: append() handles the expected failures itself
        log.exception("runs log: dropped %s: unexpected error", _describe(row))
        return False


def _as_datetime(name: str, value: datetime | str) -> datetime:
    if isinstance(value, datetime):
        parsed = parse_timestamp(value.isoformat())
    else:
        parsed = parse_timestamp(value)
    if parsed is None:
        raise ValidationError(f"{name}={value!r} is not a datetime or an ISO-8601 timestamp")
    return parsed


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _describe(row: object) -> str:
    if isinstance(row, Mapping):
        return (
            f"run {row.get('run_id')!r} of workflow {row.get('workflow_id')!r} "
            f"(status {row.get('status')!r}, finished_at {row.get('finished_at')!r})"
        )
    return f"a {type(row).__name__} row"


def _os_error_text(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or 0, "")
    return f"{name}: {exc}" if name else str(exc)


def _fsync_directory(directory: Path) -> None:
    """Make a newly created shard's directory entry durable (best effort)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
