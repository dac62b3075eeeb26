"""The router: ``open_router(config)`` starts one supervised actor per provider.

Synopsis::

    async with open_router(config) as router:
        resp = await router.complete(ChatRequest(model="fast", messages=[Message.user("hi")]))
        async with router.stream(request) as events:
            async for event in events:
                ...

One request, step by step:

1. **Resolve** the model string: ``provider:model``, a route alias, or a bare model id
   whose provider is found by its prefix (``gpt-*`` → an OpenAI provider...).
2. **Plan**: the pure policy (:mod:`router._policy`) filters the route's targets by what
   the request needs and by health, and orders them by the route's strategy.
3. **Race** (:mod:`router._race`): attempts start in plan order — a fallback when the
   previous one fails with an error the route fails over on, a hedge when the route's
   hedge delay passes — and the first success wins; the others are cancelled.  Without
   hedging, each target also retries its retryable errors with backoff under a retry
   budget, never past the caller's deadline.
4. The answer carries its trace (``response.attempts``); a failure raises one error
   carrying it too (``exc.attempts``).

Streams commit at their first content event: until then a failing target is replaced
by the next one, invisibly to the caller; after it, the caller sees exactly one stream
and a failure is :class:`~providers.StreamInterrupted`.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import random
import re
from collections import deque
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Mapping,
    Sequence,
)
from contextlib import AsyncExitStack, asynccontextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

import msgspec
import trio
from trio_util import AsyncValue

from providers import (
    Attempt,
    BudgetExceeded,
    ChatRequest,
    ChatResponse,
    ConfigError,
    Done,
    EmbeddingRequest,
    EmbeddingResponse,
    InvalidRequest,
    LLMError,
    NoRoute,
    Overloaded,
    Provider,
    RateLimited,
    RouterClosed,
    StreamEvent,
    TextDelta,
    Timeout,
)
from providers._tokens import encoding_for_model
from providers._types import is_content_event

from ._actor import ActorStatistics, ActorStream, ProviderActor
from ._audit import AuditLog, AuditStatistics
from ._budget import Budget, BudgetStatistics, period_seconds
from ._config import (
    DEFAULT_FAIL_OVER,
    BudgetConfig,
    HedgeConfig,
    RouterConfig,
    Strategy,
    model_info,
    validate_config,
)
from ._events import (
    ActorCrashed,
    ActorRestarted,
    AttemptFinished,
    AttemptStarted,
    BudgetRefused,
    EventHub,
    FallbackLaunched,
    HedgeLaunched,
    Listener,
    Operation,
    RequestFinished,
    RequestOutcome,
    RequestStarted,
    RetryScheduled,
    RouterEvent,
    Subscription,
)
from ._health import HealthSnapshot
from ._policy import (
    DEFAULT_PANIC_THRESHOLD,
    Candidate,
    Exclusion,
    HedgeBudget,
    Needs,
    Plan,
    cost_of,
    estimated_cost,
    hedge_delay,
    plan_route,
    unfit,
)
from ._providers import build_provider, config_from_env
from ._race import AttemptRecord, HedgeCounters, Race
from ._retry import retry_delay
from ._structured import OutputSchema, Structured, output_schema, validated

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider
    from prometheus_client import CollectorRegistry

    from ._metrics import PrometheusMetrics

__all__ = ["HedgeStatistics", "Router", "RouterStatistics", "RouterStream", "open_router"]

logger = logging.getLogger("trio_llm_router")

T = TypeVar("T")

#: Bare model ids whose provider kind is known from their prefix.
_PREFIX_KINDS: tuple[tuple[str, str], ...] = (
    ("gpt-", "openai"),
    ("chatgpt-", "openai"),
    ("o1", "openai"),
    ("o3", "openai"),
    ("o4", "openai"),
    ("text-embedding-", "openai"),
    ("claude-", "anthropic"),
    ("gemini-", "gemini"),
)


class _Route:
    """A resolved model string: its candidates and how to race them."""

    __slots__ = (
        "candidates",
        "fail_over",
        "fail_over_retryable",
        "hedge",
        "hedge_budget",
        "hedge_counters",
        "lone_panic_plan",
        "lone_plan",
        "name",
        "panic_threshold",
        "panicking",
        "spend_budget",
        "strategy",
    )

    def __init__(
        self,
        name: str,
        candidates: tuple[Candidate, ...],
        *,
        strategy: Strategy = "fallback",
        hedge: HedgeConfig | None = None,
        fail_over_on: Sequence[str] = DEFAULT_FAIL_OVER,
        spend_budget: Budget | None = None,
        panic_threshold: float = DEFAULT_PANIC_THRESHOLD,
    ) -> None:
        self.name = name
        self.candidates = candidates
        self.strategy: Strategy = strategy
        self.hedge = hedge
        self.fail_over_retryable = "retryable" in fail_over_on
        self.fail_over = frozenset(fail_over_on) - {"retryable"}
        self.hedge_budget = (
            HedgeBudget(hedge.budget_ratio, hedge.budget_burst, start=hedge.max_attempts - 1)
            if hedge is not None and hedge.delay is not None
            else None
        )
        #: A hedged route's counts, for statistics (``None`` for one that does not hedge).
        self.hedge_counters = HedgeCounters() if self.hedge_budget is not None else None
        self.spend_budget = spend_budget
        #: The plan of a one-target route whose target fits the request.
        self.lone_plan = Plan(targets=candidates)
        self.panic_threshold = panic_threshold
        #: ... and of one whose target is unhealthy, in panic (threshold > 0).
        self.lone_panic_plan = Plan(
            targets=tuple(msgspec.structs.replace(c, panic=True) for c in candidates),
            panic=True,
        )
        #: Whether the last request planned was in panic (to log entering and leaving).
        self.panicking = False

    def fails_over(self, exc: LLMError) -> bool:
        """Whether ``exc`` on one target sends the request on to the next."""
        if self.fail_over_retryable and exc.retryable:
            return True
        return any(cls.__name__ in self.fail_over for cls in type(exc).__mro__)


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


def _embedding_inputs(inputs: Sequence[str], dimensions: int | None) -> list[str]:
    """``inputs`` as a list, once (a generator serves every attempt), or InvalidRequest:
    the caller's mistake, refused before any attempt, never a provider's failure."""
    if isinstance(inputs, (str, bytes)):
        raise InvalidRequest("inputs is a list of texts to embed, not one text: pass [text]")
    try:
        texts = list(inputs)
    except TypeError:
        raise InvalidRequest(f"inputs must be a list of str, got {type(inputs).__name__}") from None
    if not texts:
        raise InvalidRequest("an embedding request needs at least one input")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InvalidRequest(f"inputs[{i}] must be a str, got {type(text).__name__}")
    if dimensions is not None and (
        isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions <= 0
    ):
        raise InvalidRequest(f"dimensions must be a positive int, got {dimensions!r}")
    return texts


@asynccontextmanager
async def open_router(
    config: RouterConfig | None = None,
    *,
    providers: Mapping[str, Provider] | None = None,
    seed: int | None = None,
    tracer_provider: TracerProvider | None = None,
    metrics_registry: CollectorRegistry | None = None,
) -> AsyncIterator[Router]:
    """Open a router: one supervised actor per configured provider.

    The body runs once every actor is ready; on exit the actors are cancelled and every
    HTTP client the router created is closed.  Calls after exit raise
    :class:`~providers.RouterClosed`.

    Args:
        config: the providers, routes and supervision settings; ``None`` builds one
            from the API keys in the environment (:func:`config_from_env`).  It is
            validated as ``load_config`` validates TOML: a mistake is a ``ConfigError``
            naming its path (``$.routes.fast.hedge.delay``).
        providers: ready-made providers by name (a ``MockProvider``, or an adapter with
            your own ``httpx.AsyncClient``), used instead of building from ``config``.
            Their names must be configured; the router does not close them.
        seed: seed for the router's random choices (retry jitter) and its request ids,
            for reproducibility.
        tracer_provider: an OpenTelemetry ``TracerProvider`` to trace requests and
            attempts with (needs the ``otel`` extra); ``config.tracing.enabled`` uses the
            global one instead.
        metrics_registry: a ``prometheus_client.CollectorRegistry`` to register the
            router's Prometheus metrics in (needs the ``prometheus`` extra); they are
            unregistered when the router closes.

    An audit log is written when ``config.audit`` is set.  See docs/observability.md.

    Example::

        async with open_router(config) as router:
            resp = await router.complete(request)
    """
    # A config built in code is validated exactly as load_config validates TOML.
    config = validate_config(config_from_env() if config is None else config)
    given = dict(providers or {})
    unknown = sorted(set(given) - set(config.providers))
    if unknown:
        raise ConfigError(
            f"providers {unknown} were given but are not configured; "
            f"configured: {sorted(config.providers)}"
        )
    owned: list[Provider] = []
    built: dict[str, Provider] = {}
    try:
        for name, pc in config.providers.items():
            if name in given:
                built[name] = given[name]
            else:
                built[name] = build_provider(name, pc)
                owned.append(built[name])
        await _warm_tokenizers(built.values())
        router = Router(config, built, random.Random(seed), id_prefix=_id_prefix(seed))
        tracer = _tracer(config, tracer_provider, router)
        audit: AuditLog | None = None
        metrics: PrometheusMetrics | None = None
        body_error: BaseException | None = None
        try:
            if config.audit is not None:
                audit = AuditLog(config.audit, _known_secrets(config, built))
                await audit.open()
            metrics = _metrics(metrics_registry, router)
            async with trio.open_nursery() as nursery:
                for actor in router._actors.values():
                    await nursery.start(router._supervise, actor)
                    await nursery.start(actor.watch_breaker)
                if audit is not None:
                    await nursery.start(audit.run)
                    router._audit = audit
                    router.add_listener(audit.listen)
                if tracer is not None:
                    router.add_listener(tracer)
                if metrics is not None:
                    router.add_listener(metrics.listen)
                try:
                    yield router
                except BaseException as exc:
                    # Re-raised below, outside the nursery, so the caller gets its own
                    # exception rather than an ExceptionGroup wrapping it.
                    body_error = exc
                finally:
                    router._close()
                    nursery.cancel_scope.cancel()
        finally:
            if metrics is not None:
                metrics.unregister()
            if audit is not None:
                audit.close()  # already closed by its task, unless that never started
        if body_error is not None:
            raise body_error
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(5.0):
            for p in owned:
                await p.aclose()


class Router:
    """Routes requests to provider actors.  Made by :func:`open_router`, never directly."""

    def __init__(
        self,
        config: RouterConfig,
        providers: Mapping[str, Provider],
        rng: random.Random,
        *,
        id_prefix: str = "req",
    ) -> None:
        self._config = config
        self._rng = rng
        self._closed = False
        self._default_max_tokens = config.default_max_tokens
        self._hub = EventHub()
        self._id_prefix = id_prefix
        self._sequence = 0
        self._audit: AuditLog | None = None
        # The run's clock, read through its bound method: trio.current_time() without
        # the two lookups in between.
        self._now = trio.lowlevel.current_clock().current_time
        start = self._now()
        self._actors: dict[str, ProviderActor] = {
            name: ProviderActor(
                name,
                providers[name],
                pc,
                default_max_tokens=config.default_max_tokens,
                on_event=self._hub.emit,
            )
            for name, pc in config.providers.items()
        }
        self._routes: dict[str, _Route] = {
            alias: _Route(
                alias,
                tuple(
                    self._candidate(
                        target, index, None if rc.weights is None else rc.weights[index]
                    )
                    for index, target in enumerate(rc.targets)
                ),
                strategy=rc.strategy,
                hedge=rc.hedge,
                fail_over_on=rc.fail_over_on,
                spend_budget=_budget(f"route {alias}", rc.budget, start),
                panic_threshold=(
                    config.panic_threshold if rc.panic_threshold is None else rc.panic_threshold
                ),
            )
            for alias, rc in config.routes.items()
        }
        self._budget = _budget("router", config.budget, start)
        self._provider_budgets = {
            name: budget
            for name, pc in config.providers.items()
            if (budget := _budget(f"provider {name}", pc.budget, start)) is not None
        }
        self._spend: dict[str, float] = {}
        # Single targets resolved on first use ("openai:gpt-4o", "gpt-4o"), bounded.
        self._resolved: dict[str, _Route] = {}
        self._requests = 0
        self._succeeded = 0
        self._failed = 0
        self._cancelled = 0
        self._fallbacks = 0
        self._hedges = 0
        self._hedge_wins = 0
        self._retries = 0
        self._panic_routed = 0
        self._wasted_tokens = 0

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Router {state} providers={sorted(self._actors)}>"

    # -- lifecycle -------------------------------------------------------------------

    def _close(self) -> None:
        self._closed = True
        self._hub.close()
        for actor in self._actors.values():
            actor.mailbox.close(RouterClosed("the router is closed", provider=actor.name))

    def _check_open(self) -> None:
        if self._closed:
            raise RouterClosed("the router is closed: its `async with` block has exited")

    async def _supervise(
        self, actor: ProviderActor, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run ``actor``'s loop; restart it with backoff when it crashes."""
        cfg = self._config.supervisor
        crashes: deque[float] = deque()
        status: trio.TaskStatus[None] = task_status
        while True:
            try:
                await actor.run(task_status=status)
                return
            except Exception as raised:
                exc = _unwrap(raised)
                status = trio.TASK_STATUS_IGNORED
                now = trio.current_time()
                crashes.append(now)
                while crashes and crashes[0] < now - cfg.restart_window:
                    crashes.popleft()
                error_type = type(exc).__name__
                extra: dict[str, object] = {"provider": actor.name, "error_type": error_type}
                delay: float | None = None
                if len(crashes) <= cfg.max_restarts:
                    delay = min(
                        cfg.restart_backoff * 2 ** (len(crashes) - 1), cfg.max_restart_backoff
                    )
                self._hub.emit(
                    ActorCrashed(
                        time=now,
                        provider=actor.name,
                        error_type=error_type,
                        error=str(exc),
                        crashes=len(crashes),
                        restart_in=delay,
                    )
                )
                actor.on_crash(exc)
                if delay is None:
                    reason = (
                        f"crashed {len(crashes)} times within {cfg.restart_window:g}s "
                        f"(last: {error_type}: {exc})"
                    )
                    logger.error(
                        "provider %s: %s; marked unhealthy", actor.name, reason, extra=extra
                    )
                    actor.mark_crashed(reason)
                    return
                logger.warning(
                    "provider %s: actor crashed (%s: %s); restarting in %.3gs",
                    actor.name,
                    error_type,
                    exc,
                    delay,
                    extra={**extra, "restart_in": delay},
                )
                actor.restarts += 1
                await trio.sleep(delay)
                logger.info(
                    "provider %s: actor restarted (restart %d)",
                    actor.name,
                    actor.restarts,
                    extra={"provider": actor.name, "restarts": actor.restarts},
                )
                self._hub.emit(
                    ActorRestarted(
                        time=trio.current_time(), provider=actor.name, restarts=actor.restarts
                    )
                )

    # -- resolution ------------------------------------------------------------------

    def _candidate(self, target: str, index: int = 0, weight: float | None = None) -> Candidate:
        provider, _, model = target.partition(":")
        actor = self._actors[provider]
        info = model_info(self._config.models, target)
        caps = actor.provider.capabilities
        overrides = {
            name: getattr(info, name)
            for name in ("tools", "vision", "structured_output")
            if getattr(info, name) is not None
        }
        if overrides:
            # A model can narrow what its provider takes, never widen it.
            caps = msgspec.structs.replace(
                caps, **{k: v and getattr(caps, k) for k, v in overrides.items()}
            )
        return Candidate(
            provider=provider,
            model=model,
            index=index,
            weight=1.0 if weight is None else weight,
            capabilities=caps,
            context_window=info.context_window,
            input_price=info.input_price,
            output_price=info.output_price,
            cached_input_price=info.cached_input_price,
        )

    def _route(self, model: str) -> _Route:
        route = self._routes.get(model) or self._resolved.get(model)
        if route is not None:
            return route
        target = self._resolve_single(model)
        route = _Route(
            model, (self._candidate(target),), panic_threshold=self._config.panic_threshold
        )
        if len(self._resolved) >= _MAX_RESOLVED:
            self._resolved.clear()
        self._resolved[model] = route
        return route

    def _resolve_single(self, model: str) -> str:
        provider, sep, model_id = model.partition(":")
        if sep:
            if provider not in self._actors or not model_id:
                raise NoRoute(
                    f"unknown provider {provider!r} in model {model!r}; configured providers: "
                    f"{sorted(self._actors)}; routes: {sorted(self._config.routes)}"
                )
            return model
        for prefix, kind in _PREFIX_KINDS:
            if model.startswith(prefix):
                for name, actor in self._actors.items():
                    if actor.provider.kind == kind:
                        return f"{name}:{model}"
        raise NoRoute(
            f"no provider or route for model {model!r}; use 'provider:model' with one of "
            f"{sorted(self._actors)}, or a route: {sorted(self._config.routes)}"
        )

    def plan(
        self, request: ChatRequest | str, needs: Needs | None = None, *, streaming: bool = False
    ) -> Plan:
        """The plan the policy would make now: targets in order, exclusions, panic.

        Give the :class:`~providers.ChatRequest` you would send: its model is resolved and
        its needs (tools, images, structured output, prompt and output tokens) computed
        as :meth:`complete` (or :meth:`stream`, with ``streaming``) computes them, so
        context windows and least-cost see the real request.  A model string plans for
        ``needs`` (``Needs()``, an empty request, if omitted).

        Pure with respect to the router (it draws from the router's rng, nothing else).

        Example::

            plan = router.plan(ChatRequest(model="fast", messages=[Message.user("hi")]))
            print(plan.targets[0].target, plan.explain())
        """
        if isinstance(request, ChatRequest):
            model = request.model
            if needs is None:
                needs = Needs.of(
                    request, streaming=streaming, default_max_tokens=self._default_max_tokens
                )
        else:
            model = request
        return self._plan(self._route(model), needs or Needs(), trio.current_time())

    def _plan(self, route: _Route, needs: Needs, now: float) -> Plan:
        """plan_route over the route's candidates, their health and spend headroom."""
        actors = self._actors
        health = {c.provider: actors[c.provider].policy_health(now) for c in route.candidates}
        for name, budget in self._provider_budgets.items():
            if name in health:
                health[name] = msgspec.structs.replace(
                    health[name], budget_left=budget.headroom(now)
                )
        return plan_route(
            route.candidates,
            route.strategy,
            needs,
            health,
            now,
            self._rng,
            panic_threshold=route.panic_threshold,
        )

    def _panic(self, route: _Route, plan: Plan, request_id: str) -> None:
        """Count a request planned in panic (or not), and log when the route enters or
        leaves panic: once per episode, not once per request."""
        if plan.panic:
            self._panic_routed += 1
            if not route.panicking:
                route.panicking = True
                unhealthy = [c.target for c in plan.targets if c.panic]
                logger.warning(
                    "route %s: panic routing: %d of %d targets routable (threshold %g); "
                    "trying the unhealthy ones too: %s",
                    route.name,
                    len(plan.targets) - len(unhealthy),
                    len(plan.targets),
                    route.panic_threshold,
                    ", ".join(unhealthy),
                    extra={"route": route.name, "request_id": request_id, "panic": True},
                )
        else:
            route.panicking = False
            logger.info(
                "route %s: out of panic routing",
                route.name,
                extra={"route": route.name, "request_id": request_id, "panic": False},
            )

    # -- the retry loop and the race -----------------------------------------------------

    async def _retrying(
        self,
        exc: LLMError,
        actor: ProviderActor,
        call: Callable[[ProviderActor, Candidate, AttemptRecord], Awaitable[T]],
        candidate: Candidate,
        record: AttemptRecord,
        race: Race[Any],
        events: _RequestEvents | None,
    ) -> T:
        """The first call on one target failed with ``exc``: retry it while the error is
        retryable, the retry budget allows and the deadline leaves time (sequential
        routes only).  Raises the last error when it gives up."""
        retry = actor.config.retry
        attempt = 1
        while True:
            if race.has_remaining and isinstance(exc, RateLimited | Overloaded | Timeout):
                # Another target can serve it now: don't wait here, and don't send the
                # request again to a target that just took too long.
                raise exc
            delay = retry_delay(exc, attempt, retry, self._rng)
            now = trio.current_time()
            if (
                delay is None
                or now + delay >= trio.current_effective_deadline()
                or not actor.retry_budget.try_spend(now)
            ):
                raise exc
            logger.info(
                "provider %s: %s; retry %d in %.3gs",
                actor.name,
                type(exc).__name__,
                attempt,
                delay,
                extra={"provider": actor.name, "request_id": race.request_id},
            )
            actor.retried += 1
            self._retries += 1
            record.retries += 1
            if events is not None:
                events.retry(actor.name, type(exc).__name__, attempt, delay)
            await trio.sleep(delay)
            attempt += 1
            try:
                return await call(actor, candidate, record)
            except LLMError as again:
                exc = again

    def _refused(
        self,
        events: _RequestEvents | None,
        request_id: str,
        provider: str | None,
        scope: str,
        message: str,
    ) -> None:
        """A spend cap refused a request or a target: log it, tell the listeners."""
        logger.info(
            "request %s: refused by the %s spend cap",
            request_id,
            scope,
            extra={"request_id": request_id, "provider": provider, "budget_scope": scope},
        )
        if events is not None:
            events.budget_refused(provider, scope, message)

    def _check_budgets(
        self,
        route: _Route,
        plan: Plan,
        needs: Needs,
        now: float,
        request_id: str,
        events: _RequestEvents | None,
    ) -> None:
        """Refuse at once when even the cheapest target would cross a router/route cap."""
        if self._budget is None and route.spend_budget is None:
            return
        caps = [b for b in (self._budget, route.spend_budget) if b is not None]
        cheapest = min(estimated_cost(c, needs) or 0.0 for c in plan.targets)
        for budget in caps:
            if cheapest > budget.headroom(now) + 1e-12:
                message = _over_budget(budget, cheapest, now)
                self._refused(events, request_id, None, budget.scope, message)
                raise BudgetExceeded(message)

    def _reserve(
        self,
        route: _Route,
        candidate: Candidate,
        needs: Needs,
        request_id: str,
        events: _RequestEvents | None,
    ) -> _Charge:
        """Reserve the attempt's estimated cost under every cap that applies, or refuse."""
        if self._budget is None and route.spend_budget is None and not self._provider_budgets:
            return _Charge(candidate, (), 0.0, self._spend)
        budgets = [
            b
            for b in (
                self._budget,
                route.spend_budget,
                self._provider_budgets.get(candidate.provider),
            )
            if b is not None
        ]
        estimate = 0.0
        if budgets:
            estimate = estimated_cost(candidate, needs) or 0.0
            now = trio.current_time()
            for i, budget in enumerate(budgets):
                if not budget.try_reserve(estimate, now):
                    for taken in budgets[:i]:
                        taken.settle(estimate, 0.0, now)
                    message = _over_budget(budget, estimate, now)
                    self._refused(events, request_id, candidate.provider, budget.scope, message)
                    raise BudgetExceeded(message, provider=candidate.provider)
        return _Charge(candidate, budgets, estimate, self._spend)

    def _expected_whole(self, candidate: Candidate) -> float | None:
        return self._actors[candidate.provider].expected_latency(stream=False)

    def _expected_stream(self, candidate: Candidate) -> float | None:
        return self._actors[candidate.provider].expected_latency(stream=True)

    def _skip(self, candidate: Candidate, more: bool) -> str | None:
        if not more:
            return None
        pause = self._actors[candidate.provider].pause_remaining(trio.current_time())
        if pause > 0:
            # The provider told us to back off; another target can serve now.
            return f"paused for {pause:.3g}s more by the provider's retry-after"
        return None

    async def _run(
        self,
        model: str,
        needs: Needs,
        call: Callable[[ProviderActor, Candidate, AttemptRecord], Awaitable[T]],
        *,
        request: ChatRequest | None = None,
        inputs: Sequence[str] | None = None,
        discard: Callable[[T, AttemptRecord], Awaitable[None]] | None = None,
    ) -> tuple[T, AttemptRecord, Race[T], float, _RequestEvents | None]:
        """Plan and race one request; return (result, winner, race, start time, events).

        ``events`` is ``None`` unless someone listens.  When the request fails this
        emits its ``RequestFinished``; when it succeeds, the caller does (with the
        final answer, or when its stream ends).
        """
        self._check_open()
        t0 = self._now()
        self._sequence += 1
        if request is not None and request.metadata and request.metadata.get("request_id"):
            request_id = request.metadata["request_id"]
        else:
            request_id = f"{self._id_prefix}-{self._sequence}"
        events: _RequestEvents | None = None
        if self._hub.listeners:
            events = _RequestEvents(
                self._hub.emit,
                request_id,
                model,
                "embeddings" if needs.embeddings else "chat",
                needs.streaming,
                t0,
                request,
                None if inputs is None else list(inputs),
            )
            events.started()
        race: Race[T] | None = None
        try:
            route = self._route(model)
            actors = self._actors
            candidates = route.candidates
            provider_budgets = self._provider_budgets
            if len(candidates) == 1 and candidates[0].provider not in provider_budgets:
                # A lone target: the plan is plan_route's (the target, or its exclusion;
                # in panic when it is unhealthy and the threshold is above 0), reading
                # health only when its breaker is not closed.
                lone = candidates[0]
                # A breaker transition due now happens before the attempt starts (its
                # event comes first); a closed breaker answers at once.
                actor = actors[lone.provider]
                state = actor.breaker.state(t0)
                reason = unfit(lone, needs)
                if reason is not None:
                    plan = Plan(targets=(), excluded=(Exclusion(lone.target, reason),))
                elif (
                    (state != "closed" or actor.crashed is not None)
                    and route.panic_threshold > 0.0
                    and actor.policy_status(t0) == "unhealthy"
                ):
                    # 0 of 1 routable: below any threshold but 0 (plan_route's rule).
                    plan = route.lone_panic_plan
                else:
                    plan = route.lone_plan
            else:
                plan = self._plan(route, needs, t0)
            if not plan.targets and any("spend cap" in e.reason for e in plan.excluded):
                message = f"no target of {model!r} fits its budget: {plan.explain()}"
                self._refused(events, request_id, None, "provider", message)
                raise BudgetExceeded(message)
            plan.raise_if_empty(model)
            if self._budget is not None or route.spend_budget is not None:
                self._check_budgets(route, plan, needs, t0, request_id, events)
            self._requests += 1
            if plan.panic or route.panicking:
                self._panic(route, plan, request_id)
            try:
                # A request made in a scope that is already cancelled is cancelled, not
                # refused for lack of time.
                await trio.lowlevel.checkpoint_if_cancelled()
            except BaseException:
                self._cancelled += 1
                raise
            hedge = route.hedge
            targets = plan.targets
            max_attempts = len(targets) if hedge is None else min(hedge.max_attempts, len(targets))
            delay = math.inf
            hedge_budget = route.hedge_budget
            if hedge is not None and hedge_budget is not None:
                hedge_budget.deposit()
                primary = actors[targets[0].provider]
                q = hedge.percentile
                if q is None:
                    delay = hedge_delay(hedge, None, 0)
                else:
                    stream = needs.streaming
                    delay = hedge_delay(
                        hedge,
                        primary.latency_percentile(q, t0, stream=stream),
                        primary.latency_samples(t0, stream=stream),
                    )
            hedged = delay != math.inf
            # Sequential races run their attempts inline, below: no closure for them.
            attempt: Callable[[Candidate, AttemptRecord], Awaitable[T]] = _inline
            if hedged:

                async def hedged_attempt(candidate: Candidate, record: AttemptRecord) -> T:
                    # One attempt of a hedged race (in its own task): no retries.
                    charge = self._reserve(route, candidate, needs, request_id, events)
                    record.charge = charge
                    try:
                        result = await call(actors[candidate.provider], candidate, record)
                    except BaseException:
                        charge.settle(record, answered=False)
                        raise
                    if not needs.streaming:
                        charge.settle(record, answered=True)
                    # A stream's charge is settled when the caller's stream ends.
                    return result

                attempt = hedged_attempt
                # Not capped by the plan: a hedge that falls due with no target left is
                # traced and counted (the race stops when nothing remains to start).
                max_attempts = hedge.max_attempts if hedge is not None else max_attempts
                counters = route.hedge_counters
                if counters is not None:
                    counters.delay = delay

            race = Race(
                targets,
                attempt=attempt,
                max_attempts=max_attempts,
                delay=delay,
                fails_over=route.fails_over,
                spend_hedge=hedge_budget.try_spend if hedge_budget is not None else _never,
                expected_latency=self._expected_stream if needs.streaming else self._expected_whole,
                skip=self._skip,
                discard=discard,
                request_id=request_id,
                observer=events,
                clock=self._now,
                hedge_counters=route.hedge_counters if hedged else None,
            )
            try:
                if hedged:
                    result, winner = await race.run()
                else:
                    # Sequential: each attempt runs inline, here (see Race), retrying on
                    # its target before the race moves on.
                    try:
                        while (candidate := race.next_target()) is not None:
                            record = race.begin(candidate)
                            actor = actors[candidate.provider]
                            try:
                                charge = self._reserve(route, candidate, needs, request_id, events)
                                record.charge = charge
                                try:
                                    start = record.start
                                    assert start is not None
                                    actor.retry_budget.record_request(start)
                                    failure: LLMError | None = None
                                    try:
                                        result = await call(actor, candidate, record)
                                    except LLMError as exc:
                                        failure = exc
                                    if failure is not None:
                                        try:
                                            result = await self._retrying(
                                                failure,
                                                actor,
                                                call,
                                                candidate,
                                                record,
                                                race,
                                                events,
                                            )
                                        finally:
                                            # Its traceback holds this frame: no cycle.
                                            failure = None
                                except BaseException:
                                    charge.settle(record, answered=False)
                                    raise
                                if not needs.streaming:
                                    charge.settle(record, answered=True)
                            except LLMError as exc:
                                race.lost(record, exc)
                            except trio.Cancelled:
                                race.cancelled(record)
                                raise
                            except Exception as exc:
                                race.lost(record, exc)
                            else:
                                race.won(record, result)
                                break
                    finally:
                        race.finish()
                    result, winner = race.conclude()
            except LLMError as exc:
                self._failed += 1
                exc.attempts = tuple(race.trace(t0))
                raise
            except BaseException:
                self._cancelled += 1
                raise
            finally:
                self._hedges += race.hedges
                self._fallbacks += race.fallbacks
                for r in race.records:
                    if r.outcome == "failed" or r.outcome == "cancelled":
                        self._wasted_tokens += r.sent_tokens
        except BaseException as exc:
            if events is not None:
                events.failed(exc, [] if race is None else race.trace(t0))
            if isinstance(exc, LLMError):
                # Every call is a schedule point, as trio's own operations are, also when
                # it fails before reaching any I/O (an invalid request, no route): a
                # loop of failing calls must not starve the other tasks.
                await trio.lowlevel.cancel_shielded_checkpoint()
            raise
        self._succeeded += 1
        if winner.kind == "hedge":
            self._hedge_wins += 1
        return result, winner, race, t0, events

    # -- the public API --------------------------------------------------------------

    async def complete(self, request: ChatRequest, *, nowait: bool = False) -> ChatResponse:
        """Send ``request`` to its model's target(s); return the first full answer.

        The answer's ``attempts`` traces every target tried.  With ``nowait``, a target
        that cannot admit the request at once refuses it with
        :class:`~providers.Overloaded` (and the route fails over) instead of queueing:
        load shedding.

        Example::

            resp = await router.complete(ChatRequest(model="fast", messages=[Message.user("hi")]))
            print(resp.text, resp.provider, [a.outcome for a in resp.attempts])
        """
        needs = Needs.of(request, streaming=False, default_max_tokens=self._default_max_tokens)

        # A plain function returning the actor's coroutine: awaited by the router, it is
        # one coroutine layer fewer to resume on every I/O wake-up of the attempt.
        def call(
            actor: ProviderActor, candidate: Candidate, record: AttemptRecord
        ) -> Coroutine[Any, Any, ChatResponse]:
            sent = msgspec.structs.replace(request, model=candidate.model)
            return actor.complete(
                sent, trace=record, nowait=nowait, prompt_tokens=_same_count(needs, request, sent)
            )

        response, winner, race, t0, events = await self._run(
            request.model, needs, call, request=request
        )
        response = msgspec.structs.replace(
            response,
            attempts=race.trace(t0),
            # The winner's cost was settled from this answer's usage.
            cost=response.cost if response.cost is not None else winner.cost,
        )
        if events is not None:
            events.succeeded(winner, response.attempts, response, response.cost)
        return response

    async def structured(
        self,
        request: ChatRequest,
        schema: type[T] | Mapping[str, Any],
        *,
        nowait: bool = False,
    ) -> T:
        """Ask for an answer in ``schema``'s shape; return it decoded and validated.

        ``schema`` is a type msgspec can decode (a ``msgspec.Struct``, a dataclass, a
        ``TypedDict``...): the answer is an instance of it.  Or a JSON Schema ``dict``:
        the answer is the decoded JSON, checked only for its root type and required
        properties.  The schema goes to each target in its vendor's form; an answer that
        does not validate fails that attempt with :class:`~providers.InvalidOutput`, so
        the route retries or fails over as on any retryable error.  See
        docs/structured.md; :meth:`structured_response` also returns the answer (trace,
        usage, cost).

        Raises:
            InvalidRequest: ``schema`` cannot be described as JSON Schema, or the request
                already has a ``response_format``.
            InvalidOutput: the only target's answers did not validate.
            AllProvidersFailed: every target failed (``errors`` says why, each).

        Example::

            class User(msgspec.Struct):
                name: str
                age: int

            user = await router.structured(request, User)
        """
        result = await self.structured_response(request, schema, nowait=nowait)
        return result.value

    async def structured_response(
        self,
        request: ChatRequest,
        schema: type[T] | Mapping[str, Any],
        *,
        nowait: bool = False,
    ) -> Structured[T]:
        """:meth:`structured`, returning the value with the answer it came from.

        Example::

            result = await router.structured_response(request, User)
            print(result.value, result.response.provider, result.response.cost)
            for attempt in result.response.attempts:
                print(attempt.provider, attempt.outcome, attempt.reason or "")
        """
        try:
            target: OutputSchema[T] = output_schema(schema)
            if request.response_format is not None:
                raise InvalidRequest(
                    "structured() sets the request's response_format from the schema; "
                    "send the request without one"
                )
        except InvalidRequest:
            # A schedule point even when refused before any I/O, as complete() is.
            await trio.lowlevel.cancel_shielded_checkpoint()
            raise
        request = msgspec.structs.replace(request, response_format=target.format)
        needs = Needs.of(request, streaming=False, default_max_tokens=self._default_max_tokens)

        # complete()'s call, then the validation, in the attempt: an invalid answer is
        # this target's failure (retried, or failed over), never the caller's surprise.
        def call(
            actor: ProviderActor, candidate: Candidate, record: AttemptRecord
        ) -> Coroutine[Any, Any, tuple[ChatResponse, T]]:
            sent = msgspec.structs.replace(request, model=candidate.model)
            answer = actor.complete(
                sent, trace=record, nowait=nowait, prompt_tokens=_same_count(needs, request, sent)
            )
            return validated(answer, target, actor.provider)

        (response, value), winner, race, t0, events = await self._run(
            request.model, needs, call, request=request
        )
        response = msgspec.structs.replace(
            response,
            attempts=race.trace(t0),
            cost=response.cost if response.cost is not None else winner.cost,
        )
        if events is not None:
            events.succeeded(winner, response.attempts, response, response.cost)
        return Structured(value=value, response=response)

    def stream(self, request: ChatRequest, *, nowait: bool = False) -> StreamContext:
        """Stream ``request``'s answer; race and fail over until the first content event.

        Use it with ``async with``: entering routes the request and returns the
        committed :class:`RouterStream`; leaving the block closes the stream (and its
        connection), also when cancelled.  ``async for`` or ``await`` straight on
        ``router.stream(...)`` raises a ``TypeError`` that says so.

        Example::

            async with router.stream(request) as events:
                async for event in events:
                    if isinstance(event, TextDelta):
                        print(event.text, end="")
        """
        return StreamContext(self, request, nowait)

    async def embed(
        self,
        model: str,
        inputs: Sequence[str],
        *,
        dimensions: int | None = None,
        nowait: bool = False,
    ) -> EmbeddingResponse:
        """Embed ``inputs`` with ``model`` (a ``provider:model`` string or a route).

        Example::

            vectors = (await router.embed("openai:text-embedding-3-small", ["a", "b"])).vectors

        ``inputs`` is read once (any iterable of ``str``; every attempt gets the same).

        Raises:
            InvalidRequest: before any attempt, when ``inputs`` is one ``str`` (not a
                list of them), empty or holds a non-``str``, or ``dimensions`` is not a
                positive int: the caller's mistake, never counted against a provider.
        """
        texts = _embedding_inputs(inputs, dimensions)
        needs = Needs(embeddings=True)

        def call(
            actor: ProviderActor, candidate: Candidate, record: AttemptRecord
        ) -> Coroutine[Any, Any, EmbeddingResponse]:
            req = EmbeddingRequest(model=candidate.model, inputs=texts, dimensions=dimensions)
            return actor.embed(req, trace=record, nowait=nowait)

        response, winner, race, t0, events = await self._run(model, needs, call, inputs=texts)
        cost = response.cost if response.cost is not None else winner.cost
        attempts = race.trace(t0)
        response = msgspec.structs.replace(response, attempts=attempts, cost=cost)
        if events is not None:
            events.succeeded(winner, attempts, response, cost)
        return response

    # -- observability ---------------------------------------------------------------

    def subscribe(
        self,
        *,
        buffer: int | float = 1000,
        types: tuple[type[RouterEvent], ...] | None = None,
    ) -> Subscription:
        """The router's events from now on, as a ``trio.abc.ReceiveChannel``.

        Events are buffered (``buffer`` of them; ``math.inf`` for no bound) without ever
        waiting: when the buffer is full the event is dropped and counted
        (``subscription.dropped``, ``router.statistics().events_dropped``), so a slow
        subscriber never slows routing.  ``types`` keeps only events of those classes.
        Iteration ends when the router closes; ``receive`` raises
        ``trio.ClosedResourceError`` once the subscription is closed (its ``async with``
        block exits).  See :class:`~router.events.Subscription`.

        Example::

            async with router.subscribe(types=(AttemptFinished,)) as events:
                async for event in events:
                    print(event.provider, event.outcome, event.reason)
        """
        self._check_open()
        return Subscription(self._hub, buffer, types)

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(event)`` with every event from now on, synchronously.

        The listener runs in the task where the event happened, so it must be cheap and
        must not block; an exception it raises is logged (once per listener) and counted
        in ``statistics().listener_errors``, never propagated.  Prefer
        :meth:`subscribe` for anything that waits.

        Example::

            router.add_listener(lambda event: print(type(event).__name__, event.time))
        """
        self._hub.add(listener)

    def remove_listener(self, listener: Listener) -> None:
        """Stop calling ``listener``; a listener that is not registered is ignored."""
        self._hub.remove(listener)

    def health(self) -> dict[str, HealthSnapshot]:
        """Each provider's health as of now: healthy, degraded (why) or unhealthy (why).

        Example::

            for name, h in router.health().items():
                print(name, h.status, h.reason or "", h.latency_p95)
        """
        return {name: actor.refresh_health() for name, actor in self._actors.items()}

    def health_value(self, provider: str) -> AsyncValue[HealthSnapshot]:
        """The ``trio_util.AsyncValue`` publishing ``provider``'s health, to wait on.

        Example::

            await router.health_value("openai").wait_value(lambda h: h.status == "healthy")
        """
        try:
            return self._actors[provider].health
        except KeyError:
            raise NoRoute(
                f"unknown provider {provider!r}; configured: {sorted(self._actors)}"
            ) from None

    def provider(self, name: str) -> Provider:
        """The provider object the router sends ``name``'s requests to.

        For tests above all: a ``kind = "mock"`` provider from a TOML file is a
        :class:`~providers.MockProvider` the router built, and this is how a test
        re-scripts it or reads its calls part-way through.

        Raises:
            NoRoute: no provider of that name is configured.

        Example::

            mock = router.provider("local")
            assert isinstance(mock, MockProvider)
            mock.script("patched", ServerError("down"))   # the next two calls
        """
        try:
            return self._actors[name].provider
        except KeyError:
            raise NoRoute(
                f"unknown provider {name!r}; configured: {sorted(self._actors)}"
            ) from None

    async def check_health(self) -> dict[str, HealthSnapshot]:
        """Actively probe every provider (a model listing each, concurrently)."""
        self._check_open()
        async with trio.open_nursery() as nursery:
            for actor in self._actors.values():
                nursery.start_soon(actor.probe)
        return self.health()

    def statistics(self) -> RouterStatistics:
        """A frozen snapshot: requests, hedges, fallbacks, and per provider queues,
        in flight, outcomes, breaker state and tokens.

        Example::

            stats = router.statistics()
            print(stats.hedges / max(1, stats.requests), stats.providers["openai"].in_flight)
        """
        now = trio.current_time()
        return RouterStatistics(
            requests=self._requests,
            succeeded=self._succeeded,
            failed=self._failed,
            cancelled=self._cancelled,
            fallbacks=self._fallbacks,
            hedges=self._hedges,
            hedge_wins=self._hedge_wins,
            retries=self._retries,
            wasted_tokens=self._wasted_tokens,
            panic_routed=self._panic_routed,
            spend=sum(self._spend.values()),
            spend_by_target=dict(self._spend),
            budgets=[b.statistics(now) for b in self._all_budgets()],
            providers={name: a.statistics() for name, a in self._actors.items()},
            events_emitted=self._hub.emitted,
            events_dropped=self._hub.dropped,
            listener_errors=self._hub.listener_errors,
            subscribers=self._hub.subscribers,
            audit=None if self._audit is None else self._audit.statistics(),
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
                for name, r in self._routes.items()
                if (c := r.hedge_counters) is not None and (b := r.hedge_budget) is not None
            },
        )

    def _all_budgets(self) -> list[Budget]:
        budgets = [] if self._budget is None else [self._budget]
        budgets += [r.spend_budget for r in self._routes.values() if r.spend_budget is not None]
        return budgets + list(self._provider_budgets.values())


_MAX_RESOLVED = 1024


def _same_count(needs: Needs, request: ChatRequest, sent: ChatRequest) -> int | None:
    """The policy's prompt count, when counting ``sent`` would give the same number.

    Counting is by the model's encoding (exact for OpenAI models, else the estimate):
    when the target's model counts like the requested one, the actor need not count again.
    """
    if encoding_for_model(sent.model) == encoding_for_model(request.model):
        return needs.input_tokens
    return None


#: Kinds whose models an offline tokenizer may count exactly (OpenAI's encodings).
_OPENAI_FAMILY = frozenset({"openai", "azure", "openrouter", "openai-compatible"})
_warmed = False


async def _warm_tokenizers(providers: Iterable[Provider]) -> None:
    """Load the exact tokenizer in a thread once, if one is installed and may be used.

    Loading it takes about half a second; done lazily, the first request to an OpenAI
    model would block the event loop that long.
    """
    global _warmed
    if _warmed or not any(p.kind in _OPENAI_FAMILY for p in providers):
        return
    _warmed = True
    if importlib.util.find_spec("bpe_openai") is None:
        return
    from providers._tokens import exact_backend

    for model in ("gpt-4o", "gpt-4"):
        await trio.to_thread.run_sync(exact_backend, model)


def _budget(scope: str, config: BudgetConfig | None, start: float) -> Budget | None:
    if config is None:
        return None
    return Budget(scope, limit=config.limit, period=period_seconds(config.period), start=start)


class _Charge:
    """One attempt's spend: its reservations under the caps, settled exactly once.

    ``answered``: the provider's usage is on the record (the answer's cost is known);
    otherwise the attempt is charged the prompt it sent, if it sent one.
    """

    __slots__ = ("_budgets", "_candidate", "_estimate", "_settled", "_spend")

    def __init__(
        self,
        candidate: Candidate,
        budgets: Sequence[Budget],
        estimate: float,
        spend: dict[str, float],
    ) -> None:
        self._candidate = candidate
        self._budgets = budgets
        self._estimate = estimate
        self._spend = spend
        self._settled = False

    def settle(self, record: AttemptRecord, *, answered: bool) -> None:
        if self._settled:
            return
        self._settled = True
        c = self._candidate
        if answered and record.usage is not None:
            actual = cost_of(c, record.usage)
        elif record.sent_tokens and c.input_price is not None:
            actual = record.sent_tokens * c.input_price / 1e6
        else:
            actual = None
        record.cost = actual
        if self._budgets:
            now = trio.current_time()
            for budget in self._budgets:
                budget.settle(self._estimate, actual or 0.0, now)
        if actual:
            key = c.target
            self._spend[key] = self._spend.get(key, 0.0) + actual


def _over_budget(budget: Budget, estimate: float, now: float) -> str:
    stats = budget.statistics(now)
    return (
        f"sending this request (~${estimate:.4f}) would cross the {budget.scope} spend cap "
        f"(${stats.limit:g} per {stats.period:g}s: ${stats.spent:.4f} spent, "
        f"${stats.reserved:.4f} reserved; it resets at t={stats.resets_at:.0f})"
    )


def _never() -> bool:
    return False


async def _inline(candidate: Candidate, record: AttemptRecord) -> Any:
    """The attempt of a sequential race, which the router runs inline instead."""
    raise AssertionError("a sequential race's attempts run in Router._run")


def _unwrap(exc: BaseException) -> BaseException:
    """The one exception inside (nested) single-member groups, for logs and reasons."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


