"""The collector runs less often while a computation runs, and is restored after."""

from __future__ import annotations

import gc
import threading

from manta_lib.gc_pacing import RUN_THRESHOLDS, relaxed_gc


def test_thresholds_and_frozen_objects_are_restored_after_nested_blocks() -> None:
    gc.unfreeze()
    before = gc.get_threshold()
    frozen = gc.get_freeze_count()
    with relaxed_gc():
        assert gc.get_threshold() == tuple(
            max(a, b) for a, b in zip(before, RUN_THRESHOLDS, strict=True)
        )
        assert gc.get_freeze_count() > frozen  # what existed before is left out of passes
        with relaxed_gc():
            pass
        assert gc.get_threshold() != before  # the inner block does not end the outer one
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == frozen


def test_cycles_made_during_a_run_are_still_collected() -> None:
    collected = threading.Event()

    class Node:
        def __init__(self) -> None:
            self.me = self

        def __del__(self) -> None:
            collected.set()

    with relaxed_gc():
        Node()
        gc.collect()
    assert collected.is_set()


def test_objects_frozen_by_someone_else_stay_frozen() -> None:
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        with relaxed_gc():
            pass
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()


def test_a_disabled_collector_stays_disabled() -> None:
    gc.disable()
    try:
        with relaxed_gc():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()
