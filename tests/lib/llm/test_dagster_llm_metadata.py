"""The failure-mode judge as a Dagster asset: its materialization metadata carries the LLM
judges' calls, cache hits, tokens and dollars."""

from __future__ import annotations

from types import ModuleType

import dagster as dg
import pytest

from manta_dagster.assets import level_key
from manta_lib.demo import seed_demo
from manta_lib.models import EntityLevel
from manta_lib.store import Store
from tests.dagster.helpers import all_shards, build, materialize, metadata_values, register
from tests.lib.fake_openai import FakeOpenAIServer


@pytest.mark.slow
def test_map_asset_metadata_has_the_llm_fields(
    example: ModuleType, fake: FakeOpenAIServer, store: Store
) -> None:
    seed_demo(store, traces=120, seed=3)
    run_id = store.rows(
        "SELECT run_id FROM {db}.traces GROUP BY run_id ORDER BY count() DESC LIMIT 1"
    )[0][0]
    defs = build([example.pipeline])
    with dg.instance_for_test() as instance:
        register(instance, run_id)
        key = level_key(example.pipeline, EntityLevel.TRACE)
        result = materialize(defs, instance, [key], tags=all_shards(run_id))
    meta = metadata_values(result.get_asset_materialization_events()[0].materialization)
    assert meta["llm_calls"] == fake.stats()["completions"] > 0
    assert meta["llm_cache_hits"] == 0
    assert float(meta["llm_cost_usd"]) > 0  # type: ignore[arg-type]
    assert meta["llm_rate_limited"] == 0
