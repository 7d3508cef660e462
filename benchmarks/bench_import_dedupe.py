"""Cost of idempotent batch writes: an import that never stores a row twice, even after a
crash between a batch's span and trace inserts, against plain inserts.

    .venv/bin/python benchmarks/bench_import_dedupe.py [--traces 10000] [--background 20000]

The store first holds a background run of ``--background`` demo traces (about 20 spans each),
so the look-ups search a table that is not empty. Then ``--traces`` demo traces of another run
are written in batches of ``--batch-size``: (a) plain inserts (spans, then traces), (b)
``write_trace_batch``, which first looks up the batch's stored traces and the stored spans of
the others (two queries per batch) and inserts only what is missing. (a) and (b) alternate
``--repeat`` times (in alternating order) on fresh trace ids and each keeps its best time; the
ratio b/a is the price of never showing a duplicate span.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._data import bench_settings, ensure_run  # noqa: E402
from manta_lib.demo import DemoBatch, generate_demo  # noqa: E402
from manta_lib.store import Store  # noqa: E402
from manta_lib.store.trace_writes import write_trace_batch  # noqa: E402

WORK_RUN = "run_grpo_code_v1"


def renamed(batches: list[DemoBatch], suffix: str) -> list[DemoBatch]:
    """The same rows with fresh trace and span ids (so each repetition writes new rows)."""

    def ids(values: Sequence[Any]) -> list[str]:
        return [f"{value}{suffix}" for value in values]

    out = []
    for batch in batches:
        traces = {**batch.traces, "trace_id": ids(batch.traces["trace_id"])}
        spans = {
            **batch.spans,
            "trace_id": ids(batch.spans["trace_id"]),
            "span_id": ids(batch.spans["span_id"]),
        }
        out.append(DemoBatch(traces, spans))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--traces", type=int, default=10_000)
    parser.add_argument("--background", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=5_000)
    parser.add_argument("--repeat", type=int, default=3, help="alternations of (a) and (b)")
    args = parser.parse_args()

    with Store.open(bench_settings("import_dedupe")) as store:
        background, background_spans = ensure_run(store, args.background)
        store.command("DELETE FROM {db}.spans WHERE run_id = {r:String}", {"r": WORK_RUN})
        store.command("DELETE FROM {db}.traces WHERE run_id = {r:String}", {"r": WORK_RUN})
        print(f"background: {background:,} traces, {background_spans:,} spans")
        work = list(
            generate_demo(traces=args.traces, seed=5, runs=[WORK_RUN], batch_traces=args.batch_size)
        )
        spans = sum(batch.span_count for batch in work)
        print(f"workload: {args.traces:,} traces, {spans:,} spans in {len(work)} batches")

        best = {"a": float("inf"), "b": float("inf")}
        for rep in range(args.repeat):
            # Alternate the order: each write leaves background merges behind that slow down
            # whatever runs next.
            for mode in ("a", "b") if rep % 2 == 0 else ("b", "a"):
                batches = renamed(work, f"_{rep}{mode}")
                started = time.perf_counter()
                for batch in batches:
                    write_trace_batch(store, batch.traces, batch.spans, check_stored=mode == "b")
                best[mode] = min(best[mode], time.perf_counter() - started)

        # The case the look-ups exist for: the same batches again (after a crash or a re-run).
        again = renamed(work, f"_{args.repeat - 1}b")
        started = time.perf_counter()
        skipped = sum(write_trace_batch(store, b.traces, b.spans).traces_present for b in again)
        rerun = time.perf_counter() - started
        stored = store.rows(
            "SELECT count(), uniqExact(trace_id, span_id) FROM {db}.spans "
            "WHERE run_id = {r:String}",
            {"r": WORK_RUN},
        )[0]

    rate = spans / best["a"]
    print(f"(a) plain inserts:          {best['a']:.3f} s  ({rate:,.0f} spans/s)")
    print(f"(b) idempotent batches:     {best['b']:.3f} s  ({spans / best['b']:,.0f} spans/s)")
    print(
        f"b/a = {best['b'] / best['a']:.2f}  (cost of the look-ups: {best['b'] - best['a']:+.3f} s)"
    )
    print(f"re-writing the last (b) workload: {rerun:.3f} s, {skipped:,} traces skipped")
    print(f"spans of {WORK_RUN}: {stored[0]:,} rows, {stored[1]:,} distinct (no duplicates)")


if __name__ == "__main__":
    main()
