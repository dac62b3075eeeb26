"""Deadlines belong to the caller, a won result is never left open, hedges you can see.

On virtual time (``autojump_clock``) with :class:`MockProvider` targets, exact times:

- a prediction never refuses a request: the first attempt always goes out and the
  caller's cancel scope decides (``fail_after`` raises ``TooSlowError``, a retry loop
  ends by the caller's scope); only extra attempts are skipped for the deadline, and a
  skipped target's ``kind`` is the attempt it was passed over for;
- a hedged stream that won while the losers close is closed when the caller's deadline
  fires during that close: no permit held, no stream left for the garbage collector;
- a hedged request's trace carries the hedge delay in force and every hedge that fell
  due but was not sent (budget, deadline, no target), and ``statistics().hedging``
  shows each hedged route's delay, budget and not-sent counters.
"""

from __future__ import annotations

import gc
import math
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from providers import Attempt, ChatRequest, EventStream, LLMError, Message, ServerError
from providers.testing import MockProvider, MockResponse
from router import Router, TextDelta, open_router
from router._race import AttemptRecord, Race
from router.config import HedgeConfig, ProviderConfig, RetryConfig, RouteConfig, RouterConfig
from router.events import RequestFinished, RouterEvent
from router.policy import Candidate
from router.stats import HedgeStatistics

NO_RETRY = RetryConfig(max_attempts=1)


def chat(model: str = "r") -> ChatRequest:
    return ChatRequest(model=model, messages=[Message.user("hi")], max_tokens=16)


def reply(text: str, latency: float, **kw: Any) -> MockResponse:
    return MockResponse(text=text, latency=latency, **kw)


def row(a: Attempt) -> tuple[str, str, str, float | None, float | None]:
    return (a.provider, a.kind, a.outcome, a.start, a.end)


@asynccontextmanager
async def routed(
    mocks: dict[str, MockProvider],
    hedge: HedgeConfig | None = None,
    retry: RetryConfig | None = None,
) -> AsyncIterator[tuple[Router, list[RequestFinished]]]:
    """A router with route "r" over ``mocks`` in order; yields it and the finished
    requests' events (whose ``attempts`` is the trace, also for a cancelled request)."""
    pc = ProviderConfig(kind="mock", retry=retry or RetryConfig())
    config = RouterConfig(
        providers={name: pc for name in mocks},
        routes={"r": RouteConfig(targets=[f"{n}:m" for n in mocks], hedge=hedge)},
    )
    finished: list[RequestFinished] = []

    def listen(event: RouterEvent) -> None:
        if isinstance(event, RequestFinished):
            finished.append(event)

    async with open_router(config, providers=mocks) as router:
        router.add_listener(listen)
        yield router, finished


def in_flight(router: Router) -> dict[str, int]:
    return {name: p.in_flight for name, p in router.statistics().providers.items()}


# --------------------------------------------------------------------------- A: deadlines


