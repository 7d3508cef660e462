"""The cost of OTel LLM spans without a cost attribute: the price table's, or unknown (never 0).

The table's answer for a model is remembered (the collector maps thousands of traces a
second); these tests check that remembering changes no answer, for a model the table prices
flat, one it prices by tiers and one it does not know, each priced many times.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from manta_lib.importers.base import Hierarchy
from manta_lib.importers.otel_decode import spans_from_json
from manta_lib.importers.otel_map import trace_from_spans
from manta_lib.llm.prices import table_price
from tests.lib.importers.otlp_builders import genai_agent_trace, request


def _mapped(model: str, traces: int, input_tokens: int) -> list[dict[str, Any]]:
    out = []
    for number in range(1, traces + 1):
        text = json.dumps(request(genai_agent_trace(number), {"manta.run_id": "run_cost"}))
        text = text.replace('"m-1"', json.dumps(model))
        text = text.replace('"intValue": "10"', f'"intValue": "{input_tokens}"')
        out.append(trace_from_spans(spans_from_json(json.loads(text)), Hierarchy()))
    return out


def _calls(trace: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in trace["spans"] if s["kind"] == "llm"]


def test_an_unknown_model_stays_unknown_for_every_call() -> None:
    for trace in _mapped("no-such-model-x", 5, 10):
        assert trace["cost_usd"] is None
        assert "cost_estimated" not in trace["meta"]
        assert [s["cost_usd"] for s in _calls(trace)] == [None, None]


@pytest.mark.parametrize(
    ("model", "input_tokens"),
    [("gpt-4o-mini-2024-07-18", 10), ("gemini-1.5-pro", 300_000)],  # flat; tiered by prompt
)
def test_a_known_model_is_priced_by_the_table_on_every_call(model: str, input_tokens: int) -> None:
    for trace in _mapped(model, 5, input_tokens):
        calls = _calls(trace)
        expected = [
            float(table_price(model, s["tokens_input"], s["tokens_output"]).total_price)
            for s in calls
        ]
        assert [s["cost_usd"] for s in calls] == pytest.approx(expected, rel=1e-12)
        assert all(s["attributes"]["cost_estimated"] for s in calls)
        assert trace["cost_usd"] == pytest.approx(sum(expected), rel=1e-12) and trace["cost_usd"]
        assert trace["meta"]["cost_estimated"] is True
