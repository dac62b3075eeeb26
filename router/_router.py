"""The router: ``open_router(config)`` starts one supervised actor per provider.

Synopsis::

    async with open_router(config) as router:
        resp = await router.complete(ChatRequest(model="openai:gpt-4o-mini",
                                                 messages=[Message.user("hi")]))
        async with router.stream(request) as events:
            async for event in events:
                ...

Every request ends with a result or a typed error: a request that cannot be served by
one target fails over to the next target of its route (for the errors that are
specific to one target); retryable errors are retried on the same target with
exponential backoff and full jitter, under a retry budget, and never past the caller's
deadline; when every target fails the caller gets one :class:`AllProvidersFailed`
whose ``__cause__`` is the group of individual errors.

Streams commit at their first content event: until then a failing target is replaced
by the next one, invisibly to the caller; after it, the caller sees exactly one stream
and a failure is :class:`~providers.StreamInterrupted`.
"""

from __future__ import annotations

import functools
import logging
import os
import random
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Literal, TypeVar

import msgspec
import trio
from trio_util import AsyncValue

from providers import (
    AllProvidersFailed,
    AnthropicProvider,
    AuthenticationError,
    ChatRequest,
    ChatResponse,
    ConfigError,
    ContextLengthExceeded,
    Done,
    EmbeddingRequest,
    EmbeddingResponse,
    LLMError,
    MockProvider,
    MockResponse,
    NoRoute,
    NotFound,
    OpenAIProvider,
    Overloaded,
    PermissionDenied,
    Provider,
    QuotaExceeded,
    RateLimited,
    RouterClosed,
    Secret,
    StreamEvent,
    UnsupportedFeature,
)
from providers._types import is_content_event

from ._actor import ActorStatistics, ActorStream, ProviderActor
from ._config import ProviderConfig, RouterConfig
from ._health import HealthSnapshot
from ._retry import retry_delay

__all__ = ["Attempt", "Router", "RouterStatistics", "RouterStream", "open_router"]

logger = logging.getLogger("trio_llm_router")

T = TypeVar("T")

#: Environment variable holding each kind's key when ``api_key_env`` is not set.
DEFAULT_KEY_ENV = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}

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

#: Errors specific to one target: another target may well succeed.
_TARGET_SPECIFIC = (
    AuthenticationError,
    PermissionDenied,
    NotFound,
    QuotaExceeded,
    ContextLengthExceeded,
    UnsupportedFeature,
)


def fails_over(exc: LLMError) -> bool:
    """Whether ``exc`` on one target should send the request to the next target."""
    return exc.retryable or isinstance(exc, _TARGET_SPECIFIC)


class Attempt(msgspec.Struct, frozen=True, kw_only=True):
    """What one target did for a request."""

    provider: str
    model: str
    outcome: Literal["won", "failed"]
    started_at: float
    ended_at: float
    retries: int = 0
    error: LLMError | None = None


class RouterStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """A frozen snapshot of the router."""

    requests: int
    succeeded: int
    failed: int
    fallbacks: int
    retries: int
    providers: dict[str, ActorStatistics]


class _Target(msgspec.Struct, frozen=True):
    actor: ProviderActor
    model: str


def build_provider(name: str, config: ProviderConfig) -> Provider:
    """The adapter for a configured provider; keys come from the environment."""
    if config.kind == "mock":
        mock = config.mock
        if mock is None:
            return MockProvider(name=name)
        default = (
            MockResponse(text=mock.reply, chunk_latency=mock.chunk_latency) if mock.reply else None
        )
        return MockProvider(
            name=name,
            default=default,
            latency=mock.latency,
            models=list(mock.models),
            record=False,
        )
    if config.kind not in ("openai", "anthropic"):
        raise ConfigError(
            f"provider kind {config.kind!r} is not available yet (available: openai, "
            "anthropic, mock)",
            path=f"$.providers.{name}.kind",
        )
    env = config.api_key_env or DEFAULT_KEY_ENV[config.kind]
    key = os.environ.get(env)
    if not key:
        raise ConfigError(
            f"the API key is missing: set the environment variable {env}",
            path=f"$.providers.{name}.api_key_env",
        )
    cls = OpenAIProvider if config.kind == "openai" else AnthropicProvider
    return cls(name=name, api_key=Secret(key), base_url=config.base_url, headers=config.headers)


@asynccontextmanager
async def open_router(
    config: RouterConfig,
    *,
    providers: Mapping[str, Provider] | None = None,
    seed: int | None = None,
) -> AsyncIterator[Router]:
    """Open a router: one supervised actor per configured provider.

    The body runs once every actor is ready; on exit the actors are cancelled and every
    HTTP client the router created is closed.  Calls after exit raise
    :class:`~providers.RouterClosed`.

    Args:
        config: the providers, routes and supervision settings.
        providers: ready-made providers by name (a ``MockProvider``, or an adapter with
            your own ``httpx.AsyncClient``), used instead of building from ``config``.
            Their names must be configured; the router does not close them.
        seed: seed for the router's random choices (retry jitter), for reproducibility.

    Example::

        async with open_router(config) as router:
            resp = await router.complete(request)
    """
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
        router = Router(config, built, random.Random(seed))
        body_error: BaseException | None = None
        async with trio.open_nursery() as nursery:
            for actor in router._actors.values():
                await nursery.start(router._supervise, actor)
            try:
                yield router
            except BaseException as exc:
                # Re-raised below, outside the nursery, so the caller gets its own
                # exception rather than an ExceptionGroup wrapping it.
                body_error = exc
            finally:
                router._close()
                nursery.cancel_scope.cancel()
        if body_error is not None:
            raise body_error
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(5.0):
            for p in owned:
                await p.aclose()