async def test_a_retry_loop_until_the_deadline_ends_by_the_callers_scope(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The issue's loop — retry retryable errors until my deadline — on a warm 1 s target
    with 0.5 s left: one call, cut off by the caller's scope at exactly 0.5 s (the old
    code raised a retryable Timeout at once, so the loop spun and virtual time stood)."""
    mock = MockProvider(name="p", default=reply("x", 1.0))
    async with routed({"p": mock}) as (router, _):
        await router.complete(chat("p:m"))  # warm: p is expected to take 1 s
        t0 = trio.current_time()
        tries = 0
        with trio.move_on_after(0.5) as scope:
            while tries < 100:
                tries += 1
                try:
                    await router.complete(chat("p:m"))
                    break
                except LLMError as exc:
                    if not exc.retryable:
                        raise
        assert (scope.cancelled_caught, tries, trio.current_time() - t0) == (True, 1, 0.5)
        assert [(c.outcome, c.started_at, c.ended_at) for c in mock.calls][-1] == (
            "cancelled",
            t0,
            t0 + 0.5,
        )
        stats = router.statistics()
        assert (stats.cancelled, stats.failed, stats.providers["p"].failed) == (1, 0, 0)


async def test_fail_after_raises_too_slow_error_after_a_warm_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """fail_after(0.5) around a call to a target warmed at 1 s raises trio.TooSlowError
    at exactly 0.5 s, not the router's Timeout; the trace says the primary was
    cancelled by the caller."""
    mock = MockProvider(name="p", default=reply("x", 1.0))
    async with routed({"p": mock}) as (router, finished):
        await router.complete(chat("r"))
        t0 = trio.current_time()
        with pytest.raises(trio.TooSlowError), trio.fail_after(0.5):
            await router.complete(chat("r"))
        assert trio.current_time() - t0 == 0.5
        assert [row(a) for a in finished[-1].attempts] == [("p", "primary", "cancelled", 0.0, 0.5)]
        assert finished[-1].attempts[0].reason == "the caller was cancelled"


async def test_the_embedding_docs_deadline_example_works_after_a_warm_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """docs/embedding.md's example, after a warm-up request: move_on_after(2) around a
    30 s provider is caught at exactly 2 s, the exchange cancelled, nothing in flight."""
    slow = MockProvider(name="slow", latency=30.0)
    config = RouterConfig(providers={"slow": ProviderConfig(kind="mock")})
    async with open_router(config, providers={"slow": slow}) as router:
        request = ChatRequest(model="slow:m", messages=[Message.user("hi")])
        await router.complete(request)  # warm-up: slow is expected to take 30 s
        t0 = trio.current_time()
        with trio.move_on_after(2.0) as scope:
            await router.complete(request)
        assert (scope.cancelled_caught, trio.current_time() - t0) == (True, 2.0)
        assert slow.calls[-1].outcome == "cancelled"
        stats = router.statistics().providers["slow"]
        assert (stats.in_flight, stats.cancelled) == (0, 1)


async def test_a_hedged_route_sends_its_primary_and_skips_only_the_late_hedge(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Hedged (delay 0.25 s), both targets warm at 5 s, 1 s left: a still goes out as the
    primary; the hedge due at 0.25 s is skipped (kind "hedge", counted as not sent for
    the deadline), and the caller's scope ends the request at 1 s."""
    a = MockProvider(name="a", default=reply("a", 5.0))
    b = MockProvider(name="b", default=reply("b", 5.0))
    hedge = HedgeConfig(delay=0.25, budget_burst=10.0)
    async with routed({"a": a, "b": b}, hedge) as (router, finished):
        await router.complete(chat("a:m"))
        await router.complete(chat("b:m"))
        t0 = trio.current_time()
        with pytest.raises(trio.TooSlowError), trio.fail_after(1.0):
            await router.complete(chat())
        assert trio.current_time() - t0 == 1.0
        attempts = finished[-1].attempts
        assert [row(x) for x in attempts] == [
            ("a", "primary", "cancelled", 0.0, 1.0),
            ("b", "hedge", "skipped", None, 0.25),
        ]
        assert attempts[1].reason == "cannot finish before the deadline (expects ~5s, 0.75s left)"
        assert len(b.calls) == 1  # only the warm-up
        hedging = router.statistics().hedging["r"]
        assert (hedging.sent, hedging.not_sent_deadline) == (0, 1)
        assert in_flight(router) == {"a": 0, "b": 0}


