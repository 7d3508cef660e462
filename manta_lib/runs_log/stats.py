"""Percentiles per wall-time bucket over the runs log: the pure-Python engine and the entry
points shared by both engines (``compute_stats``, ``compare_windows``, ``list_workflows``).

Selection (identical in both engines): rows of schema version 1 for one workflow, optionally
one status, with ``since <= finished_at < until``; the newest ``last`` of them by
``(finished_at, run_id)`` descending. Each bucket is aggregated over the selected rows that
carry a finite number for it; ``total_time_s`` comes from the row's top level. Percentiles use
linear interpolation between closest ranks (numpy's default ``linear`` method) and are rounded
to the microsecond, so that both engines report the same figures.
"""

from __future__ import annotations

import difflib
import heapq
import logging
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import count
from pathlib import Path
from typing import Any, Literal, TypeGuard

from manta_lib.errors import QueryError
from manta_lib.runs_log.reader import ReadReport, Shard, iter_shard, list_shards, month_groups
from manta_lib.runs_log.schema import TOTAL_BUCKET, parse_timestamp
from manta_lib.runs_log.selection import (
    BucketStats,
    RunFilter,
    Selection,
    WorkflowSummary,
    as_utc,
    parse_duration,
    resolve_since,
    window_start,
)

log = logging.getLogger(__name__)

