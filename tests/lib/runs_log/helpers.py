"""Helpers of the runs-log tests: a reference workflow, rows, messy logs, the CLI."""

from __future__ import annotations

import atexit
import json
import random
import shutil
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import typer
from typer.testing import CliRunner, Result

from manta_lib.cli import runs_commands
from manta_lib.runs_log import append_run, make_run_row

SEED_WORKFLOW = "default__marketplace-listings-v1"

# bucket -> (p50, p95, p99) of the reference table, in its row order.
SEED_TABLE: dict[str, tuple[float, float, float]] = {
    "think": (92.0, 145.0, 201.0),
    "claude_extract": (67.0, 128.0, 156.0),
    "settle": (28.0, 44.0, 55.0),
    "claude_ground": (18.0, 31.0, 42.0),
    "perceive": (11.0, 18.0, 22.0),
    "load": (10.0, 19.0, 28.0),
    "act": (6.0, 9.0, 12.0),
    "claude_verify": (4.0, 7.0, 9.0),
    "overhead": (2.0, 4.0, 5.0),
}
SEED_TOTAL = (238.0, 383.0, 478.0)

SEED_OUTPUT = """\
Across last 100 succeeded runs of default__marketplace-listings-v1:
  bucket                     p50       p95       p99
  ──────────────────────────────────────────────────
  think                    92.0s    145.0s    201.0s
  claude_extract           67.0s    128.0s    156.0s
  settle                   28.0s     44.0s     55.0s
  claude_ground            18.0s     31.0s     42.0s
  perceive                 11.0s     18.0s     22.0s
  load                     10.0s     19.0s     28.0s
  act                       6.0s      9.0s     12.0s
  claude_verify             4.0s      7.0s      9.0s
  overhead                  2.0s      4.0s      5.0s
  ──────────────────────────────────────────────────
  total_time_s            238.0s    383.0s    478.0s
"""


def hundred_values(p50: float, p95: float, p99: float, rng: random.Random) -> list[float]:
    """100 values whose linear-interpolation p50/p95/p99 are exactly the given ones.

    Sorted ranks 0-50 hold p50 (rank 49.5), 51-97 hold p95 (rank 94.05) and 98-99 hold p99
    (rank 98.01); the list is shuffled so the log is not in value order.
    """
    values = [p50] * 51 + [p95] * 47 + [p99] * 2
    rng.shuffle(values)
    return values


def write_seed_log(log_dir: Path, now: datetime | None = None) -> datetime:
    """Write the reference example: the 100 newest succeeded runs produce the reference table.

    Around them: 30 older succeeded runs and 20 failed runs with much larger values (the
    default flags must ignore both) and another workflow. Returns the newest finished_at.
    """
    rng = random.Random(2)
    now = now or datetime.now(UTC).replace(microsecond=0)
    columns = {name: hundred_values(*pcts, rng) for name, pcts in SEED_TABLE.items()}
    totals = hundred_values(*SEED_TOTAL, rng)
    rows = []
    for i in range(100):  # one run every 6 hours, newest first
        finished = now - timedelta(hours=6 * i)
        rows.append(
            make_run_row(
                run_id=f"20260513_{i:04d}",
                workflow_id=SEED_WORKFLOW,
                status="succeeded",
                created_at=finished - timedelta(seconds=totals[i]),
                finished_at=finished,
                wall_time_breakdown={name: columns[name][i] for name in SEED_TABLE},
                model="Hcompany/Holo3-35B-A3B",
                steps_executed=12,
                viable=3,
            )
        )
    slow = {name: 9999.0 for name in SEED_TABLE}
    for i in range(30):  # older than the 100 newest: cut by --last 100
        finished = now - timedelta(hours=6 * 100 + i)
        rows.append(_row(f"old_{i:04d}", SEED_WORKFLOW, "succeeded", finished, slow))
    for i in range(20):  # failed runs, interleaved with the newest
        finished = now - timedelta(hours=6 * i + 1)
        rows.append(_row(f"fail_{i:04d}", SEED_WORKFLOW, "failed", finished, slow, error="boom"))
    for i in range(15):
        finished = now - timedelta(hours=5 * i)
        rows.append(_row(f"other_{i:04d}", "default__other-v2", "succeeded", finished, slow))
    rng.shuffle(rows)
    for row in rows:
        assert append_run(row, log_dir)
    return now


def _row(
    run_id: str,
    workflow_id: str,
    status: str,
    finished: datetime,
    breakdown: dict[str, float],
    **extra: object,
) -> dict[str, object]:
    return make_run_row(
        run_id=run_id,
        workflow_id=workflow_id,
        status=status,
        created_at=finished - timedelta(seconds=sum(breakdown.values())),
        finished_at=finished,
        wall_time_breakdown=breakdown,
        **extra,
    )


NOW = datetime(2026, 5, 20, 12, 0, 0, tzinfo=UTC)


def add(
    log_dir: Path,
    run_id: str,
    finished: datetime,
    breakdown: dict[str, float],
    *,
    workflow_id: str = "wf",
    status: str = "succeeded",
    total: float | None = None,
) -> None:
    total = sum(breakdown.values()) if total is None else total
    assert append_run(
        make_run_row(
            run_id=run_id,
            workflow_id=workflow_id,
            status=status,
            created_at=finished - timedelta(seconds=total),
            finished_at=finished,
            wall_time_breakdown=breakdown,
        ),
        log_dir,
    )


_MESSY_LOGS: dict[tuple[int, int], Path] = {}


def messy_log(log_dir: Path, rows: int = 1500, seed: int = 7) -> None:
    """Three workflows over four months with ties, missing buckets and bad lines.

    Written once per test process for each ``(rows, seed)`` (1,500 appends take seconds) and
    copied into an empty ``log_dir``; into one already holding shards it is written in place.
    """
    if any(log_dir.iterdir()):
        _write_messy_log(log_dir, rows, seed)
        return
    written = _MESSY_LOGS.get((rows, seed))
    if written is None:
        written = Path(tempfile.mkdtemp(prefix="messy_runs_log_"))
        atexit.register(shutil.rmtree, written, ignore_errors=True)
        _write_messy_log(written, rows, seed)
        _MESSY_LOGS[(rows, seed)] = written
    for shard in written.iterdir():
        shutil.copy2(shard, log_dir / shard.name)


def _write_messy_log(log_dir: Path, rows: int, seed: int) -> None:
    rng = random.Random(seed)
    buckets = ["think", "act", "load", "settle", "claude_verify"]
    for _ in range(rows):
        finished = NOW - timedelta(minutes=rng.randrange(0, 120 * 24 * 60))
        breakdown = {b: round(rng.expovariate(1 / 20), rng.choice([0, 3, 6])) for b in buckets}
        if rng.random() < 0.3:
            del breakdown["claude_verify"]
        add(
            log_dir,
            f"run-{rng.randrange(10**6):06d}",
            finished,
            breakdown,
            workflow_id=rng.choice(["wf-a", "wf-b", "wf-c"]),
            status=rng.choice(["succeeded", "succeeded", "failed"]),
        )
    for shard in sorted(log_dir.iterdir()):
        with shard.open("a") as handle:
            handle.write("{garbage\n\n")
            handle.write(json.dumps({"schema_version": 2, "workflow_id": "wf-a"}) + "\n")
            handle.write('{"schema_version": 1, "workflow_id": "wf-a", "run_')


def invoke(*args: str) -> Result:
    app = typer.Typer()
    runs_commands.register(app)
    return CliRunner().invoke(app, ["runs", *args])


def ok(*args: str) -> str:
    result = invoke(*args)
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output
