"""SQL of the LLM response cache (``llm_cache``): bulk load of one namespace, batched inserts.

A namespace is one judge configuration (model, system prompt, schema, sampling parameters);
its rows are read in one query when a judge first needs them, so a cached run never costs one
query per call. The table is a ReplacingMergeTree keyed by (namespace, key): writing an answer
again replaces it, the newest wins.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from manta_lib.store.client import Store
from manta_lib.store.schema import LLM_CACHE_DDL

LLM_CACHE_COLUMNS = (
    "namespace",
    "key",
    "model",
    "response",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "latency_ms",
    "created_at",
)


class CachedRow(NamedTuple):
    """One cached answer: the raw response text and what producing it cost."""

    response: str
    input_tokens: int
    output_tokens: int
    cost_usd: float | None
    latency_ms: float


def ensure_llm_cache_table(store: Store) -> None:
    """Create ``llm_cache`` if missing (idempotent, also for stores created before it existed)."""
    store.command(LLM_CACHE_DDL)


def iter_namespace(
    store: Store, namespace: str, not_before: datetime | None
) -> Iterator[tuple[str, CachedRow]]:
    """Every (key, row) of ``namespace`` written at or after ``not_before`` (newest per key)."""
    params: dict[str, Any] = {"namespace": namespace}
    age_filter = ""
    if not_before is not None:
        age_filter = "AND created_at >= {not_before:DateTime64(3, 'UTC')}"
        params["not_before"] = not_before
    query = f"""
        SELECT key, argMax(response, created_at), argMax(input_tokens, created_at),
               argMax(output_tokens, created_at), argMax(cost_usd, created_at),
               argMax(latency_ms, created_at)
        FROM {{db}}.llm_cache
        WHERE namespace = {{namespace:String}} {age_filter}
        GROUP BY key
    """
    with store.stream(query, params) as blocks:
        for block in blocks:
            for key, response, tokens_in, tokens_out, cost, latency in block:
                yield key, CachedRow(response, int(tokens_in), int(tokens_out), cost, latency)


def insert_rows(store: Store, columns: Mapping[str, Sequence[Any]]) -> None:
    """Insert buffered cache rows (column-oriented, one insert per flush)."""
    store.insert_columns("llm_cache", {name: columns[name] for name in LLM_CACHE_COLUMNS})
