"""LLM provider faults (issue 26, point 7), against the loopback OpenAI-compatible server: a
429 asking to wait a day fails that call with the reason within the configured cap instead of
stalling every thread; the cost cap counts a call at the larger of its reported cost and its
pre-call bound, and flags a reported cost above the bound; a 200 with an HTML page says what
the server sent."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from manta_lib.errors import LLMError
from manta_lib.llm import LLMJudge
from manta_lib.llm.scope import LLMRunScope
from tests.lib.fake_openai import FakeOpenAIServer, Fault
from tests.lib.llm.conftest import fake, llm_settings, make_judge  # noqa: F401 - fixtures

Judge = Callable[..., LLMJudge[Any]]


def test_retry_after_beyond_the_cap_fails_the_call_with_the_reason(
    fake: FakeOpenAIServer,  # noqa: F811
    make_judge: Judge,  # noqa: F811
) -> None:
    judge = make_judge(llm={"max_retry_wait_s": 1.0}, cache=False)
    fake.plan(Fault(429, retry_after=100_000))
    started = time.monotonic()
    with pytest.raises(LLMError) as failed:
        judge("trajectory one")
    assert time.monotonic() - started < 30
    assert "100,000 s (Retry-After)" in str(failed.value)
    assert "MANTA_LLM_MAX_RETRY_WAIT_S=1 s" in str(failed.value)
    # the pause other threads see is the cap, not a day: the next call gets through
    assert judge("trajectory two") is not None
    assert time.monotonic() - started < 30


def test_html_page_with_200_says_what_the_server_sent(
    fake: FakeOpenAIServer,  # noqa: F811
    make_judge: Judge,  # noqa: F811
) -> None:
    judge = make_judge(cache=False)
    fake.plan(Fault("html"))
    with pytest.raises(LLMError) as failed:
        judge("trajectory")
    message = str(failed.value)
    assert "HTTP 200 (text/html)" in message and "Sign in to the gateway" in message
    assert "AttributeError" not in message


def test_cost_cap_counts_the_larger_of_reported_and_bound_and_flags_the_excess(
    fake: FakeOpenAIServer,  # noqa: F811
    make_judge: Judge,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    judge = make_judge(max_tokens=60, cache=False)
    with LLMRunScope(max_cost_usd=1.0) as scope:
        judge("a short trajectory")
        assert scope.budget is not None
        bound = scope.budget.spent_usd
        reported = scope.usage().cost_usd
        assert 0 < reported < bound  # under-reported against the bound: the bound counts
        fake.plan(Fault("huge_usage"))
        judge("another trajectory")
        assert scope.budget.over_bound == 1
        assert scope.budget.spent_usd > 100  # a billion tokens, counted as reported
    assert "above the" in caplog.text and "bound computed before it" in caplog.text
