"""Adaptive concurrency (AIMD) and optional request/token rate limits, shared by all threads.

The limit starts at ``initial``; every overload signal (HTTP 429, a timeout) halves it, at most
once per round of requests in flight (the requests sent before a cut do not cut it again), and
pauses every thread for the server's ``Retry-After``; under a known request rate it is never
cut below what that rate needs (rate x latency); every success adds ``1 / limit``, so the
limit grows by about one per round trip, never above ``ceiling``. Requests-per-minute and
tokens-per-minute limits are token buckets refilled continuously; when not configured, they are
learned from the ``x-ratelimit-limit-requests`` / ``x-ratelimit-limit-tokens`` headers that
OpenAI, Azure and other providers send with every answer.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass


class TokenBucket:
    """A continuously refilled bucket: ``rate`` units per second, at most ``burst`` stored.

    ``take`` may drive the level below zero (a large request), which later takes wait out.
    """

    def __init__(self, rate_per_s: float, burst: float) -> None:
        self.rate = rate_per_s
        self.burst = max(burst, 1.0)
        self._level = self.burst
        self._stamp = time.monotonic()

    def wait_time(self, amount: float, now: float) -> float:
        """Seconds until ``amount`` can be taken (0 when it can be taken now)."""
        self._level = min(self.burst, self._level + (now - self._stamp) * self.rate)
        self._stamp = now
        needed = min(amount, self.burst)
        return 0.0 if self._level >= needed else (needed - self._level) / self.rate

    def take(self, amount: float) -> None:
        self._level -= amount

    def give_back(self, amount: float) -> None:
        self._level = min(self.burst, self._level + amount)


@dataclass
class Permit:
    """A slot held by one request; ``epoch`` tells whether a later cut already happened."""

    epoch: int
    tokens: float


class AdaptiveLimiter:
    """AIMD concurrency limit plus optional RPM/TPM buckets, for one process.

    Use::

        with limiter.slot(estimated_tokens) as permit:
            ...send...
        limiter.on_success(permit)   # or limiter.on_overload(permit, retry_after)
    """

    def __init__(
        self,
        initial: int = 8,
        ceiling: int = 64,
        *,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        decrease_factor: float = 0.5,
    ) -> None:
        self.ceiling = max(1, ceiling)
        self._limit = float(min(max(1, initial), self.ceiling))
        self.decrease_factor = decrease_factor
        self.requests_per_minute = requests_per_minute
        self.tokens_per_minute = tokens_per_minute
        self._in_flight = 0
        self._epoch = 0
        self._paused_until = 0.0
        self._cond = threading.Condition()
        self._configured_rpm = requests_per_minute is not None
        self._configured_tpm = tokens_per_minute is not None
        self._rpm = _request_bucket(requests_per_minute) if requests_per_minute else None
        self._tpm = _token_bucket(tokens_per_minute) if tokens_per_minute else None
        self._recent_sends: deque[float] = deque(maxlen=4096)
        self._latency_s: float | None = None  # moving average of answered requests
        self.cuts = 0

    @property
    def limit(self) -> int:
        """The current concurrency limit (whole requests)."""
        with self._cond:
            return int(self._limit)

    @property
    def in_flight(self) -> int:
        with self._cond:
            return self._in_flight

    @contextmanager
    def slot(self, estimated_tokens: float = 0.0) -> Iterator[Permit]:
        """Wait for a free slot (and rate budget), hold it for the block."""
        permit = self._acquire(estimated_tokens)
        try:
            yield permit
        finally:
            with self._cond:
                self._in_flight -= 1
                self._cond.notify()

    def _acquire(self, tokens: float) -> Permit:
        with self._cond:
            while True:
                now = time.monotonic()
                wait = self._paused_until - now
                if wait <= 0 and self._in_flight >= int(self._limit):
                    self._cond.wait()
                    continue
                if wait <= 0 and self._rpm is not None:
                    wait = self._rpm.wait_time(1.0, now)
                if wait <= 0 and self._tpm is not None and tokens:
                    wait = self._tpm.wait_time(tokens, now)
                if wait > 0:
                    self._cond.wait(timeout=wait)
                    continue
                if self._rpm is not None:
                    self._rpm.take(1.0)
                if self._tpm is not None and tokens:
                    self._tpm.take(tokens)
                self._in_flight += 1
                self._recent_sends.append(now)
                return Permit(self._epoch, tokens)

    def on_success(
        self, permit: Permit, actual_tokens: float | None = None, latency_s: float | None = None
    ) -> None:
        """Additive increase; corrects the token bucket with the tokens really used."""
        with self._cond:
            if latency_s is not None:
                self._latency_s = (
                    latency_s
                    if self._latency_s is None
                    else (0.9 * self._latency_s + 0.1 * latency_s)
                )
            if self._limit < self.ceiling:
                before = int(self._limit)
                self._limit = min(float(self.ceiling), self._limit + 1.0 / self._limit)
                if int(self._limit) > before:
                    self._cond.notify()
            if self._tpm is not None and actual_tokens is not None:
                delta = actual_tokens - permit.tokens
                if delta > 0:
                    self._tpm.take(delta)
                else:
                    self._tpm.give_back(-delta)

    def learn_limits(self, headers: Mapping[str, str] | None) -> None:
        """Adopt the provider's per-minute limits from its headers (configured limits win)."""
        if headers is None:
            return
        rpm = _header_number(headers, "x-ratelimit-limit-requests")
        tpm = _header_number(headers, "x-ratelimit-limit-tokens")
        if rpm is None and tpm is None:
            return
        with self._cond:
            if rpm and not self._configured_rpm and rpm != self.requests_per_minute:
                self.requests_per_minute = rpm
                self._rpm = _request_bucket(rpm)
                # What went out unpaced in the last second counts against the new budget.
                now = time.monotonic()
                self._rpm.take(sum(1 for sent in self._recent_sends if now - sent < 1.0))
            if tpm and not self._configured_tpm and tpm != self.tokens_per_minute:
                self.tokens_per_minute = tpm
                self._tpm = _token_bucket(tpm)

    def on_overload(self, permit: Permit, retry_after: float | None = None) -> None:
        """Multiplicative decrease (once per round in flight) and a pause for ``retry_after``."""
        with self._cond:
            if permit.epoch == self._epoch:
                self._limit = max(self._floor(), self._limit * self.decrease_factor)
                self._epoch += 1
                self.cuts += 1
            if retry_after and retry_after > 0:
                self._paused_until = max(self._paused_until, time.monotonic() + retry_after)

    def _floor(self) -> float:
        """The fewest requests in flight that can still reach a known request rate.

        Under a paced rate, a 429 is arrival jitter at the provider, not too many requests in
        flight: halving below rate x latency (Little's law) would only lose throughput.
        """
        if self._rpm is None or self._latency_s is None:
            return 1.0
        needed = self._rpm.rate * self._latency_s * 1.2
        return float(min(self.ceiling, max(1, math.ceil(needed))))


def _request_bucket(per_minute: float) -> TokenBucket:
    # Requests are paced at 95% of the limit with a burst of 1/20 s of them, so a provider that
    # counts per second (or per minute) never sees more than the limit, and a thread that wakes
    # up late does not lose its turn.
    return TokenBucket(0.95 * per_minute / 60.0, per_minute / 60.0 / 20)


def _token_bucket(per_minute: float) -> TokenBucket:
    # A minute's tokens may go out in a burst at the start, as the providers allow.
    return TokenBucket(per_minute / 60.0, per_minute)


def _header_number(headers: Mapping[str, str], name: str) -> float | None:
    value = headers.get(name)
    if not value:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if number > 0 else None
