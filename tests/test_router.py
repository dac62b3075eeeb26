"""The router on virtual time: lifecycle, routing, admission, retries, fallback, health.

Every test runs MockProvider instances injected with ``open_router(config,
providers=...)`` under ``autojump_clock``, and asserts the exact ``trio.current_time()``
at which things happen (MockProvider's docstring table gives the timeline of a call).
"""

from __future__ import annotations

import contextlib
import gc
import math
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgspec
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from providers import ModelInfo
from router import ChatRequest, Message, Router, TextDelta, Usage, open_router
from router.config import (
    BreakerConfig,
    HedgeConfig,
    ModelConfig,
    ProviderConfig,
    RetryConfig,
    RouteConfig,
    RouterConfig,
    SupervisorConfig,
)
from router.errors import (
    AllProvidersFailed,
    AuthenticationError,
    ConfigError,
    ConnectionFailed,
    ContentFiltered,
    ContextLengthExceeded,
    InvalidRequest,
    LLMError,
    ModelNotFound,
    NoRoute,
    Overloaded,
    PermissionDenied,
    QuotaExceeded,
    RateLimited,
    RouterClosed,
    ServerError,
    StreamInterrupted,
    Timeout,
    UnsupportedFeature,
)
from router.testing import MockProvider, MockResponse
from tests._crash import crash_actor

# --------------------------------------------------------------------------- helpers

NO_RETRY = RetryConfig(max_attempts=1)


def chat(model: str = "a:m", text: str = "hi", **kw: Any) -> ChatRequest:
    """A one-message request for ``model``."""
    return ChatRequest(model=model, messages=[Message.user(text)], **kw)


def mock(**kw: Any) -> ProviderConfig:
    """A provider config of kind mock with ``kw`` (limits, retry, breaker...)."""
    return ProviderConfig(kind="mock", **kw)


def config(
    providers: dict[str, ProviderConfig] | Sequence[str],
    routes: dict[str, Sequence[str]] | None = None,
    **kw: Any,
) -> RouterConfig:
    """A router config; a list of names means default mock providers."""
    if not isinstance(providers, dict):
        providers = {name: mock() for name in providers}
    return RouterConfig(
        providers=providers,
        routes={k: RouteConfig(targets=list(v)) for k, v in (routes or {}).items()},
        **kw,
    )


def mocks(*names: str, **kw: Any) -> dict[str, MockProvider]:
    """One MockProvider per name, all built with ``kw``."""
    return {name: MockProvider(name=name, **kw) for name in names}


def starts(provider: MockProvider) -> list[float]:
    """When each recorded call started."""
    return [c.started_at for c in provider.calls]


def all_tasks() -> list[trio.lowlevel.Task]:
    """Every task of the run, found by walking the tree from the root task."""
    found: list[trio.lowlevel.Task] = []

    def walk(task: trio.lowlevel.Task) -> None:
        found.append(task)
        for nursery in task.child_nurseries:
            for child in nursery.child_tasks:
                walk(child)

    walk(trio.lowlevel.current_root_task())
    return found


def awaiting(task: trio.lowlevel.Task) -> list[str]:
    """The qualified names of the coroutines ``task`` is suspended in, outermost first."""
    names: list[str] = []
    coro: Any = task.coro
    while coro is not None:
        code = getattr(coro, "cr_code", None) or getattr(coro, "gi_code", None)
        if code is not None:
            names.append(code.co_qualname)
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return names


async def outcome(call: Awaitable[Any]) -> Any:
    """The result of ``call``, or the LLMError it raised (as a value)."""
    try:
        return await call
    except LLMError as exc:
        return exc


class KindMock(MockProvider):
    """A MockProvider that says it speaks another wire format (for bare-model resolution)."""

    def __init__(self, kind: str, **kw: Any) -> None:
        super().__init__(**kw)
        self._kind = kind

    @property
    def kind(self) -> str:
        return self._kind


class ProbeMock(MockProvider):
    """A MockProvider whose model listing takes ``list_latency`` and may fail."""

    def __init__(
        self, *, list_latency: float = 0.0, list_error: LLMError | None = None, **kw: Any
    ) -> None:
        super().__init__(**kw)
        self.list_latency = list_latency
        self.list_error = list_error
        self.listed: list[tuple[float, float]] = []

    async def list_models(self) -> list[ModelInfo]:
        start = trio.current_time()
        await trio.sleep(self.list_latency)
        self.listed.append((start, trio.current_time()))
        if self.list_error is not None:
            raise self.list_error
        return await super().list_models()


# --------------------------------------------------------------------------- lifecycle


async def test_body_runs_once_every_actor_loop_is_running(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Before the body's first line, each actor's supervised mailbox loop is running."""
    async with open_router(config(["a", "b", "c"]), providers=mocks("a", "b", "c")):
        supervisors = [t for t in all_tasks() if "_supervise" in t.name]
        assert len(supervisors) == 3
        for task in supervisors:
            assert "Mailbox.run" in awaiting(task), awaiting(task)


async def test_queue_is_served_from_the_first_instant(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A request queued at t=0 in the body is admitted by the actor's loop on time."""
    providers = mocks("a")
    async with (
        open_router(config({"a": mock(rpm=60, rpm_burst=1)}), providers=providers) as router,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(router.complete, chat())
        nursery.start_soon(router.complete, chat())
    assert starts(providers["a"]) == [0.0, 1.0]


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda r: r.complete(chat()), id="complete"),
        pytest.param(lambda r: r.embed("a:e", ["x"]), id="embed"),
        pytest.param(lambda r: r.check_health(), id="check_health"),
        pytest.param(lambda r: r.stream(chat()).__aenter__(), id="stream"),
    ],
)
async def test_calls_after_exit_raise_router_closed(
    autojump_clock: trio.testing.MockClock, call: Callable[[Router], Awaitable[Any]]
) -> None:
    """Once the `async with` block has exited, every call raises RouterClosed."""
    providers = mocks("a")
    async with open_router(config(["a"]), providers=providers) as router:
        pass
    with pytest.raises(RouterClosed):
        await call(router)
    assert providers["a"].calls == []
    assert "closed" in repr(router)


async def test_requests_queued_at_exit_get_router_closed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A request still waiting for admission when the router exits fails with RouterClosed."""
    results: list[Any] = []

    async def call(router: Router) -> None:
        results.append(await outcome(router.complete(chat())))

    providers = mocks("a")
    async with trio.open_nursery() as nursery:
        cfg = config({"a": mock(rpm=60, rpm_burst=1)})
        async with open_router(cfg, providers=providers) as router:
            nursery.start_soon(call, router)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(call, router)
            await trio.testing.wait_all_tasks_blocked()
            assert router.statistics().providers["a"].queued == 1
    assert trio.current_time() == 0.0
    assert [type(r).__name__ for r in results] == ["ChatResponse", "RouterClosed"]


@pytest.mark.parametrize("error", [KeyError("mine"), ServerError("mine"), trio.TooSlowError()])
async def test_body_exception_comes_out_unwrapped(
    autojump_clock: trio.testing.MockClock, error: Exception
) -> None:
    """An exception from the body is re-raised as itself, never inside an ExceptionGroup."""
    with pytest.raises(type(error)) as info:
        async with open_router(config(["a", "b"]), providers=mocks("a", "b")):
            await trio.sleep(1)
            raise error
    assert info.value is error
    assert trio.current_time() == 1.0


@pytest.mark.parametrize("fails", [False, True])
async def test_built_providers_are_closed_injected_ones_are_not(
    autojump_clock: trio.testing.MockClock, fails: bool
) -> None:
    """On exit (clean or not) the router closes the providers it built, never injected ones."""
    injected = MockProvider(name="given")
    cfg = config({"built": mock(), "given": mock()})
    with pytest.raises(KeyError) if fails else contextlib.nullcontext():
        async with open_router(cfg, providers={"given": injected}) as router:
            built = router._actors["built"].provider
            assert isinstance(built, MockProvider)
            assert (await router.complete(chat("built:m"))).text == "echo: hi"
            if fails:
                raise KeyError("body")
    assert built.closed
    assert not injected.closed


async def test_injected_provider_must_be_configured() -> None:
    """Giving a provider under a name the config does not have is a ConfigError."""
    with pytest.raises(ConfigError, match=r"\['zz'\].*configured: \['a'\]"):
        async with open_router(config(["a"]), providers=mocks("zz")):
            pass  # pragma: no cover


# --------------------------------------------------------------------------- one target


async def test_complete_single_target(autojump_clock: trio.testing.MockClock) -> None:
    """'provider:model' goes to that provider with the bare model id, on the mock's timeline."""
    providers = mocks("a", "b", latency=1.5)
    async with open_router(config(["a", "b"]), providers=providers) as router:
        resp = await router.complete(chat("b:gpt-x"))
    assert (resp.text, resp.provider, resp.model) == ("echo: hi", "b", "gpt-x")
    assert trio.current_time() == 1.5
    assert providers["a"].calls == []
    assert [r.model for r in providers["b"].requests] == ["gpt-x"]


async def test_stream_single_target(autojump_clock: trio.testing.MockClock) -> None:
    """A stream delivers each event when the mock makes it due; Done sets .response."""
    reply = MockResponse(text="one two three", latency=1.0, chunk_latency=0.5)
    providers = {"a": MockProvider(name="a", default=reply)}
    seen: list[tuple[str, float]] = []
    async with (
        open_router(config(["a"]), providers=providers) as router,
        router.stream(chat("a:m")) as events,
    ):
        assert events.provider == "a"
        async for event in events:
            label = event.text if isinstance(event, TextDelta) else type(event).__name__
            seen.append((label, trio.current_time()))
    assert seen == [
        ("one", 1.0),
        (" two", 1.5),
        (" three", 2.0),
        ("UsageEvent", 2.5),
        ("Done", 2.5),
    ]
    assert events.response is not None
    assert events.response.text == "one two three"
    assert providers["a"].calls[0].outcome == "ok"


async def test_embed_single_target(autojump_clock: trio.testing.MockClock) -> None:
    """embed() goes through the named provider and returns its vectors."""
    providers = mocks("a", latency=0.25)
    async with open_router(config(["a"]), providers=providers) as router:
        resp = await router.embed("a:e", ["x", "y"])
    assert len(resp.vectors) == 2
    assert trio.current_time() == 0.25
    assert router.statistics().providers["a"].succeeded == 1


# --------------------------------------------------------------------------- resolution


