"""The router: ``open_router(config)`` starts one supervised actor per provider.

Synopsis::

    async with open_router(config) as router:
        resp = await router.complete(ChatRequest(model="fast", messages=[Message.user("hi")]))
        async with router.stream(request) as events:
            async for event in events:
                ...

This module is the facade: :func:`open_router` and the :class:`Router`'s public
methods.  One request visits the core's modules in order:

1. :mod:`router._routes` **resolves** the model string (``provider:model``, a route
   alias, or a bare model id whose provider is found by its prefix) and **plans**: the
   pure policy (:mod:`router._policy`) filters the route's targets by what the request
   needs and by health, and orders them by the route's strategy.
2. :mod:`router._spend` refuses the request at once when no target fits a spend cap.
3. :mod:`router._race` **races** the plan: attempts start in plan order — a fallback
   when the previous one fails with an error the route fails over on, a hedge when the
   route's hedge delay passes — and the first success wins; the others are cancelled.
   One driver covers sequential fallback (``delay = inf``, the attempts run one after
   the other in the caller's task), staggered hedging and racing.
4. :mod:`router._attempt` is what each attempt does, on every path: reserve its spend,
   call the target's actor (:mod:`router._actor`), retry the target on a retryable
   error with backoff under a retry budget (never past the caller's deadline), settle.
5. The answer carries its trace (``response.attempts``); a failure raises one error
   carrying it too (``exc.attempts``).  A stream (:mod:`router._stream`) commits at its
   first content event: until then a failing target is replaced by the next one,
   invisibly to the caller; after it, a failure is :class:`~providers.StreamInterrupted`.

:mod:`router._supervise` restarts crashed actors; :mod:`router._request_events` turns a
request's progress into events while someone listens.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
import trio
from trio_util import AsyncValue

from providers import (
    ChatRequest,
    ChatResponse,
    ConfigError,
    EmbeddingRequest,
    EmbeddingResponse,
    InvalidRequest,
    LLMError,
    NoRoute,
    Provider,
    RouterClosed,
)

from ._actor import ProviderActor
from ._attempt import Call, RequestRace, Targets
from ._audit import AuditLog
from ._config import RouterConfig, validate_config
from ._events import EventHub, Listener, RouterEvent, Subscription
from ._health import HealthSnapshot
from ._policy import Candidate, Needs, Plan
from ._providers import build_provider, config_from_env
from ._race import AttemptRecord
from ._request_events import RequestEvents
from ._routes import Routes
from ._setup import id_prefix, known_secrets, metrics, tracer, warm_tokenizers
from ._spend import Spend
from ._statistics import Counters, HedgeStatistics, RouterStatistics
from ._stream import StreamContext, same_count
from ._structured import OutputSchema, Structured, output_schema, validated
from ._supervise import supervise

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider
    from prometheus_client import CollectorRegistry

    from ._metrics import PrometheusMetrics

__all__ = ["Router", "open_router"]

T = TypeVar("T")
R = TypeVar("R", ChatResponse, EmbeddingResponse)


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
        await warm_tokenizers(built.values())
        router = Router(config, built, random.Random(seed), id_prefix=id_prefix(seed))
        listener = tracer(config, tracer_provider, built)
        audit: AuditLog | None = None
        prometheus: PrometheusMetrics | None = None
        body_error: BaseException | None = None
        try:
            if config.audit is not None:
                audit = AuditLog(config.audit, known_secrets(config, built))
                await audit.open()
            prometheus = metrics(metrics_registry, router.statistics)
            async with trio.open_nursery() as nursery:
                for actor in router._actors.values():
                    await nursery.start(supervise, actor, config.supervisor, router._hub)
                    await nursery.start(actor.watch_breaker)
                if audit is not None:
                    await nursery.start(audit.run)
                    router._audit = audit
                    router.add_listener(audit.listen)
                if listener is not None:
                    router.add_listener(listener)
                if prometheus is not None:
                    router.add_listener(prometheus.listen)
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
            if prometheus is not None:
                prometheus.unregister()
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
        self._counts = Counters()
        self._spend = Spend(config, start)
        self._routes = Routes(config, self._actors, self._spend, self._counts, rng, start)
        self._targets = Targets(self._actors, self._spend, self._counts, rng, self._now)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Router {state} providers={sorted(self._actors)}>"

    def _close(self) -> None:
        self._closed = True
        self._hub.close()
        for actor in self._actors.values():
            actor.mailbox.close(RouterClosed("the router is closed", provider=actor.name))

    def _check_open(self) -> None:
        if self._closed:
            raise RouterClosed("the router is closed: its `async with` block has exited")

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
        routes = self._routes
        return routes.plan(routes.route(model), needs or Needs(), trio.current_time())

    async def _run(
        self,
        model: str,
        needs: Needs,
        call: Call[T],
        *,
        request: ChatRequest | None = None,
        inputs: Sequence[str] | None = None,
        discard: Callable[[T, AttemptRecord], Awaitable[None]] | None = None,
    ) -> tuple[T, AttemptRecord, RequestRace[T], float, RequestEvents | None]:
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
        events: RequestEvents | None = None
        if self._hub.listeners:
            events = RequestEvents(
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
        counts = self._counts
        race: RequestRace[T] | None = None
        try:
            routes = self._routes
            route = routes.route(model)
            plan = routes.plan_for(route, needs, t0)
            spend = self._spend
            if not plan.targets:
                spend.refuse_empty(model, plan, request_id, events)
                plan.raise_if_empty(model)
            if spend.budget is not None or route.spend_budget is not None:
                spend.check(route, plan, needs, t0, request_id, events)
            counts.requests += 1
            if plan.panic or route.panicking:
                routes.panic(route, plan, request_id)
            try:
                # A request made in a scope that is already cancelled is cancelled, not
                # refused for lack of time.
                await trio.lowlevel.checkpoint_if_cancelled()
            except BaseException:
                counts.cancelled += 1
                raise
            race = RequestRace(
                self._targets,
                route,
                plan,
                needs,
                call,
                now=t0,
                request_id=request_id,
                events=events,
                discard=discard,
            )
            try:
                result, winner = await race.run()
            except LLMError as exc:
                counts.failed += 1
                exc.attempts = tuple(race.trace(t0))
                raise
            except BaseException:
                counts.cancelled += 1
                raise
            finally:
                counts.hedges += race.hedges
                counts.fallbacks += race.fallbacks
                for r in race.records:
                    if r.outcome == "failed" or r.outcome == "cancelled":
                        counts.wasted_tokens += r.sent_tokens
        except BaseException as exc:
            if events is not None:
                events.failed(exc, [] if race is None else race.trace(t0))
            if isinstance(exc, LLMError):
                # Every call is a schedule point, as trio's own operations are, also when
                # it fails before reaching any I/O (an invalid request, no route): a
                # loop of failing calls must not starve the other tasks.
                await trio.lowlevel.cancel_shielded_checkpoint()
            raise
        counts.succeeded += 1
        if winner.kind == "hedge":
            counts.hedge_wins += 1
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
                sent, trace=record, nowait=nowait, prompt_tokens=same_count(needs, request, sent)
            )

        return _answered(*await self._run(request.model, needs, call, request=request))

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
                sent, trace=record, nowait=nowait, prompt_tokens=same_count(needs, request, sent)
            )
            return validated(answer, target, actor.provider)

        (response, value), winner, race, t0, events = await self._run(
            request.model, needs, call, request=request
        )
        return Structured(value=value, response=_answered(response, winner, race, t0, events))

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

        return _answered(*await self._run(model, needs, call, inputs=texts))

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
        block exits).  See :class:`~router.Subscription`.

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
        counts = self._counts
        hub = self._hub
        spend = self._spend
        routes = self._routes.routes
        return RouterStatistics(
            requests=counts.requests,
            succeeded=counts.succeeded,
            failed=counts.failed,
            cancelled=counts.cancelled,
            fallbacks=counts.fallbacks,
            hedges=counts.hedges,
            hedge_wins=counts.hedge_wins,
            retries=counts.retries,
            wasted_tokens=counts.wasted_tokens,
            panic_routed=counts.panic_routed,
            spend=sum(spend.spent.values()),
            spend_by_target=dict(spend.spent),
            budgets=[b.statistics(now) for b in spend.all_budgets(self._routes.budgets())],
            providers={name: a.statistics() for name, a in self._actors.items()},
            events_emitted=hub.emitted,
            events_dropped=hub.dropped,
            listener_errors=hub.listener_errors,
            subscribers=hub.subscribers,
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
                for name, r in routes.items()
                if (c := r.hedge_counters) is not None and (b := r.hedge_budget) is not None
            },
        )


def _answered(
    response: R,
    winner: AttemptRecord,
    race: RequestRace[Any],
    t0: float,
    events: RequestEvents | None,
) -> R:
    """The answer of a request that succeeded, with its trace and cost; its
    ``RequestFinished`` is emitted (``complete``, ``structured`` and ``embed`` alike)."""
    response = msgspec.structs.replace(
        response,
        attempts=race.trace(t0),
        # The winner's cost was settled from this answer's usage.
        cost=response.cost if response.cost is not None else winner.cost,
    )
    if events is not None:
        events.succeeded(winner, response.attempts, response, response.cost)
    return response


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
