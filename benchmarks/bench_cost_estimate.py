"""Pricing imported model calls: the price table's own calculation vs Manta's per-model cache.

``python benchmarks/bench_cost_estimate.py [CALLS]`` prices CALLS calls of a flat-priced model
both ways, checks they agree to the cent's billionth, and prints the per-call times and ratio.
"""

from __future__ import annotations

import sys
import time

from manta_lib.llm.prices import estimate_cost, table_price

MODEL = "gpt-4o-mini-2024-07-18"


def main(calls: int) -> None:
    usages = [(1000 + i, 20 + i % 50) for i in range(calls)]
    table_price(MODEL, 1, 1)  # load the table once
    start = time.perf_counter()
    reference = [float(table_price(MODEL, i, o).total_price) for i, o in usages]
    table_s = time.perf_counter() - start
    start = time.perf_counter()
    cached = [estimate_cost(MODEL, i, o) for i, o in usages]
    cached_s = time.perf_counter() - start
    assert all(abs((c or 0.0) - r) < 1e-12 for c, r in zip(cached, reference, strict=True))
    print(f"{calls} calls of {MODEL}")
    print(f"genai-prices calc_price  {table_s / calls * 1e6:9.1f} us/call")
    print(f"estimate_cost (cached)   {cached_s / calls * 1e6:9.1f} us/call")
    print(f"ratio                    {table_s / cached_s:9.0f}x")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 500)