@pytest.mark.parametrize(
    ("model", "listed"),
    [
        ("nope:m", ["unknown provider 'nope'", "['a', 'b']", "['fast']"]),
        ("a:", ["unknown provider 'a'", "['a', 'b']"]),
        ("mystery-model", ["'mystery-model'", "['a', 'b']", "['fast']"]),
        ("gpt-4o", ["'gpt-4o'", "['a', 'b']"]),  # no provider of kind openai
        ("claude-3-5-haiku-latest", ["['a', 'b']"]),
    ],
)
async def test_unresolvable_models_are_no_route(
    autojump_clock: trio.testing.MockClock, model: str, listed: list[str]
) -> None:
    """A model naming nothing configured is NoRoute, listing the providers and routes."""
    providers = mocks("a", "b")
    async with open_router(
        config(["a", "b"], routes={"fast": ["a:m"]}), providers=providers
    ) as router:
        with pytest.raises(NoRoute) as info:
            await router.complete(chat(model))
        for text in listed:
            assert text in str(info.value)
        assert router.statistics().requests == 0
    assert providers["a"].calls == providers["b"].calls == []


@pytest.mark.parametrize(
    ("model", "provider"),
    [
        ("gpt-4o", "oa"),
        ("o1-mini", "oa"),
        ("chatgpt-4o-latest", "oa"),
        ("text-embedding-3-small", "oa"),
        ("claude-3-5-haiku-latest", "an"),
        ("gpt-route", "m"),  # a route name wins over the prefix
    ],
)
async def test_bare_model_ids_resolve_by_provider_kind(
    autojump_clock: trio.testing.MockClock, model: str, provider: str
) -> None:
    """A bare id goes to a provider whose kind its prefix names, with the id unchanged."""
    providers = {
        "m": MockProvider(name="m"),
        "oa": KindMock("openai", name="oa"),
        "an": KindMock("anthropic", name="an"),
    }
    cfg = config(
        {"m": mock(), "oa": ProviderConfig(kind="openai"), "an": ProviderConfig(kind="anthropic")},
        routes={"gpt-route": ["m:routed"]},
    )
    async with open_router(cfg, providers=providers) as router:
        resp = await router.complete(chat(model))
    assert resp.provider == provider
    expected_model = "routed" if model == "gpt-route" else model
    assert [r.model for r in providers[provider].requests] == [expected_model]


# --------------------------------------------------------------------------- admission


async def test_rpm_admits_one_per_second(autojump_clock: trio.testing.MockClock) -> None:
    """rpm=60 with burst 1: five concurrent requests are sent at exactly t=0,1,2,3,4, in order."""
    providers = mocks("a")
    cfg = config({"a": mock(rpm=60, rpm_burst=1)})
    ends: dict[str, float] = {}

    async def call(router: Router, text: str) -> None:
        await router.complete(chat(text=text))
        ends[text] = trio.current_time()

    async with open_router(cfg, providers=providers) as router, trio.open_nursery() as nursery:
        for i in range(5):
            nursery.start_soon(call, router, f"r{i}")
            await trio.testing.wait_all_tasks_blocked()
        assert router.statistics().providers["a"].queued == 4
    assert starts(providers["a"]) == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert [r.last_user_text for r in providers["a"].requests] == [f"r{i}" for i in range(5)]
    assert ends == {f"r{i}": float(i) for i in range(5)}
    stats = router.statistics().providers["a"]
    assert (stats.admitted, stats.queued, stats.in_flight) == (5, 0, 0)


# A request "hi" with max_tokens=100 is estimated at 3 + 4 + 1 = 8 input tokens, so it
# costs 108 TPM tokens.  TPM 480 refills 8 tokens/s; with a 120-token burst the first
# request leaves 12, and the second (queued) needs 108.  At t=1 the first ends, the
# bucket holds 20, and reconciliation corrects it to the usage actually reported.
@pytest.mark.parametrize(
    ("first", "second_at"),
    [
        # Usage = the estimate: nothing changes; 88 more tokens take 11 s.
        (MockResponse(text="x", latency=1.0, usage=Usage(input_tokens=8, output_tokens=100)), 12.0),
        # Usage 40: 68 tokens come back, 88 held, 20 more take 2.5 s.
        (MockResponse(text="x", latency=1.0, usage=Usage(input_tokens=8, output_tokens=32)), 3.5),
        # Usage 172: 64 more are taken (debt), -44 held, 152 more take 19 s.
        (
            MockResponse(text="x", latency=1.0, usage=Usage(input_tokens=72, output_tokens=100)),
            20.0,
        ),
        # No usage (an error): the input estimate stays charged, the output budget comes back.
        (MockResponse(error=InvalidRequest("bad"), latency=1.0), 1.0),
    ],
    ids=["exact", "under", "over", "error"],
)
async def test_tpm_debits_the_estimate_and_reconciles(
    autojump_clock: trio.testing.MockClock, first: MockResponse, second_at: float
) -> None:
    """TPM is debited by the estimate at admission and corrected to the reported usage."""
    providers = {"a": MockProvider(name="a", responses=[first])}
    cfg = config({"a": mock(tpm=480, tpm_burst=120)})
    async with open_router(cfg, providers=providers) as router, trio.open_nursery() as nursery:
        nursery.start_soon(outcome, router.complete(chat(max_tokens=100)))
        await trio.testing.wait_all_tasks_blocked()
        assert router._actors["a"].mailbox.statistics().tpm_tokens == 12.0
        nursery.start_soon(outcome, router.complete(chat(max_tokens=100)))
    assert starts(providers["a"]) == [0.0, second_at]
    usage = first.usage or Usage()
    stats = router.statistics().providers["a"]
    assert stats.input_tokens == usage.input_tokens + 1  # the echo reports 1 input token
    assert stats.output_tokens == usage.output_tokens + 2  # "echo: hi"


async def test_max_concurrency(autojump_clock: trio.testing.MockClock) -> None:
    """max_concurrency=2 with 5 s calls: five requests start at 0, 0, 5, 5, 10."""
    providers = mocks("a", latency=5.0)
    cfg = config({"a": mock(max_concurrency=2)})
    async with open_router(cfg, providers=providers) as router, trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(router.complete, chat())
            await trio.testing.wait_all_tasks_blocked()
        stats = router.statistics().providers["a"]
        assert (stats.in_flight, stats.queued) == (2, 3)
    assert starts(providers["a"]) == [0.0, 0.0, 5.0, 5.0, 10.0]
    assert providers["a"].max_in_flight == 2
    assert trio.current_time() == 15.0


async def test_full_queue_is_overloaded_at_once(autojump_clock: trio.testing.MockClock) -> None:
    """With the queue full, the next request gets Overloaded at t=0, without waiting."""
    providers = mocks("a", latency=10.0)
    cfg = config({"a": mock(max_concurrency=1, max_queue=1, retry=NO_RETRY)})
    async with open_router(cfg, providers=providers) as router, trio.open_nursery() as nursery:
        for _ in range(2):
            nursery.start_soon(router.complete, chat())
            await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(Overloaded, match="queue is full"):
            await router.complete(chat())
        assert trio.current_time() == 0.0
        assert router.statistics().providers["a"].refused == 1
    assert starts(providers["a"]) == [0.0, 10.0]


async def test_full_queue_fails_over_at_once(autojump_clock: trio.testing.MockClock) -> None:
    """On a route, a full queue on the first target sends the request to the next at once."""
    providers = mocks("a", "b", latency=10.0)
    cfg = config(
        {"a": mock(max_concurrency=1, max_queue=0), "b": mock()}, routes={"r": ["a:m", "b:m"]}
    )
    async with open_router(cfg, providers=providers) as router, trio.open_nursery() as nursery:
        nursery.start_soon(router.complete, chat("a:m"))
        await trio.testing.wait_all_tasks_blocked()
        resp = await router.complete(chat("r"))
        assert (resp.provider, trio.current_time()) == ("b", 10.0)
    assert starts(providers["b"]) == [0.0]


@pytest.mark.parametrize("retry", [NO_RETRY, RetryConfig()], ids=["no-retry", "default-retry"])
@pytest.mark.parametrize("scope", ["move_on_after", "fail_after"])
async def test_admission_beyond_the_deadline_is_refused_at_once(
    autojump_clock: trio.testing.MockClock, retry: RetryConfig, scope: str
) -> None:
    """A request whose admission wait exceeds its deadline is refused at t=0, not at t=0.5."""
    providers = mocks("a")
    cfg = config({"a": mock(rpm=60, rpm_burst=1, retry=retry)})
    async with open_router(cfg, providers=providers) as router:
        await router.complete(chat())  # takes the only token: the next waits 1 s
        timer = trio.move_on_after(0.5) if scope == "move_on_after" else trio.fail_after(0.5)
        with timer, pytest.raises(Overloaded, match="deadline"):
            await router.complete(chat())
        assert trio.current_time() == 0.0
        stats = router.statistics().providers["a"]
        assert (stats.admitted, stats.queued) == (1, 0)
    assert starts(providers["a"]) == [0.0]