async def test_a_sequential_fallback_skipped_for_the_deadline_is_traced_as_a_fallback(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """a fails at 0.5 s; b (expected 5 s, 1.5 s left) is skipped as the *fallback* it
    would have been, never labelled otherwise; the error is a's, at 0.5 s."""
    a = MockProvider(name="a", default=MockResponse(error=ServerError("down"), latency=0.5))
    b = MockProvider(name="b", default=reply("b", 5.0))
    async with routed({"a": a, "b": b}, retry=NO_RETRY) as (router, _):
        await router.complete(chat("b:m"))
        t0 = trio.current_time()
        with trio.fail_after(2.0), pytest.raises(LLMError) as info:
            await router.complete(chat())
        assert trio.current_time() - t0 == 0.5
        assert [row(x) for x in info.value.attempts] == [
            ("a", "primary", "failed", 0.0, 0.5),
            ("b", "fallback", "skipped", None, 0.5),
        ]


# --------------------------------------------------------------------------- B: won, not handed


class SlowClose(MockProvider):
    """A MockProvider whose streams take ``close_time`` seconds to close, shielded (as a
    transport's close under cancellation does)."""

    def __init__(self, *args: Any, close_time: float, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.close_time = close_time

    def stream(self, request: ChatRequest) -> AbstractAsyncContextManager[EventStream]:
        return self._slow(super().stream(request))

    @asynccontextmanager
    async def _slow(
        self, inner: AbstractAsyncContextManager[EventStream]
    ) -> AsyncIterator[EventStream]:
        try:
            async with inner as events:
                yield events
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(self.close_time)


def scope_of(kind: str, seconds: float) -> Callable[[], Any]:
    return (
        (lambda: trio.move_on_after(seconds))
        if kind == "move_on"
        else (lambda: trio.fail_after(seconds))
    )


@pytest.mark.parametrize("kind", ["move_on", "fail"])
async def test_a_won_stream_is_closed_when_the_deadline_fires_while_a_loser_closes(
    autojump_clock: trio.testing.MockClock, kind: str
) -> None:
    """a (first token at 10 s, its close takes 1 s) is hedged at 0.5 s by b (first token
    at 1.0 s): b wins at 1.0, a's close runs to 2.0, and the caller's deadline fires at
    1.5 s during it.  The caller leaves at 2.0 s with b's stream closed, every permit
    back, no call pending and nothing for the garbage collector to warn about."""
    a = SlowClose(name="a", default=reply("a", 10.0), close_time=1.0)
    b = MockProvider(name="b", default=reply("b", 0.5))
    entered = False
    async with routed({"a": a, "b": b}, HedgeConfig(delay=0.5)) as (router, finished):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                with scope_of(kind, 1.5)():
                    async with router.stream(chat()) as _:
                        entered = True
            except trio.TooSlowError:
                assert kind == "fail"
            assert trio.current_time() == 2.0
            assert not entered
            assert in_flight(router) == {"a": 0, "b": 0}
            assert [c.outcome for c in a.calls + b.calls] == ["cancelled", "cancelled"]
            gc.collect()
        assert [str(w.message) for w in caught] == []
        trace = finished[-1].attempts
        assert [row(x) for x in trace] == [
            ("a", "primary", "cancelled", 0.0, 2.0),
            ("b", "hedge", "cancelled", 0.5, 1.0),
        ]
        assert trace[1].reason == "won, but the race ended before the caller got the result"
        stats = router.statistics()
        assert (stats.succeeded, stats.cancelled, stats.hedge_wins) == (0, 1, 0)


@settings(max_examples=60, deadline=None)
@given(
    deadline=st.sampled_from([0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, math.inf]),
    close_time=st.sampled_from([0.0, 0.25, 1.0]),
    latencies=st.tuples(st.sampled_from([0.25, 0.5, 1.0, 3.0]), st.sampled_from([0.25, 0.5])),
    delay=st.sampled_from([0.0, 0.25, 0.5]),
)
def test_no_hedged_stream_outlives_its_request(
    deadline: float, close_time: float, latencies: tuple[float, float], delay: float
) -> None:
    """Invariant: whatever the caller's deadline, the losers' close time, the targets'
    first-token times and the hedge delay, once ``router.stream`` has been left every
    provider's ``in_flight`` is 0 and no call is pending (no stream left to the gc)."""

    async def main() -> None:
        a = SlowClose(name="a", default=reply("a a a", latencies[0]), close_time=close_time)
        b = SlowClose(name="b", default=reply("b b b", latencies[1]), close_time=close_time)
        hedge = HedgeConfig(delay=delay, budget_burst=10.0)
        async with routed({"a": a, "b": b}, hedge) as (router, _):
            with trio.move_on_after(deadline):
                async with router.stream(chat()) as events:
                    async for event in events:
                        if isinstance(event, TextDelta):
                            break
            assert in_flight(router) == {"a": 0, "b": 0}
            assert all(c.outcome != "pending" for c in a.calls + b.calls)

    # The objects that exist before the example are frozen: the collection below then
    # looks at what this example made (where a forgotten stream would be) and not at the
    # whole test session's heap each time.
    gc.freeze()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
            gc.collect()
    finally:
        gc.unfreeze()
    assert [str(w.message) for w in caught] == []


class BareRace(Race[str]):
    """A race whose attempts are ``attempt`` and whose discard takes ``close_time``
    seconds and notes (result, record's provider, when it ended)."""

    def __init__(
        self,
        attempt: Callable[[Candidate, AttemptRecord], Awaitable[str]],
        discarded: list[tuple[str, str, float]],
        close_time: float,
    ) -> None:
        super().__init__(
            [Candidate(provider="a", model="m"), Candidate(provider="b", model="m", index=1)],
            max_attempts=2,
            delay=0.0,
        )
        self.attempt = attempt
        self.discarded = discarded
        self.close_time = close_time

    def call(self, record: AttemptRecord) -> Awaitable[str]:
        return self.attempt(record.candidate, record)

    def fails_over(self, exc: LLMError) -> bool:
        return True

    async def discard(self, result: str, record: AttemptRecord) -> None:
        await trio.sleep(self.close_time)
        self.discarded.append((result, record.candidate.provider, trio.current_time()))


def bare_race(
    attempt: Callable[[Candidate, AttemptRecord], Awaitable[str]],
    discarded: list[tuple[str, str, float]],
    close_time: float,
) -> Race[str]:
    """A hedged race (delay 0) over targets a and b with ``attempt``, whose discard
    takes ``close_time`` seconds and notes (result, record's provider, when it ended)."""
    return BareRace(attempt, discarded, close_time)


async def test_a_photo_finish_loser_is_discarded_shielded_and_bounded(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Both attempts succeed at 1 s: the one that did not win is discarded, shielded
    from the race's cancellation, and its 100 s close is cut off at 5 s (it used to hold
    the caller for the whole close)."""
    discarded: list[tuple[str, str, float]] = []
    answered = trio.Event()

    async def attempt(candidate: Candidate, record: AttemptRecord) -> str:
        await answered.wait()  # both are woken with a value, in one instant
        return candidate.provider

    async def answer() -> None:
        await trio.sleep(1.0)
        answered.set()

    race = bare_race(attempt, discarded, close_time=100.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(answer)
        result, winner = await race.run()
    assert trio.current_time() == 6.0
    # Which of the two same-instant successes wins is trio's (randomised) choice.
    assert result == winner.candidate.provider
    assert discarded == []  # the close never finished: cut off at the bound
    (loser,) = [r for r in race.records if r is not winner]
    assert (loser.outcome, loser.reason) == ("cancelled", f"lost the race to {result}")


async def test_a_winner_is_discarded_when_an_exception_follows_the_win(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """b wins at 1 s; a, cancelled, raises KeyboardInterrupt from its cleanup: the
    exception reaches the caller, and b's result is discarded first (at 1 s + its 0.5 s
    close, shielded), never dropped on the floor."""
    discarded: list[tuple[str, str, float]] = []

    async def attempt(candidate: Candidate, record: AttemptRecord) -> str:
        if candidate.provider == "b":
            await trio.sleep(1.0)
            return "b's stream"
        try:
            await trio.sleep_forever()
        finally:
            raise KeyboardInterrupt

    race = bare_race(attempt, discarded, close_time=0.5)
    with pytest.raises(BaseExceptionGroup) as info:
        await race.run()
    assert info.group_contains(KeyboardInterrupt)
    assert discarded == [("b's stream", "b", 1.5)]
    assert race.records[1].outcome == "cancelled"


# --------------------------------------------------------------------------- C: visible hedges


async def test_the_trace_carries_the_delay_and_the_hedge_not_sent_for_want_of_budget(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With an empty hedge budget, the stalled request's trace shows the delay in force
    (0.5 s, on every attempt) and the hedge that fell due at 0.5 s on b, not sent, why;
    statistics count it, with the delay and the budget's tokens."""
    hedge = HedgeConfig(delay=0.5, budget_ratio=0.0, budget_burst=0.0)
    a = MockProvider(name="a", default=reply("a", 3.0))
    b = MockProvider(name="b", default=reply("b", 0.25))
    async with routed({"a": a, "b": b}, hedge) as (router, _):
        resp = await router.complete(chat())
        assert (resp.provider, trio.current_time()) == ("a", 3.0)
        assert [row(x) for x in resp.attempts] == [
            ("a", "primary", "won", 0.0, 3.0),
            ("b", "hedge", "skipped", None, 0.5),
        ]
        assert [x.hedge_delay for x in resp.attempts] == [0.5, 0.5]
        assert resp.attempts[1].reason == "hedge not sent: the route's hedge budget is empty"
        assert b.calls == []
        assert router.statistics().hedging == {
            "r": HedgeStatistics(
                route="r",
                delay=0.5,
                budget_tokens=0.0,
                budget_burst=0.0,
                sent=0,
                not_sent_budget=1,
                not_sent_deadline=0,
                not_sent_no_target=0,
            )
        }


async def test_a_hedge_with_no_target_left_is_traced_and_counted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """max_attempts 3 over two targets: the third hedge falls due at 1.0 s with no target
    left; the trace shows it (empty provider), and statistics count one hedge sent and
    one not sent for want of a target; sent hedges spend the budget (a cold budget holds
    max_attempts - 1 = 2 tokens: 2 + 0.1 - 1)."""
    hedge = HedgeConfig(delay=0.5, max_attempts=3, budget_burst=10.0)
    a = MockProvider(name="a", default=reply("a", 3.0))
    b = MockProvider(name="b", default=reply("b", 2.0))
    async with routed({"a": a, "b": b}, hedge) as (router, _):
        resp = await router.complete(chat())
        assert (resp.provider, trio.current_time()) == ("b", 2.5)
        assert [row(x) for x in resp.attempts] == [
            ("a", "primary", "cancelled", 0.0, 2.5),
            ("b", "hedge", "won", 0.5, 2.5),
            ("", "hedge", "skipped", None, 1.0),
        ]
        assert resp.attempts[2].reason == "hedge not sent: no target left to hedge on"
        hedging = router.statistics().hedging["r"]
        assert (hedging.sent, hedging.not_sent_no_target, hedging.delay) == (1, 1, 0.5)
        assert hedging.budget_tokens == pytest.approx(1.1)


async def test_a_sequential_route_has_no_hedge_delay_and_no_hedging_entry(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Sequential routes pay nothing for hedge visibility: no delay on their trace, no
    entry in statistics().hedging."""
    async with routed({"a": MockProvider(name="a")}) as (router, _):
        resp = await router.complete(chat())
        assert [x.hedge_delay for x in resp.attempts] == [None]
        assert router.statistics().hedging == {}


async def test_a_late_hedge_target_is_passed_over_for_the_next_as_a_hedge(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Hedge due at 0.25 s with 0.75 s left: b (expects 5 s) is passed over *as a hedge*
    (never labelled a fallback) and c (expects 0.125 s) is hedged on instead."""
    a = MockProvider(name="a", default=reply("a", 10.0))
    b = MockProvider(name="b", default=reply("b", 5.0))
    c = MockProvider(name="c", default=reply("c", 0.125))
    hedge = HedgeConfig(delay=0.25, max_attempts=3, budget_burst=10.0)
    async with routed({"a": a, "b": b, "c": c}, hedge) as (router, _):
        await router.complete(chat("b:m"))
        await router.complete(chat("c:m"))
        t0 = trio.current_time()
        with trio.fail_after(1.0):
            resp = await router.complete(chat())
        assert (resp.provider, trio.current_time() - t0) == ("c", 0.375)
        assert [row(x) for x in resp.attempts] == [
            ("a", "primary", "cancelled", 0.0, 0.375),
            ("b", "hedge", "skipped", None, 0.25),
            ("c", "hedge", "won", 0.25, 0.375),
        ]
        assert resp.attempts[1].reason == (
            "cannot finish before the deadline (expects ~5s, 0.75s left)"
        )


async def test_a_hedge_that_finds_no_target_in_time_spends_no_budget_token(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The budget holds one token.  A request with 1 s left: its hedge at 0.25 s finds
    only b (expects 5 s), is not sent and keeps the token; so the next request, with no
    deadline, still hedges on b at 0.25 s and gets b's answer at 5.25 s, not a's at 10."""
    a = MockProvider(name="a", default=reply("a", 10.0))
    b = MockProvider(name="b", default=reply("b", 5.0))
    hedge = HedgeConfig(delay=0.25, budget_ratio=0.0, budget_burst=1.0)
    async with routed({"a": a, "b": b}, hedge) as (router, _):
        await router.complete(chat("b:m"))
        with trio.move_on_after(1.0):
            await router.complete(chat())
        assert len(b.calls) == 1  # only the warm-up
        t0 = trio.current_time()
        resp = await router.complete(chat())
        assert (resp.provider, trio.current_time() - t0) == ("b", 5.25)
