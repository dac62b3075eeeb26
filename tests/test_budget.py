"""Spend caps: reserved before sending, reconciled after, never crossed."""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from providers import Usage
from router import ChatRequest, Message, open_router
from router._budget import Budget, period_seconds
from router.config import (
    BudgetConfig,
    ModelConfig,
    ProviderConfig,
    RouteConfig,
    RouterConfig,
    decode_config,
)
from router.errors import BudgetExceeded, ConfigError
from router.testing import MockProvider, MockResponse

PRICES = ModelConfig(input_price=1.0, output_price=2.0)  # $ per million tokens


def chat(model: str = "a:m", max_tokens: int = 100) -> ChatRequest:
    return ChatRequest(model=model, messages=[Message.user("hi")], max_tokens=max_tokens)


def answer(input_tokens: int = 5, output_tokens: int = 50, latency: float = 1.0) -> MockResponse:
    return MockResponse(
        text="ok",
        latency=latency,
        usage=Usage(input_tokens=input_tokens, output_tokens=output_tokens),
    )


def test_budget_window_rolls_and_reservations_carry_over() -> None:
    """Spend restarts each period; an in-flight reservation survives the roll."""
    b = Budget("router", limit=1.0, period=10.0, start=0.0)
    assert b.try_reserve(0.4, now=0.0)
    b.settle(0.4, 0.4, now=1.0)
    assert b.try_reserve(0.5, now=2.0)
    assert not b.try_reserve(0.2, now=3.0)  # 0.4 spent + 0.5 reserved + 0.2 > 1
    assert b.headroom(now=10.0) == pytest.approx(0.5)  # spent reset, 0.5 still reserved
    b.settle(0.5, 0.3, now=11.0)
    stats = b.statistics(now=11.0)
    assert (stats.spent, stats.reserved, stats.resets_at) == (pytest.approx(0.3), 0.0, 20.0)


def test_period_names() -> None:
    """Named periods are hour, day, week and 30-day month; numbers are seconds."""
    assert [period_seconds(p) for p in ("hour", "day", "week", "month", 90)] == [
        3600.0,
        86400.0,
        604800.0,
        2592000.0,
        90.0,
    ]


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("budget = { limit = 0.0 }", "$.budget.limit"),
        ("budget = { limit = 5.0, period = 'fortnight' }", "$.budget.period"),
        ("budget = { limit = 5.0, extra = 1 }", "$.budget.extra"),
    ],
)
def test_bad_budget_config_names_the_field(text: str, path: str) -> None:
    """A bad budget is a ConfigError whose path names the field."""
    with pytest.raises(ConfigError) as info:
        decode_config(f'{text}\n[providers.a]\nkind = "mock"\n')
    assert info.value.path == path


@settings(max_examples=25, deadline=None)
@given(
    limit=st.floats(0.0005, 0.05),
    n=st.integers(1, 1000),
    max_tokens=st.integers(10, 400),
    output=st.integers(0, 400),
    latency=st.floats(0.0, 5.0),
)
def test_cap_is_never_crossed_by_concurrent_requests(
    limit: float, n: int, max_tokens: int, output: int, latency: float
) -> None:
    """Invariant: with answers no dearer than their estimate, spent + reserved ≤ limit at
    every moment, however many requests run at once, and every refusal is BudgetExceeded."""
    output = min(output, max_tokens)  # the provider honours max_tokens
    peaks: list[float] = []

    async def main() -> None:
        config = RouterConfig(
            providers={"a": ProviderConfig(kind="mock")},
            models={"a:m": PRICES},
            budget=BudgetConfig(limit=limit, period="hour"),
        )
        mock = MockProvider(name="a", default=answer(1, output, latency), record=False)
        async with open_router(config, providers={"a": mock}) as router:

            async def one() -> None:
                try:
                    await router.complete(chat(max_tokens=max_tokens))
                except BudgetExceeded:
                    pass
                stats = router.statistics().budgets[0]
                peaks.append(stats.spent + stats.reserved)

            async with trio.open_nursery() as nursery:
                for _ in range(n):
                    nursery.start_soon(one)
                    stats = router.statistics().budgets[0]
                    peaks.append(stats.spent + stats.reserved)
            final = router.statistics()
            assert final.spend == pytest.approx(final.budgets[0].spent)
            assert final.budgets[0].reserved == pytest.approx(0.0, abs=1e-12)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert max(peaks) <= limit + 1e-12


