"""Spend caps shared on a real Redis: several routers (each its own process id) or OS
processes together never cross a cap; Redis down means a fair share each, and the spend
of the gap is written back when it returns."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import coredis
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from providers import Usage
from providers.testing import Fixed, Scenario, open_fake_upstream
from router import ChatRequest, Message, open_router
from router.config import BudgetConfig, ModelConfig, ProviderConfig, RouterConfig, SharedConfig
from router.errors import BudgetExceeded
from router.testing import MockProvider, MockResponse
from tests._helpers import run_workers
from tests._redis import RedisServer

ROOT = Path(__file__).resolve().parent.parent
PRICES = ModelConfig(input_price=1.0, output_price=2.0)  # $ per million tokens


def _config(url: str, prefix: str, limit: float) -> RouterConfig:
    return RouterConfig(
        providers={"a": ProviderConfig(kind="mock")},
        models={"a:m": PRICES},
        budget=BudgetConfig(limit=limit, period="day"),
        shared=SharedConfig(redis_url=url, prefix=prefix, timeout=2.0),
    )


def _chat(max_tokens: int) -> ChatRequest:
    return ChatRequest(model="a:m", messages=[Message.user("hi")], max_tokens=max_tokens)


async def _redis_budget(url: str, prefix: str) -> tuple[float, float]:
    """Redis's own numbers for the router cap: (spent, reserved by every process)."""
    client: coredis.Redis[bytes] = coredis.Redis.from_url(url)
    async with client:
        fields = await client.hgetall(f"{prefix}:{{budgets}}:router")
    spent = float(fields.get(b"s", b"0"))
    reserved = sum(float(v) for k, v in fields.items() if k.startswith(b"r:"))
    return spent, reserved


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    routers=st.integers(2, 4),
    callers=st.integers(5, 25),
    limit=st.floats(0.0005, 0.004),
    max_tokens=st.integers(20, 300),
    output=st.integers(0, 300),
    latency=st.floats(0.0, 0.02),
)
def test_routers_together_never_cross_a_shared_cap(
    redis_server: RedisServer,
    routers: int,
    callers: int,
    limit: float,
    max_tokens: int,
    output: int,
    latency: float,
) -> None:
    """Invariant: with answers no dearer than their estimates, N routers sharing a cap
    spend at most the cap together (each alone would allow it all: N x), every view they
    get satisfies spent + reserved <= limit, every refusal is BudgetExceeded, and at the
    end Redis holds exactly their spend and no reservation."""
    output = min(output, max_tokens)
    prefix = f"budget-{uuid.uuid4().hex[:8]}"
    peaks: list[float] = []
    spends: list[float] = []

    async def one_router() -> None:
        mock = MockProvider(
            name="a",
            default=MockResponse(
                text="ok", latency=latency, usage=Usage(input_tokens=1, output_tokens=output)
            ),
            record=False,
        )
        config = _config(redis_server.url, prefix, limit)
        async with open_router(config, providers={"a": mock}) as router:

            async def call() -> None:
                try:
                    await router.complete(_chat(max_tokens))
                except BudgetExceeded:
                    pass
                b = router.statistics().budgets[0]
                peaks.append(b.spent + b.reserved)

            async with trio.open_nursery() as nursery:
                for _ in range(callers):
                    nursery.start_soon(call)
            spends.append(router.statistics().spend)

    async def main() -> tuple[float, float]:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for _ in range(routers):
                    nursery.start_soon(one_router)
        return await _redis_budget(redis_server.url, prefix)

    spent, reserved = trio.run(main)
    assert sum(spends) <= limit + 1e-12
    assert max(peaks) <= limit + 1e-12
    assert spent == pytest.approx(sum(spends), abs=1e-12)
    assert reserved == pytest.approx(0.0, abs=1e-12)


async def test_redis_down_gives_each_process_its_fair_share_and_the_gap_is_written_back(
    redis_server: RedisServer,
) -> None:
    """With Redis frozen, each of two routers spends at most half the cap (the fair
    share: 2 live processes); when Redis answers again, what they spent meanwhile is
    written back, so Redis's spend is theirs in total."""
    limit = 0.002
    cost = (1 * 1.0 + 100 * 2.0) / 1e6  # an answer's actual cost
    prefix = "fair"
    config = _config(redis_server.url, prefix, limit)
    config = RouterConfig(
        providers=config.providers,
        models=config.models,
        budget=config.budget,
        shared=SharedConfig(redis_url=redis_server.url, prefix=prefix, timeout=0.05, heartbeat=0.1),
    )
    answer = MockResponse(text="ok", usage=Usage(input_tokens=1, output_tokens=100))
    mocks = [MockProvider(name="a", default=answer) for _ in range(2)]
    async with (
        open_router(config, providers={"a": mocks[0]}) as a,
        open_router(config, providers={"a": mocks[1]}) as b,
    ):
        for _ in range(100):  # both routers seen alive by both (heartbeats)
            if min(r.statistics().shared.processes for r in (a, b)) == 2:  # type: ignore[union-attr]
                break
            await trio.sleep(0.05)
        redis_server.pause()
        try:
            for router in (a, b):
                refused = 0
                for _ in range(20):
                    try:
                        await router.complete(_chat(100))
                    except BudgetExceeded:
                        refused += 1
                assert router.statistics().shared.state == "local"  # type: ignore[union-attr]
                assert refused > 0
                assert router.statistics().spend <= limit / 2 + 1e-12
        finally:
            redis_server.resume()
        total = a.statistics().spend + b.statistics().spend
        assert total > limit / 2  # both spent: the fallback did not stop everything
        with trio.fail_after(5):
            while True:
                spent, reserved = await _redis_budget(redis_server.url, prefix)
                if spent == pytest.approx(total, abs=1e-12):
                    break
                await trio.sleep(0.05)
        assert reserved == pytest.approx(0.0, abs=1e-12)
        assert total == pytest.approx(cost * (len(mocks[0].calls) + len(mocks[1].calls)))


