"""What ``RolloutLogger`` costs a training loop: how many rollouts/s ``log.rollout()`` accepts,
and the CPU share of the training process at 1,000 rollouts/s.

    .venv/bin/python benchmarks/bench_rollout_logger.py [--calls N] [--seconds S] [--rate R]

(a) Accepted rollouts/s: ``--calls`` calls of ``log.rollout()`` with a three-message rollout,
timed in a tight loop while the writer thread serializes and fsyncs behind it (spool only:
the shipper is another process and is measured in (b)); beside it, the same loop appending the
same arguments to a list, the floor of any logging call.

(b) CPU at ``--rate`` rollouts/s for ``--seconds``: a loop that logs ``rate/100`` rollouts
every 10 ms, with the shipper storing them into an embedded store under
``benchmarks/.data/rollout_logger``; the training process's CPU time (all its threads) minus
that of the same paced loop without logging, as a share of one core. The shipper process's CPU
(the store's import work, in its own process) is printed beside it, with the share of it that
is the process's start-up (imports), then the number of rollouts found in the store.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._data import DATA_ROOT, bench_settings  # noqa: E402
from manta_lib.rollout_logger import RolloutLogger  # noqa: E402
from manta_lib.store import Store  # noqa: E402
from manta_lib.store.trace_writes import delete_run  # noqa: E402

MESSAGES = [
    {"role": "system", "content": "Solve the problem. Put the answer in \\boxed{}."},
    {"role": "user", "content": "What is the sum of the first 20 odd numbers?"},
    {"role": "assistant", "content": "The sum of the first n odd numbers is n^2, so \\boxed{400}."},
]
META = {"temperature": 1.0, "group": 3}


def accepted_per_second(calls: int) -> tuple[float, float]:
    """(rollouts/s through log.rollout(), appends/s of the same arguments to a list)."""
    spool = Path(tempfile.mkdtemp(prefix="manta_bench_spool_"))
    try:
        sink: list[tuple[object, ...]] = []
        started = time.perf_counter()
        for i in range(calls):
            sink.append((i // 1000, "dp_7", MESSAGES, 0.5, META))
        floor = calls / (time.perf_counter() - started)
        sink.clear()
        with RolloutLogger(run_id="bench", ship=False, spool_dir=spool) as log:
            rollout = log.rollout
            started = time.perf_counter()
            for i in range(calls):
                rollout(step=i // 1000, datapoint="dp_7", messages=MESSAGES, score=0.5, meta=META)
            accepted = calls / (time.perf_counter() - started)
            log.flush()
        return accepted, floor
    finally:
        shutil.rmtree(spool, ignore_errors=True)


def paced(seconds: float, rate: int, log: RolloutLogger | None) -> tuple[float, float, int]:
    """(wall s, process CPU s, rollouts) of a loop logging ``rate`` rollouts/s."""
    per_tick = rate // 100
    ticks = int(seconds * 100)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    sent = 0
    for tick in range(ticks):
        if log is not None:
            for _ in range(per_tick):
                log.rollout(
                    step=tick // 100,
                    datapoint=f"dp_{sent % 64}",
                    messages=MESSAGES,
                    score=0.5,
                    meta=META,
                )
                sent += 1
        delay = wall0 + (tick + 1) / 100 - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
    return time.perf_counter() - wall0, time.process_time() - cpu0, sent


def startup_cpu(spool: Path) -> float:
    """CPU seconds of a shipper that starts, finds nothing to ship and exits."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(
        [sys.executable, "-m", "manta_lib.rollout_shipper", str(spool)],
        stdin=subprocess.DEVNULL,
        check=True,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=1000)
    args = parser.parse_args()

    accepted, floor = accepted_per_second(args.calls)
    print(
        f"(a) log.rollout() accepted {accepted:,.0f} rollouts/s "
        f"(list.append of the same arguments: {floor:,.0f}/s; ratio {floor / accepted:.1f}x)"
    )

    settings = bench_settings("rollout_logger")
    os.environ["MANTA_DATA_DIR"] = str(settings.data_dir)
    os.environ["MANTA_DATABASE"] = settings.database
    run_id = f"bench_{int(time.time())}"
    spool = DATA_ROOT / "rollout_logger" / "spool"
    base_wall, base_cpu, _ = paced(args.seconds, args.rate, None)
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with RolloutLogger(run_id=run_id, spool_dir=spool, close_timeout=600) as log:
        wall, cpu, sent = paced(args.seconds, args.rate, log)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    shipper_cpu = (children.ru_utime + children.ru_stime) - (
        children_before.ru_utime + children_before.ru_stime
    )
    share = (cpu - base_cpu * wall / base_wall) / wall
    print(
        f"(b) at {sent / wall:,.0f} rollouts/s for {wall:.1f} s: the training process used "
        f"{share:.1%} of one core for logging (CPU {cpu:.2f} s, the same loop without "
        f"logging {base_cpu:.2f} s in {base_wall:.1f} s)"
    )
    print(
        f"    shipper process (storing them, its own process): {shipper_cpu:.2f} CPU s = "
        f"{shipper_cpu / wall:.1%} of one core over the logging time, of which "
        f"{startup_cpu(spool):.2f} s start-up (a shipper run on an empty spool)"
    )
    with Store.open(settings) as store:
        stored = store.rows(
            "SELECT count() FROM {db}.traces WHERE run_id = {r:String}", {"r": run_id}
        )[0][0]
        delete_run(store, run_id)
    print(f"    stored {stored:,} of {sent:,} rollouts logged")


if __name__ == "__main__":
    main()
