"""Shared limits when Redis is slow, down, or back; and what one process learns, all
learn.  A real redis-server (killed, frozen, restarted), real time: each test takes a
second or two."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
import trio

from providers.testing import Fault, Scenario, open_fake_upstream
from router import ChatRequest, Message, Router, open_router
from router.config import MockConfig, ProviderConfig, RetryConfig, RouterConfig, SharedConfig
from router.events import SharedLimitsChanged
from tests._redis import RedisServer


def chat(text: str = "hi", model: str = "m:echo") -> ChatRequest:
    return ChatRequest(model=model, messages=[Message.user(text)])


def shared(server: RedisServer, prefix: str, **kw: Any) -> SharedConfig:
    # A generous bound: on a loaded machine a 50 ms one would fall back by itself.
    settings: dict[str, Any] = {
        "timeout": 1.0,
        "heartbeat": 0.1,
        "lease_time": 1.0,
        "max_backoff": 0.2,
    }
    settings.update(kw)
    return SharedConfig(redis_url=server.url, prefix=prefix, **settings)


@asynccontextmanager
async def routers(
    n: int, provider: ProviderConfig, config: SharedConfig, **kw: Any
) -> AsyncIterator[list[Router]]:
    """``n`` routers sharing ``config``'s Redis: ``n`` processes, in one test process."""
    async with AsyncExitStack() as stack:
        opened = [
            await stack.enter_async_context(
                open_router(RouterConfig(providers={"m": provider}, shared=config), **kw)
            )
            for _ in range(n)
        ]
        # Every one has seen the others' heartbeats.
        with trio.fail_after(5):
            for r in opened:
                while (s := r.statistics().shared) is None or s.processes < n:  # noqa: ASYNC110
                    await trio.sleep(0.02)
        yield opened


async def next_state(events: Any) -> SharedLimitsChanged:
    with trio.fail_after(5):
        event = await events.receive()
    assert isinstance(event, SharedLimitsChanged)
    return event


async def test_redis_killed_falls_back_to_fair_share_then_shares_again(
    redis_server: RedisServer,
) -> None:
    """Redis killed: the next request is answered on local limits at once (no wait past
    the bound), an event and health()/statistics() say "local", and each of the two
    processes keeps half the RPM burst; Redis restarted: limits are shared again."""
    provider = ProviderConfig(kind="mock", rpm=120, rpm_burst=4)
    async with (
        routers(2, provider, shared(redis_server, "fb")) as (a, _b),
        a.subscribe(types=(SharedLimitsChanged,)) as events,
    ):
        await a.complete(chat())
        assert a.health()["m"].limits == "shared"
        redis_server.kill()
        start = trio.current_time()
        await a.complete(chat())  # local now: the fair share's bucket is full
        assert trio.current_time() - start < 0.5
        event = await next_state(events)
        assert (event.state, event.processes) == ("local", 2)
        assert event.reason is not None
        assert "Redis" in event.reason
        assert a.health()["m"].limits == "local"
        stats = a.statistics()
        assert stats.shared is not None
        assert (stats.shared.state, stats.shared.processes) == ("local", 2)
        # Fair share: rpm 120 / 2 processes = one a second, burst 4 / 2 = 2.  One
        # token is spent: one more goes at once, the next a second later.
        assert stats.providers["m"].in_flight == 0
        t0 = trio.current_time()
        await a.complete(chat())
        await a.complete(chat())
        assert 0.8 < trio.current_time() - t0 < 1.5
        redis_server.start()
        event = await next_state(events)
        assert (event.state, event.reason) == ("shared", None)
        assert a.health()["m"].limits == "shared"
        await a.complete(chat())


async def test_frozen_redis_costs_a_request_at_most_the_bound(redis_server: RedisServer) -> None:
    """Redis frozen (SIGSTOP: connections open, no answers): a request waits on it no
    longer than ``timeout`` (50 ms), then goes on local limits; unfrozen, shared again."""
    provider = ProviderConfig(kind="mock", rpm=6000)
    async with (
        routers(1, provider, shared(redis_server, "frozen", timeout=0.05)) as (a,),
        a.subscribe(types=(SharedLimitsChanged,)) as events,
    ):
        redis_server.pause()
        try:
            start = trio.current_time()
            await a.complete(chat())
            took = trio.current_time() - start
            event = await next_state(events)
        finally:
            redis_server.resume()
        assert took < 0.05 + 0.25, took
        assert event.state == "local"
        assert event.reason == "Redis did not answer within 50 ms"
        event = await next_state(events)
        assert event.state == "shared"


