"""``mantis runs compact``: closed months of the runs log to Parquet.

A closed month is one before the current UTC month. Compacting month ``M``:

1. builds ``.YYYY-MM.parquet.tmp`` with DuckDB from every archived JSONL of ``M``
   (``compacted/YYYY-MM*.jsonl``) plus the live ``YYYY-MM.jsonl``: the columns the query engines
   read (:data:`~manta_lib.runs_log.duckdb_engine.JSON_COLUMNS`; lines DuckDB cannot parse are
   kept as all-NULL rows so they are still counted), sorted by ``workflow_id`` then
   ``finished_at`` so that a one-workflow query skips most row groups;
2. moves the live ``YYYY-MM.jsonl`` to ``compacted/YYYY-MM.jsonl`` (``YYYY-MM.2.jsonl`` ... when
   an earlier compaction already archived one) - if it grew while step 1 ran, step 1 is redone
   from the archive;
3. renames the temporary file to ``YYYY-MM.parquet`` (atomic).

The JSONL is **kept** in ``compacted/``: it is the lossless source (extra keys, ``model``,
``cost_breakdown`` ... are not in the Parquet file), readers never look there, and it can be
deleted or moved to cold storage at will. A row appended to a closed month after its compaction
(a late writer) lands in a new top-level ``YYYY-MM.jsonl``, which readers read beside the
Parquet file (no row is in both) and the next ``compact`` folds in. Between steps 2 and 3 (two
renames, microseconds apart) a reader listing the directory can miss the month; run one
``compact`` at a time (a lock file enforces it).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from manta_lib.runs_log.reader import require_log_dir
from manta_lib.runs_log.schema import shard_month

log = logging.getLogger(__name__)

ARCHIVE_DIR = "compacted"
"""Sub-directory of the log directory holding the compacted months' JSONL (never read)."""

_SOURCES_KEY = "manta_runs_log_sources"


@dataclass(frozen=True)
class CompactedMonth:
    """One month written to Parquet by :func:`compact`."""

    month: str
    rows: int
    jsonl_bytes: int
    parquet_bytes: int
    seconds: float

    def to_json(self) -> dict[str, object]:
        """JSON-ready dict."""
        return {
            "month": self.month,
            "rows": self.rows,
            "jsonl_bytes": self.jsonl_bytes,
            "parquet_bytes": self.parquet_bytes,
            "seconds": round(self.seconds, 3),
        }


