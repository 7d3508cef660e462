"""A corrupt runs log gets one answer, whichever engine reads it.

Each case writes two good rows and one hostile line or file into a fresh log, then asks both
engines the same questions: the run counts, the figures and the skipped-line total must be
equal, or both must raise the same :class:`MantaError` type naming the file.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from manta_lib.cli import runs_commands
from manta_lib.errors import ConfigError, MantaError, QueryError
from manta_lib.runs_log import (
    append_run,
    compare_windows,
    compute_stats,
    list_workflows,
    make_run_row,
    run_status,
)

WF = "wf"
ENGINES = ("python", "duckdb")


def good_row(run_id: str, finished: str, seconds: float, **extra: object) -> dict[str, object]:
    finished_at = datetime.fromisoformat(finished.replace("Z", "+00:00"))
    return make_run_row(
        run_id=run_id,
        workflow_id=WF,
        status="succeeded",
        created_at=finished_at - timedelta(seconds=seconds),
        finished_at=finished_at,
        wall_time_breakdown={"map": seconds / 2, "load": seconds / 4},
        **extra,  # type: ignore[arg-type]
    )


def write_lines(path: Path, lines: list[str | bytes]) -> None:
    with path.open("ab") as handle:
        for line in lines:
            handle.write(line if isinstance(line, bytes) else line.encode() + b"\n")


def base_log(tmp_path: Path) -> Path:
    log = tmp_path / "runs_log"
    log.mkdir()
    for i, seconds in enumerate((10.0, 30.0)):
        assert append_run(good_row(f"r{i}", f"2026-05-0{i + 1}T00:00:00Z", seconds), log)
    return log


def row_text(**changes: object) -> str:
    row = good_row("bad", "2026-05-03T00:00:00Z", 1000.0)
    row.update(changes)
    return json.dumps(row)


# name -> how to corrupt the log directory (two good rows are already there, in 2026-05)
CASES: dict[str, Callable[[Path], None]] = {
    "schema_version as a string": lambda d: write_lines(
        d / "2026-05.jsonl", [row_text(schema_version="1")]
    ),
    "schema_version 1.0": lambda d: write_lines(
        d / "2026-05.jsonl", [row_text().replace('"schema_version": 1', '"schema_version": 1.0')]
    ),
    "schema_version true": lambda d: write_lines(
        d / "2026-05.jsonl", [row_text(schema_version=True)]
    ),
    "schema_version 2": lambda d: write_lines(d / "2026-05.jsonl", [row_text(schema_version=2)]),
    "no schema_version": lambda d: write_lines(
        d / "2026-05.jsonl",
        [json.dumps({k: v for k, v in json.loads(row_text()).items() if k != "schema_version"})],
    ),
    "truncated line": lambda d: write_lines(d / "2026-05.jsonl", [row_text()[:40].encode()]),
    "garbage line": lambda d: write_lines(d / "2026-05.jsonl", ["{not json"]),
    "JSON array line": lambda d: write_lines(d / "2026-05.jsonl", ["[1, 2, 3]"]),
    "object without a known key": lambda d: write_lines(d / "2026-05.jsonl", ['{"x": 1}']),
    "NaN total": lambda d: write_lines(
        d / "2026-05.jsonl", [row_text().replace('"total_time_s": 1000.0', '"total_time_s": NaN')]
    ),
    "total_time_s as a string": lambda d: write_lines(
        d / "2026-05.jsonl", [row_text(total_time_s="1000")]
    ),
    "workflow_id as a number": lambda d: write_lines(
        d / "2026-05.jsonl", [row_text(workflow_id=5)]
    ),
    "blank lines": lambda d: write_lines(d / "2026-05.jsonl", ["", "   "]),
    "unparsable finished_at": lambda d: write_lines(
        d / "2026-05.jsonl", [row_text(finished_at="yesterday")]
    ),
    "year 9999 shard": lambda d: write_lines(
        d / "9999-12.jsonl", [json.dumps(good_row("r9", "9999-12-31T00:00:00Z", 50.0))]
    ),
    "stray 0000-01.jsonl": lambda d: write_lines(d / "0000-01.jsonl", [row_text()]),
    "month 13": lambda d: write_lines(d / "2026-13.jsonl", [row_text()]),
    "line over 32 MB": lambda d: write_lines(
        d / "2026-05.jsonl",
        [json.dumps(good_row("big", "2026-05-04T00:00:00Z", 20.0, note="x" * (33 << 20)))],
    ),
    "subset run": lambda d: write_lines(
        d / "2026-05.jsonl",
        [json.dumps(good_row("sub", "2026-05-04T00:00:00Z", 500.0, subset=True))],
    ),
    "not a Parquet file": lambda d: (d / "2026-04.parquet").write_bytes(b"PAR1 but not really"),
    "unreadable shard": lambda d: os.symlink("/proc/self/mem", d / "2026-04.jsonl"),
}


def outcome(engine: str, log: Path, question: str) -> tuple[str, object]:
    """What ``engine`` answers to ``question``: ``("ok", figures)`` or ``("error", type)``."""
    try:
        if question == "stats":
            result = compute_stats(log, WF, engine=engine, last=0, status="")
            figures = {k: (s.count, s.p50, s.p95, s.p99) for k, s in result.buckets.items()}
            return "ok", (result.run_count, figures, result.report.skipped)
        if question == "compare":
            now = datetime(2026, 5, 5, tzinfo=UTC)
            cmp = compare_windows(log, WF, recent="2d", baseline="30d", now=now, engine=engine)
            return "ok", [(c.bucket, c.p50_change_pct, c.regressed) for c in cmp.changes]
        workflows = list_workflows(log, engine=engine)
        return "ok", [(w.workflow_id, w.runs, w.succeeded, w.failed) for w in workflows]
    except MantaError as exc:
        return "error", type(exc).__name__
    # any other exception is a traceback for the user: let it fail the test


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("question", ["stats", "workflows"])
def test_both_engines_follow_one_rule(tmp_path: Path, case: str, question: str) -> None:
    log = base_log(tmp_path)
    CASES[case](log)
    answers = {engine: outcome(engine, log, question) for engine in ENGINES}
    assert answers["python"] == answers["duckdb"], f"{case}: {answers}"


@pytest.mark.parametrize(
    ("case", "runs", "skipped"),
    [
        ("schema_version as a string", 2, 1),
        ("schema_version 1.0", 2, 1),
        ("schema_version true", 2, 1),
        ("truncated line", 2, 1),
        ("object without a known key", 2, 1),
        ("NaN total", 3, 0),  # a run; its non-finite total is left out of that bucket
        ("blank lines", 2, 0),
        ("year 9999 shard", 3, 0),
        ("stray 0000-01.jsonl", 2, 0),
        ("line over 32 MB", 3, 0),
        ("subset run", 2, 0),  # left out of stats by default
    ],
)
def test_each_case_counts_what_it_should(
    tmp_path: Path, case: str, runs: int, skipped: int
) -> None:
    log = base_log(tmp_path)
    CASES[case](log)
    for engine in ENGINES:
        result = compute_stats(log, WF, engine=engine, last=0, status="")
        assert (result.run_count, result.report.skipped) == (runs, skipped), engine


@pytest.mark.parametrize("case", ["not a Parquet file", "unreadable shard"])
def test_an_unreadable_shard_is_one_error_naming_it(tmp_path: Path, case: str) -> None:
    log = base_log(tmp_path)
    CASES[case](log)
    name = "2026-04.parquet" if "Parquet" in case else "2026-04.jsonl"
    for engine in ENGINES:
        with pytest.raises(ConfigError) as excinfo:
            compute_stats(log, WF, engine=engine, last=0)
        assert f"runs log shard {log / name} cannot be read" in str(excinfo.value)
    if "Parquet" in case:
        assert "not a Parquet file" in str(excinfo.value)


def test_subset_runs_are_counted_only_when_asked(tmp_path: Path) -> None:
    log = base_log(tmp_path)
    CASES["subset run"](log)
    for engine in ENGINES:
        default = compute_stats(log, WF, engine=engine, last=0)
        included = compute_stats(log, WF, engine=engine, last=0, include_subset=True)
        assert (default.run_count, included.run_count) == (2, 3)
        assert included.buckets["total_time_s"].p99 > default.buckets["total_time_s"].p99


def test_a_mostly_failed_computation_has_its_own_status(tmp_path: Path) -> None:
    log = base_log(tmp_path)
    status = run_status(error=False, traces_total=100, traces_failed=80)
    assert status == "mostly_failed"
    assert run_status(error=False, traces_total=100, traces_failed=50) == "succeeded"
    assert run_status(error=True, traces_total=100, traces_failed=0) == "failed"
    row = good_row("mf", "2026-05-04T00:00:00Z", 7.0, traces_total=100, traces_failed=80)
    row["status"] = status
    assert append_run(row, log)
    written = json.loads((log / "2026-05.jsonl").read_text().splitlines()[-1])
    assert (written["status"], written["traces_total"], written["traces_failed"]) == (
        "mostly_failed",
        100,
        80,
    )
    for engine in ENGINES:
        # not among the succeeded runs that stats reports by default...
        assert compute_stats(log, WF, engine=engine, last=0).run_count == 2
        # ...and reported on its own
        only = compute_stats(log, WF, engine=engine, last=0, status="mostly_failed")
        assert only.run_count == 1


def test_the_writer_rejects_inconsistent_counts(tmp_path: Path) -> None:
    log = tmp_path / "runs_log"
    assert not append_run(
        good_row("x", "2026-05-01T00:00:00Z", 1.0, traces_failed=3, traces_total=2), log
    )
    assert not append_run(good_row("x", "2026-05-01T00:00:00Z", 1.0, subset="yes"), log)
    assert not log.exists() or not any(log.iterdir())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["stats", WF, "--since", "99999999d"], "--since 99999999d is too long"),
        (["stats", WF, "--since", "9999999999999d"], "--since '9999999999999d' is too long"),
        (["compare", WF, "--baseline", "3000000d"], "--baseline 3000000d is too long"),
        (["compare", WF, "--recent", "800000d"], "--recent 800000d is too long"),
        (["compare", WF, "--threshold", "nan", "--fail-on-regression"], "--threshold nan"),
        (["compare", WF, "--threshold", "inf", "--fail-on-regression"], "--threshold inf"),
    ],
)
def test_out_of_range_windows_and_thresholds_are_one_line_errors(
    tmp_path: Path, args: list[str], message: str
) -> None:
    log = base_log(tmp_path)
    app = typer.Typer()
    runs_commands.register(app)
    result = CliRunner().invoke(app, ["runs", *args, "--log-dir", str(log)])
    assert result.exit_code != 0
    assert isinstance(result.exception, QueryError), result.exception
    assert message in str(result.exception)


def test_a_nan_threshold_never_hides_a_regression(tmp_path: Path) -> None:
    log = base_log(tmp_path)
    now = datetime(2026, 5, 20, tzinfo=UTC)
    assert append_run(good_row("slow", "2026-05-19T00:00:00Z", 600.0), log)
    for threshold in (math.nan, math.inf, -1.0):
        with pytest.raises(QueryError, match="must be a finite percentage"):
            compare_windows(log, WF, recent="7d", baseline="30d", threshold_pct=threshold, now=now)
    result = compare_windows(log, WF, recent="7d", baseline="30d", now=now)
    assert "total_time_s" in [c.bucket for c in result.regressions]