_Opened: TypeAlias = tuple[AsyncExitStack, ActorStream, list[StreamEvent]]


async def _open_committed(
    actor: ProviderActor,
    request: ChatRequest,
    record: AttemptRecord,
    *,
    nowait: bool,
    prompt_tokens: int | None = None,
) -> _Opened:
    """Open a stream and read it up to its first content event (the commit point)."""
    stack = AsyncExitStack()
    try:
        events = await stack.enter_async_context(
            actor.stream(request, trace=record, nowait=nowait, prompt_tokens=prompt_tokens)
        )
        buffered: list[StreamEvent] = []
        while True:
            try:
                event = await events.__anext__()
            except StopAsyncIteration:
                break
            buffered.append(event)
            if is_content_event(event) or isinstance(event, Done):
                break
    except BaseException as exc:
        if not await stack.__aexit__(type(exc), exc, exc.__traceback__):
            raise
        raise  # pragma: no cover - nothing in the stack suppresses
    return stack, events, buffered


async def _close_opened(opened: _Opened, record: AttemptRecord) -> None:
    try:
        await opened[0].aclose()
    finally:
        charge = record.charge
        if isinstance(charge, _Charge):
            charge.settle(record, answered=record.usage is not None)


class StreamContext:
    """What ``router.stream(request)`` returns: enter it with ``async with``, once.

    ``__aenter__`` races the request to its first content event and returns the
    :class:`RouterStream`; ``__aexit__`` closes the winner's stream, settles its spend
    and reports the request's end.  It is a plain class rather than an
    ``asynccontextmanager`` generator so that a mistaken ``async for`` or ``await`` on it
    gets a ``TypeError`` saying how to use it, at no cost to the hot path (one coroutine
    per enter and exit, one fewer generator frame than before).
    """

    __slots__ = (
        "_entered",
        "_nowait",
        "_observed",
        "_race",
        "_request",
        "_routed",
        "_router",
        "_stack",
        "_t0",
        "_winner",
    )

    def __init__(self, router: Router, request: ChatRequest, nowait: bool) -> None:
        self._router = router
        self._request = request
        self._nowait = nowait
        self._entered = False

    def __repr__(self) -> str:
        return f"<router.stream({self._request.model!r}): use it with `async with`>"

    if not TYPE_CHECKING:  # to a type checker these stay absent, so it flags the misuse

        def __aiter__(self):
            raise TypeError(_STREAM_USAGE.format(wrong="is not an async iterator"))

        def __await__(self):
            raise TypeError(_STREAM_USAGE.format(wrong="cannot be awaited"))

    async def __aenter__(self) -> RouterStream:
        if self._entered:
            raise RuntimeError(
                "a stream's `async with` block can be entered once; "
                "call router.stream(request) again for another"
            )
        request = self._request
        router = self._router
        nowait = self._nowait
        self._entered = True
        needs = Needs.of(request, streaming=True, default_max_tokens=router._default_max_tokens)

        def call(
            actor: ProviderActor, candidate: Candidate, record: AttemptRecord
        ) -> Coroutine[Any, Any, _Opened]:
            sent = msgspec.structs.replace(request, model=candidate.model)
            return _open_committed(
                actor, sent, record, nowait=nowait, prompt_tokens=_same_count(needs, request, sent)
            )

        opened, winner, race, t0, observed = await router._run(
            request.model, needs, call, request=request, discard=_close_opened
        )
        stack, events, buffered = opened
        routed = RouterStream(
            events,
            buffered,
            winner=winner,
            race=race,
            t0=t0,
            request_id=race.request_id,
            collect=observed is not None,
        )
        self._stack = stack
        self._routed = routed
        self._winner = winner
        self._race = race
        self._t0 = t0
        self._observed = observed
        return routed

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        winner = self._winner
        error = exc
        try:
            suppressed = bool(await self._stack.__aexit__(exc_type, exc, tb))
            if suppressed:
                error = None
            return suppressed
        except BaseException as raised:
            error = raised
            raise
        finally:
            charge = winner.charge
            if isinstance(charge, _Charge):
                charge.settle(winner, answered=winner.usage is not None)
            observed = self._observed
            if observed is not None:
                observed.stream_finished(self._routed, winner, self._race.trace(self._t0), error)


