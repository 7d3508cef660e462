"""The judge client against a real loopback OpenAI-compatible server: structured answers,
validation retries, refused requests, context limits, preflight and prices."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import pytest
from genai_prices import Usage, calc_price

from manta_lib.errors import ConfigError, LLMError
from manta_lib.llm import LLMJudge, LLMSettings, ModelPrice
from tests.lib.fake_openai import FakeOpenAIServer, Fault, completion_tokens, prompt_tokens
from tests.lib.llm.conftest import MODEL, FailureMode

Judge = Callable[..., LLMJudge[Any]]


def test_structured_round_trip_sends_a_strict_schema_and_prices_the_usage(
    fake: FakeOpenAIServer, make_judge: Judge
) -> None:
    judge = make_judge(cache=False)
    answer = judge.complete("the agent called `python` with a bad path three times")

    assert isinstance(answer.value, FailureMode)
    assert not answer.cached
    [request] = fake.requests
    response_format = request["response_format"]
    assert response_format["type"] == "json_schema"
    assert response_format["json_schema"]["strict"] is True
    schema = response_format["json_schema"]["schema"]
    assert set(schema["required"]) == {"category", "rationale"}
    assert schema["additionalProperties"] is False
    assert request["messages"][0] == {
        "role": "system",
        "content": "Classify the failure mode of this agent trajectory.",
    }
    assert request["temperature"] == 0

    expected_in = prompt_tokens(request["messages"])
    expected_out = completion_tokens(answer.value.model_dump_json())
    assert (answer.input_tokens, answer.output_tokens) == (expected_in, expected_out)
    table = calc_price(
        Usage(input_tokens=expected_in, output_tokens=expected_out),
        model_ref=MODEL,
        provider_id="openai",
    )
    assert answer.cost_usd == pytest.approx(float(table.total_price), rel=1e-9)
    usage = judge.usage.snapshot()
    assert (usage.calls, usage.input_tokens, usage.output_tokens) == (1, expected_in, expected_out)
    assert usage.cost_usd == pytest.approx(float(table.total_price), rel=1e-9)


def test_a_schema_violation_is_asked_again_once_with_the_error(
    fake: FakeOpenAIServer, make_judge: Judge
) -> None:
    judge = make_judge(cache=False)
    fake.plan(Fault("schema"))
    verdict = judge("trajectory text")

    assert isinstance(verdict, FailureMode)
    first, second = fake.requests
    correction = second["messages"][-1]["content"]
    assert "did not match the required JSON schema" in correction
    assert "category" in correction  # the pydantic error names the field
    assert second["messages"][-2]["role"] == "assistant"
    assert judge.usage.snapshot().calls == 2
    assert judge.usage.snapshot().retries == 1


def test_two_invalid_answers_fail_that_input_only(
    fake: FakeOpenAIServer, make_judge: Judge
) -> None:
    judge = make_judge(cache=False)
    fake.plan(Fault("malformed"), Fault("schema"))
    with pytest.raises(LLMError, match="answered twice without matching FailureMode"):
        judge("first trajectory")
    assert isinstance(judge("second trajectory"), FailureMode)
    assert judge.usage.snapshot().failures == 1


def test_server_errors_are_retried_and_other_4xx_fail_at_once_with_the_message(
    fake: FakeOpenAIServer, make_judge: Judge
) -> None:
    judge = make_judge(cache=False)
    fake.plan(Fault(500), Fault(503))
    assert isinstance(judge("retried"), FailureMode)
    assert fake.stats()["chat_requests"] == 3

    fake.plan(Fault(400, message="Invalid value for 'temperature'"))
    with pytest.raises(LLMError, match=r"HTTP 400: Invalid value for 'temperature'"):
        judge("refused")
    assert fake.stats()["chat_requests"] == 4  # no retry


def test_retries_give_up_with_the_last_reason(fake: FakeOpenAIServer, make_judge: Judge) -> None:
    judge = make_judge(cache=False, llm={"max_retries": 1})
    fake.plan(Fault(502), Fault(502))
    with pytest.raises(LLMError, match=r"failed 2 times; last: HTTP 502"):
        judge("down")


def test_a_prompt_over_the_context_window_says_so_with_its_size(
    make_judge: Judge, fake: FakeOpenAIServer
) -> None:
    fake.context_tokens = 100
    judge = make_judge(cache=False)
    with pytest.raises(LLMError, match=r"prompt of [\d,]+ characters is over the context window"):
        judge("x" * 2000)

    local = make_judge(cache=False, context_window=50)
    before = fake.stats()["chat_requests"]
    with pytest.raises(LLMError, match=r"prompt of 2,\d+ characters \(~\d+ tokens\) is over"):
        local("y" * 2000)
    assert fake.stats()["chat_requests"] == before  # refused without a call


def test_preflight_names_what_to_set(
    make_judge: Judge, settings: Any, unused_url: str, fake: FakeOpenAIServer
) -> None:
    make_judge().preflight()  # reachable, key accepted

    no_key = LLMJudge(MODEL, FailureMode, settings=LLMSettings(), cache=False)
    with pytest.raises(ConfigError, match="OPENAI_API_KEY is not set"):
        no_key.preflight()

    unreachable = LLMJudge(
        MODEL, FailureMode, settings=LLMSettings(base_url=unused_url, timeout_s=2), cache=False
    )
    with pytest.raises(ConfigError, match=r"cannot reach the LLM server at OPENAI_BASE_URL="):
        unreachable.preflight()


def test_an_unknown_model_warns_and_reports_cost_as_unknown(
    make_judge: Judge, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        judge = make_judge(model="acme-private-7b", cache=False)
        answer = judge.complete("text")
    assert answer.cost_usd is None
    usage = judge.usage.snapshot()
    assert not usage.cost_known
    assert usage.as_fields()["llm_cost_usd"] is None
    assert "no price known for model 'acme-private-7b'" in caplog.text

    priced = make_judge(
        model="acme-private-7b", cache=False, price=ModelPrice(2.0, 8.0, context_window=4096)
    )
    answer = priced.complete("text")
    assert answer.cost_usd == pytest.approx(
        (answer.input_tokens * 2.0 + answer.output_tokens * 8.0) / 1e6
    )
    assert priced.context_window == 4096


def test_prices_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    prices = {"acme-7b": {"input_per_mtok": 1, "output_per_mtok": 3}}
    monkeypatch.setenv("MANTA_LLM_PRICES", json.dumps(prices))
    from manta_lib.llm import PriceTable, load_llm_settings

    llm = load_llm_settings()
    table = PriceTable.from_settings(llm.prices, llm.provider)
    assert table.cost("acme-7b", 1_000_000, 1_000_000) == pytest.approx(4.0)

    monkeypatch.setenv("MANTA_LLM_PRICES", '{"acme-7b": {"input": 1}}')
    llm = load_llm_settings()
    with pytest.raises(ConfigError, match=r"MANTA_LLM_PRICES entry for 'acme-7b'"):
        PriceTable.from_settings(llm.prices, llm.provider)


@pytest.fixture
def unused_url() -> str:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def test_the_llm_environment_for_remote_workers() -> None:
    from manta_lib.llm.settings import llm_worker_environment

    environ = {
        "OPENAI_API_KEY": "sk-1",
        "OPENAI_BASE_URL": "http://vllm:8000/v1",
        "MANTA_LLM_RPM": "600",
        "MANTA_LLM_CACHE": "",
        "CLICKHOUSE_PASSWORD": "secret",
        "HOME": "/root",
    }
    assert llm_worker_environment(environ) == {
        "OPENAI_API_KEY": "sk-1",
        "OPENAI_BASE_URL": "http://vllm:8000/v1",
        "MANTA_LLM_RPM": "600",
    }


def test_usage_names_the_mean_latency_and_the_total_apart(
    fake: FakeOpenAIServer, make_judge: Judge
) -> None:
    fake.latency = 0.03
    judge = make_judge(cache=False)
    answers = [judge.complete(f"trajectory {i}") for i in range(5)]
    usage = judge.usage.snapshot()
    per_call = [a.latency_ms for a in answers]
    assert usage.calls == 5 and min(per_call) >= 30
    assert usage.total_latency_ms == pytest.approx(sum(per_call))
    # The mean is a mean: it was once the sum under the mean's name.
    assert usage.mean_latency_ms == pytest.approx(sum(per_call) / 5)
    assert usage.mean_latency_ms <= max(per_call)
    assert usage.mean_latency_s == pytest.approx(usage.mean_latency_ms / 1000)
    fields = usage.as_dict()
    assert fields["mean_latency_ms"] == pytest.approx(sum(per_call) / 5)
    assert fields["total_latency_ms"] == pytest.approx(sum(per_call))
    assert "latency_ms" not in fields  # no ambiguous name left in the dict


@pytest.mark.parametrize(
    ("model", "tokens_in", "tokens_out"),
    [
        ("gpt-4o-mini-2024-07-18", 15235, 281),
        ("gpt-4o-2024-08-06", 153, 3),
        ("gemini-1.5-pro", 300_000, 100),  # a price tiered by prompt length
        ("llama3.1", 66, 2),  # not in the table: unknown
    ],
)
def test_the_fast_estimate_is_the_table_price(model: str, tokens_in: int, tokens_out: int) -> None:
    from manta_lib.llm.prices import estimate_cost, table_price

    reference = table_price(model, tokens_in, tokens_out)
    estimate = estimate_cost(model, tokens_in, tokens_out)
    if reference is None:
        assert estimate is None
    else:
        assert estimate == pytest.approx(float(reference.total_price), rel=1e-12)
