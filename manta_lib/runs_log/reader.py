"""Stream the runs-log shards newest first, tolerating bad lines.

Blank, truncated and corrupt lines and rows of an unknown ``schema_version`` are counted in a
:class:`ReadReport` (with the first bad location) and skipped, never raised; extra keys are
ignored. Both query engines use :func:`list_shards` so that they read the same files.

A month compacted by ``mantis runs compact`` (:mod:`manta_lib.runs_log.compact`) is a
``YYYY-MM.parquet`` shard; a ``YYYY-MM.jsonl`` beside it holds only rows appended after the
compaction (the compacted JSONL was moved to ``compacted/``), so both are read and no row is
counted twice.
"""

from __future__ import annotations

import codecs
import json
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from manta_lib.errors import ConfigError
from manta_lib.runs_log.schema import SCHEMA_VERSION, shard_month

log = logging.getLogger(__name__)

PARQUET_SUFFIX = ".parquet"
_PARQUET_RE = re.compile(r"^(\d{4})-(\d{2})\.parquet$")


def parquet_month(file_name: str) -> tuple[int, int] | None:
    """``(year, month)`` of a compacted shard name such as ``2026-05.parquet``."""
    match = _PARQUET_RE.match(file_name)
    if match is None:
        return None
    year, month = int(match.group(1)), int(match.group(2))
    return (year, month) if 1 <= year <= 9999 and 1 <= month <= 12 else None


@dataclass(frozen=True)
class Shard:
    """One month file of the log; ``start``/``end`` bound the ``finished_at`` it may hold."""

    path: Path
    start: datetime
    end: datetime
    size: int

    @property
    def name(self) -> str:
        """The file name, e.g. ``2026-05.jsonl``."""
        return self.path.name

    @property
    def compacted(self) -> bool:
        """Whether this month was compacted to Parquet (``YYYY-MM.parquet``)."""
        return self.path.suffix == ".parquet"


@dataclass
class ReadReport:
    """What a scan skipped. ``first_bad`` is ``path:line`` (or a file for DuckDB) of the first."""

    lines: int = 0
    blank: int = 0
    corrupt: int = 0
    truncated: int = 0
    unknown_version: int = 0
    invalid: int = 0
    first_bad: str | None = None
    shards_read: int = 0

    @property
    def skipped(self) -> int:
        """Lines that were not blank but could not be used."""
        return self.corrupt + self.truncated + self.unknown_version + self.invalid

    def note(self, kind: str, location: str) -> None:
        """Count one bad line of ``kind`` found at ``location``."""
        setattr(self, kind, getattr(self, kind) + 1)
        if self.first_bad is None:
            self.first_bad = location

    def warn(self) -> None:
        """Log one warning summarising the skipped lines, if any."""
        if not self.skipped:
            return
        parts = [
            f"{count} {label}"
            for count, label in (
                (self.corrupt, "corrupt"),
                (self.truncated, "truncated"),
                (self.unknown_version, f"with a schema_version other than {SCHEMA_VERSION}"),
                (self.invalid, "without a usable workflow_id/finished_at"),
            )
            if count
        ]
        log.warning(
            "runs log: skipped %d line(s): %s; first at %s",
            self.skipped,
            ", ".join(parts),
            self.first_bad,
        )


def require_log_dir(log_dir: Path | str) -> Path:
    """Return ``log_dir`` as a Path, or raise :class:`ConfigError` saying where it looked."""
    path = Path(log_dir)
    if not path.is_dir():
        state = "is not a directory" if path.exists() else "does not exist"
        raise ConfigError(
            f"runs log directory {path.resolve()} {state}; set MANTA_RUNS_LOG_DIR or pass "
            "--log-dir to point at the directory holding the YYYY-MM.jsonl shards"
        )
    return path


def list_shards(
    log_dir: Path | str, *, since: datetime | None = None, until: datetime | None = None
) -> list[Shard]:
    """Month shards under ``log_dir``, newest first, keeping only months that can hold rows
    with ``since <= finished_at < until``. Other files are ignored.

    A compacted month's ``YYYY-MM.parquet`` comes right before its ``YYYY-MM.jsonl`` (rows
    appended after the compaction), if any; both have the same ``start``.
    """
    shards = []
    for path in require_log_dir(log_dir).iterdir():
        month = shard_month(path.name) or parquet_month(path.name)
        if month is None or not path.is_file():
            if month is None and _LOOKS_LIKE_SHARD.match(path.name):
                _warn_once(path, "is not a month shard (YYYY-MM with year 0001-9999, month 01-12)")
            continue
        year, mon = month
        start = datetime(year, mon, 1, tzinfo=UTC)
        end = _month_end(year, mon)
        if since is not None and end <= since:
            continue
        if until is not None and start >= until:
            continue
        _require_readable(path)
        shards.append(Shard(path=path, start=start, end=end, size=path.stat().st_size))
    shards.sort(key=lambda shard: (shard.start, shard.compacted), reverse=True)
    return shards


_LOOKS_LIKE_SHARD = re.compile(r"^\d{4}-\d{2}\.(jsonl|parquet)$")
_warned: set[Path] = set()


def _warn_once(path: Path, why: str) -> None:
    if path not in _warned:
        _warned.add(path)
        log.warning("runs log: ignored %s: it %s", path, why)


def _month_end(year: int, month: int) -> datetime:
    """The first instant after ``year-month`` (the end of time for December 9999)."""
    if (year, month) == (9999, 12):
        return datetime.max.replace(tzinfo=UTC)
    return datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)


