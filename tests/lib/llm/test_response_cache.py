"""The ClickHouse response cache: a second run makes no call, writes are batched, the cache can
be disabled or expire, and sampled answers are keyed by their index."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from manta_lib.llm import LLMJudge
from manta_lib.store import Store
from tests.lib.fake_openai import FakeOpenAIServer
from tests.lib.llm.conftest import FailureMode

# Seeded stores or seconds per test: make test runs them, make check leaves them out.
pytestmark = pytest.mark.slow

Judge = Callable[..., LLMJudge[Any]]
PROMPTS = [f"trajectory {i}: " + "tool error " * (i % 7) for i in range(40)]


def _run(judge: LLMJudge[Any], prompts: list[str]) -> list[FailureMode]:
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(judge, prompts))


def test_a_second_run_costs_no_call_and_returns_the_same_answers(
    fake: FakeOpenAIServer, make_judge: Judge, store: Store
) -> None:
    first = make_judge()
    answers = _run(first, PROMPTS)
    first.close()
    assert fake.stats()["chat_requests"] == len(PROMPTS)
    assert first.cache is not None
    # 40 answers written in a handful of batched inserts, not one per call.
    assert first.cache.rows_written == len(PROMPTS)
    assert first.cache.inserts <= 3
    rows = store.rows(
        "SELECT count(), sum(input_tokens), countIf(cost_usd > 0) FROM {db}.llm_cache"
    )
    assert rows[0][0] == len(PROMPTS)
    assert rows[0][1] == first.usage.snapshot().input_tokens
    assert rows[0][2] == len(PROMPTS)

    second = make_judge()  # a new process would do the same: the rows come from ClickHouse
    again = _run(second, PROMPTS)
    assert fake.stats()["chat_requests"] == len(PROMPTS)  # zero new calls
    assert again == answers
    usage = second.usage.snapshot()
    assert (usage.calls, usage.cache_hits, usage.cost_usd) == (0, len(PROMPTS), 0.0)
    assert usage.cached_cost_usd == pytest.approx(first.usage.snapshot().cost_usd)


def test_a_changed_prompt_schema_or_sampling_parameter_is_a_different_key(
    fake: FakeOpenAIServer, make_judge: Judge
) -> None:
    make_judge()("same input")
    make_judge()("same input")
    assert fake.stats()["chat_requests"] == 1
    make_judge(system="Another instruction.")("same input")
    make_judge(max_tokens=300)("same input")
    make_judge(model="gpt-4o")("same input")
    assert fake.stats()["chat_requests"] == 4


def test_the_cache_can_be_disabled_and_expires(fake: FakeOpenAIServer, make_judge: Judge) -> None:
    warm = make_judge()
    warm("input")
    warm.close()
    make_judge(cache=False)("input")
    make_judge(llm={"cache": False})("input")
    assert fake.stats()["chat_requests"] == 3
    make_judge(llm={"cache_max_age_days": 1e-9})("input")  # older than ~0.1 ms: expired
    assert fake.stats()["chat_requests"] == 4
    make_judge(llm={"cache_max_age_days": 30})("input")
    assert fake.stats()["chat_requests"] == 4


def test_samples_at_temperature_are_cached_by_index(
    fake: FakeOpenAIServer, make_judge: Judge
) -> None:
    sampler = make_judge(temperature=0.8)
    first = sampler.sample("input", 3)
    sampler.close()
    assert fake.stats()["chat_requests"] == 3
    assert make_judge(temperature=0.8).sample("input", 3) == first
    assert fake.stats()["chat_requests"] == 3
    make_judge(temperature=0.8).sample("input", 4)  # only the new index is asked
    assert fake.stats()["chat_requests"] == 4


SCRIPT = """
import sys
from typing import Literal
from pydantic import BaseModel
from manta_lib.llm import LLMJudge, LLMSettings
from manta_lib.settings import load_settings

class Verdict(BaseModel):
    category: Literal["a", "b"]

judge = LLMJudge("gpt-4o-mini", Verdict, settings=LLMSettings(base_url=sys.argv[1], api_key="k"),
                 manta_settings=load_settings(data_dir=sys.argv[2], database="exit_test"))
for i in range(3):
    judge(f"prompt {i}")
print(judge.usage.snapshot().calls)  # the script ends without closing the judge
"""


@pytest.mark.slow
def test_a_script_that_never_closes_its_judge_still_writes_its_answers(
    fake: FakeOpenAIServer, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("CLICKHOUSE_URL", "MANTA_DATABASE")}
    command = [sys.executable, "-c", SCRIPT, fake.url, str(tmp_path / "data")]
    calls = [
        subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
        for _ in range(2)
    ]
    assert [int(c) for c in calls] == [3, 0]
    assert fake.stats()["completions"] == 3


def test_the_cache_holds_no_embedded_store_between_loads_and_flushes(
    fake: FakeOpenAIServer, make_judge: Any, settings: Any
) -> None:
    """An embedded store admits one process: a process that judged once must not keep it."""
    from manta_lib.llm import shared

    def holds_store() -> bool:
        fds = Path("/proc/self/fd")
        targets = []
        for fd in fds.iterdir():
            try:
                targets.append(os.readlink(fd))
            except OSError:
                continue
        return any(t == str(settings.chdb_path / "status") for t in targets)

    judge = make_judge()
    judge("a trajectory that fails")  # loads the namespace, buffers the answer
    shared.flush_all()  # writes it
    assert not holds_store()
