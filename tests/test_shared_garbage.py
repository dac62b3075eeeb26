"""Shared state against garbage: keys of another type (or holding non-numbers) under the
router's prefix, and replies that are not what a script returns.

A key written over is replaced by the next script that uses it, never failed on
(failing would switch every process to local limits at each call), and the guarantee
it carries still holds: a cap is not crossed, a breaker decision reaches every process,
a pause holds for its own time.  A malformed reply is one more way for Redis to fail:
the process switches to local limits and goes on serving; no task that reads a reply
crashes.  Real ``redis-server`` throughout (tests/_redis.py).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import coredis
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from providers import ServerError, Usage
from router import ChatRequest, Message, open_router
from router._budget import Budget
from router._config import SharedConfig
from router._events import BreakerChanged, BreakerShared, RouterEvent, SharedLimitsChanged
from router._health import BreakerConfig
from router._shared._breaker import SharedBreaker, _read_record
from router._shared._budgets import SharedBudget, SharedBudgets, _read, _Reservation
from router._shared._client import SharedClient, SharedUnavailable
from router._shared._limits import ProviderGate
from router._shared._replies import MalformedReply
from router.config import BudgetConfig, ModelConfig, ProviderConfig, RouterConfig
from router.errors import BudgetExceeded
from router.testing import MockProvider, MockResponse
from tests._redis import RedisServer
from tests.test_shared_breaker import BOUND, JITTER, _ask, _router, _wait_for

PRICES = ModelConfig(input_price=1.0, output_price=2.0)  # $ per million tokens


async def _cli(server: RedisServer, *args: str) -> bytes:
    """One redis-cli command against ``server``; its output."""
    done = await trio.run_process(["redis-cli", "-p", str(server.port), *args], capture_stdout=True)
    return bytes(done.stdout).strip()


async def _until(check: Callable[[], Awaitable[bool]], seconds: float = 5.0) -> None:
    """Poll ``check`` (real time: Redis's clock is real) until it holds, at most ``seconds``."""
    with trio.fail_after(seconds):
        while True:
            if await check():
                return
            await trio.sleep(0.02)


# -- keys of another type ---------------------------------------------------------------


async def test_a_budget_hash_written_over_is_replaced_and_the_cap_still_holds(
    redis_server: RedisServer,
) -> None:
    """A list written over a shared cap's hash while router A holds a reservation: the
    next round trip replaces it (no script fails, no switch to local), A sees the hash
    made again and writes its reservation there again, so B's calls meanwhile cannot
    take what A holds: together they never spend more than the cap."""
    url, prefix, limit = redis_server.url, "wbudget", 0.001
    config = RouterConfig(
        providers={"a": ProviderConfig(kind="mock")},
        models={"a:m": PRICES},
        budget=BudgetConfig(limit=limit, period="day"),
        shared=SharedConfig(redis_url=url, prefix=prefix, timeout=1.0, heartbeat=0.1),
    )
    usage = Usage(input_tokens=1, output_tokens=200)  # $401e-6: under its estimate
    slow = MockProvider(name="a", default=MockResponse(text="ok", usage=usage, latency=3.0))
    fast = MockProvider(name="a", default=MockResponse(text="ok", usage=usage))
    ask = ChatRequest(model="a:m", messages=[Message.user("hi")], max_tokens=200)
    key = f"{prefix}:{{budgets}}:router"
    redis: coredis.Redis[bytes] = coredis.Redis.from_url(url)
    async with (
        redis,
        open_router(config, providers={"a": slow}) as a,
        open_router(config, providers={"a": fast}) as b,
    ):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.complete, ask)  # holds its reservation for 3 s
            mine = f"r:{a._shared.process_id}".encode()  # type: ignore[union-attr]
            await _until(lambda: redis.hexists(key, mine))
            await _cli(redis_server, "del", key)
            await _cli(redis_server, "rpush", key, "not", "a", "hash")

            async def restored() -> bool:
                return await redis.type(key) == b"hash" and await redis.hexists(key, mine)

            await _until(restored)  # within a heartbeat or two
            done = 0
            for _ in range(3):
                try:
                    await b.complete(ask)
                    done += 1
                except BudgetExceeded:
                    pass
            assert done == 1  # a second would cross the cap with A's reservation
        total = a.statistics().spend + b.statistics().spend
        assert total <= limit + 1e-12

        async def settled() -> bool:  # A's settle is queued, not waited for
            spent = float((await redis.hgetall(key)).get(b"s", b"0"))
            return spent == pytest.approx(total, abs=1e-12)

        await _until(settled)
        for router in (a, b):
            shared = router.statistics().shared
            assert shared is not None
            assert (shared.failures, shared.switches) == (0, 1)  # 1: the switch at start


