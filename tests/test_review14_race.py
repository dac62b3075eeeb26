"""Review of issue 14's one race driver: retries on every path, on virtual time.

Each test pins a finding of the hostile review of ``router/_race.py`` and
``router/_attempt.py`` (hedged attempts now retry on their target): it fails on main at
eabb887 and passes after the fix.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from providers import RateLimited, ServerError
from router import ChatRequest, Message, open_router
from router._policy import Candidate
from router._race import AttemptRecord, Race
from router.config import HedgeConfig, ProviderConfig, RetryConfig, RouteConfig, RouterConfig
from router.testing import MockProvider, MockResponse

#: Retry after exactly the ``retry_after`` the error carries (no jitter).
EXACT = RetryConfig(max_attempts=3, initial_backoff=0.0, max_backoff=0.0)


def chat() -> ChatRequest:
    return ChatRequest(model="r", messages=[Message.user("hi")], max_tokens=16)


async def test_the_last_attempt_allowed_retries_a_rate_limit_though_targets_remain(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A hedged route of three targets with max_attempts = 2: a is rate-limited at 0.1 s
    and b takes over at once; b is rate-limited at 0.2 s too, and, as no further attempt
    can start (c is left but over the cap), b waits its 0.1 s and retries, answering at
    0.4 s. (It used to give up, "another target can serve it now", and the request
    failed with AllProvidersFailed at 0.2 s.)"""
    limited = MockResponse(error=RateLimited("slow down", retry_after=0.1), latency=0.1)
    mocks = {
        "a": MockProvider(name="a", responses=[limited]),
        "b": MockProvider(name="b", responses=[limited, MockResponse(text="b", latency=0.1)]),
        "c": MockProvider(name="c", default=MockResponse(text="c", latency=0.1)),
    }
    pc = ProviderConfig(kind="mock", retry=EXACT)
    config = RouterConfig(
        providers={name: pc for name in mocks},
        routes={
            "r": RouteConfig(
                targets=["a:m", "b:m", "c:m"], hedge=HedgeConfig(delay=5.0, max_attempts=2)
            )
        },
    )
    async with open_router(config, providers=mocks) as router:
        resp = await router.complete(chat())
        assert (resp.text, trio.current_time()) == ("b", 0.4)
        assert [(a.provider, a.kind, a.outcome, a.retries) for a in resp.attempts] == [
            ("a", "primary", "failed", 0),
            ("b", "fallback", "won", 1),
        ]
        assert [c.started_at for c in mocks["b"].calls] == [0.1, 0.30000000000000004]
        assert mocks["c"].calls == []
        assert router.statistics().retries == 1


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
async def test_each_retry_of_a_hedged_attempt_draws_its_own_jitter(
    autojump_clock: trio.testing.MockClock, seed: int
) -> None:
    """On a hedged route the primary fails three times and retries with full jitter
    (caps 1, 2, 4 s): each wait is its own draw, so the three jitter fractions
    (wait / cap) differ, and the same seed gives the same waits. (Each retry of an
    attempt used to reseed one generator the same way, so every retry drew the same
    fraction: the waits were perfectly correlated.)"""

    async def waits() -> list[float]:
        boom = MockResponse(error=ServerError("boom"), latency=0.0)
        mocks = {
            "a": MockProvider(name="a", responses=[boom, boom, boom, MockResponse(text="a")]),
            "b": MockProvider(name="b", default=MockResponse(text="b", latency=1000.0)),
        }
        retry = RetryConfig(max_attempts=4, initial_backoff=1.0, multiplier=2.0, max_backoff=100.0)
        pc = ProviderConfig(kind="mock", retry=retry)
        config = RouterConfig(
            providers={"a": pc, "b": pc},
            routes={"r": RouteConfig(targets=["a:m", "b:m"], hedge=HedgeConfig(delay=500.0))},
        )
        async with open_router(config, providers=mocks, seed=seed) as router:
            resp = await router.complete(chat())
            assert resp.text == "a"
            assert resp.attempts[0].retries == 3
        starts = [c.started_at for c in mocks["a"].calls]
        return [b - a for a, b in itertools.pairwise(starts)]

    first = await waits()
    fractions = [wait / cap for wait, cap in zip(first, (1.0, 2.0, 4.0), strict=True)]
    assert all(0.0 <= f <= 1.0 for f in fractions)
    f1, f2, f3 = fractions
    assert min(abs(f1 - f2), abs(f2 - f3), abs(f1 - f3)) > 1e-6, fractions
    assert await waits() == pytest.approx(first)  # reproducible with a seed


class _DecidedRace(Race[str]):
    """Racing a and b (delay 0): b answers at 1 s; a's try ends in a shield at 2 s with
    a retryable error, after the race was decided."""

    def __init__(self) -> None:
        super().__init__(
            [Candidate(provider="a", model="m"), Candidate(provider="b", model="m", index=1)],
            max_attempts=2,
            delay=0.0,
        )
        self.asked: list[tuple[str, float]] = []

    async def _try(self, record: AttemptRecord) -> str:
        if record.candidate.provider == "a":
            with trio.CancelScope(shield=True):
                await trio.sleep(2.0)
            raise ServerError("late")
        await trio.sleep(1.0)
        return "b"

    def call(self, record: AttemptRecord) -> Any:
        return self._try(record)

    def retry_delay(self, record: AttemptRecord, exc: Any, retry: int) -> float | None:
        self.asked.append((record.candidate.provider, trio.current_time()))
        return 0.5


