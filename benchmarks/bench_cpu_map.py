"""A CPU-heavy map (~1 ms of Python per trace): local threads vs worker processes.

    .venv/bin/python benchmarks/bench_cpu_map.py [--scales 20000] [--workers 2] [--repeat 1]

For each scale a child process seeds (or reuses) one demo run of N traces in its own store,
measures what the map function costs on one core (ms per trace, called directly on loaded
traces), then runs the same persisted pipeline with ``mode="local"`` (threads: one core under
the GIL) and ``mode="processes"`` with ``--workers`` processes, from scratch each time
(entity_metadata truncated), alternating ``--repeat`` times and keeping each mode's best.
It prints both rates side by side with the speed-up, the child's peak RSS and the workers'
(summed, sampled). On a machine shared with other work the speed-up is lower than on an idle
one: compare within one row.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil  # noqa: E402
from pydantic import BaseModel  # noqa: E402

from benchmarks._data import BENCH_RUN, bench_settings, ensure_run  # noqa: E402
from manta_lib import EntityLevel, EntityRef, MapReduceComputation, TraceContext  # noqa: E402
from manta_lib.service import MantaService  # noqa: E402
from manta_lib.store import Store  # noqa: E402

#: Rounds of the scoring loop per trace: about 1 ms of Python on a 2020s core.
ROUNDS = int(os.environ.get("MANTA_BENCH_CPU_ROUNDS", "16"))


class TraceScore(BaseModel):
    words: int
    digest: int


class GroupScore(BaseModel):
    rollouts: int
    mean_words: float


def score_trace(trace: TraceContext) -> TraceScore:
    """Pure-Python work over the trace's text: tokenise and hash every message, ROUNDS times."""
    texts = [m.content or "" for m in trace.messages()]
    words, digest = 0, 0
    for _ in range(ROUNDS):
        for text in texts:
            for word in text.split():
                words += 1
                for ch in word[:8]:
                    digest = (digest * 131 + ord(ch)) % 1_000_000_007
    return TraceScore(words=words // ROUNDS, digest=digest)


def reduce_mean(entity: EntityRef, children: list[BaseModel]) -> GroupScore:
    values = [getattr(c, "words", None) or getattr(c, "mean_words", 0.0) for c in children]
    return GroupScore(rollouts=len(children), mean_words=sum(values) / max(len(values), 1))


pipeline = (
    MapReduceComputation("Bench cpu map", project_id="prj_bench")
    .add_level(EntityLevel.TRACE, score_trace, TraceScore)
    .add_level(EntityLevel.DATAPOINT, reduce_mean, GroupScore)
    .add_level(EntityLevel.RUN, reduce_mean, GroupScore)
)


def _map_cost_ms(store: Store) -> float:
    """Milliseconds of ``score_trace`` per trace on one core (200 loaded traces)."""
    service = MantaService(store)
    contexts = service.load_contexts(service.get_traces(BENCH_RUN, limit=200))
    started = time.perf_counter()
    for context in contexts:
        score_trace(context)
    return (time.perf_counter() - started) * 1000 / len(contexts)


class ChildrenRss:
    """Peak of the summed RSS of this process's children (the workers), sampled every 0.2 s.

    ``RUSAGE_CHILDREN`` would count the parent's pages in each child's fork before its exec.
    """

    def __init__(self) -> None:
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.wait(0.2):
            total = 0
            for proc in me.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    # A child caught between fork and exec still shows this process's pages.
                    if "spawn_main" in " ".join(proc.cmdline()):
                        total += proc.memory_info().rss
            self.peak_mb = max(self.peak_mb, total / 2**20)

    def __enter__(self) -> ChildrenRss:
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def child(traces: int, workers: int, repeat: int) -> dict[str, float]:
    # The workers import the pipeline from this module by name, not from __main__.
    from benchmarks.bench_cpu_map import pipeline as bench_pipeline

    settings = bench_settings(f"cpu_map_{traces}")
    with Store.open(settings) as store:
        ensure_run(store, traces)
        cost_ms = _map_cost_ms(store)
    times: dict[str, list[float]] = {"local": [], "processes": []}
    sampler = ChildrenRss()
    for _ in range(max(1, repeat)):
        for mode in times:
            with Store.open(settings) as store:
                store.command("TRUNCATE TABLE {db}.entity_metadata_catalog")
                store.command("TRUNCATE TABLE {db}.entity_metadata")
            extra = {"workers": workers} if mode == "processes" else {}
            started = time.perf_counter()
            with sampler:
                result = bench_pipeline.run(
                    BENCH_RUN, mode=mode, settings=settings, progress=False, **extra
                )
            times[mode].append(time.perf_counter() - started)
            counts = result.failed_counts()  # type: ignore[attr-defined]
            assert counts[EntityLevel.TRACE] == (traces, 0), counts
    return {
        "traces": traces,
        "cost_ms": cost_ms,
        "local_s": min(times["local"]),
        "processes_s": min(times["processes"]),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "workers_peak_rss_mb": sampler.peak_mb,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scales", type=int, nargs="+", default=[20_000])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1, help="alternations, best time kept")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.workers, args.repeat)))
        return
    print(f"{'traces':>9} {'map ms/tr':>10} {'local tr/s':>11} "
          f"{f'{args.workers} procs tr/s':>14} {'speed-up':>9} {'peak RSS':>9} "
          f"{'workers RSS':>12}")  # fmt: skip
    for traces in args.scales:
        command = [sys.executable, __file__, "--child", str(traces)]
        command += ["--workers", str(args.workers), "--repeat", str(args.repeat)]
        run = subprocess.run(command, capture_output=True, text=True, check=True)
        fig = json.loads(run.stdout.strip().splitlines()[-1])
        local = fig["traces"] / fig["local_s"]
        processes = fig["traces"] / fig["processes_s"]
        print(
            f"{fig['traces']:>9,} {fig['cost_ms']:>10.2f} {local:>11,.0f} {processes:>14,.0f} "
            f"{processes / local:>8.2f}x {fig['peak_rss_mb']:>7.0f}MB "
            f"{fig['workers_peak_rss_mb']:>10.0f}MB"
        )


if __name__ == "__main__":
    main()