async def test_settles_during_the_round_trip_that_finds_a_cap_made_again_count_once(
    redis_server: RedisServer,
) -> None:
    """Three reservations ($0.3, $0.3, $0.2) and a list written over the cap's hash; one
    settles ($0.1 spent) and goes in the round trip that replaces the hash, the other
    settles ($0.1) while that round trip is on its way.  The process writes its whole
    state again, and Redis ends with exactly its spend ($0.2) and its one outstanding
    reservation ($0.2): no settle counted twice or taken off the rewritten
    reservation again."""
    url = redis_server.url
    client = SharedClient(SharedConfig(redis_url=url, prefix="regen", timeout=1.0), url)
    async with client, trio.open_nursery() as nursery:
        await nursery.start(client.run)
        owner, budget = _budgets(client, limit=1.0)
        await nursery.start(owner.run)
        for estimate in (0.3, 0.3, 0.2):
            assert await owner.reserve([budget], estimate) is None
        await _cli(redis_server, "del", budget.key)
        await _cli(redis_server, "rpush", budget.key, "not", "a", "hash")
        real = client.call
        calls = 0

        async def call(script: Any, keys: Sequence[str], args: Sequence[Any]) -> Any:
            nonlocal calls
            reply = await real(script, keys, args)
            calls += 1
            if calls == 1:  # the round trip that replaces the hash
                budget.settle(0.3, 0.1, trio.current_time())
            return reply

        client.call = call  # type: ignore[method-assign]
        budget.settle(0.3, 0.1, trio.current_time())
        owner.wake()
        mine = f"r:{client.process_id}".encode()

        async def written() -> bool:
            fields = await _hgetall(url, budget.key)
            spent, reserved = float(fields.get(b"s", b"0")), float(fields.get(mine, b"0"))
            return calls >= 3 and (spent, reserved) == pytest.approx((0.2, 0.2), abs=1e-12)

        await _until(written)
        await trio.sleep(0.2)  # nothing more goes: the numbers stay
        assert await written()
        assert client.statistics().failures == 0
        nursery.cancel_scope.cancel()


async def _hgetall(url: str, key: str) -> dict[bytes, bytes]:
    redis: coredis.Redis[bytes] = coredis.Redis.from_url(url)
    async with redis:
        return dict(await redis.hgetall(key))