async def test_admission_wait_equal_to_the_deadline_is_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A wait of exactly the time left cannot lead to a sent request: refuse it at once."""
    providers = mocks("a")
    cfg = config({"a": mock(rpm=60, rpm_burst=1, retry=NO_RETRY)})
    async with open_router(cfg, providers=providers) as router:
        await router.complete(chat())  # the next waits exactly 1 s
        result: Any = None
        with trio.move_on_after(1.0):
            result = await outcome(router.complete(chat()))
        assert isinstance(result, Overloaded)
        assert trio.current_time() == 0.0


# --------------------------------------------------------------------------- retries


def jitter(seed: int, n: int, config: RetryConfig | None = None) -> list[float]:
    """The first ``n`` full-jitter waits a router seeded with ``seed`` draws."""
    cfg = config or RetryConfig()
    rng = random.Random(seed)
    caps = [min(cfg.initial_backoff * cfg.multiplier**k, cfg.max_backoff) for k in range(n)]
    return [rng.uniform(0.0, cap) for cap in caps]


@pytest.mark.parametrize("seed", [0, 1, 1234])
async def test_retryable_errors_are_retried_with_seeded_full_jitter(
    autojump_clock: trio.testing.MockClock, seed: int
) -> None:
    """Two ServerErrors then success: retries wait U(0, 0.5) then U(0, 1.0), from the seed."""
    a = MockProvider(name="a", responses=[ServerError("boom"), ServerError("boom")])
    async with open_router(config(["a"]), providers={"a": a}, seed=seed) as router:
        resp = await router.complete(chat())
    d1, d2 = jitter(seed, 2)
    assert 0 <= d1 <= 0.5
    assert 0 <= d2 <= 1.0
    # The clock lands on each sleep's deadline (up to float rounding of now + delay).
    assert starts(a) == [0.0, d1, pytest.approx(d1 + d2, rel=1e-12)]
    assert trio.current_time() == pytest.approx(d1 + d2, rel=1e-12)
    assert resp.text == "echo: hi"
    stats = router.statistics()
    assert (stats.retries, stats.providers["a"].retried, stats.succeeded) == (2, 2, 1)


async def test_same_seed_same_schedule(autojump_clock: trio.testing.MockClock) -> None:
    """Two routers with the same seed retry at the same times; another seed differs."""

    async def schedule(seed: int) -> list[float]:
        a = MockProvider(name="a", responses=[Timeout("slow")] * 2)
        base = trio.current_time()
        async with open_router(config(["a"]), providers={"a": a}, seed=seed) as router:
            await router.complete(chat())
        return [t - base for t in starts(a)]

    first, again, other = await schedule(7), await schedule(7), await schedule(8)
    assert first == pytest.approx(again, rel=1e-12)
    assert first != pytest.approx(other, rel=1e-12)


@pytest.mark.parametrize(
    ("error", "latency", "retry_at"),
    [
        # The wait is max(retry_after, jitter ≤ 0.5): the server's word wins.
        (RateLimited("slow down", retry_after=2.0), 0.5, 2.5),
        (RateLimited("slow down", retry_after=0.75), 0.0, 0.75),
        (Overloaded("busy", retry_after=3.0), 1.0, 4.0),
        # No retry-after on a 429: jitter ≤ 0.5, but admission is paused for 1 s.
        (RateLimited("slow down"), 0.0, 1.0),
    ],
)
async def test_retry_after_is_honoured(
    autojump_clock: trio.testing.MockClock, error: LLMError, latency: float, retry_at: float
) -> None:
    """A retry after a retry-after comes exactly when the server said, never earlier."""
    a = MockProvider(name="a", responses=[MockResponse(error=error, latency=latency)])
    async with open_router(config(["a"]), providers={"a": a}, seed=3) as router:
        resp = await router.complete(chat())
    assert resp.text == "echo: hi"
    assert starts(a) == [0.0, retry_at]
    assert trio.current_time() == retry_at


async def test_retry_after_beyond_max_retry_after_is_not_waited_for(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A retry-after above max_retry_after (60 s) is raised at once instead of waited for."""
    a = MockProvider(name="a", responses=[RateLimited("quota", retry_after=120.0)])
    async with open_router(config(["a"]), providers={"a": a}) as router:
        with pytest.raises(RateLimited):
            await router.complete(chat())
    assert (len(a.calls), trio.current_time()) == (1, 0.0)


@pytest.mark.parametrize(
    "error",
    [
        InvalidRequest("bad"),
        ContextLengthExceeded("long", limit=10, requested=20),
        UnsupportedFeature("no images"),
        AuthenticationError("key"),
        PermissionDenied("no"),
        ModelNotFound("which?"),
        QuotaExceeded("broke"),
        ContentFiltered("nope"),
        ServerError("x-should-retry: false", retryable=False),
    ],
    ids=lambda e: type(e).__name__,
)
async def test_non_retryable_errors_are_not_retried(
    autojump_clock: trio.testing.MockClock, error: LLMError
) -> None:
    """A non-retryable error is raised as itself after one call, with no retry."""
    a = MockProvider(name="a", responses=[MockResponse(error=error, latency=0.5)])
    async with open_router(config(["a"]), providers={"a": a}) as router:
        with pytest.raises(type(error)) as info:
            await router.complete(chat())
    assert type(info.value) is type(error)
    assert info.value.provider == "a"
    assert (len(a.calls), trio.current_time()) == (1, 0.5)
    assert router.statistics().retries == 0


@pytest.mark.parametrize("max_attempts", [1, 2, 4])
async def test_retries_stop_at_max_attempts(
    autojump_clock: trio.testing.MockClock, max_attempts: int
) -> None:
    """A provider failing every call is tried exactly max_attempts times; the last error wins."""
    a = MockProvider(name="a", default=MockResponse(error=ServerError("down")))
    cfg = config({"a": mock(retry=RetryConfig(max_attempts=max_attempts))})
    async with open_router(cfg, providers={"a": a}, seed=5) as router:
        with pytest.raises(ServerError):
            await router.complete(chat())
    assert len(a.calls) == max_attempts
    expected = [0.0]
    for d in jitter(5, max_attempts - 1):
        expected.append(expected[-1] + d)
    assert starts(a) == pytest.approx(expected, rel=1e-12)
    stats = router.statistics()
    assert (stats.requests, stats.failed, stats.retries) == (1, 1, max_attempts - 1)
    assert (stats.providers["a"].failed, stats.providers["a"].retried) == (
        max_attempts,
        max_attempts - 1,
    )


async def test_retry_budget_caps_retries(autojump_clock: trio.testing.MockClock) -> None:
    """With a floor of 1 retry per 10 s and no ratio, only one retry per window goes out."""
    a = MockProvider(
        name="a",
        responses=[ServerError("1"), "ok 1", ServerError("2"), ServerError("3"), "ok 3"],
    )
    retry = RetryConfig(budget_ratio=0.0, budget_min_per_second=0.1, budget_window=10)
    cfg = config({"a": mock(retry=retry)})
    async with open_router(cfg, providers={"a": a}, seed=0) as router:
        assert (await router.complete(chat())).text == "ok 1"
        await trio.sleep_until(1.0)
        with pytest.raises(ServerError, match="2"):
            await router.complete(chat())  # the budget is spent: no retry
        assert trio.current_time() == 1.0
        await trio.sleep_until(11.0)  # the first retry has left the window
        assert (await router.complete(chat())).text == "ok 3"
    # Every first retry draws U(0, 0.5), the refused one too (before the budget says no).
    rng = random.Random(0)
    d1, _refused, d3 = (rng.uniform(0.0, 0.5) for _ in range(3))
    assert starts(a) == [0.0, d1, 1.0, 11.0, pytest.approx(11.0 + d3, rel=1e-12)]
    assert router.statistics().retries == 2


@pytest.mark.parametrize(
    ("deadline", "retry_after", "served_at"),
    [
        (1.5, 2.0, None),  # the retry could not even start before the deadline
        (2.0, 2.0, None),  # ... nor exactly at it
        (2.5, 2.0, 2.0),  # it can: it goes at 2.0
    ],
)
async def test_no_retry_past_the_deadline(
    autojump_clock: trio.testing.MockClock,
    deadline: float,
    retry_after: float,
    served_at: float | None,
) -> None:
    """A retry that cannot start before the caller's deadline is not waited for: raise now."""
    a = MockProvider(name="a", responses=[RateLimited("slow", retry_after=retry_after)])
    async with open_router(config(["a"]), providers={"a": a}) as router:
        with trio.fail_after(deadline):
            result = await outcome(router.complete(chat()))
    if served_at is None:
        assert isinstance(result, RateLimited)
        assert (trio.current_time(), len(a.calls)) == (0.0, 1)
    else:
        assert result.text == "echo: hi"
        assert starts(a) == [0.0, served_at]


# --------------------------------------------------------------------------- fallback

FAILOVER_ERRORS = [
    ServerError("500"),
    Overloaded("529"),
    Timeout("read"),
    ConnectionFailed("refused"),
    RateLimited("429", retry_after=30.0),
    RateLimited("429"),
    AuthenticationError("401"),
    PermissionDenied("403"),
    ModelNotFound("404"),
    QuotaExceeded("402"),
    ContextLengthExceeded("too long", limit=8, requested=9),
    UnsupportedFeature("no tools"),
]


@pytest.mark.parametrize("error", FAILOVER_ERRORS, ids=lambda e: type(e).__name__)
async def test_failover_errors_move_to_the_next_target(
    autojump_clock: trio.testing.MockClock, error: LLMError
) -> None:
    """An error specific to one target sends the request to the next, the moment it fails."""
    a = MockProvider(name="a", responses=[MockResponse(error=error, latency=0.5)])
    b = MockProvider(name="b", latency=0.25)
    cfg = config({"a": mock(retry=NO_RETRY), "b": mock()}, routes={"r": ["a:one", "b:two"]})
    async with open_router(cfg, providers={"a": a, "b": b}) as router:
        resp = await router.complete(chat("r"))
    assert (resp.provider, resp.model) == ("b", "two")
    assert [r.model for r in a.requests] == ["one"]
    assert starts(b) == [0.5]
    assert trio.current_time() == 0.75
    stats = router.statistics()
    assert (stats.requests, stats.succeeded, stats.failed, stats.fallbacks) == (1, 1, 0, 1)


