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
from collections.abc import AsyncIterator, Coroutine, Mapping, Sequence
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
    NoRoute,
    Provider,
    RouterClosed,
)

from ._actor import ProviderActor
from ._audit import AuditLog
from ._config import RouterConfig, validate_config
from ._events import EventHub, Listener, RouterEvent, Subscription
from ._health import HealthSnapshot
from ._policy import Candidate, Needs, Plan
from ._providers import build_provider, config_from_env
from ._race import AttemptRecord
from ._request import Requests, answered, embedding_inputs
from ._routes import Routes
from ._setup import id_prefix, known_secrets, metrics, shared_limits, tracer, warm_tokenizers
from ._spend import Spend
from ._statistics import Counters, RouterStatistics, snapshot
from ._stream import StreamContext, same_count
from ._structured import Structured, structured_request, validated
from ._supervise import supervise

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider
    from prometheus_client import CollectorRegistry

    from ._metrics import PrometheusMetrics
    from ._shared._client import SharedClient
    from ._shared._keys import SharedKeyLimits

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
        rng = random.Random(seed)
        router = Router(config, built, rng, id_prefix=id_prefix(seed))
        listener = tracer(config, tracer_provider, built)
        audit: AuditLog | None = None
        prometheus: PrometheusMetrics | None = None
        body_error: BaseException | None = None
        try:
            if config.audit is not None:
                audit = AuditLog(config.audit, known_secrets(config, built))
                await audit.open()
            prometheus = metrics(metrics_registry, router.statistics)
            async with (
                shared_limits(
                    config, router._actors, router._hub.emit, rng, router._routes
                ) as shared,
                trio.open_nursery() as nursery,
            ):
                if shared is not None:
                    client, runners, key_limits = shared
                    router._shared = client
                    router._key_limits = key_limits
                    await nursery.start(client.run)
                    for run in runners:
                        await nursery.start(run)
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
        self._default_max_tokens = config.default_max_tokens
        self._hub = EventHub()
        self._audit: AuditLog | None = None
        self._shared: SharedClient | None = None
        #: ``[shared]``: the gateway keys' limits on Redis, by key name (the gateway
        #: reads them: router._tools._gateway_keys).
        self._key_limits: dict[str, SharedKeyLimits] = {}
        # The run's clock, read through its bound method: trio.current_time() without
        # the two lookups in between.
        now = trio.lowlevel.current_clock().current_time
        start = now()
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
        counts = Counters()
        spend = Spend(config, start)
        self._routes = Routes(config, self._actors, spend, counts, rng, start)
        self._requests = Requests(
            self._actors, self._routes, spend, counts, self._hub, rng, now, id_prefix
        )

    def __repr__(self) -> str:
        state = "closed" if self._requests.closed else "open"
        return f"<Router {state} providers={sorted(self._actors)}>"

    def _close(self) -> None:
        self._requests.closed = True
        self._hub.close()
        for actor in self._actors.values():
            actor.mailbox.close(RouterClosed("the router is closed", provider=actor.name))

    def _check_open(self) -> None:
        if self._requests.closed:
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

        Pure with respect to the router: it draws from a copy of the router's rng, so
        it changes nothing, and the next request, at the same time and health, gets
        this plan (a ``weighted`` or ``least-latency`` route's too).

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
        return routes.plan(
            routes.route(model), needs or Needs(), trio.current_time(), routes.rng_copy()
        )

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

        return answered(*await self._requests.run(request.model, needs, call, request=request))

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
            request, target = structured_request(request, schema)
        except InvalidRequest:
            # A schedule point even when refused before any I/O, as complete() is.
            await trio.lowlevel.cancel_shielded_checkpoint()
            raise
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

        (response, value), winner, race, t0, events = await self._requests.run(
            request.model, needs, call, request=request
        )
        return Structured(value=value, response=answered(response, winner, race, t0, events))

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
        texts = embedding_inputs(inputs, dimensions)
        needs = Needs(embeddings=True)

        def call(
            actor: ProviderActor, candidate: Candidate, record: AttemptRecord
        ) -> Coroutine[Any, Any, EmbeddingResponse]:
            req = EmbeddingRequest(model=candidate.model, inputs=texts, dimensions=dimensions)
            return actor.embed(req, trace=record, nowait=nowait)

        return answered(*await self._requests.run(model, needs, call, inputs=texts))

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
        requests = self._requests
        return snapshot(
            requests.counts,
            requests.spend,
            self._routes,
            self._actors,
            self._hub,
            self._audit,
            trio.current_time(),
            None if self._shared is None else self._shared.statistics(),
        )
