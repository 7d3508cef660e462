"""Benchmark data: one demo run of N traces in its own chDB store (reused when present)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from manta_lib.demo import generate_demo_tables
from manta_lib.gc_pacing import relaxed_gc
from manta_lib.settings import MantaSettings, load_settings
from manta_lib.store import Store

DATA_ROOT = Path(__file__).resolve().parent / ".data"
BENCH_RUN = "run_grpo_math_v1"


def bench_settings(name: str) -> MantaSettings:
    """Settings pointing at ``benchmarks/.data/<name>`` (embedded chDB), ignoring the env."""
    os.environ.pop("CLICKHOUSE_URL", None)
    data_dir = DATA_ROOT / name
    data_dir.mkdir(parents=True, exist_ok=True)
    return load_settings(MANTA_DATA_DIR=str(data_dir), MANTA_DATABASE="bench")


def ensure_run(store: Store, traces: int, *, run_id: str = BENCH_RUN) -> tuple[int, int]:
    """Make sure ``run_id`` holds exactly ``traces`` demo traces; returns (traces, spans)."""
    count = store.rows("SELECT count() FROM {db}.traces WHERE run_id = {r:String}", {"r": run_id})[
        0
    ][0]
    if count != traces:
        store.command("TRUNCATE TABLE {db}.traces")
        store.command("TRUNCATE TABLE {db}.spans")
        store.command("TRUNCATE TABLE {db}.entity_metadata_catalog")
        store.command("TRUNCATE TABLE {db}.entity_metadata")
        started = time.perf_counter()
        with relaxed_gc():
            for trace_table, span_table in generate_demo_tables(
                traces=traces, seed=11, runs=[run_id], batch_traces=10_000
            ):
                store.insert_arrow("spans", span_table)
                store.insert_arrow("traces", trace_table)
        seeded = time.perf_counter()
        store.command("OPTIMIZE TABLE {db}.spans FINAL")
        store.command("OPTIMIZE TABLE {db}.traces FINAL")
        print(
            f"seeded {traces:,} traces in {time.perf_counter() - started:.1f} s "
            f"({traces / (seeded - started):,.0f} traces/s written, then "
            f"{time.perf_counter() - seeded:.1f} s OPTIMIZE FINAL)"
        )
    spans = store.rows("SELECT count() FROM {db}.spans WHERE run_id = {r:String}", {"r": run_id})[
        0
    ][0]
    return traces, int(spans)
