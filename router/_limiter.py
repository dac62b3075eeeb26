"""Admission control for one provider: token buckets, a concurrency limit, a FIFO queue.

Token bucket (pure, :class:`TokenBucket`)
    A bucket of capacity ``b`` (the burst) refills continuously at ``r`` tokens per
    second.  At time ``t`` it holds ``min(b, tokens(t0) + r·(t - t0))``.  A request of cost
    ``c`` is admitted when the bucket holds at least ``c``; it then holds ``c`` fewer.  So
    in any window of length ``T`` the admitted cost is at most ``r·T + b``.  A request with
    ``c > b`` can never be admitted and is refused at once.  The bucket may go below zero
    when usage is reconciled upwards (the provider used more tokens than we estimated):
    that debt delays later requests, which is what the provider would do to us.

    RPM is a bucket with ``r = rpm / 60`` and cost 1 per request; TPM one with
    ``r = tpm / 60`` and cost = the request's estimated tokens (input + max output).  The
    default burst is the full per-minute limit, which is how vendors state their limits.

Mailbox (async, :class:`Mailbox`)
    Requests wait in one bounded FIFO queue.  The head is admitted when every bucket
    holds its cost, the concurrency limit has room, and no provider-imposed pause
    (``retry-after``) is in force; requests behind it wait their turn, so nobody
    starves and order is arrival order.  The queue is served by the actor's own task
    (:meth:`Mailbox.run`), which sleeps exactly until the head can next be admitted or
    until something changes (an arrival, a release, a pause) — no polling loop.

    A request is refused at once with :class:`~providers.Overloaded` (so the router can
    fail over) when the queue is full, when its cost exceeds a bucket's capacity, or
    when its expected wait — the time the buckets need to refill for everything queued
    ahead of it plus itself — exceeds the time left before its deadline
    (``trio.current_effective_deadline()``).

    Every waiter knows which limit holds it (``"pause"``, ``"concurrency"``,
    ``"rpm"`` or ``"tpm"``: what held the head of the queue when it last looked), and
    ``admit(on_wait=...)`` hears how long a request waited and why, once its wait ends.

Pauses and suspensions (:meth:`Mailbox.pause_until`)
    A pause the provider asked for (``retry-after``) of at most
    ``max_pause`` seconds holds the queue: requests wait for it, within their deadline.
    A longer one *suspends* the mailbox instead: the requests waiting fail at once, and
    every new one is refused at once with :class:`~providers.RateLimited` (its
    ``retry_after`` the time left) until the suspension ends — a provider that asked for
    24 hours is out of routing for 24 hours, loudly, not a queue that never moves.

Reconciliation rule (:meth:`Permit.release`)
    TPM is debited by the estimate (input estimate + output budget) at admission.  When
    the provider reports usage, the bucket is corrected to the actual total.  When it
    does not (an error, a cancellation after sending), the input estimate stays charged
    — the provider most likely processed the prompt — and the output part is refunded.
    A request cancelled while still queued was never charged.  RPM is never refunded
    once a request was admitted.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal, TypeAlias, TypeVar

import msgspec
import trio

from providers import LLMError, Overloaded, RateLimited

if TYPE_CHECKING:
    from ._shared._limits import ProviderGate

__all__ = ["Hold", "Mailbox", "MailboxStatistics", "Permit", "TokenBucket", "WaitOutcome"]

# Float slack when comparing refilled tokens, so a wake-up computed as deficit / rate
# admits at exactly that time instead of a hair later.
_EPS = 1e-9


#: The longest reset (seconds) read as a per-minute rate-limit window's: always a pause.
MINUTE_WINDOW_RESET = 65.0

#: With shared limits: requests of the queue's head handed to Redis in one round trip.
_SHARED_BATCH = 32
#: With shared limits: how often a head held by the concurrency limit asks again (a
#: release in another process wakes nobody here).
_CONCURRENCY_POLL = 0.01


class TokenBucket:
    """A continuously refilling token bucket; pure, time passed in.

    Example::

        >>> b = TokenBucket(rate=1.0, capacity=2.0, now=0.0)
        >>> b.try_take(2.0, now=0.0), b.try_take(1.0, now=0.5), b.try_take(1.0, now=1.0)
        (True, False, True)
    """

    __slots__ = ("_stamp", "_tokens", "capacity", "rate")

    def __init__(
        self, rate: float, capacity: float, now: float, tokens: float | None = None
    ) -> None:
        if rate <= 0 or capacity <= 0:
            raise ValueError("a token bucket needs a positive rate and capacity")
        self.rate = rate
        self.capacity = capacity
        self._tokens = capacity if tokens is None else tokens
        self._stamp = now

    def tokens(self, now: float) -> float:
        """Tokens held at ``now`` (may be negative while in debt)."""
        if now > self._stamp:
            self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
        return self._tokens

    def wait_time(self, cost: float, now: float) -> float:
        """Seconds until ``cost`` tokens are held (0 if now; ``inf`` if never)."""
        if cost > self.capacity:
            return math.inf
        deficit = cost - self.tokens(now)
        return 0.0 if deficit <= 0 else deficit / self.rate

    def try_take(self, cost: float, now: float) -> bool:
        """Take ``cost`` tokens if they are there."""
        if self.tokens(now) >= cost:
            self._tokens -= cost
            return True
        return False

    def take(self, cost: float, now: float) -> None:
        """Take ``cost`` tokens unconditionally (the bucket may go into debt)."""
        self.tokens(now)
        self._tokens -= cost

    def give(self, amount: float, now: float) -> None:
        """Return ``amount`` tokens, never above capacity."""
        self._tokens = min(self.capacity, self.tokens(now) + amount)

    def clamp(self, remaining: float, now: float) -> None:
        """Hold at most ``remaining`` tokens (a provider said that is what is left)."""
        self._tokens = min(self.tokens(now), remaining)

    def resize(self, rate: float, capacity: float, now: float) -> None:
        """Change the rate and capacity (a provider announced a lower limit)."""
        self.tokens(now)
        self.rate = rate
        self.capacity = capacity
        self._tokens = min(self._tokens, capacity)


class MailboxStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """A frozen snapshot of one mailbox."""

    queued: int
    in_flight: int
    admitted: int
    refused: int
    max_concurrency: int | None
    max_queue: int
    rpm_tokens: float | None
    tpm_tokens: float | None
    paused_until: float | None
    suspended_until: float | None = None
    #: ``[shared]``: ``"shared"`` (Redis decides) or ``"local"`` (the fair share); else None.
    limits: str | None = None


#: What can hold a request in the queue: a provider's pause, the concurrency limit, the
#: RPM bucket, the TPM bucket.
Hold: TypeAlias = Literal["pause", "concurrency", "rpm", "tpm"]

#: How a wait in the queue ended.
WaitOutcome: TypeAlias = Literal["admitted", "refused", "cancelled"]

#: A :class:`Permit`, or a subclass of it: what the admission methods hand back.
P = TypeVar("P", bound="Permit")

#: Told how long a request waited in the queue, what held it and how the wait ended.
WaitListener: TypeAlias = Callable[[float, Hold, WaitOutcome], None]


class _Waiter:
    __slots__ = ("deadline", "error", "event", "gone", "granted", "held_by", "permit")

    def __init__(self, permit: Permit, held_by: Hold, deadline: float) -> None:
        self.permit = permit
        self.event = trio.Event()
        self.granted = False
        self.error: LLMError | None = None
        self.held_by: Hold = held_by
        #: The caller's deadline when it queued.
        self.deadline = deadline
        #: Left the queue (cancelled) before its grant.
        self.gone = False


class Permit:
    """A claim on one admission: made by the caller, granted by a :class:`Mailbox`,
    released exactly once (release is idempotent, and a no-op before the grant).

    ``cost`` is the estimated tokens debited from TPM; ``output_cost`` the part of it
    that is the output budget (refunded when no usage is reported); ``granted_at`` the
    time of the grant.  The caller makes the permit so that a richer object can be one:
    the actor's call (router._actor.ActorCall) is a Permit, one object per request.
    """

    __slots__ = ("_lease", "_mailbox", "cost", "granted_at", "output_cost")

    def __init__(self, cost: float = 0.0, output_cost: float = 0.0) -> None:
        self.cost = cost
        self.output_cost = output_cost
        self.granted_at = math.nan
        #: The mailbox holding the grant, while it is held.
        self._mailbox: Mailbox | None = None
        #: Granted by shared limits: the concurrency lease's id ("" without one);
        #: ``None`` for a local grant.
        self._lease: str | None = None

    @property
    def held(self) -> bool:
        """Granted and not yet released."""
        return self._mailbox is not None

    def release(self, actual_tokens: int | None = None) -> None:
        """Give the concurrency slot back and reconcile TPM (see the module docstring)."""
        mailbox = self._mailbox
        if mailbox is None:
            return
        self._mailbox = None
        mailbox._release(self, actual_tokens)


class Mailbox:
    """Admission for one provider actor.

    Synopsis::

        mailbox = Mailbox("openai", rpm=500, tpm=150_000, max_concurrency=64)
        nursery.start_soon(mailbox.run)       # the actor's loop serves the queue
        permit = await mailbox.admit(Permit(cost=1200, output_cost=1000))
        try:
            ...send...
        finally:
            permit.release(actual_tokens=usage.total_tokens)
    """

    def __init__(
        self,
        name: str,
        *,
        rpm: float | None = None,
        tpm: float | None = None,
        rpm_burst: float | None = None,
        tpm_burst: float | None = None,
        max_concurrency: int | None = None,
        max_queue: int = 1000,
        max_pause: float = math.inf,
        now: float | None = None,
    ) -> None:
        if max_queue < 0:
            raise ValueError("max_queue must be >= 0")
        if max_concurrency is not None and max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        start = trio.current_time() if now is None else now
        self.name = name
        self._rpm = TokenBucket(rpm / 60.0, rpm_burst or rpm, start) if rpm else None
        self._tpm = TokenBucket(tpm / 60.0, tpm_burst or tpm, start) if tpm else None
        self._max_concurrency = max_concurrency
        self._max_queue = max_queue
        self._queue: deque[_Waiter] = deque()
        self._queued_cost = 0.0
        self._in_flight = 0
        self._admitted = 0
        self._refused = 0
        self._paused_until: float | None = None
        self._max_pause = max_pause
        self._suspended_until: float | None = None
        self._suspension = ""
        self._changed = trio.Event()
        self._closed: LLMError | None = None
        # Shared limits ([shared]): the gate to Redis, and whether it decides now.
        self._limits = (rpm, tpm, rpm_burst, tpm_burst, max_concurrency)
        self._gate: ProviderGate | None = None
        self._shared = False
        #: A caller's own question to Redis is on the wire (:meth:`_ask_shared`).
        self._asking = False

    # -- admission ----------------------------------------------------------------------

    def _can_admit(self, cost: float, now: float) -> bool:
        if self._paused_until is not None:
            if now < self._paused_until:
                return False
            self._paused_until = None
        if self._max_concurrency is not None and self._in_flight >= self._max_concurrency:
            return False
        if self._rpm is not None and self._rpm.tokens(now) < 1 - _EPS:
            return False
        return self._tpm is None or self._tpm.tokens(now) >= cost - _EPS

    def _grant(self, permit: P, now: float) -> P:
        if self._rpm is not None:
            self._rpm.take(1, now)
        if self._tpm is not None:
            self._tpm.take(permit.cost, now)
        self._in_flight += 1
        self._admitted += 1
        permit.granted_at = now
        permit._mailbox = self
        return permit

    def _ungrant(self, permit: Permit) -> None:
        permit._mailbox = None
        lease = permit._lease
        if lease is not None:
            permit._lease = None
            if self._gate is not None:
                self._gate.undo(lease, permit.cost)
            self._in_flight -= 1
            self._admitted -= 1
            self._changed.set()
            return
        now = trio.current_time()
        if self._rpm is not None:
            self._rpm.give(1, now)
        if self._tpm is not None:
            self._tpm.give(permit.cost, now)
        self._in_flight -= 1
        self._admitted -= 1
        self._changed.set()

    def _refuse(self, message: str, *, retryable: bool = True) -> Overloaded:
        self._refused += 1
        return Overloaded(message, provider=self.name, retryable=retryable)

    def _holding(self, cost: float, now: float) -> Hold:
        """Which limit keeps a request of ``cost`` from being admitted at ``now``."""
        if self._paused_until is not None and now < self._paused_until:
            return "pause"
        if self._max_concurrency is not None and self._in_flight >= self._max_concurrency:
            return "concurrency"
        if self._rpm is not None and self._rpm.tokens(now) < 1 - _EPS:
            return "rpm"
        return "tpm"

    def _check(self, cost: float, now: float) -> None:
        if self._closed is not None:
            raise self._closed
        if self._suspended_until is not None:
            if now < self._suspended_until:
                raise self._suspended_error(now)
            self._suspended_until = None
        if self._tpm is not None and cost > self._tpm.capacity:
            capacity = self._tpm.capacity
            if self._shared and self._gate is not None:
                capacity = self._gate.tpm_cap  # the shared bucket's, not the fair share
                if cost <= capacity:
                    return
            raise self._refuse(
                f"a request of ~{cost:.0f} tokens can never fit this provider's "
                f"TPM bucket ({capacity:.0f})",
                retryable=False,
            )

    def expected_wait(self, cost: float, now: float) -> float:
        """Seconds the buckets and pauses need before a new request of ``cost`` could go.

        Counts everything queued ahead of it; ignores the concurrency limit, whose wait
        depends on how long requests in flight take.
        """
        wait = 0.0
        if self._paused_until is not None:
            wait = max(0.0, self._paused_until - now)
        # The queue drains as the buckets refill, so what matters is the total needed.
        if self._rpm is not None:
            deficit = len(self._queue) + 1 - self._rpm.tokens(now)
            wait = max(wait, deficit / self._rpm.rate)
        if self._tpm is not None:
            deficit = self._queued_cost + cost - self._tpm.tokens(now)
            wait = max(wait, deficit / self._tpm.rate)
        return wait

    def admit_nowait(self, permit: P, *, now: float | None = None) -> P:
        """Grant ``permit`` now or raise :class:`~providers.Overloaded` — for load shedding."""
        if self.try_admit(permit, now=now) is None:
            raise self._refuse("the provider cannot take a request right now")
        return permit

    async def admit_nowait_shared(self, permit: P, *, now: float) -> P:
        """:meth:`admit_nowait` while shared limits decide: one question to Redis, no
        queue.  Refuses at once when others are queued (they go first) or Redis says
        the request cannot go now; on local limits (Redis unavailable) it is
        :meth:`admit_nowait`."""
        gate = self._gate
        assert gate is not None
        cost = permit.cost
        self._check(cost, now)
        if (
            self._queue
            or self._asking
            or (self._paused_until is not None and now < self._paused_until)
        ):
            raise self._refuse("the provider cannot take a request right now")
        decision = await gate.admit([cost])
        if decision is None:
            return self.admit_nowait(permit)
        if not decision.granted:
            raise self._refuse(
                f"the provider cannot take a request right now (the shared {decision.hold} "
                f"limit, for {decision.retry_after:.3g}s)",
                retryable=decision.hold != "never",
            )
        return self._grant_shared(
            permit, trio.current_time(), decision.leases[0] if decision.leases else ""
        )

    async def _ask_shared(self, permit: Permit) -> bool:
        """Ask Redis for ``permit`` from the caller's own task; whether it was granted.

        While shared limits decide, a request that finds nobody queued and no question
        of this mailbox's own on the wire asks at once, without the hop through the
        loop's task and back (two passes through the run loop, measurable per
        request).  Requests arriving meanwhile queue behind it and the loop asks for
        none of them until it is answered (it is the head); then they are batched as
        ever.  Refused, it returns ``False`` and the caller queues at the head.

        A caller cancelled while its question is on the wire does not learn the
        answer: its lease, if one was taken, is freed (:meth:`ProviderGate.admit`), its
        RPM and TPM charge stays (counted, never over-admitted; docs/scaling.md).
        """
        gate = self._gate
        assert gate is not None
        self._asking = True
        try:
            decision = await gate.admit([permit.cost])
        finally:
            self._asking = False
            if self._queue:
                self._changed.set()  # those who queued meanwhile are asked for now
        if decision is None or not decision.granted:
            return False
        lease = decision.leases[0] if decision.leases else ""
        if self._closed is not None:
            gate.undo(lease, permit.cost)
            raise self._closed
        self._grant_shared(permit, trio.current_time(), lease)
        return True

    def _grant_shared(self, permit: P, now: float, lease: str) -> P:
        """Redis granted ``permit`` (with ``lease``, ``""`` for none): it is in flight."""
        self._in_flight += 1
        self._admitted += 1
        permit.granted_at = now
        permit._mailbox = self
        permit._lease = lease
        return permit

    def try_admit(self, permit: P, *, now: float | None = None) -> P | None:
        """Grant ``permit`` now if that needs no wait, else ``None`` (nothing queued,
        nothing refused).

        Raises like :meth:`admit` when the request can never be admitted (the mailbox is
        closed, the cost exceeds the TPM bucket).  ``now``: the current time, when the
        caller has just read it.  No checkpoint: the hot path's way in, for callers
        that checkpoint themselves.
        """
        if now is None:
            now = trio.current_time()
        cost = permit.cost
        self._check(cost, now)
        if self._queue or self._shared or self._asking or not self._can_admit(cost, now):
            return None
        return self._grant(permit, now)

    async def admit(
        self,
        permit: P,
        *,
        now: float | None = None,
        on_wait: WaitListener | None = None,
    ) -> P:
        """Wait for ``permit``'s grant in FIFO order; see the class docstring for refusals.

        ``now``: the current time, when the caller has just read it.  ``on_wait`` is
        called once a request that had to queue stops waiting (admitted, refused or
        cancelled), with the seconds it waited and the limit that held it; a request
        admitted or refused at once never calls it.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        if now is None:
            now = trio.current_time()
        cost = permit.cost
        self._check(cost, now)
        if not self._queue and not self._shared and not self._asking and self._can_admit(cost, now):
            # No schedule point here: the caller sends the request next, which yields;
            # an extra pass through the run loop per request is measurable over HTTP.
            return self._grant(permit, now)
        first = False
        if (
            self._shared
            and not self._queue
            and not self._asking
            and (self._paused_until is None or now >= self._paused_until)
        ):
            if await self._ask_shared(permit):
                return permit
            # Not granted (or Redis went away): it queues, ahead of whoever queued while
            # it asked, and the loop asks again and acts on the hold.
            first = True
            now = trio.current_time()
            self._check(cost, now)
            if not self._queue and not self._shared and self._can_admit(cost, now):
                return self._grant(permit, now)
        if len(self._queue) >= self._max_queue and not first:
            # (One refused on its own question came before everyone queued: it goes to
            # the head even when they filled the queue meanwhile.)
            raise self._refuse(f"the queue is full ({self._max_queue} waiting)")
        deadline = trio.current_effective_deadline()
        wait = self.expected_wait(cost, now)
        if now + wait >= deadline and (not self._shared or now >= deadline):
            # Not retryable here: waiting and asking again cannot make the wait fit (both
            # shrink together).  Another target can still take it (routes fail over on
            # Overloaded by default).
            raise self._refuse(
                f"admission would take ~{wait:.3g}s but the deadline is in {deadline - now:.3g}s",
                retryable=False,
            )
        # Behind others, a request is held by whatever holds the head.
        held_by = self._queue[0].held_by if self._queue and not first else self._holding(cost, now)
        waiter = _Waiter(permit, held_by, deadline)
        if first:
            self._queue.appendleft(waiter)
        else:
            self._queue.append(waiter)
        self._queued_cost += cost
        if not self._shared or len(self._queue) == 1 or first:
            # Shared limits: a request behind the head changes nothing until the head
            # goes, so only a new head wakes the loop (each wake-up asks Redis).
            self._changed.set()
        try:
            await waiter.event.wait()
        except BaseException:
            if waiter.granted:
                # Granted in the same instant we were cancelled: nothing was sent, so
                # the grant is undone as if it had never happened.
                self._ungrant(permit)
            elif waiter.error is None:
                waiter.gone = True
                self._queue.remove(waiter)
                self._queued_cost -= cost
                self._changed.set()
            if on_wait is not None:
                on_wait(trio.current_time() - now, waiter.held_by, "cancelled")
            raise
        if waiter.error is not None:
            if on_wait is not None:
                on_wait(trio.current_time() - now, waiter.held_by, "refused")
            raise waiter.error
        if on_wait is not None:
            on_wait(permit.granted_at - now, waiter.held_by, "admitted")
        return permit

    def _release(self, permit: Permit, actual_tokens: int | None) -> None:
        self._in_flight -= 1
        lease = permit._lease
        if lease is not None:
            self._release_shared(permit, lease, actual_tokens)
        elif self._tpm is not None:
            now = trio.current_time()
            if actual_tokens is None:
                charged = permit.cost - permit.output_cost
            else:
                charged = actual_tokens
            delta = permit.cost - charged
            if delta > 0:
                self._tpm.give(delta, now)
            elif delta < 0:
                self._tpm.take(-delta, now)
        if self._queue:
            # A release can only matter to someone waiting; with nobody queued the
            # loop stays asleep (this runs once per request).
            self._changed.set()

    @property
    def limits(self) -> tuple[float | None, float | None, float | None, float | None, int | None]:
        """The configured ``(rpm, tpm, rpm_burst, tpm_burst, max_concurrency)``."""
        return self._limits

    @property
    def shared(self) -> bool:
        """Whether shared limits (Redis) decide admission now."""
        return self._shared

    @property
    def in_flight(self) -> int:
        """Requests admitted and not yet released."""
        return self._in_flight

    @property
    def queued(self) -> int:
        """Requests waiting for admission."""
        return len(self._queue)

    @property
    def paused_until(self) -> float | None:
        """When a provider-imposed pause ends (trio time), or ``None``."""
        return self._paused_until

    @property
    def suspended_until(self) -> float | None:
        """When a suspension (a pause longer than ``max_pause``) ends, or ``None``."""
        return self._suspended_until

    @property
    def suspension(self) -> str:
        """Why the mailbox is suspended (meaningful while :attr:`suspended_until` is set)."""
        return self._suspension

    def _suspended_error(self, now: float, refused: int = 1) -> RateLimited:
        until = self._suspended_until
        assert until is not None
        self._refused += refused
        return RateLimited(
            f"{self._suspension}: refused until t={until:.3f} ({until - now:.3g}s left)",
            provider=self.name,
            retry_after=until - now,
            # The router's own refusal, certain until then: waiting within a deadline
            # does not change it, so not retryable (no tight retry loop); routes fail
            # over on it (RateLimited is in the default fail_over_on).
            retryable=False,
        )

    # -- what providers tell us ------------------------------------------------------

    def pause_until(
        self, when: float, *, why: str = "the provider asked to wait", share: bool = True
    ) -> None:
        """Admit nothing before ``when`` (trio time); a later pause wins over an earlier one.

        A pause longer than ``max_pause`` from now suspends the mailbox instead (see the
        module docstring); ``why`` is said in the refusals and in :attr:`suspension`.
        With shared limits the pause is also every other process's (``share``: unless
        it came from them).
        """
        now = trio.current_time()
        if not when > now:  # over already, or NaN
            return
        if share and self._gate is not None:
            self._gate.pause(when - now)
        if when - now > self._max_pause:
            if self._suspended_until is None or when > self._suspended_until:
                self._suspended_until = when
                self._suspension = (
                    f"{why}: {when - now:.6g}s, longer than max_retry_after "
                    f"({self._max_pause:g}s), so the provider is out of routing until then"
                )
                self.fail_waiting(self._suspended_error(now, len(self._queue)))
                self._changed.set()
            return
        self._pause(when)

    def _window_reset(self, now: float, reset: float, what: str) -> None:
        # A per-minute window always pauses (its reset, a timestamp rounded to the
        # second, may read a little over 60 s); a longer one (a daily quota) is held like
        # a retry-after: past max_pause it suspends the mailbox.
        if reset <= MINUTE_WINDOW_RESET:
            self._pause(now + reset)
            if self._gate is not None:
                self._gate.pause(reset)
        else:
            self.pause_until(now + reset, why=f"{what} until the rate-limit window resets")

    def _pause(self, when: float) -> None:
        if self._paused_until is None or when > self._paused_until:
            self._paused_until = when
            self._changed.set()

    def learn(
        self,
        *,
        remaining_requests: float | None = None,
        remaining_tokens: float | None = None,
        reset_requests: float | None = None,
        reset_tokens: float | None = None,
        limit_requests: float | None = None,
        limit_tokens: float | None = None,
    ) -> None:
        """Lower the buckets to what the provider says remains (shared keys, other clients).

        A provider limit below ours shrinks the bucket; ``remaining`` clamps the tokens
        held; nothing left with a known reset pauses admission until that reset, as a
        ``retry-after`` would (:meth:`pause_until`): a reset further than ``max_pause``
        suspends the mailbox, so a window that resets in a day puts the provider out of
        routing, loudly, instead of queueing a caller without a deadline for a day.
        """
        now = trio.current_time()
        if self._rpm is not None:
            if limit_requests and limit_requests < self._rpm.capacity:
                self._rpm.resize(limit_requests / 60.0, limit_requests, now)
            if remaining_requests is not None:
                self._rpm.clamp(remaining_requests, now)
        if remaining_requests is not None and remaining_requests < 1 and reset_requests:
            self._window_reset(now, reset_requests, "no requests left")
        if self._tpm is not None:
            if limit_tokens and limit_tokens < self._tpm.capacity:
                self._tpm.resize(limit_tokens / 60.0, limit_tokens, now)
            if remaining_tokens is not None:
                self._tpm.clamp(remaining_tokens, now)
        if remaining_tokens is not None and remaining_tokens < 1 and reset_tokens:
            self._window_reset(now, reset_tokens, "no tokens left")
        self._changed.set()

    # -- shared limits ([shared]: router._shared) -----------------------------------

    def attach(self, gate: ProviderGate) -> None:
        """Let ``gate`` (this provider's shared limits on Redis) decide admission while
        Redis answers; the local buckets and concurrency limit, at the process's fair
        share, decide while it does not (:meth:`share`)."""
        self._gate = gate
        gate.attach(self)

    def share(self, shared: bool, processes: int) -> None:
        """Shared limits decide from now on (``shared``), or the local ones at
        1/``processes`` of each configured limit.

        The local buckets keep their tokens across a resize (never above the new
        capacity); a grant made under shared limits is released to Redis, whatever the
        state when it ends.
        """
        rpm, tpm, rpm_burst, tpm_burst, max_concurrency = self._limits
        now = trio.current_time()
        n = max(1, processes)
        if self._rpm is not None and rpm:
            self._rpm.resize(rpm / 60.0 / n, (rpm_burst or rpm) / n, now)
        if self._tpm is not None and tpm:
            self._tpm.resize(tpm / 60.0 / n, (tpm_burst or tpm) / n, now)
        if max_concurrency is not None:
            self._max_concurrency = max(1, max_concurrency // n)
        self._shared = shared
        self._changed.set()

    def _release_shared(self, permit: Permit, lease: str, actual_tokens: int | None) -> None:
        permit._lease = None
        if self._gate is not None:
            # The reconciliation rule of the module docstring, applied to the shared TPM.
            charged = permit.cost - permit.output_cost if actual_tokens is None else actual_tokens
            self._gate.release(lease, charged - permit.cost)
        if self._queue:
            self._changed.set()

    async def _serve_shared(self) -> float:
        """Ask Redis to admit the queue's head (a batch of it, in order); return how long
        until it should ask again (0: at once)."""
        gate = self._gate
        assert gate is not None
        queue = self._queue
        now = trio.current_time()
        if self._paused_until is not None:
            if now < self._paused_until:
                queue[0].held_by = "pause"
                return self._paused_until - now
            self._paused_until = None
        heads = [queue[i] for i in range(min(len(queue), _SHARED_BATCH))]
        decision = await gate.admit([w.permit.cost for w in heads])
        if decision is None:
            return 0.0  # Redis is unavailable: local limits from now on (share())
        now = trio.current_time()
        leases = decision.leases
        for i in range(decision.granted):
            waiter = heads[i]
            lease = leases[i] if leases else ""
            if waiter.gone or waiter.error is not None:
                # Left while Redis decided: the grant is given back.
                gate.undo(lease, waiter.permit.cost)
                continue
            if self._closed is not None or not queue or queue[0] is not waiter:
                gate.undo(lease, waiter.permit.cost)
                continue
            queue.popleft()
            self._queued_cost -= waiter.permit.cost
            self._grant_shared(waiter.permit, now, lease)
            waiter.granted = True
            waiter.event.set()
        if not queue or decision.granted == len(heads):
            return 0.0 if queue else math.inf
        head = queue[0]
        hold = decision.hold
        retry = decision.retry_after
        if hold == "pause":
            self.pause_until(now + retry, why="another process was asked to wait", share=False)
            return 0.0
        if head is not heads[decision.granted]:
            # The request the hold is about left while Redis decided (cancelled): what
            # held it says nothing of the new head's cost or deadline.  Ask for it.
            return 0.0
        if hold == "never":
            self._fail_head(
                self._refuse(
                    f"a request of ~{head.permit.cost:.0f} tokens can never fit this "
                    f"provider's shared TPM bucket ({gate.tpm_cap:.0f})",
                    retryable=False,
                )
            )
            return 0.0
        if hold in ("concurrency", "rpm", "tpm"):
            head.held_by = hold
        if hold != "concurrency" and now + retry >= head.deadline:
            # Not retryable: waiting and asking again cannot make the wait fit.
            self._fail_head(
                self._refuse(
                    f"admission would take ~{retry:.3g}s (the shared {hold} limit) but the "
                    f"deadline is in {head.deadline - now:.3g}s",
                    retryable=False,
                )
            )
            return 0.0
        if hold == "concurrency":
            return min(retry, _CONCURRENCY_POLL)
        return retry

    def _fail_head(self, error: LLMError) -> None:
        waiter = self._queue.popleft()
        self._queued_cost -= waiter.permit.cost
        waiter.error = error
        waiter.event.set()

    # -- the loop --------------------------------------------------------------------

    def _serve(self, now: float) -> float:
        """Admit queued heads that fit; return how long until the head could fit."""
        queue = self._queue
        while queue and self._can_admit(queue[0].permit.cost, now):
            waiter = queue.popleft()
            self._queued_cost -= waiter.permit.cost
            self._grant(waiter.permit, now)
            waiter.granted = True
            waiter.event.set()
        if not queue:
            return math.inf
        head = queue[0]
        head.held_by = self._holding(head.permit.cost, now)
        if self._max_concurrency is not None and self._in_flight >= self._max_concurrency:
            return math.inf  # a release will wake us
        wait = 0.0
        if self._paused_until is not None:
            wait = self._paused_until - now
        if self._rpm is not None:
            wait = max(wait, self._rpm.wait_time(1, now))
        if self._tpm is not None:
            wait = max(wait, self._tpm.wait_time(head.permit.cost, now))
        return wait

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the queue until cancelled."""
        task_status.started()
        while True:
            self._changed = trio.Event()
            if self._asking:
                # While a caller's own question is on the wire it is the head: nobody
                # behind it is asked for, nor granted by the local limits should the
                # mailbox switch to them meanwhile (its end wakes this loop).
                wait = math.inf
            elif self._shared and self._queue:
                wait = await self._serve_shared()
            else:
                wait = self._serve(trio.current_time())
            if wait <= 0:
                await trio.lowlevel.checkpoint()
                continue
            with trio.move_on_after(wait):
                await self._changed.wait()

    def fail_waiting(self, error: LLMError) -> None:
        """Fail every queued request with ``error`` (the actor's loop crashed)."""
        while self._queue:
            waiter = self._queue.popleft()
            waiter.error = error
            waiter.event.set()
        self._queued_cost = 0.0

    def close(self, error: LLMError) -> None:
        """Refuse everything from now on with ``error``; fail the waiting."""
        self._closed = error
        self.fail_waiting(error)

    def statistics(self) -> MailboxStatistics:
        """A frozen snapshot."""
        now = trio.current_time()
        return MailboxStatistics(
            queued=len(self._queue),
            in_flight=self._in_flight,
            admitted=self._admitted,
            refused=self._refused,
            max_concurrency=self._max_concurrency,
            max_queue=self._max_queue,
            rpm_tokens=self._rpm.tokens(now) if self._rpm else None,
            tpm_tokens=self._tpm.tokens(now) if self._tpm else None,
            paused_until=self._paused_until,
            suspended_until=self._suspended_until,
            limits=None if self._gate is None else ("shared" if self._shared else "local"),
        )
