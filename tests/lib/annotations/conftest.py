"""Fixtures for the annotation tests: demo traces and a simple failure-mode label task."""

from __future__ import annotations

from typing import Literal

import pytest
from pydantic import BaseModel, Field

from manta_lib.annotations import Annotations, AnnotationTask
from manta_lib.demo import seed_demo
from manta_lib.models import EntityLevel
from manta_lib.store import Store


class FailureLabel(BaseModel):
    category: Literal["passed", "looping", "wrong_tool", "other"]
    confident: bool = True
    severity: int | None = Field(default=None, description="1 (minor) to 3 (fatal)")
    note: str = ""


@pytest.fixture
def demo_run(store: Store) -> str:
    """A store seeded with a small demo dataset; returns its largest run."""
    seed_demo(store, traces=120, seed=3)
    return str(
        store.rows("SELECT run_id FROM {db}.traces GROUP BY run_id ORDER BY count() DESC LIMIT 1")[
            0
        ][0]
    )


@pytest.fixture
def task() -> AnnotationTask:
    return AnnotationTask("failure_modes_human", FailureLabel, level=EntityLevel.TRACE)


@pytest.fixture
def ann(store: Store) -> Annotations:
    return Annotations(store)
