"""The Lua scripts on a real redis-server: ``gcra.lua`` decides exactly as the Python
model (router._shared._gcra) does, and ``admit.lua`` admits, refuses, leases and
reconciles as documented."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Sequence
from typing import Any

import coredis
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router._config import SharedConfig
from router._shared._client import SharedClient, load_script
from router._shared._gcra import gcra
from router._shared._limits import ProviderGate
from tests._redis import RedisServer

# Runs gcra.lua's function over a sequence of (microseconds later, cost) steps, on a
# clock it is given (not Redis's), so that the model can replay the same steps.
HARNESS = """
local interval, capacity, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tat = 0
local out = {}
for i = 4, #ARGV, 2 do
  now = now + tonumber(ARGV[i])
  local ok, nt, retry = gcra(tat, now, interval, capacity, tonumber(ARGV[i + 1]))
  tat = nt
  out[#out + 1] = {ok and 1 or 0, string.format('%.3f', tat), string.format('%.0f', retry)}
end
return out
"""


def model(
    interval: float, capacity: int, start: int, steps: Sequence[tuple[int, int]]
) -> list[tuple[int, str, int]]:
    """The Python model over the same steps, in the harness's output shape."""
    tat: float = 0
    now = start
    out = []
    for dt, cost in steps:
        now += dt
        ok, tat, retry = gcra(tat, now, interval, capacity, cost)
        out.append((int(ok), f"{tat:.3f}", round(retry)))
    return out


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[coredis.Redis[bytes]]:
    """A coredis client of the test's redis-server."""
    client: coredis.Redis[bytes] = coredis.Redis.from_url(redis_server.url)
    async with client:
        yield client


async def test_gcra_lua_decides_as_the_model(redis: coredis.Redis[bytes]) -> None:
    """Invariant: for any limit, burst, start time and sequence of (delay, cost) requests,
    gcra.lua and the Python GCRA model make the same decisions, the same stored TAT
    and the same retry_after, to the microsecond."""
    script = redis.register_script(load_script("gcra") + HARNESS)

    async def run(args: list[Any]) -> list[tuple[int, str, int]]:
        reply = await script(keys=[], args=args)
        return [(int(a), b.decode(), int(c)) for a, b, c in reply]

    @settings(
        max_examples=300,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
        database=None,
    )
    @given(
        limit=st.integers(1, 200_000),
        capacity=st.integers(1, 500),
        start=st.integers(0, 3_000_000_000_000_000),  # microseconds since 2023: a century
        steps=st.lists(
            st.tuples(st.integers(0, 3_000_000), st.integers(1, 600)), min_size=1, max_size=40
        ),
    )
    def check(limit: int, capacity: int, start: int, steps: list[tuple[int, int]]) -> None:
        interval = 60e6 / limit
        args: list[Any] = [repr(interval), capacity, start]
        for dt, cost in steps:
            args += [dt, cost]
        lua = trio.from_thread.run(run, args)
        assert lua == model(interval, capacity, start, steps)

    await trio.to_thread.run_sync(check)


def test_gcra_model_is_a_token_bucket() -> None:
    """Invariant: over any window of W microseconds the model admits at most
    (W + 1) / interval + capacity units (the token bucket's bound, with the model's one
    microsecond of slack), and a full bucket admits a burst of exactly ``capacity``
    unit requests."""
    rng = random.Random(7)
    for _ in range(200):
        interval = rng.choice([1000.0, 60e6 / 7, 60e6 / 500, 12345.6])
        capacity = rng.randint(1, 20)
        now, tat = 10**14, 0.0
        admitted: list[tuple[float, int]] = []
        for _ in range(300):
            now += rng.randint(0, int(interval * 2))
            cost = rng.randint(1, capacity)
            ok, tat, _retry = gcra(tat, now, interval, capacity, cost)
            if ok:
                admitted.append((now, cost))
        for i, (t0, _c) in enumerate(admitted):
            window = 0
            for t, c in admitted[i:]:
                window += c
                assert window <= (t - t0 + 1) / interval + capacity + 1e-9
        burst = 0
        tat = 0
        while gcra(tat, 10**14, interval, capacity, 1)[0]:
            tat = gcra(tat, 10**14, interval, capacity, 1)[1]
            burst += 1
        assert burst == capacity


async def test_admit_script_rpm_burst_then_retry_after(redis_server: RedisServer) -> None:
    """admit.lua grants a full RPM burst in one batch, then holds the next request on
    "rpm" with retry_after = one emission interval (60/rpm s), on Redis's clock."""
    config = SharedConfig(redis_url=redis_server.url, prefix="t1", timeout=1.0)
    async with SharedClient(config, redis_server.url) as client, trio.open_nursery() as nursery:
        await nursery.start(client.run)
        gate = ProviderGate(
            client, "p", rpm=60, tpm=None, rpm_burst=3, tpm_burst=None, max_concurrency=None
        )
        decision = await gate.admit([1, 1, 1, 1, 1])
        assert decision is not None
        assert (decision.granted, decision.hold) == (3, "rpm")
        assert 0.9 < decision.retry_after <= 1.0
        assert decision.leases == []
        nursery.cancel_scope.cancel()


async def test_admit_script_tpm_reconciled_and_never(redis_server: RedisServer) -> None:
    """TPM: a request over the capacity is "never"; one that fits is charged its
    estimate, and a release with a smaller actual usage refunds the difference."""
    config = SharedConfig(redis_url=redis_server.url, prefix="t2", timeout=1.0)
    async with SharedClient(config, redis_server.url) as client, trio.open_nursery() as nursery:
        await nursery.start(client.run)
        gate = ProviderGate(
            client, "p", rpm=None, tpm=6000, rpm_burst=None, tpm_burst=1000, max_concurrency=None
        )
        never = await gate.admit([1001])
        assert never is not None
        assert (never.granted, never.hold) == (0, "never")
        first = await gate.admit([900, 200])
        assert first is not None
        assert (first.granted, first.hold) == (1, "tpm")
        # 100 tokens left, 200 asked: 100 tokens at 100 tokens/s is about one second.
        assert 0.9 < first.retry_after <= 1.0
        gate.release("", -800.0)  # the answer used 100 tokens, not 900
        again = await gate.admit([200])  # the release goes first, in the same script
        assert again is not None
        assert (again.granted, again.hold) == (1, "")
        nursery.cancel_scope.cancel()


async def test_admit_script_leases_cap_concurrency(redis_server: RedisServer) -> None:
    """Concurrency: at most max_concurrency leases are held across gates (processes);
    a released lease lets the next request in."""
    config = SharedConfig(redis_url=redis_server.url, prefix="t3", timeout=1.0)
    async with (
        SharedClient(config, redis_server.url) as a,
        SharedClient(config, redis_server.url) as b,
        trio.open_nursery() as nursery,
    ):
        await nursery.start(a.run)
        await nursery.start(b.run)
        limits: dict[str, Any] = dict(
            rpm=None, tpm=None, rpm_burst=None, tpm_burst=None, max_concurrency=2
        )
        ga, gb = ProviderGate(a, "p", **limits), ProviderGate(b, "p", **limits)
        first = await ga.admit([1])
        second = await gb.admit([1, 1])
        assert first is not None
        assert second is not None
        assert (first.granted, second.granted, second.hold) == (1, 1, "concurrency")
        # The lease expires after lease_time (30 s by default).
        assert 29.0 < second.retry_after <= 30.0
        ga.release(first.leases[0], 0.0)
        await ga.admit([])  # sends the queued release (the gate's task would, at once)
        third = await gb.admit([1])
        assert third is not None
        assert third.granted == 1
        assert len(ga.leases) == 0
        assert len(gb.leases) == 2
        nursery.cancel_scope.cancel()
