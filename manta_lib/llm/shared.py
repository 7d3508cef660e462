"""What every LLM judge of this process shares: one adaptive limiter per endpoint, one response
cache per store, the store bound by the computation in progress, and the usage totals."""

from __future__ import annotations

import threading

from manta_lib.llm.cache import ResponseCache
from manta_lib.llm.concurrency import AdaptiveLimiter
from manta_lib.llm.settings import LLMSettings
from manta_lib.llm.usage import PROCESS_USAGE, UsageSnapshot
from manta_lib.settings import MantaSettings, load_settings
from manta_lib.store.client import Store

_limiters: dict[str, AdaptiveLimiter] = {}
_caches: dict[tuple[str, float | None], ResponseCache] = {}
_bound_settings: MantaSettings | None = None
_lock = threading.Lock()


def shared_limiter(endpoint: str, settings: LLMSettings) -> AdaptiveLimiter:
    """One adaptive limiter per endpoint (and limit settings): all judges and threads calling it
    share its concurrency and rate limits."""
    key = (
        f"{endpoint}|{settings.concurrency}|{settings.max_concurrency}|"
        f"{settings.requests_per_minute}|{settings.tokens_per_minute}"
    )
    with _lock:
        limiter = _limiters.get(key)
        if limiter is None:
            limiter = AdaptiveLimiter(
                settings.concurrency,
                settings.max_concurrency,
                requests_per_minute=settings.requests_per_minute,
                tokens_per_minute=settings.tokens_per_minute,
            )
            _limiters[key] = limiter
        return limiter


def shared_cache(
    manta_settings: MantaSettings | None, store: Store | None, settings: LLMSettings
) -> ResponseCache:
    """One response cache per store: every judge sees the answers the others just made.

    Without explicit settings, the store is the one bound by the computation in progress
    (:func:`bind_store_settings`), else the environment's.
    """
    if store is not None:
        where = f"store:{id(store)}"
    else:
        manta_settings = manta_settings or _bound_settings or load_settings()
        where = f"{manta_settings.clickhouse_dsn}|{manta_settings.database}"
    key = (where, settings.cache_max_age_days)
    with _lock:
        cache = _caches.get(key)
        if cache is None:
            cache = ResponseCache(
                manta_settings,
                store=store,
                max_age_days=settings.cache_max_age_days,
                flush_seconds=settings.flush_seconds,
            )
            _caches[key] = cache
        return cache


def bind_store_settings(settings: MantaSettings | None) -> MantaSettings | None:
    """Make ``settings`` the store of judges that were given none; returns the previous one."""
    global _bound_settings
    with _lock:
        previous, _bound_settings = _bound_settings, settings
    return previous


def total_usage() -> UsageSnapshot:
    """Usage of every judge this process has had; concurrency: the live limiters' limits."""
    with _lock:
        concurrency = sum(limiter.limit for limiter in _limiters.values())
    return PROCESS_USAGE.snapshot(concurrency)


def flush_all() -> None:
    """Write every cache's buffered rows now."""
    with _lock:
        caches = list(_caches.values())
    for cache in caches:
        cache.flush()


def close_all() -> None:
    """Flush every cache and release its store connection (reopened on next use)."""
    with _lock:
        caches = list(_caches.values())
    for cache in caches:
        cache.close()
