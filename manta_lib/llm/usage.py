"""Usage accounting: calls, cache hits, tokens, dollars, 429s, shared by every thread.

:class:`LLMUsage` is what a progress bar, the runs-log ``llm`` fields and Dagster metadata read.
:func:`call_accounting` attributes the calls made by one thread (one trace's map function) to
that trace, so per-trace cost can be recorded next to its result.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class UsageSnapshot:
    """A consistent copy of the counters at one moment (all numbers, JSON-ready via ``asdict``).

    ``cost_usd`` counts billed calls only; ``cost_known`` is False as soon as one billed call had
    a model without a price, and then ``cost_usd`` is a lower bound, never a total.
    ``total_latency_ms`` is the sum over billed calls (``mean_latency_ms`` is the mean).
    """

    calls: int = 0
    cache_hits: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    cost_known: bool = True
    cached_cost_usd: float = 0.0
    cached_input_tokens: int = 0
    cached_output_tokens: int = 0
    total_latency_ms: float = 0.0
    rate_limited: int = 0
    retries: int = 0
    failures: int = 0
    concurrency: int = 0
    elapsed_s: float = 0.0

    @property
    def requests(self) -> int:
        """Answers asked for: calls to the server plus answers served from the cache."""
        return self.calls + self.cache_hits

    @property
    def cache_hit_rate(self) -> float:
        return self.cache_hits / self.requests if self.requests else 0.0

    @property
    def mean_latency_ms(self) -> float:
        """Mean milliseconds per billed call (0 before the first)."""
        return self.total_latency_ms / self.calls if self.calls else 0.0

    @property
    def mean_latency_s(self) -> float:
        """Mean seconds per billed call (0 before the first)."""
        return self.mean_latency_ms / 1000

    @property
    def latency_ms(self) -> float:
        """Deprecated name of ``total_latency_ms`` (a sum over calls, not a mean)."""
        return self.total_latency_ms

    @property
    def calls_per_s(self) -> float:
        return self.calls / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def minus(self, earlier: UsageSnapshot) -> UsageSnapshot:
        """The usage between ``earlier`` and this snapshot (gauges keep this snapshot's value)."""
        return UsageSnapshot(
            calls=self.calls - earlier.calls,
            cache_hits=self.cache_hits - earlier.cache_hits,
            input_tokens=self.input_tokens - earlier.input_tokens,
            output_tokens=self.output_tokens - earlier.output_tokens,
            cost_usd=self.cost_usd - earlier.cost_usd,
            cost_known=self.cost_known,
            cached_cost_usd=self.cached_cost_usd - earlier.cached_cost_usd,
            cached_input_tokens=self.cached_input_tokens - earlier.cached_input_tokens,
            cached_output_tokens=self.cached_output_tokens - earlier.cached_output_tokens,
            total_latency_ms=self.total_latency_ms - earlier.total_latency_ms,
            rate_limited=self.rate_limited - earlier.rate_limited,
            retries=self.retries - earlier.retries,
            failures=self.failures - earlier.failures,
            concurrency=self.concurrency,
            elapsed_s=self.elapsed_s - earlier.elapsed_s,
        )

    def plus(self, other: UsageSnapshot) -> UsageSnapshot:
        """Two judges' usage added up (the elapsed time is the longer one)."""
        return UsageSnapshot(
            calls=self.calls + other.calls,
            cache_hits=self.cache_hits + other.cache_hits,
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cost_usd=self.cost_usd + other.cost_usd,
            cost_known=self.cost_known and other.cost_known,
            cached_cost_usd=self.cached_cost_usd + other.cached_cost_usd,
            cached_input_tokens=self.cached_input_tokens + other.cached_input_tokens,
            cached_output_tokens=self.cached_output_tokens + other.cached_output_tokens,
            total_latency_ms=self.total_latency_ms + other.total_latency_ms,
            rate_limited=self.rate_limited + other.rate_limited,
            retries=self.retries + other.retries,
            failures=self.failures + other.failures,
            concurrency=self.concurrency + other.concurrency,
            elapsed_s=max(self.elapsed_s, other.elapsed_s),
        )

    def as_fields(self) -> dict[str, float | int | bool | None]:
        """Flat fields for the runs log and Dagster metadata (cost is None when unknown)."""
        fields: dict[str, float | int | bool | None] = {
            "llm_calls": self.calls,
            "llm_cache_hits": self.cache_hits,
            "llm_input_tokens": self.input_tokens,
            "llm_output_tokens": self.output_tokens,
            "llm_cost_usd": round(self.cost_usd, 6) if self.cost_known else None,
            "llm_rate_limited": self.rate_limited,
            "llm_retries": self.retries,
            "llm_failures": self.failures,
        }
        return fields

    def as_dict(self) -> dict[str, float | int | bool]:
        """Every counter, plus ``mean_latency_ms`` (named apart from the total it divides)."""
        return {**asdict(self), "mean_latency_ms": self.mean_latency_ms}


@dataclass
class LLMUsage:
    """Thread-safe counters of one judge (or of a whole process, see ``registry``)."""

    started: float = field(default_factory=time.monotonic)
    parent: LLMUsage | None = None  # also counts everything recorded here (the process total)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _calls: int = 0
    _cache_hits: int = 0
    _input_tokens: int = 0
    _output_tokens: int = 0
    _cost_usd: float = 0.0
    _cost_known: bool = True
    _cached_cost_usd: float = 0.0
    _cached_input_tokens: int = 0
    _cached_output_tokens: int = 0
    _latency_ms: float = 0.0
    _rate_limited: int = 0
    _retries: int = 0
    _failures: int = 0

    def record_call(
        self, input_tokens: int, output_tokens: int, cost_usd: float | None, latency_ms: float
    ) -> None:
        """One billed request answered by the server."""
        with self._lock:
            self._calls += 1
            self._latency_ms += latency_ms
            self._input_tokens += input_tokens
            self._output_tokens += output_tokens
            if cost_usd is None:
                self._cost_known = False
            else:
                self._cost_usd += cost_usd
        if self.parent is not None:
            self.parent.record_call(input_tokens, output_tokens, cost_usd, latency_ms)
        else:
            _thread_call(cost_usd, cached=False)

    def record_cache_hit(
        self, input_tokens: int, output_tokens: int, cost_usd: float | None
    ) -> None:
        """One answer served from the cache (tokens and cost: what it took when it was made)."""
        with self._lock:
            self._cache_hits += 1
            self._cached_input_tokens += input_tokens
            self._cached_output_tokens += output_tokens
            self._cached_cost_usd += cost_usd or 0.0
        if self.parent is not None:
            self.parent.record_cache_hit(input_tokens, output_tokens, cost_usd)
        else:
            _thread_call(cost_usd, cached=True)

    def record_rate_limited(self) -> None:
        with self._lock:
            self._rate_limited += 1
        if self.parent is not None:
            self.parent.record_rate_limited()

    def record_retry(self) -> None:
        with self._lock:
            self._retries += 1
        if self.parent is not None:
            self.parent.record_retry()

    def record_failure(self) -> None:
        with self._lock:
            self._failures += 1
        if self.parent is not None:
            self.parent.record_failure()

    @property
    def cost_usd(self) -> float:
        with self._lock:
            return self._cost_usd

    def snapshot(self, concurrency: int = 0) -> UsageSnapshot:
        with self._lock:
            return UsageSnapshot(
                calls=self._calls,
                cache_hits=self._cache_hits,
                input_tokens=self._input_tokens,
                output_tokens=self._output_tokens,
                cost_usd=self._cost_usd,
                cost_known=self._cost_known,
                cached_cost_usd=self._cached_cost_usd,
                cached_input_tokens=self._cached_input_tokens,
                cached_output_tokens=self._cached_output_tokens,
                total_latency_ms=self._latency_ms,
                rate_limited=self._rate_limited,
                retries=self._retries,
                failures=self._failures,
                concurrency=concurrency,
                elapsed_s=time.monotonic() - self.started,
            )


@dataclass
class CallAccount:
    """LLM calls made by one thread inside :func:`call_accounting` (one trace's map call)."""

    calls: int = 0
    cache_hits: int = 0
    cost_usd: float = 0.0
    cost_known: bool = True
    cached_cost_usd: float = 0.0  # what the cached answers cost when they were made


_local = threading.local()


def _thread_call(cost_usd: float | None, *, cached: bool) -> None:
    account: CallAccount | None = getattr(_local, "account", None)
    if account is None:
        return
    if cached:
        account.cache_hits += 1
        account.cached_cost_usd += cost_usd or 0.0
        return
    account.calls += 1
    if cost_usd is None:
        account.cost_known = False
    else:
        account.cost_usd += cost_usd


@contextmanager
def call_accounting() -> Iterator[CallAccount]:
    """Count the LLM calls this thread makes inside the block (for per-trace cost).

    Example::

        with call_accounting() as account:
            output = map_fn(trace)
        print(account.calls, account.cost_usd)
    """
    previous = getattr(_local, "account", None)
    account = CallAccount()
    _local.account = account
    try:
        yield account
    finally:
        _local.account = previous


PROCESS_USAGE = LLMUsage()
"""Everything every judge in this process recorded (never decreases)."""
