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
from contextlib import AbstractAsyncContextManager
from types import TracebackType

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
        self._crash_next: BaseException | None = None
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
        await self.mailbox.run(task_status=task_status, crash=self._maybe_crash)

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

    def _maybe_crash(self) -> None:
        if self._crash_next is not None:
            exc, self._crash_next = self._crash_next, None
            raise exc

    def inject_crash(self, exc: BaseException) -> None:
        """Testing hook: make the actor's loop raise ``exc`` at its next wake-up."""
        self._crash_next = exc
        self.mailbox._changed.set()

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

    def _cost(
        self, request: ChatRequest, prompt_tokens: int | None = None
    ) -> tuple[float, float, int]:
        """(TPM cost, its output part, the prompt count) of a chat request.

        The prompt is counted exactly where an offline tokenizer knows the model, else
        estimated (providers._tokens); the TPM cost scales that by what this provider's
        reported usage has taught :attr:`calibration` about the model.  The unscaled
        count is returned, for the calibration to learn from when the answer comes.
        """
        output = request.max_tokens or self._default_max_tokens
        prompt = count_input_tokens(request) if prompt_tokens is None else prompt_tokens
        scaled = self.calibration.scale(request.model, prompt)
        return float(scaled + output), float(output), prompt

    async def _admit(
        self,
        cost: float,
        output_cost: float,
        *,
        nowait: bool,
        trace: AttemptRecord | None,
        model: str,
        panic: bool = False,
    ) -> Permit:
        # A call made in a cancelled scope takes no permit: nothing is charged or sent.
        await trio.lowlevel.checkpoint_if_cancelled()
        permit = self._admit_at_once(cost, output_cost, nowait=nowait, panic=panic)
        if permit is not None:
            return permit
        return await self._wait_for_admission(cost, output_cost, trace, model)

    async def _wait_for_admission(
        self, cost: float, output_cost: float, trace: AttemptRecord | None, model: str
    ) -> Permit:
        """Queue for a permit (after :meth:`_admit_at_once` said ``None``)."""

        def waited(seconds: float, held_by: Hold, outcome: WaitOutcome) -> None:
            self._waited(seconds, held_by, outcome, trace, model)

        try:
            return await self.mailbox.admit(cost, output_cost, on_wait=waited)
        except BaseException:
            self._not_admitted()
            raise

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

    def _admit_at_once(
        self, cost: float, output_cost: float, *, nowait: bool, panic: bool = False
    ) -> Permit | None:
        """The permit, when admission needs no wait; ``None`` when it must queue.

        Callers check for cancellation first (``checkpoint_if_cancelled``): a permit
        granted here is for a call that will be sent.  ``panic``: the plan put this
        target in by panic routing, so an open breaker does not refuse it.
        """
        now = self._now()
        self._check_available(now, panic)
        try:
            if nowait:
                return self.mailbox.admit_nowait(cost, output_cost, now=now)
            return self.mailbox.try_admit(cost, output_cost, now=now)
        except BaseException:
            self._not_admitted()
            raise

    def _not_admitted(self) -> None:
        # Admission refused or cancelled: the call never started, so any half-open probe
        # slot the breaker granted goes back.
        now = self._now()
        self.breaker.record_cancelled(now)
        self._outcome(now)

    # The one call path.  Every operation (complete, stream, embed) goes through it:
    #
    #   admit     _admit_at_once / _wait_for_admission: a permit, or a refusal
    #   call      the adapter, under the per-attempt limits when they are set
    #   outcome   exactly one of
    #               _answered   a whole answer (or a stream's Done): tokens accounted,
    #                           calibration and rate-limit headers learnt, a success
    #               _ended      an exception: an LLMError is the provider's failure;
    #                           any other Exception is the adapter crashing, wrapped in
    #                           ServerError (the original as __cause__) and a failure
    #                           too; anything else (Cancelled) abandons the call
    #             each releases the permit and updates health.
    #
    # They are plain methods called inline, not a context manager: ``complete`` is the
    # hot path, and every coroutine layer costs on each of its I/O wake-ups.

    def _answered(
        self,
        permit: Permit,
        usage: Usage,
        headers: dict[str, str],
        latency: float,
        now: float,
        trace: AttemptRecord | None,
        *,
        stream: bool = False,
        model: str | None = None,
        prompt: int = 0,
    ) -> None:
        """A call succeeded: ``latency`` is the whole answer's, or a stream's first token."""
        self._input_tokens += usage.input_tokens
        self._output_tokens += usage.output_tokens
        total = usage.input_tokens + usage.output_tokens
        permit.release(total or None)
        if model is not None:  # chat: the prompt count learns from the reported usage
            self.calibration.observe(model, prompt, usage.input_tokens)
        if trace is not None:
            trace.usage = usage
        self._learn(headers, now)
        self._success(latency, now, stream=stream)

    def _ended(
        self,
        permit: Permit,
        exc: BaseException,
        start: float,
        *,
        stream: bool = False,
        first: float | None = None,
    ) -> ServerError | None:
        """A call that started at ``start`` raised ``exc``: record its outcome; return
        the typed error to raise instead of a foreign ``exc``, else ``None`` (raise
        ``exc`` itself).

        An abandoned call's censored latency sample runs to now, or for a stream to its
        first content (``first``) if that came.
        """
        now = self._now()
        permit.release()
        if isinstance(exc, LLMError):
            self._failure(exc, now)
            return None
        if isinstance(exc, Exception):
            error = self._wrap(exc)
            self._failure(error, now)
            return error
        self._abandoned(now, (now if first is None else first) - start, stream=stream)
        return None

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
        shedding).
        """
        cost, output_cost, prompt = self._cost(request, prompt_tokens)
        # A call made in a cancelled scope takes no permit: nothing is charged or sent
        # (a hedge started as the race is decided, a fallback as the caller is
        # cancelled).  Not a schedule point otherwise.  (_admit, inlined: one coroutine
        # layer fewer on the hot path.)
        await trio.lowlevel.checkpoint_if_cancelled()
        panic = trace is not None and trace.candidate.panic
        permit = self._admit_at_once(cost, output_cost, nowait=nowait, panic=panic)
        if permit is None:
            permit = await self._wait_for_admission(cost, output_cost, trace, request.model)
        if trace is not None:
            trace.sent_tokens = prompt
        # Admitted at once, or granted from the queue: either way the call starts when
        # admission was granted (no schedule point in between, so the same instant).
        start = permit.granted_at
        limit = self._first_token_timeout
        try:
            if limit is None:
                response = await self.provider.complete(request)
            else:
                with trio.move_on_at(start + limit) as scope:
                    response = await self.provider.complete(request)
                if scope.cancelled_caught:
                    raise self._timed_out("no answer", limit)
        except BaseException as exc:
            error = self._ended(permit, exc, start)
            if error is None:
                raise
            try:  # no local left to tie the traceback's frame to the error: no cycle
                raise error from exc
            finally:
                del error
        now = self._now()
        self._answered(
            permit,
            response.usage,
            response.headers,
            now - start,
            now,
            trace,
            model=request.model,
            prompt=prompt,
        )
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
        """Embed through admission (cost: the inputs' estimated tokens)."""
        prompt = sum(estimate_text_tokens(t) for t in request.inputs)
        panic = trace is not None and trace.candidate.panic
        permit = await self._admit(
            float(prompt), 0.0, nowait=nowait, trace=trace, model=request.model, panic=panic
        )
        if trace is not None:
            trace.sent_tokens = prompt
        start = permit.granted_at
        limit = self._first_token_timeout
        try:
            if limit is None:
                response = await self.provider.embed(request)
            else:
                with trio.move_on_at(start + limit) as scope:
                    response = await self.provider.embed(request)
                if scope.cancelled_caught:
                    raise self._timed_out("no embeddings", limit)
        except BaseException as exc:
            error = self._ended(permit, exc, start)
            if error is None:
                raise
            try:  # no local left to tie the traceback's frame to the error: no cycle
                raise error from exc
            finally:
                del error
        now = self._now()
        self._answered(permit, response.usage, {}, now - start, now, trace)
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


class ActorStream:
    """One streaming attempt: ``async with actor.stream(request) as events``.

    It goes through the actor's one call path (see :class:`ProviderActor`): admission on
    entry, the adapter's stream under the per-attempt limits, and exactly one outcome —
    a success at the :class:`~providers.Done` event (health latency: time to first
    content), a failure when opening or reading raises (a foreign exception wrapped in
    :class:`~providers.ServerError`, the original as ``__cause__``), or, when the block
    is left before either, an abandoned call.
    """

    __slots__ = (
        "_actor",
        "_events",
        "_limited",
        "_nowait",
        "_opening",
        "_permit",
        "_prompt",
        "_prompt_tokens",
        "_request",
        "_start",
        "_trace",
        "failed",
        "first_content_at",
        "response",
        "settled",
    )

    def __init__(
        self,
        actor: ProviderActor,
        request: ChatRequest,
        trace: AttemptRecord | None,
        nowait: bool,
        prompt_tokens: int | None,
    ) -> None:
        self._actor = actor
        self._request = request
        self._trace = trace
        self._nowait = nowait
        self._prompt_tokens = prompt_tokens
        self._prompt = 0
        self._permit: Permit | None = None
        self._opening: AbstractAsyncContextManager[EventStream] | None = None
        self._events: EventStream | None = None
        self._start = 0.0
        self._limited = actor._first_token_timeout is not None or actor._idle_timeout is not None
        self.first_content_at: float | None = None
        self.response: ChatResponse | None = None
        #: The call's outcome is recorded (a success or a failure).
        self.settled = False
        #: It failed (opening or reading raised).
        self.failed = False

    @property
    def provider(self) -> str:
        """The name of the provider streaming."""
        return self._actor.name

    # -- admit and open -----------------------------------------------------------------

    async def __aenter__(self) -> ActorStream:
        actor = self._actor
        request = self._request
        cost, output_cost, self._prompt = actor._cost(request, self._prompt_tokens)
        trace = self._trace
        permit = await actor._admit(
            cost,
            output_cost,
            nowait=self._nowait,
            trace=trace,
            model=request.model,
            panic=trace is not None and trace.candidate.panic,
        )
        self._permit = permit
        if self._trace is not None:
            self._trace.sent_tokens = self._prompt
        self._start = start = permit.granted_at
        limit = actor._first_token_timeout
        try:
            # Inside the try: an adapter whose stream() itself raises is a failed call
            # too (typed, counted, its permit returned), not an escape.
            opening = actor.provider.stream(request)
            self._opening = opening
            if limit is None:
                self._events = await opening.__aenter__()
            else:
                with trio.move_on_at(start + limit) as scope:
                    self._events = await opening.__aenter__()
                if scope.cancelled_caught:
                    raise actor._timed_out("no first token", limit)
        except BaseException as exc:
            self._opening = None  # never entered: nothing to exit
            error = self._settle_error(exc)
            if error is None:
                raise
            try:  # no local left to tie the traceback's frame to the error: no cycle
                raise error from exc
            finally:
                del error
        return self

    # -- read -----------------------------------------------------------------------------

    def __aiter__(self) -> ActorStream:
        return self

    async def __anext__(self) -> StreamEvent:
        events = self._events
        if events is None:
            raise RuntimeError("the stream is not open: use `async with actor.stream(...)`")
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
            error = self._settle_error(exc)
            if error is None:
                raise
            try:  # no local left to tie the traceback's frame to the error: no cycle
                raise error from exc
            finally:
                del error
        if self.first_content_at is None and is_content_event(event):
            self.first_content_at = self._actor._now()
        if isinstance(event, Done) and not self.settled:
            self.settled = True
            self.response = response = event.response
            actor = self._actor
            now = actor._now()
            permit = self._permit
            assert permit is not None
            # Health latency for streams is time to first token: what a caller waits for.
            ttft = (self.first_content_at or now) - self._start
            actor._answered(
                permit,
                response.usage,
                response.headers,
                ttft,
                now,
                self._trace,
                stream=True,
                model=self._request.model,
                prompt=self._prompt,
            )
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
            deadline, which, limit = self._start + first, "no first token", first
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
        suppress = False
        if opening is not None:
            try:
                suppress = bool(await opening.__aexit__(exc_type, exc, tb))
            except BaseException as closing:
                if closing is exc:
                    self._abandon_if_open()
                    raise
                error = self._settle_error(closing)
                if error is None:
                    raise
                try:  # no local left to tie the traceback's frame to the error: no cycle
                    raise error from closing
                finally:
                    del error
        self._abandon_if_open()
        return suppress

    def _abandon_if_open(self) -> None:
        if self.settled:
            return
        self.settled = True
        # Left early (a lost race, the caller stopped reading or was cancelled): the time
        # to first content if it came, else at least the time waited.
        permit = self._permit
        if permit is not None:
            actor = self._actor
            now = actor._now()
            permit.release()
            first = self.first_content_at
            actor._abandoned(now, (first if first is not None else now) - self._start, stream=True)

    def _settle_error(self, exc: BaseException) -> ServerError | None:
        """The call raised ``exc``: its outcome, once; the typed error to raise instead
        of a foreign ``exc``, else ``None``."""
        actor = self._actor
        if self.settled:
            # Already answered or failed: only make sure nothing foreign escapes.
            if isinstance(exc, Exception) and not isinstance(exc, LLMError):
                return actor._wrap(exc)
            return None
        self.settled = True
        permit = self._permit
        assert permit is not None
        error = actor._ended(permit, exc, self._start, stream=True, first=self.first_content_at)
        self.failed = isinstance(exc, Exception)
        return error