async def test_a_429_in_one_process_pauses_the_provider_for_all(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Process A gets a 429 with retry-after 1.5 s; process B's request, made 0.1 s
    later, reaches the provider no sooner than the pause allows (B never saw the 429:
    it learns of it from Redis, where A put it one round trip after the 429)."""
    monkeypatch.setenv("SHARED_TEST_KEY", "sk-shared-test")
    retry_after = 1.5
    scenario = Scenario(
        faults=[Fault("status", status=429, retry_after=retry_after, on_requests=[1])]
    )
    async with open_fake_upstream({"up": scenario}) as up:
        provider = ProviderConfig(
            kind="openai-compatible",
            base_url=up.base_url("up", "openai"),
            api_key_env="SHARED_TEST_KEY",
            rpm=6000,
            presets=False,
            retry=RetryConfig(max_attempts=1),
        )
        async with routers(2, provider, shared(redis_server, "learn")) as (a, b):
            with pytest.raises(Exception) as info:
                await a.complete(chat(model="m:fake-model"))
            assert type(info.value).__name__ in {"RateLimited", "AllProvidersFailed"}
            refused_at = up.requests[0].received_at
            # A tells Redis in the background, one round trip after the 429 reached it.
            await trio.sleep(0.1)
            await b.complete(chat(model="m:fake-model"))
            assert len(up.requests) == 2
            gap = up.requests[1].received_at - refused_at
            assert retry_after - 0.1 <= gap <= retry_after + 1.0, gap


async def test_redis_password_never_leaks_when_redis_is_unreachable(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A URL with a password, Redis unreachable: the router starts on local limits, says
    why (event, statistics, log), and the password is in none of it."""
    password = "s3cret-Redis-pw-9f1e"
    port = redis_server.port
    redis_server.kill()
    config = SharedConfig(
        redis_url=f"redis://:{password}@127.0.0.1:{port}/0", prefix="pw", max_backoff=0.1
    )
    seen: list[SharedLimitsChanged] = []
    provider = ProviderConfig(kind="mock", rpm=600)
    async with open_router(RouterConfig(providers={"m": provider}, shared=config)) as router:
        router.add_listener(
            lambda e: seen.append(e) if isinstance(e, SharedLimitsChanged) else None
        )
        await router.complete(chat())
        await trio.sleep(0.3)  # a few reconnection attempts
        stats = router.statistics()
        assert stats.shared is not None
        assert stats.shared.state == "local"
        assert stats.shared.reason is not None
        assert "Redis" in stats.shared.reason
        texts = [repr(stats), repr(router.health()), repr(router), caplog.text, repr(config)]
        texts += [repr(router._shared)]
    assert all(password not in t for t in texts)
    assert any("local" in r.getMessage() for r in caplog.records)


async def test_a_long_call_keeps_its_lease_past_lease_time(redis_server: RedisServer) -> None:
    """A call running longer than lease_time keeps its concurrency slot (renewed every
    heartbeat): another process's request waits for the call to end, not for the
    lease time."""
    provider = ProviderConfig(kind="mock", max_concurrency=1, mock=MockConfig(latency=1.5))
    config = shared(redis_server, "renew", lease_time=0.6, heartbeat=0.1)
    async with routers(2, provider, config) as (a, b):
        start = trio.current_time()
        ended: list[float] = []

        async def long_call() -> None:
            await a.complete(chat())
            ended.append(trio.current_time())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(long_call)
            await trio.sleep(0.1)  # the long call holds the slot
            await b.complete(chat())
            second = trio.current_time()
        # b went only once a's call ended (1.5 s), not when the lease would have
        # expired without renewal (0.6 s); then b's own call took 1.5 s.
        assert ended
        assert second - start >= 1.5 + 1.5 - 0.05, second - start
        assert ended[0] - start < 1.5 + 0.5


async def test_a_window_with_nothing_left_pauses_every_process(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Process A's answer says (x-ratelimit-remaining-requests: 0, reset in ~60 s) that
    the account has nothing left: process B, which never saw that header, holds its
    request for the reset instead of sending it."""
    monkeypatch.setenv("SHARED_TEST_KEY", "sk-shared-test")
    scenario = Scenario(ratelimit_headers=True, ratelimit_requests=1)
    async with open_fake_upstream({"up": scenario}) as up:
        provider = ProviderConfig(
            kind="openai-compatible",
            base_url=up.base_url("up", "openai"),
            api_key_env="SHARED_TEST_KEY",
            presets=False,
        )
        async with routers(2, provider, shared(redis_server, "window")) as (a, b):
            await a.complete(chat(model="m:fake-model"))
            await trio.sleep(0.1)  # A tells Redis in the background
            with trio.move_on_after(1.0) as scope:
                await b.complete(chat(model="m:fake-model"))
            assert scope.cancelled_caught
            assert len(up.requests) == 1
            paused = b.statistics().providers["m"]
            assert paused.in_flight == 0
            until = b._actors["m"].mailbox.paused_until
            assert until is not None
            assert until - trio.current_time() > 50.0
