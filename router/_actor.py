"""One provider actor: admission, health, and the calls that go through them.

The actor owns a provider adapter (and through it an ``httpx.AsyncClient``), a
:class:`~router._limiter.Mailbox`, a circuit breaker, latency and error statistics, and a
published health snapshot (a ``trio_util.AsyncValue``).  Its own task serves the
mailbox queue; the HTTP exchange of a call runs in the *caller's* task, so a caller's
cancellation (deadline, hedge loser, its own scope) reaches the exchange directly and
the connection is closed before the cancellation propagates.

What counts against health
    Server-side failures (5xx, overload, timeouts, connection and protocol failures,
    streams that break) and authentication/permission failures (a dead key should stop
    being used) count as failures for the breaker and the error window.  A rate limit
    pauses admission instead (``retry-after``, or one second without it).  Invalid
    requests, context-length and content-filter errors say nothing about the provider's
    health and count as successes.
"""

from __future__ import annotations

import datetime
import logging
import math
from collections.abc import Awaitable, Generator
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Self, cast

import msgspec
import trio
from trio_util import AsyncValue

from providers import (
    AuthenticationError,
    ChatRequest,
    ChatResponse,
    ConnectionFailed,
    Done,
    EmbeddingRequest,
    EmbeddingResponse,
    EventStream,
    LLMError,
    Overloaded,
    PermissionDenied,
    ProtocolError,
    Provider,
    RateLimited,
    ServerError,
    StreamEvent,
    StreamInterrupted,
    Timeout,
    Usage,
)
from providers._tokens import TokenCalibration, count_input_tokens, estimate_text_tokens
from providers._types import is_content_event

from ._config import ProviderConfig
from ._events import BreakerChanged, HealthChanged, Listener, QueueWait
from ._health import CircuitBreaker, ErrorWindow, HealthSnapshot, LatencyStats, classify
from ._limiter import Hold, Mailbox, Permit, WaitOutcome
from ._policy import HealthStatus, TargetHealth
from ._providers import effective_limits, preset_limits
from ._race import AttemptRecord
from ._ratelimits import has_rate_limit_headers, parse_rate_limit_headers
from ._retry import RetryBudget

if TYPE_CHECKING:
    from ._shared._breaker import SharedBreaker

__all__ = ["ActorStatistics", "ProviderActor"]

logger = logging.getLogger("trio_llm_router")

_HEALTH_FAILURES = (
    ServerError,
    Overloaded,
    Timeout,
    ConnectionFailed,
    ProtocolError,
    StreamInterrupted,
    AuthenticationError,
    PermissionDenied,
)

#: Error rate over the window at or above which a provider is degraded.
DEGRADED_ERROR_RATE = 0.1

#: Pause after a 429 that did not say how long to wait.
DEFAULT_RATE_LIMIT_PAUSE = 1.0

#: Long waits for admission are logged at INFO at most once per this many seconds per
#: provider (the others at DEBUG); every one of them is an event.
LOG_QUEUE_WAIT_EVERY = 10.0

_HOLD_NAMES: dict[Hold, str] = {
    "pause": "a pause the provider asked for (retry-after or a rate-limit reset)",
    "concurrency": "the concurrency limit (max_concurrency)",
    "rpm": "the requests-per-minute limit (rpm)",
    "tpm": "the tokens-per-minute limit (tpm)",
}


class ActorStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """A frozen snapshot of one provider actor."""

    provider: str
    kind: str
    status: str
    breaker: str
    queued: int
    in_flight: int
    admitted: int
    refused: int
    succeeded: int
    failed: int
    cancelled: int
    retried: int
    restarts: int
    input_tokens: int
    output_tokens: int
    latency_ewma: float | None
    latency_p95: float | None


class _WallClock:
    """Wall-clock time read through trio's clock, for vendors' absolute reset times.

    Anthropic says *when* a limit resets (an RFC 3339 timestamp); turning that into a
    pause needs the wall clock.  Reading it afresh each time would mix two clocks: under
    a virtual clock the pause would grow by all the virtual time elapsed.  So the wall
    clock is read once, and afterwards advanced by trio's clock.
    """

    __slots__ = ("_trio", "_wall")

    def __init__(self) -> None:
        self._wall = datetime.datetime.now(datetime.UTC).timestamp()
        self._trio = trio.current_time()

    def now(self) -> float:
        return self._wall + (trio.current_time() - self._trio)


