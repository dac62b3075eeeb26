"""The router's statistics: the frozen snapshots ``Router.statistics()`` returns, and
the running counts they are made from."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import msgspec

from ._actor import ActorStatistics, ProviderActor
from ._audit import AuditLog, AuditStatistics
from ._budget import BudgetStatistics
from ._events import EventHub
from ._shared._stats import SharedStatistics

if TYPE_CHECKING:
    from ._routes import Routes
    from ._spend import Spend

__all__ = ["Counters", "HedgeStatistics", "RouterStatistics", "snapshot"]


class Counters:
    """The router's running counts of requests and attempts (``RouterStatistics``)."""

    __slots__ = (
        "cancelled",
        "failed",
        "fallbacks",
        "hedge_wins",
        "hedges",
        "panic_routed",
        "requests",
        "retries",
        "strategy_errors",
        "succeeded",
        "wasted_tokens",
    )

    def __init__(self) -> None:
        self.requests = 0
        self.succeeded = 0
        self.failed = 0
        self.cancelled = 0
        self.fallbacks = 0
        self.hedges = 0
        self.hedge_wins = 0
        self.retries = 0
        self.panic_routed = 0
        self.wasted_tokens = 0
        self.strategy_errors = 0


class HedgeStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """One hedged route's hedging, as it stands.

    ``delay`` is the hedge delay in force for the route's latest request (``None``
    before its first); ``budget_tokens`` the hedges its budget allows now (a hedge
    spends one; ``budget_burst`` is the most it holds).  ``sent`` counts hedges sent;
    the ``not_sent_*`` counters count hedges that fell due but were not sent, by why:
    the budget was empty, no remaining target could finish before the caller's
    deadline, or no target was left to hedge on.
    """

    route: str
    delay: float | None
    budget_tokens: float
    budget_burst: float
    sent: int
    not_sent_budget: int
    not_sent_deadline: int
    not_sent_no_target: int


class RouterStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """A frozen snapshot of the router.

    ``hedges`` counts attempts started because a hedge delay passed, ``fallbacks``
    those started because an earlier attempt failed, ``retries`` those repeated on the
    same target after a retryable error: the extra attempts, by kind, every one of them
    load on a provider (an attempt an open breaker or a full queue refuses sends
    nothing).  ``panic_routed`` counts requests planned in panic (too few healthy
    targets: the unhealthy ones were tried too; docs/routing.md).  ``wasted_tokens``
    estimates the prompt tokens sent on attempts that lost or failed (hedge waste
    included).
    """

    requests: int
    succeeded: int
    failed: int
    cancelled: int
    fallbacks: int
    hedges: int
    hedge_wins: int
    retries: int
    wasted_tokens: int
    #: Requests planned in panic: the route's unhealthy targets were tried too.
    panic_routed: int = 0
    #: Plans a route's strategy of your own failed to make (it raised or returned an
    #: invalid plan; the request failed with NoRoute naming it; docs/routing.md).
    strategy_errors: int = 0
    #: Dollars spent (priced models only): answers, and prompts of lost attempts.
    spend: float
    #: The same by ``provider:model``.
    spend_by_target: dict[str, float]
    #: Every configured spend cap, as it stands.
    budgets: list[BudgetStatistics]
    providers: dict[str, ActorStatistics]
    #: Events handed to listeners and subscribers (none are built while nobody listens).
    events_emitted: int = 0
    #: Events dropped because a subscriber's buffer was full.
    events_dropped: int = 0
    #: Exceptions raised by event listeners (each listener's first one is logged).
    listener_errors: int = 0
    #: Subscriptions open now.
    subscribers: int = 0
    #: The audit log's counters, when one is configured.
    audit: AuditStatistics | None = None
    #: Per hedged route (by name): its delay, its budget and the hedges not sent.
    hedging: dict[str, HedgeStatistics] = msgspec.field(default_factory=dict)
    #: The limits shared on Redis (``[shared]``): shared or local now, live processes.
    shared: SharedStatistics | None = None


def snapshot(
    counts: Counters,
    spend: Spend,
    routes: Routes,
    actors: Mapping[str, ProviderActor],
    hub: EventHub,
    audit: AuditLog | None,
    now: float,
    shared: SharedStatistics | None = None,
) -> RouterStatistics:
    """The router's statistics as of ``now``, from its parts."""
    route_table = routes.routes
    return RouterStatistics(
        requests=counts.requests,
        succeeded=counts.succeeded,
        failed=counts.failed,
        cancelled=counts.cancelled,
        fallbacks=counts.fallbacks,
        hedges=counts.hedges,
        hedge_wins=counts.hedge_wins,
        retries=counts.retries,
        wasted_tokens=counts.wasted_tokens,
        panic_routed=counts.panic_routed,
        strategy_errors=counts.strategy_errors,
        spend=sum(spend.spent.values()),
        spend_by_target=dict(spend.spent),
        budgets=[b.statistics(now) for b in spend.all_budgets(routes.budgets())],
        providers={name: a.statistics() for name, a in actors.items()},
        events_emitted=hub.emitted,
        events_dropped=hub.dropped,
        listener_errors=hub.listener_errors,
        subscribers=hub.subscribers,
        audit=None if audit is None else audit.statistics(),
        hedging={
            name: HedgeStatistics(
                route=name,
                delay=c.delay,
                budget_tokens=b.tokens,
                budget_burst=b.burst,
                sent=c.sent,
                not_sent_budget=c.not_sent_budget,
                not_sent_deadline=c.not_sent_deadline,
                not_sent_no_target=c.not_sent_no_target,
            )
            for name, r in route_table.items()
            if (c := r.hedge_counters) is not None and (b := r.hedge_budget) is not None
        },
        shared=shared,
    )
