"""Single guarantees the chaos mix relies on, each pinned alone on virtual time."""

from __future__ import annotations

import math

import pytest
import trio

from router import ChatRequest, Message, open_router
from router.config import ProviderConfig, RouteConfig, RouterConfig, decode_config
from router.errors import RateLimited
from router.testing import MockProvider, MockResponse

#: The per-attempt first-token limit the router takes (a ProviderConfig field).
FIRST_TOKEN_FIELD = "first_token_timeout"


def _ask(model: str) -> ChatRequest:
    return ChatRequest(model=model, messages=[Message.user("hi")])


async def test_a_huge_retry_after_takes_a_provider_out_of_routing_visibly(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """retry-after: 86400 (over max_retry_after) is no silent day-long wait: the provider
    is out of routing, health() says why and until when, a route fails over at once, a
    direct call is refused at once with RateLimited saying when, and nothing is sent."""
    mock = MockProvider(
        name="p", responses=[RateLimited("slow down", retry_after=86400.0)], default="fine"
    )
    other = MockProvider(name="q", default="from q")
    config = RouterConfig(
        providers={"p": ProviderConfig(kind="mock"), "q": ProviderConfig(kind="mock")},
        routes={"r": RouteConfig(targets=["p:mock-model", "q:mock-model"])},
    )
    async with open_router(config, providers={"p": mock, "q": other}) as router:
        with trio.fail_after(5.0):
            first = await router.complete(_ask("r"))
        assert first.text == "from q"  # p answered 429, the route failed over
        health = router.health()["p"]
        assert health.status == "unhealthy"
        assert "86400" in (health.reason or "")
        start = trio.current_time()
        with trio.fail_after(5.0):
            again = await router.complete(_ask("r"))
        assert again.text == "from q"
        with pytest.raises(RateLimited) as refused:
            await router.complete(_ask("p:mock-model"))
        assert trio.current_time() == start  # refused at once: no wait, no call
        assert refused.value.retry_after is not None
        assert refused.value.retry_after > 80000
        assert len(mock.calls) == 1


async def test_a_silent_first_attempt_fails_over_within_the_first_token_limit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A target that never sends a first token is given up after its first_token_timeout."""
    hang = MockProvider(name="hang", default=MockResponse(latency=math.inf))
    ok = MockProvider(name="ok", default="fine")
    config = decode_config(
        f"""
        [providers.hang]
        kind = "mock"
        {FIRST_TOKEN_FIELD} = 2.0
        [providers.ok]
        kind = "mock"
        [routes.r]
        targets = ["hang:mock-model", "ok:mock-model"]
        """
    )
    async with open_router(config, providers={"hang": hang, "ok": ok}) as router:
        start = trio.current_time()
        with trio.fail_after(30.0):
            async with router.stream(_ask("r")) as events:
                text = "".join([getattr(e, "text", "") async for e in events])
        assert "fine" in text
        assert trio.current_time() - start == 2.0


async def test_the_first_attempt_goes_out_whatever_the_latency_prediction(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A provider predicted slower than the caller's deadline still gets the first attempt."""
    slow = MockProvider(name="slow", default=MockResponse(text="late", latency=3.0))
    config = RouterConfig(
        providers={"slow": ProviderConfig(kind="mock")},
        routes={"r": RouteConfig(targets=["slow:mock-model"])},
    )
    async with open_router(config, providers={"slow": slow}) as router:
        for _ in range(25):  # teach the router that "slow" takes 3 s
            await router.complete(_ask("r"))
        before = len(slow.calls)
        start = trio.current_time()
        with trio.move_on_after(1.0):
            await router.complete(_ask("r"))
        assert len(slow.calls) == before + 1  # it went out
        assert slow.calls[-1].outcome == "cancelled"
        assert trio.current_time() - start == 1.0