class ProviderActor:
    """A provider deployment as an actor (created and supervised by the router)."""

    def __init__(
        self,
        name: str,
        provider: Provider,
        config: ProviderConfig,
        *,
        default_max_tokens: int = 1024,
        on_event: Listener | None = None,
    ) -> None:
        self.name = name
        self.provider = provider
        self.config = config
        self._default_max_tokens = default_max_tokens
        self._on_event = on_event
        # Where the adapter really sends: a user's adapter may point anywhere.
        url = getattr(provider, "base_url", None)
        url = url if isinstance(url, str) else None
        rpm, tpm = effective_limits(config, url)
        preset = preset_limits(config, url)
        if preset is not None and (
            (config.rpm is None and preset[0] is not None)
            or (config.tpm is None and preset[1] is not None)
        ):
            # Say so: a limit nobody configured is a surprise when it queues requests.
            logger.info(
                "provider %s: %s's published entry-tier limits apply (rpm=%s, tpm=%s); "
                "set rpm/tpm to your account's, or presets = false",
                name,
                config.kind,
                rpm,
                tpm,
                extra={"provider": name, "rpm": rpm, "tpm": tpm},
            )
        self.mailbox = Mailbox(
            name,
            rpm=rpm,
            tpm=tpm,
            rpm_burst=config.rpm_burst,
            tpm_burst=config.tpm_burst,
            max_concurrency=config.max_concurrency,
            max_queue=config.max_queue,
            max_pause=config.retry.max_retry_after,
        )
        self._first_token_timeout = config.first_token_timeout
        self._idle_timeout = config.idle_timeout
        self._queue_wait_threshold = config.queue_wait_threshold
        self._next_queue_log = -math.inf
        self.breaker = CircuitBreaker(config.breaker, on_transition=self._breaker_moved)
        #: ``[shared]``: the breaker again, shared (router._shared._breaker), whose
        #: half-open probes need a cluster-wide token; ``None`` otherwise.
        self._probe_gate: SharedBreaker | None = None
        #: Latency of whole answers (``complete``, ``embed``).
        self.latency = LatencyStats()
        #: Time to first content event of streams.
        self.ttft = LatencyStats()
        self._percentile_cache: dict[tuple[bool, float], tuple[float, float | None]] = {}
        self.errors = ErrorWindow()
        self.retry_budget = RetryBudget(config.retry)
        #: Prompt-size correction learned from reported usage, per model.
        self.calibration = TokenCalibration()
        self.crashed: str | None = None
        self.restarts = 0
        self._succeeded = 0
        self._failed = 0
        self._cancelled = 0
        self.retried = 0
        self._input_tokens = 0
        self._output_tokens = 0
        self._breaker_changed = trio.Event()
        # The run's clock, read through its bound method: trio.current_time() without
        # the two lookups in between (the hot path reads the time a few times per call).
        self._now = trio.lowlevel.current_clock().current_time
        self._published_at = self._now()
        self._wall = _WallClock()
        first = self._classify(self._published_at)
        self._status: HealthStatus = first.status  # the published verdict
        self.health = AsyncValue(first)

    def __repr__(self) -> str:
        return f"ProviderActor({self.name!r}, kind={self.provider.kind!r})"

    # -- the actor's own loop ----------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the mailbox until cancelled; the supervisor restarts it if it crashes."""
        await self.mailbox.run(task_status=task_status)

    async def watch_breaker(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Republish health when an open breaker's (or a suspension's) time is up.

        An open breaker turns half-open when time passes, not when a call comes, so this
        republishes the health snapshot at that moment, and tasks waiting on
        :attr:`health` wake when the provider may be tried again.  So does the end of a
        suspension (a ``retry-after`` longer than ``max_retry_after``).  Runs until
        cancelled.
        """
        task_status.started()
        while True:
            self._breaker_changed = trio.Event()
            retry_at = self.breaker.retry_at
            suspended = self.mailbox.suspended_until
            if (
                suspended is not None
                and suspended > trio.current_time()  # an ended one is cleared lazily
                and (retry_at is None or suspended < retry_at)
            ):
                retry_at = suspended
            if retry_at is None:
                await self._breaker_changed.wait()
            else:
                with trio.move_on_at(retry_at):
                    await self._breaker_changed.wait()
                if trio.current_time() >= retry_at:
                    self._publish()

    def on_crash(self, exc: BaseException) -> None:
        """The loop crashed: fail the queued requests so they can fail over."""
        self.mailbox.fail_waiting(
            ServerError(f"the provider's actor crashed ({type(exc).__name__})", provider=self.name)
        )
        self._publish()

    def mark_crashed(self, reason: str) -> None:
        """Too many crashes: refuse everything from now on."""
        self.crashed = reason
        self.mailbox.close(Overloaded(f"provider unavailable: {reason}", provider=self.name))
        self._publish()

    # -- health ----------------------------------------------------------------------

    def _health_latency(self) -> LatencyStats:
        # Health speaks of whole answers when there are any, else of first tokens.
        return self.latency if self.latency.ewma is not None else self.ttft

    def latency_percentile(self, q: float, now: float, *, stream: bool = False) -> float | None:
        """The ``q``-quantile of latency (of first tokens for ``stream``), refreshed each second.

        Hedge delays read this on every request, so it is cached for one second of trio
        time, as Finagle refreshes its backup-request histogram every few seconds.
        """
        key = (stream, q)
        cached = self._percentile_cache.get(key)
        if cached is not None and now - cached[0] < 1.0:
            return cached[1]
        value = (self.ttft if stream else self.latency).percentile(q, now)
        self._percentile_cache[key] = (now, value)
        return value

    def latency_samples(self, now: float, *, stream: bool = False) -> int:
        """How many latency samples the window holds (of first tokens for ``stream``)."""
        return (self.ttft if stream else self.latency).count(now)

    def expected_latency(self, *, stream: bool = False) -> float | None:
        """The EWMA latency of whole answers (of first tokens for ``stream``), if known."""
        return (self.ttft if stream else self.latency).ewma

    def policy_health(self, now: float) -> TargetHealth:
        """The routing policy's cheap view: verdict, latency estimate, load.

        Unhealthy: crashed, or the breaker is open.  Degraded: half-open, error rate of
        10% or more, or p95 latency at or above ``degraded_latency``.
        """
        load = self.mailbox.in_flight + self.mailbox.queued
        latency = self._health_latency().ewma
        if self.crashed is not None:
            return TargetHealth(
                status="unhealthy",
                reason=f"actor crashed: {self.crashed}",
                latency=latency,
                load=load,
            )
        suspended = self._suspension(now)
        if suspended is not None:
            return TargetHealth(status="unhealthy", reason=suspended, latency=latency, load=load)
        state = self.breaker.state(now)
        if state == "open":
            return TargetHealth(
                status="unhealthy",
                reason=f"circuit open until t={self.breaker.retry_at:.3f}",
                latency=latency,
                load=load,
            )
        if state == "half_open":
            # A half-open target keeps its place while it has probe slots: ranking it
            # last would starve it of the probes that can close it.  With every slot
            # taken it is as good as open.
            if self.breaker.would_allow(now):
                return TargetHealth(
                    status="healthy",
                    reason="circuit half-open: probing",
                    latency=latency,
                    load=load,
                )
            return TargetHealth(
                status="unhealthy",
                reason="circuit half-open: every probe slot is taken",
                latency=latency,
                load=load,
            )
        reason: str | None = None
        if self.errors.error_rate(now) >= DEGRADED_ERROR_RATE:
            reason = f"error rate {self.errors.error_rate(now):.0%}"
        elif self.config.degraded_latency is not None:
            p95 = self.latency_percentile(0.95, now, stream=self.latency.ewma is None)
            if p95 is not None and p95 >= self.config.degraded_latency:
                reason = f"p95 latency {p95:.3f}s"
        return TargetHealth(
            status="healthy" if reason is None else "degraded",
            reason=reason,
            latency=latency,
            load=load,
        )

    def policy_status(self, now: float) -> HealthStatus:
        """:meth:`policy_health`'s ``status`` alone, with the same effects (a due breaker
        transition, the percentile cache) but none of its allocations: the hot path's."""
        if self.crashed is not None:
            return "unhealthy"
        suspended = self.mailbox.suspended_until
        if suspended is not None and now < suspended:
            return "unhealthy"
        breaker = self.breaker
        state = breaker.state(now)
        if state == "open":
            return "unhealthy"
        if state == "half_open":
            return "healthy" if breaker.would_allow(now) else "unhealthy"
        if self.errors.error_rate(now) >= DEGRADED_ERROR_RATE:
            return "degraded"
        degraded_latency = self.config.degraded_latency
        if degraded_latency is not None:
            p95 = self.latency_percentile(0.95, now, stream=self.latency.ewma is None)
            if p95 is not None and p95 >= degraded_latency:
                return "degraded"
        return "healthy"

    def _suspension(self, now: float) -> str | None:
        """Why the provider is out of routing now (a long retry-after), or ``None``."""
        until = self.mailbox.suspended_until
        if until is None or now >= until:
            return None
        return f"rate limited until t={until:.3f}: {self.mailbox.suspension}"

    def _classify(self, now: float) -> HealthSnapshot:
        stats = self.mailbox.statistics()
        return classify(
            self.name,
            self.breaker.snapshot(now),
            self._health_latency().snapshot(now),
            self.errors.error_rate(now),
            degraded_error_rate=DEGRADED_ERROR_RATE,
            degraded_latency=self.config.degraded_latency,
            crashed=self.crashed,
            suspended=self._suspension(now),
            in_flight=stats.in_flight,
            queued=stats.queued,
            limits=stats.limits,
            breaker_origin=None if self._probe_gate is None else self._probe_gate.origin,
        )

    def _publish(self) -> HealthSnapshot:
        now = trio.current_time()
        snapshot = self._classify(now)
        old = self.health.value
        self.health.value = snapshot
        self._status = snapshot.status
        if old.status != snapshot.status and self._on_event is not None:
            self._on_event(
                HealthChanged(
                    time=now, provider=self.name, status=snapshot.status, reason=snapshot.reason
                )
            )
        return snapshot

    def _outcome(self, now: float) -> None:
        # Called after every call.  Recomputing the full snapshot (two percentile walks)
        # on every call would cost more than the rest of the router's bookkeeping, so it
        # is republished when the verdict may have changed, and at most once a second
        # otherwise; router.health() always recomputes.
        status = self.policy_status(now)
        if status != self._status or now - self._published_at >= 1.0:
            self._published_at = now
            self._publish()

    def refresh_health(self) -> HealthSnapshot:
        """Recompute, publish and return the health snapshot as of now."""
        self._published_at = trio.current_time()
        return self._publish()

    def pause_remaining(self, now: float) -> float:
        """Seconds the provider asked us to wait (``retry-after``) that are still to run
        (a pause of the queue, or a suspension)."""
        until = self.mailbox.paused_until
        suspended = self.mailbox.suspended_until
        if suspended is not None and (until is None or suspended > until):
            until = suspended
        return 0.0 if until is None else max(0.0, until - now)

    def _breaker_moved(self, old: str, new: str, now: float) -> None:
        self._breaker_changed.set()
        level = logging.WARNING if new == "open" else logging.INFO
        logger.log(
            level,
            "provider %s: circuit breaker %s -> %s",
            self.name,
            old,
            new,
            extra={"provider": self.name, "breaker_from": old, "breaker_to": new},
        )
        if self._on_event is not None:
            self._on_event(BreakerChanged(time=now, provider=self.name, old=old, new=new))

    def _success(self, latency: float, now: float, *, stream: bool = False) -> None:
        self._succeeded += 1
        self.breaker.record_success(now, latency)
        (self.ttft if stream else self.latency).record(latency, now)
        self.errors.record_success(now)
        self._outcome(now)

    def _failure(self, exc: LLMError, now: float) -> None:
        self._failed += 1
        if isinstance(exc, _HEALTH_FAILURES):
            self.breaker.record_failure(now)
            self.errors.record_failure(type(exc).__name__, now)
        else:
            # Says nothing about the provider's health (a bad request, a rate limit the
            # buckets handle): neither a failure nor a success to the breaker, so a
            # half-open probe answered this way frees its slot without closing it.
            self.breaker.record_cancelled(now)
            self.errors.record_success(now)
        self._learn(exc.headers, now)
        if isinstance(exc, RateLimited) or (isinstance(exc, Overloaded) and exc.retry_after):
            pause = exc.retry_after
            if pause is None or not 0.0 <= pause < math.inf:  # absent, negative, NaN, inf
                pause = DEFAULT_RATE_LIMIT_PAUSE
            # Up to max_retry_after this holds the queue; longer, it suspends the
            # provider: out of routing until then, refusing at once (the Mailbox).
            self.mailbox.pause_until(now + pause, why=f"the provider said retry-after {pause:g}s")
            if self.mailbox.suspended_until is not None:
                self._breaker_changed.set()  # the watcher republishes when it ends
        self._outcome(now)

    def _abandoned(self, now: float, elapsed: float | None, *, stream: bool = False) -> None:
        """A call was cancelled (a lost race, a deadline) after ``elapsed`` seconds.

        It says nothing either way to the breaker.  But its latency is known to be at
        least ``elapsed``, and that goes into the latency window: were cancelled calls
        left out, the slow ones a hedge cuts off would never be counted, the percentile
        that sets the hedge delay would drift low, and hedges would fire more often
        than the percentile promises.  A censored sample is on the right side of any
        threshold it has passed, which is all a percentile needs.
        """
        self._cancelled += 1
        self.breaker.record_cancelled(now)
        if elapsed is not None and elapsed > 0.0:
            (self.ttft if stream else self.latency).record(elapsed, now)
        self._outcome(now)

    def _learn(self, headers: dict[str, str], now: float) -> None:
        if not headers or not has_rate_limit_headers(headers):
            return  # most answers: nothing to learn, and no need to read the clock
        info = parse_rate_limit_headers(headers, wall_now=self._wall.now())
        if info is None:
            return
        self.mailbox.learn(
            remaining_requests=info.remaining_requests,
            remaining_tokens=info.remaining_tokens,
            reset_requests=info.reset_requests,
            reset_tokens=info.reset_tokens,
            limit_requests=info.limit_requests,
            limit_tokens=info.limit_tokens,
        )
        if self.mailbox.suspended_until is not None:
            self._breaker_changed.set()  # the watcher republishes when it ends

    # -- calls -----------------------------------------------------------------------

    def _check_available(self, now: float, panic: bool = False) -> None:
        if self.crashed is not None:
            # For good: not worth retrying here (routes still fail over on Overloaded).
            raise Overloaded(
                f"provider unavailable: {self.crashed}", provider=self.name, retryable=False
            )
        if not self.breaker.allow(now) and not panic:
            # A panic attempt (the route has too few healthy targets) goes through the
            # open breaker; anything else is refused at once, and not retried by waiting
            # (the router would sit out the breaker in silence): retry_after says when.
            retry_at = self.breaker.retry_at
            if retry_at is None:
                message = "circuit breaker half-open: every probe slot is taken; not sent"
            else:
                message = (
                    f"circuit breaker open until t={retry_at:.3f} "
                    f"({max(0.0, retry_at - now):.3g}s from now); not sent"
                )
            raise Overloaded(
                message,
                provider=self.name,
                retry_after=None if retry_at is None else max(0.0, retry_at - now),
                retryable=False,
            )

    def _waited(
        self,
        seconds: float,
        held_by: Hold,
        outcome: WaitOutcome,
        trace: AttemptRecord | None,
        model: str,
    ) -> None:
        """A request's wait in the mailbox ended: trace it; report it if it was long."""
        if trace is not None:
            trace.queued += seconds
        threshold = self._queue_wait_threshold
        if threshold is None or seconds < threshold:
            return
        now = self._now()
        # One INFO line per provider per LOG_QUEUE_WAIT_EVERY seconds, the rest at DEBUG:
        # a saturated provider would otherwise log every request it queues.
        level = logging.DEBUG
        if now >= self._next_queue_log:
            level = logging.INFO
            self._next_queue_log = now + LOG_QUEUE_WAIT_EVERY
        if logger.isEnabledFor(level):
            logger.log(
                level,
                "provider %s: a request waited %.3gs for admission, held by %s (%s; %d queued)",
                self.name,
                seconds,
                _HOLD_NAMES[held_by],
                outcome,
                self.mailbox.queued,
                extra={"provider": self.name, "queued_seconds": seconds, "held_by": held_by},
            )
        if self._on_event is not None:
            self._on_event(
                QueueWait(
                    time=now,
                    provider=self.name,
                    provider_model=model,
                    waited=seconds,
                    held_by=held_by,
                    outcome=outcome,
                    queued=self.mailbox.queued,
                )
            )

    def _not_admitted(self) -> None:
        # Admission refused or cancelled: the call never started, so any half-open probe
        # slot the breaker granted goes back.
        now = self._now()
        self.breaker.record_cancelled(now)
        self._outcome(now)

    def _wrap(self, exc: Exception) -> ServerError:
        """A foreign exception from the adapter, as the typed error the caller sees."""
        error = ServerError(
            f"the provider adapter raised {type(exc).__name__}: {exc}", provider=self.name
        )
        error.__cause__ = exc
        return error

    def _timed_out(self, what: str, limit: float) -> Timeout:
        return Timeout(f"{what} within {limit:g}s", provider=self.name)

    async def complete(
        self,
        request: ChatRequest,
        *,
        trace: AttemptRecord | None = None,
        nowait: bool = False,
        prompt_tokens: int | None = None,
    ) -> ChatResponse:
        """One attempt at ``request`` on this provider (no retries: the router decides).

        ``trace`` is filled in with the tokens sent, the time queued and the usage;
        ``nowait`` refuses with :class:`~providers.Overloaded` instead of queueing (load
        shedding); ``prompt_tokens`` is the prompt's count when the caller has it.
        """
        call = ActorCall(self, request, trace, nowait, prompt_tokens)
        async with call:
            response = await self.provider.complete(request)
            call.answered(response.usage, response.headers)
        return response

    def stream(
        self,
        request: ChatRequest,
        *,
        trace: AttemptRecord | None = None,
        nowait: bool = False,
        prompt_tokens: int | None = None,
    ) -> ActorStream:
        """One streaming attempt (``async with``); the same call path as :meth:`complete`."""
        return ActorStream(self, request, trace, nowait, prompt_tokens)

    async def embed(
        self,
        request: EmbeddingRequest,
        *,
        trace: AttemptRecord | None = None,
        nowait: bool = False,
    ) -> EmbeddingResponse:
        """Embed through the same call path (cost: the inputs' estimated tokens)."""
        call = ActorCall(self, request, trace, nowait)
        async with call:
            response = await self.provider.embed(request)
            call.answered(response.usage, _NO_HEADERS)  # an embedding answer keeps none
        return response

    async def probe(self) -> None:
        """An active health check: list the provider's models (no tokens spent)."""
        start = trio.current_time()
        try:
            await self.provider.list_models()
        except Exception as exc:
            # As for every call (see _ended): a foreign exception is the adapter's crash.
            error = exc if isinstance(exc, LLMError) else self._wrap(exc)
            self._failure(error, trio.current_time())
            return
        now = trio.current_time()
        self._success(now - start, now)

    def statistics(self) -> ActorStatistics:
        """A frozen snapshot of this actor."""
        now = trio.current_time()
        m = self.mailbox.statistics()
        health = self.health.value
        return ActorStatistics(
            provider=self.name,
            kind=self.provider.kind,
            status=health.status,
            breaker=self.breaker.state(now),
            queued=m.queued,
            in_flight=m.in_flight,
            admitted=m.admitted,
            refused=m.refused,
            succeeded=self._succeeded,
            failed=self._failed,
            cancelled=self._cancelled,
            retried=self.retried,
            restarts=self.restarts,
            input_tokens=self._input_tokens,
            output_tokens=self._output_tokens,
            latency_ewma=self.latency.ewma,
            latency_p95=self.latency.percentile(0.95, now),
        )