_STREAM_USAGE = (
    "router.stream(request) {wrong}: it is an async context manager.  Write\n"
    "    async with router.stream(request) as events:\n"
    "        async for event in events:\n"
    "            ...\n"
    "(leaving the block closes the stream and its connection)"
)


class RouterStream:
    """The committed stream the caller reads: one provider's events, start to end.

    ``provider`` is the provider streaming; ``attempts`` the race's trace so far (the
    final one is on the :class:`~providers.Done` event's response); ``response`` the
    whole answer once the stream is done; ``request_id`` the router's id of the request.
    """

    __slots__ = (
        "_buffered",
        "_events",
        "_race",
        "_t0",
        "_texts",
        "_winner",
        "provider",
        "request_id",
        "response",
    )

    def __init__(
        self,
        events: ActorStream,
        buffered: list[StreamEvent],
        *,
        winner: AttemptRecord,
        race: Race[Any],
        t0: float,
        request_id: str = "",
        collect: bool = False,
    ) -> None:
        self._events = events
        self._buffered = deque(buffered)
        self._winner = winner
        self._race = race
        self._t0 = t0
        self.provider = winner.candidate.provider
        #: The router's id of this request (as in its events and audit record).
        self.request_id = request_id
        self.response: ChatResponse | None = None
        # The text delivered, kept only while someone listens to events (for the
        # audit record of a stream that ends without its Done event).
        self._texts: list[str] | None = [] if collect else None

    @property
    def attempts(self) -> list[Attempt]:
        """Every target the race tried, as it stands."""
        return self._race.trace(self._t0)

    def __aiter__(self) -> RouterStream:
        return self

    async def __anext__(self) -> StreamEvent:
        if self._buffered:
            event = self._buffered.popleft()
            await trio.lowlevel.checkpoint()
        else:
            event = await self._events.__anext__()
        texts = self._texts
        if texts is not None and isinstance(event, TextDelta):
            texts.append(event.text)
        if isinstance(event, Done):
            response = event.response
            self._winner.usage = response.usage
            cost = response.cost
            if cost is None:
                cost = cost_of(self._winner.candidate, response.usage)
            self._winner.cost = cost  # the trace shows what the winner cost, too
            response = msgspec.structs.replace(response, attempts=self.attempts, cost=cost)
            self.response = response
            event = Done(response=response)
        return event