async def test_breaker_keys_written_over_are_replaced_and_decisions_still_reach_everyone(
    redis_server: RedisServer,
) -> None:
    """A string over the probe tokens while the breaker is open, then a list over the
    record once it has closed, then non-numbers in the record's fields: A's probe still
    takes its token and its success closes B's breaker; A's next open still reaches B
    within the bound (the record made again starts above any seq B has applied); no
    script fails."""
    ok = MockResponse(text="ok")
    a_mock = MockProvider(
        responses=[
            ServerError("boom"),
            ServerError("boom"),
            ok,
            ServerError("boom"),
            ServerError("boom"),
        ],
        name="p",
    )
    ea: list[tuple[float, RouterEvent]] = []
    eb: list[tuple[float, RouterEvent]] = []
    record, probes = "wbrk:{p}:breaker", "wbrk:{p}:probes"
    async with (
        _router(redis_server.url, "wbrk", a_mock, ea, open_duration=0.3) as a,
        _router(redis_server.url, "wbrk", MockProvider(name="p"), eb, open_duration=0.3) as b,
    ):
        for _ in range(2):
            with pytest.raises(ServerError):
                await a.complete(_ask())  # type: ignore[attr-defined]
        await _wait_for(eb, BreakerShared, state="open")
        await _cli(redis_server, "set", probes, "not a sorted set")
        await _wait_for(ea, BreakerChanged, new="half_open")
        await a.complete(_ask())  # type: ignore[attr-defined]  # the probe, with a token
        await _wait_for(eb, BreakerShared, state="closed")

        await _cli(redis_server, "del", record)
        await _cli(redis_server, "rpush", record, "not", "a", "hash")
        ea.clear()
        eb.clear()
        for _ in range(2):
            with pytest.raises(ServerError):
                await a.complete(_ask())  # type: ignore[attr-defined]
        opened = await _wait_for(ea, BreakerChanged, new="open")
        seen = await _wait_for(eb, BreakerShared, state="open")
        assert seen - opened <= BOUND + JITTER, seen - opened

        # Fields written over with non-numbers (an end a day past the longest open):
        # read as missing, never a failed script or a breaker opened for ever.
        await _cli(redis_server, "hset", record, "seq", "x", "until", "1e300", "trips", "?")
        await _cli(redis_server, "hset", record, "ok", "many", "state", "open")
        breaker: SharedBreaker = b._actors["p"].breaker  # type: ignore[attr-defined]
        before = (breaker.state(trio.current_time()), breaker.retry_at)
        await breaker.sync()  # seq "x" reads as 0: nothing newer to apply
        assert (breaker.state(trio.current_time()), breaker.retry_at) == before
        for router in (a, b):
            shared = router.statistics().shared  # type: ignore[attr-defined]
            assert (shared.failures, shared.switches) == (0, 1), shared.reason


async def test_a_pause_key_of_another_type_is_replaced_by_the_pause(
    redis_server: RedisServer,
) -> None:
    """A list at the pause key holds no pause of ours: a 2 s pause replaces it, and the
    admissions hold for those 2 s — also when the list has an hour-long TTL (PTTL alone
    took that for a longer pause and kept it: an hour of refusals)."""
    url = redis_server.url
    client = SharedClient(SharedConfig(redis_url=url, prefix="wpause", timeout=1.0), url)
    key = "wpause:{p}:pause"
    async with client, trio.open_nursery() as nursery:
        await nursery.start(client.run)
        gate = ProviderGate(
            client, "p", rpm=None, tpm=None, rpm_burst=None, tpm_burst=None, max_concurrency=None
        )
        await nursery.start(gate.run)
        for ttl in (None, "3600000"):
            await _cli(redis_server, "del", key)
            await _cli(redis_server, "rpush", key, "not", "a", "pause")
            if ttl is not None:
                await _cli(redis_server, "pexpire", key, ttl)
            gate.pause(2.0)

            async def paused() -> bool:
                return await _cli(redis_server, "type", key) == b"string"

            await _until(paused)
            decision = await gate.admit([1])
            assert decision is not None
            assert decision.hold == "pause"
            assert 1.0 < decision.retry_after <= 2.0, decision.retry_after
        assert client.statistics().failures == 0
        nursery.cancel_scope.cancel()


async def test_live_process_and_lease_sets_of_another_type_are_replaced(
    redis_server: RedisServer,
) -> None:
    """A hash at the live-process set and a list at the lease set (heartbeat.lua and
    renew.lua ask the type through redis.pcall of their first command, not a TYPE
    each call): the heartbeat counts this process, the renewal renews nothing (the
    leases went with what was written over them) and neither fails."""
    url = redis_server.url
    client = SharedClient(SharedConfig(redis_url=url, prefix="wlive", timeout=1.0), url)
    async with client, trio.open_nursery() as nursery:
        await nursery.start(client.run)
        gate = ProviderGate(
            client, "p", rpm=None, tpm=None, rpm_burst=None, tpm_burst=None, max_concurrency=2
        )
        await _cli(redis_server, "del", "wlive:processes")
        await _cli(redis_server, "hset", "wlive:processes", "not", "a zset")
        assert await client._beat()
        assert client.processes == 1
        granted = await gate.admit([1])
        assert granted is not None
        assert granted.granted == 1
        await _cli(redis_server, "del", "wlive:{p}:leases")
        await _cli(redis_server, "rpush", "wlive:{p}:leases", *granted.leases)
        await gate.heartbeat()
        assert await _cli(redis_server, "exists", "wlive:{p}:leases") == b"0"
        assert client.shared
        assert client.statistics().failures == 0
        nursery.cancel_scope.cancel()


