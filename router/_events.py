"""Router events: what happened to each request, attempt and provider, as typed records.

Every event is a frozen msgspec Struct carrying ``time`` (trio's clock) and, where
relevant, the router's ``request_id``, the ``model`` string as the caller wrote it (a
route alias, ``provider:model`` or a bare model id), and the configured ``provider``.
:data:`RouterEvent` is their tagged union (the tag is the ``"type"`` field), so events
encode to JSON and decode back with ``msgspec.json.decode(data, type=RouterEvent)``.

Synopsis::

    async with router.subscribe(buffer=1000) as events:
        async for event in events:
            match event:
                case AttemptFinished(outcome="failed", provider=p, error_type=e):
                    print(f"{p} failed: {e}")
                case BreakerChanged(provider=p, new="open"):
                    print(f"{p}: circuit open")

=================  ====================================================================
request_started    the router took a request (before planning it)
attempt_started    an attempt on one target began (after its start was decided)
attempt_admitted   the provider's mailbox admitted an attempt (or a retry of it): it
                   took its rate-limit tokens and concurrency slot, and is sent next
hedge_launched     an attempt started because the hedge delay passed
fallback_launched  an attempt started because an earlier one failed
retry_scheduled    a target's retryable error will be retried after a backoff
attempt_finished   an attempt won, failed, was cancelled (why) or skipped (why)
budget_refused     a spend cap refused a request, or one of its targets
request_finished   the caller got its answer or its error (a stream: when it closed)
breaker_changed    a provider's circuit breaker moved (closed, open, half_open)
health_changed     a provider's health verdict changed (healthy, degraded, unhealthy)
actor_crashed      a provider actor's loop raised; it restarts, or is given up on
actor_restarted    a crashed provider actor's loop runs again
queue_wait         a request waited for admission at least ``queue_wait_threshold``
shared_limits      the limits shared on Redis switched: to local (Redis slow or down)
                   or back to shared ([shared] only)
breaker_shared     this process applied another process's breaker decision: open
                   (for the time left) or closed by the cluster's probes ([shared] only)
=================  ====================================================================

Two ways to receive them:

=========================  ============================================================
``router.subscribe()``     a ``trio.abc.ReceiveChannel`` (``receive``, ``async for``,
                           ``async with``, ``aclose``) backed by a bounded trio memory
                           channel; when its buffer is full an event is dropped and
                           counted, so a slow or stuck subscriber never slows routing
``router.add_listener()``  a plain function the router calls synchronously with each
                           event, in the task where it happened; it must be cheap and
                           must not block; what it raises is logged once and counted,
                           never propagated (the audit log, tracing and metrics are
                           listeners)
=========================  ============================================================

With neither, the router builds no events at all.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Literal, TypeAlias

import msgspec
import trio

from providers import Attempt, ChatRequest, ChatResponse, Usage
from providers._types import AttemptKind, AttemptOutcome

__all__ = [
    "ActorCrashed",
    "ActorRestarted",
    "AttemptAdmitted",
    "AttemptFinished",
    "AttemptStarted",
    "BreakerChanged",
    "BudgetRefused",
    "FallbackLaunched",
    "HealthChanged",
    "HedgeLaunched",
    "Listener",
    "QueueWait",
    "RequestFinished",
    "RequestOutcome",
    "RequestStarted",
    "RetryScheduled",
    "RouterEvent",
    "SharedLimitsChanged",
    "BreakerShared",
    "Subscription",
    "SubscriptionStatistics",
]

logger = logging.getLogger("trio_llm_router")

#: How a request ended: ``succeeded`` (an answer, or a stream read to its end),
#: ``failed`` (an error reached the caller), ``cancelled`` (the caller's scope was
#: cancelled, or it left a stream before its end).
RequestOutcome: TypeAlias = Literal["succeeded", "failed", "cancelled"]
Operation: TypeAlias = Literal["chat", "embeddings"]


class _Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Base of every event: when it happened, in trio time."""

    time: float


class RequestStarted(_Event, frozen=True, tag="request_started"):
    """The router took a request; ``model`` is the model string as the caller wrote it."""

    request_id: str
    model: str
    operation: Operation
    stream: bool


class AttemptStarted(_Event, frozen=True, tag="attempt_started"):
    """An attempt on ``provider`` (``provider_model`` is the vendor's model id) began."""

    request_id: str
    model: str
    provider: str
    provider_model: str
    kind: AttemptKind
    #: 1 for the first attempt of the request, 2 for the next...
    number: int


