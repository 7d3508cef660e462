"""What a computation does around the work that calls judges: check, cap, observe, flush.

Example (what ``MapReduceComputation.run`` does around its map level)::

    with LLMRunScope(max_cost_usd=20.0) as llm:     # preflight + budget, before any trace
        for trace in traces:
            with call_accounting() as account:       # per-trace calls and cost
                output = map_fn(trace)
            progress.update(description=llm.progress_text())
    row["llm"] = llm.usage().as_fields()              # runs log / Dagster metadata

An :class:`~manta_lib.errors.LLMBudgetExceeded` raised by a judge inside the block is the
clean stop: the caller keeps finished work and reports ``str(error)``, which says how to go on.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from manta_lib.errors import ConfigError, LLMBudgetExceeded
from manta_lib.llm import registry, shared
from manta_lib.llm.budget import Budget, set_active_budget
from manta_lib.llm.usage import UsageSnapshot
from manta_lib.settings import MantaSettings

if TYPE_CHECKING:
    from manta_lib.llm.client import LLMJudge

log = logging.getLogger(__name__)


class LLMRunScope:
    """Preflight every live judge, install an optional dollar cap, and measure usage.

    Args:
        max_cost_usd: stop before a call could push this scope's spending past it.
        preflight: check each distinct server once (key, reachability) on entry.
        judges: the judges to check on entry (default: every judge alive in the process,
            which is what a map function's module-level judge is).
        settings: the computation's store: judges created without ``manta_settings`` keep
            their response cache there during the scope.
    """

    def __init__(
        self,
        max_cost_usd: float | None = None,
        *,
        preflight: bool = True,
        judges: list[LLMJudge[Any]] | None = None,
        settings: MantaSettings | None = None,
    ) -> None:
        if max_cost_usd is not None and max_cost_usd < 0:
            raise ConfigError(f"max_cost_usd must be >= 0, got {max_cost_usd}")
        self.max_cost_usd = max_cost_usd
        self.budget: Budget | None = Budget(max_cost_usd) if max_cost_usd is not None else None
        self.do_preflight = preflight
        self.judges = judges
        self.settings = settings
        self._previous_settings: MantaSettings | None = None
        self._start = UsageSnapshot()
        self._previous_budget: Budget | None = None

    def __enter__(self) -> LLMRunScope:
        judges = registry.live_judges() if self.judges is None else self.judges
        if self.do_preflight:
            checked: set[tuple[str, str]] = set()
            for judge in judges:
                server = (judge.base_url, judge._api_key())
                if server not in checked:
                    checked.add(server)
                    judge.preflight()
        if self.budget is not None:
            unpriced = sorted({j.model for j in judges if not j.prices.known(j.model)})
            if unpriced:
                raise ConfigError(
                    f"max_cost_usd={self.max_cost_usd} cannot be enforced: no price for model "
                    f"{', '.join(map(repr, unpriced))}. Pass price=ModelPrice(input_per_mtok=..., "
                    f"output_per_mtok=...) to the judge or set MANTA_LLM_PRICES."
                )
        self._start = shared.total_usage()
        self._previous_budget = set_active_budget(self.budget)
        if self.settings is not None:
            self._previous_settings = shared.bind_store_settings(self.settings)
        return self

    def __exit__(self, *exc: object) -> None:
        set_active_budget(self._previous_budget)
        shared.flush_all()
        if self.settings is not None:
            shared.bind_store_settings(self._previous_settings)

    @property
    def stopped(self) -> bool:
        """True once the budget refused a call."""
        return self.budget is not None and self.budget.stopped

    def usage(self) -> UsageSnapshot:
        """Usage of every judge since the scope began (concurrency: the current limit)."""
        return shared.total_usage().minus(self._start)

    def stop_error(self, done: int, total: int) -> LLMBudgetExceeded:
        """The clean-stop error to raise once finished work is kept (says how to continue)."""
        detail = self.budget.message() if self.budget is not None else "LLM budget reached."
        return LLMBudgetExceeded(f"{detail} Stopped after {done:,} of {total:,} traces.")

    def progress_text(self) -> str:
        """A compact status for a progress bar: calls/s, cache hits, concurrency, 429s, dollars."""
        used = self.usage()
        cost = f"${used.cost_usd:,.2f}" if used.cost_known else f"${used.cost_usd:,.2f}+unpriced"
        if self.max_cost_usd is not None:
            cost += f" of ${self.max_cost_usd:,.2f}"
        return (
            f"LLM {used.calls_per_s:,.1f} calls/s · {used.cache_hit_rate:.0%} cached · "
            f"concurrency {used.concurrency} · {used.rate_limited} × 429 · {cost}"
        )


def is_budget_refusal(error: str | None) -> bool:
    """Whether a trace's error (``"Type: message"``) is the cap refusing its call: such a trace
    is not a result (not persisted, not a failure) and is mapped by the next run."""
    return error is not None and error.startswith(LLMBudgetExceeded.__name__)