# -- malformed replies -------------------------------------------------------------------

#: A record as breaker_record.lua returns it: seq, open, remaining (us), origin, trips.
_RECORD: list[object] = [1, 0, 0, b"me", 0]
#: budget.lua's reply for one reservation under one cap: its refusal, then the cap's
#: spent, reserved, microseconds until the window ends, generation.
_VIEW: list[object] = [0, b"0", b"0", b"5", b"1"]


def _with(base: list[object], at: int, value: object) -> list[object]:
    return [*base[:at], value, *base[at + 1 :]]


#: Not an array at all, or an empty one.
_SHAPES: tuple[object, ...] = (None, b"OK", 7, [])

#: (script, reply): replies a proxy or another server could give in place of a
#: script's, or a script of another version; each wrong in one way.
GARBAGE: list[tuple[str, object]] = [
    *[(script, r) for script in ("breaker", "probe", "budget") for r in _SHAPES],
    ("breaker", [b"x"]),
    ("breaker", [*_RECORD, 0]),  # one value too many
    ("breaker", _with(_RECORD, 0, b"1")),  # a number as bytes, not an integer
    ("breaker", _with(_RECORD, 0, True)),
    ("breaker", _with(_RECORD, 1, 7)),  # open is neither 0 nor 1
    ("breaker", _with(_RECORD, 2, -5)),  # a negative time left
    ("breaker", _with(_RECORD, 2, 10**18)),  # open for 30,000 years
    ("breaker", _with(_RECORD, 3, b"\xff" * 300)),  # an origin no process has
    ("breaker", _with(_RECORD, 3, [b"nested"])),
    ("breaker", _with(_RECORD, 4, ValueError("an error value"))),
    ("probe", [1, *_RECORD[:4]]),  # a value short
    ("probe", [2, *_RECORD]),  # granted is neither 0 nor 1
    ("probe", [1, *_with(_RECORD, 0, None)]),
    ("budget", [*_VIEW, b"extra"]),
    ("budget", _with(_VIEW, 0, True)),  # a refusal that is a boolean
    ("budget", _with(_VIEW, 0, 2)),  # refused by a cap the reservation is not under
    ("budget", _with(_VIEW, 0, -1)),  # (budgets[-2]: another cap, silently)
    ("budget", _with(_VIEW, 1, b"nan")),  # spent nan: every comparison false
    ("budget", _with(_VIEW, 1, b"1e999")),  # infinite
    ("budget", _with(_VIEW, 2, b"-1")),  # negative
    ("budget", _with(_VIEW, 2, b"a lot")),
    ("budget", _with(_VIEW, 3, b"1e30")),  # a window longer than the period
    ("budget", _with(_VIEW, 4, b"g" * 100)),  # a generation no script made
    ("budget", _with(_VIEW, 4, 5)),
]


def _garble(client: SharedClient, scripts: Sequence[str], reply: object) -> None:
    """From now on ``scripts`` of ``client`` answer ``reply`` (the others as usual), as
    a proxy in front of Redis might; not while limits are local (as the real call)."""
    real = client.call
    bad = [client._scripts[name] for name in scripts]

    async def call(script: Any, keys: Sequence[str], args: Sequence[Any]) -> Any:
        if not any(script is s for s in bad):
            return await real(script, keys, args)
        if not client.shared:
            raise SharedUnavailable(client.reason)
        return reply

    client.call = call  # type: ignore[method-assign]


