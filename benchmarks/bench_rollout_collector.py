"""Rollouts stored through ``manta collect`` beside a shipper writing the store itself.

    .venv/bin/python benchmarks/bench_rollout_collector.py [--rollouts N] [--shard-size K]

Two spools of the same ``--rollouts`` three-message rollouts (shards of ``--shard-size``
lines, what a RolloutLogger writes in about a second at that rate) under
``benchmarks/.data/rollout_collector``:

(a) ``ship_once``: the shipper's own path, importing each shard into the embedded store.

(b) ``post_once`` to a ``manta collect`` process on the same store (started before the clock):
the time until every shard is acknowledged (on the collector's disk), and until it is stored
(the collector is then stopped with SIGTERM, which stores what it holds before exiting).
Both runs' rows are counted in the store and deleted afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._data import DATA_ROOT, bench_settings  # noqa: E402
from manta_lib.rollout_spool import post_once, rollouts_url, ship_once  # noqa: E402
from manta_lib.store import Store  # noqa: E402
from manta_lib.store.trace_writes import delete_run  # noqa: E402

MESSAGES = [
    {"role": "system", "content": "Solve the problem. Put the answer in \\boxed{}."},
    {"role": "user", "content": "What is the sum of the first 20 odd numbers?"},
    {"role": "assistant", "content": "The sum of the first n odd numbers is n^2, so \\boxed{400}."},
]


def write_spool(spool: Path, run_id: str, rollouts: int, shard_size: int) -> None:
    shutil.rmtree(spool, ignore_errors=True)
    spool.mkdir(parents=True)
    for start in range(0, rollouts, shard_size):
        lines = [
            json.dumps(
                {
                    "trace_id": f"{run_id}_{i}",
                    "run_id": run_id,
                    "step": i // 1000,
                    "datapoint_id": f"dp_{i % 64}",
                    "phase": "train",
                    "reward": 0.5,
                    "messages": MESSAGES,
                    "metadata": {"i": i},
                }
            )
            for i in range(start, min(start + shard_size, rollouts))
        ]
        (spool / f"{start:020d}-0-bench.jsonl").write_text("\n".join(lines) + "\n")


def start_collector(env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    process = subprocess.Popen(
        [sys.executable, "-m", "manta_lib.cli", "collect", "--port", str(port)], env=env
    )
    base = f"http://127.0.0.1:{port}"
    while True:
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return process, base
        except httpx.HTTPError:
            time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rollouts", type=int, default=20_000)
    parser.add_argument("--shard-size", type=int, default=1000)
    args = parser.parse_args()
    settings = bench_settings("rollout_collector")
    env = {
        **os.environ,
        "MANTA_DATA_DIR": str(settings.data_dir),
        "MANTA_DATABASE": settings.database,
    }
    os.environ.update(MANTA_DATA_DIR=env["MANTA_DATA_DIR"], MANTA_DATABASE=settings.database)
    root = DATA_ROOT / "rollout_collector"
    stamp = int(time.time())
    direct, posted = f"direct_{stamp}", f"posted_{stamp}"
    write_spool(root / "direct", direct, args.rollouts, args.shard_size)
    write_spool(root / "posted", posted, args.rollouts, args.shard_size)

    started = time.perf_counter()
    shipped = ship_once(root / "direct")
    direct_s = time.perf_counter() - started
    print(
        f"(a) ship_once into the store: {shipped:,} rollouts in {direct_s:.2f} s = "
        f"{shipped / direct_s:,.0f}/s"
    )

    collector, base = start_collector(env)
    started = time.perf_counter()
    acknowledged = post_once(root / "posted", rollouts_url(base))
    acked_s = time.perf_counter() - started
    collector.send_signal(signal.SIGTERM)
    collector.wait()
    stored_s = time.perf_counter() - started
    print(
        f"(b) post_once to manta collect: {acknowledged:,} acknowledged in {acked_s:.2f} s = "
        f"{acknowledged / acked_s:,.0f}/s; stored by {stored_s:.2f} s = "
        f"{acknowledged / stored_s:,.0f}/s ({stored_s / direct_s:.1f}x the time of (a))"
    )
    with Store.open(settings) as store:
        for run_id in (direct, posted):
            count = store.rows(
                "SELECT count() FROM {db}.traces WHERE run_id = {r:String}", {"r": run_id}
            )[0][0]
            print(f"    {run_id}: {count:,} of {args.rollouts:,} rollouts in the store")
            delete_run(store, run_id)


if __name__ == "__main__":
    main()