Engine = Literal["auto", "python", "duckdb"]
ENGINES: tuple[str, ...] = ("auto", "python", "duckdb")
AUTO_DUCKDB_BYTES = 10 << 20
"""``engine="auto"`` picks DuckDB when the shards a query may read total at least this size
(measured crossover of a ``mantis runs stats`` process, DuckDB's import included)..."""
AUTO_DUCKDB_BYTES_IMPORTED = 6 << 20
"""... and this size when DuckDB is already imported (a long-lived process, the tests)."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


# --------------------------------------------------------------------------- percentiles


def order_buckets(buckets: dict[str, BucketStats]) -> dict[str, BucketStats]:
    """Buckets by p50 descending (ties by name), with ``total_time_s`` last."""
    names = sorted((b for b in buckets if b != TOTAL_BUCKET), key=lambda b: (-buckets[b].p50, b))
    if TOTAL_BUCKET in buckets:
        names.append(TOTAL_BUCKET)
    return {name: buckets[name] for name in names}


# --------------------------------------------------------------------------- query types


@dataclass
class StatsResult:
    """Result of :func:`compute_stats`; :meth:`to_json` gives the ``--json`` shape."""

    workflow_id: str
    status: str
    last: int
    since: datetime | None
    run_count: int
    buckets: dict[str, BucketStats]
    engine: str
    report: ReadReport

    def to_json(self) -> dict[str, Any]:
        """``{workflow_id, run_count, percentiles: {bucket: {p50, p95, p99, count}}}``."""
        return {
            "workflow_id": self.workflow_id,
            "run_count": self.run_count,
            "percentiles": {
                name: {"p50": s.p50, "p95": s.p95, "p99": s.p99, "count": s.count}
                for name, s in self.buckets.items()
            },
        }


# --------------------------------------------------------------------------- windows


def to_micros(value: datetime) -> int:
    """Microseconds since the epoch (exact, unlike a float timestamp)."""
    return (value - _EPOCH) // _MICROSECOND


# --------------------------------------------------------------------------- python engine


def _is_number(value: object) -> TypeGuard[int | float]:
    # bool counts as 0/1 and non-finite values are skipped, as DuckDB's DOUBLE cast does.
    return isinstance(value, int | float) and math.isfinite(value)


def bucket_values(rows: Iterable[dict[str, Any]]) -> dict[str, list[float]]:
    """Per-bucket values of ``rows``; a bucket missing from a row is skipped for that row."""
    values: dict[str, list[float]] = {}
    for row in rows:
        total = row.get(TOTAL_BUCKET)
        if _is_number(total) and not isinstance(total, bool):  # a JSON number, as in DuckDB
            values.setdefault(TOTAL_BUCKET, []).append(float(total))
        breakdown = row.get("wall_time_breakdown")
        if isinstance(breakdown, dict):
            for name, seconds in breakdown.items():
                if name != TOTAL_BUCKET and _is_number(seconds):
                    values.setdefault(name, []).append(float(seconds))
    return values


def python_select(  # noqa: C901 - one flat skip rule per row field, shared by both engines
    shards: Sequence[Shard], flt: RunFilter, last: int
) -> Selection:
    """Pure-Python streaming engine: newest ``last`` matching rows (0 = all) and their stats.

    Shards are read newest first and reading stops after the first month at which ``last``
    rows are held: every row of an older month finished before any row of a newer one.
    """
    report = ReadReport()
    since_us = to_micros(flt.since) if flt.since else None
    until_us = to_micros(flt.until) if flt.until else None
    kept: list[tuple[int, str, int, dict[str, Any]]] = []  # min-heap when last > 0
    tie = count()
    for month in month_groups(list(shards)):
        for shard in month:
            for row in iter_shard(shard, report):
                if row.get("workflow_id") != flt.workflow_id:
                    continue
                if flt.status and row.get("status") != flt.status:
                    continue
                if row.get("subset") is True and not flt.include_subset:
                    continue
                finished = parse_timestamp(row.get("finished_at"))
                if finished is None:
                    report.note("invalid", f"{shard.path} (run_id {row.get('run_id')!r})")
                    continue
                micros = to_micros(finished)
                if (since_us is not None and micros < since_us) or (
                    until_us is not None and micros >= until_us
                ):
                    continue
                run_id = row.get("run_id")
                item = (micros, run_id if isinstance(run_id, str) else "", next(tie), row)
                if not last:
                    kept.append(item)
                elif len(kept) < last:
                    heapq.heappush(kept, item)
                elif item[:2] > kept[0][:2]:
                    heapq.heapreplace(kept, item)
        if last and len(kept) >= last:
            break
    values = bucket_values(item[3] for item in kept)
    buckets = {name: BucketStats.of(vals) for name, vals in values.items()}
    return Selection(run_count=len(kept), buckets=buckets, report=report)


def python_workflows(shards: Sequence[Shard]) -> tuple[list[WorkflowSummary], ReadReport]:
    """Run counts and newest finished_at per workflow, pure Python."""
    report = ReadReport()
    acc: dict[str, list[Any]] = {}
    for shard in shards:
        for row in iter_shard(shard, report):
            workflow_id = row.get("workflow_id")
            finished = parse_timestamp(row.get("finished_at"))
            if not isinstance(workflow_id, str) or finished is None:
                report.note("invalid", f"{shard.path} (run_id {row.get('run_id')!r})")
                continue
            entry = acc.setdefault(workflow_id, [0, 0, 0, finished])
            entry[0] += 1
            status = row.get("status")
            entry[1] += status == "succeeded"
            entry[2] += status == "failed"
            entry[3] = max(entry[3], finished)
    return [
        WorkflowSummary(wid, runs, ok, failed, last)
        for wid, (runs, ok, failed, last) in sorted(acc.items())
    ], report


# --------------------------------------------------------------------------- entry points


def choose_engine(engine: str, shards: Sequence[Shard]) -> str:
    """Resolve ``auto`` by the total size of the shards a query may read.

    DuckDB when a shard is compacted (Parquet needs DuckDB anyway) or when the shards total
    at least :data:`AUTO_DUCKDB_BYTES` (:data:`AUTO_DUCKDB_BYTES_IMPORTED` once DuckDB is
    imported): below that, Python's streaming beats DuckDB's fixed cost (import, connection,
    a few queries). With a ``--last`` cap the query usually reads only the newest month, but
    how many months it needs is only known while reading; the total is used because a wrong
    "python" on a large log costs seconds while a wrong "duckdb" costs about 0.1 s.
    """
    if engine not in ENGINES:
        raise QueryError(f"unknown engine {engine!r}; use one of {', '.join(ENGINES)}")
    if engine != "auto":
        return engine
    if any(s.compacted for s in shards):
        return "duckdb"
    limit = AUTO_DUCKDB_BYTES_IMPORTED if "duckdb" in sys.modules else AUTO_DUCKDB_BYTES
    return "duckdb" if sum(s.size for s in shards) >= limit else "python"


def select(shards: Sequence[Shard], flt: RunFilter, last: int, engine: str) -> Selection:
    """Run the selection on ``engine`` (``python`` or ``duckdb``, already resolved)."""
    if engine == "duckdb":
        from manta_lib.runs_log import duckdb_engine

        with duckdb_engine.connect() as conn:
            return duckdb_engine.duckdb_select(conn, shards, flt, last)
    return python_select(shards, flt, last)


def list_workflows(log_dir: Path | str, *, engine: str = "auto") -> list[WorkflowSummary]:
    """Every workflow id in the log with its run counts and newest ``finished_at``.

    Example::

        [w.workflow_id for w in list_workflows("runs_log")]
        # ['default__marketplace-listings-v1']
    """
    shards = list_shards(log_dir)
    if choose_engine(engine, shards) == "duckdb":
        from manta_lib.runs_log import duckdb_engine

        with duckdb_engine.connect() as conn:
            summaries, report = duckdb_engine.duckdb_workflows(conn, shards)
    else:
        summaries, report = python_workflows(shards)
    report.warn()
    return summaries


def compute_stats(
    log_dir: Path | str,
    workflow_id: str,
    *,
    last: int = 100,
    buckets: Sequence[str] | None = None,
    since: str | timedelta | datetime | None = None,
    status: str = "succeeded",
    engine: str = "auto",
    until: datetime | None = None,
    now: datetime | None = None,
    include_subset: bool = False,
) -> StatsResult:
    """p50/p95/p99 per wall-time bucket over the newest ``last`` runs of ``workflow_id``.

    ``last=0`` means no cap; ``status=""`` keeps every terminal status; ``since`` is ``"7d"``,
    ``"24h"``, ``"30m"``, a timedelta or a datetime; ``buckets`` restricts the report
    (``total_time_s`` is always included); runs over a subset of their data (logged with
    ``subset: true``) are left out unless ``include_subset``. Raises :class:`QueryError` when
    no run matches, naming the closest workflow ids, and
    :class:`~manta_lib.errors.ConfigError` when the log directory is missing.

    Example::

        result = compute_stats("runs_log", "default__marketplace-listings-v1")
        result.buckets["total_time_s"].p95
        # 383.0
    """
    if last < 0:
        raise QueryError(f"--last {last} must be 0 (no cap) or a positive number of runs")
    flt = RunFilter(workflow_id, status, resolve_since(since, now), until, include_subset)
    shards = list_shards(log_dir, since=flt.since, until=flt.until)
    chosen = choose_engine(engine, shards)
    selection = select(shards, flt, last, chosen)
    selection.report.warn()
    if selection.run_count == 0:
        raise QueryError(_empty_message(log_dir, flt, engine))
    stats = selection.buckets
    if buckets:
        missing = [b for b in buckets if b not in stats]
        if missing:
            known = sorted(b for b in stats if b != TOTAL_BUCKET)
            found = [b for b in buckets if b in stats]
            near = sorted({m for b in missing for m in difflib.get_close_matches(b, known, 3)})
            raise QueryError(
                f"bucket(s) {', '.join(missing)} not found in the selected runs of "
                f"{workflow_id}"
                + (f" (did you mean: {', '.join(near)})" if near else "")
                + (f"; found: {', '.join(found)}" if found else "")
                + f"; available buckets: {', '.join(known) or 'none'}. Drop the unknown "
                f"--bucket to see the others."
            )
        stats = {b: s for b, s in stats.items() if b in buckets or b == TOTAL_BUCKET}
    return StatsResult(
        workflow_id=workflow_id,
        status=status,
        last=last,
        since=flt.since,
        run_count=selection.run_count,
        buckets=order_buckets(stats),
        engine=chosen,
        report=selection.report,
    )


def _empty_message(log_dir: Path | str, flt: RunFilter, engine: str) -> str:
    workflows = {w.workflow_id: w for w in list_workflows(log_dir, engine=engine)}
    where = f"the runs log at {Path(log_dir).resolve()}"
    if not workflows:
        return f"{where} holds no runs yet"
    found = workflows.get(flt.workflow_id)
    if found is None:
        close = difflib.get_close_matches(flt.workflow_id, workflows, n=3, cutoff=0.4)
        if not close:
            recent = sorted(workflows.values(), key=lambda w: w.last_finished_at, reverse=True)
            close = [w.workflow_id for w in recent[:3]]
        return (
            f"no runs of workflow {flt.workflow_id!r} in {where}; closest workflow ids: "
            f"{', '.join(close)} (see `mantis runs workflows`)"
        )
    kind = f"{flt.status} runs" if flt.status else "runs"
    window = []
    if flt.since is not None:
        window.append(f"finished since {flt.since.isoformat().replace('+00:00', 'Z')}")
    if flt.until is not None:
        window.append(f"before {flt.until.isoformat().replace('+00:00', 'Z')}")
    newest = found.last_finished_at.isoformat().replace("+00:00", "Z")
    return (
        f"no {kind} of {flt.workflow_id} {' and '.join(window) or 'in the log'}: the window is "
        f"empty ({found.runs} runs in total, {found.succeeded} succeeded, {found.failed} failed, "
        f"newest finished at {newest})"
    )


# --------------------------------------------------------------------------- compare


@dataclass(frozen=True)
class BucketChange:
    """One bucket in both windows; changes are percentages, ``None`` when not comparable."""

    bucket: str
    recent: BucketStats | None
    baseline: BucketStats | None
    p50_change_pct: float | None
    p95_change_pct: float | None
    regressed: bool


@dataclass
class CompareResult:
    """Result of :func:`compare_windows`."""

    workflow_id: str
    status: str
    recent_start: datetime
    baseline_start: datetime
    recent_runs: int
    baseline_runs: int
    threshold_pct: float
    changes: list[BucketChange]
    engine: str

    @property
    def regressions(self) -> list[BucketChange]:
        """Buckets whose p50 or p95 grew by more than the threshold."""
        return [c for c in self.changes if c.regressed]

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict of the comparison."""

        def stats(s: BucketStats | None) -> dict[str, Any] | None:
            return None if s is None else {"p50": s.p50, "p95": s.p95, "count": s.count}

        return {
            "workflow_id": self.workflow_id,
            "recent": {"since": _iso(self.recent_start), "run_count": self.recent_runs},
            "baseline": {
                "since": _iso(self.baseline_start),
                "until": _iso(self.recent_start),
                "run_count": self.baseline_runs,
            },
            "threshold_pct": self.threshold_pct,
            "buckets": {
                c.bucket: {
                    "recent": stats(c.recent),
                    "baseline": stats(c.baseline),
                    "p50_change_pct": c.p50_change_pct,
                    "p95_change_pct": c.p95_change_pct,
                    "regressed": c.regressed,
                }
                for c in self.changes
            },
            "regressed": [c.bucket for c in self.regressions],
        }


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def _change(recent: float, baseline: float) -> float | None:
    if baseline == 0:
        return None
    return round((recent - baseline) / baseline * 100.0, 2)


