"""Adaptive concurrency and rate limits against the loopback server: 429s halve the shared
limit and pause for Retry-After, successes grow it back, and an RPM limit keeps a server's
requests-per-second limit from answering 429 at all."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from manta_lib.llm import AdaptiveLimiter, LLMJudge
from tests.lib.fake_openai import FakeOpenAIServer, Fault

# timing-sensitive: run one at a time, after the parallel pass
pytestmark = pytest.mark.serial

Judge = Callable[..., LLMJudge[Any]]


def test_429s_halve_the_shared_concurrency_and_successes_grow_it_back(
    fake: FakeOpenAIServer, make_judge: Judge
) -> None:
    judge = make_judge(cache=False, llm={"concurrency": 8, "max_concurrency": 12})
    assert judge.limiter.limit == 8
    fake.plan(*[Fault(429)] * 8)
    seen_limits: list[int] = []
    lock = threading.Lock()

    def call(i: int) -> None:
        judge(f"input {i}")
        with lock:
            seen_limits.append(judge.limiter.limit)

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(call, range(8)))
    assert judge.usage.snapshot().rate_limited == 8
    assert min(seen_limits) <= 4  # halved at least once
    assert judge.limiter.cuts < 8  # 429s of one round in flight cut once, not once each

    with ThreadPoolExecutor(max_workers=12) as pool:
        list(pool.map(judge, [f"more {i}" for i in range(120)]))
    assert judge.limiter.limit == 12  # grew back additively, capped at the ceiling
    assert fake.stats()["max_in_flight"] <= 12


def test_one_cut_per_round_in_flight() -> None:
    limiter = AdaptiveLimiter(8, 16)
    permits = []
    for _ in range(8):
        with limiter.slot() as permit:
            permits.append(permit)
    for permit in permits:  # all eight were sent before the first 429 came back
        limiter.on_overload(permit)
    assert (limiter.limit, limiter.cuts) == (4, 1)
    with limiter.slot() as later:
        pass
    limiter.on_overload(later)  # sent after the cut: a new signal
    assert (limiter.limit, limiter.cuts) == (2, 2)
    for _ in range(30):
        with limiter.slot() as permit:
            pass
        limiter.on_success(permit)
    assert limiter.limit > 2


def test_retry_after_pauses_every_thread(fake: FakeOpenAIServer, make_judge: Judge) -> None:
    judge = make_judge(cache=False)
    fake.plan(Fault(429, retry_after=0.6))
    started = time.monotonic()
    judge("first")
    arrivals = fake.arrivals
    assert len(arrivals) == 2
    assert arrivals[1] - arrivals[0] >= 0.6  # not sooner than the server asked
    assert time.monotonic() - started >= 0.6


def test_an_rpm_limit_keeps_the_server_limit_unbroken(
    fake: FakeOpenAIServer, make_judge: Judge
) -> None:
    fake.rps_limit = 10
    judge = make_judge(cache=False, llm={"requests_per_minute": 480, "concurrency": 16})
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(judge, [f"input {i}" for i in range(25)]))
    assert fake.stats()["rate_limited"] == 0
    assert fake.stats()["completions"] == 25


def test_a_server_rate_limit_without_retry_after_is_survived(
    fake: FakeOpenAIServer, make_judge: Judge
) -> None:
    fake.rps_limit = 10
    judge = make_judge(cache=False, llm={"concurrency": 16, "max_retries": 12})
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(judge, [f"input {i}" for i in range(30)]))
    assert len(results) == 30
    assert fake.stats()["rate_limited"] > 0
    assert judge.limiter.cuts >= 1
    assert judge.usage.snapshot().failures == 0


def test_token_bucket_pacing_of_the_limiter() -> None:
    limiter = AdaptiveLimiter(4, 4, tokens_per_minute=600)  # 10 tokens/s, a minute's burst
    with limiter.slot(300) as permit:  # estimated 300, really used 580: 20 left
        pass
    limiter.on_success(permit, actual_tokens=580)
    started = time.monotonic()
    with limiter.slot(40):  # waits for 20 more tokens (~2 s)
        pass
    assert time.monotonic() - started >= 1.8


def test_the_limit_announced_in_headers_is_learned(
    fake: FakeOpenAIServer, make_judge: Judge
) -> None:
    fake.rps_limit = 10
    fake.limit_headers = True  # x-ratelimit-limit-requests: 600 (per minute)
    judge = make_judge(cache=False, llm={"concurrency": 4, "max_concurrency": 16})
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(judge, [f"input {i}" for i in range(30)]))
    assert judge.limiter.requests_per_minute == 600
    assert fake.stats()["rate_limited"] == 0


def test_under_a_known_rate_a_429_never_cuts_below_what_the_rate_needs() -> None:
    limiter = AdaptiveLimiter(16, 32, requests_per_minute=600)  # paced at 9.5 requests/s
    with limiter.slot() as permit:
        pass
    limiter.on_success(permit, latency_s=1.0)  # 1 s per answer: 9.5 in flight are needed
    with limiter.slot() as permit:
        pass
    limiter.on_overload(permit)
    assert limiter.limit == 12  # ceil(9.5 x 1.0 x 1.2), not 16 / 2

    unpaced = AdaptiveLimiter(16, 32)
    with unpaced.slot() as permit:
        pass
    unpaced.on_success(permit, latency_s=1.0)
    with unpaced.slot() as permit:
        pass
    unpaced.on_overload(permit)
    assert unpaced.limit == 8


def test_a_slow_answer_times_out_halves_concurrency_and_is_retried(
    fake: FakeOpenAIServer, make_judge: Judge
) -> None:
    judge = make_judge(cache=False, llm={"timeout_s": 0.5, "concurrency": 8})
    fake.plan(Fault("slow", delay=3.0))
    assert judge("slow then fine") is not None
    assert fake.stats()["chat_requests"] == 2
    assert judge.limiter.cuts == 1
    assert judge.usage.snapshot().retries == 1


def test_retry_after_header_forms() -> None:
    from email.utils import formatdate

    from manta_lib.llm.client import retry_after_seconds

    assert retry_after_seconds({"retry-after-ms": "250"}) == 0.25
    assert retry_after_seconds({"retry-after": "2"}) == 2.0
    in_30_s = retry_after_seconds({"retry-after": formatdate(time.time() + 30, usegmt=True)})
    assert in_30_s is not None and 25 < in_30_s <= 30
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds({}) is None
