"""The race: staggered attempts on a plan's targets, the first success wins.

This is trio's happy eyeballs (``trio/_highlevel_open_tcp_stream.py``) with providers for
addresses, and gRPC's hedging policy for the rules:

- One driver, in the caller's task.  The first attempt starts at once.  Each further
  attempt starts when the hedge delay has passed since the previous start (a *hedge*,
  which needs a token from the route's hedge budget) or at once when a running attempt
  fails with an error the route fails over on (a *fallback*, which needs none).  With
  ``delay = 0`` every attempt starts at once (racing); with ``delay = inf`` it is plain
  sequential fallback, whose attempts never overlap and so run in the caller's task
  itself, one after the other; otherwise each attempt is a task in one nursery.
- Each attempt, on every path, is one function: reserve its spend, call its target,
  retry the target while its retry policy allows (it counts as failed only when it
  gives up), settle its spend.  The race above it never sees a retry, only the
  attempt's end; a hedge falls due on time while an attempt waits to retry.
- The first attempt to succeed commits: it stores its result and cancels the nursery
  with a reason, so every other attempt is cancelled — its permit returned, its
  connection closed — before the caller gets the result.  For a streaming call "succeed"
  means "reached its first content event".
- An error the route does not fail over on is *fatal*: it cancels everything and is
  raised to the caller as it is.  So is a context-length error when no target with a
  larger window is left.
- When every attempt has failed, the caller gets one :class:`~providers.AllProvidersFailed`
  whose ``__cause__`` is an ``ExceptionGroup`` of the individual errors (a single
  attempt's error is raised as it is).
- One deadline covers all attempts: the caller's cancel scope, and nothing else.  A
  prediction never refuses a request: the first attempt always goes out (to the first
  target predicted to finish in the time left, or, when none is, to the first target),
  and the caller's scope decides.  Only *extra* attempts — hedges, and fallbacks after a
  failure — are skipped when their target's expected latency does not fit in the time
  left.
- A hedge that falls due but is not sent is traced too, with why: the route's hedge
  budget is empty (the target stays in line for a fallback), its target cannot finish
  before the deadline, or no target is left.
- Whatever ends the race, a result that succeeded but is not handed to the caller (a
  photo finish, the caller cancelled while the losers close, an error after the win)
  is discarded — its stream closed, its permit returned — shielded and bounded; an
  error closing it is logged, never raised in place of the race's outcome.

Every target the race touched is traced as an :class:`~providers.Attempt`, with its
outcome: won, failed, cancelled (and why) or skipped (and why), and its kind: the slot
it was started (or passed over) for — primary, hedge or fallback.  A
:class:`RaceObserver`, when given, hears of each attempt as it starts and ends, in the
task where it runs (so an attempt's tracing span can be the current span of its task);
hedges are logged at DEBUG and fallbacks at INFO on the ``trio_llm_router`` logger.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable, Generator, Sequence
from typing import Generic, Protocol, TypeVar

import trio

from providers import (
    AllProvidersFailed,
    Attempt,
    ContextLengthExceeded,
    LLMError,
    NoRoute,
    ServerError,
    Usage,
)
from providers._types import AttemptKind, AttemptOutcome

from ._policy import Candidate

__all__ = ["AttemptRecord", "HedgeCounters", "Race", "RaceObserver"]

T = TypeVar("T")

logger = logging.getLogger("trio_llm_router")

#: Seconds a discarded result (a stream that won but is not handed to the caller) may
#: take to close, shielded from the caller's cancellation.
DISCARD_BOUND = 5.0

#: The trace's stand-in target for a hedge that fell due when no target was left.
NO_TARGET = Candidate(provider="", model="", index=-1)

#: How the reason of a hedge that fell due but was not sent begins.
NOT_SENT = "hedge not sent: "

#: How the reason of a target passed over for the caller's deadline begins.
LATE = "cannot finish before the deadline"


class HedgeCounters:
    """A hedged route's running counts (read by ``Router.statistics()``).

    ``delay`` is the hedge delay in force for the route's latest request; the
    ``not_sent_*`` counters count hedges that fell due but were not sent, by reason.
    """

    __slots__ = ("delay", "not_sent_budget", "not_sent_deadline", "not_sent_no_target", "sent")

    def __init__(self) -> None:
        self.delay: float | None = None
        self.sent = 0
        self.not_sent_budget = 0
        self.not_sent_deadline = 0
        self.not_sent_no_target = 0


class AttemptRecord:
    """One attempt as the race sees it, filled in as it goes; frozen as an Attempt."""

    __slots__ = (
        "candidate",
        "charge",
        "cost",
        "end",
        "error",
        "kind",
        "number",
        "observer",
        "outcome",
        "queued",
        "reason",
        "retries",
        "sent_tokens",
        "start",
        "usage",
    )

    def __init__(self, candidate: Candidate, kind: AttemptKind, start: float | None) -> None:
        self.candidate = candidate
        self.kind: AttemptKind = kind
        #: 1 for the request's first attempt started, 2 for the next...; 0 if skipped.
        self.number = 0
        self.start = start
        self.end: float | None = None
        self.outcome: AttemptOutcome | None = None
        self.reason: str | None = None
        self.error: LLMError | None = None
        self.retries = 0
        #: Estimated prompt tokens, set when the attempt got past admission (was sent).
        self.sent_tokens = 0
        self.usage: Usage | None = None
        #: Seconds waited for admission (the actor adds each wait of its tries).
        self.queued = 0.0
        #: Dollars this attempt cost (the answer, or the prompt of a lost attempt).
        self.cost: float | None = None
        #: The race's observer, set as the attempt starts; told of each admission.
        self.observer: RaceObserver | None = None
        #: The router's spend bookkeeping for this attempt, settled when it ends.
        self.charge: object | None = None

    def freeze(self, t0: float, hedge_delay: float | None = None) -> Attempt:
        """The public record; times relative to the request's start ``t0``.

        ``hedge_delay``: the delay in force, for the records of a hedged race."""
        outcome = self.outcome or "cancelled"
        wasted = 0 if outcome in ("won", "skipped") else self.sent_tokens
        return Attempt(
            provider=self.candidate.provider,
            model=self.candidate.model,
            kind=self.kind,
            outcome=outcome,
            start=None if self.start is None else self.start - t0,
            end=None if self.end is None else self.end - t0,
            retries=self.retries,
            error_type=None if self.error is None else type(self.error).__name__,
            reason=self.reason,
            usage=self.usage,
            cost=self.cost,
            wasted_tokens=wasted,
            hedge_delay=hedge_delay,
            queued=self.queued,
        )


class RaceObserver(Protocol):
    """Hears of a race's attempts as they happen (the router's events are built on it)."""

    def attempt_started(self, record: AttemptRecord) -> None:
        """``record`` starts, in the task that runs it."""

    def attempt_finished(self, record: AttemptRecord) -> None:
        """``record`` won, failed, was cancelled or skipped; its outcome is set."""

    def launched(self, record: AttemptRecord, previous: AttemptRecord | None) -> None:
        """A hedge or fallback ``record`` is about to start; ``previous`` is the attempt
        it hedges, or the failed one it replaces."""

    def admitted(self, record: AttemptRecord, granted_at: float, waited: float) -> None:
        """A try of ``record`` (``record.retries`` is its number) was admitted by its
        provider at ``granted_at`` after ``waited`` seconds in the queue; told by the
        actor (any caller of ``call`` that admits may tell it), in the attempt's task."""


