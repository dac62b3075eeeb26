"""What is queued for Redis as the router closes reaches it, once: a lease freed, a
settle, a probe token given back or an open decided after the task that sends them has
ended still goes, as the client closes.

When the router closes, the gates', the budgets' and the breakers' tasks end in the
same cancellation as everything else; an admission cancelled unanswered, or a call
settling or ending a probe, may queue its news after those tasks have ended.  The
client sends it then (its closers), before it leaves.  Real time on a real redis-server
(Redis's clock decides); each test well under a second, the property about one.
"""

from __future__ import annotations

import math
import uuid

import coredis
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router import ChatRequest, Message, open_router
from router._budget import Budget
from router._health import BreakerConfig
from router._shared._breaker import SharedBreaker
from router._shared._budgets import SharedBudget, SharedBudgets
from router._shared._client import SharedClient
from router._shared._limits import RELEASE_LINGER, ProviderGate
from router.config import ProviderConfig, RouterConfig, SharedConfig
from router.events import SharedLimitsChanged
from router.testing import MockProvider, MockResponse
from tests._redis import RedisServer

#: One request (rpm) or one token (tpm) a minute, with bursts nothing here reaches: every
#: request is admitted, and each unit charged moves the bucket's TAT one minute on, so
#: Redis's TAT counts, exactly, the units charged (minus refunds) over a test's second.
_MINUTE_US = 60e6


def _chat() -> ChatRequest:
    return ChatRequest(model="m:echo", messages=[Message.user("hi")])


def _client(url: str, prefix: str) -> SharedClient:
    return SharedClient(SharedConfig(redis_url=url, prefix=prefix, timeout=2.0), url)


def _gate(client: SharedClient, name: str = "p") -> ProviderGate:
    return ProviderGate(
        client,
        name,
        rpm=1,
        tpm=1,
        rpm_burst=1e6,
        tpm_burst=1e9,
        max_concurrency=10_000,
    )


async def _cancelled_admit(gate: ProviderGate, costs: list[float]) -> None:
    """An admission whose caller is cancelled before Redis answers: the request is on
    its way (written to the client's connection), the answer never read."""
    with trio.CancelScope() as scope:
        scope.cancel()
        await gate.admit(costs)
    assert scope.cancelled_caught


async def _zcard(url: str, key: str) -> int:
    """The size of the sorted set ``key`` in Redis."""
    async with coredis.Redis.from_url(url) as redis:
        return await redis.zcard(key)


async def _units(redis: coredis.Redis[bytes], key: str) -> int:
    """Units a one-per-minute GCRA bucket has charged: (TAT - Redis's now) in minutes,
    rounded (what elapsed since the first charge is a small fraction of a minute)."""
    value = await redis.get(key)
    if value is None:
        return 0
    now = ((await redis.time()).timestamp() - 1_700_000_000) * 1e6  # to a second or so
    units = (float(value) - now) / _MINUTE_US
    assert abs(units - round(units)) < 0.1, units
    return round(units)


async def test_an_admission_cancelled_after_the_gate_task_ended_frees_its_leases(
    redis_server: RedisServer,
) -> None:
    """Invariant: an admission cancelled unanswered after the gate's own task has ended
    (the router closing) has its leases freed in Redis as the client closes — free for
    the other processes at once, not ``lease_time`` (30 s) later."""
    url = redis_server.url
    client = _client(url, "late")
    async with client:
        gate = _gate(client)
        behind = _gate(client, "q")
        async with trio.open_nursery() as nursery:
            await nursery.start(client.run)
            await nursery.start(gate.run)
            await gate.admit([])  # Redis has the script now (no NOSCRIPT below)
            nursery.cancel_scope.cancel()  # the router closes: the gate's task ends
        await _cancelled_admit(gate, [1, 1])
        await behind.admit([])  # one round trip behind it on the one connection
        async with coredis.Redis.from_url(url) as redis:
            assert await redis.zcard("late:{p}:leases") == 2  # Redis granted both
    async with coredis.Redis.from_url(url) as redis:
        assert await redis.zcard("late:{p}:leases") == 0


