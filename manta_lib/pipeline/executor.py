"""Apply a user function to many items in a thread pool, isolating each item's failure.

One item's exception, invalid output or timeout becomes an error string for that item and
never stops the others. CPU-bound functions are submitted in chunks (a future per item costs
more than a trivial map function); with a timeout, or for I/O-bound (``uses_llm``) functions,
every item gets its own future so a slow one cannot hold others back.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError

T = TypeVar("T")


@dataclass(slots=True)
class ItemResult(Generic[T]):
    """The outcome of one item: a validated output or an error text."""

    item: T
    output: BaseModel | None
    error: str | None
    seconds: float


def describe_exception(exc: BaseException) -> str:
    """``Type: message`` (first line of each pydantic error for invalid outputs)."""
    if isinstance(exc, PydanticValidationError):
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'output'}: {err['msg']}"
            for err in exc.errors()[:5]
        )
        return f"InvalidOutput: {exc.title} does not match the schema ({problems})"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def validate_output(raw: Any, schema: type[BaseModel]) -> BaseModel:
    """Accept an instance of ``schema`` or a mapping validated into it."""
    if isinstance(raw, schema):
        return raw
    if isinstance(raw, BaseModel):
        raw = raw.model_dump()
    if not isinstance(raw, dict):
        raise TypeError(
            f"the function returned {type(raw).__name__}, expected a {schema.__name__} "
            f"instance or a dict of its fields"
        )
    return schema.model_validate(raw)


class IsolatedExecutor:
    """A thread pool that maps ``fn`` over items with per-item error isolation."""

    def __init__(self, max_workers: int, *, timeout_s: float | None = None, chunked: bool) -> None:
        self.max_workers = max(1, max_workers)
        self.timeout_s = timeout_s
        self.chunked = chunked and timeout_s is None
        self._pool = ThreadPoolExecutor(self.max_workers, thread_name_prefix="manta-map")

    def close(self) -> None:
        # Abandon threads stuck past their timeout instead of waiting for them.
        self._pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> IsolatedExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def map(
        self,
        fn: Callable[[T], Any],
        items: Sequence[T],
        schema: type[BaseModel],
        *,
        stop: threading.Event | None = None,
    ) -> Iterator[list[ItemResult[T]]]:
        """Yield results in groups as they complete (order not guaranteed)."""
        if not items:
            return
        if self.chunked:
            yield from self._map_chunked(fn, items, schema, stop)
        else:
            yield from self._map_each(fn, items, schema, stop)

    @staticmethod
    def _one(fn: Callable[[T], Any], item: T, schema: type[BaseModel]) -> ItemResult[T]:
        started = time.perf_counter()
        try:
            output = validate_output(fn(item), schema)
            return ItemResult(item, output, None, time.perf_counter() - started)
        except Exception as exc:  # noqa: BLE001 - isolation is the point
            return ItemResult(item, None, describe_exception(exc), time.perf_counter() - started)

    def _map_chunked(
        self,
        fn: Callable[[T], Any],
        items: Sequence[T],
        schema: type[BaseModel],
        stop: threading.Event | None,
    ) -> Iterator[list[ItemResult[T]]]:
        size = max(1, min(64, len(items) // (self.max_workers * 4) or 1))

        def run_chunk(chunk: Sequence[T]) -> list[ItemResult[T]]:
            results = []
            for item in chunk:
                if stop is not None and stop.is_set():
                    break
                results.append(self._one(fn, item, schema))
            return results

        futures = [
            self._pool.submit(run_chunk, items[i : i + size]) for i in range(0, len(items), size)
        ]
        try:
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield future.result()
        finally:
            for future in futures:
                future.cancel()

    def _map_each(
        self,
        fn: Callable[[T], Any],
        items: Sequence[T],
        schema: type[BaseModel],
        stop: threading.Event | None,
    ) -> Iterator[list[ItemResult[T]]]:
        started_at: dict[int, float] = {}

        def run_one(index: int, item: T) -> ItemResult[T]:
            started_at[index] = time.monotonic()
            if stop is not None and stop.is_set():
                return ItemResult(item, None, "Cancelled: the computation was stopped", 0.0)
            return self._one(fn, item, schema)

        futures: dict[Future[ItemResult[T]], int] = {
            self._pool.submit(run_one, i, item): i for i, item in enumerate(items)
        }
        pending = set(futures)
        try:
            while pending:
                done, pending = wait(pending, timeout=0.05, return_when=FIRST_COMPLETED)
                batch = [future.result() for future in done]
                if self.timeout_s is not None:
                    now = time.monotonic()
                    for future in list(pending):
                        index = futures[future]
                        began = started_at.get(index)
                        if began is not None and now - began > self.timeout_s:
                            pending.discard(future)
                            future.cancel()
                            batch.append(
                                ItemResult(
                                    items[index],
                                    None,
                                    f"TimeoutError: no result after {self.timeout_s:g} s",
                                    now - began,
                                )
                            )
                if batch:
                    yield batch
        finally:
            for future in pending:
                future.cancel()
