"""What crash isolation costs on the normal path, per map call and per guarded block.

    .venv/bin/python benchmarks/bench_crash_guard.py [--calls 300000]

Per map call: a trivial function called directly, through a :class:`Watched` wrapper without
a journal (a run that does not persist), and with a real crash journal (a persisted run: the
trace id copied into a memory-mapped slot and cleared), best of 5 alternating rounds. Per
block: entering and leaving ``crash_guard.guarding`` (once per map job and per reduce call:
the fatal-signal handlers checked and swapped). Compare with ``bench_mapreduce.py``'s
per-trace time.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from manta_lib.pipeline import crash_guard  # noqa: E402
from manta_lib.pipeline.crash_journal import CrashJournal, JournalKey, Watched  # noqa: E402
from manta_lib.settings import load_settings  # noqa: E402


@dataclass
class Item:
    trace_id: str


def trivial(item: Item) -> int:
    return len(item.trace_id)


def per_call_ns(fn: Callable[[Item], object], items: list[Item]) -> float:
    started = time.perf_counter()
    for item in items:
        fn(item)
    return (time.perf_counter() - started) / len(items) * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=300_000)
    args = parser.parse_args()
    items = [Item(f"trace-{i:08d}-0123456789abcdef") for i in range(args.calls)]
    with tempfile.TemporaryDirectory() as data_dir:
        settings = load_settings(MANTA_DATA_DIR=data_dir)
        key = JournalKey("bench", "prj", "judge", "v1", "run", None, 64)
        journal = CrashJournal.open(settings, key, capacity=16)
        assert journal is not None
        variants: dict[str, Callable[[Item], object]] = {
            "direct call": trivial,
            "watched, no journal": Watched(trivial, None, "bench"),
            "watched + journal": Watched(trivial, journal, "bench"),
        }
        best = dict.fromkeys(variants, float("inf"))
        for _ in range(5):
            for name, fn in variants.items():
                best[name] = min(best[name], per_call_ns(fn, items))
        journal.close()
    rounds = 2_000
    started = time.perf_counter()
    for _ in range(rounds):
        with crash_guard.guarding("bench"):
            pass
    guard_us = (time.perf_counter() - started) / rounds * 1e6

    base = best["direct call"]
    print(f"{'per map call':<22} {'ns':>8} {'added ns':>9}")
    for name, ns in best.items():
        print(f"{name:<22} {ns:>8.0f} {ns - base:>9.0f}")
    print(f"guarding() enter+exit: {guard_us:.1f} us (once per map job / reduce call)")


if __name__ == "__main__":
    main()