def _foreign(exc: Exception, record: AttemptRecord) -> LLMError:
    error = ServerError(
        f"the attempt raised {type(exc).__name__}: {exc}", provider=record.candidate.provider
    )
    error.__cause__ = exc
    return error


class _Inline:
    """Stands in for the nursery of a race with ``delay = inf``: its attempts run one at
    a time, in the caller's task, so there is nothing to supervise.

    ``async with`` awaits what ``__aenter__`` and ``__aexit__`` return; an exhausted
    iterator is an awaitable that finishes at once with ``None``, and stays exhausted,
    so one serves every request: no coroutine, no allocation.
    """

    __slots__ = ()

    def __aenter__(self) -> _Inline:
        return self

    def __aexit__(self, *exc_info: object) -> _Inline:
        return self

    def __await__(self) -> Generator[None, None, None]:
        return _DONE


def _finished() -> Generator[None, None, None]:
    return
    yield  # a generator function, whose generator ends at once


_DONE = _finished()
next(_DONE, None)
_INLINE = _Inline()


class Race(Generic[T]):
    """One request's race over a plan; see the module docstring.

    The race is the one driver of every request: sequential fallback (``delay = inf``),
    staggered hedging and racing (``delay = 0``) follow one schedule (:meth:`run`), and
    every attempt, on every path, runs one function (``_one``): reserve its spend, call
    the target, retry the target while :meth:`retry_delay` says so, settle its spend,
    and record how it ended.  With ``delay = inf`` no two attempts ever overlap, so the
    race runs them one after the other in the caller's task: no nursery, task, event or
    cancel scope per request.  Otherwise each attempt is a task in one nursery.

    What the race does *to* a target is the subclass's: :meth:`call` (required), and
    the hooks below, whose defaults make a plain race (no spend, no retries, fail over
    on retryable errors, no deadline predictions).  They are methods rather than
    callbacks so that a request's race is one object: no closure, no bound method and
    no reference cycle per request.

    Args:
        plan: the targets, in the policy's order.
        max_attempts: attempts started at most (skipped targets do not count).
        delay: seconds between staggered starts; ``math.inf`` for no hedging.
        request_id: the request's id, for log lines.
        observer: told of every attempt as it starts and ends; ``None`` for nobody.
        clock: reads the current time: ``trio.current_time`` or, faster, the bound
            ``current_time`` of the run's clock.
        hedge_counters: a hedged route's counters, told of every hedge not sent;
            ``None`` for a race that does not hedge.
    """

    __slots__ = (
        "_clock",
        "_context_limit",
        "_delay",
        "_failed",
        "_failed_records",
        "_failures",
        "_fatal",
        "_hedge_counters",
        "_max_attempts",
        "_over",
        "_remaining",
        "_result",
        "_running",
        "_started",
        "errors",
        "fallbacks",
        "hedges",
        "observer",
        "records",
        "request_id",
        "winner",
    )

    def __init__(
        self,
        plan: Sequence[Candidate],
        *,
        max_attempts: int,
        delay: float,
        request_id: str = "",
        observer: RaceObserver | None = None,
        clock: Callable[[], float] = trio.current_time,
        hedge_counters: HedgeCounters | None = None,
    ) -> None:
        self.request_id = request_id
        self._hedge_counters = hedge_counters
        self._clock = clock
        self.observer = observer
        self._remaining: deque[Candidate] = deque(plan)
        self._max_attempts = max_attempts
        self._delay = delay
        self.records: list[AttemptRecord] = []
        self.errors: list[LLMError] = []
        self.winner: AttemptRecord | None = None
        self._result: T | None = None
        self._fatal: LLMError | None = None
        # Set when an attempt fails, to wake the staggering loop (made when a staggered
        # race starts; a race that runs its attempts one at a time needs none).
        self._failed: trio.Event | None = None
        self._failures = 0
        self._over = False
        self._running = 0
        self._context_limit: int | None = None
        # The failed attempts whose fallbacks have not started yet, oldest first (made
        # at the first failure).
        self._failed_records: deque[AttemptRecord] | None = None
        self._started = 0
        self.hedges = 0
        self.fallbacks = 0

    # -- what the race does to a target: the subclass's --------------------------------

    def call(self, record: AttemptRecord) -> Awaitable[T]:
        """Try ``record``'s target once; it may fill in the record's ``sent_tokens``,
        ``usage`` and ``queued``.  Called again for each retry."""
        raise NotImplementedError

    def reserve(self, record: AttemptRecord) -> Awaitable[None] | None:
        """Before an attempt's first try: reserve its spend, or raise to refuse it.

        May return an awaitable (spend caps shared on Redis) that the attempt awaits
        before it is sent, which completes the reservation or raises the refusal.
        """
        return None

    def settle(self, record: AttemptRecord, *, answered: bool) -> None:
        """After an attempt: settle its spend; ``answered`` when it succeeded."""

    def retry_delay(self, record: AttemptRecord, exc: LLMError, retry: int) -> float | None:
        """Seconds to wait before retry number ``retry`` of ``record``'s target after
        ``exc``, or ``None`` to give up (the attempt fails with ``exc``)."""
        return None

    def retried(self, record: AttemptRecord) -> None:
        """A retry of ``record``'s target is about to go out (after its wait)."""

    def fails_over(self, exc: LLMError) -> bool:
        """Whether ``exc`` on one target sends the request on to the next."""
        return exc.retryable

    def spend_hedge(self) -> bool:
        """Take a token from the hedge budget; ``False`` means no hedge."""
        return True

    def expected_latency(self, candidate: Candidate) -> float | None:
        """``candidate``'s latency estimate, to skip extra attempts that cannot finish
        before the deadline; ``None`` when unknown."""
        return None

    def skip(self, candidate: Candidate, more: bool) -> str | None:
        """A reason to pass ``candidate`` over now (e.g. paused by its provider), given
        whether other targets remain; ``None`` to try it."""
        return None

    async def discard(self, result: T, record: AttemptRecord) -> None:
        """Release the result of an attempt that succeeded but is not handed to the
        caller (close a stream)."""

    @property
    def overlapping(self) -> bool:
        """Whether attempts may run at once (a hedged or racing race, not sequential)."""
        return self._delay != math.inf

    @property
    def has_remaining(self) -> bool:
        """Whether the race may still start another attempt: targets are left that it
        has not started or skipped, and ``max_attempts`` is not reached."""
        return bool(self._remaining) and self._started < self._max_attempts

    # -- choosing the next target -------------------------------------------------------

    def _skipped(self, candidate: Candidate, reason: str, kind: AttemptKind) -> None:
        """Trace ``candidate`` as passed over for the ``kind`` of attempt due now."""
        record = AttemptRecord(candidate, kind, None)
        record.end = self._clock()
        record.outcome = "skipped"
        record.reason = reason
        self.records.append(record)
        if self.observer is not None and candidate is not NO_TARGET:
            self.observer.attempt_finished(record)

    def _launch(self, record: AttemptRecord, previous: AttemptRecord | None) -> None:
        """Log (and tell the observer of) a hedge or a fallback about to start."""
        provider = record.candidate.provider
        if record.kind == "hedge":
            if previous is not None and logger.isEnabledFor(logging.DEBUG):
                logger.debug(
                    "request %s: hedging on %s, %s has not answered in %.3gs",
                    self.request_id,
                    provider,
                    previous.candidate.provider,
                    (record.start or 0.0) - (previous.start or 0.0),
                    extra={"request_id": self.request_id, "provider": provider},
                )
        elif previous is not None and logger.isEnabledFor(logging.INFO):
            logger.info(
                "request %s: falling back to %s, %s failed (%s)",
                self.request_id,
                provider,
                previous.candidate.provider,
                type(previous.error).__name__,
                extra={"request_id": self.request_id, "provider": provider},
            )
        if self.observer is not None:
            self.observer.launched(record, previous)

    def _cancel_reason(self) -> str:
        if self.winner is not None:
            return f"lost the race to {self.winner.candidate.provider}"
        if self._fatal is not None:
            return f"the race ended: {type(self._fatal).__name__}"
        return "the caller was cancelled"

    def _finished(self, record: AttemptRecord) -> None:
        if self.observer is not None:
            self.observer.attempt_finished(record)

    def _late(self, candidate: Candidate) -> str | None:
        """Why ``candidate`` cannot finish before the caller's deadline, or ``None``."""
        deadline = trio.current_effective_deadline()
        if deadline == math.inf:
            return None
        expected = self.expected_latency(candidate)
        if expected is None:
            return None
        now = self._clock()
        if now + expected <= deadline:
            return None
        return f"{LATE} (expects ~{expected:.3g}s, {max(0.0, deadline - now):.3g}s left)"

    def _next(self, kind: AttemptKind) -> Candidate | None:
        """The next target worth starting for a ``kind`` attempt, recording the ones
        passed over.

        A prediction never refuses a request: for the primary, a target that is not
        expected to finish before the deadline is passed over only for a later one
        that is; when none is, the first goes out anyway (the others stay in line).
        """
        late: list[tuple[Candidate, str]] | None = None
        remaining = self._remaining
        while remaining:
            candidate = remaining.popleft()
            limit = self._context_limit
            window = candidate.context_window
            if limit is not None and window is not None and window <= limit:
                # A window we do not know may well be larger: that target is tried.
                self._skipped(
                    candidate,
                    f"its context window ({window}) is not larger than the one that was "
                    f"exceeded ({limit})",
                    kind,
                )
                continue
            reason = self.skip(candidate, bool(remaining) or late is not None)
            if reason is None:
                reason = self._late(candidate)
                if reason is not None and kind == "primary":
                    if late is None:
                        late = []
                    late.append((candidate, reason))
                    continue
            if reason is None:
                if late is not None:
                    for passed, why in late:
                        self._skipped(passed, why, kind)
                return candidate
            self._skipped(candidate, reason, kind)
        if late is not None:
            # Nothing is expected to finish in time: the first goes out all the same,
            # and the caller's cancel scope decides.
            for passed, _ in reversed(late[1:]):
                remaining.appendleft(passed)
            return late[0][0]
        return None

    def _hedge_target(self) -> Candidate | None:
        """The target of a hedge that fell due, or ``None`` when it is not sent (traced
        and counted, with why: no target left, the deadline, or an empty budget)."""
        counters = self._hedge_counters
        if not self._remaining:
            self._skipped(NO_TARGET, NOT_SENT + "no target left to hedge on", "hedge")
            if counters is not None:
                counters.not_sent_no_target += 1
            return None
        before = len(self.records)
        candidate = self._next("hedge")
        if candidate is None:
            if counters is not None:
                passed = self.records[before:]
                if any(r.reason and r.reason.startswith(LATE) for r in passed):
                    counters.not_sent_deadline += 1
                else:
                    counters.not_sent_no_target += 1
            return None
        if self.spend_hedge():
            return candidate
        # Stays in line for a fallback after a failure, which needs no token.
        self._remaining.appendleft(candidate)
        self._skipped(candidate, NOT_SENT + "the route's hedge budget is empty", "hedge")
        if counters is not None:
            counters.not_sent_budget += 1
        return None

    async def _turn(self, last_start: float, delay: float) -> AttemptKind | None:
        """Wait until the next attempt is due: a failure (fallback) or the delay (hedge).

        ``None`` when the race is over (it was won, or a fatal error ended it, while no
        other attempt was running, so there was nothing to cancel).
        """
        while True:
            if self._over:
                return None
            if self._failures:
                # Each failure starts one fallback, even when several came at once.
                self._failures -= 1
                if self._failed is None:
                    # One at a time, in the caller's task: the failed attempt returned
                    # without a checkpoint, so a caller cancelled meanwhile hears of it
                    # here, before a fallback starts (as a staggered race's loop would).
                    await trio.lowlevel.checkpoint_if_cancelled()
                elif not self._failures:
                    self._failed = trio.Event()
                return "fallback"
            # Only a staggered race gets here: one whose attempts run one at a time has
            # been won, ended or failed by the time its attempt returns.
            failed = self._failed
            assert failed is not None
            with trio.move_on_at(last_start + delay):
                await failed.wait()
                continue
            if self._over:
                return None  # decided in the very instant the hedge fell due
            return "hedge"

    # -- the driver ---------------------------------------------------------------------

    async def run(self) -> tuple[T, AttemptRecord]:
        """Run the race; return the winner's result and record, or raise (see above).

        One schedule for every race: the first attempt at once, each further one when a
        running attempt fails (a fallback) or when the delay has passed since the
        previous start (a hedge).  With ``delay = inf`` only a failure starts the next,
        and the previous attempt has ended by then: the attempts run here, in the
        caller's task, one after the other (``_INLINE`` stands in for the nursery, so
        the schedule is the same code, and no nursery, task or event is made).
        Otherwise each attempt runs in a task of one nursery, which the winner (or a
        fatal error) cancels.

        Every coroutine layer between the caller's task and the socket is resumed on
        each I/O wake-up of an attempt, so the stack is kept short: ``run`` → ``_one``
        → the target's own coroutine (``call`` returns it rather than awaiting it).
        """
        staggered = self._delay != math.inf
        if staggered:
            self._failed = trio.Event()
        try:
            async with trio.open_nursery() if staggered else _INLINE as nursery:
                started = 0
                last_start = 0.0
                kind: AttemptKind | None = "primary"
                last: AttemptRecord | None = None
                delay = self._delay
                while started < self._max_attempts:
                    if started:
                        kind = await self._turn(last_start, delay)
                        if kind is None:
                            break
                    if kind == "hedge":
                        candidate = self._hedge_target()
                        if candidate is None:
                            if self._remaining:
                                delay = math.inf  # no budget: only a failure starts another
                                continue
                            break
                    else:
                        assert kind is not None
                        candidate = self._next(kind)
                        if candidate is None:
                            break
                    started += 1
                    last_start = self._clock()
                    record = AttemptRecord(candidate, kind, last_start)
                    self.records.append(record)
                    if kind == "hedge":
                        self.hedges += 1
                        if self._hedge_counters is not None:
                            self._hedge_counters.sent += 1
                        self._launch(record, last)
                    elif kind == "fallback":
                        self.fallbacks += 1
                        failed = self._failed_records
                        self._launch(record, failed.popleft() if failed else None)
                    last = record
                    self._running += 1
                    self._started += 1
                    record.number = self._started
                    if nursery is None:
                        await self._one(record, None)
                    else:
                        nursery.start_soon(self._one, record, nursery.cancel_scope)
        except BaseException:
            # Won, but the caller will not get it (cancelled while the losers closed, or
            # an error after the win): close it here, or it holds its permit until gc.
            winner = self.winner
            if winner is not None:
                result = self._result
                self._result = None
                winner.outcome = "cancelled"
                winner.reason = "won, but the race ended before the caller got the result"
                if result is not None:
                    await self._discard_result(result, winner)
            raise
        return self._conclude()

    async def _discard_result(self, result: T, record: AttemptRecord) -> None:
        """Release a result nobody will read: shielded, so a cancelled caller still
        closes it; bounded, so a stuck close cannot hold the caller for ever; and quiet,
        so an error closing it (the provider's, which its actor has counted) does not
        replace what the caller gets: the answer, or its own cancellation."""
        with trio.CancelScope(shield=True), trio.move_on_after(DISCARD_BOUND):
            try:
                await self.discard(result, record)
            except Exception as exc:
                logger.info(
                    "request %s: closing the unused answer of %s failed (%s)",
                    self.request_id,
                    record.candidate.provider,
                    type(exc).__name__,
                    extra={"request_id": self.request_id, "provider": record.candidate.provider},
                )

    async def _one(self, record: AttemptRecord, race_scope: trio.CancelScope | None) -> None:
        """One attempt, on every path: reserve, call, retry on the target, settle; then
        record how it ended and what that means for the race.

        ``race_scope`` is the nursery's scope to cancel when the race is decided, or
        ``None`` when the attempt runs in the caller's task (nothing else runs).
        """
        observer = self.observer
        if observer is not None:
            record.observer = observer
            observer.attempt_started(record)
        try:
            pending = self.reserve(record)
            try:
                if pending is not None:
                    await pending
                failure: LLMError | None = None
                try:
                    result = await self.call(record)
                except LLMError as exc:
                    failure = exc
                if failure is not None:
                    # Retried outside the handler: a retry's error is not chained to
                    # the previous one, and its traceback does not hold this frame.
                    try:
                        result = await self._retrying(record, failure)
                    finally:
                        failure = None
            except BaseException:
                self.settle(record, answered=False)
                raise
            self.settle(record, answered=True)
        except LLMError as exc:
            self._running -= 1
            self._lost(record, exc, race_scope)
            return
        except trio.Cancelled:
            self._running -= 1
            record.end = self._clock()
            record.outcome = "cancelled"
            record.reason = self._cancel_reason()
            self._finished(record)
            raise
        except Exception as exc:
            self._running -= 1
            self._lost(record, _foreign(exc, record), race_scope)
            return
        self._running -= 1
        record.end = self._clock()
        if self.winner is not None or self._fatal is not None:
            # Succeeded in the same instant the race was decided: lost a photo finish.
            record.outcome = "cancelled"
            record.reason = self._cancel_reason()
            await self._discard_result(result, record)
            self._finished(record)
            return
        record.outcome = "won"
        self.winner = record
        self._result = result
        self._finished(record)
        if race_scope is None:
            self._over = True  # alone in the caller's task: nothing to cancel or wake
        else:
            self._end(race_scope, f"{record.candidate.target} won the race")

    async def _retrying(self, record: AttemptRecord, exc: LLMError) -> T:
        """The attempt's first try failed with ``exc``: try its target again while
        :meth:`retry_delay` gives a delay.  Raises the last error when it gives up."""
        retry = 1
        while True:
            # A race decided while this try ran (a photo finish, or a try that ended in
            # a shield) makes no retry: no retry budget spent, no retry announced.
            if self._over:
                raise exc
            delay = self.retry_delay(record, exc, retry)
            if delay is None:
                raise exc
            await trio.sleep(delay)
            # Counted as it goes out: a retry the race cancels in its wait sends nothing.
            record.retries += 1
            self.retried(record)
            retry += 1
            try:
                return await self.call(record)
            except LLMError as again:
                exc = again

    def _conclude(self) -> tuple[T, AttemptRecord]:
        if self.winner is not None:
            result = self._result
            assert result is not None
            return result, self.winner
        if self._fatal is not None:
            raise self._fatal
        # A hedge not sent is no target passed over: it leaves nothing to report here.
        records = [
            r
            for r in self.records
            if r.outcome != "skipped" or not (r.reason or "").startswith(NOT_SENT)
        ]
        if len(self.errors) == 1 and len(records) == 1:
            raise self.errors[0]
        summary = "; ".join(
            f"{r.candidate.target}: "
            + (f"skipped, {r.reason}" if r.error is None else type(r.error).__name__)
            for r in records
        )
        if not self.errors:
            # Unreachable while the first attempt always goes out; never a retryable
            # refusal that a retry loop could spin on.
            raise NoRoute(f"no target could be tried ({summary})")
        raise AllProvidersFailed(
            f"every target failed ({summary})", errors=self.errors
        ) from ExceptionGroup("the errors of every attempt", self.errors)

    def _end(self, race_scope: trio.CancelScope | None, reason: str) -> None:
        """The race is decided: cancel what still runs, or just wake the staggering loop."""
        self._over = True
        if race_scope is None:
            return
        if self._running:
            race_scope.cancel(reason=reason)
        elif self._failed is not None:
            # Nothing else runs: waking the loop is enough, and cheaper than a cancel.
            self._failed.set()

    def _lost(
        self, record: AttemptRecord, exc: LLMError, race_scope: trio.CancelScope | None
    ) -> None:
        record.end = self._clock()
        record.outcome = "failed"
        record.error = exc
        record.reason = str(exc)
        self.errors.append(exc)
        self._finished(record)
        if self.winner is not None or self._fatal is not None:
            return
        fatal = not self.fails_over(exc)
        if isinstance(exc, ContextLengthExceeded) and not fatal:
            window = record.candidate.context_window or exc.limit
            if window is not None:
                limit = self._context_limit = max(self._context_limit or 0, window)
                # Fatal when no target with a larger (or unknown) window is left.
                fatal = not any(
                    c.context_window is None or c.context_window > limit for c in self._remaining
                )
        if fatal:
            self._fatal = exc
            self._end(race_scope, f"{record.candidate.target} failed: {type(exc).__name__}")
            return
        self._failures += 1
        failed = self._failed_records
        if failed is None:
            failed = self._failed_records = deque()
        failed.append(record)
        if self._failed is not None:
            self._failed.set()

    def trace(self, t0: float) -> list[Attempt]:
        """Every record as a public :class:`~providers.Attempt`, with cancel reasons;
        a hedged race's records carry the hedge delay that was in force."""
        for record in self.records:
            if record.outcome == "cancelled" and record.reason is None:
                record.reason = self._cancel_reason()
            elif record.outcome is None:
                record.outcome = "cancelled"
                record.reason = "the caller was cancelled"
        delay = self._delay
        hedge_delay = None if delay == math.inf else delay
        return [r.freeze(t0, hedge_delay) for r in self.records]
