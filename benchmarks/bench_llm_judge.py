"""LLM judge throughput under a provider rate limit, and the cost of a fully cached re-run.

    .venv/bin/python benchmarks/bench_llm_judge.py [--calls 20000] [--latency 0.1] [--rps 200]
        [--workers 64] [--mode aimd|headers|rpm|all]

A loopback OpenAI-compatible server runs in a child process with ``--latency`` per answer and a
``--rps`` requests-per-second limit (beyond it: HTTP 429 with ``retry-after-ms`` until the
one-second window has room, as OpenAI's limiter answers). A thread
pool of ``--workers`` calls one ``LLMJudge`` for ``--calls`` distinct prompts, the response
cache in a fresh embedded store. Reported per mode:

* sustained throughput after the first 10 s (completions/s) and its ratio to the limit
  (target >= 90%), failed calls (target 0), the share of requests answered 429 after 10 s
  (target < 2%), the concurrency the limiter settled at;
* a second run over the same prompts by a new judge: calls made (target 0) and its wall time
  as a share of the first run's (target < 5%).

Modes: ``aimd``: the server says nothing about its limit, the judge discovers it by itself
(halve on 429, grow by one per round trip); ``headers``: the server announces its limit in
``x-ratelimit-limit-requests`` as OpenAI does, and the judge paces at 95% of it; ``rpm``: the
limit is configured (``MANTA_LLM_RPM``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pydantic import BaseModel  # noqa: E402

from manta_lib.errors import LLMError  # noqa: E402
from manta_lib.llm import LLMJudge, LLMSettings, shared  # noqa: E402
from manta_lib.settings import load_settings  # noqa: E402

MODES = ("aimd", "headers", "rpm")


class FailureMode(BaseModel):
    category: Literal["tool_misuse", "reasoning", "gave_up", "none"]
    rationale: str


def start_server(
    latency: float, rps: float, limit_headers: bool
) -> tuple[subprocess.Popen[str], str]:
    command = [
        sys.executable,
        "-m",
        "tests.lib.fake_openai",
        "--latency",
        str(latency),
        "--rps",
        str(rps),
        "--retry-after",
        "exact",
    ]
    if limit_headers:
        command.append("--limit-headers")
    root = Path(__file__).resolve().parents[1]
    process = subprocess.Popen(command, cwd=root, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    url = process.stdout.readline().strip()
    if not url.startswith("http"):
        process.kill()
        raise SystemExit(f"the fake server did not start: {command}")
    return process, url


def server_stats(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "/_stats", timeout=10) as response:
        return dict(json.loads(response.read()))


def run_once(judge: LLMJudge[Any], prompts: list[str], workers: int, url: str) -> dict[str, Any]:
    """Judge every prompt; sample the server counters at 10 s."""
    failures = 0
    lock = threading.Lock()
    at_10s: dict[str, Any] = {}
    done = threading.Event()
    start_stats = server_stats(url)

    def call(prompt: str) -> None:
        nonlocal failures
        try:
            judge(prompt)
        except LLMError:
            with lock:
                failures += 1

    def sample_at_10s() -> None:
        if not done.wait(10.0):
            at_10s.update(server_stats(url), t=time.perf_counter())

    sampler = threading.Thread(target=sample_at_10s, daemon=True)
    started = time.perf_counter()
    sampler.start()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(call, prompts))
    wall = time.perf_counter() - started
    done.set()
    end_stats = server_stats(url)
    result: dict[str, Any] = {
        "wall_s": wall,
        "failures": failures,
        "completions": end_stats["completions"] - start_stats["completions"],
        "rate_limited": end_stats["rate_limited"] - start_stats["rate_limited"],
        "concurrency": judge.limiter.limit,
        "latency_ms": judge.usage.snapshot().mean_latency_s * 1000,
    }
    if at_10s:
        span = wall - (at_10s["t"] - started)
        completions = end_stats["completions"] - at_10s["completions"]
        limited = end_stats["rate_limited"] - at_10s["rate_limited"]
        result["sustained_per_s"] = completions / span if span > 0 else 0.0
        result["share_429_after_10s"] = limited / max(1, completions + limited)
    return result


def bench_mode(mode: str, args: argparse.Namespace, data_dir: Path) -> None:
    process, url = start_server(args.latency, args.rps, limit_headers=mode == "headers")
    try:
        rpm = args.rps * 60 if mode == "rpm" else None
        llm = LLMSettings(
            base_url=url,
            api_key="bench",
            concurrency=8,
            max_concurrency=args.workers,
            requests_per_minute=rpm,
            max_retries=20,
        )
        manta = load_settings(data_dir=data_dir, database=f"bench_llm_{mode}")
        prompts = [f"{mode} trajectory {i}: the agent called a tool" for i in range(args.calls)]
        system = "Classify the failure mode."
        first_judge = LLMJudge(
            "gpt-4o-mini", FailureMode, system=system, settings=llm, manta_settings=manta
        )
        first = run_once(first_judge, prompts, args.workers, url)
        cost = first_judge.usage.snapshot().cost_usd
        shared.close_all()  # flush; the second judge loads its answers from ClickHouse
        second_judge = LLMJudge(
            "gpt-4o-mini", FailureMode, system=system, settings=llm, manta_settings=manta
        )
        second = run_once(second_judge, prompts, args.workers, url)
        shared.close_all()
    finally:
        process.terminate()
        process.wait(timeout=10)
    limit = args.rps
    print(
        f"[{mode}] {args.calls:,} calls, {args.latency * 1000:.0f} ms latency, "
        f"limit {limit:g} req/s, {args.workers} threads" + (f", RPM {rpm:g}" if rpm else "")
    )
    print(
        f"[{mode}] first run: {first['wall_s']:.1f} s, {first['completions']:,} completions, "
        f"{first['failures']} failed, {first['rate_limited']:,} answered 429, "
        f"concurrency at the end {first['concurrency']}, "
        f"mean latency seen by the client {first['latency_ms']:.0f} ms, ${cost:.4f}"
    )
    if "sustained_per_s" in first:
        print(
            f"[{mode}] after 10 s: {first['sustained_per_s']:.1f} completions/s = "
            f"{first['sustained_per_s'] / limit:.1%} of the limit; "
            f"{first['share_429_after_10s']:.2%} of requests answered 429"
        )
    print(
        f"[{mode}] second run: {second['wall_s']:.2f} s, {second['completions']} calls, "
        f"{second['wall_s'] / first['wall_s']:.2%} of the first run's time"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--rps", type=float, default=200.0)
    parser.add_argument("--workers", type=int, default=64)
    parser.add_argument("--mode", choices=[*MODES, "all"], default="all")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_llm_") as tmp:
        for mode in MODES if args.mode == "all" else (args.mode,):
            bench_mode(mode, args, Path(tmp))


if __name__ == "__main__":
    main()
