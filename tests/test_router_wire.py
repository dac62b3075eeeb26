"""The router's actors over real loopback sockets against the fake upstream.

Every test builds a router whose providers are the real HTTP adapters, sending through
one ``httpx.AsyncClient`` to the project's fake upstream on 127.0.0.1, and runs on
virtual time (``autojump_clock``).

Virtual time and real sockets: the clock only jumps when every task is blocked, and on
loopback a write is readable on the other side at once, so no virtual time passes while
bytes are in transit.  The upstream stamps ``received_at`` with the same trio clock, so
the arrival times it records are exactly the router's admission times (the scenarios
have no latency unless a test says so); that is what lets the rate-limit tests compare
arrivals with the token-bucket schedule exactly.  Where a vendor's header carries a
rounded value (Anthropic resets are whole RFC 3339 seconds) the assertion allows the
rounding and nothing more.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import httpx
import msgspec
import pytest
import trio
import trio.testing

from providers import (
    AllProvidersFailed,
    AnthropicProvider,
    ChatRequest,
    Done,
    LLMError,
    Message,
    OpenAIProvider,
    Overloaded,
    RateLimited,
    Secret,
    ServerError,
    StreamInterrupted,
    TextDelta,
)
from providers._tokens import estimate_input_tokens
from providers.testing import (
    FakeUpstream,
    Fault,
    Fixed,
    RecordedRequest,
    Scenario,
    open_fake_upstream,
)
from router import Router, open_router
from router.config import (
    BreakerConfig,
    HedgeConfig,
    ProviderConfig,
    RetryConfig,
    RouteConfig,
    RouterConfig,
)

KEY = "sk-test-ROUTERWIRE-5f2b9c7e1a8d4036"
KINDS = ["openai", "anthropic"]
EPS = 1e-6

# One try per provider: these tests are about fail-over, breakers and pauses, not retries.
NO_RETRY = RetryConfig(max_attempts=1)


# --------------------------------------------------------------------------- helpers


@pytest.fixture(autouse=True)
def _no_key_in_any_log_record(caplog: pytest.LogCaptureFixture) -> Iterable[None]:
    """Every test: capture every log record (all loggers, DEBUG) and check none has the key."""
    caplog.set_level(logging.DEBUG)
    yield
    for record in caplog.records:
        assert_no_key(record.getMessage(), repr(record.args), record.exc_text or "")


def secret_fragments() -> list[str]:
    # The key itself and a distinctive tail of it (a vendor message may echo a suffix).
    return [KEY, KEY[-12:]]


def assert_no_key(*things: Any) -> None:
    """None of ``things`` (strings, errors with their chains, structs) shows the key."""
    for thing in things:
        for text in _texts(thing):
            for fragment in secret_fragments():
                assert fragment not in text, f"the API key leaked into {text!r}"


def _texts(thing: Any, seen: set[int] | None = None) -> list[str]:
    seen = set() if seen is None else seen
    if id(thing) in seen:
        return []
    seen.add(id(thing))
    out = [str(thing), repr(thing)]
    if isinstance(thing, msgspec.Struct):
        out.append(msgspec.json.encode(thing, enc_hook=repr).decode())
    if isinstance(thing, BaseException):
        if isinstance(thing, BaseExceptionGroup):
            for inner in thing.exceptions:
                out += _texts(inner, seen)
        if isinstance(thing, LLMError):
            out.append(repr(thing.headers))
        for attempt in getattr(thing, "attempts", ()):
            out += _texts(attempt, seen)
        for linked in (thing.__cause__, thing.__context__):
            if linked is not None:
                out += _texts(linked, seen)
    return out


def chat(model: str = "a:m", text: str = "hi", **kw: Any) -> ChatRequest:
    return ChatRequest(model=model, messages=[Message.user(text)], **kw)


def arrivals(up: FakeUpstream, scenario: str) -> list[float]:
    """When the upstream received each request of ``scenario``, in order."""
    return [r.received_at for r in up.requests if r.scenario == scenario]


def approx(values: Sequence[float]) -> Any:
    return pytest.approx(list(values), abs=EPS)


def task_names() -> Counter[str]:
    """Every task below the test's task, except the fake upstream's server tasks."""
    names: Counter[str] = Counter()

    def walk(task: trio.lowlevel.Task) -> None:
        for nursery in task.child_nurseries:
            for child in nursery.child_tasks:
                if child.name == "trio.serve_tcp":
                    continue
                names[child.name] += 1
                walk(child)

    walk(trio.lowlevel.current_task())
    return names


def assert_idle(router: Router) -> None:
    """Nothing queued, nothing in flight, on any provider; no key in the snapshots."""
    stats = router.statistics()
    for name, s in stats.providers.items():
        assert (s.queued, s.in_flight) == (0, 0), name
    assert_no_key(stats, router.health(), router)


async def finished(record: RecordedRequest) -> float:
    """Wait until the upstream ended ``record``'s exchange; return how long that took."""
    start = trio.current_time()
    with trio.fail_after(1):
        await record.finished.wait()
    return trio.current_time() - start


