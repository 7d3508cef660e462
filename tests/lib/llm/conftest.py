"""Fixtures for the LLM judge tests: the loopback OpenAI-compatible server and judge factories."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any, Literal

import pytest
from pydantic import BaseModel

from manta_lib.llm import LLMJudge, LLMSettings
from manta_lib.settings import MantaSettings
from tests.lib.fake_openai import FakeOpenAIServer

MODEL = "gpt-4o-mini"  # priced by the maintained price table


class FailureMode(BaseModel):
    category: Literal["tool_misuse", "reasoning", "gave_up", "none"]
    rationale: str


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAIServer]:
    """A started fake server; the real OpenAI variables are cleared so nothing leaks out."""
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "MANTA_LLM_CACHE", "MANTA_LLM_PRICES"):
        monkeypatch.delenv(name, raising=False)
    with FakeOpenAIServer() as server:
        yield server


@pytest.fixture
def llm_settings(fake: FakeOpenAIServer) -> Callable[..., LLMSettings]:
    """LLM settings pointing at the fake server, with overrides."""

    def build(**overrides: Any) -> LLMSettings:
        values: dict[str, Any] = {
            "base_url": fake.url,
            "api_key": "test-key",
            "concurrency": 4,
            "max_concurrency": 16,
            "max_retries": 4,
            "timeout_s": 10,
        }
        values.update(overrides)
        return LLMSettings(**values)

    return build


@pytest.fixture
def make_judge(
    settings: MantaSettings, llm_settings: Callable[..., LLMSettings]
) -> Iterator[Callable[..., LLMJudge[Any]]]:
    """Judges on the fake server with their cache in the test's database; closed afterwards."""
    made: list[LLMJudge[Any]] = []

    def build(schema: type[BaseModel] = FailureMode, **kwargs: Any) -> LLMJudge[Any]:
        llm = llm_settings(**kwargs.pop("llm", {}))
        kwargs.setdefault("system", "Classify the failure mode of this agent trajectory.")
        judge = LLMJudge(
            kwargs.pop("model", MODEL), schema, settings=llm, manta_settings=settings, **kwargs
        )
        made.append(judge)
        return judge

    yield build
    for judge in made:
        judge.close()


@pytest.fixture
def example(
    fake: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch, settings: MantaSettings
) -> ModuleType:
    """``examples.failure_modes`` with its judge pointed at the fake server."""
    monkeypatch.setenv("OPENAI_BASE_URL", fake.url)
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    import examples.failure_modes as module

    return importlib.reload(module)  # the judge reads the environment at import