class AttemptAdmitted(_Event, frozen=True, tag="attempt_admitted"):
    """``provider``'s mailbox admitted try ``retry`` (0: the first) of attempt ``number``.

    ``time`` is the grant: the instant the request took its RPM and TPM tokens and its
    concurrency slot, after which it is sent; ``waited`` the seconds it queued for that
    (0 when admitted at once).  A request that queued hears of its grant when its task
    next runs, so this event may follow others stamped a little later.  A grant undone
    because the caller was cancelled in the same instant (nothing sent, tokens given
    back) has no event.  So, without ``[shared]`` limits, the times of one provider's
    events are exactly what its RPM bucket admitted: in any window of ``dt`` seconds at
    most ``rpm_burst + rpm * dt / 60`` of them (limits learned from a provider's
    headers only lower that).
    """

    request_id: str
    model: str
    provider: str
    provider_model: str
    kind: AttemptKind
    number: int
    retry: int
    waited: float


class HedgeLaunched(_Event, frozen=True, tag="hedge_launched"):
    """A hedge on ``provider``: ``previous`` had run ``delay`` seconds without an answer."""

    request_id: str
    model: str
    provider: str
    provider_model: str
    previous: str
    delay: float


class FallbackLaunched(_Event, frozen=True, tag="fallback_launched"):
    """A fallback on ``provider`` because the attempt on ``failed`` failed with ``error_type``."""

    request_id: str
    model: str
    provider: str
    provider_model: str
    failed: str | None
    error_type: str | None


class RetryScheduled(_Event, frozen=True, tag="retry_scheduled"):
    """``provider`` failed with ``error_type``; retry ``retry`` follows in ``delay`` seconds."""

    request_id: str
    model: str
    provider: str
    error_type: str
    retry: int
    delay: float


class AttemptFinished(_Event, frozen=True, tag="attempt_finished"):
    """An attempt ended: ``won``, ``failed``, ``cancelled`` or ``skipped``.

    ``reason`` says why it failed (the error message), was cancelled (``"lost the race
    to openai"``) or was skipped (``"circuit open ..."``); ``started`` is ``None`` for a
    skipped target.  ``usage`` and ``cost`` are known for a finished answer; a stream's
    winner finishes at its first content event, before its usage is (see
    :class:`RequestFinished`).
    """

    request_id: str
    model: str
    provider: str
    provider_model: str
    kind: AttemptKind
    #: As in :class:`AttemptStarted`; 0 for a skipped target.
    number: int
    outcome: AttemptOutcome
    started: float | None
    retries: int = 0
    error_type: str | None = None
    reason: str | None = None
    usage: Usage | None = None
    cost: float | None = None


class BudgetRefused(_Event, frozen=True, tag="budget_refused"):
    """A spend cap refused the request (``provider`` is ``None``) or one of its targets."""

    request_id: str
    model: str
    provider: str | None
    scope: str
    message: str


class RequestFinished(_Event, frozen=True, tag="request_finished"):
    """The caller got its answer or its error; a stream finishes when its block exits.

    ``provider`` and ``provider_model`` name the winning target; ``attempts`` is the
    final trace; ``cost`` is the answer's and ``spend`` everything the request was
    charged (lost and failed attempts' prompts included); ``ttft`` the seconds to a
    stream's first content event.  ``request`` is the chat request (``None`` for
    embeddings, whose texts are ``inputs``); ``response`` the answer (for a stream, the
    one its ``Done`` event carried), and ``streamed_text`` the text a stream delivered
    when it ended without one.
    """

    request_id: str
    model: str
    operation: Operation
    stream: bool
    outcome: RequestOutcome
    latency: float
    ttft: float | None = None
    provider: str | None = None
    provider_model: str | None = None
    response_model: str | None = None
    finish_reason: str | None = None
    usage: Usage | None = None
    cost: float | None = None
    spend: float = 0.0
    attempts: list[Attempt] = msgspec.field(default_factory=list)
    error_type: str | None = None
    error: str | None = None
    request: ChatRequest | None = None
    inputs: list[str] | None = None
    response: ChatResponse | None = None
    streamed_text: str | None = None


class BreakerChanged(_Event, frozen=True, tag="breaker_changed"):
    """``provider``'s circuit breaker moved from ``old`` to ``new`` at ``time``."""

    provider: str
    old: str
    new: str


class HealthChanged(_Event, frozen=True, tag="health_changed"):
    """``provider``'s health verdict is now ``status`` (``reason`` says why)."""

    provider: str
    status: str
    reason: str | None


class ActorCrashed(_Event, frozen=True, tag="actor_crashed"):
    """``provider``'s actor loop raised; it restarts in ``restart_in`` seconds, or never.

    ``crashes`` counts the crashes within the supervisor's restart window; with
    ``restart_in`` ``None`` the provider is given up on (unhealthy for good).
    """

    provider: str
    error_type: str
    error: str
    crashes: int
    restart_in: float | None


