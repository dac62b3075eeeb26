"""Circuit breakers shared on a real Redis: an open breaker in one process is open in
the others within ``breaker_sync + 3·timeout``; half-open probes are limited across
the processes; the processes' probes together close every breaker.

Two routers in one trio run stand for two processes (each ``SharedClient`` has its own
random process id); one test runs the opening router in another OS process.  Real time
throughout: Redis's clock is real.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from providers import Overloaded, ServerError
from providers.testing import Fault, Scenario, open_fake_upstream
from router import ChatRequest, Message, open_router
from router.config import BreakerConfig, ProviderConfig, RetryConfig, RouterConfig, SharedConfig
from router.events import BreakerChanged, BreakerShared, RouterEvent
from router.testing import MockProvider, MockResponse
from tests._redis import RedisServer

ROOT = Path(__file__).resolve().parent.parent

SYNC = 0.1
TIMEOUT = 0.05
#: The documented bound (SharedConfig.breaker_sync + 3 x timeout).
BOUND = SYNC + 3 * TIMEOUT
#: Scheduling jitter allowed on top of the bound: two routers and Redis on 2 busy cores.
JITTER = 0.15


def _config(url: str, prefix: str, *, probes: int = 1, open_duration: float = 1.0) -> RouterConfig:
    return RouterConfig(
        providers={
            "p": ProviderConfig(
                kind="mock",
                breaker=BreakerConfig(
                    minimum_calls=2, open_duration=open_duration, half_open_probes=probes
                ),
                retry=RetryConfig(max_attempts=1),
            )
        },
        shared=SharedConfig(redis_url=url, prefix=prefix, timeout=TIMEOUT, breaker_sync=SYNC),
        panic_threshold=0.0,
    )


def _ask(text: str = "hi") -> ChatRequest:
    return ChatRequest(model="p:m", messages=[Message.user(text)])


@asynccontextmanager
async def _router(
    url: str, prefix: str, mock: MockProvider, events: list[tuple[float, RouterEvent]], **kw: float
) -> AsyncIterator[object]:
    async with open_router(_config(url, prefix, **kw), providers={"p": mock}) as router:  # type: ignore[arg-type]
        router.add_listener(lambda e: events.append((time.monotonic(), e)))
        yield router


async def _wait_for(events: list[tuple[float, RouterEvent]], kind: type, **fields: object) -> float:
    """Wait (up to 5 s) for an event of ``kind`` with ``fields``; its arrival time."""
    with trio.fail_after(5):
        while True:
            for at, e in events:
                if isinstance(e, kind) and all(getattr(e, k) == v for k, v in fields.items()):
                    return at
            await trio.sleep(0.005)


async def test_an_open_breaker_reaches_the_other_process_within_the_bound(
    redis_server: RedisServer,
) -> None:
    """A's breaker trips on its own failures; B, which saw no failure, is open within
    breaker_sync + 3·timeout, refuses without calling its provider, and its health names
    A as the breaker's origin."""
    failing = MockProvider(responses=[ServerError("boom"), ServerError("boom")], name="p")
    healthy = MockProvider(name="p")
    ea: list[tuple[float, RouterEvent]] = []
    eb: list[tuple[float, RouterEvent]] = []
    async with (
        _router(redis_server.url, "brk", failing, ea) as a,
        _router(redis_server.url, "brk", healthy, eb) as b,
    ):
        for _ in range(2):
            with pytest.raises(ServerError):
                await a.complete(_ask())  # type: ignore[attr-defined]
        opened = await _wait_for(ea, BreakerChanged, new="open")
        seen = await _wait_for(eb, BreakerShared, state="open")
        assert seen - opened <= BOUND + JITTER, seen - opened
        origin = a._shared.process_id  # type: ignore[attr-defined]
        shared = next(e for _, e in eb if isinstance(e, BreakerShared))
        assert shared.origin == origin
        assert shared.provider == "p"
        assert shared.open_until is not None
        with pytest.raises(Overloaded, match="circuit breaker open"):
            await b.complete(_ask())  # type: ignore[attr-defined]
        assert healthy.calls == []
        health = b.health()["p"]  # type: ignore[attr-defined]
        assert health.status == "unhealthy"
        assert health.breaker_origin == origin
        assert f"opened by process {origin}" in (health.reason or "")
        # A's own view names no other process.
        assert a.health()["p"].breaker_origin is None  # type: ignore[attr-defined]