# The one call path.  Every operation (complete, stream, embed) is an ActorCall:
#
#   admit     on entering its ``async with``: the cancel check, the actor's breaker and
#             suspension, the mailbox (at once, or queued): the grant, or a refusal
#   call      the adapter, inside the block, under the first-token limit when one is set
#   outcome   exactly one of
#               answered    a whole answer (or a stream's Done): tokens accounted,
#                           calibration and rate-limit headers learnt, a success
#               raised      an LLMError is the provider's failure; any other Exception
#                           is the adapter crashing, wrapped in ServerError (the original
#                           as __cause__) and a failure too; anything else (Cancelled)
#                           abandons the call
#               abandoned   the block was left without either (a lost race, a reader
#                           that stopped early): a censored latency sample
#             each releases the permit (the call is the permit) and updates health.
#
# Cost: one object per call, which is also the mailbox's permit (so no second object),
# one coroutine to enter (admission may queue), none to exit (``__aexit__`` is a plain
# method returning a finished awaitable), no cancel scope unless a limit is set.


class _Finished:
    """An awaitable that is finished already: awaiting it returns ``None`` at once.

    ``ActorCall.__aexit__`` does its work synchronously and returns this, so leaving the
    call costs no coroutine object.  Every await shares one exhausted iterator.
    """

    __slots__ = ()

    def __await__(self) -> Generator[None, None, None]:
        return _EXHAUSTED


