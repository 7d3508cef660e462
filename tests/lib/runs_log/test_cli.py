"""``mantis runs stats | compare | workflows``: the documented output and every flag."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from manta_lib.errors import ConfigError, QueryError
from manta_lib.runs_log import append_run, make_run_row
from tests.lib.runs_log.helpers import SEED_OUTPUT, SEED_TABLE, SEED_WORKFLOW, invoke, ok


@pytest.mark.parametrize("engine", ["python", "duckdb", "auto"])
def test_stats_reproduces_the_seed_example(seed_log: Path, engine: str) -> None:
    assert ok("stats", SEED_WORKFLOW, "--engine", engine) == SEED_OUTPUT


def test_stats_log_dir_flag_wins_over_the_environment(
    seed_log: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MANTA_RUNS_LOG_DIR", str(tmp_path / "elsewhere"))
    assert ok("stats", SEED_WORKFLOW, "--log-dir", str(seed_log)) == SEED_OUTPUT


def test_stats_json_has_the_seed_shape(seed_log: Path) -> None:
    payload = json.loads(ok("stats", SEED_WORKFLOW, "--json", "--bucket", "think"))
    assert payload == {
        "workflow_id": SEED_WORKFLOW,
        "run_count": 100,
        "percentiles": {
            "think": {"p50": 92.0, "p95": 145.0, "p99": 201.0, "count": 100},
            "total_time_s": {"p50": 238.0, "p95": 383.0, "p99": 478.0, "count": 100},
        },
    }


def test_stats_repeated_bucket_keeps_total_time_last(seed_log: Path) -> None:
    out = ok("stats", SEED_WORKFLOW, "--bucket", "overhead", "--bucket", "think")
    assert out.splitlines()[3:] == [
        "  think                    92.0s    145.0s    201.0s",
        "  overhead                  2.0s      4.0s      5.0s",
        "  ──────────────────────────────────────────────────",
        "  total_time_s            238.0s    383.0s    478.0s",
    ]


def test_stats_last_status_and_since(seed_log: Path) -> None:
    # 100 newest succeeded runs every 6 hours, 30 older ones with 9999 s buckets, 20 failed.
    assert ok("stats", SEED_WORKFLOW, "--last", "130").startswith(
        f"Across last 130 succeeded runs of {SEED_WORKFLOW}:"
    )
    payload = json.loads(ok("stats", SEED_WORKFLOW, "--last", "0", "--json"))
    assert payload["run_count"] == 130 and payload["percentiles"]["think"]["p99"] == 9999.0
    failed = ok("stats", SEED_WORKFLOW, "--status", "failed")
    assert failed.startswith(f"Across last 20 failed runs of {SEED_WORKFLOW}:")
    every = ok("stats", SEED_WORKFLOW, "--status", "", "--last", "500")
    assert every.startswith(f"Across last 150 terminal runs of {SEED_WORKFLOW}:")
    day = json.loads(ok("stats", SEED_WORKFLOW, "--since", "1d", "--json"))
    assert day["run_count"] == 4  # finished 0, 6, 12 and 18 hours ago
    assert json.loads(ok("stats", SEED_WORKFLOW, "--since", "30m", "--json"))["run_count"] == 1


def test_stats_errors_are_clear(seed_log: Path, tmp_path: Path) -> None:
    bad_since = invoke("stats", SEED_WORKFLOW, "--since", "7days")
    assert isinstance(bad_since.exception, QueryError)
    assert "use a positive whole number followed by d (days), h (hours) or m (minutes)" in str(
        bad_since.exception
    )
    unknown = invoke("stats", "default__marketplace-listing-v1")
    assert isinstance(unknown.exception, QueryError)
    assert "closest workflow ids: default__marketplace-listings-v1" in str(unknown.exception)
    missing = invoke("stats", SEED_WORKFLOW, "--log-dir", str(tmp_path / "nope"))
    assert isinstance(missing.exception, ConfigError)
    # One unknown bucket among known ones: the refusal names it, the one found, a close match
    # and every bucket the runs have, so the next command is obvious.
    mixed = invoke("stats", SEED_WORKFLOW, "--bucket", "think", "--bucket", "thinks")
    assert isinstance(mixed.exception, QueryError) and mixed.exit_code != 0
    message = str(mixed.exception)
    assert "bucket(s) thinks not found" in message and "(did you mean: think)" in message
    assert "; found: think;" in message
    assert f"available buckets: {', '.join(sorted(SEED_TABLE))}" in message
    assert f"runs log directory {tmp_path / 'nope'} does not exist" in str(missing.exception)


def test_workflows_lists_ids_with_counts_and_last_finished_at(log_dir: Path) -> None:
    for i, (workflow_id, status) in enumerate(
        [("wf-a", "succeeded"), ("wf-a", "failed"), ("wf-b", "succeeded")]
    ):
        finished = datetime(2026, 5, 13, 18, i, tzinfo=UTC)
        assert append_run(
            make_run_row(
                run_id=f"r{i}",
                workflow_id=workflow_id,
                status=status,
                created_at=finished - timedelta(seconds=5),
                finished_at=finished,
                wall_time_breakdown={"think": 5.0},
            ),
            log_dir,
        )
    assert ok("workflows") == (
        "workflow_id      runs  succeeded  failed  last finished_at\n"
        "wf-b                1          1       0  2026-05-13T18:02:00Z\n"
        "wf-a                2          1       1  2026-05-13T18:01:00Z\n"
    )
    assert json.loads(ok("workflows", "--json", "--engine", "duckdb"))[0] == {
        "workflow_id": "wf-a",
        "runs": 2,
        "succeeded": 1,
        "failed": 1,
        "last_finished_at": "2026-05-13T18:01:00Z",
    }


def regressed_log(log_dir: Path) -> None:
    now = datetime.now(UTC)
    for i in range(12):
        for run_id, finished, think in (
            (f"base{i}", now - timedelta(days=10 + i), 10.0),
            (f"new{i}", now - timedelta(hours=2 + i), 30.0),
        ):
            assert append_run(
                make_run_row(
                    run_id=run_id,
                    workflow_id="wf",
                    status="succeeded",
                    created_at=finished - timedelta(seconds=think + 4),
                    finished_at=finished,
                    wall_time_breakdown={"think": think, "act": 4.0},
                ),
                log_dir,
            )


def test_compare_prints_both_windows_and_flags_regressions(log_dir: Path) -> None:
    regressed_log(log_dir)
    out = ok("compare", "wf")
    lines = out.splitlines()
    assert lines[0].startswith("Succeeded runs of wf: 12 recent (since ")
    assert lines[1] == (
        "  bucket                p50 base   p50 now      Δp50  p95 base   p95 now      Δp95"
    )
    assert lines[3] == (
        "  think                    10.0s     30.0s   +200.0%     10.0s     30.0s   +200.0%"
        "  REGRESSED"
    )
    assert lines[4] == (
        "  act                       4.0s      4.0s     +0.0%      4.0s      4.0s     +0.0%"
    )
    assert lines[-1] == ("2 bucket(s) regressed by more than 20% (p50 or p95): think, total_time_s")
    payload = json.loads(ok("compare", "wf", "--json", "--recent", "1d", "--baseline", "30d"))
    assert payload["regressed"] == ["think", "total_time_s"]
    assert payload["buckets"]["think"]["p50_change_pct"] == 200.0


def test_compare_fail_on_regression_exits_1_for_ci(log_dir: Path) -> None:
    regressed_log(log_dir)
    assert invoke("compare", "wf", "--fail-on-regression").exit_code == 1
    calm = invoke("compare", "wf", "--fail-on-regression", "--threshold", "250")
    assert calm.exit_code == 0
    assert "No bucket regressed by more than 250% (p50 or p95)." in calm.output


def test_manta_and_mantis_are_the_same_command() -> None:
    scripts = {ep.name: ep.value for ep in entry_points(group="console_scripts")}
    assert scripts["manta"] == scripts["mantis"] == "manta_lib.cli:main"


def test_main_prints_errors_without_a_traceback(seed_log: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from manta_lib.cli import main; main()",
            "runs",
            "stats",
            "no-such-workflow",
            "--log-dir",
            str(seed_log),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "error: no runs of workflow 'no-such-workflow'" in proc.stderr
    assert "Traceback" not in proc.stderr