async def test_half_open_probes_are_limited_across_processes_and_close_everywhere(
    redis_server: RedisServer,
) -> None:
    """With half_open_probes = 1, while A's probe runs, B's would-be probe is refused (its
    local breaker alone would have let it through); A's probe succeeds, the record closes,
    and B's breaker closes within the bound without a probe of its own."""
    release = trio.Event()
    slow_ok = MockResponse(text="ok", latency=0.3)
    a_mock = MockProvider(responses=[ServerError("boom"), ServerError("boom"), slow_ok], name="p")
    b_mock = MockProvider(name="p")
    ea: list[tuple[float, RouterEvent]] = []
    eb: list[tuple[float, RouterEvent]] = []
    async with (
        _router(redis_server.url, "probe", a_mock, ea, open_duration=0.3) as a,
        _router(redis_server.url, "probe", b_mock, eb, open_duration=0.3) as b,
    ):
        for _ in range(2):
            with pytest.raises(ServerError):
                await a.complete(_ask())  # type: ignore[attr-defined]
        await _wait_for(eb, BreakerShared, state="open")
        await _wait_for(ea, BreakerChanged, new="half_open")
        await _wait_for(eb, BreakerChanged, new="half_open")

        async def probe_a() -> None:
            await a.complete(_ask())  # type: ignore[attr-defined]
            release.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(probe_a)
            await trio.sleep(0.1)  # A's probe holds the one token
            with pytest.raises(Overloaded, match="across the processes"):
                await b.complete(_ask())  # type: ignore[attr-defined]
            assert b_mock.calls == []
        closed_a = await _wait_for(ea, BreakerChanged, new="closed")
        closed_b = await _wait_for(eb, BreakerShared, state="closed")
        assert closed_b - closed_a <= BOUND + JITTER, closed_b - closed_a
        assert b.health()["p"].breaker.state == "closed"  # type: ignore[attr-defined]
        await b.complete(_ask())  # type: ignore[attr-defined]
        assert len(b_mock.calls) == 1


async def test_without_redis_answering_the_breaker_is_local(redis_server: RedisServer) -> None:
    """With Redis frozen, a trip in A is not seen by B (each breaker is local, as without
    [shared]), and nothing hangs: A's failures are answered within the time bound."""
    failing = MockProvider(responses=[ServerError("boom"), ServerError("boom")], name="p")
    healthy = MockProvider(name="p")
    ea: list[tuple[float, RouterEvent]] = []
    eb: list[tuple[float, RouterEvent]] = []
    async with (
        _router(redis_server.url, "down", failing, ea) as a,
        _router(redis_server.url, "down", healthy, eb) as b,
    ):
        redis_server.pause()
        try:
            for _ in range(2):
                with pytest.raises(ServerError):
                    await a.complete(_ask())  # type: ignore[attr-defined]
            await _wait_for(ea, BreakerChanged, new="open")
            await trio.sleep(BOUND + JITTER)
            assert not any(isinstance(e, BreakerShared) for _, e in eb)
            with trio.fail_after(1):
                await b.complete(_ask())  # type: ignore[attr-defined]
        finally:
            redis_server.resume()


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["SHARED_TEST_KEY"] = "sk-shared-test"
    return env


