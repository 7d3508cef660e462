"""A pipeline checks the judges its own functions reach, not every judge of the process."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from manta_lib.llm import LLMJudge
from manta_lib.llm.registry import judges_used_by
from tests.lib.fake_openai import FakeOpenAIServer

Judge = Callable[..., LLMJudge[Any]]


def test_only_judges_reachable_from_the_functions_are_selected(
    fake: FakeOpenAIServer, make_judge: Judge
) -> None:
    used = make_judge()
    other = make_judge()  # alive in the process, but no function below reaches it

    def by_closure(trace: Any) -> Any:
        return used

    assert judges_used_by([by_closure]) == [used]
    assert other not in judges_used_by([by_closure])
    assert judges_used_by([lambda trace: trace]) == []


def test_a_module_level_judge_is_found_through_the_functions_globals(
    fake: FakeOpenAIServer, make_judge: Judge
) -> None:
    judge = make_judge()
    namespace: dict[str, Any] = {"judge": judge}
    exec("def map_fn(trace):\n    return judge(trace)\n", namespace)  # a module's globals
    assert judges_used_by([namespace["map_fn"]]) == [judge]
