"""Benchmark ``mantis runs stats``: I/O floor vs the pure-Python and DuckDB engines.

Generates a runs log (default 1M rows, ~550 MB, 9 buckets, 10 workflows, 12 monthly shards
ending now) under ``benchmarks/.data/`` (gitignored, reused between runs), then prints in one
run: the ``cat``-to-/dev/null time of the shard files (the I/O floor, warm page cache), and
both engines for one workflow with default flags, with ``--status ''``, and over the whole
history (``--last 0 --status ''``, every shard read). Ratios and the targets (DuckDB at most
3x the floor + 1 s, at least 4x faster than pure Python) are printed side by side.

    .venv/bin/python benchmarks/bench_runs_stats.py            # 1M rows
    .venv/bin/python benchmarks/bench_runs_stats.py --rows 50000
    .venv/bin/python benchmarks/bench_runs_stats.py --rows 10000000 --compact

Rows are generated with ``make_run_row``/``serialise_row`` and written in bulk (one write per
shard, not one fsync per row). Above 2M rows a string template writes the same line shape
(checked against ``serialise_row`` on the first row) so that 10M rows take about two minutes.
``--compact`` runs ``mantis runs compact`` on a copy of the log first (closed months to
Parquet, the current month stays JSONL) and times the queries on that; the pure-Python full
scan is skipped above 2M rows (minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from manta_lib.runs_log import StatsResult, compute_stats, make_run_row, shard_name  # noqa: E402
from manta_lib.runs_log.compact import compact  # noqa: E402
from manta_lib.runs_log.writer import serialise_row  # noqa: E402

BUCKETS = (
    "think",
    "claude_extract",
    "settle",
    "claude_ground",
    "perceive",
    "load",
    "act",
    "claude_verify",
    "overhead",
)
MEANS = (92.0, 67.0, 28.0, 18.0, 11.0, 10.0, 6.0, 4.0, 2.0)
WORKFLOWS = tuple(f"default__workflow-{i:02d}-v1" for i in range(10))
DATA_ROOT = Path(__file__).resolve().parent / ".data"


FAST_ROWS = 2_000_000
"""Above this many rows the generator formats lines with a template instead of the writer."""


def _fast_line(
    rng: random.Random, i: int, finished: datetime, breakdown: dict[str, float], total: float
) -> bytes:
    """One serialised row, the same bytes ``serialise_row(make_run_row(...))`` writes."""
    created = finished - timedelta(seconds=total)
    created_text = created.replace(tzinfo=None).isoformat(
        timespec="seconds" if created.microsecond == 0 else "microseconds"
    )
    return (
        f'{{"schema_version":1,"run_id":"{finished:%Y%m%d_%H%M%S}_{i:08x}",'
        f'"tenant_id":"default","profile_id":"default__alice-prod",'
        f'"workflow_id":"{WORKFLOWS[rng.randrange(len(WORKFLOWS))]}",'
        f'"plan_signature":"{rng.getrandbits(48):012x}","model":"Hcompany/Holo3-35B-A3B",'
        f'"status":"{"failed" if rng.random() < 0.1 else "succeeded"}",'
        f'"created_at":"{created_text}Z","finished_at":"{finished:%Y-%m-%dT%H:%M:%S}Z",'
        f'"total_time_s":{total!r},'
        f'"wall_time_breakdown":{json.dumps(breakdown, separators=(",", ":"))},'
        f'"cost_breakdown":{{"llm_usd":{round(rng.uniform(0, 2), 4)!r}}},'
        f'"steps_executed":{rng.randrange(1, 30)},"viable":{rng.randrange(0, 5)},"error":null}}\n'
    ).encode()


def generate(log_dir: Path, rows: int, months: int = 12, seed: int = 362) -> None:
    """Write ``rows`` runs spread uniformly over the last ``months`` * 30.5 days."""
    rng = random.Random(seed)
    now = datetime.now(UTC).replace(microsecond=0)
    span_s = int(months * 30.5 * 86400)
    offsets = sorted((rng.randrange(span_s) for _ in range(rows)), reverse=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    for old in log_dir.glob("*.jsonl"):
        old.unlink()
    buffers: dict[str, list[bytes]] = {}
    for i, offset in enumerate(offsets):
        finished = now - timedelta(seconds=offset)
        breakdown = {
            b: round(rng.expovariate(1 / m), 2) for b, m in zip(BUCKETS, MEANS, strict=True)
        }
        total = round(sum(breakdown.values()) + rng.uniform(0, 5), 3)
        if rows > FAST_ROWS and i > 0:
            name = shard_name(finished)
            if name not in buffers:
                _flush(log_dir, buffers)
            buffers.setdefault(name, []).append(_fast_line(rng, i, finished, breakdown, total))
            continue
        state = rng.getstate()
        row = make_run_row(
            run_id=f"{finished:%Y%m%d_%H%M%S}_{i:08x}",
            tenant_id="default",
            profile_id="default__alice-prod",
            workflow_id=WORKFLOWS[rng.randrange(len(WORKFLOWS))],
            plan_signature=f"{rng.getrandbits(48):012x}",
            model="Hcompany/Holo3-35B-A3B",
            status="failed" if rng.random() < 0.1 else "succeeded",
            created_at=finished - timedelta(seconds=total),
            finished_at=finished,
            wall_time_breakdown=breakdown,
            cost_breakdown={"llm_usd": round(rng.uniform(0, 2), 4)},
            steps_executed=rng.randrange(1, 30),
            viable=rng.randrange(0, 5),
        )
        line = serialise_row(row)
        if rows > FAST_ROWS:  # the template must write what the writer writes
            after = rng.getstate()
            rng.setstate(state)
            assert _fast_line(rng, i, finished, breakdown, total) == line, line
            rng.setstate(after)
        buffers.setdefault(shard_name(finished), []).append(line)
    _flush(log_dir, buffers)
    (log_dir / ".rows").write_text(str(rows))


def _flush(log_dir: Path, buffers: dict[str, list[bytes]]) -> None:
    """Append the buffered lines to their shards and empty the buffers."""
    for name, lines in buffers.items():
        with (log_dir / name).open("ab") as handle:
            handle.write(b"".join(lines))
    buffers.clear()


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """Median wall time of ``repeat`` calls and the last result."""
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def cat_floor(files: list[Path], repeat: int) -> float:
    """``cat files > /dev/null`` wall time (median), after one warming pass."""
    cmd = ["cat", *map(str, files)]
    subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True)
    seconds, _ = timed(lambda: subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True), repeat)
    return seconds


def compacted_copy(log_dir: Path, rows: int) -> Path:
    """A copy of ``log_dir`` with its closed months compacted (reused between runs)."""
    target = DATA_ROOT / f"runs_log_{rows}_compacted"
    marker = target / ".rows"
    if marker.exists() and marker.read_text() == (log_dir / ".rows").read_text():
        return target
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(log_dir, target)
    start = time.perf_counter()
    done = compact(target)
    jsonl = sum(m.jsonl_bytes for m in done)
    parquet = sum(m.parquet_bytes for m in done)
    print(
        f"compacted {len(done)} closed months in {time.perf_counter() - start:.1f} s: "
        f"{jsonl / 1e6:.0f} MB JSONL -> {parquet / 1e6:.0f} MB Parquet"
    )
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows to generate")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measure (median)")
    parser.add_argument("--regenerate", action="store_true", help="rewrite the log")
    parser.add_argument(
        "--compact", action="store_true", help="compact closed months to Parquet first"
    )
    args = parser.parse_args()

    log_dir = DATA_ROOT / f"runs_log_{args.rows}"
    marker = log_dir / ".rows"
    if args.regenerate or not marker.exists() or marker.read_text() != str(args.rows):
        start = time.perf_counter()
        generate(log_dir, args.rows)
        print(f"generated {args.rows:,} rows in {time.perf_counter() - start:.1f} s")
    if args.compact:
        log_dir = compacted_copy(log_dir, args.rows)
    files = sorted(
        (f for f in log_dir.iterdir() if f.suffix in (".jsonl", ".parquet")), reverse=True
    )
    size = sum(f.stat().st_size for f in files)
    kinds = "shards" if not args.compact else "shards (closed months in Parquet)"
    print(
        f"log: {log_dir} - {args.rows:,} rows, {size / 1e6:.0f} MB in {len(files)} {kinds}, "
        f"{len(BUCKETS)} buckets, {len(WORKFLOWS)} workflows; {os.cpu_count()} CPUs"
    )
    floor_all = cat_floor(files, args.repeat)
    floor_newest = cat_floor(files[:1], args.repeat)
    print(
        f"I/O floor (cat > /dev/null, warm): all shards {floor_all:.3f} s, newest shard "
        f"{floor_newest:.3f} s"
    )

    workflow = WORKFLOWS[3]
    cases: list[tuple[str, dict[str, Any]]] = [
        ("default flags (--last 100)", {}),
        ("--status ''", {"status": ""}),
        ("--last 0 --status '' (all shards)", {"last": 0, "status": ""}),
    ]
    print(f"\nmantis runs stats {workflow} (in-process, median of {args.repeat}):")
    header = f"{'query':<36}{'python':>9}{'duckdb':>9}{'py/duck':>9}{'duck/floor':>12}  targets"
    print(header)
    all_ok = True
    for label, kwargs in cases:
        results: dict[str, StatsResult] = {}
        seconds: dict[str, float] = {}
        for engine in ("python", "duckdb"):
            full = kwargs.get("last") == 0
            if engine == "python" and full and args.rows > FAST_ROWS:
                continue  # minutes of json.loads; the tests check the engines agree
            repeat = 1 if engine == "python" and full else args.repeat

            def run(engine: str = engine, kwargs: dict[str, Any] = kwargs) -> StatsResult:
                return compute_stats(log_dir, workflow, engine=engine, **kwargs)

            seconds[engine], results[engine] = timed(run, repeat)
        duck = seconds["duckdb"]
        vs_floor = duck / floor_all
        if "python" in results:
            same = (
                results["python"].buckets == results["duckdb"].buckets
                and results["python"].run_count == results["duckdb"].run_count
            )
            speedup = seconds["python"] / duck
            meets = duck <= 3 * floor_all + 1.0 and speedup >= 4.0
            python_cell, ratio_cell = f"{seconds['python']:>8.3f}s", f"{speedup:>8.1f}x"
        else:
            same, meets = True, duck <= 3 * floor_all + 1.0
            python_cell, ratio_cell = f"{'skipped':>9}", f"{'-':>9}"
        all_ok &= same
        print(
            f"{label:<36}{python_cell}{duck:>8.3f}s{ratio_cell}"
            f"{vs_floor:>11.1f}x  {'met' if meets else 'MISSED'}"
            f"{'' if same else ' (ENGINES DISAGREE)'}; {results['duckdb'].run_count} runs, "
            f"{results['duckdb'].report.shards_read} shard(s) read"
        )
    print(
        "\ntargets: duckdb <= 3 x I/O floor (all shards) + 1 s and python/duckdb >= 4x; "
        f"engines agree on every query compared: {'yes' if all_ok else 'NO'}"
    )


if __name__ == "__main__":
    main()
