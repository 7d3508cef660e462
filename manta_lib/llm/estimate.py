"""Project a judge's calls, tokens, dollars and wall time from a sample.

:func:`estimate` runs a function that uses judges (a map function) on a sample of the scope,
reads what the judges did, and scales it to the scope. Answers found in the cache count at the
tokens and cost they had when they were made, so the *full* figures describe a run with an
empty cache; ``expected_cost_usd`` is what the run would spend now, with the share of answers
the cache already holds.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from manta_lib.llm import registry, shared
from manta_lib.llm.concurrency import AdaptiveLimiter
from manta_lib.llm.usage import CallAccount, call_accounting

X = TypeVar("X")


@dataclass(frozen=True)
class Estimate:
    """A projection for ``scope_size`` items from ``sample_size`` items actually run."""

    sample_size: int
    scope_size: int
    sample_failures: int
    calls: int
    input_tokens: int
    output_tokens: int
    cost_usd: float | None
    cost_interval_usd: tuple[float, float] | None  # ~95% range from the sample's spread
    expected_cost_usd: float | None
    cache_hit_rate: float
    mean_latency_s: float
    calls_per_s: float
    wall_s: float
    limits: str

    def lines(self) -> list[str]:
        """A human summary, one figure per line."""
        cost = "unknown (a model has no price)"
        if self.cost_usd is not None:
            cost = f"${self.cost_usd:,.2f}"
        if self.cost_interval_usd is not None:
            low, high = self.cost_interval_usd
            cost += f" (95%: ${low:,.2f} to ${high:,.2f})"
        wall = (
            f"wall time: {_duration(self.wall_s)} at {self.calls_per_s:,.1f} calls/s "
            f"({self.limits}; mean latency {self.mean_latency_s * 1000:,.0f} ms)"
            if self.calls_per_s > 0
            else "wall time: seconds (every answer is cached)"
        )
        expected = (
            "unknown" if self.expected_cost_usd is None else f"${self.expected_cost_usd:,.2f}"
        )
        return [
            f"sample: {self.sample_size} of {self.scope_size:,} items "
            f"({self.sample_failures} failed)",
            f"calls: {self.calls:,}   tokens: {self.input_tokens:,} in / "
            f"{self.output_tokens:,} out",
            f"cost with an empty cache: {cost}   to spend now "
            f"({self.cache_hit_rate:.0%} already cached): {expected}",
            wall,
        ]


def estimate(
    fn: Callable[[X], Any],
    sample: Sequence[X],
    scope_size: int,
    *,
    workers: int = 32,
) -> Estimate:
    """Run ``fn`` on ``sample`` with ``workers`` threads and project the judges' usage.

    Example::

        est = estimate(map_fn, traces[:50], scope_size=100_000)
        print("\\n".join(est.lines()))
    """
    before = shared.total_usage()
    failures = 0
    item_costs: list[float] = []
    if sample:
        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(sample)))) as pool:
            for account, failed in pool.map(lambda item: _accounted(fn, item), sample):
                failures += failed
                item_costs.append(account.cost_usd + account.cached_cost_usd)
    used = shared.total_usage().minus(before)
    n = max(len(sample), 1)
    scale = scope_size / n
    requests = used.calls + used.cache_hits
    hit_rate = used.cache_hits / requests if requests else 0.0
    full_cost = (used.cost_usd + used.cached_cost_usd) * scale if used.cost_known else None
    calls = round(requests * scale)
    judges = registry.judges_used_by([fn]) or registry.live_judges()
    throughput, limits = _throughput(judges, used.mean_latency_s, workers, used, calls)
    calls_to_make = calls * (1 - hit_rate)
    return Estimate(
        sample_size=len(sample),
        scope_size=scope_size,
        sample_failures=failures,
        calls=calls,
        input_tokens=round((used.input_tokens + used.cached_input_tokens) * scale),
        output_tokens=round((used.output_tokens + used.cached_output_tokens) * scale),
        cost_usd=full_cost,
        cost_interval_usd=_interval(item_costs, scope_size) if full_cost is not None else None,
        expected_cost_usd=None if full_cost is None else full_cost * (1 - hit_rate),
        cache_hit_rate=hit_rate,
        mean_latency_s=used.mean_latency_s,
        calls_per_s=throughput,
        wall_s=calls_to_make / throughput if throughput > 0 else 0.0,
        limits=limits,
    )


def _accounted(fn: Callable[[X], Any], item: X) -> tuple[CallAccount, bool]:
    with call_accounting() as account:
        try:
            fn(item)
        except Exception:  # noqa: BLE001 - a failing item is counted, the estimate goes on
            return account, True
    return account, False


def _interval(item_costs: list[float], scope_size: int) -> tuple[float, float] | None:
    """A ~95% interval of the scope's cost from the per-item spread (finite population)."""
    n = len(item_costs)
    if n < 2:
        return None
    mean = statistics.fmean(item_costs)
    correction = max(0.0, 1 - n / scope_size) if scope_size else 0.0
    half = 1.96 * statistics.stdev(item_costs) / math.sqrt(n) * math.sqrt(correction)
    return max(0.0, (mean - half) * scope_size), (mean + half) * scope_size


def _throughput(
    judges: list[Any], latency_s: float, workers: int, used: Any, calls: int
) -> tuple[float, str]:
    """Calls per second at the current limits, and which limit decides it."""
    limiters = {id(judge.limiter): judge.limiter for judge in judges}
    ceiling = min((lim.ceiling for lim in limiters.values()), default=workers)
    parallel = min(workers, ceiling)
    candidates: list[tuple[float, str]] = []
    if latency_s > 0:
        candidates.append((parallel / latency_s, f"{parallel} calls in flight"))
    for limiter in limiters.values():
        candidates.extend(_rate_limits(limiter, used))
    if not candidates:
        return 0.0, "no calls made"
    return min(candidates)


def _rate_limits(limiter: AdaptiveLimiter, used: Any) -> list[tuple[float, str]]:
    found = []
    rpm = limiter.requests_per_minute
    if rpm:
        found.append((rpm / 60, f"MANTA_LLM_RPM={rpm:g}"))
    tpm = limiter.tokens_per_minute
    tokens_per_call = (used.input_tokens + used.output_tokens) / used.calls if used.calls else 0
    if tpm and tokens_per_call:
        found.append((tpm / 60 / tokens_per_call, f"MANTA_LLM_TPM={tpm:g}"))
    return found


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{math.floor(seconds / 3600)} h {round(seconds % 3600 / 60)} min"
