"""Dagster's overhead: one run materialized through Dagster against ``pipeline.run(mode="local")``.

    .venv/bin/python benchmarks/bench_dagster.py [--traces 20000] [--no-cli]

One demo run of N traces (seeded once into ``benchmarks/.data/dagster``, reused after) and the
``tool_errors`` example pipeline (trace → datapoint → step). Each measurement starts from an
empty ``entity_metadata``, on the same data, in this one invocation:

1. ``pipeline.run(run_id, mode="local")``;
2. Dagster in-process on a SQLite instance (the checked-in ``dagster.yaml``): the trace and
   datapoint levels over all 64 shards as one run (a partition range, single-run backfill
   policy), then the step level for the run, as ``dagster.materialize`` calls;
3. the same two materializations as the documented ``dagster asset materialize`` commands
   (subprocesses: each includes Python and Dagster start-up; the store is closed first),
   after ``manta dagster register-runs`` (timed apart: a one-off step).

Prints the wall times and the ratios. Target: Dagster adds at most 25% plus 6 s of fixed
start-up (``dagster <= 1.25 * local + 6 s``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dagster as dg  # noqa: E402

from benchmarks._data import BENCH_RUN, bench_settings, ensure_run  # noqa: E402
from examples import tool_errors  # noqa: E402
from manta_dagster.assets import level_key  # noqa: E402
from manta_dagster.definitions import build_definitions  # noqa: E402
from manta_dagster.partitions import (  # noqa: E402
    DEFAULT_SHARD_COUNT,
    RUNS_PARTITIONS_NAME,
    run_key_range,
)
from manta_dagster.resources import ClickHouseResource  # noqa: E402
from manta_lib.models import EntityLevel  # noqa: E402
from manta_lib.settings import MantaSettings  # noqa: E402
from manta_lib.store import Store  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PIPELINE = tool_errors.pipeline
LOWER = [level_key(PIPELINE, EntityLevel.TRACE), level_key(PIPELINE, EntityLevel.DATAPOINT)]
UPPER = [level_key(PIPELINE, EntityLevel.STEP)]


def reset_results(settings: MantaSettings) -> None:
    """Empty entity_metadata so every measurement computes everything."""
    with Store.open(settings) as store:
        store.command("TRUNCATE TABLE {db}.entity_metadata_catalog")
        store.command("TRUNCATE TABLE {db}.entity_metadata")


def stored_entities(settings: MantaSettings) -> dict[str, int]:
    """Entities stored per level for the pipeline's judge (to check every variant did it all)."""
    with Store.open(settings) as store:
        rows = store.rows(
            "SELECT entity_level, uniqExact(entity_id) FROM {db}.entity_metadata "
            "WHERE judge = {j:String} AND run_id = {r:String} GROUP BY entity_level",
            {"j": PIPELINE.judge, "r": BENCH_RUN},
        )
    return {str(level): int(count) for level, count in rows}


def dagster_home() -> Path:
    """A fresh DAGSTER_HOME holding the checked-in dagster.yaml (SQLite storage)."""
    home = Path(tempfile.mkdtemp(prefix="bench_dagster_home_"))
    shutil.copy(REPO / ".dagster_home" / "dagster.yaml", home / "dagster.yaml")
    return home


def range_tags() -> dict[str, str]:
    keys = run_key_range(BENCH_RUN, DEFAULT_SHARD_COUNT)
    return {
        "dagster/asset_partition_range_start": keys.start,
        "dagster/asset_partition_range_end": keys.end,
    }


def run_local(settings: MantaSettings) -> float:
    started = time.perf_counter()
    PIPELINE.run(BENCH_RUN, mode="local", settings=settings, progress=False)
    return time.perf_counter() - started


