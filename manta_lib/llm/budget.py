"""A dollar cap on LLM spending: refuse the next call *before* it could cross the cap.

Each call reserves an upper bound of its cost (prompt bytes as tokens, ``max_tokens`` or twice
the longest answer seen as output) while it is in flight; when it returns it is counted at the
larger of that bound and the cost of the usage the server reported, so a server that
under-reports (or reports nothing) cannot spend past the cap. A reported cost above the bound
is flagged (a warning, and :attr:`Budget.over_bound`): the server's usage figures deserve a
look. A call whose bound does not fit waits for the calls in flight to
settle; if it still does not fit in what is left, it raises
:class:`~manta_lib.errors.LLMBudgetExceeded`, and so does every later one: the run stops
cleanly. With ``max_tokens`` set on the judge the cap is never crossed; without it, an answer
longer than twice any earlier one could cross it by that one call.
"""

from __future__ import annotations

import logging
import threading

from manta_lib.errors import LLMBudgetExceeded

log = logging.getLogger(__name__)


class Budget:
    """Spending cap shared by every judge in a run (thread-safe)."""

    def __init__(self, max_cost_usd: float) -> None:
        if max_cost_usd < 0:
            raise ValueError(f"max_cost_usd must be >= 0, got {max_cost_usd}")
        self.max_cost_usd = max_cost_usd
        self.spent_usd = 0.0
        self.calls = 0
        self._reserved = 0.0
        self._in_flight = 0
        self._stopped = False
        self.over_bound = 0
        """Calls whose reported cost was above the bound computed before them."""
        self._cond = threading.Condition()

    @property
    def stopped(self) -> bool:
        """True once a call was refused: the run is winding down."""
        return self._stopped

    def reserve(self, bound_usd: float) -> None:
        """Hold ``bound_usd`` for a call about to be sent, or stop the run if it cannot fit.

        While other calls are in flight, a call that does not fit waits for them to settle
        (their real cost is usually far below their bound) before it is refused.
        """
        with self._cond:
            while True:
                if self._stopped:
                    raise LLMBudgetExceeded(self.message())
                if self.spent_usd + self._reserved + bound_usd <= self.max_cost_usd:
                    self._reserved += bound_usd
                    self._in_flight += 1
                    return
                if self._in_flight == 0:
                    self._stopped = True
                    raise LLMBudgetExceeded(self.message())
                self._cond.wait()

    def settle(self, bound_usd: float, cost_usd: float) -> None:
        """Replace a reservation by the call's real cost (0 for a call that failed unbilled)."""
        with self._cond:
            self._reserved -= bound_usd
            self._in_flight -= 1
            self.spent_usd += cost_usd
            self.calls += 1
            self._cond.notify_all()

    def flag_over_bound(self, model: str, reported_usd: float, bound_usd: float) -> None:
        """Note a call whose reported usage costs more than its pre-call bound."""
        with self._cond:
            self.over_bound += 1
            first = self.over_bound == 1
        if first:
            log.warning(
                "%s reported usage costing $%.6f for one call, above the $%.6f bound computed "
                "before it (every prompt byte a token, the longest answer): counted as reported "
                "against max_cost_usd; check the server's usage figures",
                model,
                reported_usd,
                bound_usd,
            )

    def message(self) -> str:
        return (
            f"LLM budget reached: ${self.spent_usd:.4f} counted against max_cost_usd="
            f"${self.max_cost_usd:.4f} ({self.calls} calls), and the next call could cross it. "
            f"Finished work is kept and its answers are cached: run again with a higher "
            f"max_cost_usd to continue where this run stopped without paying twice."
        )


_active: Budget | None = None
_active_lock = threading.Lock()


def set_active_budget(budget: Budget | None) -> Budget | None:
    """Install ``budget`` for every judge in this process; returns the previous one."""
    global _active
    with _active_lock:
        previous, _active = _active, budget
    return previous


def active_budget() -> Budget | None:
    """The budget of the run in progress in this process, if any."""
    return _active
