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


def _settle_merges(store: Store, *, quiet_s: float = 3.0) -> int:
    """Wait until the engine's background merges of the seeded tables have stopped (none
    running for ``quiet_s``), so that no merge runs beside the measured reads; returns the
    active parts of ``spans``.

    The store is left as the engine's own merges leave it after a large import (a few parts),
    not forced into one part: ``OPTIMIZE FINAL`` of the spans table is one single-threaded
    merge that took longer than a quarter of the whole seed.
    """
    running = "SELECT count() FROM system.merges WHERE database = {d:String}"
    quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < quiet_s:
        time.sleep(0.5)
        if store.rows(running, {"d": store.database})[0][0]:
            quiet_since = time.monotonic()
    parts = store.rows(
        "SELECT count() FROM system.parts WHERE database = {d:String} AND table = 'spans' "
        "AND active",
        {"d": store.database},
    )
    return int(parts[0][0])


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
        parts = _settle_merges(store)
        print(
            f"seeded {traces:,} traces in {time.perf_counter() - started:.1f} s "
            f"({traces / (seeded - started):,.0f} traces/s written, then "
            f"{time.perf_counter() - seeded:.1f} s for the background merges to finish: "
            f"{parts} span parts)"
        )
    spans = store.rows("SELECT count() FROM {db}.spans WHERE run_id = {r:String}", {"r": run_id})[
        0
    ][0]
    return traces, int(spans)
