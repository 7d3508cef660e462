"""MapReduceComputation throughput and memory against the raw span-streaming ceiling.

    .venv/bin/python benchmarks/bench_mapreduce.py [--scales 1000000 3000000]

For each scale a first child process seeds (or reuses) one demo run of N traces (~20 spans
each; seeding is not part of the measured run, so it has a process of its own), then a second
child measures the raw clickhouse-connect span streaming ceiling (every span as a row tuple), then
runs a trivial map with datapoint/step/run reduces, persistence on, from scratch
(entity_metadata truncated), and reports traces/s, the ratio to the ceiling (target >= 60%),
and its peak RSS next to the RSS of the open store before the run (target: peak < 1 GB, and
the same at 3M as at 1M within 10%: a persisted run keeps no per-trace outputs).
"columns tr/s" is a second reference, stricter than the row tuples: the same spans read as
column blocks (one list per column, no row tuples built), which is how the pipeline's own
span stream reads them; "vs columns" is the pipeline's rate against it. The target is set on
"ratio" (row tuples, Python objects a user would iterate).
With ``--repeat N`` the ceiling and the pipeline alternate N times in the child and each keeps
its best time (single timings vary by +-30% on a shared 2-core machine); peak RSS is the
child's maximum over all repetitions, printed with the phase it was reached in (seed,
ceiling, or the pipeline's plan/map/reduce/result, sampled every 50 ms from the call stack),
and the peak sampled while the pipeline itself ran ("run peak"). "anon peak" is the largest
anonymous RSS sampled (RSS minus resident file-backed pages, mostly the embedded engine's
library code): the memory the process itself holds.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pydantic import BaseModel  # noqa: E402

from benchmarks._data import BENCH_RUN, bench_settings, ensure_run  # noqa: E402
from benchmarks._memory import PeakRss  # noqa: E402
from manta_lib import EntityLevel, EntityRef, MapReduceComputation, TraceContext  # noqa: E402
from manta_lib.models import SPAN_COLUMNS  # noqa: E402
from manta_lib.store import Store  # noqa: E402
from manta_lib.store.trace_queries import NO_IN_ORDER_BUFFERING  # noqa: E402


class TraceStat(BaseModel):
    tool_errors: int
    score: float | None


class GroupStat(BaseModel):
    rollouts: int
    mean_score: float


def map_trace(trace: TraceContext) -> TraceStat:
    return TraceStat(tool_errors=trace.tool_error_count, score=trace.score)


def reduce_mean(entity: EntityRef, children: list[BaseModel]) -> GroupStat:
    scores = [getattr(c, "score", None) or getattr(c, "mean_score", 0.0) or 0.0 for c in children]
    return GroupStat(rollouts=len(children), mean_score=sum(scores) / max(len(scores), 1))


pipeline = (
    MapReduceComputation("Bench trivial", project_id="prj_bench")
    .add_level(EntityLevel.TRACE, map_trace, TraceStat)
    .add_level(EntityLevel.DATAPOINT, reduce_mean, GroupStat)
    .add_level(EntityLevel.STEP, reduce_mean, GroupStat)
    .add_level(EntityLevel.RUN, reduce_mean, GroupStat)
)


def child(traces: int, repeat: int) -> dict[str, Any]:
    with PeakRss() as peak:
        figures = _measure(traces, repeat, peak)
    return {
        **figures,
        "peak_sampled_mb": peak.peak_mb,
        "anon_peak_mb": peak.anon_peak_mb,
        "peak_phase": peak.phase,
        "pipeline_peak_mb": peak.peaks.get("pipeline", 0.0),
    }


def _measure(traces: int, repeat: int, peak: PeakRss) -> dict[str, Any]:
    settings = bench_settings(f"mapreduce_{traces}")
    peak.label("seed")
    with Store.open(settings) as store:
        _, spans = ensure_run(store, traces)
        base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    sql_cols = ", ".join(SPAN_COLUMNS)
    raw_times: list[float] = []
    column_times: list[float] = []
    pipeline_times: list[float] = []
    for _ in range(max(1, repeat)):
        peak.label("ceiling")
        with Store.open(settings) as store:
            store.command("TRUNCATE TABLE {db}.entity_metadata_catalog")
            store.command("TRUNCATE TABLE {db}.entity_metadata")
            # Without per-part chunk buffering, as the pipeline's streams read: it only
            # costs memory (a buffer per part of the table), not speed.
            sql = store.sql(
                f"SELECT {sql_cols} FROM {{db}}.spans WHERE run_id = {{r:String}} "
                f"ORDER BY run_id, trace_id, seq, span_id SETTINGS {NO_IN_ORDER_BUFFERING}"
            )
            # The ceiling is timed warm (second read on an open store), the strictest reference.
            for warm in (False, True):
                started = time.perf_counter()
                with store.client.query_row_block_stream(
                    sql, parameters={"r": BENCH_RUN}
                ) as stream:
                    rows = sum(len(block) for block in stream)
                if warm:
                    raw_times.append(time.perf_counter() - started)
            assert rows == spans
            # The same spans as column blocks (what the pipeline's span stream decodes).
            started = time.perf_counter()
            with store.client.query_column_block_stream(sql, parameters={"r": BENCH_RUN}) as stream:
                rows = sum(len(block[0]) for block in stream)
            column_times.append(time.perf_counter() - started)
            assert rows == spans
        peak.label("pipeline")
        started = time.perf_counter()
        result = pipeline.run(BENCH_RUN, mode="local", settings=settings, progress=False)
        pipeline_times.append(time.perf_counter() - started)
        assert len(result[EntityLevel.TRACE]) == traces
        del result
    return {
        "traces": traces,
        "spans": spans,
        "raw_s": min(raw_times),
        "columns_s": min(column_times),
        "pipeline_s": min(pipeline_times),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "base_rss_mb": base_rss,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scales", type=int, nargs="+", default=[50_000, 200_000])
    parser.add_argument("--repeat", type=int, default=1, help="alternations, best time kept")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--seed-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.repeat)))
        return
    if args.seed_child:
        with Store.open(bench_settings(f"mapreduce_{args.seed_child}")) as store:
            ensure_run(store, args.seed_child)
        return
    print(f"{'traces':>9} {'ceiling tr/s':>13} {'pipeline tr/s':>14} {'ratio':>6} "
          f"{'columns tr/s':>13} {'vs columns':>10} {'pipeline s':>11} {'peak RSS':>9} "
          f"{'store RSS':>10} {'run peak':>9} "
          f"{'anon peak':>10}  peak reached in")  # fmt: skip
    for traces in args.scales:
        seeding = [sys.executable, __file__, "--seed-child", str(traces)]
        print(subprocess.run(seeding, capture_output=True, text=True, check=True).stdout, end="")
        out = (
            subprocess.run(
                [sys.executable, __file__, "--child", str(traces), "--repeat", str(args.repeat)],
                capture_output=True,
                text=True,
                check=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        fig = json.loads(out)
        ceiling = fig["traces"] / fig["raw_s"]
        rate = fig["traces"] / fig["pipeline_s"]
        columns = fig["traces"] / fig["columns_s"]
        print(
            f"{fig['traces']:>9,} {ceiling:>13,.0f} {rate:>14,.0f} {rate / ceiling:>6.0%} "
            f"{columns:>13,.0f} {rate / columns:>10.0%} {fig['pipeline_s']:>11.1f} "
            f"{fig['peak_rss_mb']:>7.0f}MB "
            f"{fig['base_rss_mb']:>8.0f}MB {fig['pipeline_peak_mb']:>7.0f}MB "
            f"{fig['anon_peak_mb']:>8.0f}MB  {fig['peak_phase']} "
            f"({fig['peak_sampled_mb']:.0f}MB sampled)"
        )


if __name__ == "__main__":
    main()
