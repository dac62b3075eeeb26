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
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

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
)
from providers._tokens import TokenCalibration, count_input_tokens, estimate_text_tokens
from providers._types import is_content_event

from ._config import ProviderConfig
from ._events import BreakerChanged, HealthChanged, Listener
from ._health import CircuitBreaker, ErrorWindow, HealthSnapshot, LatencyStats, classify
from ._limiter import Mailbox, Permit
from ._policy import HealthStatus, TargetHealth
from ._providers import effective_limits
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
        rpm, tpm = effective_limits(config)
        self.mailbox = Mailbox(
            name,
            rpm=rpm,
            tpm=tpm,
            rpm_burst=config.rpm_burst,
            tpm_burst=config.tpm_burst,
            max_concurrency=config.max_concurrency,
            max_queue=config.max_queue,
        )
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
        """Republish health when an open breaker's time is up, until cancelled.

        An open breaker turns half-open when time passes, not when a call comes, so this
        republishes the health snapshot at that moment, and tasks waiting on
        :attr:`health` wake when the provider may be tried again.
        """
        task_status.started()
        while True:
            self._breaker_changed = trio.Event()
            retry_at = self.breaker.retry_at
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
        """Seconds the provider asked us to wait (``retry-after``) that are still to run."""
        until = self.mailbox.paused_until
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
            pause = exc.retry_after if exc.retry_after is not None else DEFAULT_RATE_LIMIT_PAUSE
            self.mailbox.pause_until(now + pause)
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
        count is returned, for :meth:`_calibrate` to learn from.
        """
        output = request.max_tokens or self._default_max_tokens
        prompt = count_input_tokens(request) if prompt_tokens is None else prompt_tokens
        scaled = self.calibration.scale(request.model, prompt)
        return float(scaled + output), float(output), prompt

    def _calibrate(self, model: str, prompt: int, response: ChatResponse) -> None:
        self.calibration.observe(model, prompt, response.usage.input_tokens)

    async def _admit(
        self, cost: float, output_cost: float, *, nowait: bool, panic: bool = False
    ) -> Permit:
        # A call made in a cancelled scope takes no permit: nothing is charged or sent.
        await trio.lowlevel.checkpoint_if_cancelled()
        permit = self._admit_at_once(cost, output_cost, nowait=nowait, panic=panic)
        if permit is not None:
            return permit
        return await self._wait_for_admission(cost, output_cost)

    async def _wait_for_admission(self, cost: float, output_cost: float) -> Permit:
        """Queue for a permit (after :meth:`_admit_at_once` said ``None``)."""
        try:
            return await self.mailbox.admit(cost, output_cost)
        except BaseException:
            self._not_admitted()
            raise

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

    def _account(self, response: ChatResponse) -> int | None:
        usage = response.usage
        self._input_tokens += usage.input_tokens
        self._output_tokens += usage.output_tokens
        total = usage.input_tokens + usage.output_tokens
        return total if total else None

    async def complete(
        self,
        request: ChatRequest,
        *,
        trace: AttemptRecord | None = None,
        nowait: bool = False,
        prompt_tokens: int | None = None,
    ) -> ChatResponse:
        """One attempt at ``request`` on this provider (no retries: the router decides).

        ``trace`` is filled in with the tokens sent and the usage; ``nowait`` refuses with
        :class:`~providers.Overloaded` instead of queueing (load shedding).
        """
        cost, output_cost, prompt = self._cost(request, prompt_tokens)
        # A call made in a cancelled scope takes no permit: nothing is charged or sent
        # (a hedge started as the race is decided, a fallback as the caller is
        # cancelled).  Not a schedule point otherwise.
        await trio.lowlevel.checkpoint_if_cancelled()
        panic = trace is not None and trace.candidate.panic
        permit = self._admit_at_once(cost, output_cost, nowait=nowait, panic=panic)
        if permit is None:
            permit = await self._wait_for_admission(cost, output_cost)
        if trace is not None:
            trace.sent_tokens = prompt
        # Admitted at once, or granted from the queue: either way the call starts when
        # admission was granted (no schedule point in between, so the same instant).
        start = permit.granted_at
        try:
            response = await self.provider.complete(request)
        except LLMError as exc:
            permit.release()
            self._failure(exc, self._now())
            raise
        except Exception as exc:
            permit.release()
            error = ServerError(
                f"the provider adapter raised {type(exc).__name__}: {exc}", provider=self.name
            )
            self._failure(error, trio.current_time())
            raise error from exc
        except BaseException:
            permit.release()
            now = trio.current_time()
            self._abandoned(now, now - start)
            raise
        now = trio.current_time()
        permit.release(self._account(response))
        self._calibrate(request.model, prompt, response)
        if trace is not None:
            trace.usage = response.usage
        self._learn(response.headers, now)
        self._success(now - start, now)
        return response

    @asynccontextmanager
    async def stream(
        self,
        request: ChatRequest,
        *,
        trace: AttemptRecord | None = None,
        nowait: bool = False,
        prompt_tokens: int | None = None,
    ) -> AsyncIterator[ActorStream]:
        """One streaming attempt; admission, health and token accounting around it."""
        cost, output_cost, prompt = self._cost(request, prompt_tokens)
        panic = trace is not None and trace.candidate.panic
        permit = await self._admit(cost, output_cost, nowait=nowait, panic=panic)
        if trace is not None:
            trace.sent_tokens = prompt
        start = trio.current_time()
        wrapped: ActorStream | None = None
        failed_opening = False
        try:
            async with self.provider.stream(request) as events:
                wrapped = ActorStream(self, events, start)
                yield wrapped
        except LLMError as exc:
            if wrapped is None:
                # Raised opening the stream: the provider's failure.  Once the stream is
                # open, its own failures are recorded by ActorStream as they surface; an
                # LLMError that reaches here otherwise came from the caller's body.
                failed_opening = True
                self._failure(exc, trio.current_time())
            raise
        finally:
            now = trio.current_time()
            tokens: int | None = None
            if wrapped is not None and wrapped.response is not None:
                tokens = self._account(wrapped.response)
                self._calibrate(request.model, prompt, wrapped.response)
                if trace is not None:
                    trace.usage = wrapped.response.usage
            permit.release(tokens)
            if wrapped is None:
                if not failed_opening:  # cancelled while waiting for the response
                    self._abandoned(now, now - start, stream=True)
            elif wrapped.response is None and not wrapped.failed:
                # Left early (a lost race, the caller stopped reading): the time to first
                # content if it came, else at least the time waited.
                first = wrapped.first_content_at
                ttft = (first if first is not None else now) - start
                self._abandoned(now, ttft, stream=True)

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
        permit = await self._admit(float(prompt), 0.0, nowait=nowait, panic=panic)
        if trace is not None:
            trace.sent_tokens = prompt
        start = trio.current_time()
        try:
            response = await self.provider.embed(request)
        except LLMError as exc:
            permit.release()
            self._failure(exc, trio.current_time())
            raise
        except BaseException:
            permit.release()
            now = trio.current_time()
            self._abandoned(now, now - start)
            raise
        now = trio.current_time()
        self._input_tokens += response.usage.input_tokens
        permit.release(response.usage.input_tokens or None)
        if trace is not None:
            trace.usage = response.usage
        self._success(now - start, now)
        return response

    async def probe(self) -> None:
        """An active health check: list the provider's models (no tokens spent)."""
        start = trio.current_time()
        try:
            await self.provider.list_models()
        except LLMError as exc:
            self._failure(exc, trio.current_time())
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
    """The events of one streaming attempt, with time-to-first-token and outcome recorded."""

    __slots__ = ("_actor", "_events", "_start", "failed", "first_content_at", "response")

    def __init__(self, actor: ProviderActor, events: Any, start: float) -> None:
        self._actor = actor
        self._events = events
        self._start = start
        self.first_content_at: float | None = None
        self.response: ChatResponse | None = None
        self.failed = False

    @property
    def provider(self) -> str:
        """The name of the provider streaming."""
        return self._actor.name

    def __aiter__(self) -> ActorStream:
        return self

    async def __anext__(self) -> StreamEvent:
        try:
            event: StreamEvent = await self._events.__anext__()
        except LLMError as exc:
            self.failed = True
            self._actor._failure(exc, trio.current_time())
            raise
        if self.first_content_at is None and is_content_event(event):
            self.first_content_at = trio.current_time()
        if isinstance(event, Done):
            self.response = event.response
            now = trio.current_time()
            self._actor._learn(event.response.headers, now)
            # Health latency for streams is time to first token: what a caller waits for.
            ttft = (self.first_content_at or now) - self._start
            self._actor._success(ttft, now, stream=True)
        return event