_OPS = st.lists(
    st.one_of(
        # (op, k or index, cost or delta)
        st.tuples(st.just("admit"), st.integers(1, 3), st.integers(1, 3)),
        st.tuples(st.just("cancelled"), st.integers(1, 3), st.integers(1, 3)),
        st.tuples(st.just("release"), st.integers(0, 99), st.integers(0, 3)),
        st.tuples(st.just("undo"), st.integers(0, 99), st.just(0)),
        st.tuples(st.just("linger"), st.just(0), st.just(0)),
        st.tuples(st.just("end"), st.just(0), st.just(0)),
    ),
    max_size=16,
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=_OPS)
def test_every_queued_release_reaches_redis_exactly_once(
    redis_server: RedisServer, ops: list[tuple[str, int, int]]
) -> None:
    """Invariant: whatever the interleaving of admissions (answered, or cancelled
    unanswered), releases (a lease freed, tokens charged), grants undone, the gate's
    task sending on its own and that task ending (the router closing), once the client
    has closed Redis holds no lease of the process and its RPM and TPM buckets hold
    exactly what was charged less what was refunded: every queued release went, once
    (none lost, none applied twice)."""
    url = redis_server.url
    prefix = uuid.uuid4().hex

    async def main() -> None:
        client = _client(url, prefix)
        rpm = tpm = 0  # units Redis must hold at the end
        held: list[tuple[str, int]] = []
        async with client:
            gate = _gate(client)
            ended = trio.Event()

            async def run_gate(*, task_status: trio.TaskStatus[None]) -> None:
                with gate_scope:
                    await gate.run(task_status=task_status)
                ended.set()

            async def end() -> None:
                gate_scope.cancel()
                await ended.wait()

            gate_scope = trio.CancelScope()
            async with trio.open_nursery() as nursery:
                await nursery.start(client.run)
                await nursery.start(run_gate)
                await gate.admit([])  # Redis has the script now (no NOSCRIPT below)
                for op, n, x in ops:
                    if op == "admit":
                        decision = await gate.admit([x] * n)
                        assert decision is not None
                        assert decision.granted == n
                        held += [(lease, x) for lease in decision.leases]
                        rpm, tpm = rpm + n, tpm + n * x
                    elif op == "cancelled":
                        await _cancelled_admit(gate, [x] * n)
                        rpm, tpm = rpm + n, tpm + n * x
                    elif op == "release" and held:
                        lease, _ = held.pop(n % len(held))
                        gate.release(lease, x)
                        tpm += x
                    elif op == "undo" and held:
                        lease, cost = held.pop(n % len(held))
                        gate.undo(lease, cost)
                        rpm, tpm = rpm - 1, tpm - cost
                    elif op == "linger":
                        await trio.sleep(2 * RELEASE_LINGER)  # the gate's task sends
                    elif op == "end":
                        await end()
                await end()  # the router closes; the calls still in flight end after
                for lease, _ in held:
                    gate.release(lease, 0)
                assert client.shared
                assert client.statistics().failures == 0
                nursery.cancel_scope.cancel()
        async with coredis.Redis.from_url(url) as redis:
            assert await redis.zcard(f"{prefix}:{{p}}:leases") == 0
            assert await _units(redis, f"{prefix}:{{p}}:rpm") == rpm
            assert await _units(redis, f"{prefix}:{{p}}:tpm") == tpm

    trio.run(main)


async def _budget(url: str, key: str) -> tuple[float, float]:
    """Redis's numbers for one cap: (spent, reserved by every process)."""
    async with coredis.Redis.from_url(url) as redis:
        fields = await redis.hgetall(key)
    spent = float(fields.get(b"s", b"0"))
    reserved = sum(float(v) for k, v in fields.items() if k.startswith(b"r:"))
    return spent, reserved


async def test_a_settle_queued_after_the_budgets_task_ended_is_applied_once(
    redis_server: RedisServer,
) -> None:
    """Invariant: a settle queued after the budgets' task has ended (a call ending as
    the router closes) is applied in Redis exactly once as the client closes: its
    reservation does not stand (holding the cap for the others until this process's
    heartbeats are three beats stale), and its spend is counted once."""
    url = redis_server.url
    client = _client(url, "late-budget")
    async with client:
        owner = SharedBudgets(client, [])
        cap = SharedBudget(
            owner,
            client.key("{budgets}", "router"),
            Budget("router", limit=1.0, period=86400.0, start=0.0),
        )
        owner.budgets.append(cap)
        client.add_listener(owner)
        async with trio.open_nursery() as nursery:
            await nursery.start(client.run)
            await nursery.start(owner.run)
            assert await owner.reserve([cap], 0.25) is None
            assert await owner.reserve([cap], 0.25) is None
            cap.settle(0.25, 0.0625, trio.current_time())  # sent by the budgets' task
            nursery.cancel_scope.cancel()  # the router closes: the budgets' task ends
        cap.settle(0.25, 0.125, trio.current_time())  # a call ending as it closes
        spent, reserved = await _budget(url, cap.key)
        assert (spent, reserved) == pytest.approx((0.0625, 0.25), abs=1e-12)
    spent, reserved = await _budget(url, cap.key)
    assert reserved == pytest.approx(0.0, abs=1e-12)
    assert spent == pytest.approx(0.1875, abs=1e-12)


def _breaker(client: SharedClient) -> SharedBreaker:
    """One failure opens it, for a second; one probe closes it."""
    config = BreakerConfig(minimum_calls=1, open_duration=1.0, half_open_probes=1)
    return SharedBreaker(client, "p", config)


