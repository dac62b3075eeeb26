"""A request's race: what one attempt does to its target, on every path.

:class:`~router._race.Race` is the driver (the schedule, the trace, the winner);
:class:`RequestRace` is the router's race for one request, and supplies what an attempt
does on its target, whether it runs alone in the caller's task (sequential fallback) or
beside others in the race's nursery (hedging, racing):

1. **reserve** its estimated spend under every cap that applies (or refuse it);
2. **call** the target's actor (``complete``, ``stream`` or ``embed``, through the
   operation's ``call``);
3. **retry** the same target after a retryable error, with backoff, while its retry
   policy, its retry budget and the caller's deadline allow — unless another attempt
   can start (a target is left, ``max_attempts`` not reached) and the error says this
   one is busy (``RateLimited``, ``Overloaded``, ``Timeout``): then the race moves on
   at once;
4. **settle** the spend exactly once (a stream's when the caller's stream ends).

The race's other questions are answered from the route and the actors: whether an error
fails over, the hedge budget, each target's expected latency (to skip extra attempts
that cannot meet the deadline) and a provider's pause.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

import trio

from providers import LLMError, Overloaded, RateLimited, Timeout

from ._actor import ProviderActor
from ._policy import Candidate, Needs, Plan, hedge_delay
from ._race import AttemptRecord, Race
from ._request_events import RequestEvents
from ._retry import retry_delay
from ._routes import Route
from ._spend import Charge, Spend
from ._statistics import Counters

__all__ = ["Call", "RequestRace", "Targets"]

T = TypeVar("T")

logger = logging.getLogger("trio_llm_router")

#: One operation's call on one target: returns the actor's coroutine (not awaited, so
#: that an attempt's stack is one layer shorter on every I/O wake-up).
Call = Callable[[ProviderActor, Candidate, AttemptRecord], Awaitable[T]]


class Targets:
    """What every request's race reads from its router: made once per router."""

    __slots__ = ("actors", "clock", "counts", "id_prefix", "rng", "spend")

    def __init__(
        self,
        actors: Mapping[str, ProviderActor],
        spend: Spend,
        counts: Counters,
        rng: random.Random,
        clock: Callable[[], float],
        id_prefix: str,
    ) -> None:
        self.id_prefix = id_prefix
        self.actors = actors
        self.spend = spend
        self.counts = counts
        self.rng = rng
        self.clock = clock