def _budgets(client: SharedClient, limit: float) -> tuple[SharedBudgets, SharedBudget]:
    owner = SharedBudgets(client, [])
    cap = Budget("router", limit=limit, period=86400.0, start=0.0)
    budget = SharedBudget(owner, client.key("{budgets}", "router"), cap)
    owner.budgets.append(budget)
    client.add_listener(owner)
    return owner, budget


@pytest.mark.parametrize(("script", "reply"), GARBAGE, ids=lambda v: repr(v)[:30])
async def test_a_malformed_reply_is_redis_failing_not_a_crash(
    redis_server: RedisServer, script: str, reply: object, caplog: pytest.LogCaptureFixture
) -> None:
    """A garbage reply to the breaker's sync, its probe or the budgets' round trip:
    nothing raises, the process switches to local limits (the event and a log line say
    which script answered what, without the URL), the probe's local decision stands
    and the reservation is decided locally, at the fair share."""
    url = redis_server.url
    events: list[SharedLimitsChanged] = []
    config = SharedConfig(redis_url=url, prefix="garbage", timeout=1.0)
    client = SharedClient(config, url, on_event=events.append)
    async with client, trio.open_nursery() as nursery:
        await nursery.start(client.run)
        assert client.shared
        breaker = SharedBreaker(client, "p", BreakerConfig(half_open_probes=1))
        owner, budget = _budgets(client, limit=1.0)
        await nursery.start(owner.run)  # the first round trip: before the garbage
        _garble(client, [script], reply)
        if script == "breaker":
            await breaker.sync()
        elif script == "probe":
            breaker._untokened = 1  # the local breaker admitted a probe
            await breaker.take_probe()  # no Overloaded: the local decision stands
        else:
            assert await owner.reserve([budget], 0.25) is None
            assert await owner.reserve([budget], 0.8) is budget  # 0.75 left locally
        assert not client.shared
        assert f"{script}.lua with a malformed reply" in (client.reason or "")
        assert url not in (client.reason or "")
        nursery.cancel_scope.cancel()
    assert [e.state for e in events] == ["shared", "local"]
    assert events[-1].reason == client.reason
    assert sum("malformed reply" in r.getMessage() for r in caplog.records) == 1


async def test_the_router_keeps_serving_when_the_budget_and_breaker_replies_are_garbage(
    redis_server: RedisServer,
) -> None:
    """A router whose budget, breaker and probe scripts answer garbage (a proxy that
    does not speak Lua replies): every request is served, the cap is kept locally, the
    router closes cleanly (no task crashed) and it says it went local, and why."""
    url = redis_server.url
    config = RouterConfig(
        providers={"a": ProviderConfig(kind="mock")},
        models={"a:m": PRICES},
        budget=BudgetConfig(limit=1.0, period="day"),
        shared=SharedConfig(redis_url=url, prefix="garbled", timeout=1.0, breaker_sync=0.05),
    )
    events: list[RouterEvent] = []
    async with open_router(config) as router:
        router.add_listener(events.append)
        client = router._shared
        assert client is not None
        _garble(client, ["budget", "breaker", "probe"], [b"not", b"a", b"record"])
        for _ in range(5):
            answer = await router.complete(ChatRequest(model="a:m", messages=[Message.user("hi")]))
            assert answer.text
            await trio.sleep(0.06)  # a breaker sync each time
        shared = router.statistics().shared
        assert shared is not None
        assert shared.failures >= 1
    reasons = [e.reason for e in events if isinstance(e, SharedLimitsChanged)]
    assert any("malformed reply" in (r or "") for r in reasons), reasons


_VALUES = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.binary(max_size=40)
    | st.text(max_size=5)
)


