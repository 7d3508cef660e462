"""The judges alive in this process.

A map function usually creates its judge at import time; the pipeline reaches every judge here
to check them before the first trace, read their usage for the progress bar, and flush their
caches when the map level ends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from manta_lib.llm.client import LLMJudge


def live_judges() -> list[LLMJudge[Any]]:
    """Every judge created in this process and not yet garbage-collected."""
    return LLMJudge.live()


def judges_used_by(functions: Iterable[Callable[..., Any]]) -> list[LLMJudge[Any]]:
    """The live judges that ``functions`` can reach: names of their modules (a module-level
    judge, or one imported into the module) and their closures.

    A pipeline checks only these before its first trace, not a judge some other pipeline of
    the same process (a notebook, a test session) created for another server.
    """
    live = {id(judge): judge for judge in live_judges()}
    found: dict[int, LLMJudge[Any]] = {}
    for fn in functions:
        values = list(getattr(fn, "__globals__", {}).values())
        values += [cell.cell_contents for cell in getattr(fn, "__closure__", None) or ()]
        for value in values:
            if id(value) in live and value is live[id(value)]:
                found[id(value)] = value
    return list(found.values())