class ActorRestarted(_Event, frozen=True, tag="actor_restarted"):
    """``provider``'s actor loop runs again; ``restarts`` counts every restart so far."""

    provider: str
    restarts: int


class QueueWait(_Event, frozen=True, tag="queue_wait"):
    """A request waited ``waited`` seconds in ``provider``'s mailbox before it was
    ``admitted``, ``refused`` or ``cancelled``: at least the provider's
    ``queue_wait_threshold``.

    ``held_by`` is the limit that held it (what held the head of the queue when the
    actor last looked): ``"pause"`` (the provider asked to wait: ``retry-after``, a
    rate-limit reset), ``"concurrency"`` (``max_concurrency`` requests in flight),
    ``"rpm"`` or ``"tpm"``
    (a token bucket, configured or from a preset); ``queued`` how many requests were
    still waiting when it left.  The attempt's own record says the same in
    :attr:`~providers.Attempt.queued`.
    """

    provider: str
    provider_model: str
    waited: float
    held_by: str
    outcome: str
    queued: int


class SharedLimitsChanged(_Event, frozen=True, tag="shared_limits"):
    """The limits shared on Redis (``[shared]``) switched.

    ``state`` is ``"local"`` when Redis timed out or failed (``reason`` says how; never
    the URL or its password): each process now enforces its fair share of every limit,
    the limit divided by ``processes``, the live processes it last saw through
    heartbeats.  ``"shared"`` when Redis answers again (``reason`` is ``None``).
    docs/scaling.md says what is lost or counted twice at a switch.
    """

    state: str
    reason: str | None
    processes: int


class BreakerShared(_Event, frozen=True, tag="breaker_shared"):
    """``provider``'s breaker took a decision made by another process (``[shared]``).

    ``state`` is ``"open"`` when process ``origin`` opened its breaker: this one is
    open too, until ``open_until`` (trio time here; the time left on Redis's clock when
    it was read).  ``"closed"`` when the probes of the processes together succeeded
    (``origin`` sent the last one): this breaker closed, from open or half-open.  A
    :class:`BreakerChanged` for the same move comes just before it.
    """

    provider: str
    state: str
    open_until: float | None
    origin: str


#: Every event the router emits (a tagged union on the ``"type"`` field).
RouterEvent: TypeAlias = (
    RequestStarted
    | AttemptStarted
    | AttemptAdmitted
    | HedgeLaunched
    | FallbackLaunched
    | RetryScheduled
    | AttemptFinished
    | BudgetRefused
    | RequestFinished
    | BreakerChanged
    | HealthChanged
    | ActorCrashed
    | ActorRestarted
    | QueueWait
    | SharedLimitsChanged
    | BreakerShared
)

#: A synchronous event listener: called with each event; must be cheap and not block.
Listener: TypeAlias = Callable[[RouterEvent], None]


class EventHub:
    """The router's listeners, and what it costs to tell them (counted, never raised).

    ``listeners`` is a tuple replaced on every change, so a listener may remove itself
    while it is being called, and the router's hot path tests it for emptiness only.
    """

    __slots__ = (
        "_complained",
        "_subscriptions",
        "closed",
        "dropped",
        "emitted",
        "listener_errors",
        "listeners",
    )

    def __init__(self) -> None:
        self.listeners: tuple[Listener, ...] = ()
        self.emitted = 0
        self.dropped = 0
        self.listener_errors = 0
        self.closed = False
        self._complained: set[int] = set()
        self._subscriptions: set[Subscription] = set()

    @property
    def subscribers(self) -> int:
        """Subscriptions open now."""
        return len(self._subscriptions)

    def close(self) -> None:
        """The router closed: end every subscription's iteration, take no more."""
        self.closed = True
        for subscription in list(self._subscriptions):
            subscription._close()

    def add(self, listener: Listener) -> None:
        self.listeners = (*self.listeners, listener)

    def remove(self, listener: Listener) -> None:
        listeners = list(self.listeners)
        try:
            listeners.remove(listener)
        except ValueError:
            return
        self.listeners = tuple(listeners)

    def emit(self, event: RouterEvent) -> None:
        """Call every listener with ``event``; a listener's exception is logged once, counted."""
        listeners = self.listeners
        if not listeners:
            return
        self.emitted += 1
        for listener in listeners:
            try:
                listener(event)
            except Exception:
                self.listener_errors += 1
                key = id(listener)
                if key not in self._complained:
                    self._complained.add(key)
                    logger.error(
                        "event listener %r raised (further errors are only counted)",
                        listener,
                        exc_info=True,
                        extra={"event_type": type(event).__name__},
                    )


class SubscriptionStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """A frozen snapshot of one :class:`Subscription` (from its ``statistics()``).

    Attributes:
        buffer: The buffer's capacity, in events (``math.inf`` for no bound).
        buffered: Events waiting in the buffer now.
        received: Events put in the buffer since it opened.
        dropped: Events dropped because the buffer was full.
        tasks_waiting: Tasks blocked in :meth:`Subscription.receive` now.
        closed: Whether it takes no more events (closed, or the router closed).
    """

    buffer: int | float
    buffered: int
    received: int
    dropped: int
    tasks_waiting: int
    closed: bool


class Subscription(trio.abc.ReceiveChannel[RouterEvent]):
    """The router's events as a ``trio.abc.ReceiveChannel``: made by ``router.subscribe()``.

    From the moment it is made until it is closed, every event the router emits is put
    in a bounded buffer without waiting; when the buffer is full the event is dropped
    and counted in :attr:`dropped` (and in ``router.statistics().events_dropped``), so a
    slow or stuck subscriber never slows routing.  It reads like a trio memory channel:

    ============================  ======================================================
    ``await receive()``           the next event, waiting for one
    ``receive_nowait()``          the next event, or raise ``trio.WouldBlock``
    ``async for event in sub``    every event until the router closes
    ``async with sub``            closes it when the block exits
    ``await aclose()``            stop receiving (``close()`` without the checkpoint)
    ``statistics()``              a frozen :class:`SubscriptionStatistics`
    ============================  ======================================================

    ``receive`` raises ``trio.EndOfChannel`` (which ends ``async for``) once the router
    has closed and the buffer is drained, and ``trio.ClosedResourceError`` once the
    subscription itself is closed (also in a task blocked in it at that moment).

    Example::

        async with router.subscribe(buffer=100) as events:
            async for event in events:
                print(event.time, type(event).__name__)
    """

    __slots__ = ("_hub", "_receive", "_send", "_types", "buffer", "dropped", "received")

    def __init__(
        self,
        hub: EventHub,
        buffer: int | float,
        types: tuple[type[RouterEvent], ...] | None,
    ) -> None:
        if not (buffer == math.inf or (isinstance(buffer, int) and buffer >= 0)):
            raise ValueError(f"`buffer` must be an int >= 0 (or math.inf), got {buffer!r}")
        self._hub = hub
        self._types = types
        self._send, self._receive = trio.open_memory_channel[RouterEvent](buffer)
        #: The buffer's capacity, in events.
        self.buffer = buffer
        #: Events dropped because the buffer was full.
        self.dropped = 0
        #: Events put in the buffer.
        self.received = 0
        if hub.closed:
            self._send.close()
        else:
            hub._subscriptions.add(self)
            hub.add(self._deliver)

    def __repr__(self) -> str:
        return f"<Subscription buffer={self.buffer} dropped={self.dropped}>"

    def _deliver(self, event: RouterEvent) -> None:
        types = self._types
        if types is not None and not isinstance(event, types):
            return
        try:
            self._send.send_nowait(event)
        except trio.WouldBlock:
            self.dropped += 1
            self._hub.dropped += 1
        except trio.ClosedResourceError:
            pass
        else:
            self.received += 1

    def _close(self) -> None:
        """Take no more events (the router closed, or this subscription did)."""
        self._hub._subscriptions.discard(self)
        self._hub.remove(self._deliver)
        self._send.close()

    async def receive(self) -> RouterEvent:
        """The next event, waiting until there is one.

        Raises:
            trio.EndOfChannel: the router closed and every buffered event was received.
            trio.ClosedResourceError: this subscription was closed.
        """
        return await self._receive.receive()

    def receive_nowait(self) -> RouterEvent:
        """The next buffered event, or raise ``trio.WouldBlock`` if there is none yet.

        Raises ``trio.EndOfChannel`` once the router closed and the buffer is drained,
        ``trio.ClosedResourceError`` after the subscription was closed.
        """
        return self._receive.receive_nowait()

    def close(self) -> None:
        """Stop receiving events and drop the buffered ones (idempotent)."""
        # The receiving side first: a task blocked in receive() gets ClosedResourceError
        # (it closed), not the EndOfChannel that closing the sending side would give.
        self._receive.close()
        self._close()

    async def aclose(self) -> None:
        """:meth:`close`, and a checkpoint, as every ``aclose`` is."""
        self.close()
        await trio.lowlevel.checkpoint()

    def statistics(self) -> SubscriptionStatistics:
        """A frozen snapshot: buffer use, events received and dropped, waiting tasks."""
        channel = self._receive.statistics()
        return SubscriptionStatistics(
            buffer=self.buffer,
            buffered=channel.current_buffer_used,
            received=self.received,
            dropped=self.dropped,
            tasks_waiting=channel.tasks_waiting_receive,
            closed=channel.open_send_channels == 0 or channel.open_receive_channels == 0,
        )