async def test_refused_before_sending_and_counted(autojump_clock: trio.abc.Clock) -> None:
    """Over the cap the request is refused at once, and the provider never sees it."""
    config = RouterConfig(
        providers={"a": ProviderConfig(kind="mock")},
        models={"a:m": PRICES},
        budget=BudgetConfig(limit=0.0005, period="day"),
    )
    mock = MockProvider(name="a", default=answer())
    async with open_router(config, providers={"a": mock}) as router:
        await router.complete(chat())  # ~$0.0002 reserved, $0.000105 spent
        await router.complete(chat())
        start = trio.current_time()
        with pytest.raises(BudgetExceeded, match="router spend cap") as info:
            await router.complete(chat(max_tokens=1000))
        assert trio.current_time() == start
        assert "resets at t=86400" in str(info.value)
        assert len(mock.calls) == 2
        stats = router.statistics()
        assert stats.spend == pytest.approx(2 * (5 * 1.0 + 50 * 2.0) / 1e6)
        assert stats.spend_by_target == {"a:m": pytest.approx(stats.spend)}


async def test_provider_cap_fails_over_to_another_provider(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A provider over its own cap is left out of the plan; the route uses the next."""
    config = RouterConfig(
        providers={
            "a": ProviderConfig(kind="mock", budget=BudgetConfig(limit=0.0003)),
            "b": ProviderConfig(kind="mock"),
        },
        routes={"r": RouteConfig(targets=["a:m", "b:m"])},
        models={"m": PRICES},
    )
    a = MockProvider(name="a", default=answer())
    b = MockProvider(name="b", default=answer())
    async with open_router(config, providers={"a": a, "b": b}) as router:
        first = await router.complete(chat("r"))
        second = await router.complete(chat("r"))
        assert (first.provider, second.provider) == ("a", "b")
        plan = router.plan("r")
        assert plan.targets[0].provider == "a"  # a plan without needs costs nothing
        assert first.cost == pytest.approx((5 * 1.0 + 50 * 2.0) / 1e6)
        assert first.attempts[0].cost == pytest.approx(first.cost)


async def test_route_cap_and_lost_hedge_is_charged_its_prompt(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A hedge loser is charged the prompt it sent; an unpriced model costs nothing."""
    from router.config import HedgeConfig

    config = RouterConfig(
        providers={"a": ProviderConfig(kind="mock"), "b": ProviderConfig(kind="mock")},
        routes={
            "r": RouteConfig(
                targets=["a:m", "b:m"],
                hedge=HedgeConfig(max_attempts=2, delay=0.5),
                budget=BudgetConfig(limit=1.0),
            )
        },
        models={"m": PRICES},
    )
    a = MockProvider(name="a", default=answer(latency=10.0))
    b = MockProvider(name="b", default=answer(latency=1.0))
    async with open_router(config, providers={"a": a, "b": b}) as router:
        response = await router.complete(chat("r"))
        loser, winner = response.attempts
        assert (loser.outcome, winner.outcome) == ("cancelled", "won")
        assert loser.cost == pytest.approx(loser.wasted_tokens * 1.0 / 1e6)
        assert loser.cost > 0
        stats = router.statistics()
        assert stats.spend == pytest.approx(loser.cost + winner.cost)
        assert stats.budgets[0].scope == "route r"
        assert stats.budgets[0].spent == pytest.approx(stats.spend)


async def test_stream_is_charged_when_it_ends(autojump_clock: trio.abc.Clock) -> None:
    """A stream holds its reservation until it ends, then pays what it used."""
    config = RouterConfig(
        providers={"a": ProviderConfig(kind="mock")},
        models={"a:m": PRICES},
        budget=BudgetConfig(limit=1.0),
    )
    mock = MockProvider(name="a", default=answer())
    async with open_router(config, providers={"a": mock}) as router:
        async with router.stream(chat()) as events:
            async for _ in events:
                assert router.statistics().budgets[0].reserved > 0
        stats = router.statistics().budgets[0]
        assert stats.reserved == pytest.approx(0.0, abs=1e-12)
        assert stats.spent == pytest.approx((5 * 1.0 + 50 * 2.0) / 1e6)
        assert not math.isnan(stats.spent)


async def test_embeddings_and_streams_carry_their_cost_in_the_trace(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Embeddings come back with their attempts and cost; a stream's winner shows its cost."""
    config = RouterConfig(providers={"a": ProviderConfig(kind="mock")}, models={"a:m": PRICES})
    mock = MockProvider(name="a", default=answer())
    async with open_router(config, providers={"a": mock}) as router:
        vectors = await router.embed("a:m", ["one", "two"])
        assert [a.outcome for a in vectors.attempts] == ["won"]
        assert vectors.cost == pytest.approx(vectors.usage.input_tokens * 1.0 / 1e6)
        assert vectors.attempts[0].cost == pytest.approx(vectors.cost)
        async with router.stream(chat()) as events:
            async for _ in events:
                pass
        response = events.response
        assert response is not None
        assert response.attempts[0].cost == pytest.approx(response.cost)
        assert response.cost == pytest.approx((5 * 1.0 + 50 * 2.0) / 1e6)