async def test_retries_on_a_target_come_before_fallback(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A ServerError is retried on its target (with jitter) before the route moves on."""
    a = MockProvider(name="a", default=MockResponse(error=ServerError("down")))
    b = MockProvider(name="b")
    cfg = config(["a", "b"], routes={"r": ["a:m", "b:m"]})
    async with open_router(cfg, providers={"a": a, "b": b}, seed=11) as router:
        resp = await router.complete(chat("r"))
    d1, d2 = jitter(11, 2)
    assert resp.provider == "b"
    assert starts(a) == [0.0, d1, pytest.approx(d1 + d2, rel=1e-12)]
    assert starts(b) == [pytest.approx(d1 + d2, rel=1e-12)]
    stats = router.statistics()
    assert (stats.retries, stats.fallbacks) == (2, 1)


@pytest.mark.parametrize(
    "error",
    [RateLimited("429", retry_after=30.0), RateLimited("429"), Overloaded("busy", retry_after=5)],
    ids=["429-retry-after", "429", "529-retry-after"],
)
async def test_rate_limit_on_a_non_last_target_fails_over_without_waiting(
    autojump_clock: trio.testing.MockClock, error: LLMError
) -> None:
    """With default retries, a rate limit on a non-last target moves on at once."""
    a = MockProvider(name="a", responses=[MockResponse(error=error, latency=0.5)])
    b = MockProvider(name="b")
    cfg = config(["a", "b"], routes={"r": ["a:m", "b:m"]})
    async with open_router(cfg, providers={"a": a, "b": b}) as router:
        resp = await router.complete(chat("r"))
    assert (resp.provider, trio.current_time()) == ("b", 0.5)
    assert (len(a.calls), router.statistics().retries) == (1, 0)


async def test_a_paused_target_is_skipped_at_once(autojump_clock: trio.testing.MockClock) -> None:
    """After a 429 with retry-after, the next request skips the paused target immediately."""
    a = MockProvider(name="a", responses=[RateLimited("429", retry_after=30.0)])
    b = MockProvider(name="b")
    cfg = config(["a", "b"], routes={"r": ["a:m", "b:m"]})
    async with open_router(cfg, providers={"a": a, "b": b}) as router:
        assert (await router.complete(chat("r"))).provider == "b"
        await trio.sleep(1.0)
        resp = await router.complete(chat("r"))
        assert (resp.provider, trio.current_time()) == ("b", 1.0)
        # Once the pause is over, the first target serves again.
        await trio.sleep_until(30.0)
        assert (await router.complete(chat("r"))).provider == "a"
    assert starts(a) == [0.0, 30.0]
    assert starts(b) == [0.0, 1.0]
    assert router.statistics().providers["a"].queued == 0


@pytest.mark.parametrize(
    "error",
    [InvalidRequest("bad"), ContentFiltered("filtered"), StreamInterrupted("odd")],
    ids=lambda e: type(e).__name__,
)
async def test_non_failover_error_is_returned_at_once(
    autojump_clock: trio.testing.MockClock, error: LLMError
) -> None:
    """An error every target would give ends the request as itself; the next is not tried."""
    a = MockProvider(name="a", responses=[MockResponse(error=error, latency=0.5)])
    b = MockProvider(name="b")
    cfg = config(["a", "b"], routes={"r": ["a:m", "b:m"]})
    async with open_router(cfg, providers={"a": a, "b": b}) as router:
        with pytest.raises(type(error)) as info:
            await router.complete(chat("r"))
    assert type(info.value) is type(error)
    assert (trio.current_time(), b.calls) == (0.5, [])
    stats = router.statistics()
    assert (stats.failed, stats.fallbacks) == (1, 0)


async def test_non_failover_error_after_a_fallback_ends_the_route(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An InvalidRequest on the second target is fatal: raised as itself, the third not tried."""
    a = MockProvider(name="a", responses=[AuthenticationError("401")])
    b = MockProvider(name="b", responses=[MockResponse(error=InvalidRequest("400"), latency=1)])
    c = MockProvider(name="c")
    cfg = config(["a", "b", "c"], routes={"r": ["a:m", "b:m", "c:m"]})
    async with open_router(cfg, providers={"a": a, "b": b, "c": c}) as router:
        with pytest.raises(InvalidRequest) as info:
            await router.complete(chat("r"))
    assert type(info.value) is InvalidRequest
    assert [(x.provider, x.kind, x.outcome, x.error_type) for x in info.value.attempts] == [
        ("a", "primary", "failed", "AuthenticationError"),
        ("b", "fallback", "failed", "InvalidRequest"),
    ]
    assert c.calls == []
    assert trio.current_time() == 1.0


async def test_all_targets_fail(autojump_clock: trio.testing.MockClock) -> None:
    """Every target failing gives one AllProvidersFailed: attempts per target, group as cause."""
    a = MockProvider(name="a", responses=[MockResponse(error=ServerError("500"), latency=1.0)])
    b = MockProvider(name="b", responses=[MockResponse(error=AuthenticationError("401"))])
    c = MockProvider(name="c", responses=[MockResponse(error=Timeout("slow"), latency=2.0)])
    cfg = config(
        {"a": mock(retry=NO_RETRY), "b": mock(), "c": mock(retry=NO_RETRY)},
        routes={"r": ["a:m1", "b:m2", "c:m3"]},
    )
    async with open_router(cfg, providers={"a": a, "b": b, "c": c}) as router:
        await trio.sleep(5.0)  # attempt times are relative to the request's start
        with pytest.raises(AllProvidersFailed) as info:
            await router.complete(chat("r"))
    exc = info.value
    assert [
        (x.provider, x.model, x.kind, x.outcome, x.error_type, x.start, x.end) for x in exc.attempts
    ] == [
        ("a", "m1", "primary", "failed", "ServerError", 0.0, 1.0),
        ("b", "m2", "fallback", "failed", "AuthenticationError", 1.0, 1.0),
        ("c", "m3", "fallback", "failed", "Timeout", 1.0, 3.0),
    ]
    assert [type(e) for e in exc.errors] == [ServerError, AuthenticationError, Timeout]
    assert isinstance(exc.__cause__, ExceptionGroup)
    assert list(exc.__cause__.exceptions) == list(exc.errors)
    assert exc.retryable  # some attempt was
    for text in ("a:m1: ServerError", "b:m2: AuthenticationError", "c:m3: Timeout"):
        assert text in str(exc)
    assert trio.current_time() == 8.0
    stats = router.statistics()
    assert (stats.requests, stats.succeeded, stats.failed, stats.fallbacks) == (1, 0, 1, 2)


async def test_target_that_cannot_finish_before_the_deadline_is_skipped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A target whose latency estimate exceeds the time left is skipped, and traced so."""
    a = MockProvider(name="a", latency=5.0)
    b = MockProvider(name="b", latency=0.5)
    cfg = config(["a", "b"], routes={"r": ["a:m", "b:m"]})
    async with open_router(cfg, providers={"a": a, "b": b}) as router:
        await router.complete(chat("a:m"))  # a's latency estimate: 5 s
        with trio.fail_after(2.0):
            resp = await router.complete(chat("r"))
        assert resp.provider == "b"
        assert [(x.provider, x.outcome) for x in resp.attempts] == [
            ("a", "skipped"),
            ("b", "won"),
        ]
        assert "deadline" in (resp.attempts[0].reason or "")
        # Alone, a is tried all the same: a prediction never refuses a request.
        with pytest.raises(trio.TooSlowError), trio.fail_after(2.0):
            await router.complete(chat("a:m"))
        assert trio.current_time() == 7.5
    assert starts(a) == [0.0, 5.5]


async def test_request_in_a_cancelled_scope_is_cancelled_not_timed_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A call made inside an already-cancelled scope is Cancelled, never an LLMError."""
    async with open_router(config(["a"]), providers=mocks("a")) as router:
        await router.complete(chat())  # a has a latency estimate now
        result: Any = "cancelled"
        with trio.CancelScope() as scope:
            scope.cancel()
            result = await outcome(router.complete(chat()))
        assert scope.cancelled_caught, result
        stats = router.statistics()
        assert (stats.failed, stats.cancelled) == (0, 1)


# --------------------------------------------------------------------------- streaming fallback


async def read_stream(router: Router, request: ChatRequest) -> tuple[str, list[tuple[str, float]]]:
    """Stream ``request``; return the provider and (event, time) pairs."""
    seen: list[tuple[str, float]] = []
    async with router.stream(request) as events:
        async for event in events:
            label = event.text if isinstance(event, TextDelta) else type(event).__name__
            seen.append((label, trio.current_time()))
    return events.provider, seen


@pytest.mark.parametrize(
    "failing",
    [
        MockResponse(error=Overloaded("529"), latency=0.5),  # raised entering the stream
        MockResponse(error=ConnectionFailed("reset"), latency=0.5, error_after_chunks=0),
        MockResponse(error=AuthenticationError("401"), latency=0.5),
    ],
    ids=["on-open", "before-first-event", "auth"],
)
async def test_stream_failing_before_content_is_replaced_invisibly(
    autojump_clock: trio.testing.MockClock, failing: MockResponse
) -> None:
    """A stream that fails before its first content event is replaced by the next target."""
    a = MockProvider(name="a", responses=[failing])
    b = MockProvider(name="b", default=MockResponse(text="from b", chunk_latency=0.25))
    cfg = config({"a": mock(retry=NO_RETRY), "b": mock()}, routes={"r": ["a:m", "b:m"]})
    async with open_router(cfg, providers={"a": a, "b": b}) as router:
        provider, seen = await read_stream(router, chat("r"))
    assert provider == "b"
    assert seen == [("from", 0.5), (" b", 0.75), ("UsageEvent", 1.0), ("Done", 1.0)]
    assert [c.outcome for c in a.calls] == ["error"]
    assert router.statistics().fallbacks == 1


async def test_stream_failing_after_content_is_interrupted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """After the first content event the stream is committed: a failure is StreamInterrupted."""
    failing = MockResponse(
        text="one two three", chunk_latency=0.5, error=ServerError("500"), error_after_chunks=2
    )
    a = MockProvider(name="a", responses=[failing])
    b = MockProvider(name="b")
    cfg = config(["a", "b"], routes={"r": ["a:m", "b:m"]})
    seen: list[tuple[str, float]] = []
    async with open_router(cfg, providers={"a": a, "b": b}) as router:
        with pytest.raises(StreamInterrupted) as info:
            async with router.stream(chat("r")) as events:
                async for event in events:
                    assert isinstance(event, TextDelta)
                    seen.append((event.text, trio.current_time()))
        assert events.provider == "a"
    assert seen == [("one", 0.0), (" two", 0.5)]
    assert trio.current_time() == 1.0
    assert isinstance(info.value.__cause__, ServerError)
    assert b.calls == []
    stats = router.statistics().providers["a"]
    assert (stats.failed, stats.in_flight) == (1, 0)


async def test_callers_own_error_in_a_stream_is_not_the_providers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An LLMError raised by the caller's body passes through and counts against no one."""
    a = MockProvider(name="a", default=MockResponse(text="one two", chunk_latency=1.0))
    cfg = config({"a": mock(breaker=BreakerConfig(minimum_calls=1))})
    mine = ServerError("the caller's own")
    async with open_router(cfg, providers={"a": a}) as router:
        with pytest.raises(ServerError) as info:
            async with router.stream(chat()) as events:
                async for _ in events:
                    raise mine
        assert info.value is mine
        stats = router.statistics().providers["a"]
        assert (stats.failed, stats.cancelled, stats.in_flight, stats.breaker) == (
            0,
            1,
            0,
            "closed",
        )
        assert router.health()["a"].status == "healthy"
    assert [c.outcome for c in a.calls] == ["cancelled"]


async def test_stream_abandoned_by_the_caller_is_not_a_failure(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Leaving the block early closes the stream: the call is cancelled, not failed."""
    a = MockProvider(name="a", default=MockResponse(text="a b c", chunk_latency=1.0))
    async with open_router(config(["a"]), providers={"a": a}) as router:
        async with router.stream(chat()) as events:
            async for _ in events:
                break
        assert trio.current_time() == 0.0
        stats = router.statistics().providers["a"]
        assert (stats.in_flight, stats.cancelled, stats.failed, stats.succeeded) == (0, 1, 0, 0)
    assert [c.outcome for c in a.calls] == ["cancelled"]


async def test_stream_cancelled_before_its_first_event(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A deadline while the stream waits for its first event cancels the call cleanly."""
    a = MockProvider(name="a", default=MockResponse(text="late", latency=5.0))
    b = MockProvider(name="b")
    cfg = config(["a", "b"], routes={"r": ["a:m", "b:m"]})
    async with open_router(cfg, providers={"a": a, "b": b}) as router:
        with trio.move_on_after(2.0) as scope:
            async with router.stream(chat("r")):
                pytest.fail("the stream never committed")  # pragma: no cover
        assert scope.cancelled_caught
        assert trio.current_time() == 2.0
        assert (a.calls[0].outcome, a.calls[0].ended_at, b.calls) == ("cancelled", 2.0, [])
        stats = router.statistics()
        assert (stats.cancelled, stats.providers["a"].in_flight) == (1, 0)


# --------------------------------------------------------------------------- circuit breaker

TRIPPING = BreakerConfig(minimum_calls=4, open_duration=10.0, half_open_probes=2)


async def trip(router: Router, provider: MockProvider) -> None:
    """Four failing calls at t=0, 1, 2, 3: the breaker opens at t=3, until t=13."""
    for _ in range(4):
        with pytest.raises(ServerError):
            await router.complete(chat())
        if trio.current_time() < 3.0:
            await trio.sleep(1.0)
    assert starts(provider) == [0.0, 1.0, 2.0, 3.0]


async def test_breaker_opens_refuses_half_opens_and_closes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Open at t=3 until 13: no calls meanwhile, half-open at exactly 13, closed after 2 probes."""
    a = MockProvider(name="a", responses=[ServerError("500")] * 4)
    # Panic routing off: a lone target's open breaker refuses (the default would try it).
    cfg = config({"a": mock(breaker=TRIPPING, retry=NO_RETRY)}, panic_threshold=0.0)
    async with open_router(cfg, providers={"a": a}) as router:
        await trip(router, a)
        health = router.health()["a"]
        assert health.status == "unhealthy"
        assert health.reason is not None
        assert health.reason.startswith("circuit open until t=13.000")
        assert router.statistics().providers["a"].breaker == "open"

        await trio.sleep_until(5.0)
        with pytest.raises(Overloaded, match=r"circuit breaker open until t=13\.000") as info:
            await router.complete(chat())
        assert (trio.current_time(), info.value.retry_after) == (5.0, 8.0)
        assert len(a.calls) == 4  # not called while open

        await router.health_value("a").wait_value(lambda h: h.status != "unhealthy")
        assert trio.current_time() == 13.0
        health = router.health()["a"]
        assert (health.status, health.breaker.state) == ("degraded", "half_open")

        for _ in range(2):
            assert (await router.complete(chat())).text == "echo: hi"
        assert router.statistics().providers["a"].breaker == "closed"
        assert "circuit" not in (router.health()["a"].reason or "")
    assert starts(a)[4:] == [13.0, 13.0]


async def test_failed_probe_reopens_for_twice_as_long(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A probe failing at t=13 reopens the breaker until t=33 (the second trip lasts 20 s)."""
    a = MockProvider(name="a", responses=[ServerError("500")] * 5)
    cfg = config({"a": mock(breaker=TRIPPING, retry=NO_RETRY)})
    async with open_router(cfg, providers={"a": a}) as router:
        await trip(router, a)
        await trio.sleep_until(13.0)
        with pytest.raises(ServerError):
            await router.complete(chat())
        health = router.health()["a"]
        assert health.status == "unhealthy"
        assert health.breaker.open_until == 33.0
        assert health.reason is not None
        assert "trip 2" in health.reason
        await router.health_value("a").wait_value(lambda h: h.status != "unhealthy")
        assert trio.current_time() == 33.0


@pytest.mark.parametrize("panic_threshold", [0.5, 0.0])
async def test_request_while_open_on_a_single_target_never_waits_out_the_breaker(
    autojump_clock: trio.testing.MockClock, panic_threshold: float
) -> None:
    """A lone target's open breaker: in panic (the default) the request goes through at
    once; with panic off it is refused at once, not retryable, saying until when."""
    a = MockProvider(name="a", responses=[ServerError("500")] * 4)
    retry = RetryConfig(max_attempts=2)
    cfg = config({"a": mock(breaker=TRIPPING, retry=retry)}, panic_threshold=panic_threshold)
    async with open_router(cfg, providers={"a": a}, seed=0) as router:
        for _ in range(2):  # two calls each: the fourth failure trips the breaker
            with pytest.raises(ServerError):
                await router.complete(chat())
        opened = trio.current_time()
        assert router.statistics().providers["a"].breaker == "open"
        if panic_threshold:
            resp = await router.complete(chat())
            assert (resp.text, trio.current_time(), starts(a)[-1]) == ("echo: hi", opened, opened)
            assert len(a.calls) == 5
            assert router.statistics().panic_routed == 1
        else:
            with pytest.raises(
                Overloaded, match=r"open until t=\d+\.\d{3} \(10s from now\)"
            ) as info:
                await router.complete(chat())
            assert (trio.current_time(), info.value.retryable) == (opened, False)
            assert info.value.retry_after == pytest.approx(10.0)
            assert len(a.calls) == 4
            assert router.statistics().panic_routed == 0
        assert router.statistics().providers["a"].breaker == "open"


async def test_open_breaker_on_a_route_fails_over_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """While a's breaker is open, route requests go straight to b without calling a."""
    a = MockProvider(name="a", responses=[ServerError("500")] * 4)
    b = MockProvider(name="b")
    cfg = config(
        {"a": mock(breaker=TRIPPING, retry=NO_RETRY), "b": mock()}, routes={"r": ["a:m", "b:m"]}
    )
    async with open_router(cfg, providers={"a": a, "b": b}) as router:
        await trip(router, a)
        await trio.sleep_until(5.0)
        resp = await router.complete(chat("r"))
        assert (resp.provider, trio.current_time()) == ("b", 5.0)
        assert [(x.provider, x.outcome) for x in resp.attempts] == [("b", "won")]
    assert len(a.calls) == 4


async def test_half_open_target_on_a_route_gets_its_probes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Once a's open time is over, route traffic probes a and its breaker closes again."""
    a = MockProvider(name="a", responses=[ServerError("500")] * 4)
    b = MockProvider(name="b")
    cfg = config(
        {"a": mock(breaker=TRIPPING, retry=NO_RETRY), "b": mock()}, routes={"r": ["a:m", "b:m"]}
    )
    async with open_router(cfg, providers={"a": a, "b": b}) as router:
        await trip(router, a)
        await trio.sleep_until(100.0)  # long after t=13, and after the error window too
        served = [(await router.complete(chat("r"))).provider for _ in range(3)]
        assert router.statistics().providers["a"].breaker == "closed"
        assert served == ["a", "a", "a"]


# --------------------------------------------------------------------------- supervisor

HOLD = MockResponse(text="held", latency=0.125)


async def crash_and_time_restart(router: Router, provider: MockProvider, label: str) -> float:
    """Crash a's loop now; return when the restarted loop first admits a queued request.

    With max_concurrency=1 a "hold" call is admitted directly (no loop needed); the
    next request must queue, and only a running loop can admit it.
    """
    crashed_at = trio.current_time()
    crash_actor(router._actors["a"], RuntimeError(f"boom {label}"))
    await trio.testing.wait_all_tasks_blocked()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(router.complete, chat(text="hold"))
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(router.complete, chat(text=label))
    (call,) = [c for c in provider.calls if c.request.messages[0].text == label]
    assert crashed_at < call.started_at
    return call.started_at - crashed_at


async def test_crashed_actor_restarts_with_exponential_backoff(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Restart n waits min(0.5·2^(n-1), 1.5); crashes older than the window are forgotten."""
    a = MockProvider(name="a", rules=[("hold", HOLD)])
    supervisor = SupervisorConfig(
        restart_backoff=0.5, max_restart_backoff=1.5, max_restarts=10, restart_window=30.0
    )
    cfg = config({"a": mock(max_concurrency=1)}, supervisor=supervisor)
    async with open_router(cfg, providers={"a": a}) as router:
        delays = [await crash_and_time_restart(router, a, f"c{i}") for i in range(4)]
        assert delays == [0.5, 1.0, 1.5, 1.5]
        await trio.sleep(31.0)  # every crash so far leaves the window
        assert await crash_and_time_restart(router, a, "late") == 0.5
        stats = router.statistics().providers["a"]
        assert (stats.restarts, stats.status) == (5, "healthy")
        # It still serves.
        assert (await router.complete(chat())).text == "echo: hi"


@pytest.mark.parametrize(
    ("route", "served_by"), [(["a:m"], None), (["a:m", "b:m"], "b")], ids=["alone", "route"]
)
async def test_requests_queued_in_a_crash_fail_and_fail_over(
    autojump_clock: trio.testing.MockClock, route: list[str], served_by: str | None
) -> None:
    """A request queued when the loop crashes gets a ServerError at once, and can fail over."""
    a = MockProvider(name="a", default=MockResponse(text="slow", latency=10.0))
    b = MockProvider(name="b")
    cfg = config({"a": mock(max_concurrency=1, retry=NO_RETRY), "b": mock()}, routes={"r": route})
    results: list[Any] = []

    async def call(router: Router) -> None:
        results.append(await outcome(router.complete(chat("r"))))
        results.append(trio.current_time())

    async with open_router(cfg, providers={"a": a, "b": b}) as router, trio.open_nursery() as n:
        n.start_soon(router.complete, chat("a:m"))
        await trio.sleep(1.0)
        n.start_soon(call, router)
        await trio.testing.wait_all_tasks_blocked()
        assert router.statistics().providers["a"].queued == 1
        crash_actor(router._actors["a"], RuntimeError("boom"))
        await trio.testing.wait_all_tasks_blocked()
        result, at = results
        assert at == 1.0
        if served_by is None:
            assert isinstance(result, ServerError)
            assert "crashed (RuntimeError)" in str(result)
        else:
            assert result.provider == served_by
        assert router.statistics().providers["a"].queued == 0
    assert len(a.calls) == 1  # the queued request never reached a
    assert a.calls[0].outcome == "ok"  # the call in flight was not disturbed
    assert trio.current_time() == 10.0


async def test_crash_during_shutdown_never_reaches_the_caller(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A loop crash that coincides with the router's exit is absorbed, not raised at the caller."""
    async with open_router(config(["a"]), providers=mocks("a")) as router:
        crash_actor(router._actors["a"], RuntimeError("boom"))


async def test_too_many_crashes_mark_the_provider_unhealthy(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A third crash within the window (max_restarts=2) marks it crashed; requests are refused."""
    a = MockProvider(name="a")
    b = MockProvider(name="b")
    supervisor = SupervisorConfig(restart_backoff=0.5, max_restarts=2, restart_window=10.0)
    cfg = config(
        {"a": mock(retry=NO_RETRY), "b": mock()},
        routes={"r": ["a:m", "b:m"]},
        supervisor=supervisor,
    )
    async with (
        trio.open_nursery() as callers,
        open_router(cfg, providers={"a": a, "b": b}) as router,
    ):
        actor = router._actors["a"]
        crash_actor(actor, RuntimeError("boom 1"))  # crashes at 0, restarts at 0.5
        await trio.testing.wait_all_tasks_blocked()
        crash_actor(actor, RuntimeError("boom 2"))  # on restart at 0.5; next at 1.5
        await trio.sleep(1.0)
        crash_actor(actor, RuntimeError("boom 3"))  # on restart at 1.5: the third
        await router.health_value("a").wait_value(lambda h: h.status == "unhealthy")
        assert trio.current_time() == 1.5
        health = router.health()["a"]
        assert health.reason is not None
        assert "crashed 3 times within 10s" in health.reason
        assert "RuntimeError: boom 3" in health.reason
        assert router.statistics().providers["a"].restarts == 2

        with pytest.raises(Overloaded, match="provider unavailable"):
            await router.complete(chat("a:m"))
        assert (await router.complete(chat("r"))).provider == "b"
        assert trio.current_time() == 1.5
        assert a.calls == []
        # Its supervisor gave up (only b's is left) and no restart comes later.
        assert len([t for t in all_tasks() if "_supervise" in t.name]) == 1
        await trio.sleep(60.0)
        assert router.statistics().providers["a"].restarts == 2
        assert router.health()["a"].status == "unhealthy"
        callers.start_soon(trio.sleep, 1.0)  # the caller's nursery is unaffected
    assert trio.current_time() == 62.5


async def test_crashed_provider_is_refused_at_once_with_default_retries(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Once marked crashed for good, the provider's requests fail at once, not after backoff."""
    a = MockProvider(name="a")
    supervisor = SupervisorConfig(max_restarts=0)
    async with open_router(config(["a"], supervisor=supervisor), providers={"a": a}) as router:
        crash_actor(router._actors["a"], RuntimeError("boom"))
        await router.health_value("a").wait_value(lambda h: h.status == "unhealthy")
        with pytest.raises(Overloaded, match="provider unavailable"):
            await router.complete(chat())
        assert trio.current_time() == 0.0
        assert router.statistics().retries == 0


# --------------------------------------------------------------------------- cancellation


async def test_cancelled_while_queued_leaves_the_queue_uncharged(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A caller cancelled while queued leaves the queue at once and is never charged."""
    a = MockProvider(name="a", default=MockResponse(text="x", latency=100.0))
    cfg = config({"a": mock(tpm=480, tpm_burst=120)})  # 108 tokens per request, 8/s
    async with open_router(cfg, providers={"a": a}) as router, trio.open_nursery() as nursery:
        nursery.start_soon(router.complete, chat(max_tokens=100))  # in flight; 12 tokens left
        await trio.testing.wait_all_tasks_blocked()
        scope = trio.CancelScope()
        nursery.start_soon(_run_in, scope, router.complete(chat(max_tokens=100)))
        await trio.testing.wait_all_tasks_blocked()
        assert router.statistics().providers["a"].queued == 1
        await trio.sleep(0.5)
        scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert scope.cancelled_caught
        stats = router.statistics().providers["a"]
        assert (stats.queued, stats.in_flight, stats.admitted, stats.cancelled) == (0, 1, 1, 0)
        assert router._actors["a"].mailbox.statistics().tpm_tokens == 12.0 + 0.5 * 8
        # The next request is the head now: 108 tokens are there at t=12, not at t=25.5.
        await router.complete(chat(max_tokens=100, text="next"))
        nursery.cancel_scope.cancel()
    assert starts(a) == [0.0, 12.0]


async def _run_in(scope: trio.CancelScope, call: Awaitable[Any]) -> None:
    with scope:
        await call


async def test_cancelled_in_flight_returns_the_permit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Cancelled mid-call: the permit comes back at once, the call is recorded cancelled."""
    a = MockProvider(name="a", default=MockResponse(text="x", latency=10.0))
    cfg = config({"a": mock(max_concurrency=1)})
    async with open_router(cfg, providers={"a": a}) as router:
        before = {id(t) for t in all_tasks()}
        with trio.move_on_after(3.0) as scope:
            await router.complete(chat())
        assert scope.cancelled_caught
        assert trio.current_time() == 3.0
        assert {id(t) for t in all_tasks()} == before  # nothing outlives the call
        stats = router.statistics().providers["a"]
        assert (stats.in_flight, stats.cancelled, stats.failed, stats.breaker) == (
            0,
            1,
            0,
            "closed",
        )
        assert (a.calls[0].outcome, a.calls[0].ended_at, a.in_flight) == ("cancelled", 3.0, 0)
        # The concurrency slot is free: the next request starts at once.
        a.latency = 0.0
        await router.complete(chat(text="next"))
        assert starts(a) == [0.0, 3.0]


async def test_cancelled_stream_is_closed_and_released(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A deadline in the middle of a stream closes it: call cancelled, nothing in flight."""
    a = MockProvider(name="a", default=MockResponse(text="a b c d", chunk_latency=1.0))
    async with open_router(config(["a"]), providers={"a": a}) as router:
        got: list[str] = []
        with trio.move_on_after(1.25):
            async with router.stream(chat()) as events:
                async for event in events:
                    if isinstance(event, TextDelta):
                        got.append(event.text)
        assert (got, trio.current_time()) == (["a", " b"], 1.25)
        assert (a.calls[0].outcome, a.in_flight) == ("cancelled", 0)
        stats = router.statistics().providers["a"]
        assert (stats.in_flight, stats.cancelled, stats.failed) == (0, 1, 0)


async def test_cancelled_in_the_first_target_stops_the_request(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Cancelling a routed request in its first target ends it: the next target is not tried."""
    a = MockProvider(name="a", default=MockResponse(text="x", latency=5.0))
    b = MockProvider(name="b")
    cfg = config(["a", "b"], routes={"r": ["a:m", "b:m"]})
    async with open_router(cfg, providers={"a": a, "b": b}) as router:
        with trio.move_on_after(2.0):
            await router.complete(chat("r"))
        assert (trio.current_time(), b.calls) == (2.0, [])
        stats = router.statistics()
        assert (stats.requests, stats.cancelled, stats.failed, stats.fallbacks) == (1, 1, 0, 0)
        assert (a.calls[0].outcome, stats.providers["a"].in_flight) == ("cancelled", 0)


# --------------------------------------------------------------------------- statistics


async def test_statistics_add_up(autojump_clock: trio.testing.MockClock) -> None:
    """The frozen snapshot's counters match exactly what the test did."""
    a = MockProvider(
        name="a",
        responses=[AuthenticationError("401"), "ok one", ServerError("500"), "ok two"],
    )
    b = MockProvider(name="b", responses=["b ok", InvalidRequest("400")])
    cfg = config(["a", "b"], routes={"r": ["a:m", "b:m"]})
    async with open_router(cfg, providers={"a": a, "b": b}, seed=0) as router:
        empty = router.statistics()
        await router.complete(chat("r"))  # a: 401 -> b: ok
        await router.complete(chat("a:m"))  # a: ok
        await router.complete(chat("a:m"))  # a: 500, retried, ok
        with pytest.raises(InvalidRequest):
            await router.complete(chat("b:m"))  # b: 400
        a.latency = 1.0
        with trio.move_on_after(0.5):
            await router.complete(chat("a:m"))  # cancelled in flight
        with pytest.raises(NoRoute):
            await router.complete(chat("c:m"))  # never a request
        stats = router.statistics()
    assert (empty.requests, empty.providers["a"].admitted) == (0, 0)
    assert (stats.requests, stats.succeeded, stats.failed, stats.cancelled) == (5, 3, 1, 1)
    assert (stats.fallbacks, stats.retries, stats.hedges) == (1, 1, 0)
    pa, pb = stats.providers["a"], stats.providers["b"]
    assert (pa.queued, pa.in_flight, pa.admitted, pa.refused, pa.retried) == (0, 0, 5, 0, 1)
    assert (pa.succeeded, pa.failed, pa.cancelled, pa.breaker) == (2, 2, 1, "closed")
    assert (pb.admitted, pb.succeeded, pb.failed, pb.retried) == (2, 1, 1, 0)
    # Tokens are what the mock reported: 1 input each, and the answers' words.
    assert (pa.input_tokens, pa.output_tokens) == (2, 2 + 2)
    assert (pb.input_tokens, pb.output_tokens) == (1, 2)
    assert (pa.provider, pa.kind) == ("a", "mock")
    with pytest.raises(AttributeError):
        stats.requests = 0  # type: ignore[misc]
    with pytest.raises(AttributeError):
        pa.queued = 1  # type: ignore[misc]
    assert msgspec.to_builtins(stats)["providers"]["a"]["admitted"] == 5


# --------------------------------------------------------------------------- active health checks


async def test_check_health_probes_every_provider_concurrently(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """One check_health() lists every provider's models at once: done at the slowest, t=3."""
    providers = {
        "a": ProbeMock(name="a", list_latency=1.0),
        "b": ProbeMock(name="b", list_latency=2.0),
        "c": ProbeMock(name="c", list_latency=3.0, list_error=ServerError("500")),
    }
    async with open_router(config(["a", "b", "c"]), providers=providers) as router:
        health = await router.check_health()
        assert trio.current_time() == 3.0
    assert [p.listed for p in providers.values()] == [[(0.0, 1.0)], [(0.0, 2.0)], [(0.0, 3.0)]]
    assert (health["a"].status, health["b"].status) == ("healthy", "healthy")
    assert health["c"].status == "degraded"
    assert health["c"].error_rate == 1.0
    assert health["a"].latency_ewma == 1.0
    assert all(p.calls == [] for p in providers.values())  # no tokens spent


async def test_health_value_of_unknown_provider_is_no_route(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Asking for the health of a provider that is not configured is NoRoute."""
    async with open_router(config(["a"]), providers=mocks("a")) as router:
        with pytest.raises(NoRoute, match=r"\['a'\]"):
            router.health_value("zz")


# --------------------------------------------------------------------------- hedging

# Each scenario: per target (latency, error or None), the hedge config, then the
# expected winner and time and each target's (kind, outcome) in the trace.
HEDGE_SCENARIOS = [
    # The primary answers before the delay: no hedge is sent.
    ([(0.1, None), (0.1, None)], 0.25, 2, "a", 0.1, [("primary", "won")]),
    # Slow primary: the hedge goes at 0.25 and wins at 0.45; the primary is cancelled.
    (
        [(1.0, None), (0.2, None)],
        0.25,
        2,
        "b",
        0.45,
        [("primary", "cancelled"), ("hedge", "won")],
    ),
    # Three attempts staggered by 0.25: the third wins at 0.5 + 0.1.
    (
        [(1.0, None), (1.0, None), (0.1, None)],
        0.25,
        3,
        "c",
        0.6,
        [("primary", "cancelled"), ("hedge", "cancelled"), ("hedge", "won")],
    ),
    # A failure starts the next attempt at once, without waiting for the delay.
    (
        [(0.1, ServerError("500")), (0.2, None)],
        0.25,
        2,
        "b",
        pytest.approx(0.3, abs=1e-12),
        [("primary", "failed"), ("fallback", "won")],
    ),
    # delay 0: every attempt at once; the fastest wins.
    (
        [(0.3, None), (0.2, None), (0.1, None)],
        0.0,
        3,
        "c",
        0.1,
        [("primary", "cancelled"), ("hedge", "cancelled"), ("hedge", "won")],
    ),
]


@pytest.mark.parametrize(
    ("targets", "delay", "max_attempts", "winner", "at", "trace"), HEDGE_SCENARIOS
)
async def test_hedged_race(
    autojump_clock: trio.testing.MockClock,
    targets: list[tuple[float, LLMError | None]],
    delay: float,
    max_attempts: int,
    winner: str,
    at: float,
    trace: list[tuple[str, str]],
) -> None:
    """Happy eyeballs for providers: staggered starts, first success wins, losers cancelled."""
    names = ["a", "b", "c"][: len(targets)]
    providers = {
        n: MockProvider(name=n, default=MockResponse(text=n, latency=lat, error=err))
        for n, (lat, err) in zip(names, targets, strict=True)
    }
    hedge = HedgeConfig(max_attempts=max_attempts, delay=delay)
    cfg = RouterConfig(
        # No retries: the scenarios are the race's schedule.
        providers={n: mock(retry=NO_RETRY) for n in names},
        routes={"r": RouteConfig(targets=[f"{n}:m" for n in names], hedge=hedge)},
    )
    async with open_router(cfg, providers=providers) as router:
        resp = await router.complete(chat("r"))
        assert (resp.provider, trio.current_time()) == (winner, at)
        assert [(x.kind, x.outcome) for x in resp.attempts] == trace
        stats = router.statistics()
        for n in names:
            assert stats.providers[n].in_flight == 0
            assert providers[n].in_flight == 0
    # Each losing attempt had sent the prompt ("hi": estimated at 8 tokens).
    losers = [x for x in resp.attempts if x.outcome != "won"]
    assert [x.wasted_tokens for x in losers] == [8] * len(losers)
    assert stats.wasted_tokens == 8 * len(losers)
    for x in resp.attempts:
        (call,) = providers[x.provider].calls
        assert call.outcome == {"won": "ok", "failed": "error", "cancelled": "cancelled"}[x.outcome]


async def test_fatal_error_ends_a_hedged_race(autojump_clock: trio.testing.MockClock) -> None:
    """An InvalidRequest from any attempt cancels the others and is raised as itself."""
    a = MockProvider(name="a", default=MockResponse(error=InvalidRequest("400"), latency=0.5))
    b = MockProvider(name="b", default=MockResponse(text="b", latency=1.0))
    hedge = HedgeConfig(max_attempts=2, delay=0.25)
    cfg = RouterConfig(
        providers={"a": mock(), "b": mock()},
        routes={"r": RouteConfig(targets=["a:m", "b:m"], hedge=hedge)},
    )
    async with open_router(cfg, providers={"a": a, "b": b}) as router:
        with pytest.raises(InvalidRequest):
            await router.complete(chat("r"))
        assert trio.current_time() == 0.5
    assert (b.calls[0].started_at, b.calls[0].outcome) == (0.25, "cancelled")


async def test_hedge_budget_caps_hedges(autojump_clock: trio.testing.MockClock) -> None:
    """With a burst of one hedge and no refill, only the first slow request is hedged."""
    a = MockProvider(name="a", latency=1.0)
    b = MockProvider(name="b", latency=0.1)
    hedge = HedgeConfig(max_attempts=2, delay=0.25, budget_ratio=0.0, budget_burst=1.0)
    cfg = RouterConfig(
        providers={"a": mock(), "b": mock()},
        routes={"r": RouteConfig(targets=["a:m", "b:m"], hedge=hedge)},
    )
    async with open_router(cfg, providers={"a": a, "b": b}) as router:
        first = await router.complete(chat("r"))
        start = trio.current_time()
        second = await router.complete(chat("r"))
        assert (first.provider, second.provider) == ("b", "a")
        assert trio.current_time() - start == 1.0
        stats = router.statistics()
        assert (stats.hedges, stats.hedge_wins) == (1, 1)


async def test_hedge_loser_granted_as_the_race_ends_is_not_charged(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A queued hedge that is granted in the instant another attempt wins keeps no RPM token.

    Whether the actor's loop grants it before the race's cancellation reaches it depends
    on trio's (random) scheduling order, so the scenario is played 20 times.
    """
    unsent = 0
    for _ in range(20):
        a = MockProvider(name="a", latency=1.0)
        b = MockProvider(name="b")
        hedge = HedgeConfig(max_attempts=2, delay=0.0)
        cfg = RouterConfig(
            providers={"a": mock(), "b": mock(rpm=60, rpm_burst=1)},
            routes={"r": RouteConfig(targets=["a:m", "b:m"], hedge=hedge)},
        )
        async with open_router(cfg, providers={"a": a, "b": b}) as router:
            await router.complete(chat("b:m"))  # b's only token: its next is due in 1 s
            assert (await router.complete(chat("r"))).provider == "a"  # at +1 s, as b's
            if len(b.calls) == 1:  # the hedge never reached b
                unsent += 1
                assert router._actors["b"].mailbox.statistics().rpm_tokens == 1.0
                assert router.statistics().providers["b"].admitted == 1
    assert unsent > 0


# --------------------------------------------------------------------------- properties

# Scripted outcomes by name, so hypothesis prints readable examples.
ERROR_FACTORIES: dict[str, Callable[[], LLMError]] = {
    "500": lambda: ServerError("500"),
    "529": lambda: Overloaded("529"),
    "529+ra": lambda: Overloaded("529", retry_after=1.5),
    "timeout": lambda: Timeout("read"),
    "reset": lambda: ConnectionFailed("reset"),
    "429": lambda: RateLimited("429"),
    "429+ra": lambda: RateLimited("429", retry_after=2.0),
    "429+long": lambda: RateLimited("429", retry_after=600.0),
    "401": lambda: AuthenticationError("401"),
    "403": lambda: PermissionDenied("403"),
    "404": lambda: ModelNotFound("404"),
    "402": lambda: QuotaExceeded("402"),
    "context": lambda: ContextLengthExceeded("long"),
    "400": lambda: InvalidRequest("400"),
    "filtered": lambda: ContentFiltered("filtered"),
}
TARGET_SPECIFIC = (
    AuthenticationError,
    PermissionDenied,
    ModelNotFound,
    QuotaExceeded,
    ContextLengthExceeded,
)

outcomes = st.sampled_from(["ok", *ERROR_FACTORIES])
scripts = st.lists(st.tuples(outcomes, st.sampled_from([0.0, 0.5, 1.0])), max_size=3)


def scripted(name: str, script: list[tuple[str, float]]) -> MockProvider:
    """A mock playing ``script`` (then answering "<name> default")."""
    replies = [
        MockResponse(text=f"{name} {i}", latency=latency)
        if kind == "ok"
        else MockResponse(error=ERROR_FACTORIES[kind](), latency=latency)
        for i, (kind, latency) in enumerate(script)
    ]
    return MockProvider(name=name, responses=replies, default=MockResponse(text=f"{name} default"))


def expected_outcome(
    names: list[str], plans: list[list[tuple[str, float]]], max_attempts: int
) -> tuple[str, Any, list[str], int, int]:
    """The simple model: (kind, detail, providers that failed, retries, fallbacks).

    On each target in order: retry retryable errors up to max_attempts (a rate limit,
    overload or timeout while other targets remain, and a retry-after over 60 s, are not
    retried);
    then move on for a failover error, stop for any other.  kind is "ok" (detail: the
    text), "error" (detail: the type of the one error raised as itself) or "all"
    (AllProvidersFailed; detail: the failed providers).
    """
    failed: list[str] = []
    retries = fallbacks = 0
    for i, (name, plan) in enumerate(zip(names, plans, strict=True)):
        more = i + 1 < len(names)
        k = 0
        while True:
            kind = plan[k][0] if k < len(plan) else "ok"
            if kind == "ok":
                text = f"{name} {k}" if k < len(plan) else f"{name} default"
                return "ok", text, failed, retries, fallbacks
            error = ERROR_FACTORIES[kind]()
            too_long = error.retry_after is not None and error.retry_after > 60.0
            if (
                (more and isinstance(error, RateLimited | Overloaded | Timeout))
                or not error.retryable
                or k + 1 >= max_attempts
                or too_long
            ):
                break
            retries += 1
            k += 1
        failed.append(name)
        if not (error.retryable or isinstance(error, TARGET_SPECIFIC)):
            return "error", type(error), failed, retries, fallbacks  # fatal
        if more:
            fallbacks += 1
    if len(failed) == 1:
        return "error", type(error), failed, retries, fallbacks
    return "all", failed, failed, retries, fallbacks


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    plans=st.lists(scripts, min_size=1, max_size=3),
    max_attempts=st.integers(1, 3),
    seed=st.integers(0, 2**32 - 1),
)
def test_route_outcome_matches_the_model(
    plans: list[list[tuple[str, float]]], max_attempts: int, seed: int
) -> None:
    """For any scripted outcomes on a 1-3 target route, the router does what the model says."""
    names = ["a", "b", "c"][: len(plans)]
    providers = {n: scripted(n, p) for n, p in zip(names, plans, strict=True)}
    retry = RetryConfig(max_attempts=max_attempts)
    cfg = config({n: mock(retry=retry) for n in names}, routes={"r": [f"{n}:m-{n}" for n in names]})
    kind, detail, failed, retries, fallbacks = expected_outcome(names, plans, max_attempts)

    async def main() -> None:
        async with open_router(cfg, providers=providers, seed=seed) as router:
            with trio.fail_after(1000):
                result = await outcome(router.complete(chat("r")))
            stats = router.statistics()
        if kind == "ok":
            assert not isinstance(result, LLMError), result
            assert result.text == detail
        elif kind == "error":
            assert type(result) is detail
        else:
            assert isinstance(result, AllProvidersFailed)
            assert isinstance(result.__cause__, ExceptionGroup)
            assert len(result.__cause__.exceptions) == len(detail)
        if isinstance(result, LLMError):
            assert [(x.provider, x.outcome) for x in result.attempts] == [
                (n, "failed") for n in failed
            ]
        else:
            assert [(x.provider, x.outcome) for x in result.attempts] == [
                *((n, "failed") for n in failed),
                (result.provider, "won"),
            ]
        assert (stats.requests, stats.succeeded + stats.failed) == (1, 1)
        assert (stats.retries, stats.fallbacks) == (retries, fallbacks)
        called = [n for n in names if providers[n].calls]
        assert called == names[: len(failed) + (kind == "ok")]
        for n in names:
            assert all(r.model == f"m-{n}" for r in providers[n].requests)
            p = stats.providers[n]
            assert (p.queued, p.in_flight) == (0, 0)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


request_specs = st.tuples(
    st.sampled_from(["a:m", "b:m", "r"]),  # what is asked for
    st.sampled_from([0.0, 0.25, 1.0, 3.0]),  # when it starts
    st.sampled_from([None, 0.5, 2.0, 10.0]),  # its deadline, relative
    st.booleans(),  # stream instead of complete
)
provider_specs = st.fixed_dictionaries(
    {
        "rpm": st.sampled_from([None, 60, 120]),
        "max_concurrency": st.sampled_from([None, 1, 2]),
        "max_queue": st.integers(0, 3),
        "latency": st.sampled_from([0.0, 0.5, 2.0]),
        "crash_at": st.sampled_from([None, 0.0, 0.25, 1.5]),
    }
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    specs=st.lists(provider_specs, min_size=2, max_size=2),
    plans=st.lists(scripts, min_size=2, max_size=2),
    requests=st.lists(request_specs, min_size=1, max_size=8),
    hedge_delay=st.sampled_from([None, 0.0, 0.25]),
    seed=st.integers(0, 2**32 - 1),
)
def test_every_request_ends_and_nothing_leaks(
    specs: list[dict[str, Any]],
    plans: list[list[tuple[str, float]]],
    requests: list[tuple[str, float, float | None, bool]],
    hedge_delay: float | None,
    seed: int,
) -> None:
    """Under any load, limits, faults, crashes and deadlines, each request ends cleanly.

    Each ends with a result, an LLMError or its own deadline (never another exception,
    never a hang); afterwards nothing is queued or in flight, every mock call is over,
    and the router's counters add up.
    """
    names = ["a", "b"]
    providers = {n: scripted(n, p) for n, p in zip(names, plans, strict=True)}
    for n, spec in zip(names, specs, strict=True):
        providers[n].latency = spec["latency"]
    hedge = None if hedge_delay is None else HedgeConfig(max_attempts=2, delay=hedge_delay)
    cfg = RouterConfig(
        providers={
            n: mock(
                rpm=spec["rpm"],
                rpm_burst=1 if spec["rpm"] else None,
                max_concurrency=spec["max_concurrency"],
                max_queue=spec["max_queue"],
            )
            for n, spec in zip(names, specs, strict=True)
        },
        routes={"r": RouteConfig(targets=["a:m", "b:m"], hedge=hedge)},
        supervisor=SupervisorConfig(max_restarts=1, restart_backoff=0.5),
    )
    ended: list[str] = []

    async def one(router: Router, model: str, start: float, deadline: float | None, s: bool):
        await trio.sleep_until(start)
        with trio.move_on_after(math.inf if deadline is None else deadline) as scope:
            try:
                if s:
                    async with router.stream(chat(model)) as events:
                        async for _ in events:
                            pass
                else:
                    await router.complete(chat(model))
            except LLMError:
                ended.append("error")
                return
            ended.append("ok")
        if scope.cancelled_caught:
            ended.append("deadline")

    async def crash(router: Router, name: str, at: float) -> None:
        await trio.sleep_until(at)
        crash_actor(router._actors[name], RuntimeError("chaos"))

    async def main() -> None:
        with trio.fail_after(10_000):
            async with open_router(cfg, providers=providers, seed=seed) as router:
                async with trio.open_nursery() as nursery:
                    for n, spec in zip(names, specs, strict=True):
                        if spec["crash_at"] is not None:
                            nursery.start_soon(crash, router, n, spec["crash_at"])
                    for spec in requests:
                        nursery.start_soon(one, router, *spec)
                # Let pending crashes and restarts play out before the router exits (a
                # crash during the exit itself is test_crash_during_shutdown_...).
                await trio.sleep(10.0)
                stats = router.statistics()
        assert len(ended) == len(requests)
        assert stats.requests == len(requests)
        assert stats.succeeded == ended.count("ok")
        assert stats.failed == ended.count("error")
        assert stats.cancelled == ended.count("deadline")
        for n in names:
            p = stats.providers[n]
            assert (p.queued, p.in_flight) == (0, 0)
            assert providers[n].in_flight == 0
            assert all(c.outcome != "pending" for c in providers[n].calls)
            # Not ==: a waiter granted in the instant its caller is cancelled counts as
            # admitted though never sent (test_hedge_loser_granted_as_the_race_ends_...).
            assert p.admitted >= len(providers[n].calls)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


async def test_a_failing_call_is_still_a_schedule_point() -> None:
    """A loop of calls that fail before any I/O (invalid requests) lets other tasks run."""
    config = RouterConfig(providers={"m": ProviderConfig(kind="mock")})
    async with open_router(config) as router:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            for _ in range(3):
                ticks += 1
                await trio.lowlevel.checkpoint()

        bad = ChatRequest(model="m:x", messages=[Message.user("hi")], temperature=5.0)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker)
            for _ in range(10):
                with pytest.raises(LLMError):
                    await router.complete(bad)
            assert ticks == 3


async def test_finished_requests_leave_no_reference_cycles(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Invariant: a request that succeeded leaves nothing for the cyclic garbage collector.

    Everything a request allocates is freed by reference counting when it ends — on a
    single target, a fallback route, a hedged race (the hedge fires and loses), a stream
    and an embedding.  A cycle per request (a closure holding the race that holds the
    closure) made the collector run every few dozen requests, with pauses of tens of
    milliseconds at a hundred concurrent requests.
    """
    config = RouterConfig(
        providers={"a": mock(), "b": mock()},
        routes={
            "pair": RouteConfig(targets=["a:m", "b:m"]),
            "hedged": RouteConfig(
                targets=["a:m", "b:m"], hedge=HedgeConfig(delay=0.01, max_attempts=2)
            ),
        },
    )
    providers = {
        "a": MockProvider(name="a", latency=0.05, record=False),
        "b": MockProvider(name="b", latency=0.001, record=False),
    }
    async with open_router(config, providers=providers) as router:

        async def complete(model: str) -> None:
            await router.complete(chat(model))

        async def stream(model: str) -> None:
            async with router.stream(chat(model)) as events:
                async for _ in events:
                    pass

        async def embed(model: str) -> None:
            await router.embed(model, ["some text"])

        calls = [
            (complete, "a:m"),
            (complete, "pair"),
            (complete, "hedged"),
            (stream, "a:m"),
            (stream, "hedged"),
            (embed, "a:m"),
        ]
        for call, model in calls:
            await call(model)  # first use: caches, lazily built state
        gc.collect()
        gc.disable()
        try:
            for call, model in calls * 20:
                await call(model)
            unreachable = gc.collect()
        finally:
            gc.enable()
        assert unreachable == 0
        stats = router.statistics()
        assert stats.hedge_wins > 0  # hedges fired, and the losers were cancelled


async def test_a_fallback_whose_caller_was_just_cancelled_is_neither_sent_nor_charged(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The caller is cancelled in the instant the first target's error arrives (its task
    woken by a value, not by Cancelled): the fallback takes no permit, is not sent and
    costs nothing — admission checks for cancellation before it grants."""

    class AnswersWhenTold(MockProvider):
        def __init__(self) -> None:
            super().__init__(name="a")
            self.answer = trio.Event()

        async def complete(self, request: ChatRequest) -> Any:
            await self.answer.wait()
            raise ServerError("500", provider=self.name)

    a = AnswersWhenTold()
    b = MockProvider(name="b", latency=1.0)
    cfg = RouterConfig(
        providers={
            "a": ProviderConfig(kind="mock", retry=RetryConfig(max_attempts=1)),
            "b": ProviderConfig(kind="mock", rpm=60),
        },
        routes={"r": RouteConfig(targets=["a:m", "b:m"])},
        models={"b:m": ModelConfig(input_price=1000.0, output_price=1000.0)},
    )
    async with open_router(cfg, providers={"a": a, "b": b}) as router:
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:

                async def upstream() -> None:
                    await trio.sleep(0.5)
                    a.answer.set()  # wakes the router's task with a value...
                    scope.cancel()  # ...and its caller is cancelled in the same instant

                nursery.start_soon(upstream)
                await router.complete(chat("r"))
        stats = router.statistics()
        assert b.calls == []
        assert stats.providers["b"].admitted == 0
        assert "b:m" not in stats.spend_by_target  # a's failed prompt is all that was spent


async def test_a_hedge_launched_as_the_race_is_won_is_neither_sent_nor_charged(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A hedge whose task starts in the instant the primary wins (trio runs a batch in
    random order, so the scenario repeats) never reaches its provider: no permit, no
    call, no wasted tokens, no spend."""
    for _ in range(30):
        a = MockProvider(name="a", default=MockResponse(text="a", latency=0.25))
        b = MockProvider(name="b", default=MockResponse(text="b", latency=1.0))
        cfg = RouterConfig(
            providers={"a": mock(), "b": ProviderConfig(kind="mock", rpm=60)},
            routes={
                "r": RouteConfig(
                    targets=["a:m", "b:m"], hedge=HedgeConfig(max_attempts=2, delay=0.25)
                )
            },
            models={"b:m": ModelConfig(input_price=1000.0, output_price=1000.0)},
        )
        async with open_router(cfg, providers={"a": a, "b": b}) as router:
            response = await router.complete(chat("r"))
            stats = router.statistics()
            assert response.provider == "a"
            assert b.calls == []
            assert stats.providers["b"].admitted == 0
            assert stats.wasted_tokens == 0
            assert stats.spend_by_target == {}


async def test_a_due_breaker_transition_comes_before_the_lone_attempt(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """On a single-target route, a breaker whose open time is up turns half-open as the
    request is planned (if the actor's watcher has not already): BreakerChanged comes
    before AttemptStarted, as on any route.  Trio runs a batch in random order, so the
    scenario repeats."""
    for _ in range(20):
        a = MockProvider(name="a", responses=[MockResponse(error=ServerError("x"), latency=0.1)])
        cfg = RouterConfig(
            providers={
                "a": ProviderConfig(
                    kind="mock",
                    retry=RetryConfig(max_attempts=1),
                    breaker=BreakerConfig(minimum_calls=1, open_duration=1.0),
                )
            }
        )
        async with open_router(cfg, providers={"a": a}) as router:
            seen: list[str] = []
            router.add_listener(lambda event, seen=seen: seen.append(type(event).__name__))
            with pytest.raises(ServerError):
                await router.complete(chat("a:m"))
            seen.clear()
            retry_at = router._actors["a"].breaker.retry_at
            assert retry_at is not None
            await trio.sleep_until(retry_at)  # the request arrives as the breaker falls due
            await router.complete(chat("a:m"))
            assert seen.index("BreakerChanged") < seen.index("AttemptStarted")