class Router:
    """Routes requests to provider actors.  Made by :func:`open_router`, never directly."""

    def __init__(
        self, config: RouterConfig, providers: Mapping[str, Provider], rng: random.Random
    ) -> None:
        self._config = config
        self._rng = rng
        self._closed = False
        self._actors: dict[str, ProviderActor] = {
            name: ProviderActor(
                name,
                providers[name],
                pc,
                default_max_tokens=config.default_max_tokens,
            )
            for name, pc in config.providers.items()
        }
        self._requests = 0
        self._succeeded = 0
        self._failed = 0
        self._fallbacks = 0
        self._retries = 0

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Router {state} providers={sorted(self._actors)}>"

    # -- lifecycle -------------------------------------------------------------------

    def _close(self) -> None:
        self._closed = True
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
                actor.on_crash(exc)
                crashes.append(now)
                while crashes and crashes[0] < now - cfg.restart_window:
                    crashes.popleft()
                if len(crashes) > cfg.max_restarts:
                    reason = (
                        f"crashed {len(crashes)} times within {cfg.restart_window:g}s "
                        f"(last: {type(exc).__name__}: {exc})"
                    )
                    logger.error("provider %s: %s; marked unhealthy", actor.name, reason)
                    actor.mark_crashed(reason)
                    return
                delay = min(cfg.restart_backoff * 2 ** (len(crashes) - 1), cfg.max_restart_backoff)
                logger.warning(
                    "provider %s: actor crashed (%s: %s); restarting in %.3gs",
                    actor.name,
                    type(exc).__name__,
                    exc,
                    delay,
                )
                actor.restarts += 1
                await trio.sleep(delay)

    # -- resolution ------------------------------------------------------------------

    def _resolve(self, model: str) -> list[_Target]:
        provider, sep, model_id = model.partition(":")
        if sep:
            actor = self._actors.get(provider)
            if actor is None or not model_id:
                raise NoRoute(
                    f"unknown provider {provider!r} in model {model!r}; configured providers: "
                    f"{sorted(self._actors)}; routes: {sorted(self._config.routes)}"
                )
            return [_Target(actor, model_id)]
        route = self._config.routes.get(model)
        if route is not None:
            return [
                _Target(self._actors[p], m) for p, _, m in (t.partition(":") for t in route.targets)
            ]
        for prefix, kind in _PREFIX_KINDS:
            if model.startswith(prefix):
                for actor in self._actors.values():
                    if actor.provider.kind == kind:
                        return [_Target(actor, model)]
        raise NoRoute(
            f"no provider or route for model {model!r}; use 'provider:model' with one of "
            f"{sorted(self._actors)}, or a route: {sorted(self._config.routes)}"
        )

    # -- the retry / fail-over loop ----------------------------------------------------

    async def _retrying(
        self, actor: ProviderActor, call: Callable[[], Awaitable[T]], *, more_targets: bool
    ) -> tuple[T, int]:
        """Run ``call`` on one target, retrying retryable errors; return (result, retries)."""
        retry = actor.config.retry
        attempt = 1
        actor.retry_budget.record_request(trio.current_time())
        while True:
            if more_targets:
                pause = actor.pause_remaining(trio.current_time())
                if pause > 0:
                    # The provider told us to back off; another target can serve now.
                    raise Overloaded(
                        f"paused for {pause:.3g}s more by the provider's retry-after",
                        provider=actor.name,
                        retry_after=pause,
                    )
            try:
                return await call(), attempt - 1
            except LLMError as exc:
                if more_targets and isinstance(exc, RateLimited | Overloaded):
                    raise  # another target can serve it now; don't wait here
                delay = retry_delay(exc, attempt, retry, self._rng)
                now = trio.current_time()
                if (
                    delay is None
                    or now + delay >= trio.current_effective_deadline()
                    or not actor.retry_budget.try_spend(now)
                ):
                    raise
                logger.info(
                    "provider %s: %s; retry %d in %.3gs",
                    actor.name,
                    type(exc).__name__,
                    attempt,
                    delay,
                )
                actor.retried += 1
                self._retries += 1
                await trio.sleep(delay)
                attempt += 1

    async def _run(self, model: str, call: Callable[[_Target], Awaitable[T]]) -> T:
        self._check_open()
        plan = self._resolve(model)
        self._requests += 1
        attempts: list[Attempt] = []
        for i, target in enumerate(plan):
            more = i + 1 < len(plan)
            started = trio.current_time()
            try:
                result, _ = await self._retrying(
                    target.actor, functools.partial(call, target), more_targets=more
                )
            except LLMError as exc:
                attempts.append(
                    Attempt(
                        provider=target.actor.name,
                        model=target.model,
                        outcome="failed",
                        started_at=started,
                        ended_at=trio.current_time(),
                        error=exc,
                    )
                )
                if more and fails_over(exc):
                    self._fallbacks += 1
                    logger.info(
                        "request for %s: %s failed (%s); falling back to %s",
                        model,
                        target.actor.name,
                        type(exc).__name__,
                        plan[i + 1].actor.name,
                    )
                    continue
                self._failed += 1
                if len(attempts) == 1:
                    raise
                raise self._all_failed(model, attempts) from _group(attempts)
            self._succeeded += 1
            return result
        self._failed += 1  # pragma: no cover - the loop always returns or raises
        raise self._all_failed(model, attempts) from _group(attempts)

    def _all_failed(self, model: str, attempts: Sequence[Attempt]) -> AllProvidersFailed:
        summary = "; ".join(
            f"{a.provider}: {type(a.error).__name__}" for a in attempts if a.error is not None
        )
        return AllProvidersFailed(
            f"every target for {model!r} failed ({summary})", attempts=attempts
        )

    # -- the public API --------------------------------------------------------------

    async def complete(self, request: ChatRequest) -> ChatResponse:
        """Send ``request`` to its model's target(s); return the first full answer.

        Example::

            resp = await router.complete(ChatRequest(model="fast", messages=[Message.user("hi")]))
        """

        async def call(target: _Target) -> ChatResponse:
            return await target.actor.complete(msgspec.structs.replace(request, model=target.model))

        return await self._run(request.model, call)

    @asynccontextmanager
    async def stream(self, request: ChatRequest) -> AsyncIterator[RouterStream]:
        """Stream ``request``'s answer; fail over until the first content event.

        Example::

            async with router.stream(request) as events:
                async for event in events:
                    if isinstance(event, TextDelta):
                        print(event.text, end="")
        """

        async def call(target: _Target) -> tuple[AsyncExitStack, ActorStream, list[StreamEvent]]:
            return await _open_committed(
                target.actor, msgspec.structs.replace(request, model=target.model)
            )

        stack, events, buffered = await self._run(request.model, call)
        async with stack:
            yield RouterStream(events, buffered, provider=events.provider)

    async def embed(
        self, model: str, inputs: Sequence[str], *, dimensions: int | None = None
    ) -> EmbeddingResponse:
        """Embed ``inputs`` with ``model`` (a ``provider:model`` string or a route).

        Example::

            vectors = (await router.embed("openai:text-embedding-3-small", ["a", "b"])).vectors
        """

        async def call(target: _Target) -> EmbeddingResponse:
            req = EmbeddingRequest(model=target.model, inputs=list(inputs), dimensions=dimensions)
            return await target.actor.embed(req)

        return await self._run(model, call)

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

    async def check_health(self) -> dict[str, HealthSnapshot]:
        """Actively probe every provider (a model listing each, concurrently)."""
        self._check_open()
        async with trio.open_nursery() as nursery:
            for actor in self._actors.values():
                nursery.start_soon(actor.probe)
        return self.health()

    def statistics(self) -> RouterStatistics:
        """A frozen snapshot: per provider queues, in flight, outcomes, breaker, tokens."""
        return RouterStatistics(
            requests=self._requests,
            succeeded=self._succeeded,
            failed=self._failed,
            fallbacks=self._fallbacks,
            retries=self._retries,
            providers={name: a.statistics() for name, a in self._actors.items()},
        )