_EXHAUSTED = cast("Generator[None, None, None]", iter(()))
_FINISHED = _Finished()
#: The headers of an answer that keeps none (an embedding); only ever read.
_NO_HEADERS: dict[str, str] = {}


def _no_negative(usage: Usage) -> Usage:
    """``usage`` with every negative count read as 0.

    No provider uses fewer than no tokens; a server that says it did (a bug, or a
    hostile one) would otherwise be a credit: a negative cost settled against the
    budgets (spend past the limit on every other target), TPM refunded past the cost.
    """
    return msgspec.structs.replace(
        usage,
        input_tokens=max(0, usage.input_tokens),
        output_tokens=max(0, usage.output_tokens),
        cached_input_tokens=max(0, usage.cached_input_tokens),
        cache_write_tokens=max(0, usage.cache_write_tokens),
        reasoning_tokens=max(0, usage.reasoning_tokens),
    )


class ActorCall(Permit):
    """One call through a provider actor: ``async with call:`` around the adapter call.

    Entering admits the call (or raises the refusal); inside, the caller calls the
    adapter and reports a whole answer with :meth:`answered`; leaving records the
    outcome — a success, a failure (a foreign exception is re-raised as
    :class:`~providers.ServerError`), or an abandoned call — and releases the permit.
    See the comment above for the rules.

    Synopsis::

        call = ActorCall(actor, request, trace, nowait)
        async with call:
            response = await actor.provider.complete(request)
            call.answered(response.usage, response.headers)
    """

    __slots__ = (
        "_actor",
        "_learns",
        "_model",
        "_nowait",
        "_scope",
        "_stream",
        "_trace",
        "_what",
        "first_content_at",
        "prompt",
        "settled",
    )

    def __init__(
        self,
        actor: ProviderActor,
        request: ChatRequest | EmbeddingRequest,
        trace: AttemptRecord | None,
        nowait: bool,
        prompt_tokens: int | None = None,
        *,
        stream: bool = False,
    ) -> None:
        if isinstance(request, EmbeddingRequest):
            # Nothing is generated: the cost is the inputs' estimated tokens, and the
            # usage teaches the chat prompt counts nothing.
            prompt = sum(estimate_text_tokens(t) for t in request.inputs)
            Permit.__init__(self, float(prompt), 0.0)
            self._learns = False
            self._what = "no embeddings"
        else:
            # The prompt is counted exactly where an offline tokenizer knows the model,
            # else estimated (providers._tokens); the TPM cost scales that by what this
            # provider's reported usage has taught the calibration about the model.  The
            # unscaled count is kept, for the calibration to learn from the answer.
            output = request.max_tokens or actor._default_max_tokens
            prompt = count_input_tokens(request) if prompt_tokens is None else prompt_tokens
            scaled = actor.calibration.scale(request.model, prompt)
            Permit.__init__(self, float(scaled + output), float(output))
            self._learns = True
            self._what = "no first token" if stream else "no answer"
        self._actor = actor
        self._model = request.model
        self._trace = trace
        self._nowait = nowait
        self._stream = stream
        self._scope: trio.CancelScope | None = None
        #: The prompt's token count (unscaled), sent as the attempt's ``sent_tokens``.
        self.prompt = prompt
        #: When a stream's first content event came (trio time), if it has.
        self.first_content_at: float | None = None
        #: The outcome is recorded (answered, failed or abandoned).
        self.settled = False

    # -- admit ----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        # A call made in a cancelled scope takes no permit: nothing is charged or sent
        # (a hedge started as the race is decided, a fallback as the caller is
        # cancelled).  Not a schedule point otherwise.
        if self.settled or self._mailbox is not None:
            # A second entry would take a second grant that no exit releases.
            raise RuntimeError("an actor call is entered once: make a new one for each call")
        await trio.lowlevel.checkpoint_if_cancelled()
        actor = self._actor
        trace = self._trace
        now = actor._now()
        # A panic attempt (the plan put the target in by panic routing) goes through an
        # open breaker.
        actor._check_available(now, trace is not None and trace.candidate.panic)
        probes = actor._probe_gate
        if probes is not None and probes._untokened:
            await probes.take_probe()  # [shared], half-open: the cluster's probe token
        mailbox = actor.mailbox
        try:
            if self._nowait:
                if mailbox.shared:
                    await mailbox.admit_nowait_shared(self, now=now)
                else:
                    mailbox.admit_nowait(self, now=now)
            elif mailbox.try_admit(self, now=now) is None:
                await mailbox.admit(self, on_wait=self._waited)
        except BaseException:
            actor._not_admitted()
            raise
        if trace is not None:
            trace.sent_tokens = self.prompt
            observer = trace.observer
            if observer is not None:
                # Only while someone listens (the race's observer builds the events).
                observer.admitted(trace, self.granted_at, self.granted_at - now)
        limit = actor._first_token_timeout
        if limit is not None:
            # Admitted at once or from the queue, the call starts when admission was
            # granted (no schedule point in between, so the same instant).
            self._scope = scope = trio.move_on_at(self.granted_at + limit)
            scope.__enter__()
        return self

    def _waited(self, seconds: float, held_by: Hold, outcome: WaitOutcome) -> None:
        self._actor._waited(seconds, held_by, outcome, self._trace, self._model)

    # -- outcomes ---------------------------------------------------------------------------

    def answered(self, usage: Usage, headers: dict[str, str]) -> None:
        """The call succeeded with ``usage``: a whole answer, or a stream's Done.

        Health latency is the whole answer's, or a stream's time to first content.
        """
        # The usage is read before the call counts as settled: an answer whose usage is
        # not one (a user's adapter) raises here, and the call fails, typed and
        # accounted, instead of being left half-recorded with its permit held.
        if usage.input_tokens < 0 or usage.output_tokens < 0 or usage.cached_input_tokens < 0:
            usage = _no_negative(usage)
        total = usage.input_tokens + usage.output_tokens
        self.settled = True
        actor = self._actor
        now = actor._now()
        actor._input_tokens += usage.input_tokens
        actor._output_tokens += usage.output_tokens
        self.release(total or None)
        if self._learns:
            actor.calibration.observe(self._model, self.prompt, usage.input_tokens)
        trace = self._trace
        if trace is not None:
            trace.usage = usage
        actor._learn(headers, now)
        first = self.first_content_at
        actor._success(
            (now if first is None else first) - self.granted_at, now, stream=self._stream
        )

    def _raised(self, exc: BaseException) -> ServerError | None:
        """The call raised ``exc``: its outcome, once; the typed error to raise instead of
        a foreign ``exc``, else ``None`` (raise ``exc`` itself)."""
        actor = self._actor
        if self.settled:
            # Already answered or failed: only make sure nothing foreign escapes.
            if isinstance(exc, Exception) and not isinstance(exc, LLMError):
                return actor._wrap(exc)
            return None
        if not isinstance(exc, Exception):
            self._abandon()  # Cancelled (or KeyboardInterrupt): no verdict either way
            return None
        self.settled = True
        now = actor._now()
        self.release()
        if isinstance(exc, LLMError):
            actor._failure(exc, now)
            return None
        error = actor._wrap(exc)
        actor._failure(error, now)
        return error

    def _abandon(self) -> None:
        """Left without an outcome (a lost race, a deadline, a reader that stopped early).

        The censored latency sample runs to now, or for a stream to its first content
        if that came (see ProviderActor._abandoned).
        """
        if self.settled:
            return
        self.settled = True
        actor = self._actor
        now = actor._now()
        self.release()
        first = self.first_content_at
        actor._abandoned(
            now, (now if first is None else first) - self.granted_at, stream=self._stream
        )

    def _end_limit(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> BaseException | None:
        """Leave the first-token limit's scope, if one is open; return the exception the
        call ended with: ``exc``, or a :class:`~providers.Timeout` if the limit cut it."""
        scope = self._scope
        if scope is None:
            return exc
        self._scope = None
        try:
            scope.__exit__(exc_type, exc, tb)
        except BaseException as remaining:
            # A group holding the limit's Cancelled and more: the rest of it.
            return remaining
        if not scope.cancelled_caught:
            return exc
        if exc is not None:
            # The limit's own Cancelled, swallowed.  The Timeout raised in its place gets
            # it as __context__ (Python chains what is being handled): without its
            # traceback, so that a Timeout kept (an attempt's record, a fallback's
            # error) keeps none of the cut call's frames alive.
            exc.__traceback__ = None
            exc.__context__ = None
        limit = self._actor._first_token_timeout
        assert limit is not None
        return self._actor._timed_out(self._what, limit)

    def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Awaitable[bool | None]:
        """Record the outcome (see the comment above the class) and release the permit.

        A plain method returning a finished awaitable: the work is synchronous, and
        leaving a call then costs no coroutine.  Raises the typed error in place of a
        foreign exception, and the limit's :class:`~providers.Timeout` in place of its
        own cancellation.
        """
        ended = exc if self._scope is None else self._end_limit(exc_type, exc, tb)
        if ended is None:
            if not self.settled:
                self._abandon()  # left without an answer
            return _FINISHED
        error = self._raised(ended)
        if error is not None:
            try:  # no local left to tie the traceback's frame to the error: no cycle
                raise error from ended
            finally:
                del error, ended
        if ended is not exc:
            # The limit's Timeout in place of its own Cancelled (display: Timeout only);
            # no local left to hold the Cancelled's traceback from this frame.
            del exc, tb
            try:
                raise ended from None
            finally:
                del ended
        return _FINISHED


class ActorStream(ActorCall):
    """One streaming attempt: ``async with actor.stream(request) as events``.

    An :class:`ActorCall` whose block is the caller's reading: admission on entry, then
    the adapter's stream opened under the first-token limit; reads under the
    first-token and idle limits; and exactly one outcome — a success at the
    :class:`~providers.Done` event (health latency: time to first content), a failure
    when opening, reading or closing raises (a foreign exception wrapped in
    :class:`~providers.ServerError`, the original as ``__cause__``), or, when the block
    is left before either, an abandoned call.
    """

    __slots__ = ("_events", "_limited", "_opening", "_request")

    def __init__(
        self,
        actor: ProviderActor,
        request: ChatRequest,
        trace: AttemptRecord | None,
        nowait: bool,
        prompt_tokens: int | None,
    ) -> None:
        super().__init__(actor, request, trace, nowait, prompt_tokens, stream=True)
        self._request = request
        self._opening: AbstractAsyncContextManager[EventStream] | None = None
        self._events: EventStream | None = None
        self._limited = actor._first_token_timeout is not None or actor._idle_timeout is not None

    @property
    def provider(self) -> str:
        """The name of the provider streaming."""
        return self._actor.name

    # -- admit and open -----------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await super().__aenter__()
        try:
            # Inside the try: an adapter whose stream() itself raises is a failed call
            # too (typed, counted, its permit returned), not an escape.
            opening = self._actor.provider.stream(self._request)
            self._opening = opening
            self._events = await opening.__aenter__()
        except BaseException as exc:
            self._opening = None  # never entered: nothing to exit
            ActorCall.__aexit__(self, type(exc), exc, exc.__traceback__)
            raise
        if self._scope is not None:
            # Open: the reads keep the first-token limit themselves (_next_limited), so
            # that it never covers the caller's own time between reads.
            self._end_limit(None, None, None)
        return self

    # -- read -----------------------------------------------------------------------------

    def __aiter__(self) -> ActorStream:
        return self

    async def __anext__(self) -> StreamEvent:
        events = self._events
        if events is None:
            raise RuntimeError(
                "the stream is not open: read it inside `async with actor.stream(...)`"
            )
        try:
            if self._limited:
                event = await self._next_limited(events)
            else:
                event = await events.__anext__()
        except StopAsyncIteration:
            raise
        except BaseException as exc:
            if not isinstance(exc, Exception):
                raise  # Cancelled: the block's exit records the call as abandoned
            error = self._raised(exc)
            if error is None:
                raise
            try:  # no local left to tie the traceback's frame to the error: no cycle
                raise error from exc
            finally:
                del error
        if self.first_content_at is None and is_content_event(event):
            self.first_content_at = self._actor._now()
        if isinstance(event, Done) and not self.settled:
            response = event.response
            self.answered(response.usage, response.headers)
        return event

    async def _next_limited(self, events: EventStream) -> StreamEvent:
        """The next event, within the first-token and idle limits that are set.

        The idle limit runs from when the reader asks for the next event: time the
        reader spends between events is not the provider's silence (what it sent
        meanwhile is waiting in the buffers).
        """
        actor = self._actor
        deadline = math.inf
        which = ""
        limit = 0.0
        first = actor._first_token_timeout
        if first is not None and self.first_content_at is None:
            deadline, which, limit = self.granted_at + first, "no first token", first
        idle = actor._idle_timeout
        if idle is not None:
            idle_at = actor._now() + idle
            if idle_at < deadline:
                deadline, which, limit = idle_at, "no stream event", idle
        with trio.move_on_at(deadline) as scope:
            event = await events.__anext__()
        if scope.cancelled_caught:
            raise actor._timed_out(which, limit)
        return event

    # -- close ------------------------------------------------------------------------------

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        # ``exc`` came from the caller's block (or from __anext__, which recorded its own
        # outcome): it says nothing new about the provider.  What the adapter raises while
        # closing, other than ``exc`` itself, is the provider's.
        opening = self._opening
        self._opening = None
        self._events = None  # read after the block: "not open", not the adapter's error
        suppress = False
        if opening is not None:
            try:
                suppress = bool(await opening.__aexit__(exc_type, exc, tb))
            except BaseException as closing:
                if closing is not exc:
                    ActorCall.__aexit__(self, type(closing), closing, closing.__traceback__)
                self._abandon()
                raise
        self._abandon()
        return suppress