@asynccontextmanager
async def wire_router(
    scenarios: dict[str, Scenario],
    providers: dict[str, ProviderConfig],
    routes: dict[str, list[str] | RouteConfig] | None = None,
    **config: Any,
) -> AsyncIterator[tuple[FakeUpstream, Router]]:
    """A fake upstream, and a router over it: provider ``name`` talks to scenario ``name``
    (``config``: more RouterConfig fields)."""
    async with open_fake_upstream(scenarios) as up, httpx.AsyncClient(timeout=60.0) as client:
        adapters: dict[str, Any] = {}
        for name, pc in providers.items():
            if pc.kind == "anthropic":
                adapters[name] = AnthropicProvider(
                    name=name,
                    api_key=Secret(KEY),
                    base_url=up.base_url(name, "anthropic"),
                    client=client,
                )
            else:
                adapters[name] = OpenAIProvider(
                    name=name,
                    api_key=Secret(KEY),
                    base_url=up.base_url(name, "openai"),
                    client=client,
                )
        router_config = RouterConfig(
            providers=providers,
            routes={
                alias: t if isinstance(t, RouteConfig) else RouteConfig(targets=t)
                for alias, t in (routes or {}).items()
            },
            **config,
        )
        async with open_router(router_config, providers=adapters, seed=1) as router:
            yield up, router


def upstream_request_levels(times: Sequence[float], limit: float, cost: float = 1.0) -> list[float]:
    """Replay the fake upstream's own bucket (``limit`` per 60 s, refilled linearly).

    Returns the level each request found when it arrived; a level below ``cost`` means
    the real provider would have answered that request with a 429.
    """
    level, last, found = float(limit), times[0] if times else 0.0, []
    for t in times:
        level = min(limit, level + (t - last) * limit / 60.0)
        last = t
        found.append(level)
        level = max(0.0, level - cost)
    return found


# --------------------------------------------------------------------------- token buckets


@pytest.mark.parametrize("kind", KINDS)
async def test_rpm_limit_holds_for_200_concurrent_requests_on_the_wire(
    kind: str, autojump_clock: trio.testing.MockClock
) -> None:
    """200 concurrent calls at rpm=60/burst=5 all succeed; arrivals follow the bucket exactly."""
    rpm, burst, n = 60, 5, 200
    pc = ProviderConfig(kind=kind, rpm=rpm, rpm_burst=burst)  # type: ignore[arg-type]
    async with wire_router({}, {"a": pc}) as (up, router):
        replies: list[str] = []

        async def one() -> None:
            replies.append((await router.complete(chat())).text)

        async with trio.open_nursery() as nursery:
            for _ in range(n):
                nursery.start_soon(one)
            await trio.sleep(10.5)
            mid = router.statistics().providers["a"]
            # 5 at once, then one a second: 15 admitted by t=10.5, the rest wait in order.
            assert (mid.admitted, mid.queued, mid.in_flight) == (15, n - 15, 0)

        assert replies == ["echo: hi"] * n
        times = sorted(arrivals(up, "a"))
        # The bucket's schedule: `burst` at t=0, then one every 60/rpm seconds.
        assert times == approx([0.0] * burst + [float(k) for k in range(1, n - burst + 1)])
        # In every 60 s window (closed) at most rpm + burst requests reached the upstream.
        for t in times:
            in_window = sum(t - EPS <= u <= t + 60.0 + EPS for u in times)
            assert in_window <= rpm + burst
        assert max(sum(t - EPS <= u <= t + 60.0 + EPS for u in times) for t in times) == 65
        stats = router.statistics().providers["a"]
        assert (stats.admitted, stats.succeeded, stats.failed, stats.refused) == (n, n, 0, 0)
        assert up.stats("a").requests == n
        assert_idle(router)


async def test_tpm_limit_holds_on_the_wire(autojump_clock: trio.testing.MockClock) -> None:
    """TPM: admission charges the estimate, reconciles to the reported usage; windows hold."""
    tpm, burst, n, max_tokens = 600, 100, 150, 5
    pc = ProviderConfig(kind="openai", tpm=tpm, tpm_burst=burst)
    async with wire_router({}, {"a": pc}) as (up, router):
        usages: list[int] = []

        async def one() -> None:
            resp = await router.complete(chat(max_tokens=max_tokens))
            usages.append(resp.usage.input_tokens + resp.usage.output_tokens)

        async with trio.open_nursery() as nursery:
            for _ in range(n):
                nursery.start_soon(one)

        (actual,) = set(usages)  # every request is the same: same usage
        estimate = estimate_input_tokens(chat(max_tokens=max_tokens)) + max_tokens
        assert actual <= estimate  # the estimate errs high, so the bucket never goes into debt
        rate = tpm / 60.0
        # Expected schedule: admit when the bucket holds the estimate; after the (instant)
        # response only the actual usage stays charged.
        expected, level, now = [], float(burst), 0.0
        for _ in range(n):
            if level < estimate:
                now += (estimate - level) / rate
                level = float(estimate)
            expected.append(now)
            level -= actual
        times = sorted(arrivals(up, "a"))
        assert times == approx(expected)
        assert times[-1] == pytest.approx(((n - 1) * actual + estimate - burst) / rate)
        # In every 60 s window the upstream saw at most tpm + burst tokens.
        for t in times:
            tokens = actual * sum(t - EPS <= u <= t + 60.0 + EPS for u in times)
            assert tokens <= tpm + burst
        stats = router.statistics().providers["a"]
        assert stats.input_tokens + stats.output_tokens == n * actual
        assert_idle(router)