async def test_a_try_that_fails_after_the_race_is_decided_is_not_retried(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A try that fails once the race is already won (a photo finish, or a try ending
    in a shield) is not offered a retry: retry_delay, which spends the provider's retry
    budget and announces RetryScheduled, is not asked. (It was, at 2 s, for a race won
    at 1 s.)"""
    race = _DecidedRace()
    result, winner = await race.run()
    assert (result, winner.candidate.provider, trio.current_time()) == ("b", "b", 2.0)
    assert race.asked == []
    assert [(r.candidate.provider, r.outcome, r.retries) for r in race.records] == [
        ("a", "failed", 0),
        ("b", "won", 0),
    ]


class _CancelledAsItFails(Race[str]):
    """a fails at 1 s, and the caller's scope is cancelled in that same instant (before
    the race's next checkpoint); b would answer."""

    def __init__(self, delay: float, scope: trio.CancelScope) -> None:
        super().__init__(
            [Candidate(provider="a", model="m"), Candidate(provider="b", model="m", index=1)],
            max_attempts=2,
            delay=delay,
        )
        self.scope = scope
        self.called: list[str] = []

    async def _try(self, record: AttemptRecord) -> str:
        self.called.append(record.candidate.provider)
        await trio.sleep(1.0)
        if record.candidate.provider == "a":
            self.scope.cancel()
            raise ServerError("boom")
        return "b"

    def call(self, record: AttemptRecord) -> Any:
        return self._try(record)


@pytest.mark.parametrize("delay", [math.inf, 10.0], ids=["sequential", "hedged"])
async def test_a_caller_cancelled_as_an_attempt_fails_starts_no_fallback(
    autojump_clock: trio.testing.MockClock, delay: float
) -> None:
    """One driver, one behaviour: when the caller's scope is cancelled in the instant an
    attempt fails, no fallback starts, whether the race runs in the caller's task
    (delay = inf) or in a nursery. (The sequential race used to start b, call it and
    trace a cancelled fallback.)"""
    with trio.CancelScope() as scope:
        race = _CancelledAsItFails(delay, scope)
        await race.run()
    assert scope.cancelled_caught
    assert trio.current_time() == 1.0
    assert race.called == ["a"]
    assert [(r.candidate.provider, r.kind, r.outcome) for r in race.records] == [
        ("a", "primary", "failed")
    ]
    assert race.fallbacks == 0


class _FailsToClose(MockProvider):
    """Its streams raise ServerError when closed after a normal exit."""

    def stream(self, request: ChatRequest) -> Any:
        inner = super().stream(request)

        @asynccontextmanager
        async def closing() -> AsyncIterator[Any]:
            async with inner as events:
                yield events
            raise ServerError("closing failed", provider=self.name)

        return closing()


class _SlowToClose(MockProvider):
    """Its streams take 1 s to close, shielded (a connection shut down politely)."""

    def stream(self, request: ChatRequest) -> Any:
        inner = super().stream(request)

        @asynccontextmanager
        async def closing() -> AsyncIterator[Any]:
            try:
                async with inner as events:
                    yield events
            finally:
                with trio.CancelScope(shield=True):
                    await trio.sleep(1.0)

        return closing()


async def test_an_error_closing_an_unread_winner_does_not_replace_the_callers_cancel(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Racing streams: a commits at 0.5 s, b takes until 1.5 s to close, the caller's
    0.7 s deadline fires meanwhile, and a's stream, discarded, fails to close: the
    caller's scope catches its cancellation at 1.5 s, a's permit is back. (The close's
    ServerError used to replace the Cancelled and escape the caller's move_on.)"""
    mocks = {
        "a": _FailsToClose(name="a", default=MockResponse(text="a a", latency=0.5)),
        "b": _SlowToClose(name="b", default=MockResponse(text="b b", latency=5.0)),
    }
    pc = ProviderConfig(kind="mock", retry=RetryConfig(max_attempts=1))
    config = RouterConfig(
        providers={"a": pc, "b": pc},
        routes={"r": RouteConfig(targets=["a:m", "b:m"], hedge=HedgeConfig(delay=0.0))},
    )
    async with open_router(config, providers=mocks) as router:
        with trio.move_on_after(0.7) as scope:
            async with router.stream(chat()):
                pytest.fail("the caller was cancelled before the race handed it a stream")
        assert scope.cancelled_caught
        assert trio.current_time() == 1.5
        stats = router.statistics()
        assert (stats.cancelled, stats.providers["a"].in_flight) == (1, 0)


class _PhotoFinish(Race[str]):
    """Racing a and b (delay 0): both answer at 1 s; closing an unread answer fails."""

    def __init__(self) -> None:
        super().__init__(
            [Candidate(provider="a", model="m"), Candidate(provider="b", model="m", index=1)],
            max_attempts=2,
            delay=0.0,
        )
        self.discarded: list[str] = []

    async def _try(self, record: AttemptRecord) -> str:
        with trio.CancelScope(shield=True):  # both get to answer: a photo finish
            await trio.sleep(1.0)
        return record.candidate.provider

    def call(self, record: AttemptRecord) -> Any:
        return self._try(record)

    async def discard(self, result: str, record: AttemptRecord) -> None:
        self.discarded.append(result)
        raise ServerError("closing failed")


async def test_an_error_closing_a_photo_finish_second_does_not_reach_the_caller(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Two attempts answer in the same instant; closing the second one's answer fails:
    the caller still gets the first's answer, not an ExceptionGroup from the nursery."""
    race = _PhotoFinish()
    result, winner = await race.run()
    assert trio.current_time() == 1.0
    assert result == winner.candidate.provider
    assert race.discarded == [{"a": "b", "b": "a"}[result]]
    assert sorted(r.outcome or "" for r in race.records) == ["cancelled", "won"]
