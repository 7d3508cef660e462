"""MantaService loading speed against the raw driver ceiling and one-query-per-trace.

    .venv/bin/python benchmarks/bench_query.py [--traces 50000] [--sample 500]

Prints, from one process run: (a) raw clickhouse-connect streaming of the run's span rows
(the ceiling), (b) MantaService.iter_trace_batches building TraceContext objects, (c) one
span query per trace on a sample; and the ratios b/a (target >= 40%) and b/c (target >= 50x).
(a) and (b) alternate ``--repeat`` times and each keeps its best time, as ``timeit`` does: on
a shared 2-core machine single timings of the same work vary by +-30%.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._data import BENCH_RUN, bench_settings, ensure_run  # noqa: E402
from manta_lib.models import SPAN_COLUMNS  # noqa: E402
from manta_lib.service import MantaService  # noqa: E402
from manta_lib.store import Store  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--traces", type=int, default=50_000)
    parser.add_argument("--sample", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=2_000)
    parser.add_argument("--repeat", type=int, default=3, help="alternations of (a) and (b)")
    args = parser.parse_args()

    with Store.open(bench_settings("query")) as store:
        traces, spans = ensure_run(store, args.traces)
        print(f"run {BENCH_RUN}: {traces:,} traces, {spans:,} spans ({spans / traces:.1f}/trace)")
        service = MantaService(store)

        sql = store.sql(
            f"SELECT {', '.join(SPAN_COLUMNS)} FROM {{db}}.spans WHERE run_id = {{r:String}} "
            "ORDER BY run_id, trace_id, seq, span_id"
        )

        def raw() -> float:
            """(a) the ceiling: stream the same span rows with the driver, nothing else."""
            started = time.perf_counter()
            rows = 0
            with store.client.query_row_block_stream(sql, parameters={"r": BENCH_RUN}) as stream:
                for block in stream:
                    rows += len(block)
            assert rows == spans
            return time.perf_counter() - started

        def manta() -> float:
            """(b) trace rows + one span query per batch -> TraceContext objects."""
            started = time.perf_counter()
            loaded = errors = 0
            for batch in service.iter_trace_batches(BENCH_RUN, batch_size=args.batch_size):
                loaded += len(batch)
                errors += sum(ctx.tool_error_count for ctx in batch)
            assert loaded == traces
            return time.perf_counter() - started

        raw_times, service_times = [], []
        for _ in range(max(1, args.repeat)):
            raw_times.append(raw())
            service_times.append(manta())
        raw_s, service_s = min(raw_times), min(service_times)

        # (c) one span query per trace, on a sample.
        sample = [t.trace_id for t in service.get_traces(BENCH_RUN, limit=args.sample)]
        started = time.perf_counter()
        for trace_id in sample:
            service.get_spans(trace_id)
        per_trace_s = time.perf_counter() - started

    raw_rate = traces / raw_s
    service_rate = traces / service_s
    per_trace_rate = len(sample) / per_trace_s
    print(
        f"(a) raw span streaming       {raw_rate:>10,.0f} traces/s  ({spans / raw_s:,.0f} rows/s)"
    )
    print(f"(b) MantaService batches     {service_rate:>10,.0f} traces/s  ({service_s:.2f} s)")
    print(f"(c) one query per trace      {per_trace_rate:>10,.0f} traces/s  (sample {len(sample)})")
    print(f"    best of {len(raw_times)}; all runs (s): a {fmt(raw_times)}, b {fmt(service_times)}")
    print(f"b/a = {service_rate / raw_rate:.0%} of the ceiling (target >= 40%)")
    print(
        f"b/c = {service_rate / per_trace_rate:.0f}x faster than per-trace queries (target >= 50x)"
    )


def fmt(times: list[float]) -> str:
    return " ".join(f"{t:.2f}" for t in times)


if __name__ == "__main__":
    main()
