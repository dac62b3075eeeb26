"""Spend budgets shared by every process through Redis: reserve, settle, fall back.

The rule is the local one (router/_budget.py), over the processes together::

    admit   when  spent + reserved + estimate ≤ limit      (reserved: every process's)
    settle        reserved -= estimate;  spent += actual

One script (``budget.lua``) does both, atomically, for every cap an attempt falls under
(the router's, its route's, its provider's): a reservation is all-or-nothing, so N
processes together never cross a cap while answers cost no more than their estimates —
exactly the local guarantee.  Windows are Redis's (``floor(redis_time / period)``), so
the processes agree on them: with ``[shared]`` a ``"day"`` starts at midnight UTC, not
when the router opened.

Each process's reservations are a field of its own (``r:<process id>``) with the time
of its last news (``h:<process id>``); a process silent for three heartbeats has its
reservations dropped, so a process killed mid-request does not hold the cap forever.
Each hash has a generation (``g``): a hash made again (it held another type and the
script replaced it, or it was deleted, or Redis restarted empty) has a new one, and a
process that sees it resyncs as after an outage, writing its reservations there again.
A reply is read whole and checked (``_read``) before any of it is applied; a malformed
one is a failure of Redis (``_replies``).

What goes over the wire, and when:

- **reserve**: one round trip per attempt, before it is sent (only when a cap applies);
  the caller waits for it, within the time bound.
- **settle**: queued, never waited for: sent by the budgets' task at once (and with each
  heartbeat, which also refreshes this process's ``h:`` and the view of the others).
  Until it arrives the reservation stands: the cap errs on the safe side.  One queued
  as the router closes, after the task ended, goes as the client closes (a closer).

While Redis does not answer, each cap falls back to a local budget at the process's
fair share: ``limit / processes`` (the live processes last seen), of which it has used
``spent / processes`` (the shared spend last seen, while its window lasts) plus what it
spent since, plus its own outstanding reservations.  So the processes together stay
under the cap if their last views agree.  When Redis answers again, the process writes
its outstanding reservations (the whole amount: whatever was lost in between is made
right) and the spend Redis has not seen (in the current window) before it reserves
there again.  Nothing is lost or counted twice, except the spend of a settle whose reply
was lost with Redis (it may have been applied: then it is counted again at the resync).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import trio

from providers import BudgetExceeded

from .._budget import Budget, BudgetStatistics
from .._spend import Charge, over_budget
from ._client import HEARTBEATS_TO_DIE, SharedClient, SharedUnavailable
from ._replies import MalformedReply, array, integer, number, refuse, text

if TYPE_CHECKING:
    from .._policy import Candidate
    from .._request_events import RequestEvents
    from .._routes import Routes
    from .._spend import Spend

__all__ = ["SharedBudget", "SharedBudgets", "SharedCharge", "share_budgets"]

_EPS = 1e-12


class SharedBudget(Budget):
    """One spend cap shared on Redis; its numbers are the processes' together, as of the
    last reply (or this process's fair share while Redis does not answer)."""

    __slots__ = (
        "_owner",
        "_resets_at",
        "generation",
        "key",
        "local_spent",
        "mine",
        "pend_r",
        "pend_s",
        "unsent",
        "view_reserved",
        "view_spent",
    )

    def __init__(self, owner: SharedBudgets, key: str, budget: Budget) -> None:
        super().__init__(budget.scope, limit=budget.limit, period=budget.period, start=0.0)
        self._owner = owner
        self.key = key
        #: This process's outstanding reservations (wherever they were made).
        self.mine = 0.0
        #: Changes queued for Redis: reserved, spent.
        self.pend_r = 0.0
        self.pend_s = 0.0
        #: Spent here that Redis has not seen (while local, or a settle that failed).
        self.unsent = 0.0
        #: The processes' spend and reservations at the last reply.
        self.view_spent = 0.0
        self.view_reserved = 0.0
        #: Spent here since that reply (the local fallback counts it).
        self.local_spent = 0.0
        self._resets_at = math.inf
        #: The generation of the hash in Redis at the last reply (budget.lua): another
        #: one means the hash was made again and this process's reservations there lost.
        self.generation = ""

    def __repr__(self) -> str:
        return f"<SharedBudget {self.scope!r} ${self.limit:g}>"

    @property
    def period_us(self) -> int:
        return max(1, round(self.period * 1e6))

    def _roll(self, now: float) -> None:
        if now >= self._resets_at:
            self._resets_at += (math.floor((now - self._resets_at) / self.period) + 1) * self.period
            self.view_spent = 0.0
            self.local_spent = 0.0
            self.unsent = 0.0

    def seen(self, spent: float, reserved: float, ends_us: float, now: float) -> None:
        """A reply's numbers for this cap."""
        self.view_spent = spent
        self.view_reserved = reserved
        self.local_spent = 0.0
        self._resets_at = now + ends_us / 1e6

    # -- what Spend asks ------------------------------------------------------------------

    def headroom(self, now: float) -> float:
        """Dollars that may still be reserved: the shared view, or the fair share."""
        self._roll(now)
        if self._owner.ready:
            return self.limit - self.view_spent - self.view_reserved
        n = self._owner.processes
        used = self.view_spent / n + self.local_spent + self.mine
        return self.limit / n - used

    def try_reserve(self, amount: float, now: float) -> bool:
        """The local fallback's reservation (fair share); see :class:`SharedBudgets`."""
        if amount > self.headroom(now) + _EPS:
            return False
        self.mine += amount
        return True

    def settle(self, reserved: float, actual: float, now: float) -> None:
        """Replace a reservation by its cost: queued for Redis (never waits)."""
        self._roll(now)
        self.mine = max(0.0, self.mine - reserved)
        self.local_spent += actual
        if self._owner.ready:
            self.pend_r -= reserved
            self.pend_s += actual
            self._owner.wake()
        else:
            self.unsent += actual

    def statistics(self, now: float) -> BudgetStatistics:
        """The processes' spend and reservations as Redis last said (a consistent
        snapshot, without this process's news since); while Redis does not answer, plus
        what this process spent since."""
        self._roll(now)
        spent = self.view_spent
        if not self._owner.ready:
            spent += self.local_spent
        return BudgetStatistics(
            scope=self.scope,
            limit=self.limit,
            period=self.period,
            spent=spent,
            reserved=self.view_reserved,
            resets_at=self._resets_at,
        )


class SharedCharge(Charge):
    """A :class:`~router._spend.Charge` whose reservation is made on Redis when the
    attempt awaits :meth:`confirm`, before it is sent."""

    __slots__ = ("_events", "_owner", "_request_id", "_reserved", "_spend_of")

    def __init__(
        self,
        owner: SharedBudgets,
        spend: Spend,
        candidate: Candidate,
        budgets: Sequence[SharedBudget],
        estimate: float,
        request_id: str,
        events: RequestEvents | None,
    ) -> None:
        super().__init__(candidate, budgets, estimate, spend.spent)
        self._owner = owner
        self._spend_of = spend
        self._request_id = request_id
        self._events = events
        self._reserved = False

    async def confirm(self) -> None:
        """Reserve the estimate under every cap, or raise :class:`~providers.BudgetExceeded`."""
        budgets: Sequence[SharedBudget] = self._budgets  # type: ignore[assignment]
        refused = await self._owner.reserve(budgets, self._estimate)
        if refused is None:
            self._reserved = True
            return
        now = trio.current_time()
        message = over_budget(refused, self._estimate, now)
        provider = self._candidate.provider
        self._spend_of.refused(self._events, self._request_id, provider, refused.scope, message)
        raise BudgetExceeded(message, provider=provider)

    def settle(self, record: Any, *, answered: bool) -> None:
        if not self._reserved:
            self._budgets = ()  # nothing was reserved: only the cost is recorded
        super().settle(record, answered=answered)


class _Reservation:
    """One attempt's reservation, waiting for the budgets' task to send it."""

    __slots__ = ("budgets", "done", "estimate", "gone", "result")

    def __init__(self, budgets: Sequence[SharedBudget], estimate: float) -> None:
        self.budgets = budgets
        self.estimate = estimate
        self.done = trio.Event()
        #: ``None`` reserved; a budget: refused by it; ``_LOCAL``: decide locally.
        self.result: SharedBudget | object | None = _LOCAL
        #: The caller left (cancelled) while it was on its way.
        self.gone = False


_LOCAL = object()
#: Reservations sent in one round trip at most.
_BATCH = 64


class SharedBudgets:
    """Every shared cap of one router, its Redis script, its task and its fallback.

    One task does every round trip: the changes queued (settles), then the reservations
    waiting, in order, in one script call.  So concurrent attempts share round trips
    instead of each making its own (a coredis client serves concurrent commands one
    after another).
    """

    def __init__(self, client: SharedClient, budgets: Sequence[SharedBudget]) -> None:
        self._client = client
        self._script = client.script("budget")
        self._ttl_us = int(client.config.heartbeat * HEARTBEATS_TO_DIE * 1e6)
        self.budgets: list[SharedBudget] = list(budgets)
        #: Redis decides (connected, and this process's state written back after a gap).
        self.ready = False
        #: Live processes last seen (the fallback's divisor).
        self.processes = 1
        self._resync = True
        self._queue: list[_Reservation] = []
        self._wake = trio.Event()
        client.add_closer(self._flush)

    def wake(self) -> None:
        self._wake.set()

    def charge(
        self,
        spend: Spend,
        candidate: Candidate,
        budgets: Sequence[Budget],
        estimate: float,
        request_id: str,
        events: RequestEvents | None,
    ) -> SharedCharge:
        """The charge of one attempt under shared caps (reserved by its ``confirm``)."""
        shared = [b for b in budgets if isinstance(b, SharedBudget)]
        return SharedCharge(self, spend, candidate, shared, estimate, request_id, events)

    # -- the client's listener ------------------------------------------------------------

    def switched(self, shared: bool, processes: int) -> None:
        self.processes = max(1, processes)
        if shared:
            if not self.ready:
                self._resync = True
                self._wake.set()
        elif self.ready:
            self.ready = False
            for b in self.budgets:
                # Queued news is lost with the connection: the spend is kept for the
                # resync, the reservations are written whole then.
                b.unsent += b.pend_s
                b.pend_r = b.pend_s = 0.0
            self._wake.set()  # the waiting reservations are decided locally

    async def heartbeat(self) -> None:
        """Each heartbeat: a round trip (queued news, this process's reservations
        refreshed, the view of the others)."""
        if self.ready:
            self._wake.set()

    # -- reservations ---------------------------------------------------------------------

    async def reserve(
        self, budgets: Sequence[SharedBudget], estimate: float
    ) -> SharedBudget | None:
        """Reserve ``estimate`` under every one of ``budgets``, all or nothing: ``None``,
        or the first that refused (Redis's answer, or the fair share's while local)."""
        if self.ready:
            waiting = _Reservation(budgets, estimate)
            self._queue.append(waiting)
            self._wake.set()
            try:
                await waiting.done.wait()
            except BaseException:
                waiting.gone = True  # a grant that comes is given back
                if waiting in self._queue:
                    self._queue.remove(waiting)
                raise
            if waiting.result is not _LOCAL:
                return waiting.result  # type: ignore[return-value]
        now = trio.current_time()
        for i, b in enumerate(budgets):
            if not b.try_reserve(estimate, now):
                for taken in budgets[:i]:
                    taken.mine = max(0.0, taken.mine - estimate)
                return b
        return None

    # -- the round trip -------------------------------------------------------------------

    async def _apply(self) -> None:
        """Queued changes out (or, after a gap, this process's whole state), then the
        waiting reservations; the view of every cap in."""
        budgets = self.budgets
        resync = self._resync
        batch: list[_Reservation] = []
        if not resync:
            batch = self._queue[:_BATCH]
            del self._queue[:_BATCH]
        args: list[Any] = [self._client.process_id, self._ttl_us]
        sent: list[tuple[float, float]] = []
        for b in budgets:
            if resync:
                dr, ds = b.mine, b.unsent
            else:
                dr, ds = b.pend_r, b.pend_s
                b.pend_r = b.pend_s = 0.0
            sent.append((dr, ds))
            args += (repr(b.limit), b.period_us, repr(dr), repr(ds), 1 if resync else 0)
        index = {id(b): i for i, b in enumerate(budgets, 1)}
        args.append(len(batch))
        for waiting in batch:
            args.append(len(waiting.budgets))
            args += [index[id(b)] for b in waiting.budgets]
            args.append(repr(waiting.estimate))
        try:
            reply = await self._client.call(self._script, [b.key for b in budgets], args)
            refusals, views = _read(reply, batch, budgets)
        except (SharedUnavailable, MalformedReply) as exc:
            if isinstance(exc, MalformedReply):
                refuse(self._client, "budget", exc)  # as if Redis failed: nothing applied
            if not resync:
                for b, (_, ds) in zip(budgets, sent, strict=True):
                    b.unsent += ds
            for waiting in batch:
                waiting.done.set()  # result: _LOCAL
            return
        now = trio.current_time()
        lost = False
        for b, (spent, reserved, ends, generation) in zip(budgets, views, strict=True):
            b.seen(spent, reserved, ends, now)
            # A hash made again since the last reply (replaced: it held another type;
            # deleted; Redis restarted empty): what this process had written there is
            # gone.  Its whole state goes again with the next round trip (a resync
            # writes it whole already).
            lost |= not resync and generation != b.generation
            b.generation = generation
        for waiting, refused in zip(batch, refusals, strict=True):
            if refused:
                waiting.result = budgets[refused - 1]
            elif waiting.gone:
                for b in waiting.budgets:  # its caller left: give the grant back
                    b.pend_r -= waiting.estimate
                self._wake.set()
            else:
                waiting.result = None
                for b in waiting.budgets:
                    b.mine += waiting.estimate
            waiting.done.set()
        if resync:
            # What changed here while the resync was on its way goes as a change.
            for b, (dr, ds) in zip(budgets, sent, strict=True):
                b.pend_r += b.mine - dr
                b.pend_s += b.unsent - ds
                b.unsent = 0.0
            self._resync = False
            self.ready = True
            if any(b.pend_r or b.pend_s for b in budgets):
                self._wake.set()
        if lost:
            # As after a gap (switched): until the resync has written this process's
            # whole state, its reservations are decided locally and its settles kept
            # for the resync, not queued as changes to a reservation it rewrites.
            self.ready = False
            for b in budgets:
                b.unsent += b.pend_s
                b.pend_r = b.pend_s = 0.0
            self._resync = True
            self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write this process's state, then one round trip whenever there is news or a
        reservation waiting, and each heartbeat (until cancelled)."""
        if self._client.shared:
            await self._apply()  # before the first request: the view, and ready
        task_status.started()
        try:
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                if self._client.shared and (self._resync or self.ready):
                    # Shielded (bounded by the client): a round trip cut short would
                    # leave its news neither here nor known to be there.
                    with trio.CancelScope(shield=True):
                        await self._apply()
                else:
                    queue, self._queue = self._queue, []
                    for waiting in queue:
                        waiting.done.set()  # decided locally
                if self._queue:
                    self._wake.set()
        finally:
            await self._flush()

    async def _flush(self) -> None:
        """Send the settles still queued now, shielded (bounded by the client): as
        :meth:`run` ends, and as the client closes (a closer: a settle queued after
        :meth:`run` ended, by a call ending as the router closes, goes then)."""
        if self.ready and any(b.pend_r or b.pend_s for b in self.budgets):
            with trio.CancelScope(shield=True):
                await self._apply()


def _read(
    reply: object, batch: Sequence[_Reservation], budgets: Sequence[SharedBudget]
) -> tuple[list[int], list[tuple[float, float, float, str]]]:
    """budget.lua's reply: each reservation's refusal (0, or the 1-based index of a cap
    it falls under) and each cap's view (spent, reserved, microseconds until its window
    ends, generation); :class:`MalformedReply` if it is not that."""
    m = len(batch)
    values = array(reply, m + 4 * len(budgets), "budget.lua")
    refusals: list[int] = []
    for waiting, value in zip(batch, values, strict=False):
        refused = integer(value, "budget.lua refusal", 0, len(budgets))
        if refused and all(b is not budgets[refused - 1] for b in waiting.budgets):
            raise MalformedReply(f"budget.lua refusal: cap {refused} is not the reservation's")
        refusals.append(refused)
    views: list[tuple[float, float, float, str]] = []
    for i, b in enumerate(budgets):
        spent, reserved, ends, generation = values[m + 4 * i : m + 4 * i + 4]
        views.append(
            (
                number(spent, "budget.lua spent"),
                number(reserved, "budget.lua reserved"),
                number(ends, "budget.lua window end", b.period_us),
                text(generation, "budget.lua generation", 32),
            )
        )
    return refusals, views


def share_budgets(client: SharedClient, routes: Routes) -> SharedBudgets | None:
    """Put every spend cap of the router (its own, its routes', its providers') on Redis;
    the owner of them all, or ``None`` when the router has no cap."""
    spend = routes._spend
    owner = SharedBudgets(client, [])

    def shared(budget: Budget) -> SharedBudget:
        b = SharedBudget(owner, client.key("{budgets}", budget.scope), budget)
        owner.budgets.append(b)
        return b

    if spend.budget is not None:
        spend.budget = shared(spend.budget)
    spend.provider_budgets = {n: shared(b) for n, b in spend.provider_budgets.items()}
    for route in routes.routes.values():
        if route.spend_budget is not None:
            route.spend_budget = shared(route.spend_budget)
    if not owner.budgets:
        return None
    spend.shared = owner
    client.add_listener(owner)
    return owner