def _unwrap(exc: BaseException) -> BaseException:
    """The one exception inside (nested) single-member groups, for logs and reasons."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _group(attempts: Sequence[Attempt]) -> ExceptionGroup[LLMError]:
    return ExceptionGroup(
        "errors of every attempt", [a.error for a in attempts if a.error is not None]
    )


async def _open_committed(
    actor: ProviderActor, request: ChatRequest
) -> tuple[AsyncExitStack, ActorStream, list[StreamEvent]]:
    """Open a stream and read it up to its first content event (the commit point)."""
    stack = AsyncExitStack()
    try:
        events = await stack.enter_async_context(actor.stream(request))
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


class RouterStream:
    """The committed stream the caller reads: one provider's events, start to end."""

    __slots__ = ("_buffered", "_events", "provider", "response")

    def __init__(self, events: ActorStream, buffered: list[StreamEvent], *, provider: str) -> None:
        self._events = events
        self._buffered = deque(buffered)
        self.provider = provider
        self.response: ChatResponse | None = None

    def __aiter__(self) -> RouterStream:
        return self

    async def __anext__(self) -> StreamEvent:
        if self._buffered:
            event = self._buffered.popleft()
            await trio.lowlevel.checkpoint()
        else:
            event = await self._events.__anext__()
        if isinstance(event, Done):
            self.response = event.response
        return event