class RequestRace(Race[T]):
    """One request's race over its plan on ``route`` (see the module docstring).

    The route's hedge settings decide the schedule: no hedging (or a hedge without a
    delay) races at most ``max_attempts`` targets one at a time (``delay = inf``);
    otherwise the delay is the route's, or the primary's latency percentile, and a
    hedge that falls due with no target left is traced and counted.
    """

    __slots__ = ("_call", "_discard", "_events", "_needs", "_route", "_sequence", "_targets")

    def __init__(
        self,
        targets: Targets,
        route: Route,
        plan: Plan,
        needs: Needs,
        call: Call[T],
        *,
        now: float,
        sequence: int,
        request_id: str,
        events: RequestEvents | None,
        discard: Callable[[T, AttemptRecord], Awaitable[None]] | None,
    ) -> None:
        self._targets = targets
        self._sequence = sequence
        self._route = route
        self._needs = needs
        self._call = call
        self._events = events
        self._discard = discard
        hedge = route.hedge
        planned = plan.targets
        max_attempts = len(planned) if hedge is None else min(hedge.max_attempts, len(planned))
        delay = math.inf
        counters = None
        hedge_budget = route.hedge_budget
        if hedge is not None and hedge_budget is not None:
            hedge_budget.deposit()
            q = hedge.percentile
            if q is None:
                delay = hedge_delay(hedge, None, 0)
            else:
                primary = targets.actors[planned[0].provider]
                stream = needs.streaming
                delay = hedge_delay(
                    hedge,
                    primary.latency_percentile(q, now, stream=stream),
                    primary.latency_samples(now, stream=stream),
                )
            if delay != math.inf:
                # Not capped by the plan: a hedge that falls due with no target left is
                # traced and counted (the race stops when nothing remains to start).
                max_attempts = hedge.max_attempts
                counters = route.hedge_counters
                if counters is not None:
                    counters.delay = delay
        super().__init__(
            planned,
            max_attempts=max_attempts,
            delay=delay,
            request_id=request_id,
            observer=events,
            clock=targets.clock,
            hedge_counters=counters,
        )

    # -- one attempt

    def reserve(self, record: AttemptRecord) -> Awaitable[None] | None:
        candidate = record.candidate
        targets = self._targets
        record.charge = charge = targets.spend.reserve(
            self._route, candidate, self._needs, self.request_id, self._events
        )
        start = record.start
        assert start is not None
        targets.actors[candidate.provider].retry_budget.record_request(start)
        confirm = charge.confirm
        return None if confirm is None else confirm()

    def call(self, record: AttemptRecord) -> Awaitable[T]:
        candidate = record.candidate
        return self._call(self._targets.actors[candidate.provider], candidate, record)

    def retry_delay(self, record: AttemptRecord, exc: LLMError, retry: int) -> float | None:
        if self.has_remaining and isinstance(exc, RateLimited | Overloaded | Timeout):
            # Another target can serve it now: don't wait here, and don't send the
            # request again to a target that just took too long.
            return None
        targets = self._targets
        actor = targets.actors[record.candidate.provider]
        rng = targets.rng
        if self.overlapping:
            # Attempts that overlap draw in the order trio schedules them, which is
            # not reproducible: each retry draws from its own generator, seeded by the
            # router's request number, its attempt number and the retry's number
            # (reproducible with a seed; without the retry's number every retry of an
            # attempt would draw the same jitter fraction).
            rng = random.Random(f"{targets.id_prefix}-{self._sequence}-{record.number}-{retry}")
        delay = retry_delay(exc, retry, actor.config.retry, rng)
        now = trio.current_time()
        if (
            delay is None
            or now + delay >= trio.current_effective_deadline()
            or not actor.retry_budget.try_spend(now)
        ):
            return None
        logger.info(
            "provider %s: %s; retry %d in %.3gs",
            actor.name,
            type(exc).__name__,
            retry,
            delay,
            extra={"provider": actor.name, "request_id": self.request_id},
        )
        if self._events is not None:
            self._events.retry(actor.name, type(exc).__name__, retry, delay)
        return delay

    def retried(self, record: AttemptRecord) -> None:
        self._targets.actors[record.candidate.provider].retried += 1
        self._targets.counts.retries += 1

    def settle(self, record: AttemptRecord, *, answered: bool) -> None:
        if answered and self._needs.streaming:
            return  # a stream's charge is settled when the caller's stream ends
        charge = record.charge
        if isinstance(charge, Charge):
            charge.settle(record, answered=answered)

    async def discard(self, result: T, record: AttemptRecord) -> None:
        if self._discard is not None:
            await self._discard(result, record)

    # -- the race's questions

    def fails_over(self, exc: LLMError) -> bool:
        return self._route.fails_over(exc)

    def spend_hedge(self) -> bool:
        budget = self._route.hedge_budget
        return budget is not None and budget.try_spend()

    def expected_latency(self, candidate: Candidate) -> float | None:
        actor = self._targets.actors[candidate.provider]
        return actor.expected_latency(stream=self._needs.streaming)

    def skip(self, candidate: Candidate, more: bool) -> str | None:
        if not more:
            return None
        pause = self._targets.actors[candidate.provider].pause_remaining(trio.current_time())
        if pause > 0:
            # The provider told us to back off; another target can serve now.
            return f"paused for {pause:.3g}s more by the provider's retry-after"
        return None