def _require_readable(path: Path) -> None:
    """Raise :class:`ConfigError` naming a shard that cannot be read: both engines stop on it
    rather than report figures without its rows."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            os.pread(fd, 1, 0)
        finally:
            os.close(fd)
    except OSError as exc:
        raise unreadable_shard(path, exc.strerror or str(exc)) from None


def unreadable_shard(path: Path, reason: str) -> ConfigError:
    """The one error both engines raise for a shard they cannot read."""
    return ConfigError(
        f"runs log shard {path} cannot be read ({reason}); fix its permissions, restore it (a "
        f"compacted month's JSONL is kept in compacted/), or move it out of the log directory"
    )


def month_groups(shards: list[Shard]) -> list[list[Shard]]:
    """``shards`` (newest first) grouped by month: the unit a ``--last`` scan may stop after."""
    groups: list[list[Shard]] = []
    for shard in shards:
        if groups and groups[-1][0].start == shard.start:
            groups[-1].append(shard)
        else:
            groups.append([shard])
    return groups


def iter_shard(shard: Shard, report: ReadReport) -> Iterator[dict[str, Any]]:
    """Yield the schema-version-1 JSON objects of one shard in file order, counting the rest."""
    if shard.compacted:
        yield from _iter_parquet(shard, report)
        return
    report.shards_read += 1
    try:
        yield from _iter_jsonl(shard, report)
    except OSError as exc:
        raise unreadable_shard(shard.path, exc.strerror or str(exc)) from None


def _iter_jsonl(shard: Shard, report: ReadReport) -> Iterator[dict[str, Any]]:
    with shard.path.open("rb") as handle:
        for number, raw in enumerate(handle, 1):
            report.lines += 1
            if number > 1 and raw.startswith(codecs.BOM_UTF8):
                # a byte-order mark inside a file (files joined by cat): corrupt, as in DuckDB,
                # which skips a byte-order mark only at the start of a file
                report.note("corrupt", f"{shard.path}:{number}")
                continue
            try:
                obj = json.loads(raw)
            except ValueError:
                if not raw.strip():
                    report.blank += 1
                elif raw.endswith(b"\n"):
                    report.note("corrupt", f"{shard.path}:{number}")
                else:
                    report.note("truncated", f"{shard.path}:{number}")
                continue
            if type(obj) is not dict or not any(key in obj for key in ENGINE_KEYS):
                report.note("corrupt", f"{shard.path}:{number}")
                continue
            if not is_schema_version(obj.get("schema_version")):
                report.note("unknown_version", f"{shard.path}:{number}")
                continue
            yield obj


ENGINE_KEYS = (
    "schema_version",
    "workflow_id",
    "run_id",
    "status",
    "finished_at",
    "total_time_s",
    "wall_time_breakdown",
)
"""The keys the query engines read. A line that is not a JSON object holding at least one of
them counts as corrupt (DuckDB's scan cannot tell such an object from an unparsable line)."""


def is_schema_version(value: object) -> bool:
    """The rule of both engines: ``schema_version`` is the JSON integer 1 (not ``"1"``,
    ``1.0`` or ``true``)."""
    return type(value) is int and value == SCHEMA_VERSION


def iter_rows(
    log_dir: Path | str,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    report: ReadReport | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield every usable row of the shards that may hold ``since <= finished_at < until``,
    newest shard first (rows inside a shard come in file order, not re-filtered by time).

    Example::

        for row in iter_rows("runs_log"):
            print(row["run_id"])
    """
    report = report if report is not None else ReadReport()
    for shard in list_shards(log_dir, since=since, until=until):
        yield from iter_shard(shard, report)


_PARQUET_COLUMNS = (
    "schema_version",
    "workflow_id",
    "run_id",
    "status",
    "finished_at",
    "total_time_s",
    "wall_time_breakdown",
    "subset",
)


def _iter_parquet(shard: Shard, report: ReadReport) -> Iterator[dict[str, Any]]:
    """Rows of a compacted month, as dicts of the columns compaction kept.

    Compaction keeps the line DuckDB could not parse as an all-NULL row, so they are still
    counted (as corrupt: a truncated line is no longer told apart).
    """
    import duckdb  # a compacted log needs DuckDB to read, whatever the engine

    report.shards_read += 1
    loads = json.loads
    conn = duckdb.connect(":memory:")
    try:
        try:
            has_subset = conn.execute(
                "SELECT count(*) FROM parquet_schema($path) WHERE name = 'subset'",
                {"path": str(shard.path)},
            ).fetchone()
            columns = list(_PARQUET_COLUMNS)
            if not (has_subset and has_subset[0]):
                columns[-1] = "NULL AS subset"  # compacted before the flag existed
            cursor = conn.execute(
                f"SELECT {', '.join(columns)} FROM read_parquet($path)", {"path": str(shard.path)}
            )
        except duckdb.Error as exc:
            raise unreadable_shard(shard.path, parquet_problem(exc)) from None
        number = 0
        while batch := cursor.fetchmany(65536):
            for values in batch:
                number += 1
                report.lines += 1
                if all(value is None for value in values[: len(ENGINE_KEYS)]):
                    report.note("corrupt", f"{shard.path}:row {number}")
                    continue
                row = dict(zip(_PARQUET_COLUMNS, values, strict=True))
                if not is_schema_version(row["schema_version"]):
                    report.note("unknown_version", f"{shard.path}:row {number}")
                    continue
                breakdown = row["wall_time_breakdown"]
                row["wall_time_breakdown"] = None if breakdown is None else loads(breakdown)
                yield row
    finally:
        conn.close()


def parquet_problem(exc: Exception) -> str:
    """A short reason for a Parquet shard DuckDB could not read."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if "magic bytes" in text.lower() or "not a parquet" in text.lower():
        return "not a Parquet file"
    return text.removeprefix("Invalid Input Error: ").removeprefix("IO Error: ")
