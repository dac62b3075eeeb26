"""Health semantics and the router's numbers, through a real router on virtual time.

Panic routing (an unhealthy route tries its unhealthy targets rather than fail), the
hedge budget of a cold router, and ``router.plan`` of a real request.  The pure rules
are properties in test_policy.py; these check that the router does what they say.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import pytest
import trio
import trio.testing

from providers import AllProvidersFailed, ConfigError, Overloaded, ServerError, TextDelta
from router import ChatRequest, Message, Router, open_router
from router._config import decode_config
from router.config import (
    BreakerConfig,
    HedgeConfig,
    ModelConfig,
    ProviderConfig,
    RetryConfig,
    RouteConfig,
    RouterConfig,
)
from router.policy import Needs
from router.testing import MockProvider, MockResponse

NO_RETRY = RetryConfig(max_attempts=1)
# Two failures trip a breaker, for 10 s.
TRIP_FAST = BreakerConfig(minimum_calls=2, open_duration=10.0, half_open_probes=1)


def chat(model: str, text: str = "hi") -> ChatRequest:
    """A one-message request for ``model``."""
    return ChatRequest(model=model, messages=[Message.user(text)])


def failing_twice(name: str) -> MockProvider:
    """A mock that fails its first two calls (tripping TRIP_FAST), then echoes."""
    return MockProvider(name=name, responses=[ServerError("500")] * 2)


def router_config(names: list[str], route: RouteConfig, **kw: Any) -> RouterConfig:
    """Mock providers ``names`` with fast-tripping breakers and no retries, route ``r``."""
    providers = {n: ProviderConfig(kind="mock", breaker=TRIP_FAST, retry=NO_RETRY) for n in names}
    return RouterConfig(providers=providers, routes={"r": route}, **kw)


async def trip(router: Router, *names: str) -> None:
    """Open the breakers of ``names`` with two failing direct calls each, at t=0."""
    for name in names:
        for _ in range(2):
            with pytest.raises(ServerError):
                await router.complete(chat(f"{name}:m"))
        assert router.statistics().providers[name].breaker == "open"


async def test_every_breaker_open_route_tries_them_in_panic(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Both targets' breakers open (0 of 2 routable < 50%): the request goes to the first
    through its open breaker and is answered at once, instead of AllProvidersFailed;
    panic is counted per request and logged once when the route enters it, once when it
    leaves it (when the breakers half-open at t=10)."""
    caplog.set_level(logging.INFO, logger="trio_llm_router")
    a, b = failing_twice("a"), failing_twice("b")
    # Panic off for the direct calls that trip the breakers; the route's threshold is 0.5.
    route = RouteConfig(targets=["a:m", "b:m"], panic_threshold=0.5)
    cfg = router_config(["a", "b"], route, panic_threshold=0.0)
    async with open_router(cfg, providers={"a": a, "b": b}) as router:
        await trip(router, "a", "b")
        await trio.sleep_until(3.0)
        plan = router.plan(chat("r"))
        assert plan.panic
        assert [(c.provider, c.panic) for c in plan.targets] == [("a", True), ("b", True)]
        for _ in range(2):
            resp = await router.complete(chat("r"))
            assert (resp.provider, resp.text, trio.current_time()) == ("a", "echo: hi", 3.0)
            assert [(x.provider, x.kind, x.outcome) for x in resp.attempts] == [
                ("a", "primary", "won")
            ]
        stats = router.statistics()
        assert stats.panic_routed == 2
        # A panic attempt's outcome does not move an open breaker: it opens for its time.
        assert stats.providers["a"].breaker == "open"
        async with router.stream(chat("r")) as events:
            text = "".join([e.text async for e in events if isinstance(e, TextDelta)])
        assert text == "echo: hi"
        assert router.statistics().panic_routed == 3

        await trio.sleep_until(10.0)  # half-open with a free probe slot: routable again
        resp = await router.complete(chat("r"))
        assert resp.provider == "a"
        assert router.statistics().panic_routed == 3
    panics = [r for r in caplog.records if "panic routing" in r.getMessage()]
    assert [(r.levelname, r.getMessage()) for r in panics] == [
        (
            "WARNING",
            "route r: panic routing: 0 of 2 targets routable (threshold 0.5); "
            "trying the unhealthy ones too: a:m, b:m",
        ),
        ("INFO", "route r: out of panic routing"),
    ]