async def test_a_probe_token_given_back_after_the_breaker_task_ended_returns_to_redis(
    redis_server: RedisServer,
) -> None:
    """Invariant: a half-open probe's token given back after the breaker's own task has
    ended (the probe's call ending as the router closes) is back in Redis as the client
    closes — the other processes may probe at once, not ``lease_time`` (30 s) later."""
    url = redis_server.url
    client = _client(url, "late-probe")
    async with client:
        breaker = _breaker(client)
        async with trio.open_nursery() as nursery:
            await nursery.start(client.run)
            now = trio.current_time()
            assert breaker.allow(now)
            breaker.record_failure(now)  # open for a second
            await breaker.sync()  # published (before the probe: an open drops tokens)
            await nursery.start(breaker.run)
            later = now + 1.0  # the open has ended: half-open, a probe goes
            assert breaker.allow(later)
            await breaker.take_probe()  # granted: the open is this process's own
            nursery.cancel_scope.cancel()  # the router closes: the breaker's task ends
        breaker.record_cancelled(later)  # the probe's call ends, cancelled: token back
        async with coredis.Redis.from_url(url) as redis:
            assert await redis.zcard("late-probe:{p}:probes") == 1
    async with coredis.Redis.from_url(url) as redis:
        assert await redis.zcard("late-probe:{p}:probes") == 0


async def test_an_open_decided_as_the_router_closes_reaches_redis_once(
    redis_server: RedisServer,
) -> None:
    """Invariant: an open decided as the router closes — its breaker's task already
    cancelled, before that task could send it — is written to Redis, once: the other
    processes see it (a failed probe's, or a trip's, last word is not lost) and the
    client's close does not write it again."""
    url = redis_server.url
    client = _client(url, "late-open")
    async with client:
        breaker = _breaker(client)
        async with trio.open_nursery() as nursery:
            await nursery.start(client.run)
            await nursery.start(breaker.run)
            await breaker.sync()  # Redis has the script now (no NOSCRIPT below)
            nursery.cancel_scope.cancel()  # the router closes: the breaker's task ends
            now = trio.current_time()
            assert breaker.allow(now)
            breaker.record_failure(now)  # a call ending as it closes: the breaker opens
        async with coredis.Redis.from_url(url) as redis:
            record = await redis.hgetall("late-open:{p}:breaker")
        assert record[b"state"] == b"open"
        assert record[b"origin"] == client.process_id.encode()
    async with coredis.Redis.from_url(url) as redis:
        assert await redis.hgetall("late-open:{p}:breaker") == record  # not written again


async def test_a_router_cancelled_from_outside_frees_its_leases_in_redis(
    redis_server: RedisServer,
) -> None:
    """Invariant: a router closed by a cancellation from outside (a deadline around the
    ``async with``, as it fires) while calls hold leases frees every lease in Redis as
    it closes — coredis's connection is not cancelled with the caller's scope before
    the releases went — and does not switch to local limits on the way out."""
    url = redis_server.url
    provider = ProviderConfig(kind="mock", max_concurrency=1000, queue_wait_threshold=None)
    config = RouterConfig(
        providers={"m": provider},
        shared=SharedConfig(redis_url=url, prefix="outer", timeout=2.0),
    )
    started: list[ChatRequest] = []
    all_started = trio.Event()

    def hang(request: ChatRequest) -> MockResponse:
        started.append(request)
        if len(started) == 20:
            all_started.set()
        return MockResponse(text="never", latency=math.inf)

    hanging = MockProvider(name="m", default=hang)
    events: list[object] = []
    with trio.CancelScope() as outer:
        async with open_router(config, providers={"m": hanging}) as router:
            router.add_listener(events.append)
            async with trio.open_nursery() as nursery:
                for _ in range(20):
                    nursery.start_soon(router.complete, _chat())
                await all_started.wait()  # 20 calls hold a lease each
                assert await _zcard(url, "outer:{m}:leases") == 20
                outer.cancel()  # the caller's deadline fires: the router closes
                await trio.sleep_forever()
    assert await _zcard(url, "outer:{m}:leases") == 0
    assert not [e for e in events if isinstance(e, SharedLimitsChanged)]


async def test_a_keyboard_interrupt_during_the_close_comes_out_as_itself(
    redis_server: RedisServer,
) -> None:
    """Invariant: a KeyboardInterrupt arriving while the client sends what is queued
    (delivered into a closer, as trio may deliver it mid-close) comes out of the
    client's close as a ``KeyboardInterrupt`` — not wrapped in an exception group a
    caller's ``except KeyboardInterrupt`` would miss — and coredis is closed all the
    same."""
    url = redis_server.url
    client = _client(url, "interrupted")

    async def sending() -> None:
        await trio.sleep(0.5)  # cancelled by the interrupt

    async def interrupted() -> None:
        raise KeyboardInterrupt

    client.add_closer(sending)
    client.add_closer(interrupted)
    with pytest.raises(KeyboardInterrupt):
        async with client, trio.open_nursery() as nursery:
            await nursery.start(client.run)
            nursery.cancel_scope.cancel()
    assert client._redis.connection_pool._task_group is None  # coredis closed
