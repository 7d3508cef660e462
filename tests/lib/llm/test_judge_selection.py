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


def test_run_and_estimate_ignore_a_live_judge_of_another_pipeline(
    fake: FakeOpenAIServer, make_judge: Judge, settings: Any
) -> None:
    from pydantic import BaseModel

    from manta import EntityLevel, MapReduceComputation
    from manta_lib.demo import seed_demo
    from manta_lib.store import Store

    class Out(BaseModel):
        category: str

    with Store.open(settings) as store:
        seed_demo(store, traces=40, seed=5)
    stale = make_judge(llm={"base_url": "http://127.0.0.1:9/v1"})  # nothing listens there
    used = make_judge()

    def map_fn(trace: Any) -> Out:
        return Out(category=used(trace.trace_id).category)

    pipeline = MapReduceComputation("Selection").add_level(
        EntityLevel.TRACE, map_fn, Out, uses_llm=True
    )
    assert stale in judges_used_by([lambda t: stale])  # it is alive in the process
    estimate = pipeline.estimate("run_grpo_math_v1", sample=3, settings=settings)
    assert estimate is not None
    result = pipeline.run("run_grpo_math_v1", mode="local", limit_traces=3, progress=False)
    assert [o.error for o in result[EntityLevel.TRACE]] == [None, None, None]