def compare_windows(
    log_dir: Path | str,
    workflow_id: str,
    *,
    recent: str | timedelta = "7d",
    baseline: str | timedelta = "30d",
    status: str = "succeeded",
    threshold_pct: float = 20.0,
    engine: str = "auto",
    now: datetime | None = None,
    include_subset: bool = False,
) -> CompareResult:
    """Compare p50/p95 per bucket in the recent window against the baseline window before it.

    Recent: ``finished_at >= now - recent``; baseline: ``now - recent - baseline <= finished_at
    < now - recent``; no ``--last`` cap in either. A bucket regressed when its p50 or p95 grew
    by more than ``threshold_pct`` percent. Raises :class:`QueryError` when a window is empty.

    Example::

        result = compare_windows("runs_log", "wf", recent="7d", baseline="30d")
        [c.bucket for c in result.regressions]
        # ['think']
    """
    now = as_utc(now or datetime.now(UTC))
    recent_td = parse_duration(recent, "--recent") if isinstance(recent, str) else recent
    baseline_td = parse_duration(baseline, "--baseline") if isinstance(baseline, str) else baseline
    if not _is_number(threshold_pct) or threshold_pct < 0:
        raise QueryError(
            f"--threshold {threshold_pct} must be a finite percentage >= 0 (NaN or infinity "
            f"would never flag a regression)"
        )
    recent_start = window_start(now, recent_td, "--recent")
    baseline_start = window_start(recent_start, baseline_td, "--baseline")
    recent_flt = RunFilter(workflow_id, status, recent_start, None, include_subset)
    baseline_flt = RunFilter(workflow_id, status, baseline_start, recent_start, include_subset)
    shards = list_shards(log_dir, since=baseline_start)
    chosen = choose_engine(engine, shards)
    selections = []
    for flt in (recent_flt, baseline_flt):
        window_shards = [
            s
            for s in shards
            if (flt.since is None or s.end > flt.since)
            and (flt.until is None or s.start < flt.until)
        ]
        selection = select(window_shards, flt, 0, chosen)
        selection.report.warn()
        if selection.run_count == 0:
            raise QueryError(_empty_message(log_dir, flt, engine))
        selections.append(selection)
    recent_sel, baseline_sel = selections
    ordered = order_buckets(recent_sel.buckets)
    names = list(ordered) + sorted(b for b in baseline_sel.buckets if b not in ordered)
    changes = []
    for name in names:
        new, old = recent_sel.buckets.get(name), baseline_sel.buckets.get(name)
        p50 = _change(new.p50, old.p50) if new and old else None
        p95 = _change(new.p95, old.p95) if new and old else None
        regressed = any(c is not None and c > threshold_pct for c in (p50, p95))
        changes.append(BucketChange(name, new, old, p50, p95, regressed))
    # keep total_time_s last even when it only exists in the baseline window
    changes.sort(key=lambda c: c.bucket == TOTAL_BUCKET)
    return CompareResult(
        workflow_id=workflow_id,
        status=status,
        recent_start=recent_start,
        baseline_start=baseline_start,
        recent_runs=recent_sel.run_count,
        baseline_runs=baseline_sel.run_count,
        threshold_pct=threshold_pct,
        changes=changes,
        engine=chosen,
    )
