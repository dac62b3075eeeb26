"""The race ("happy eyeballs for providers") through the real router, on virtual time.

Like trio's own happy-eyeballs tests: every target is a :class:`MockProvider` whose
timeline is exact (see its module docstring), the clock autojumps, and each test asserts
the exact ``trio.current_time()`` at which attempts start, lose, fail and win, and what
the attempt trace (``response.attempts`` / ``exc.attempts``) says about each.

The last section runs the same races over real loopback sockets against the fake
upstream, and checks that a loser's HTTP connection is closed.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from providers import (
    AllProvidersFailed,
    AnthropicProvider,
    Attempt,
    ChatRequest,
    ContextLengthExceeded,
    Done,
    InvalidRequest,
    LLMError,
    Message,
    OpenAIProvider,
    Overloaded,
    Secret,
    ServerError,
    TextDelta,
)
from providers.testing import (
    FakeUpstream,
    Fault,
    Fixed,
    MockProvider,
    MockResponse,
    Scenario,
    open_fake_upstream,
)
from router import Router, open_router
from router._policy import Candidate
from router._race import AttemptRecord, Race
from router.config import (
    HedgeConfig,
    ModelConfig,
    ProviderConfig,
    RetryConfig,
    RouteConfig,
    RouterConfig,
)

NO_RETRY = RetryConfig(max_attempts=1)
KEY = "sk-test-RACE-0123456789abcdef"

# --------------------------------------------------------------------------- helpers


def chat(model: str = "r", text: str = "hi", **kw: Any) -> ChatRequest:
    """A one-message request; a small output budget keeps it inside any context window."""
    kw.setdefault("max_tokens", 16)
    return ChatRequest(model=model, messages=[Message.user(text)], **kw)


def reply(text: str = "ok", latency: float = 0.0, **kw: Any) -> MockResponse:
    return MockResponse(text=text, latency=latency, **kw)


def fail(error: LLMError, latency: float) -> MockResponse:
    return MockResponse(error=error, latency=latency)


@asynccontextmanager
async def race_router(
    targets: dict[str, MockProvider | MockResponse],
    hedge: HedgeConfig | None = None,
    *,
    models: dict[str, ModelConfig] | None = None,
    retry: RetryConfig = NO_RETRY,
    **route: Any,
) -> AsyncIterator[tuple[Router, dict[str, MockProvider]]]:
    """A router with route "r" over ``targets`` (name → mock, or its default answer).

    Targets do not retry unless ``retry`` says so: these tests are about the race's
    schedule (every attempt, hedged or not, retries on its target per its retry policy;
    the tests of that pass ``retry``)."""
    mocks = {
        name: t if isinstance(t, MockProvider) else MockProvider(name=name, default=t)
        for name, t in targets.items()
    }
    pc = ProviderConfig(kind="mock", retry=retry)
    config = RouterConfig(
        providers={name: pc for name in mocks},
        routes={"r": RouteConfig(targets=[f"{n}:m" for n in mocks], hedge=hedge, **route)},
        models=models or {},
    )
    async with open_router(config, providers=mocks) as router:
        yield router, mocks


def trace(attempts: Sequence[Attempt]) -> list[tuple[str, str, str, float | None, float | None]]:
    """(provider, kind, outcome, start, end) of every attempt."""
    return [(a.provider, a.kind, a.outcome, a.start, a.end) for a in attempts]


def calls(mock: MockProvider) -> list[tuple[str, float, float | None]]:
    """(outcome, started_at, ended_at) of every call the mock received."""
    return [(c.outcome, c.started_at, c.ended_at) for c in mock.calls]


def assert_all_ended(mocks: dict[str, MockProvider]) -> None:
    """No call is still running on any mock."""
    for name, m in mocks.items():
        assert m.in_flight == 0, name
        assert all(c.outcome != "pending" for c in m.calls), (name, calls(m))


# --------------------------------------------------------------------------- hedging


async def test_slow_primary_loses_to_the_hedge_at_exactly_1_5s(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Primary 10 s, backup 1 s, delay 0.5 s: the answer comes at 1.5 s, the primary is
    cancelled in that instant, and the trace says who lost to whom and when."""
    async with race_router(
        {"a": reply("slow", 10.0), "b": reply("fast", 1.0)}, HedgeConfig(delay=0.5)
    ) as (router, mocks):
        resp = await router.complete(chat())
        assert trio.current_time() == 1.5
        assert (resp.provider, resp.text) == ("b", "fast")
        assert trace(resp.attempts) == [
            ("a", "primary", "cancelled", 0.0, 1.5),
            ("b", "hedge", "won", 0.5, 1.5),
        ]
        assert resp.attempts[0].reason == "lost the race to b"
        assert resp.attempts[1].reason is None
        assert calls(mocks["a"]) == [("cancelled", 0.0, 1.5)]
        assert calls(mocks["b"]) == [("ok", 0.5, 1.5)]
        stats = router.statistics()
        assert (stats.hedges, stats.hedge_wins, stats.fallbacks) == (1, 1, 0)
        assert stats.providers["a"].cancelled == 1
        assert_all_ended(mocks)


async def test_fast_primary_sends_no_hedge(autojump_clock: trio.testing.MockClock) -> None:
    """A primary that answers before the delay wins alone: the backup is never called."""
    async with race_router(
        {"a": reply("a", 0.4), "b": reply("b", 0.1)}, HedgeConfig(delay=0.5)
    ) as (router, mocks):
        resp = await router.complete(chat())
        assert trio.current_time() == 0.4
        assert trace(resp.attempts) == [("a", "primary", "won", 0.0, 0.4)]
        assert mocks["b"].calls == []
        assert router.statistics().hedges == 0


