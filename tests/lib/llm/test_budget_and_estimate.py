"""Dollar cap and cost estimate on the loopback server: the cap stops before it is crossed and
a resumed run continues without paying twice; the estimate from a sample lands within 10% of
what the full run costs."""

from __future__ import annotations

import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from manta_lib.errors import ConfigError, LLMBudgetExceeded
from manta_lib.llm import LLMJudge, LLMRunScope, ModelPrice, estimate, is_budget_refusal
from tests.lib.fake_openai import FakeOpenAIServer

# Seeded stores or seconds per test: make test runs them, make check leaves them out.
pytestmark = pytest.mark.slow

Judge = Callable[..., LLMJudge[Any]]
PROMPTS = [f"trajectory {i}: " + "step " * (5 * (i % 9)) for i in range(30)]


def _judge_all(judge: LLMJudge[Any], prompts: list[str], workers: int) -> tuple[int, bool]:
    """(answers obtained, whether the budget stopped the run)."""
    done = 0
    stopped = False
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for future in [pool.submit(judge, prompt) for prompt in prompts]:
            try:
                future.result()
                done += 1
            except LLMBudgetExceeded:
                stopped = True
    return done, stopped


@pytest.mark.parametrize("workers", [1, 6])
def test_the_cap_stops_before_it_is_crossed_and_a_resume_continues(
    fake: FakeOpenAIServer, make_judge: Judge, workers: int
) -> None:
    judge = make_judge(max_tokens=60)
    cap = 0.0004
    with LLMRunScope(max_cost_usd=cap) as scope:
        done, stopped = _judge_all(judge, PROMPTS, workers)
        spent = scope.usage().cost_usd
        assert scope.stopped and scope.budget is not None
        counted = scope.budget.spent_usd  # each call at the larger of reported and its bound
        message = scope.budget.message()
    assert stopped
    assert 0 < done < len(PROMPTS)
    assert spent <= counted <= cap
    assert counted > cap / 2  # it used the budget, not stopped at the first call
    assert "run again with a higher max_cost_usd" in message
    stop = scope.stop_error(done, len(PROMPTS))
    assert isinstance(stop, LLMBudgetExceeded) and f"after {done:,} of 30 traces" in str(stop)
    assert is_budget_refusal(f"LLMBudgetExceeded: {message}")
    assert not is_budget_refusal("LLMError: refused") and not is_budget_refusal(None)
    calls_before = fake.stats()["completions"]
    assert calls_before == done

    with LLMRunScope(max_cost_usd=1.0) as resumed:
        done_again, stopped_again = _judge_all(judge, PROMPTS, workers)
        usage = resumed.usage()
    assert (done_again, stopped_again) == (len(PROMPTS), False)
    assert usage.cache_hits == done  # finished answers are not paid twice
    assert usage.calls == len(PROMPTS) - done
    assert fake.stats()["completions"] == len(PROMPTS)


def test_a_cap_on_an_unpriced_model_is_refused_before_any_call(
    fake: FakeOpenAIServer, make_judge: Judge
) -> None:
    judge = make_judge(model="acme-private-7b")
    with (
        pytest.raises(ConfigError, match=r"no price for model 'acme-private-7b'"),
        LLMRunScope(max_cost_usd=5),
    ):
        pass
    with (
        pytest.raises(LLMBudgetExceeded, match="has no price"),
        LLMRunScope(max_cost_usd=5, judges=[]),
    ):
        judge("text")  # a judge the scope did not check is still refused at its first call
    assert fake.stats()["chat_requests"] == 0

    priced = make_judge(model="acme-private-7b", price=ModelPrice(1.0, 2.0))
    with LLMRunScope(max_cost_usd=5, judges=[priced]):
        priced("text")
    assert fake.stats()["completions"] == 1


def test_the_estimate_is_within_ten_percent_of_the_full_run(
    fake: FakeOpenAIServer, make_judge: Judge
) -> None:
    rng = random.Random(7)
    # Transcripts of 20 to 60 turns (a judge's prompt is usually capped by max_chars).
    scope = [f"trace {i}: " + "tool call failed; " * rng.randint(20, 60) for i in range(200)]
    judge = make_judge()
    sample = scope[::4]  # a spread sample of 50
    projected = estimate(judge, sample, len(scope), workers=8)
    assert projected.sample_size == 50 and projected.calls == 200
    assert projected.cache_hit_rate == 0
    assert projected.wall_s > 0 and projected.calls_per_s > 0
    text = "\n".join(projected.lines())
    assert "200 items" in text.replace(",", "") and "$" in text

    with LLMRunScope() as run:
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(judge, scope))
        used = run.usage()
    actual = used.cost_usd + used.cached_cost_usd  # the sample's 50 answers came from the cache
    assert used.cache_hits == 50 and used.calls == 150
    assert projected.cost_usd is not None
    assert abs(projected.cost_usd - actual) / actual < 0.10
    assert projected.cost_interval_usd is not None
    low, high = projected.cost_interval_usd
    assert low <= actual <= high
    tokens = used.input_tokens + used.cached_input_tokens
    assert abs(projected.input_tokens - tokens) / tokens < 0.10

    again = estimate(judge, sample, len(scope), workers=8)  # everything is cached now
    assert again.cache_hit_rate == 1.0
    assert again.expected_cost_usd == 0
    assert again.cost_usd == pytest.approx(projected.cost_usd)


def test_progress_text_shows_the_live_figures(fake: FakeOpenAIServer, make_judge: Judge) -> None:
    judge = make_judge()
    with LLMRunScope(max_cost_usd=2.0) as run:
        judge("a")
        judge("a")
        text = run.progress_text()
        fields = run.usage().as_fields()
    assert "50% cached" in text and "of $2.00" in text and "× 429" in text
    assert fields["llm_calls"] == 1 and fields["llm_cache_hits"] == 1
    assert isinstance(fields["llm_cost_usd"], float) and fields["llm_cost_usd"] > 0