async def test_max_concurrency_bounds_the_exchanges_open_on_the_wire(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """max_concurrency=2 with 1 s answers: requests reach the upstream two by two, each second."""
    pc = ProviderConfig(kind="anthropic", max_concurrency=2)
    async with wire_router({"a": Scenario(latency=Fixed(1.0))}, {"a": pc}) as (up, router):
        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(router.complete, chat())
            await trio.sleep(0.5)
            assert up.stats("a").in_flight == 2
            mid = router.statistics().providers["a"]
            assert (mid.in_flight, mid.queued) == (2, 8)
        assert arrivals(up, "a") == approx([float(k // 2) for k in range(10)])
        assert trio.current_time() == 5.0
        assert_idle(router)


# --------------------------------------------------------------------------- 429 and retry-after


@pytest.mark.parametrize("kind", KINDS)
async def test_429_retry_after_pauses_the_provider(
    kind: str, autojump_clock: trio.testing.MockClock
) -> None:
    """After a 429 with retry-after 3 s nothing reaches the upstream before t=3, then both go."""
    scenario = Scenario(faults=[Fault("status", status=429, retry_after=3.0, on_requests=[1])])
    pc = ProviderConfig(kind=kind)  # type: ignore[arg-type]
    async with wire_router({"a": scenario}, {"a": pc}) as (up, router):
        done: dict[str, float] = {}

        async def call(name: str, at: float) -> None:
            await trio.sleep(at)
            await router.complete(chat())
            done[name] = trio.current_time()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call, "first", 0.0)
            nursery.start_soon(call, "second", 1.0)  # arrives during the pause: waits

        records = [r for r in up.requests if r.scenario == "a"]
        assert [r.status for r in records] == [429, 200, 200]
        assert records[0].received_at == 0.0
        # OpenAI: exactly the retry-after.  Anthropic's 429 also says "0 requests left
        # until <reset>", an RFC 3339 time rounded up to the second: up to 1 s later.
        slack = 0.0 if kind == "openai" else 1.0
        resumed = records[1].received_at
        assert 3.0 - EPS <= resumed <= 3.0 + slack + EPS
        assert records[2].received_at == resumed
        assert done == {"first": resumed, "second": resumed}
        stats = router.statistics()
        a = stats.providers["a"]
        assert (stats.retries, a.retried, a.failed) == (1, 1, 1)
        # A 429 is a pause, not a health failure.
        assert a.breaker == "closed"
        assert_idle(router)


async def test_retry_after_beyond_the_deadline_fails_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A retry-after longer than the caller's deadline is not waited: RateLimited at once."""
    scenario = Scenario(faults=[Fault("status", status=429, retry_after=10.0, rate=1.0)])
    async with wire_router({"a": scenario}, {"a": ProviderConfig(kind="openai")}) as (
        up,
        router,
    ):
        with trio.move_on_after(5.0) as deadline, pytest.raises(RateLimited) as info:
            await router.complete(chat())
        assert not deadline.cancelled_caught
        assert trio.current_time() == 0.0
        assert info.value.retry_after == 10.0
        assert_no_key(info.value)
        assert arrivals(up, "a") == [0.0]
        assert_idle(router)


@pytest.mark.parametrize("kind", KINDS)
async def test_429_on_a_route_fails_over_at_once_and_skips_the_paused_provider(
    kind: str, autojump_clock: trio.testing.MockClock
) -> None:
    """A route fails over on a 429 without waiting, and sends nothing to 'a' until retry-after."""
    scenario = Scenario(faults=[Fault("status", status=429, retry_after=30.0, on_requests=[1])])
    pc = ProviderConfig(kind=kind, retry=NO_RETRY)  # type: ignore[arg-type]
    async with wire_router({"a": scenario}, {"a": pc, "b": pc}, {"r": ["a:m", "b:m"]}) as (
        up,
        router,
    ):
        for at in (0.0, 1.0, 29.0):
            await trio.sleep_until(at)
            resp = await router.complete(chat("r"))
            assert resp.provider == "b"
            assert trio.current_time() == at  # no waiting for the paused provider
        assert arrivals(up, "a") == [0.0]
        assert arrivals(up, "b") == [0.0, 1.0, 29.0]
        # Anthropic's 429 also carries a reset time, rounded up to the whole second.
        resume = 30.0 if kind == "openai" else 31.0
        await trio.sleep_until(resume)
        resp = await router.complete(chat("r"))  # the pause is over: 'a' serves again
        assert resp.provider == "a"
        assert arrivals(up, "a") == [0.0, resume]
        assert [r.status for r in up.requests if r.scenario == "a"] == [429, 200]
        stats = router.statistics()
        assert (stats.requests, stats.succeeded, stats.failed) == (4, 4, 0)
        assert stats.providers["a"].breaker == "closed"  # a 429 is not a health failure
        assert_idle(router)


# --------------------------------------------------------------------------- rate-limit headers


@pytest.mark.parametrize("kind", KINDS)
async def test_ratelimit_headers_lower_the_bucket_and_pause_until_reset(
    kind: str, autojump_clock: trio.testing.MockClock
) -> None:
    """The router learns 6 RPM from headers: it stops at remaining 0 and resumes at the reset."""
    limit = 6
    scenario = Scenario(ratelimit_headers=True, ratelimit_requests=limit)
    # We configure far more than the provider really allows; the headers must correct it.
    pc = ProviderConfig(kind=kind, rpm=600)  # type: ignore[arg-type]
    async with wire_router({"a": scenario}, {"a": pc}) as (up, router):
        await router.complete(chat())  # learns: limit 6, remaining 5
        async with trio.open_nursery() as nursery:
            for _ in range(12):
                nursery.start_soon(router.complete, chat())

        times = arrivals(up, "a")
        assert len(times) == 13
        assert all(r.status == 200 for r in up.requests)
        # 6 at t=0 (1 + 5 left), then nothing until the announced reset (60 s: the window
        # is empty), 6 more, and the last one at the next reset.  OpenAI's reset is a
        # duration: exact.  Anthropic's is a wall-clock time in whole seconds (rounded up
        # by the upstream), read against the router's own wall clock, which is anchored a
        # moment later in real time than the upstream's: within a second either way.
        assert times[:6] == [0.0] * 6
        if kind == "openai":
            assert times[6:] == approx([60.0] * 6 + [120.0])
            skew = 0.0
        else:
            # A resume a hair early finds the upstream's bucket a hair short of full:
            # remaining rounds down to 0 again, with its own reset, so the batch may split.
            skew = 1.0
            assert 60.0 - skew <= times[6] <= 60.0 + skew
            # The next pause is again "until full", at most one window: 50 to 60 s.
            assert times[6] + 50.0 - skew <= times[12] <= times[6] + 60.0 + skew
        # Never a request the provider's own bucket could not take (a 429 on a real API),
        # but for what that skew explains: 1 s of the upstream's refill, limit/60.
        assert min(upstream_request_levels(times, limit)) >= 1 - skew * limit / 60.0 - EPS
        assert_idle(router)


@pytest.mark.parametrize("kind", KINDS)
async def test_ratelimit_headers_of_streams_lower_the_bucket_too(
    kind: str, autojump_clock: trio.testing.MockClock
) -> None:
    """Streamed answers carry rate-limit headers too; the router learns from them alike."""
    limit = 6
    scenario = Scenario(ratelimit_headers=True, ratelimit_requests=limit)
    pc = ProviderConfig(kind=kind, rpm=600)  # type: ignore[arg-type]
    async with wire_router({"a": scenario}, {"a": pc}) as (up, router):
        await call_and_read(router, chat(), streaming=True)  # learns: limit 6, remaining 5
        async with trio.open_nursery() as nursery:
            for _ in range(12):
                nursery.start_soon(call_and_read, router, chat(), True)
        times = arrivals(up, "a")
        assert len(times) == 13
        assert times[:6] == [0.0] * 6
        assert times[6] >= 59.0  # nothing more before the announced reset
        assert min(upstream_request_levels(times, limit)) >= 1 - limit / 60.0 - EPS
        assert_idle(router)


async def test_ratelimit_token_headers_pause_a_provider_with_a_tpm_limit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Token headers shrink a configured TPM bucket: no request exceeds the provider's tokens."""
    tokens_per_minute = 28
    scenario = Scenario(ratelimit_headers=True, ratelimit_tokens=tokens_per_minute)
    pc = ProviderConfig(kind="openai", tpm=1_000_000)
    async with wire_router({"a": scenario}, {"a": pc}) as (up, router):
        used = []
        for _ in range(8):
            resp = await router.complete(chat(max_tokens=5))
            used.append(resp.usage.input_tokens + resp.usage.output_tokens)
        (cost,) = set(used)
        times = arrivals(up, "a")
        assert min(upstream_request_levels(times, tokens_per_minute, cost)) >= cost - EPS
        # The first answer teaches the bucket 28 tokens/min (rate r) and what is left; from
        # then on a request waits until the bucket holds its estimate (input + max_tokens),
        # and only its real usage stays charged: 3 fit at t=0, then one every cost/r.
        estimate = estimate_input_tokens(chat(max_tokens=5)) + 5
        r = tokens_per_minute / 60.0
        first = (estimate - (tokens_per_minute - 3 * cost)) / r
        assert times == approx([0.0] * 3 + [first + k * cost / r for k in range(5)])
        assert_idle(router)


async def test_ratelimit_token_headers_pause_a_provider_without_a_tpm_limit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Token headers saying 0 remaining pause a provider even with no TPM configured."""
    tokens_per_minute = 28
    scenario = Scenario(ratelimit_headers=True, ratelimit_tokens=tokens_per_minute)
    # No TPM bucket at all (no preset either): nothing to clamp, but a reset to honour.
    pc = ProviderConfig(kind="openai", presets=False)
    async with wire_router({"a": scenario}, {"a": pc}) as (up, router):
        used = []
        for _ in range(6):
            resp = await router.complete(chat(max_tokens=5))
            used.append(resp.usage.input_tokens + resp.usage.output_tokens)
        (cost,) = set(used)
        times = arrivals(up, "a")
        assert min(upstream_request_levels(times, tokens_per_minute, cost)) >= cost - EPS
        # After 4 x 7 = 28 tokens the headers say "0 left, full again in 60 s".
        assert times == [0.0] * 4 + [60.0] * 2
        assert_idle(router)


# --------------------------------------------------------------------------- circuit breaker


async def test_breaker_opens_on_500s_stops_calls_and_the_route_fails_over(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A provider failing 100% trips its breaker; while open the upstream sees nothing of it."""
    failing = Scenario(faults=[Fault("status", status=500, rate=1.0)])
    breaker = BreakerConfig(minimum_calls=4, open_duration=10.0, half_open_probes=1)
    a = ProviderConfig(kind="openai", breaker=breaker, retry=NO_RETRY)
    b = ProviderConfig(kind="anthropic")
    # Panic routing off, so that the direct calls to "a:m" are refused while open (the
    # route "r" keeps b routable: one of two is not below the threshold anyway).
    async with wire_router(
        {"a": failing}, {"a": a, "b": b}, {"r": ["a:m", "b:m"]}, panic_threshold=0.0
    ) as (up, router):
        # Four straight 500s (minimum_calls=4, 100% failures) trip the breaker.
        for _ in range(4):
            with pytest.raises(ServerError):
                await router.complete(chat("a:m"))
        assert up.stats("a").requests == 4
        tripped = trio.current_time()
        assert router.statistics().providers["a"].breaker == "open"
        health = router.health()["a"]
        assert (health.status, health.breaker.state) == ("unhealthy", "open")
        assert_no_key(health)

        # While open, for 10 s: a direct call is refused without touching the wire, and
        # the route serves every request from b at once.
        while trio.current_time() < tripped + 9.5:
            with pytest.raises(Overloaded):
                await router.complete(chat("a:m"))
            start = trio.current_time()
            resp = await router.complete(chat("r"))
            assert (resp.provider, resp.text) == ("b", "echo: hi")
            assert trio.current_time() == start
            await trio.sleep(0.5)
        assert up.stats("a").requests == 4

        # Half-open at +10 s: exactly one probe reaches a; it fails, and the breaker
        # opens again (for 20 s now): the upstream sees nothing more.
        await trio.sleep_until(tripped + 10.0)
        with pytest.raises(ServerError):
            await router.complete(chat("a:m"))
        assert up.stats("a").requests == 5
        assert arrivals(up, "a")[-1] == pytest.approx(tripped + 10.0, abs=EPS)
        for _ in range(10):
            await trio.sleep(1.5)
            with pytest.raises(Overloaded):
                await router.complete(chat("a:m"))
            assert (await router.complete(chat("r"))).provider == "b"
        assert up.stats("a").requests == 5
        assert router.statistics().providers["a"].breaker == "open"
        assert up.stats("b").requests == up.stats("b").completed > 20
        assert_idle(router)


async def test_a_429_on_a_half_open_probe_does_not_close_the_breaker(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A probe answered 429 says nothing about health: the breaker stays half-open."""
    scenario = Scenario(
        faults=[
            Fault("status", status=500, on_requests=[1, 2]),
            Fault("status", status=429, retry_after=0.5, on_requests=[3]),
            Fault("status", status=500, on_requests=[4]),
        ]
    )
    breaker = BreakerConfig(minimum_calls=2, open_duration=5.0, half_open_probes=1)
    pc = ProviderConfig(kind="openai", breaker=breaker, retry=NO_RETRY)
    async with wire_router({"a": scenario}, {"a": pc}) as (up, router):
        for _ in range(2):
            with pytest.raises(ServerError):
                await router.complete(chat())
        await trio.sleep(5.0)
        with pytest.raises(RateLimited):
            await router.complete(chat())  # the probe: rate limited, not healthy
        assert router.statistics().providers["a"].breaker == "half_open"
        await trio.sleep(0.5)
        with pytest.raises(ServerError):
            await router.complete(chat())  # the next probe fails: open again
        assert router.statistics().providers["a"].breaker == "open"
        assert [r.status for r in up.requests] == [500, 500, 429, 500]


# --------------------------------------------------------------------------- cancellation


async def test_cancel_while_queued_never_reaches_the_upstream(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A caller cancelled in the mailbox queue is never sent and gives its turn back."""
    pc = ProviderConfig(kind="openai", rpm=60, rpm_burst=1)
    async with wire_router({}, {"a": pc}) as (up, router):
        before = task_names()
        await router.complete(chat())  # t=0: uses the one token; the next is due at t=1

        # A deadline that the queue cannot meet is refused before it (without queueing;
        # the router may retry the refusal within the deadline, never past it).
        with trio.move_on_after(0.5) as deadline, pytest.raises(Overloaded):
            await router.complete(chat())
        assert not deadline.cancelled_caught
        assert trio.current_time() < 0.5
        assert router.statistics().providers["a"].refused >= 1

        # No deadline: it queues, and is cancelled from outside while waiting.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(router.complete, chat())
            await trio.sleep(0.5)
            queued = router.statistics().providers["a"]
            assert (queued.queued, queued.in_flight) == (1, 0)
            nursery.cancel_scope.cancel()
        assert router.statistics().providers["a"].queued == 0
        assert task_names() == before
        await trio.sleep_until(1.0)
        await router.complete(chat())  # the cancelled caller did not take the t=1 token
        assert arrivals(up, "a") == [0.0, 1.0]
        stats = router.statistics().providers["a"]
        assert (stats.admitted, stats.succeeded, stats.failed) == (2, 2, 0)
        assert_idle(router)


async def call_and_read(router: Router, request: ChatRequest, streaming: bool) -> None:
    if streaming:
        async with router.stream(request) as events:
            async for _ in events:
                pass
    else:
        await router.complete(request)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("streaming", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize(
    "scenario",
    [Scenario(faults=[Fault("hang", rate=1.0)]), Scenario(latency=Fixed(30.0))],
    ids=["hang", "slow-headers"],
)
async def test_cancel_while_waiting_for_headers_closes_the_connection(
    kind: str, streaming: bool, scenario: Scenario, autojump_clock: trio.testing.MockClock
) -> None:
    """Cancelling a caller before response headers disconnects at once; nothing is left over."""
    pc = ProviderConfig(kind=kind)  # type: ignore[arg-type]
    async with wire_router({"a": scenario}, {"a": pc}) as (up, router):
        before = task_names()
        with trio.move_on_after(1.0) as scope:
            await call_and_read(router, chat(), streaming)
        assert scope.cancelled_caught
        assert trio.current_time() == 1.0
        (record,) = up.requests
        assert await finished(record) == 0.0  # noticed in the same virtual instant
        assert (record.outcome, record.status) == ("client_disconnected", None)
        assert task_names() == before
        stats = router.statistics().providers["a"]
        # Abandoned, not failed: a caller's cancellation says nothing about the provider.
        assert (stats.cancelled, stats.failed, stats.breaker) == (1, 0, "closed")
        assert up.stats("a").in_flight == 0
        assert_idle(router)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("how", ["cancel", "break"])
@pytest.mark.parametrize("after", [1, 3])
async def test_leaving_a_stream_mid_way_closes_the_connection(
    kind: str, how: str, after: int, autojump_clock: trio.testing.MockClock
) -> None:
    """A stream cancelled (or left) after its 1st/3rd TextDelta disconnects at once."""
    scenario = Scenario(chunk_interval=0.5, reply=" ".join(["word"] * 40))
    pc = ProviderConfig(kind=kind, max_concurrency=1)  # type: ignore[arg-type]
    async with wire_router({"a": scenario}, {"a": pc}) as (up, router):
        before = task_names()
        deltas: list[str] = []
        with trio.CancelScope() as scope:
            async with router.stream(chat()) as events:
                async for event in events:
                    if isinstance(event, TextDelta):
                        deltas.append(event.text)
                        if len(deltas) == after:
                            if how == "break":
                                break
                            scope.cancel()
        assert scope.cancelled_caught == (how == "cancel")
        assert deltas == ["word"] + [" word"] * (after - 1)
        cancelled_at = trio.current_time()
        assert cancelled_at == 0.5 * (after - 1)
        (record,) = up.requests
        assert await finished(record) == 0.0
        assert trio.current_time() == cancelled_at
        assert (record.outcome, record.status) == ("client_disconnected", 200)
        assert task_names() == before
        stats = router.statistics().providers["a"]
        assert (stats.cancelled, stats.failed, stats.succeeded) == (1, 0, 0)
        assert_idle(router)
        # The concurrency slot was returned: the next call goes at once.
        up.set_scenario("a", Scenario())
        await router.complete(chat())
        assert trio.current_time() == cancelled_at


async def test_stream_cancelled_before_headers_frees_its_breaker_probe(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A half-open probe stream cancelled before its headers frees the slot for another probe."""
    scenario = Scenario(
        faults=[
            Fault("status", status=500, on_requests=[1, 2]),
            Fault("hang", on_requests=[3]),
        ]
    )
    breaker = BreakerConfig(minimum_calls=2, open_duration=5.0, half_open_probes=1)
    pc = ProviderConfig(kind="openai", breaker=breaker, retry=NO_RETRY)
    async with wire_router({"a": scenario}, {"a": pc}) as (up, router):
        for _ in range(2):
            with pytest.raises(ServerError):
                await router.complete(chat())
        assert router.statistics().providers["a"].breaker == "open"
        await trio.sleep(5.0)
        with trio.move_on_after(1.0):  # the half-open probe hangs; its caller gives up
            await call_and_read(router, chat(), streaming=True)
        assert await finished(up.requests[2]) == 0.0
        assert router.statistics().providers["a"].cancelled == 1
        # The probe was cancelled, which says nothing about the provider: the next call
        # is the next probe (request 4 answers normally) and closes the breaker.
        assert (await router.complete(chat())).text == "echo: hi"
        assert router.statistics().providers["a"].breaker == "closed"


@pytest.mark.parametrize("streaming", [False, True], ids=["complete", "stream"])
async def test_hedge_loser_is_disconnected_on_the_wire(
    streaming: bool, autojump_clock: trio.testing.MockClock
) -> None:
    """A hedge that wins cancels the slow primary: its connection closes in the same instant."""
    slow = Scenario(latency=Fixed(5.0))
    pc = ProviderConfig(kind="openai")
    route = RouteConfig(targets=["a:m", "b:m"], hedge=HedgeConfig(max_attempts=2, delay=0.5))
    async with wire_router({"a": slow}, {"a": pc, "b": pc}, {"h": route}) as (up, router):
        before = task_names()
        await call_and_read(router, chat("h"), streaming)
        assert trio.current_time() == 0.5
        assert arrivals(up, "a") == [0.0]
        assert arrivals(up, "b") == [0.5]
        (primary,) = [r for r in up.requests if r.scenario == "a"]
        assert await finished(primary) == 0.0
        assert (primary.outcome, primary.status) == ("client_disconnected", None)
        assert task_names() == before
        stats = router.statistics()
        assert (stats.hedges, stats.hedge_wins, stats.succeeded) == (1, 1, 1)
        assert (stats.providers["a"].cancelled, stats.providers["a"].failed) == (1, 0)
        assert_idle(router)


# --------------------------------------------------------------------------- streaming


@pytest.mark.parametrize("kind", KINDS)
async def test_stream_through_the_router_delivers_paced_events_and_usage(
    kind: str, autojump_clock: trio.testing.MockClock
) -> None:
    """Streamed deltas arrive at the upstream's pace and join up; Done carries the usage."""
    scenario = Scenario(chunk_interval=0.25)
    pc = ProviderConfig(kind=kind)  # type: ignore[arg-type]
    async with wire_router({"a": scenario}, {"a": pc}) as (up, router):
        stamped: list[tuple[float, Any]] = []
        async with router.stream(chat(text="hello wire world")) as events:
            assert events.provider == "a"
            async for event in events:
                stamped.append((trio.current_time(), event))
        deltas = [(t, e.text) for t, e in stamped if isinstance(e, TextDelta)]
        assert "".join(text for _, text in deltas) == "echo: hello wire world"
        assert [t for t, _ in deltas] == approx([0.0, 0.25, 0.5, 0.75])
        done = stamped[-1][1]
        assert isinstance(done, Done)
        assert events.response is done.response
        usage = done.response.usage
        assert usage.input_tokens > 0
        assert usage.output_tokens == 4
        stats = router.statistics().providers["a"]
        assert (stats.succeeded, stats.input_tokens, stats.output_tokens) == (
            1,
            usage.input_tokens,
            usage.output_tokens,
        )
        assert up.requests[0].outcome == "completed"
        assert_idle(router)


STREAM_FAULTS = ["midstream_error", "truncate", "malformed"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fault", STREAM_FAULTS)
async def test_stream_error_before_content_fails_over_invisibly(
    kind: str, fault: Any, autojump_clock: trio.testing.MockClock
) -> None:
    """A stream failing before any content moves to the next target, unseen by the caller."""
    broken = Scenario(faults=[Fault(fault, rate=1.0, after_chunks=0)])
    pc = ProviderConfig(kind=kind, retry=NO_RETRY)  # type: ignore[arg-type]
    async with wire_router({"a": broken}, {"a": pc, "b": pc}, {"r": ["a:m", "b:m"]}) as (
        up,
        router,
    ):
        async with router.stream(chat("r", "hello")) as events:
            assert events.provider == "b"
            seen = [event async for event in events]
        assert "".join(e.text for e in seen if isinstance(e, TextDelta)) == "echo: hello"
        assert isinstance(seen[-1], Done)
        assert seen[-1].response.usage.output_tokens == 2
        assert [(r.scenario, r.outcome) for r in up.requests] == [
            ("a", f"fault:{fault}"),
            ("b", "completed"),
        ]
        stats = router.statistics()
        assert (stats.fallbacks, stats.succeeded, stats.failed) == (1, 1, 0)
        assert (stats.providers["a"].failed, stats.providers["b"].succeeded) == (1, 1)
        assert_idle(router)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fault", STREAM_FAULTS)
async def test_stream_error_after_content_surfaces_as_stream_interrupted(
    kind: str, fault: Any, autojump_clock: trio.testing.MockClock
) -> None:
    """After the first content event the stream is committed: a failure is StreamInterrupted."""
    broken = Scenario(faults=[Fault(fault, rate=1.0, after_chunks=2)])
    pc = ProviderConfig(kind=kind, retry=NO_RETRY)  # type: ignore[arg-type]
    async with wire_router({"a": broken}, {"a": pc, "b": pc}, {"r": ["a:m", "b:m"]}) as (
        up,
        router,
    ):
        texts: list[str] = []
        with pytest.raises(StreamInterrupted) as info:
            async with router.stream(chat("r", "one two three")) as events:
                async for event in events:
                    if isinstance(event, TextDelta):
                        texts.append(event.text)
        assert texts == ["echo:", " one"]
        assert info.value.provider == "a"
        assert_no_key(info.value)
        assert arrivals(up, "b") == []  # committed: no fail-over after content
        stats = router.statistics()
        assert (stats.providers["a"].failed, stats.providers["a"].succeeded) == (1, 0)
        assert_idle(router)


# --------------------------------------------------------------------------- secrets


async def test_api_key_never_appears_in_errors_statistics_health_or_logs(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Across 401/429/500/breaker/cancel/stream failures, the key shows up nowhere but the wire."""
    scenarios = {
        "auth": Scenario(faults=[Fault("status", status=401, rate=1.0)]),
        "limited": Scenario(faults=[Fault("status", status=429, retry_after=5.0, rate=1.0)]),
        "down": Scenario(faults=[Fault("status", status=500, rate=1.0)]),
        "hang": Scenario(faults=[Fault("hang", rate=1.0)]),
        "cut": Scenario(faults=[Fault("midstream_error", rate=1.0, after_chunks=1)]),
        "reset": Scenario(faults=[Fault("reset", rate=1.0)]),
    }
    breaker = BreakerConfig(minimum_calls=2, open_duration=60.0)
    providers = {
        "auth": ProviderConfig(kind="openai", retry=NO_RETRY),
        "limited": ProviderConfig(kind="anthropic", retry=NO_RETRY),
        "down": ProviderConfig(kind="openai", breaker=breaker, retry=NO_RETRY),
        "hang": ProviderConfig(kind="anthropic"),
        "cut": ProviderConfig(kind="openai"),
        "reset": ProviderConfig(kind="anthropic", retry=NO_RETRY),
    }
    routes = {"all": ["auth:m", "limited:m", "down:m", "reset:m"]}
    async with wire_router(scenarios, providers, routes) as (up, router):
        errors: list[BaseException] = []
        for _ in range(4):  # the 2nd trips "down"'s breaker; later ones see it open
            with pytest.raises(AllProvidersFailed) as info:
                await router.complete(chat("all"))
            errors.append(info.value)
            assert_no_key(router.statistics(), router.health())
        for model in ("auth:m", "limited:m", "down:m", "reset:m"):
            with pytest.raises(LLMError) as single:
                await router.complete(chat(model))
            errors.append(single.value)
        with trio.move_on_after(1.0):
            await router.complete(chat("hang:m"))
        with pytest.raises(StreamInterrupted) as interrupted:
            async with router.stream(chat("cut:m", "a b c")) as events:
                async for _ in events:
                    pass
        errors.append(interrupted.value)

        kinds = {type(e).__name__ for e in errors}
        assert kinds >= {"AllProvidersFailed", "AuthenticationError", "StreamInterrupted"}
        assert any(isinstance(e, RateLimited | Overloaded | ServerError) for e in errors)
        assert_no_key(*errors, router.statistics(), router.health(), router)
        # The key did go over the wire, in each vendor's header.
        auth = {r.headers.get("authorization") or r.headers.get("x-api-key") for r in up.requests}
        assert auth == {f"Bearer {KEY}", KEY}
        # ... and the router did log about these failures (checked by the autouse fixture).
        assert any(
            r.name == "trio_llm_router" and r.levelno >= logging.WARNING for r in caplog.records
        )