async def test_three_os_processes_never_cross_a_shared_cap(redis_server: RedisServer) -> None:
    """3 OS processes x 5 callers on the fake upstream, started together, each caller
    asking again until the $ cap refuses it: shared, they spend at most the cap together
    (three unshared ones would spend three times it), every caller ends refused by
    BudgetExceeded, and Redis holds exactly their spend.

    Each caller may ask up to 400 times, more than one caller alone needs to spend the
    whole cap (~180 answers of ~$0.000011): so every caller meets the cap, however the
    answers fall among the callers and however staggered the processes start on a busy
    machine (with 50, one caller of a process that got most of the cap could run out of
    tries first).  Each process stays on shared limits throughout: the guarantee is
    Redis's; a fallback (a round trip over ``timeout``) would be a fair share of the
    cap's last view, not this test's subject.

    The lower bound: a caller is refused when spent + reserved + estimate > limit, and
    at most 15 estimates (~$0.00005 each) are reserved at once, so the spend reaches at
    least limit - 15 estimates > limit / 2."""
    limit, tries, callers, processes = 0.002, 400, 5, 3
    async with open_fake_upstream({"up": Scenario(latency=Fixed(0.005))}) as up:
        settings_ = {
            "redis_url": redis_server.url,
            "prefix": "budget-os",
            "base_url": up.base_url("up", "openai"),
            "callers": callers,
            "tries": tries,
            "limit": limit,
            # Generous, as in the in-process tests: a loaded 2-core machine can stall a
            # round trip past 250 ms, and a process would fall back to local limits.
            "timeout": 2.0,
        }
        with trio.fail_after(90):
            summaries = await run_workers("tests._shared_budget_worker", settings_, processes)
        requests = len(up.requests)
    spent, reserved = await _redis_budget(redis_server.url, "budget-os")
    # Every process's summary (answers by caller, refusals, spend, shared state) and
    # Redis's numbers, shown with any failure.
    shown = json.dumps(
        {"summaries": summaries, "redis": {"spent": spent, "reserved": reserved}}, indent=1
    )
    for s in summaries:
        assert s["shared"]["state"] == "shared", shown
        assert s["shared"]["switches"] == 1, shown  # the first, to shared; no fallback
        assert s["foreign"] == [], shown
        assert s["errors"] == {}, shown
        assert s["refused"] == callers, shown
    total = sum(s["spend"] for s in summaries)
    answers = sum(s["ok"] for s in summaries)
    assert total <= limit + 1e-12, shown
    assert total >= limit / 2, shown  # the cap stopped them, not a lack of callers
    assert tries * total / answers > limit, shown  # one caller alone could spend the cap
    assert answers == requests, shown
    assert spent == pytest.approx(total, abs=1e-12), shown
    assert reserved == pytest.approx(0.0, abs=1e-12), shown


async def test_a_dead_process_reservation_is_dropped_after_its_ttl(
    redis_server: RedisServer,
) -> None:
    """budget.lua: a process that reserved and then went silent holds the cap only
    until its ttl (three heartbeats in the router) has passed; a live process's
    reservation then fits, and the dead one's is gone from Redis."""
    from router._shared._client import load_script

    script_text = load_script("budget")
    client: coredis.Redis[bytes] = coredis.Redis.from_url(redis_server.url)
    key = "dead:{budgets}:router"
    ttl_us = 300_000
    day_us = 86_400 * 1_000_000

    def reserve(pid: str, dollars: float) -> list[object]:
        # one cap (limit $1, a day), no changes, one reservation of `dollars`
        return [pid, ttl_us, "1", day_us, 0, 0, 0, 1, 1, 1, repr(dollars)]

    async with client:
        script = client.register_script(script_text)
        first = await script(keys=[key], args=reserve("dead", 0.8))
        assert int(first[0]) == 0  # reserved
        refused = await script(keys=[key], args=reserve("live", 0.5))
        assert int(refused[0]) == 1  # refused by key 1: 0.8 + 0.5 > 1
        await trio.sleep(ttl_us / 1e6 + 0.1)
        later = await script(keys=[key], args=reserve("live", 0.5))
        assert int(later[0]) == 0
        assert float(later[2]) == pytest.approx(0.5)  # only the live one's reservation
        fields = await client.hgetall(key)
    assert b"r:dead" not in fields
    assert b"h:dead" not in fields
