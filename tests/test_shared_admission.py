"""Shared admission details: load shedding (``nowait``) asks Redis once and never
queues; reconnection follows its backoff schedule exactly (virtual time)."""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing

from providers import Overloaded
from router import ChatRequest, Message, open_router
from router._config import SharedConfig
from router._shared._client import FIRST_BACKOFF, SharedClient, reconnect_delay
from router.config import ProviderConfig, RetryConfig, RouterConfig
from tests._redis import RedisServer


def chat() -> ChatRequest:
    return ChatRequest(model="m:echo", messages=[Message.user("hi")])


async def test_nowait_takes_the_shared_burst_then_sheds(redis_server: RedisServer) -> None:
    """With shared limits, ``nowait`` requests are admitted while the shared RPM burst
    lasts (one Redis question each, no queue), then refused at once with a retryable Overloaded
    naming the shared limit — in whichever process asks."""
    # One request a minute after a burst of 3: nothing refills during the test.
    provider = ProviderConfig(kind="mock", rpm=1, rpm_burst=3, retry=RetryConfig(max_attempts=1))
    config = RouterConfig(
        providers={"m": provider},
        shared=SharedConfig(redis_url=redis_server.url, prefix="nowait", timeout=1.0),
    )
    async with open_router(config) as a, open_router(config) as b:
        await a.complete(chat(), nowait=True)
        await b.complete(chat(), nowait=True)
        await a.complete(chat(), nowait=True)
        start = trio.current_time()
        with pytest.raises(Overloaded) as info:
            await b.complete(chat(), nowait=True)
        assert trio.current_time() - start < 1.0  # one Redis question, no wait
        assert "shared rpm limit" in str(info.value)
        assert info.value.retryable
        assert b.statistics().providers["m"].queued == 0


def test_reconnect_delay_schedule() -> None:
    """Invariant: the n-th reconnection waits min(max_backoff, 0.05·2^n) times a factor
    in [0.5, 1), for any n (no overflow for large n)."""
    rng = random.Random(3)
    for n in [*range(12), 100, 10_000]:
        base = min(2.0, FIRST_BACKOFF * 2.0 ** min(n, 60))
        delay = reconnect_delay(n, 2.0, rng)
        assert 0.5 * base <= delay < base


async def test_reconnection_attempts_follow_the_backoff(
    autojump_clock: trio.testing.MockClock, tmp_path: object
) -> None:
    """With Redis unreachable (a Unix socket that does not exist: each attempt fails at
    once), the client starts on local limits and tries again exactly on the backoff
    schedule of its seeded jitter, in virtual time."""
    url = f"unix://{tmp_path}/no-redis.sock"
    config = SharedConfig(redis_url=url, prefix="vt", max_backoff=0.4)
    seed = 11
    expected = random.Random(seed)
    schedule = [reconnect_delay(n, 0.4, expected) for n in range(8)]
    client = SharedClient(config, url, rng=random.Random(seed))
    async with client, trio.open_nursery() as nursery:
        start = trio.current_time()
        await nursery.start(client.run)
        assert not client.shared
        assert client.statistics().failures == 1
        at = start
        for n, delay in enumerate(schedule):
            at += delay
            await trio.sleep_until(at - 1e-6)
            assert client.statistics().failures == n + 1, n
            await trio.sleep_until(at + 1e-6)
            assert client.statistics().failures == n + 2, n
        nursery.cancel_scope.cancel()


async def test_shared_tpm_is_reconciled_with_reported_usage(redis_server: RedisServer) -> None:
    """TPM is charged the estimate (prompt + max_tokens) and corrected to the reported
    usage when the answer comes: after process A's small answer, process B's request of
    the same estimate goes at once, where the estimate alone would hold it ~9 s."""
    provider = ProviderConfig(kind="mock", tpm=6000, tpm_burst=1000)
    config = RouterConfig(
        providers={"m": provider},
        shared=SharedConfig(redis_url=redis_server.url, prefix="tpm", timeout=1.0),
    )
    request = ChatRequest(model="m:echo", messages=[Message.user("hi")], max_tokens=900)
    async with open_router(config) as a, open_router(config) as b:
        answer = await a.complete(request)
        assert answer.usage.input_tokens + answer.usage.output_tokens < 50
        await trio.sleep(0.2)  # A's release reaches Redis in the background
        start = trio.current_time()
        with trio.fail_after(3):
            await b.complete(request)
        assert trio.current_time() - start < 1.0


async def test_a_wait_past_the_deadline_is_refused_at_once(redis_server: RedisServer) -> None:
    """Shared RPM empty for the next 60 s, a caller with 2 s left: its request is refused
    at once with a non-retryable Overloaded saying why, not left to time out."""
    provider = ProviderConfig(kind="mock", rpm=1, rpm_burst=1, retry=RetryConfig(max_attempts=1))
    config = RouterConfig(
        providers={"m": provider},
        shared=SharedConfig(redis_url=redis_server.url, prefix="deadline", timeout=1.0),
    )
    async with open_router(config) as a, open_router(config) as b:
        await a.complete(chat())
        start = trio.current_time()
        with trio.move_on_after(2.0), pytest.raises(Overloaded) as info:
            await b.complete(chat())
        assert trio.current_time() - start < 1.0
        assert not info.value.retryable
        assert "shared rpm limit" in str(info.value)
        assert "deadline" in str(info.value)