async def test_non_fatal_failure_starts_the_next_attempt_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A ServerError at 0.2 s starts the next target at 0.2 s (a fallback, not waiting for
    the 0.5 s delay), and the fallback's answer wins."""
    async with race_router(
        {"a": fail(ServerError("boom"), 0.2), "b": reply("b", 1.0)}, HedgeConfig(delay=0.5)
    ) as (router, mocks):
        resp = await router.complete(chat())
        assert trio.current_time() == 1.2
        assert trace(resp.attempts) == [
            ("a", "primary", "failed", 0.0, 0.2),
            ("b", "fallback", "won", 0.2, 1.2),
        ]
        assert resp.attempts[0].error_type == "ServerError"
        stats = router.statistics()
        assert (stats.hedges, stats.fallbacks) == (0, 1)
        assert_all_ended(mocks)


async def test_failure_after_the_hedge_starts_the_third_target_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Hedge at 0.5 s; the primary fails at 0.75 s: the third target starts at 0.75 s,
    not at 1.0 s, and the first answer (the hedge's, at 2.5 s) wins."""
    async with race_router(
        {"a": fail(ServerError("boom"), 0.75), "b": reply("b", 2.0), "c": reply("c", 5.0)},
        HedgeConfig(delay=0.5, max_attempts=3),
    ) as (router, mocks):
        resp = await router.complete(chat())
        assert trio.current_time() == 2.5
        assert trace(resp.attempts) == [
            ("a", "primary", "failed", 0.0, 0.75),
            ("b", "hedge", "won", 0.5, 2.5),
            ("c", "fallback", "cancelled", 0.75, 2.5),
        ]
        assert_all_ended(mocks)


async def test_fatal_error_ends_the_race_at_once_and_is_raised_as_itself(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An InvalidRequest at 0.7 s cancels the running hedge and reaches the caller
    unwrapped, at 0.7 s, carrying the trace."""
    async with race_router(
        {"a": fail(InvalidRequest("bad field"), 0.7), "b": reply("b", 1.0), "c": reply("c")},
        HedgeConfig(delay=0.5, max_attempts=3),
    ) as (router, mocks):
        with pytest.raises(InvalidRequest, match="bad field") as info:
            await router.complete(chat())
        assert trio.current_time() == 0.7
        assert type(info.value) is InvalidRequest
        assert trace(info.value.attempts) == [
            ("a", "primary", "failed", 0.0, 0.7),
            ("b", "hedge", "cancelled", 0.5, 0.7),
        ]
        assert info.value.attempts[1].reason == "the race ended: InvalidRequest"
        assert calls(mocks["b"]) == [("cancelled", 0.5, 0.7)]
        assert mocks["c"].calls == []
        assert router.statistics().failed == 1
        assert_all_ended(mocks)


@pytest.mark.parametrize(("burst", "hedged"), [(0.0, [False, False]), (1.0, [True, False])])
async def test_exhausted_hedge_budget_sends_no_hedge(
    autojump_clock: trio.testing.MockClock, burst: float, hedged: list[bool]
) -> None:
    """With no refill (ratio 0), only ``burst`` hedges are ever sent: a request without a
    token waits for its slow primary (10 s) instead of hedging at 0.5 s, and its trace
    shows the hedge that fell due at 0.5 s and why it was not sent."""
    hedge = HedgeConfig(delay=0.5, budget_ratio=0.0, budget_burst=burst)
    async with race_router({"a": reply("a", 10.0), "b": reply("b", 1.0)}, hedge) as (
        router,
        mocks,
    ):
        for was_hedged in hedged:
            t0 = trio.current_time()
            resp = await router.complete(chat())
            if was_hedged:
                assert (resp.provider, trio.current_time() - t0) == ("b", 1.5)
            else:
                assert (resp.provider, trio.current_time() - t0) == ("a", 10.0)
                assert trace(resp.attempts) == [
                    ("a", "primary", "won", 0.0, 10.0),
                    ("b", "hedge", "skipped", None, 0.5),
                ]
                assert resp.attempts[1].reason == (
                    "hedge not sent: the route's hedge budget is empty"
                )
        assert router.statistics().hedges == sum(hedged)
        assert len(mocks["b"].calls) == sum(hedged)


async def test_exhausted_budget_still_falls_over_on_failure(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A fallback replaces load rather than adding to it: it needs no hedge token (the
    hedge not sent for want of one leaves its target in line for the fallback)."""
    hedge = HedgeConfig(delay=0.5, budget_ratio=0.0, budget_burst=0.0)
    async with race_router({"a": fail(ServerError("boom"), 0.7), "b": reply("b", 1.0)}, hedge) as (
        router,
        _,
    ):
        resp = await router.complete(chat())
        assert trio.current_time() == 1.7
        assert trace(resp.attempts) == [
            ("a", "primary", "failed", 0.0, 0.7),
            ("b", "hedge", "skipped", None, 0.5),
            ("b", "fallback", "won", 0.7, 1.7),
        ]


async def test_zero_delay_starts_every_attempt_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """delay=0: all attempts start at t=0 (parallel); the fastest wins, the rest are
    cancelled at its finish."""
    async with race_router(
        {"a": reply("a", 3.0), "b": reply("b", 2.0), "c": reply("c", 0.5)},
        HedgeConfig(delay=0.0, max_attempts=3),
    ) as (router, mocks):
        resp = await router.complete(chat())
        assert trio.current_time() == 0.5
        assert trace(resp.attempts) == [
            ("a", "primary", "cancelled", 0.0, 0.5),
            ("b", "hedge", "cancelled", 0.0, 0.5),
            ("c", "hedge", "won", 0.0, 0.5),
        ]
        assert mocks["a"].max_in_flight == mocks["b"].max_in_flight == 1
        assert_all_ended(mocks)


async def test_without_hedging_the_next_target_starts_only_on_failure(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """No hedge config: a slow primary is waited for (10 s, the backup never called); a
    failing one is replaced at the instant it fails."""
    slow = MockProvider(name="a", responses=[reply("a", 10.0), fail(ServerError("boom"), 0.25)])
    async with race_router({"a": slow, "b": reply("b", 1.0)}, retry=NO_RETRY) as (router, mocks):
        resp = await router.complete(chat())
        assert trio.current_time() == 10.0
        assert trace(resp.attempts) == [("a", "primary", "won", 0.0, 10.0)]
        assert mocks["b"].calls == []
        resp = await router.complete(chat())
        assert trio.current_time() == 11.25
        assert trace(resp.attempts) == [
            ("a", "primary", "failed", 0.0, 0.25),
            ("b", "fallback", "won", 0.25, 1.25),
        ]
        assert router.statistics().hedges == 0


@pytest.mark.parametrize("failing", [False, True], ids=["slow", "failing"])
async def test_max_attempts_is_a_hard_cap(
    autojump_clock: trio.testing.MockClock, failing: bool
) -> None:
    """max_attempts=2 on three targets: the third is never called, whether the first two
    are slow (hedged at 0.5 s, then no more hedges) or fail (no third fallback)."""
    first = fail(ServerError("a down"), 1.0) if failing else reply("a", 10.0)
    second = fail(ServerError("b down"), 1.0) if failing else reply("b", 10.0)
    async with race_router(
        {"a": first, "b": second, "c": reply("c", 0.1)}, HedgeConfig(delay=0.5, max_attempts=2)
    ) as (router, mocks):
        if failing:
            with pytest.raises(AllProvidersFailed) as info:
                await router.complete(chat())
            assert trio.current_time() == 1.5
            attempts = info.value.attempts
            assert [type(e) for e in info.value.errors] == [ServerError, ServerError]
        else:
            resp = await router.complete(chat())
            assert trio.current_time() == 10.0
            attempts = tuple(resp.attempts)
        assert [(a.provider, a.kind, a.start) for a in attempts] == [
            ("a", "primary", 0.0),
            ("b", "hedge", 0.5),
        ]
        assert mocks["c"].calls == []
        assert_all_ended(mocks)


async def test_percentile_delay_cold_starts_on_the_default_then_follows_the_p95(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """delay="p95": before min_samples latency samples the hedge goes at default_delay
    (3 s); afterwards at the primary's observed p95 (≈1.5 s, the histogram's value)."""
    hedge = HedgeConfig(delay="p95", default_delay=3.0, min_samples=20)
    warmup = [reply("a", 1.5)] + [reply("a", 0.5)] * 19
    a = MockProvider(name="a", responses=[reply("a", 10.0), *warmup, reply("a", 10.0)])
    async with race_router({"a": a, "b": reply("b", 0.25)}, hedge) as (router, mocks):
        # Cold: no samples, so the default delay.
        resp = await router.complete(chat())
        assert (resp.provider, trio.current_time()) == ("b", 3.25)
        assert [x.start for x in resp.attempts] == [0.0, 3.0]
        # 20 samples: the censored 3.25 s of the cancelled call, 1.5 s, and 19 x 0.5 s.
        # None of these requests is hedged: each answers before its delay.
        for _ in warmup:
            resp = await router.complete(chat())
            assert [x.provider for x in resp.attempts] == ["a"]
        await trio.sleep(1.0)  # past the one-second cache of the percentile
        p95 = router.health()["a"].latency_p95
        assert p95 is not None
        # Nearest rank: the 20th of 21 samples is 1.5 s; the histogram is within 2%.
        assert abs(p95 - 1.5) <= 0.02 * 1.5
        t0 = trio.current_time()
        resp = await router.complete(chat())
        assert resp.provider == "b"
        # t0 + p95 is not exact in binary: compare to within a nanosecond.
        assert mocks["b"].calls[-1].started_at == pytest.approx(t0 + p95, abs=1e-9)
        assert trio.current_time() == pytest.approx(t0 + p95 + 0.25, abs=1e-9)
        assert abs(p95 - hedge.default_delay) > 1.0
        assert router.statistics().hedges == 2


# --------------------------------------------------------------------------- retries on every path

#: Retry once, after exactly the ``retry_after`` the error carries (no jitter).
RETRY_ONCE = RetryConfig(max_attempts=2, initial_backoff=0.0, max_backoff=0.0)


async def test_a_hedged_attempt_retries_on_its_target(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """On a hedged route a ServerError at 0.2 s is retried on the same target after its
    0.3 s wait (the retry answers at 0.7 s, before the 1 s hedge is due), as it is
    without hedging: no fallback to b (which used to start at 0.2 s and win at 5.2 s)."""
    a = MockProvider(
        name="a", responses=[fail(ServerError("boom", retry_after=0.3), 0.2), reply("a", 0.2)]
    )
    async with race_router(
        {"a": a, "b": reply("b", 5.0)}, HedgeConfig(delay=1.0), retry=RETRY_ONCE
    ) as (router, mocks):
        resp = await router.complete(chat())
        assert trio.current_time() == 0.7
        assert trace(resp.attempts) == [("a", "primary", "won", 0.0, 0.7)]
        assert resp.attempts[0].retries == 1
        assert calls(a) == [("error", 0.0, 0.2), ("ok", 0.5, 0.7)]
        assert mocks["b"].calls == []
        stats = router.statistics()
        assert (stats.retries, stats.hedges, stats.fallbacks) == (1, 0, 0)
        assert_all_ended(mocks)


async def test_a_hedge_goes_out_while_the_primary_waits_to_retry(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The primary fails at 0.2 s and waits 1 s to retry; the 0.5 s hedge goes out in
    the meantime and wins at 1.0 s, cancelling the primary in its wait (the retry it
    never sent is not counted: retries count calls made)."""
    a = MockProvider(
        name="a", responses=[fail(ServerError("boom", retry_after=1.0), 0.2), reply("a", 1.0)]
    )
    async with race_router(
        {"a": a, "b": reply("b", 0.5)}, HedgeConfig(delay=0.5), retry=RETRY_ONCE
    ) as (router, mocks):
        resp = await router.complete(chat())
        assert trio.current_time() == 1.0
        assert trace(resp.attempts) == [
            ("a", "primary", "cancelled", 0.0, 1.0),
            ("b", "hedge", "won", 0.5, 1.0),
        ]
        assert resp.attempts[0].retries == 0
        assert resp.attempts[0].reason == "lost the race to b"
        assert calls(a) == [("error", 0.0, 0.2)]  # the retry never went out
        stats = router.statistics()
        assert (stats.retries, stats.hedges, stats.providers["a"].retried) == (0, 1, 0)
        assert_all_ended(mocks)


class _TaskRace(Race[str]):
    """A race whose attempts note the task they run in and answer after 1 s (a) or
    2 s (b)."""

    def __init__(self, delay: float) -> None:
        super().__init__(
            [Candidate(provider="a", model="m"), Candidate(provider="b", model="m", index=1)],
            max_attempts=2,
            delay=delay,
        )
        self.tasks: list[trio.lowlevel.Task] = []

    async def _answer(self, record: AttemptRecord) -> str:
        self.tasks.append(trio.lowlevel.current_task())
        await trio.sleep(1.0 + record.candidate.index)
        return "ok"

    def call(self, record: AttemptRecord) -> Any:
        return self._answer(record)


@pytest.mark.parametrize(
    ("delay", "in_caller"), [(math.inf, True), (0.5, False), (0.0, False)], ids=str
)
async def test_one_driver_runs_a_sequential_race_in_the_callers_task(
    autojump_clock: trio.testing.MockClock, delay: float, in_caller: bool
) -> None:
    """Race.run is the one driver: with delay = inf its attempt runs in the caller's own
    task (no nursery, no task per request); with a finite delay in a task of the
    race's nursery, on the same schedule (the hedge at 0.5 s loses to the primary)."""
    race = _TaskRace(delay)
    result, winner = await race.run()
    assert (result, winner.candidate.provider, trio.current_time()) == ("ok", "a", 1.0)
    assert (race.tasks[0] is trio.lowlevel.current_task()) is in_caller
    assert len(race.tasks) == (1 if delay == math.inf else 2)


# --------------------------------------------------------------------------- streaming


async def test_stream_commits_at_the_first_token_and_cancels_the_loser(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Streaming race: the hedge's first token (1.5 s) commits; the slow primary, still
    waiting for its first token, is cancelled then; the rest of the winner's stream
    follows on its own timeline."""
    async with race_router(
        {
            "a": reply("a a a", 10.0, chunk_latency=0.1),
            "b": reply("one two three", 1.0, chunk_latency=0.25),
        },
        HedgeConfig(delay=0.5),
    ) as (router, mocks):
        seen: list[tuple[str, float]] = []
        async with router.stream(chat()) as events:
            assert trio.current_time() == 1.5
            assert events.provider == "b"
            assert calls(mocks["a"]) == [("cancelled", 0.0, 1.5)]
            async for event in events:
                label = event.text if isinstance(event, TextDelta) else type(event).__name__
                seen.append((label, trio.current_time()))
        assert seen == [
            ("one", 1.5),
            (" two", 1.75),
            (" three", 2.0),
            ("UsageEvent", 2.25),
            ("Done", 2.25),
        ]
        assert events.response is not None
        assert trace(events.response.attempts) == [
            ("a", "primary", "cancelled", 0.0, 1.5),
            ("b", "hedge", "won", 0.5, 1.5),
        ]
        assert calls(mocks["b"]) == [("ok", 0.5, 2.25)]
        assert_all_ended(mocks)


async def test_stream_race_is_decided_by_first_token_not_by_whole_answer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The primary's first token (0.8 s) beats the hedge's (1.5 s) even though the hedge
    would finish its whole answer first: the stream commits to the primary."""
    async with race_router(
        {
            "a": reply("x y z", 0.8, chunk_latency=2.0),
            "b": reply("fast", 1.0, chunk_latency=0.0),
        },
        HedgeConfig(delay=0.5),
    ) as (router, mocks):
        async with router.stream(chat()) as events:
            assert (events.provider, trio.current_time()) == ("a", 0.8)
            text = "".join([e.text async for e in events if isinstance(e, TextDelta)])
        assert text == "x y z"
        assert trio.current_time() == 0.8 + 3 * 2.0
        assert calls(mocks["b"]) == [("cancelled", 0.5, 0.8)]


@pytest.mark.parametrize(
    "failing",
    [
        fail(Overloaded("529"), 0.3),  # raised entering the stream
        MockResponse(error=ServerError("reset"), latency=0.3, error_after_chunks=0),
    ],
    ids=["on-open", "before-first-event"],
)
async def test_stream_failing_before_content_falls_over_invisibly(
    autojump_clock: trio.testing.MockClock, failing: MockResponse
) -> None:
    """A primary stream that fails before any content is replaced at that instant; the
    caller sees one clean stream, from the fallback."""
    async with race_router(
        {"a": failing, "b": reply("hello there", 0.5, chunk_latency=0.25)},
        HedgeConfig(delay=2.0),
    ) as (router, mocks):
        async with router.stream(chat()) as events:
            assert (events.provider, trio.current_time()) == ("b", 0.8)
            got = [e async for e in events]
        assert "".join(e.text for e in got if isinstance(e, TextDelta)) == "hello there"
        assert isinstance(got[-1], Done)
        assert trace(got[-1].response.attempts) == [
            ("a", "primary", "failed", 0.0, 0.3),
            ("b", "fallback", "won", 0.3, 0.8),
        ]
        assert_all_ended(mocks)


# --------------------------------------------------------------------------- context windows


async def test_context_length_moves_to_a_larger_window_and_skips_smaller_ones(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """ContextLengthExceeded on a 1,000-token target skips the targets whose configured
    window is not larger (with the reason) and goes to the 100,000-token one."""
    models = {
        "a:m": ModelConfig(context_window=1000),
        "b:m": ModelConfig(context_window=500),
        "c:m": ModelConfig(context_window=1000),
        "d:m": ModelConfig(context_window=100_000),
    }
    too_long = ContextLengthExceeded("prompt too long", limit=1000, requested=1500)
    async with race_router(
        {"a": fail(too_long, 0.2), "b": reply("b"), "c": reply("c"), "d": reply("d", 1.0)},
        models=models,
    ) as (router, mocks):
        resp = await router.complete(chat())
        assert (resp.provider, trio.current_time()) == ("d", 1.2)
        assert [(a.provider, a.outcome) for a in resp.attempts] == [
            ("a", "failed"),
            ("b", "skipped"),
            ("c", "skipped"),
            ("d", "won"),
        ]
        assert resp.attempts[1].reason == (
            "its context window (500) is not larger than the one that was exceeded (1000)"
        )
        assert resp.attempts[2].reason == (
            "its context window (1000) is not larger than the one that was exceeded (1000)"
        )
        # Never started; passed over when a failed.
        assert (resp.attempts[1].start, resp.attempts[1].end) == (None, 0.2)
        assert [a.kind for a in resp.attempts] == ["primary", "fallback", "fallback", "fallback"]
        assert mocks["b"].calls == mocks["c"].calls == []
        assert [(x.start, x.end) for x in (resp.attempts[0], resp.attempts[3])] == [
            (0.0, 0.2),
            (0.2, 1.2),
        ]


async def test_context_length_uses_the_reported_limit_when_no_window_is_configured(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Without a configured window the error's own limit (8,000) is what later targets
    must beat; a target with an unknown window is tried."""
    models = {"b:m": ModelConfig(context_window=8000), "c:m": ModelConfig(context_window=16_000)}
    too_long = ContextLengthExceeded("too long", limit=8000, requested=9000)
    async with race_router(
        {"a": fail(too_long, 0.1), "b": reply("b"), "c": reply("c", 0.5)}, models=models
    ) as (router, _):
        resp = await router.complete(chat())
        assert [(a.provider, a.outcome) for a in resp.attempts] == [
            ("a", "failed"),
            ("b", "skipped"),
            ("c", "won"),
        ]


async def test_context_length_with_no_larger_window_left_is_raised_as_itself(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """When every remaining target's window is smaller, ContextLengthExceeded is raised
    as itself (with its limit), as the race's docstring promises."""
    models = {"a:m": ModelConfig(context_window=1000), "b:m": ModelConfig(context_window=500)}
    too_long = ContextLengthExceeded("prompt too long", limit=1000, requested=1500)
    async with race_router({"a": fail(too_long, 0.1), "b": reply("b")}, models=models) as (
        router,
        mocks,
    ):
        with pytest.raises(ContextLengthExceeded) as info:
            await router.complete(chat())
        assert info.value.limit == 1000
        assert mocks["b"].calls == []


# --------------------------------------------------------------------------- total failure


async def test_every_attempt_failing_is_one_error_with_the_group_as_cause(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Three failures: one AllProvidersFailed at the last failure's instant, with every
    error in .errors, every attempt in .attempts and an ExceptionGroup as __cause__."""
    async with race_router(
        {
            "a": fail(ServerError("a 500"), 1.0),
            "b": fail(Overloaded("b 529"), 0.75),
            "c": fail(ServerError("c 502"), 0.25),
        },
        HedgeConfig(delay=0.5, max_attempts=3),
    ) as (router, mocks):
        with pytest.raises(AllProvidersFailed) as info:
            await router.complete(chat())
        exc = info.value
        # a starts at 0, b hedges at 0.5, c hedges at 1.0 (a's failure at 1.0 ties it).
        assert trio.current_time() == 1.25
        assert trace(exc.attempts) == [
            ("a", "primary", "failed", 0.0, 1.0),
            ("b", "hedge", "failed", 0.5, 1.25),
            ("c", "hedge", "failed", 1.0, 1.25),
        ]
        assert sorted(str(e) for e in exc.errors) == ["[a] a 500", "[b] b 529", "[c] c 502"]
        cause = exc.__cause__
        assert isinstance(cause, ExceptionGroup)
        assert list(cause.exceptions) == list(exc.errors)
        assert exc.retryable
        assert "every target failed" in str(exc)
        assert_all_ended(mocks)


async def test_a_single_failed_attempt_is_raised_as_itself(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With one target, its error reaches the caller unwrapped, carrying the trace (with
    the hedge that fell due at 0.1 s and found no target to go to)."""
    async with race_router({"a": fail(Overloaded("busy"), 0.5)}, HedgeConfig(delay=0.1)) as (
        router,
        _,
    ):
        with pytest.raises(Overloaded) as info:
            await router.complete(chat())
        assert trace(info.value.attempts) == [
            ("a", "primary", "failed", 0.0, 0.5),
            ("", "hedge", "skipped", None, 0.1),
        ]


# --------------------------------------------------------------------------- deadlines


async def test_a_target_that_cannot_meet_the_deadline_is_skipped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A target whose latency estimate (5 s) exceeds the caller's time left (2 s) is not
    started: the next one serves, and the skip is traced with its reason."""
    async with race_router({"a": reply("a", 5.0), "b": reply("b", 0.5)}, retry=NO_RETRY) as (
        router,
        mocks,
    ):
        await router.complete(chat("a:m"))  # a's latency estimate is now 5 s
        t0 = trio.current_time()
        with trio.fail_after(2.0):
            resp = await router.complete(chat())
        assert (resp.provider, trio.current_time() - t0) == ("b", 0.5)
        assert [(a.provider, a.outcome) for a in resp.attempts] == [
            ("a", "skipped"),
            ("b", "won"),
        ]
        assert resp.attempts[0].reason == (
            "cannot finish before the deadline (expects ~5s, 2s left)"
        )
        # Passed over for the first attempt, at the request's start.
        assert (resp.attempts[0].kind, resp.attempts[0].end) == ("primary", 0.0)
        assert len(mocks["a"].calls) == 1  # only the warm-up


async def test_a_fallback_that_cannot_meet_the_deadline_is_skipped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """After the primary fails at 0.25 s, a fallback expected to take 5 s with 1.75 s
    left is skipped, and the caller gets the failure at once, not at its deadline."""
    a = MockProvider(name="a", default=fail(ServerError("boom"), 0.25))
    async with race_router({"a": a, "b": reply("b", 5.0)}, retry=NO_RETRY) as (router, mocks):
        await router.complete(chat("b:m"))
        t0 = trio.current_time()
        with trio.fail_after(2.0), pytest.raises(AllProvidersFailed) as info:
            await router.complete(chat())
        assert trio.current_time() - t0 == 0.25
        assert [(x.provider, x.outcome) for x in info.value.attempts] == [
            ("a", "failed"),
            ("b", "skipped"),
        ]
        assert "deadline" in (info.value.attempts[1].reason or "")
        assert info.value.attempts[1].kind == "fallback"
        assert len(mocks["b"].calls) == 1


async def test_no_target_expected_in_time_still_sends_the_first_attempt(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A prediction never refuses a request: with a and b both expected to take 5 s and
    1 s left, a goes out anyway (b stays in line) and the caller's scope ends it at 1 s."""
    async with race_router({"a": reply("a", 5.0), "b": reply("b", 5.0)}) as (router, mocks):
        await router.complete(chat("a:m"))
        await router.complete(chat("b:m"))
        t0 = trio.current_time()
        with pytest.raises(trio.TooSlowError), trio.fail_after(1.0):
            await router.complete(chat())
        assert trio.current_time() - t0 == 1.0
        assert calls(mocks["a"])[-1] == ("cancelled", t0, t0 + 1.0)
        assert len(mocks["b"].calls) == 1  # only the warm-up
        assert_all_ended(mocks)


# --------------------------------------------------------------------------- same-instant events


async def test_two_failures_in_the_same_instant_each_start_a_fallback(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """a (fails at 1.5 s) and its hedge b (started 1.0 s, fails at 1.5 s) fail together:
    c and d both start at 1.5 s, so d answers at 1.75 s (each failure starts its own
    fallback; a single flag would start d only at the next delay, 2.5 s)."""
    async with race_router(
        {
            "a": fail(ServerError("a"), 1.5),
            "b": fail(ServerError("b"), 0.5),
            "c": reply("c", 10.0),
            "d": reply("d", 0.25),
        },
        HedgeConfig(delay=1.0, max_attempts=4),
    ) as (router, _):
        resp = await router.complete(chat())
        assert [(a.provider, a.start) for a in resp.attempts] == [
            ("a", 0.0),
            ("b", 1.0),
            ("c", 1.5),
            ("d", 1.5),
        ]
        assert (resp.provider, trio.current_time()) == ("d", 1.75)


@pytest.mark.parametrize("outcome", ["won", "fatal"])
async def test_a_race_decided_in_the_hedge_instant_returns_at_once(
    autojump_clock: trio.testing.MockClock, outcome: str
) -> None:
    """The primary answers (or fails fatally) at 0.25 s, the very instant the 0.25 s hedge
    is due: the caller gets the outcome at 0.25 s, never after a hedge that starts then.
    Repeated 40 times, since which of two same-instant tasks runs first is trio's choice."""
    first = reply("a", 0.25) if outcome == "won" else fail(InvalidRequest("bad"), 0.25)
    late = []
    for _ in range(40):
        hedge = HedgeConfig(delay=0.25, budget_burst=100.0, budget_ratio=1.0)
        async with race_router({"a": first, "b": reply("b", 10.0)}, hedge) as (router, mocks):
            t0 = trio.current_time()
            try:
                await router.complete(chat())
            except InvalidRequest:
                pass
            if trio.current_time() - t0 != 0.25:
                late.append((trio.current_time() - t0, calls(mocks["b"])))
    assert late == []


# --------------------------------------------------------------------------- the model

# Multiples of 1/4 s: exact in binary, so sums are exact and ties really are ties.
LATENCIES = [0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0]
#: math.inf: a route without hedging, sequential fallback (the same model, one driver).
DELAYS = [0.0, 0.25, 0.5, 1.0, 2.0, math.inf]
NAMES = "abcd"


class Model:
    """The race as its docstring describes it, in plain Python (no trio).

    ``spec[i] = (latency, succeeds)`` for the i-th target in route order.  Attempt 0
    starts at 0.  Attempt k starts at the earlier of ``start[k-1] + delay`` (a hedge) and
    the earliest failure not yet used to start an attempt (a fallback, at
    ``max(failure, start[k-1])``); each failure starts at most one attempt, and when a
    failure and the hedge delay fall in the same instant the hedge goes first and the
    failure starts the next attempt in that instant.  The race ends at the first success
    (``end``), or when every attempt has failed.
    """

    def __init__(self, spec: Sequence[tuple[float, bool]], delay: float) -> None:
        n = len(spec)
        starts, kinds, used = [0.0], ["primary"], set()
        while len(starts) < n:
            prev = starts[-1]
            hedge_at = prev + delay
            pending = sorted(
                (starts[i] + spec[i][0], i)
                for i in range(len(starts))
                if not spec[i][1] and i not in used
            )
            if pending and pending[0][0] < hedge_at:
                failed_at, i = pending[0]
                used.add(i)
                starts.append(max(prev, failed_at))
                kinds.append("fallback")
            else:
                starts.append(hedge_at)
                kinds.append("hedge")
        self.starts = starts
        self.kinds = kinds
        self.finishes = [s + lat for s, (lat, _) in zip(starts, spec, strict=True)]
        wins = [f for f, (_, ok) in zip(self.finishes, spec, strict=True) if ok]
        self.succeeds = bool(wins)
        self.end = min(wins) if wins else max(self.finishes)
        self.winners = {
            NAMES[i] for i, (_, ok) in enumerate(spec) if ok and self.finishes[i] == self.end
        }
        #: A hedge due in the instant the race is decided: where the implementation
        #: deviates (see test_a_race_decided_in_the_hedge_instant_returns_at_once).
        self.hedge_at_the_end = any(
            k == "hedge" and s == self.end for k, s in zip(self.kinds, starts, strict=True)
        )


async def run_race(spec: Sequence[tuple[float, bool]], delay: float) -> Any:
    targets = {
        NAMES[i]: (reply(NAMES[i], lat) if ok else fail(ServerError(f"{NAMES[i]} down"), lat))
        for i, (lat, ok) in enumerate(spec)
    }
    hedge = (
        None
        if delay == math.inf
        else HedgeConfig(delay=delay, max_attempts=len(spec), budget_burst=10.0)
    )
    async with race_router(targets, hedge) as (router, mocks):
        try:
            result: Any = await router.complete(chat())
        except LLMError as exc:
            result = exc
        now = trio.current_time()
        # Nothing runs after the race returns: every call has ended, by now.
        assert_all_ended(mocks)
        assert all(
            c.ended_at is not None and c.ended_at <= now for m in mocks.values() for c in m.calls
        )
        return result, now, {n: len(m.calls) for n, m in mocks.items()}


@settings(max_examples=300, deadline=None)
@given(
    spec=st.lists(st.tuples(st.sampled_from(LATENCIES), st.booleans()), min_size=2, max_size=4),
    delay=st.sampled_from(DELAYS),
)
def test_race_matches_the_documented_model(spec: list[tuple[float, bool]], delay: float) -> None:
    """Invariant: for any latencies and outcomes (success / ServerError) on 2-4 targets,
    a fixed delay (or none: sequential fallback is the model with delay = inf),
    max_attempts = targets and a large budget, the router's start times,
    kinds, outcomes, winner and finish time are the model's, and no call outlives the race."""
    model = Model(spec, delay)
    result, now, ncalls = trio.run(
        run_race, spec, delay, clock=trio.testing.MockClock(autojump_threshold=0)
    )
    assert now == model.end
    if model.succeeds:
        assert not isinstance(result, LLMError), result
        assert result.provider in model.winners
        attempts = result.attempts
    else:
        assert isinstance(result, AllProvidersFailed)
        assert len(result.errors) == len(spec)
        attempts = result.attempts
    end = model.end
    surely = [i for i, s in enumerate(model.starts) if s < end]
    maybe = [i for i, s in enumerate(model.starts) if s <= end]
    # Attempts go in route order; those due in the very instant of the end may or may not
    # have been started (a start and a win in one instant: either order is correct).
    assert [a.provider for a in attempts] == [NAMES[i] for i in range(len(attempts))]
    assert len(surely) <= len(attempts) <= len(maybe)
    for i, a in enumerate(attempts):
        ok = spec[i][1]
        assert (a.kind, a.start) == (model.kinds[i], model.starts[i]), (i, a)
        if not ok and model.finishes[i] < end:
            assert (a.outcome, a.end) == ("failed", model.finishes[i])
        elif not ok and model.finishes[i] == end:
            # Failed in the instant the race ended: "failed" if the failure ran first,
            # else trio cancels it as the winner cancels the race (both right at a tie).
            expected = ("failed",) if not model.succeeds else ("failed", "cancelled")
            assert (a.outcome, a.end) in [(o, end) for o in expected]
        elif ok and NAMES[i] == getattr(result, "provider", None):
            assert (a.outcome, a.end) == ("won", end)
        else:
            assert (a.outcome, a.end) == ("cancelled", end)
            assert a.reason is not None
            assert a.reason.startswith("lost the race to")
        if model.starts[i] < end:
            assert ncalls[NAMES[i]] == 1
        else:
            # Started in the instant the race was won: cancelled in admission, at the
            # latest as it reached the provider.
            assert ncalls[NAMES[i]] <= 1
    for name in NAMES[len(attempts) : len(spec)]:
        assert ncalls[name] == 0


def test_the_model_on_the_documented_examples() -> None:
    """The model itself: staggered hedges, a failure starting the next attempt at once,
    a failure tied with the hedge delay (hedge first, then the fallback in that instant)."""
    m = Model([(10.0, True), (1.0, True)], 0.5)
    assert (m.starts, m.kinds, m.end, m.winners) == ([0.0, 0.5], ["primary", "hedge"], 1.5, {"b"})
    m = Model([(0.25, False), (1.0, True), (1.0, True)], 1.0)
    assert (m.starts, m.kinds, m.end) == ([0.0, 0.25, 1.25], ["primary", "fallback", "hedge"], 1.25)
    m = Model([(1.0, False), (5.0, True), (0.25, True)], 1.0)
    assert (m.starts, m.kinds, m.end) == ([0.0, 1.0, 1.0], ["primary", "hedge", "fallback"], 1.25)
    m = Model([(1.5, False), (0.5, False), (10.0, True), (0.25, True)], 1.0)
    assert (m.starts, m.end, m.winners) == ([0.0, 1.0, 1.5, 1.5], 1.75, {"d"})
    m = Model([(0.25, True), (1.0, True)], 0.25)
    assert (m.starts, m.end, m.hedge_at_the_end) == ([0.0, 0.25], 0.25, True)


# --------------------------------------------------------------------------- over the wire

KINDS = ["openai", "anthropic"]


@asynccontextmanager
async def wire_router(
    kind: str, scenarios: dict[str, Scenario], hedge: HedgeConfig | None
) -> AsyncIterator[tuple[FakeUpstream, Router]]:
    """A fake upstream and a router whose provider ``name`` talks to scenario ``name``."""
    cls = OpenAIProvider if kind == "openai" else AnthropicProvider
    async with open_fake_upstream(scenarios) as up, httpx.AsyncClient(timeout=60.0) as client:
        adapters = {
            name: cls(
                name=name,
                api_key=Secret(KEY),
                base_url=up.base_url(name, "openai" if kind == "openai" else "anthropic"),
                client=client,
            )
            for name in scenarios
        }
        pc = ProviderConfig(kind=kind, retry=NO_RETRY)  # type: ignore[arg-type]
        config = RouterConfig(
            providers={name: pc for name in scenarios},
            routes={"r": RouteConfig(targets=[f"{n}:m" for n in scenarios], hedge=hedge)},
        )
        async with open_router(config, providers=adapters) as router:
            yield up, router


async def ended(up: FakeUpstream, scenario: str) -> list[str]:
    """The outcome of every exchange of ``scenario``, once each has ended."""
    records = [r for r in up.requests if r.scenario == scenario]
    with trio.fail_after(1):
        for r in records:
            await r.finished.wait()
    return [r.outcome for r in records]


@pytest.mark.parametrize("streaming", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize("kind", KINDS)
async def test_hedge_over_the_wire_wins_and_disconnects_the_loser(
    kind: str, streaming: bool, autojump_clock: trio.testing.MockClock
) -> None:
    """Over real sockets: primary 10 s, backup 1 s, delay 0.5 s → the answer at 1.5 s; the
    upstream saw the primary's client hang up in that same instant."""
    scenarios = {"a": Scenario(latency=Fixed(10.0)), "b": Scenario(latency=Fixed(1.0))}
    async with wire_router(kind, scenarios, HedgeConfig(delay=0.5)) as (up, router):
        request = chat(text="wire race")
        if streaming:
            async with router.stream(request) as events:
                assert trio.current_time() == 1.5
                got = [e async for e in events]
            assert isinstance(got[-1], Done)
            resp = got[-1].response
        else:
            resp = await router.complete(request)
            assert trio.current_time() == 1.5
        assert (resp.provider, resp.text) == ("b", "echo: wire race")
        assert [(a.provider, a.kind, a.outcome, a.start) for a in resp.attempts] == [
            ("a", "primary", "cancelled", 0.0),
            ("b", "hedge", "won", 0.5),
        ]
        assert resp.attempts[0].end == 1.5
        assert [r.received_at for r in up.requests if r.scenario == "a"] == [0.0]
        assert [r.received_at for r in up.requests if r.scenario == "b"] == [0.5]
        before = trio.current_time()
        assert await ended(up, "a") == ["client_disconnected"]
        assert trio.current_time() == before  # already ended: the loser hung up at once
        assert await ended(up, "b") == ["completed"]
        stats = router.statistics().providers
        assert (stats["a"].in_flight, stats["b"].in_flight) == (0, 0)


@pytest.mark.parametrize("kind", KINDS)
async def test_failure_over_the_wire_falls_over_at_once(
    kind: str, autojump_clock: trio.testing.MockClock
) -> None:
    """Over real sockets: a 500 after 0.2 s starts the backup at 0.2 s, not at the delay."""
    scenarios = {
        "a": Scenario(latency=Fixed(0.2), faults=[Fault(kind="status", status=500, rate=1.0)]),
        "b": Scenario(latency=Fixed(1.0)),
    }
    async with wire_router(kind, scenarios, HedgeConfig(delay=5.0)) as (up, router):
        resp = await router.complete(chat())
        assert trio.current_time() == 1.2
        assert [(a.provider, a.kind, a.outcome, a.start, a.end) for a in resp.attempts] == [
            ("a", "primary", "failed", 0.0, 0.2),
            ("b", "fallback", "won", 0.2, 1.2),
        ]
        assert await ended(up, "b") == ["completed"]


@pytest.mark.parametrize("kind", KINDS)
async def test_parallel_race_over_the_wire_closes_every_loser(
    kind: str, autojump_clock: trio.testing.MockClock
) -> None:
    """delay=0 over real sockets: three requests at t=0, the fastest (0.25 s) wins, the
    other two exchanges are disconnected at 0.25 s, and no task outlives the race."""
    scenarios = {
        "a": Scenario(latency=Fixed(3.0)),
        "b": Scenario(latency=Fixed(0.25)),
        "c": Scenario(latency=Fixed(60.0)),
    }
    async with wire_router(kind, scenarios, HedgeConfig(delay=0.0, max_attempts=3)) as (
        up,
        router,
    ):
        resp = await router.complete(chat())
        assert (resp.provider, trio.current_time()) == ("b", 0.25)
        assert [r.received_at for r in up.requests] == [0.0, 0.0, 0.0]
        assert await ended(up, "a") == ["client_disconnected"]
        assert await ended(up, "c") == ["client_disconnected"]
        assert trio.current_time() == 0.25
