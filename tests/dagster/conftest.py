"""Fixtures of the Dagster tests: demo data in a fresh chDB database, an ephemeral instance.

Helpers the tests import live in :mod:`tests.dagster.helpers`.
"""

from __future__ import annotations

from collections.abc import Iterator

import dagster as dg
import pytest

from manta_lib.demo import seed_demo
from manta_lib.store import Store
from tests.dagster.helpers import DEMO_TRACES, Demo


@pytest.fixture
def demo(store: Store) -> Demo:
    """300 demo traces (4 runs) in this test's database; the store stays open."""
    seed_demo(store, traces=DEMO_TRACES)
    rows = store.rows("SELECT run_id, count() FROM {db}.traces GROUP BY run_id")
    return Demo({str(run): int(count) for run, count in rows})


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    """An ephemeral Dagster instance (in-memory storage)."""
    with dg.instance_for_test() as test_instance:
        yield test_instance
