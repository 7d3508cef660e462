"""Plain-text and JSON renderings of runs-log results (what the CLI prints)."""

from __future__ import annotations

import json
from typing import Any

from manta_lib.runs_log.schema import TOTAL_BUCKET
from manta_lib.runs_log.selection import WorkflowSummary
from manta_lib.runs_log.stats import BucketChange, CompareResult, StatsResult

RULE = "─"
_NUMBER_WIDTH = 10
_MIN_NAME_WIDTH = 20
_INDENT = "  "


def _seconds(value: float) -> str:
    return f"{value:.1f}s"


def status_label(status: str) -> str:
    """``succeeded`` / ``failed`` as given; ``""`` reads as ``terminal`` (every status)."""
    return status or "terminal"


def stats_table(result: StatsResult) -> str:
    """The bucket × percentile table, p50 descending, ``total_time_s`` under a rule.

    Example::

        print(stats_table(result))
        # Across last 100 succeeded runs of default__marketplace-listings-v1:
        #   bucket                     p50       p95       p99
        #   ──────────────────────────────────────────────────
        #   think                    92.0s    145.0s    201.0s
        # ...
    """
    width = max([_MIN_NAME_WIDTH, *(len(name) + 2 for name in result.buckets)])
    rule = _INDENT + RULE * (width + 3 * _NUMBER_WIDTH)

    def line(name: str, *cells: str) -> str:
        return _INDENT + f"{name:<{width}}" + "".join(f"{c:>{_NUMBER_WIDTH}}" for c in cells)

    lines = [
        f"Across last {result.run_count} {status_label(result.status)} runs of "
        f"{result.workflow_id}:",
        line("bucket", "p50", "p95", "p99"),
        rule,
    ]
    for name, stats in result.buckets.items():
        if name == TOTAL_BUCKET:
            lines.append(rule)
        lines.append(line(name, _seconds(stats.p50), _seconds(stats.p95), _seconds(stats.p99)))
    return "\n".join(lines)


def to_json_text(payload: dict[str, Any] | list[dict[str, Any]]) -> str:
    """Indented JSON, UTF-8 kept readable."""
    return json.dumps(payload, indent=2, ensure_ascii=False)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.1f}%"


def _opt_seconds(stats: Any, attr: str) -> str:
    return "—" if stats is None else _seconds(getattr(stats, attr))


def compare_table(result: CompareResult) -> str:
    """Recent vs baseline p50/p95 per bucket with the change in percent and a REGRESSED flag."""
    width = max([_MIN_NAME_WIDTH, *(len(c.bucket) + 2 for c in result.changes)])
    headers = ("p50 base", "p50 now", "Δp50", "p95 base", "p95 now", "Δp95")
    rule = _INDENT + RULE * (width + len(headers) * _NUMBER_WIDTH)

    def line(name: str, cells: tuple[str, ...], flag: str = "") -> str:
        text = f"{name:<{width}}" + "".join(f"{c:>{_NUMBER_WIDTH}}" for c in cells)
        return _INDENT + text + (f"  {flag}" if flag else "")

    def row(change: BucketChange) -> str:
        cells = (
            _opt_seconds(change.baseline, "p50"),
            _opt_seconds(change.recent, "p50"),
            _pct(change.p50_change_pct),
            _opt_seconds(change.baseline, "p95"),
            _opt_seconds(change.recent, "p95"),
            _pct(change.p95_change_pct),
        )
        return line(change.bucket, cells, "REGRESSED" if change.regressed else "")

    since = result.recent_start.isoformat().replace("+00:00", "Z")
    base = result.baseline_start.isoformat().replace("+00:00", "Z")
    lines = [
        f"{status_label(result.status).capitalize()} runs of {result.workflow_id}: "
        f"{result.recent_runs} recent (since {since}) vs {result.baseline_runs} baseline "
        f"({base} to {since}):",
        line("bucket", headers),
        rule,
    ]
    for change in result.changes:
        if change.bucket == TOTAL_BUCKET:
            lines.append(rule)
        lines.append(row(change))
    regressions = result.regressions
    if regressions:
        names = ", ".join(c.bucket for c in regressions)
        lines.append(
            f"{len(regressions)} bucket(s) regressed by more than "
            f"{result.threshold_pct:g}% (p50 or p95): {names}"
        )
    else:
        lines.append(f"No bucket regressed by more than {result.threshold_pct:g}% (p50 or p95).")
    return "\n".join(lines)


def workflows_table(summaries: list[WorkflowSummary]) -> str:
    """Workflow ids with run counts and their newest ``finished_at``, newest first."""
    ordered = sorted(summaries, key=lambda s: (s.last_finished_at, s.workflow_id), reverse=True)
    width = max([len("workflow_id") + 2, *(len(s.workflow_id) + 2 for s in ordered)])
    lines = [f"{'workflow_id':<{width}}{'runs':>8}{'succeeded':>11}{'failed':>8}  last finished_at"]
    for s in ordered:
        finished = s.last_finished_at.isoformat().replace("+00:00", "Z")
        lines.append(
            f"{s.workflow_id:<{width}}{s.runs:>8}{s.succeeded:>11}{s.failed:>8}  {finished}"
        )
    return "\n".join(lines)