@contextmanager
def _lock(log_dir: Path) -> Iterator[None]:
    archive = log_dir / ARCHIVE_DIR
    archive.mkdir(exist_ok=True)
    with (archive / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _archived(log_dir: Path, month: str) -> list[Path]:
    archive = log_dir / ARCHIVE_DIR
    files = [p for p in archive.glob(f"{month}*.jsonl") if p.name.split(".")[0] == month]
    return sorted(files, key=lambda p: p.name)


def _sources(files: list[Path]) -> str:
    return json.dumps({p.name: p.stat().st_size for p in files}, sort_keys=True)


def _recorded_sources(parquet: Path) -> str | None:
    import duckdb

    conn = duckdb.connect(":memory:")
    try:
        rows = conn.execute(
            "SELECT key, value FROM parquet_kv_metadata($path)", {"path": str(parquet)}
        ).fetchall()
    except duckdb.Error:
        return None
    finally:
        conn.close()
    for key, value in rows:
        if bytes(key).decode() == _SOURCES_KEY:
            return bytes(value).decode()
    return None


def _write_parquet(files: list[Path], target: Path, sources: str) -> int:
    """Write ``files`` (JSONL) to ``target`` as Parquet; returns the row count."""
    import duckdb

    from manta_lib.runs_log.duckdb_engine import JSON_COLUMNS, TYPED_COLUMNS

    conn = duckdb.connect(":memory:")
    try:
        escaped = sources.replace("'", "''")
        conn.execute(
            f"""
            COPY (
                SELECT {TYPED_COLUMNS}
                FROM read_json(
                    $files,
                    format = 'newline_delimited',
                    columns = {JSON_COLUMNS},
                    ignore_errors = true,
                    maximum_object_size = 16777216
                )
                ORDER BY workflow_id NULLS FIRST, finished_at
            ) TO '{str(target).replace("'", "''")}'
            (FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE 65536,
             KV_METADATA {{{_SOURCES_KEY}: '{escaped}'}})
            """,
            {"files": [str(p) for p in files]},
        )
        row = conn.execute(
            "SELECT count(*) FROM read_parquet($path)", {"path": str(target)}
        ).fetchone()
    finally:
        conn.close()
    with target.open("rb") as handle:
        os.fsync(handle.fileno())
    return int(row[0]) if row else 0


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _free_archive_name(log_dir: Path, month: str) -> Path:
    archive = log_dir / ARCHIVE_DIR
    candidate = archive / f"{month}.jsonl"
    n = 2
    while candidate.exists():
        candidate = archive / f"{month}.{n}.jsonl"
        n += 1
    return candidate


def closed_months(log_dir: Path | str, now: datetime | None = None) -> list[str]:
    """Months (``YYYY-MM``) before the current UTC month that have a JSONL to compact, or an
    archive newer than their Parquet file (an interrupted compaction), oldest first."""
    path = require_log_dir(log_dir)
    now = (now or datetime.now(UTC)).astimezone(UTC)
    current = (now.year, now.month)
    months = set()
    for entry in path.iterdir():
        month = shard_month(entry.name)
        if month is not None and month < current and entry.is_file():
            months.add(f"{month[0]:04d}-{month[1]:02d}")
    archive = path / ARCHIVE_DIR
    if archive.is_dir():
        for entry in archive.glob("*.jsonl"):
            month = shard_month(entry.name.split(".")[0] + ".jsonl")
            name = f"{month[0]:04d}-{month[1]:02d}" if month else None
            if name is None or month is None or month >= current or name in months:
                continue
            parquet = path / f"{name}.parquet"
            if not parquet.exists() or _recorded_sources(parquet) != _sources(
                _archived(path, name)
            ):
                months.add(name)
    return sorted(months)


def compact(log_dir: Path | str, *, now: datetime | None = None) -> list[CompactedMonth]:
    """Compact every closed month of ``log_dir`` to ``YYYY-MM.parquet`` (see the module doc).

    Idempotent: a month is only rewritten when it has new JSONL. Returns what was written.

    Example::

        [m.month for m in compact("runs_log")]
        # ['2026-03', '2026-04']
    """
    import time

    path = require_log_dir(log_dir)
    done = []
    with _lock(path):
        for month in closed_months(path, now):
            start = time.perf_counter()
            live = path / f"{month}.jsonl"
            tmp = path / f".{month}.parquet.tmp"
            target = path / f"{month}.parquet"
            while True:
                archived = _archived(path, month)
                live_size = live.stat().st_size if live.exists() else None
                files = archived + ([live] if live_size is not None else [])
                sources = json.loads(_sources(archived))
                destination = _free_archive_name(path, month) if live_size is not None else None
                if destination is not None and live_size is not None:
                    sources[destination.name] = live_size
                rows = _write_parquet(files, tmp, json.dumps(sources, sort_keys=True))
                if destination is None:
                    break
                os.replace(live, destination)
                if destination.stat().st_size == live_size:
                    break
                log.warning("runs log: %s grew during compaction; compacting it again", live)
            os.replace(tmp, target)
            _fsync_dir(path)
            _fsync_dir(path / ARCHIVE_DIR)
            jsonl_bytes = sum(p.stat().st_size for p in _archived(path, month))
            done.append(
                CompactedMonth(
                    month=month,
                    rows=rows,
                    jsonl_bytes=jsonl_bytes,
                    parquet_bytes=target.stat().st_size,
                    seconds=time.perf_counter() - start,
                )
            )
            log.info("runs log: compacted %s (%d rows) to %s", month, rows, target)
    return done


__all__ = ["ARCHIVE_DIR", "CompactedMonth", "closed_months", "compact"]