async def test_panic_tries_the_routable_targets_first(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Three targets, two open (1 of 3 < 50%): the healthy one goes first; when it fails
    the open ones follow, in route order, and the first of them answers."""
    a, b = failing_twice("a"), failing_twice("b")
    c = MockProvider(name="c", default=MockResponse(error=ServerError("down"), latency=0.5))
    route = RouteConfig(targets=["a:m", "b:m", "c:m"], panic_threshold=0.5)
    cfg = router_config(["a", "b", "c"], route, panic_threshold=0.0)
    async with open_router(cfg, providers={"a": a, "b": b, "c": c}) as router:
        await trip(router, "a", "b")
        resp = await router.complete(chat("r"))
        assert [(x.provider, x.kind, x.outcome) for x in resp.attempts] == [
            ("c", "primary", "failed"),
            ("a", "fallback", "won"),
        ]
        assert trio.current_time() == 0.5
        assert router.statistics().panic_routed == 1


async def test_panic_off_refuses_at_once_saying_until_when(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A route with panic_threshold 0 and every breaker open fails at once, without
    waiting and without a call: each attempt an Overloaded saying until when."""
    a, b = failing_twice("a"), failing_twice("b")
    route = RouteConfig(targets=["a:m", "b:m"], panic_threshold=0.0)
    retrying = RetryConfig(max_attempts=3)
    providers = {
        n: ProviderConfig(kind="mock", breaker=TRIP_FAST, retry=retrying) for n in ("a", "b")
    }
    cfg = RouterConfig(providers=providers, routes={"r": route}, panic_threshold=0.0)
    async with open_router(cfg, providers={"a": a, "b": b}, seed=3) as router:
        for name, mock in (("a", a), ("b", b)):
            while router.statistics().providers[name].breaker != "open":
                with pytest.raises((ServerError, Overloaded)):
                    await router.complete(chat(f"{name}:m"))
            assert len(mock.calls) == 2
        opened = trio.current_time()
        retries = router.statistics().retries
        with pytest.raises(AllProvidersFailed) as info:
            await router.complete(chat("r"))
        assert trio.current_time() == opened
        assert (len(a.calls), len(b.calls)) == (2, 2)
        assert [x.error_type for x in info.value.attempts] == ["Overloaded", "Overloaded"]
        for attempt in info.value.attempts:
            assert attempt.reason is not None
            assert re.search(
                r"open until t=\d+\.\d{3} \([\d.]+s from now\); not sent", attempt.reason
            )
        stats = router.statistics()
        assert (stats.panic_routed, stats.retries) == (0, retries)  # no retry, no wait


async def test_a_cold_router_hedges_one_request_not_the_first_ten(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Ten slow requests at t=0 on a hedged route (ratio 0.1, burst 10): the cold budget
    starts at one hedge and the ten deposit 1 more, so two are hedged at t=0.25 (not
    all ten, as from a full bucket)."""
    slow = {n: MockProvider(name=n, default=MockResponse(text=n, latency=1.0)) for n in "ab"}
    hedge = HedgeConfig(max_attempts=2, delay=0.25)
    cfg = RouterConfig(
        providers={n: ProviderConfig(kind="mock") for n in "ab"},
        routes={"r": RouteConfig(targets=["a:m", "b:m"], hedge=hedge)},
    )
    async with open_router(cfg, providers=slow) as router:
        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(router.complete, chat("r"))
        stats = router.statistics()
        assert (stats.requests, stats.hedges) == (10, 2)
        assert [c.started_at for c in slow["b"].calls] == [0.25, 0.25]


PRICES = {
    "a:big": ModelConfig(input_price=300.0, output_price=1200.0, context_window=200_000),
    "b:small": ModelConfig(input_price=3.0, output_price=12.0, context_window=2_000),
}


async def test_plan_takes_the_request_and_counts_its_tokens() -> None:
    """router.plan(request) computes the request's needs as complete() does: least-cost
    puts the 100x cheaper target first, and a prompt too big for its window excludes it;
    plan(model, needs) still plans for the needs given."""
    cfg = RouterConfig(
        providers={n: ProviderConfig(kind="mock") for n in "ab"},
        routes={"r": RouteConfig(targets=["a:big", "b:small"], strategy="least-cost")},
        models=PRICES,
    )
    async with open_router(cfg) as router:
        plan = router.plan(chat("r", "hello there"))
        assert [c.target for c in plan.targets] == ["b:small", "a:big"]
        big = router.plan(chat("r", "word " * 4_000))
        assert [c.target for c in big.targets] == ["a:big"]
        assert big.excluded[0].target == "b:small"
        assert "context window is 2000" in big.excluded[0].reason
        # A model string and explicit needs: as before.
        assert [c.target for c in router.plan("r", Needs(input_tokens=10)).targets] == [
            "b:small",
            "a:big",
        ]
        assert router.plan("r").targets[0].target == "a:big"  # no tokens: a tie, route order


def test_panic_threshold_is_configured_per_route_and_router_wide() -> None:
    """panic_threshold decodes from TOML on the router and on a route; a value outside
    [0, 1] is a ConfigError naming its path."""
    config = decode_config(
        """
        panic_threshold = 0.25
        [providers.a]
        kind = "mock"
        [routes.fast]
        targets = ["a:m"]
        panic_threshold = 0.0
        [routes.slow]
        targets = ["a:m"]
        """
    )
    assert config.panic_threshold == 0.25
    assert config.routes["fast"].panic_threshold == 0.0
    assert config.routes["slow"].panic_threshold is None
    assert RouterConfig(providers=config.providers).panic_threshold == 0.5
    for text, path in (
        (
            '[providers.a]\nkind = "mock"\n[routes.r]\ntargets = ["a:m"]\npanic_threshold = 1.5\n',
            "$.routes.r.panic_threshold",
        ),
        ('panic_threshold = -0.1\n[providers.a]\nkind = "mock"\n', "$.panic_threshold"),
    ):
        with pytest.raises(ConfigError, match=r"panic_threshold.*must be in \[0, 1\]") as info:
            decode_config(text)
        assert info.value.path == path