@given(
    st.one_of(
        st.recursive(_VALUES, lambda inner: st.lists(inner, max_size=9), max_leaves=20),
        st.lists(_VALUES | st.sampled_from([0, 1, b"0", b"5"]), min_size=5, max_size=5),
        st.lists(_VALUES | st.sampled_from([0, 1, b"0", b"5"]), min_size=9, max_size=9),
    )
)
def test_reply_readers_accept_only_what_the_scripts_return(reply: object) -> None:
    """Invariant: for any reply whatever, the breaker's and the budgets' readers return
    values in their ranges (finite, non-negative, a refusal naming a cap of the
    reservation) or raise MalformedReply: never another exception."""
    try:
        seq, _open, remaining, origin, trips = _read_record(reply, "breaker.lua")  # type: ignore[arg-type]
    except MalformedReply:
        pass
    else:
        assert seq >= 0
        assert trips >= 0
        assert 0 <= remaining <= 86400 * 10**6
        assert len(origin) <= 256
    owner = SharedBudgets.__new__(SharedBudgets)
    caps = [
        SharedBudget(owner, f"k{i}", Budget(f"c{i}", limit=1.0, period=60.0, start=0.0))
        for i in range(2)
    ]
    batch = [_Reservation(caps[:1], 0.1)]
    try:
        refusals, views = _read(reply, batch, caps)
    except MalformedReply:
        return
    assert all(r in (0, 1) for r in refusals)
    for spent, reserved, ends, generation in views:
        assert all(math.isfinite(x) and x >= 0 for x in (spent, reserved, ends))
        assert ends <= 60e6
        assert len(generation) <= 32


ADMIT_GARBAGE: list[object] = [
    None,
    b"OK",
    [1, 0, 0],  # too short
    [1, 0, 0, 0, 0],  # too long
    [b"1", 0, 0, 0],  # text where a number goes
    [2, 0, 0, 0],  # more grants than requests asked
    [-1, 0, 0, 0],
    [0, 9, 1000, 0],  # no such hold
    [0, -1, 1000, 0],  # would read as "never"
    [0, 3, -5, 0],  # a negative wait
    [0, 3, 1.5, 0],
]


@pytest.mark.parametrize("reply", ADMIT_GARBAGE, ids=lambda v: repr(v)[:30])
async def test_a_malformed_admission_reply_is_redis_failing_not_a_crash(
    redis_server: RedisServer, reply: object
) -> None:
    """Invariant: whatever admit.lua's reply is instead of its four integers in range,
    the mailbox's task does not crash and no request is refused by it: the process
    switches to local limits (the reason names admit.lua) and the request is admitted
    there; the router closes cleanly."""
    config = RouterConfig(
        providers={"a": ProviderConfig(kind="mock", rpm=600, max_concurrency=4)},
        shared=SharedConfig(redis_url=redis_server.url, prefix="admitgarbage", timeout=1.0),
    )
    async with open_router(config) as router:
        client = router._shared
        assert client is not None
        await router.complete(ChatRequest(model="a:m", messages=[Message.user("hi")]))
        _garble(client, ["admit"], reply)
        for _ in range(3):
            answer = await router.complete(ChatRequest(model="a:m", messages=[Message.user("hi")]))
            assert answer.text
        assert not client.shared
        assert "admit.lua with a malformed reply" in (client.reason or "")


@pytest.mark.parametrize("reply", [None, b"3", -1, [1], 10**9], ids=repr)
async def test_a_malformed_heartbeat_reply_is_redis_failing_not_a_crash(
    redis_server: RedisServer, reply: object
) -> None:
    """A heartbeat answered with anything but a process count: the client's task goes
    on (it does not crash the router), the process is on local limits and says why."""
    url = redis_server.url
    config = SharedConfig(redis_url=url, prefix="beatgarbage", timeout=1.0, heartbeat=0.05)
    client = SharedClient(config, url)
    async with client, trio.open_nursery() as nursery:
        await nursery.start(client.run)
        assert client.shared
        real = client._evalsha

        async def evalsha(script: Any, keys: Sequence[str], args: Sequence[Any]) -> Any:
            if script is client._heartbeat:
                return reply
            return await real(script, keys, args)

        client._evalsha = evalsha  # type: ignore[method-assign]
        await trio.sleep(0.2)
        assert not client.shared
        assert "heartbeat.lua with a malformed reply" in (client.reason or "")
        nursery.cancel_scope.cancel()