def run_in_process(settings: MantaSettings, home: Path) -> float:
    """Both materializations with ``dagster.materialize`` on a SQLite instance."""
    clickhouse = ClickHouseResource(data_dir=str(settings.data_dir), database=settings.database)
    defs = build_definitions([PIPELINE], include_wall_time=False, clickhouse=clickhouse)
    started = time.perf_counter()
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.add_dynamic_partitions(RUNS_PARTITIONS_NAME, [BENCH_RUN])
        for selection, kwargs in (
            (LOWER, {"tags": range_tags()}),
            (UPPER, {"partition_key": BENCH_RUN}),
        ):
            result = dg.materialize(
                list(defs.assets or []),  # type: ignore[arg-type]
                instance=instance,
                resources=defs.resources,
                selection=selection,
                **kwargs,  # type: ignore[arg-type]
            )
            assert result.success
    return time.perf_counter() - started


def run_cli(settings: MantaSettings, home: Path) -> list[tuple[str, float]]:
    """``manta dagster register-runs`` then the documented ``dagster asset materialize`` lines.

    Returns each command's wall time; registering the partition is a one-off step (the sensor
    does it in production), reported apart from the two materializations.
    """
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "MANTA_DATA_DIR": str(settings.data_dir),
        "MANTA_DATABASE": settings.database,
    }
    env.pop("CLICKHOUSE_URL", None)
    keys = run_key_range(BENCH_RUN, DEFAULT_SHARD_COUNT)
    select_lower = ",".join(k.to_user_string() for k in LOWER)
    commands = [
        ("manta dagster register-runs", [str(BIN / "manta"), "dagster", "register-runs"]),
        ("materialize trace,datapoint --partition-range (64 shards)",
         [str(BIN / "dagster"), "asset", "materialize", "-m", "manta_dagster",
          "--select", select_lower, "--partition-range", f"{keys.start}...{keys.end}"]),
        ("materialize step --partition",
         [str(BIN / "dagster"), "asset", "materialize", "-m", "manta_dagster",
          "--select", UPPER[0].to_user_string(), "--partition", BENCH_RUN]),
    ]  # fmt: skip
    timings = []
    for name, command in commands:
        started = time.perf_counter()
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
        timings.append((name, time.perf_counter() - started))
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--traces", type=int, default=20_000)
    parser.add_argument("--no-cli", action="store_true", help="skip the CLI measurement")
    args = parser.parse_args()

    settings = bench_settings("dagster")
    with Store.open(settings) as store:
        traces, spans = ensure_run(store, args.traces)
    print(f"run {BENCH_RUN}: {traces:,} traces, {spans:,} spans; pipeline {PIPELINE.judge}")

    reset_results(settings)
    local = run_local(settings)
    expected = stored_entities(settings)
    print(f"pipeline.run(mode='local')          {local:7.2f} s   {expected}")

    reset_results(settings)
    in_process = run_in_process(settings, dagster_home())
    assert stored_entities(settings) == expected, stored_entities(settings)
    budget = 1.25 * local + 6
    print(
        f"dagster.materialize (in-process)    {in_process:7.2f} s   ratio {in_process / local:.2f}"
        f"   overhead {in_process - local:+.2f} s"
    )
    results = [("in-process", in_process)]
    if not args.no_cli:
        reset_results(settings)
        timings = run_cli(settings, dagster_home())
        assert stored_entities(settings) == expected, stored_entities(settings)
        for name, seconds in timings:
            print(f"  CLI {name:55s} {seconds:6.2f} s")
        cli = sum(seconds for _, seconds in timings[1:])
        print(
            f"dagster asset materialize (CLI x2)  {cli:7.2f} s   ratio {cli / local:.2f}"
            f"   overhead {cli - local:+.2f} s (two processes, each with its own start-up)"
        )
        results.append(("CLI", cli))
    for name, seconds in results:
        verdict = "meets" if seconds <= budget else "MISSES"
        print(f"{name}: {verdict} the target 1.25 x local + 6 s = {budget:.2f} s")


if __name__ == "__main__":
    main()