# --------------------------------------------------------------------------- observability


def _id_prefix(seed: int | None) -> str:
    """The router's request-id prefix: random, or derived from ``seed`` (reproducible)."""
    return f"{random.Random(seed).getrandbits(32):08x}"


_SECRET_HEADER = re.compile(r"auth|key|token|secret", re.IGNORECASE)


def _known_secrets(config: RouterConfig, providers: Mapping[str, Provider]) -> list[str]:
    """Every secret the router knows of: its adapters' keys, and keys in its config.

    The HTTP adapters keep the values they must never show in ``_secrets`` (their API
    key, an Azure AD token); configured keys come from ``api_key_env`` and from headers
    whose names say they carry one.
    """
    found: list[str] = []
    for provider in providers.values():
        try:
            found.extend(getattr(provider, "_secrets", ()))
        except Exception:  # a user's provider with an odd ``_secrets``: nothing known
            pass
    for pc in config.providers.values():
        if pc.api_key_env:
            value = os.environ.get(pc.api_key_env)
            if value:
                found.append(value)
        for name, value in pc.headers.items():
            if _SECRET_HEADER.search(name):
                found.append(value)
                found.append(value.rpartition(" ")[2])  # "Bearer <token>"
    return sorted({s for s in found if isinstance(s, str) and len(s) >= 4}, key=len, reverse=True)


