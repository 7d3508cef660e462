"""read_ahead: items in order, the producer's error raised in the consumer, a stop that stops."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from manta_lib.read_ahead import read_ahead


def test_items_arrive_in_order_and_the_producer_stays_at_most_depth_ahead() -> None:
    made: list[int] = []

    def produce() -> Iterator[int]:
        for i in range(10):
            made.append(i)
            yield i

    stream = read_ahead(produce(), depth=2)
    assert next(stream) == 0
    time.sleep(0.3)  # let the thread fill the queue
    assert len(made) <= 1 + 2 + 1  # the one taken, two queued, one waiting to be put
    assert [0, *stream] == list(range(10))


def test_an_error_of_the_producer_is_raised_in_the_consumer_after_the_items_before_it() -> None:
    def produce() -> Iterator[int]:
        yield 1
        raise ValueError("bad batch")

    got: list[int] = []
    with pytest.raises(ValueError, match="bad batch"):
        for item in read_ahead(produce()):
            got.append(item)
    assert got == [1]


def test_closing_early_stops_the_thread() -> None:
    def endless() -> Iterator[int]:
        i = 0
        while True:
            yield i
            i += 1

    stream = read_ahead(endless(), name="manta-test-read-ahead")
    assert next(stream) == 0
    stream.close()
    names = [t.name for t in threading.enumerate()]
    assert "manta-test-read-ahead" not in names


def test_a_producer_left_at_a_yield_is_closed_on_its_thread_when_the_consumer_stops() -> None:
    """What the producer holds (an open query stream) is released as soon as the consumer
    stops, by the producer's thread, not later by the garbage collector on another thread:
    an open chDB stream blocks the store's other queries until it is closed."""
    closed_on: list[str] = []

    def produce() -> Iterator[int]:
        try:
            yield from range(100)
        finally:
            closed_on.append(threading.current_thread().name)

    stream = read_ahead(produce(), name="manta-test-producer")
    assert next(stream) == 0
    stream.close()
    assert closed_on == ["manta-test-producer"]
