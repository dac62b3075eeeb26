"""Spend caps: at most ``limit`` dollars per period, for the router, a route or a provider.

A budget is checked **before** a request is sent, with the request's estimated cost
(input tokens by the estimator, output at the request's ``max_tokens`` or the router's
default output budget, priced from the model data), and reconciled **after**, with the
cost of the tokens the provider reported::

    admit   when  spent + reserved + estimate ≤ limit     (then reserved += estimate)
    settle        reserved -= estimate;  spent += actual

So while every answer costs no more than its estimate — the output is capped by
``max_tokens`` and the prompt was counted before sending — the cap is never crossed,
however many requests run at once.  Periods are tumbling windows of trio time starting
when the router opened (``"hour"``, ``"day"``, ``"week"``, ``"month"`` = 30 days, or
seconds); ``spent`` starts again at zero in each, reservations carry over.

A request that lost a race, failed or was cancelled after it was sent is charged its
prompt (most vendors bill a prompt they read); one never sent is charged nothing.
Models with no known price cost nothing here: a budget only binds priced models.
"""

from __future__ import annotations

import math

import msgspec

__all__ = ["Budget", "BudgetStatistics", "period_seconds"]

_PERIODS = {"hour": 3600.0, "day": 86400.0, "week": 7 * 86400.0, "month": 30 * 86400.0}


def period_seconds(period: str | float) -> float:
    """``"day"`` → 86400.0; a number is seconds already."""
    if isinstance(period, str):
        return _PERIODS[period]
    return float(period)


class BudgetStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """A frozen view of one budget: its scope, cap, spend and reservations now."""

    scope: str
    limit: float
    period: float
    spent: float
    reserved: float
    resets_at: float


class Budget:
    """One spend cap over tumbling windows of trio time; see the module docstring.

    Example::

        >>> b = Budget("router", limit=1.0, period=3600.0, start=0.0)
        >>> b.try_reserve(0.6, now=0.0), b.try_reserve(0.6, now=1.0)
        (True, False)
        >>> b.settle(0.6, 0.5, now=2.0); b.headroom(now=2.0)
        0.5
    """

    __slots__ = ("_reserved", "_spent", "_start", "_window", "limit", "period", "scope")

    def __init__(self, scope: str, *, limit: float, period: float, start: float) -> None:
        self.scope = scope
        self.limit = limit
        self.period = period
        self._start = start
        self._window = 0
        self._spent = 0.0
        self._reserved = 0.0

    def _roll(self, now: float) -> None:
        window = math.floor((now - self._start) / self.period)
        if window > self._window:
            self._window = window
            self._spent = 0.0

    def headroom(self, now: float) -> float:
        """Dollars that may still be reserved in the current period."""
        self._roll(now)
        return self.limit - self._spent - self._reserved

    def try_reserve(self, amount: float, now: float) -> bool:
        """Reserve ``amount`` if it fits under the cap (with a hair of float slack)."""
        if amount > self.headroom(now) + 1e-12:
            return False
        self._reserved += amount
        return True

    def settle(self, reserved: float, actual: float, now: float) -> None:
        """Replace a reservation with what the request really cost."""
        self._roll(now)
        self._reserved = max(0.0, self._reserved - reserved)
        self._spent += actual

    def statistics(self, now: float) -> BudgetStatistics:
        """A frozen snapshot."""
        self._roll(now)
        return BudgetStatistics(
            scope=self.scope,
            limit=self.limit,
            period=self.period,
            spent=self._spent,
            reserved=self._reserved,
            resets_at=self._start + (self._window + 1) * self.period,
        )