def _tracer(
    config: RouterConfig, tracer_provider: TracerProvider | None, router: Router
) -> Listener | None:
    if tracer_provider is None and not config.tracing.enabled:
        return None
    try:
        from ._tracing import Tracing
    except ImportError as exc:
        raise ConfigError(
            "tracing needs OpenTelemetry: pip install 'trio-llm-router[otel]' "
            f"({type(exc).__name__}: {exc})"
        ) from None
    kinds = {name: actor.provider.kind for name, actor in router._actors.items()}
    return Tracing(tracer_provider, kinds)


def _metrics(registry: CollectorRegistry | None, router: Router) -> PrometheusMetrics | None:
    if registry is None:
        return None
    try:
        from ._metrics import PrometheusMetrics
    except ImportError as exc:
        raise ConfigError(
            "metrics need prometheus-client: pip install 'trio-llm-router[prometheus]' "
            f"({type(exc).__name__}: {exc})"
        ) from None
    return PrometheusMetrics(registry, router.statistics, trio.lowlevel.current_trio_token())


class _RequestEvents:
    """One request's events (the race's observer), made only while someone listens."""

    __slots__ = (
        "emit",
        "inputs",
        "model",
        "operation",
        "request",
        "request_id",
        "stream",
        "t0",
    )

    def __init__(
        self,
        emit: Listener,
        request_id: str,
        model: str,
        operation: Operation,
        stream: bool,
        t0: float,
        request: ChatRequest | None,
        inputs: list[str] | None,
    ) -> None:
        self.emit = emit
        self.request_id = request_id
        self.model = model
        self.operation: Operation = operation
        self.stream = stream
        self.t0 = t0
        self.request = request
        self.inputs = inputs

    def started(self) -> None:
        self.emit(
            RequestStarted(
                time=self.t0,
                request_id=self.request_id,
                model=self.model,
                operation=self.operation,
                stream=self.stream,
            )
        )

    # -- the race's observer

    def attempt_started(self, record: AttemptRecord) -> None:
        c = record.candidate
        self.emit(
            AttemptStarted(
                time=trio.current_time() if record.start is None else record.start,
                request_id=self.request_id,
                model=self.model,
                provider=c.provider,
                provider_model=c.model,
                kind=record.kind,
                number=record.number,
            )
        )

    def attempt_finished(self, record: AttemptRecord) -> None:
        c = record.candidate
        error = record.error
        self.emit(
            AttemptFinished(
                time=trio.current_time() if record.end is None else record.end,
                request_id=self.request_id,
                model=self.model,
                provider=c.provider,
                provider_model=c.model,
                kind=record.kind,
                number=record.number,
                outcome=record.outcome or "cancelled",
                started=record.start,
                retries=record.retries,
                error_type=None if error is None else type(error).__name__,
                reason=record.reason,
                usage=record.usage,
                cost=record.cost,
            )
        )

    def launched(self, record: AttemptRecord, previous: AttemptRecord | None) -> None:
        c = record.candidate
        now = trio.current_time() if record.start is None else record.start
        if record.kind == "hedge":
            self.emit(
                HedgeLaunched(
                    time=now,
                    request_id=self.request_id,
                    model=self.model,
                    provider=c.provider,
                    provider_model=c.model,
                    previous="" if previous is None else previous.candidate.provider,
                    delay=0.0
                    if previous is None or previous.start is None
                    else now - previous.start,
                )
            )
        else:
            error = None if previous is None else previous.error
            self.emit(
                FallbackLaunched(
                    time=now,
                    request_id=self.request_id,
                    model=self.model,
                    provider=c.provider,
                    provider_model=c.model,
                    failed=None if previous is None else previous.candidate.provider,
                    error_type=None if error is None else type(error).__name__,
                )
            )

    # -- the router's own

    def retry(self, provider: str, error_type: str, retry: int, delay: float) -> None:
        self.emit(
            RetryScheduled(
                time=trio.current_time(),
                request_id=self.request_id,
                model=self.model,
                provider=provider,
                error_type=error_type,
                retry=retry,
                delay=delay,
            )
        )

    def budget_refused(self, provider: str | None, scope: str, message: str) -> None:
        self.emit(
            BudgetRefused(
                time=trio.current_time(),
                request_id=self.request_id,
                model=self.model,
                provider=provider,
                scope=scope,
                message=message,
            )
        )

    def _finished(
        self,
        outcome: RequestOutcome,
        attempts: list[Attempt],
        *,
        winner: AttemptRecord | None = None,
        response: ChatResponse | EmbeddingResponse | None = None,
        cost: float | None = None,
        error: BaseException | None = None,
        ttft: float | None = None,
        streamed_text: str | None = None,
    ) -> None:
        now = trio.current_time()
        failed = outcome == "failed" and error is not None
        usage = None
        if response is not None:
            usage = response.usage
        elif winner is not None:
            usage = winner.usage
        self.emit(
            RequestFinished(
                time=now,
                request_id=self.request_id,
                model=self.model,
                operation=self.operation,
                stream=self.stream,
                outcome=outcome,
                latency=now - self.t0,
                ttft=ttft,
                provider=None if winner is None else winner.candidate.provider,
                provider_model=None if winner is None else winner.candidate.model,
                response_model=None if response is None else response.model,
                finish_reason=response.finish_reason
                if isinstance(response, ChatResponse)
                else None,
                usage=usage,
                cost=cost,
                spend=sum((a.cost for a in attempts if a.cost), 0.0),
                attempts=attempts,
                error_type=type(error).__name__ if failed else None,
                error=str(error) if failed else None,
                request=self.request,
                inputs=self.inputs,
                response=response if isinstance(response, ChatResponse) else None,
                streamed_text=streamed_text,
            )
        )

    def succeeded(
        self,
        winner: AttemptRecord,
        attempts: list[Attempt],
        response: ChatResponse | EmbeddingResponse,
        cost: float | None,
    ) -> None:
        self._finished("succeeded", attempts, winner=winner, response=response, cost=cost)

    def failed(self, error: BaseException, attempts: list[Attempt]) -> None:
        outcome: RequestOutcome = "failed" if isinstance(error, Exception) else "cancelled"
        self._finished(outcome, attempts, error=error)

    def stream_finished(
        self,
        stream: RouterStream,
        winner: AttemptRecord,
        attempts: list[Attempt],
        error: BaseException | None,
    ) -> None:
        response = stream.response
        outcome: RequestOutcome
        if response is not None:
            outcome = "succeeded"
        elif isinstance(error, Exception):
            outcome = "failed"
        else:
            outcome = "cancelled"  # the caller left early, or was cancelled
        texts = stream._texts
        self._finished(
            outcome,
            attempts,
            winner=winner,
            response=response,
            cost=None if response is None else response.cost,
            error=error,
            ttft=None if winner.end is None else winner.end - self.t0,
            streamed_text="".join(texts) if response is None and texts else None,
        )