async def test_a_breaker_opened_in_another_os_process(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An OS process whose provider (the fake upstream, answering 500) trips its breaker
    opens this process's breaker within the bound (wall clocks of one machine compared),
    and this process then refuses without sending."""
    monkeypatch.setenv("SHARED_TEST_KEY", "sk-shared-test")
    down = Scenario(faults=[Fault(kind="status", status=500, rate=1.0)])
    async with open_fake_upstream({"down": down, "up": Scenario()}) as up:

        def config(scenario: str) -> RouterConfig:
            return RouterConfig(
                providers={
                    "p": ProviderConfig(
                        kind="openai-compatible",
                        api_key_env="SHARED_TEST_KEY",
                        base_url=up.base_url(scenario, "openai"),
                        presets=False,
                        breaker=BreakerConfig(minimum_calls=2, open_duration=5.0),
                        retry=RetryConfig(max_attempts=1),
                    )
                },
                shared=SharedConfig(
                    redis_url=redis_server.url, prefix="os", timeout=TIMEOUT, breaker_sync=SYNC
                ),
                panic_threshold=0.0,
            )

        events: list[tuple[float, RouterEvent]] = []
        async with open_router(config("up")) as router:
            router.add_listener(lambda e: events.append((time.time(), e)))
            settings = json.dumps(
                {
                    "redis_url": redis_server.url,
                    "prefix": "os",
                    "base_url": up.base_url("down", "openai"),
                    "timeout": TIMEOUT,
                    "breaker_sync": SYNC,
                }
            )
            with trio.fail_after(30):
                result = await trio.run_process(
                    [sys.executable, "-m", "tests._shared_breaker_worker", settings],
                    capture_stdout=True,
                    capture_stderr=True,
                    env=_env(),
                    cwd=ROOT,
                    check=False,
                )
            assert result.returncode == 0, result.stderr.decode(errors="replace")[-3000:]
            opened_at = json.loads(result.stdout.decode().strip().splitlines()[-1])["opened_at"]
            seen = await _wait_for(events, BreakerShared, state="open")
            assert seen - opened_at <= BOUND + JITTER, seen - opened_at
            before = up.stats("up").requests
            with pytest.raises(Overloaded, match="circuit breaker open"):
                await router.complete(
                    ChatRequest(model="p:fake-model", messages=[Message.user("x")])
                )
            assert up.stats("up").requests == before


async def test_a_failed_probe_reopens_every_breaker(redis_server: RedisServer) -> None:
    """After the open period, A's probe fails: A's breaker reopens (its next backoff
    step, twice as long) and B, which sent nothing, is open again within the bound."""
    a_mock = MockProvider(
        responses=[ServerError("boom"), ServerError("boom"), ServerError("still down")],
        name="p",
    )
    b_mock = MockProvider(name="p")
    ea: list[tuple[float, RouterEvent]] = []
    eb: list[tuple[float, RouterEvent]] = []
    async with (
        _router(redis_server.url, "reopen", a_mock, ea, open_duration=0.3) as a,
        _router(redis_server.url, "reopen", b_mock, eb, open_duration=0.3) as b,
    ):
        for _ in range(2):
            with pytest.raises(ServerError):
                await a.complete(_ask())  # type: ignore[attr-defined]
        await _wait_for(eb, BreakerShared, state="open")
        await _wait_for(ea, BreakerChanged, new="half_open")
        with pytest.raises(ServerError, match="still down"):
            await a.complete(_ask())  # type: ignore[attr-defined]
        reopened = max(at for at, e in ea if isinstance(e, BreakerChanged) and e.new == "open")
        with trio.fail_after(5):
            while True:
                shared = [(at, e) for at, e in eb if isinstance(e, BreakerShared)]
                if len(shared) >= 2 or (shared and shared[-1][0] > reopened):
                    break
                await trio.sleep(0.005)
        seen, event = shared[-1]
        assert event.state == "open"
        assert seen - reopened <= BOUND + JITTER, seen - reopened
        assert a.health()["p"].breaker.consecutive_trips == 2  # type: ignore[attr-defined]
        with pytest.raises(Overloaded, match="circuit breaker open"):
            await b.complete(_ask())  # type: ignore[attr-defined]
        assert b_mock.calls == []
