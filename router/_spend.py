"""Spend: the dollar caps, checked before a request and reserved per attempt.

Caps apply at three scopes: the router (``[budget]``), a route (``[routes.x.budget]``)
and a provider (``[providers.x.budget]``).  A request is refused at once
(:class:`~providers.BudgetExceeded`, before any network) when even its cheapest target
would cross a router or route cap; a target whose provider cap has no room is excluded
by the policy.  Each attempt then *reserves* its estimated cost under every cap that
applies (:meth:`Spend.reserve`) and *settles* it exactly once when it ends
(:meth:`Charge.settle`): the answer's cost from its usage, or the prompt a lost
attempt sent.  Without a cap, none of this bookkeeping runs.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import trio

from providers import BudgetExceeded

from ._budget import Budget, period_seconds
from ._config import BudgetConfig, RouterConfig
from ._policy import Candidate, Needs, Plan, cost_of, estimated_cost
from ._race import AttemptRecord

if TYPE_CHECKING:
    from ._request_events import RequestEvents
    from ._routes import Route
    from ._shared._budgets import SharedBudgets

__all__ = ["Charge", "Spend", "make_budget", "over_budget"]

logger = logging.getLogger("trio_llm_router")


def make_budget(scope: str, config: BudgetConfig | None, start: float) -> Budget | None:
    """The cap ``config`` describes for ``scope`` (``None`` when there is none)."""
    if config is None:
        return None
    return Budget(scope, limit=config.limit, period=period_seconds(config.period), start=start)


class Spend:
    """The router's caps and what it spent, by target."""

    __slots__ = ("budget", "provider_budgets", "shared", "spent")

    def __init__(self, config: RouterConfig, start: float) -> None:
        #: The router-wide cap.
        self.budget = make_budget("router", config.budget, start)
        #: Each provider's cap, by provider name (only those that have one).
        self.provider_budgets: Mapping[str, Budget] = {
            name: budget
            for name, pc in config.providers.items()
            if (budget := make_budget(f"provider {name}", pc.budget, start)) is not None
        }
        #: Dollars spent by ``provider:model`` (priced models only).
        self.spent: dict[str, float] = {}
        #: ``[shared]``: the caps on Redis (router._shared._budgets), set when the router
        #: opens; ``None`` otherwise.
        self.shared: SharedBudgets | None = None

    def all_budgets(self, route_budgets: Iterable[Budget]) -> list[Budget]:
        """Every cap: the router's, the routes' (given) and the providers'."""
        budgets = [] if self.budget is None else [self.budget]
        budgets += route_budgets
        return budgets + list(self.provider_budgets.values())

    def refused(
        self,
        events: RequestEvents | None,
        request_id: str,
        provider: str | None,
        scope: str,
        message: str,
    ) -> None:
        """A spend cap refused a request or a target: log it, tell the listeners."""
        logger.info(
            "request %s: refused by the %s spend cap",
            request_id,
            scope,
            extra={"request_id": request_id, "provider": provider, "budget_scope": scope},
        )
        if events is not None:
            events.budget_refused(provider, scope, message)

    def refuse_empty(
        self, model: str, plan: Plan, request_id: str, events: RequestEvents | None
    ) -> None:
        """An empty plan: refuse with ``BudgetExceeded`` when spend caps excluded its
        targets (otherwise the plan says why it is empty)."""
        if any("spend cap" in e.reason for e in plan.excluded):
            message = f"no target of {model!r} fits its budget: {plan.explain()}"
            self.refused(events, request_id, None, "provider", message)
            raise BudgetExceeded(message)

    def check(
        self,
        route: Route,
        plan: Plan,
        needs: Needs,
        now: float,
        request_id: str,
        events: RequestEvents | None,
    ) -> None:
        """Refuse at once when even the cheapest target would cross a router/route cap."""
        caps = [b for b in (self.budget, route.spend_budget) if b is not None]
        if not caps:
            return
        cheapest = min(estimated_cost(c, needs) or 0.0 for c in plan.targets)
        for budget in caps:
            if cheapest > budget.headroom(now) + 1e-12:
                message = over_budget(budget, cheapest, now)
                self.refused(events, request_id, None, budget.scope, message)
                raise BudgetExceeded(message)

    def reserve(
        self,
        route: Route,
        candidate: Candidate,
        needs: Needs,
        request_id: str,
        events: RequestEvents | None,
    ) -> Charge:
        """Reserve the attempt's estimated cost under every cap that applies, or refuse."""
        if self.budget is None and route.spend_budget is None and not self.provider_budgets:
            return Charge(candidate, (), 0.0, self.spent)
        budgets = [
            b
            for b in (
                self.budget,
                route.spend_budget,
                self.provider_budgets.get(candidate.provider),
            )
            if b is not None
        ]
        estimate = 0.0
        if budgets:
            estimate = estimated_cost(candidate, needs) or 0.0
            if self.shared is not None:
                # Reserved on Redis by the charge's confirm(), awaited before sending.
                return self.shared.charge(self, candidate, budgets, estimate, request_id, events)
            now = trio.current_time()
            for i, budget in enumerate(budgets):
                if not budget.try_reserve(estimate, now):
                    for taken in budgets[:i]:
                        taken.settle(estimate, 0.0, now)
                    message = over_budget(budget, estimate, now)
                    self.refused(events, request_id, candidate.provider, budget.scope, message)
                    raise BudgetExceeded(message, provider=candidate.provider)
        return Charge(candidate, budgets, estimate, self.spent)


class Charge:
    """One attempt's spend: its reservations under the caps, settled exactly once.

    ``answered``: the provider's usage is on the record (the answer's cost is known);
    otherwise the attempt is charged the prompt it sent, if it sent one.
    """

    __slots__ = ("_budgets", "_candidate", "_estimate", "_settled", "_spend")

    #: ``[shared]`` caps: the reservation to await before the attempt is sent
    #: (router._shared._budgets.SharedCharge); ``None`` when it is made already.
    confirm: Callable[[], Awaitable[None]] | None = None

    def __init__(
        self,
        candidate: Candidate,
        budgets: Sequence[Budget],
        estimate: float,
        spend: dict[str, float],
    ) -> None:
        self._candidate = candidate
        self._budgets = budgets
        self._estimate = estimate
        self._spend = spend
        self._settled = False

    def settle(self, record: AttemptRecord, *, answered: bool) -> None:
        if self._settled:
            return
        self._settled = True
        c = self._candidate
        if answered and record.usage is not None:
            actual = cost_of(c, record.usage)
        elif record.sent_tokens and c.input_price is not None:
            actual = record.sent_tokens * c.input_price / 1e6
        else:
            actual = None
        record.cost = actual
        if self._budgets:
            now = trio.current_time()
            for budget in self._budgets:
                budget.settle(self._estimate, actual or 0.0, now)
        if actual:
            key = c.target
            self._spend[key] = self._spend.get(key, 0.0) + actual


def over_budget(budget: Budget, estimate: float, now: float) -> str:
    stats = budget.statistics(now)
    return (
        f"sending this request (~${estimate:.4f}) would cross the {budget.scope} spend cap "
        f"(${stats.limit:g} per {stats.period:g}s: ${stats.spent:.4f} spent, "
        f"${stats.reserved:.4f} reserved; it resets at t={stats.resets_at:.0f})"
    )
