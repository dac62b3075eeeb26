"""The actor's one call path: crashes, per-attempt limits, long retry-afters, queue waits.

Every operation (complete, stream, embed) goes admit → call → outcome → health through
the same code, so the same fault gives the same statistics whichever operation met it.
Everything runs on virtual time (``autojump_clock``) with exact assertions; the wire
variants run the real adapters against the fake upstream over loopback.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import pytest
import trio
import trio.lowlevel
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from providers import (
    ChatRequest,
    ConfigError,
    Done,
    EmbeddingRequest,
    EventStream,
    LLMError,
    Message,
    Overloaded,
    RateLimited,
    ServerError,
    StreamEvent,
    StreamInterrupted,
    TextDelta,
    Timeout,
)
from providers._types import is_content_event
from providers.testing import Fault, Scenario
from router import Router, open_router
from router._actor import ProviderActor
from router._limiter import Mailbox, Permit
from router._providers import PRESETS, preset_limits
from router.config import ProviderConfig, RetryConfig, RouteConfig, RouterConfig
from router.events import QueueWait, RouterEvent
from router.testing import MockProvider, MockResponse
from tests.test_router_wire import finished, wire_router

NO_RETRY = RetryConfig(max_attempts=1)


def chat(model: str = "a:m", text: str = "one two three") -> ChatRequest:
    return ChatRequest(model=model, messages=[Message.user(text)])


def config(
    providers: dict[str, ProviderConfig], routes: dict[str, list[str]] | None = None
) -> RouterConfig:
    return RouterConfig(
        providers=providers,
        routes={name: RouteConfig(targets=t) for name, t in (routes or {}).items()},
    )


async def read_all(router: Router, request: ChatRequest) -> list[StreamEvent]:
    async with router.stream(request) as events:
        return [event async for event in events]


def recorder() -> tuple[list[RouterEvent], Callable[[RouterEvent], None]]:
    seen: list[RouterEvent] = []
    return seen, seen.append


# --------------------------------------------------------------------------- crashes


class _BreaksAfterFirstContent:
    """An event stream that raises ValueError right after its first content event."""

    def __init__(self, events: EventStream) -> None:
        self._events = events
        self._content = False

    def __aiter__(self) -> _BreaksAfterFirstContent:
        return self

    async def __anext__(self) -> StreamEvent:
        if self._content:
            raise ValueError("adapter bug mid-stream")
        event = await self._events.__anext__()
        self._content = is_content_event(event)
        return event


class Crashing(MockProvider):
    """An adapter with a bug: ValueError from complete, embed, or a stream (``where``:
    ``"open"`` before any event, ``"mid"`` after the first content), after 0.5 s."""

    def __init__(self, name: str, where: str = "open") -> None:
        super().__init__(name=name)
        self.where = where

    async def complete(self, request: ChatRequest) -> Any:
        await trio.sleep(0.5)
        raise ValueError("adapter bug")

    async def embed(self, request: Any) -> Any:
        await trio.sleep(0.5)
        raise ValueError("adapter bug")

    def stream(self, request: ChatRequest) -> Any:
        return self._crashing_stream(request)

    @asynccontextmanager
    async def _crashing_stream(self, request: ChatRequest) -> AsyncIterator[Any]:
        await trio.sleep(0.5)
        if self.where == "open":
            raise ValueError("adapter bug at open")
        async with MockProvider.stream(self, request) as events:
            yield _BreaksAfterFirstContent(events)


async def _via_complete(router: Router) -> None:
    await router.complete(chat())


async def _via_stream(router: Router) -> None:
    await read_all(router, chat())


async def _via_embed(router: Router) -> None:
    await router.embed("a:m", ["some text"])


OPERATIONS: dict[str, tuple[str, Callable[[Router], Awaitable[None]]]] = {
    "complete": ("open", _via_complete),
    "stream-at-open": ("open", _via_stream),
    "stream-mid-stream": ("mid", _via_stream),
    "embed": ("open", _via_embed),
}


@pytest.mark.parametrize("operation", list(OPERATIONS))
async def test_a_crashing_adapter_fails_alike_through_every_operation(
    operation: str, autojump_clock: trio.testing.MockClock
) -> None:
    """30 calls into an adapter that raises ValueError: each of the first 10 reaches the
    caller as ServerError (the ValueError its cause) and counts as a failure, the breaker
    opens, the rest are refused (panic routing off), health is unhealthy — the same for every
    operation."""
    where, call = OPERATIONS[operation]
    pc = ProviderConfig(kind="mock", retry=NO_RETRY)  # breaker: 10 calls, 50%, 5 s
    # Panic routing off: with it on, a lone target whose breaker is open is tried anyway.
    cfg = msgspec.structs.replace(config({"a": pc}), panic_threshold=0.0)
    async with open_router(cfg, providers={"a": Crashing("a", where)}) as router:
        errors: list[LLMError] = []
        for _ in range(30):
            try:
                await call(router)
            except LLMError as exc:
                errors.append(exc)
        stats = router.statistics().providers["a"]
        health = router.health()["a"]
    assert len(errors) == 30
    crashes, refusals = errors[:10], errors[10:]
    for error in crashes:
        assert type(error) is ServerError
        assert isinstance(error.__cause__, ValueError)
        assert "ValueError" in str(error)
        assert error.retryable
    assert all(type(e) is Overloaded and "circuit breaker open" in str(e) for e in refusals)
    assert (stats.failed, stats.cancelled, stats.succeeded) == (10, 0, 0)
    assert (stats.breaker, health.status) == ("open", "unhealthy")
    assert trio.current_time() == 5.0  # 10 calls of 0.5 s; the refusals took no time


async def test_a_stream_that_crashes_while_closing_raises_a_typed_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A foreign exception from the adapter's stream exit (after Done) reaches the caller
    as ServerError; the answer already counted as a success, not again as a failure."""

    class BadClose(MockProvider):
        def stream(self, request: ChatRequest) -> Any:
            return self._bad(request)

        @asynccontextmanager
        async def _bad(self, request: ChatRequest) -> AsyncIterator[Any]:
            async with MockProvider.stream(self, request) as events:
                yield events
            raise KeyError("cleanup bug")

    async with open_router(
        config({"a": ProviderConfig(kind="mock")}), providers={"a": BadClose(name="a")}
    ) as router:
        with pytest.raises(ServerError) as caught:
            await read_all(router, chat())
        stats = router.statistics().providers["a"]
    assert isinstance(caught.value.__cause__, KeyError)
    assert (stats.succeeded, stats.failed, stats.cancelled) == (1, 0, 0)


# --------------------------------------------------------------------------- per-attempt limits


async def test_first_token_timeout_fails_a_hanging_primary_over(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """complete: a primary that never answers fails with Timeout at first_token_timeout,
    and the sequential route moves on to the next target at exactly that time."""
    hang = MockProvider(name="a", default=MockResponse(text="never", latency=math.inf))
    pc = ProviderConfig(kind="mock", first_token_timeout=10.0, retry=NO_RETRY)
    cfg = config({"a": pc, "b": ProviderConfig(kind="mock")}, {"r": ["a:m", "b:m"]})
    async with open_router(cfg, providers={"a": hang, "b": MockProvider(name="b")}) as router:
        response = await router.complete(chat("r"))
        stats = router.statistics().providers["a"]
    assert (response.provider, trio.current_time()) == ("b", 10.0)
    first = response.attempts[0]
    assert (first.provider, first.outcome, first.error_type) == ("a", "failed", "Timeout")
    assert "no answer within 10s" in (first.reason or "")
    assert (first.start, first.end) == (0.0, 10.0)
    assert (stats.failed, stats.cancelled) == (1, 0)
    assert [c.outcome for c in hang.calls] == ["cancelled"]


async def test_first_token_timeout_moves_on_at_once_with_the_default_retry_config(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With retries on (the default), a timed-out target that has a fallback is not sent
    the same request again: the route moves on at exactly first_token_timeout."""
    hang = MockProvider(name="a", default=MockResponse(text="never", latency=math.inf))
    pc = ProviderConfig(kind="mock", first_token_timeout=10.0)
    cfg = config({"a": pc, "b": ProviderConfig(kind="mock")}, {"r": ["a:m", "b:m"]})
    async with open_router(cfg, providers={"a": hang, "b": MockProvider(name="b")}) as router:
        response = await router.complete(chat("r"))
    assert (response.provider, trio.current_time()) == ("b", 10.0)
    assert response.attempts[0].retries == 0
    assert len(hang.calls) == 1


async def test_first_token_timeout_is_retryable_on_a_lone_target(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A lone target that hangs once: the Timeout is retried (it is retryable) and the
    second try answers."""
    mock = MockProvider(name="a", responses=[MockResponse(text="slow", latency=math.inf), "fast"])
    pc = ProviderConfig(kind="mock", first_token_timeout=3.0)
    async with open_router(config({"a": pc}), providers={"a": mock}, seed=1) as router:
        response = await router.complete(chat())
    assert response.text == "fast"
    assert response.attempts[0].retries == 1
    assert 3.0 <= trio.current_time() <= 3.5  # one timeout, then a jittered backoff ≤ 0.5 s


async def test_first_token_timeout_on_a_stream_fails_over_before_commit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """stream: no content within first_token_timeout → Timeout, and the route streams
    from the next target, starting at exactly that time."""
    silent = MockProvider(name="a", default=MockResponse(text="late", latency=math.inf))
    pc = ProviderConfig(kind="mock", first_token_timeout=4.0, retry=NO_RETRY)
    cfg = config({"a": pc, "b": ProviderConfig(kind="mock")}, {"r": ["a:m", "b:m"]})
    async with open_router(cfg, providers={"a": silent, "b": MockProvider(name="b")}) as router:
        async with router.stream(chat("r")) as events:
            first = await events.__anext__()
            assert trio.current_time() == 4.0
            rest = [event async for event in events]
        stats = router.statistics().providers["a"]
    assert isinstance(first, TextDelta)
    assert events.provider == "b"
    assert isinstance(rest[-1], Done)
    assert rest[-1].response.attempts[0].error_type == "Timeout"
    assert "no first token within 4s" in (rest[-1].response.attempts[0].reason or "")
    assert (stats.failed, stats.cancelled) == (1, 0)


async def test_first_token_timeout_stops_counting_at_the_first_content(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A stream whose first content comes in time is not cut by first_token_timeout,
    however slow the rest (no idle_timeout set)."""
    slow = MockProvider(
        name="a", default=MockResponse(text="a b c", latency=3.0, chunk_latency=20.0)
    )
    pc = ProviderConfig(kind="mock", first_token_timeout=4.0)
    async with open_router(config({"a": pc}), providers={"a": slow}) as router:
        events = await read_all(router, chat())
    assert isinstance(events[-1], Done)
    assert trio.current_time() == 3.0 + 3 * 20.0


async def test_idle_timeout_ends_a_stalled_stream_with_a_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A stream that stalls after its first chunk fails idle_timeout after that chunk,
    with a Timeout naming the limit; it counts as the provider's failure."""
    stall = MockProvider(
        name="a", default=MockResponse(text="one two three", chunk_latency=math.inf)
    )
    pc = ProviderConfig(kind="mock", idle_timeout=5.0, retry=NO_RETRY)
    async with open_router(config({"a": pc}), providers={"a": stall}) as router:
        received: list[StreamEvent] = []
        with pytest.raises(Timeout, match="no stream event within 5s") as caught:
            async with router.stream(chat()) as events:
                async for event in events:
                    received.append(event)
        stats = router.statistics().providers["a"]
    assert [type(e) for e in received] == [TextDelta]
    assert trio.current_time() == 5.0
    assert caught.value.retryable
    assert caught.value.provider == "a"
    assert (stats.failed, stats.cancelled, stats.succeeded) == (1, 0, 0)


class _Paced(MockProvider):
    """Streams one TextDelta after each of ``gaps`` (seconds), then a Done."""

    def __init__(self, gaps: list[float]) -> None:
        super().__init__(name="a")
        self.gaps = gaps

    def stream(self, request: ChatRequest) -> Any:
        return self._paced(request)

    @asynccontextmanager
    async def _paced(self, request: ChatRequest) -> AsyncIterator[Any]:
        done = await MockProvider.complete(self, request)

        async def events() -> AsyncGenerator[StreamEvent, None]:
            for gap in self.gaps:
                await trio.sleep(gap)
                yield TextDelta(text="x")
            yield Done(response=done)

        agen = events()
        try:
            yield agen
        finally:
            await agen.aclose()


@settings(max_examples=40, deadline=None)
@given(
    gaps=st.lists(st.sampled_from([0.5, 1.0, 2.0, 3.0, 4.0]), min_size=1, max_size=6),
    idle=st.sampled_from([1.5, 2.5, 3.5]),
    first=st.sampled_from([None, 0.75, 2.5]),
)
def test_stream_limits_cut_exactly_at_the_first_gap_too_long(
    gaps: list[float], idle: float, first: float | None
) -> None:
    """Invariant: with idle limit L and first-token limit F, a stream whose events come
    after gaps g₁..gₙ fails iff g₁ > min(L, F) or some later gᵢ > L, and then at exactly
    the start of that gap plus its limit; otherwise it is read whole, at Σg."""

    async def main() -> None:
        pc = ProviderConfig(
            kind="mock", idle_timeout=idle, first_token_timeout=first, retry=NO_RETRY
        )
        async with open_router(config({"a": pc}), providers={"a": _Paced(gaps)}) as router:
            got: list[StreamEvent] = []
            error: Timeout | None = None
            try:
                async with router.stream(chat()) as events:
                    async for event in events:
                        got.append(event)
            except Timeout as exc:
                error = exc
        t, expected_fail = 0.0, None
        for i, gap in enumerate(gaps):
            limit = idle if i > 0 or first is None else min(idle, first)
            if gap > limit:
                expected_fail = t + limit
                break
            t += gap
        if expected_fail is None:
            assert error is None
            assert isinstance(got[-1], Done)
            assert trio.current_time() == sum(gaps)
        else:
            assert error is not None, (gaps, idle, first)
            assert trio.current_time() == pytest.approx(expected_fail, abs=1e-9)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


async def test_idle_timeout_does_not_count_the_readers_own_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A reader that spends 10 s on each event of a fast stream, idle_timeout = 5 s: no
    Timeout — the limit runs from when the reader asks for the next event."""
    fast = MockProvider(name="a", default=MockResponse(text="one two three", chunk_latency=1.0))
    pc = ProviderConfig(kind="mock", idle_timeout=5.0, retry=NO_RETRY)
    async with (
        open_router(config({"a": pc}), providers={"a": fast}) as router,
        router.stream(chat()) as events,
    ):
        async for event in events:
            last = event
            await trio.sleep(10.0)
    assert isinstance(last, Done)


async def test_a_crashing_health_probe_is_a_failure_not_an_escape(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """check_health on an adapter whose model listing raises ValueError records a failure
    for that provider; nothing escapes into the caller."""

    class BadListing(MockProvider):
        async def list_models(self) -> Any:
            raise ValueError("listing bug")

    async with open_router(
        config({"a": ProviderConfig(kind="mock")}), providers={"a": BadListing(name="a")}
    ) as router:
        await router.check_health()
        assert router.statistics().providers["a"].failed == 1


async def test_first_token_timeout_bounds_an_embedding(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """embed: no vectors within first_token_timeout → a Timeout at exactly that time."""
    pc = ProviderConfig(kind="mock", first_token_timeout=3.0, retry=NO_RETRY)
    hang = MockProvider(name="a", latency=math.inf)
    async with open_router(config({"a": pc}), providers={"a": hang}) as router:
        with pytest.raises(Timeout, match="no embeddings within 3s"):
            await router.embed("a:m", ["text"])
        assert router.statistics().providers["a"].failed == 1
    assert trio.current_time() == 3.0


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
@pytest.mark.parametrize("streaming", [False, True], ids=["complete", "stream"])
async def test_first_token_timeout_fails_over_from_a_hanging_upstream(
    kind: str, streaming: bool, autojump_clock: trio.testing.MockClock
) -> None:
    """Over loopback: a primary that never sends headers is cut at first_token_timeout,
    its connection closed, and the route answers from the next target at that time."""
    pa = ProviderConfig(kind=kind, first_token_timeout=2.0, retry=NO_RETRY)  # type: ignore[arg-type]
    pb = ProviderConfig(kind=kind)  # type: ignore[arg-type]
    scenarios = {"a": Scenario(faults=[Fault("hang", rate=1.0)])}
    async with wire_router(scenarios, {"a": pa, "b": pb}, {"r": ["a:m", "b:m"]}) as (up, router):
        if streaming:
            events = await read_all(router, chat("r"))
            last = events[-1]
            assert isinstance(last, Done)
            response = last.response
        else:
            response = await router.complete(chat("r"))
        assert trio.current_time() == 2.0
        assert response.provider == "b"
        assert response.attempts[0].error_type == "Timeout"
        (hung,) = [r for r in up.requests if r.scenario == "a"]
        assert hung.outcome == "client_disconnected"
        assert router.statistics().providers["a"].failed == 1


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_idle_timeout_cuts_a_dripping_upstream_stream(
    kind: str, autojump_clock: trio.testing.MockClock
) -> None:
    """Over loopback: chunks 5 s apart with idle_timeout = 1 s: the stream fails with
    Timeout 1 s after its last event, and the connection is closed."""
    pc = ProviderConfig(kind=kind, idle_timeout=1.0, retry=NO_RETRY)  # type: ignore[arg-type]
    scenario = Scenario(chunk_interval=5.0, reply="one two three four")
    async with wire_router({"a": scenario}, {"a": pc}) as (up, router):
        deltas: list[float] = []
        with pytest.raises(Timeout, match="no stream event within 1s"):
            async with router.stream(chat()) as events:
                async for event in events:
                    if isinstance(event, TextDelta):
                        deltas.append(trio.current_time())
        assert deltas == [0.0]  # the first chunk comes with the headers, the next 5 s later
        assert trio.current_time() == 1.0
        (record,) = up.requests
        assert await finished(record) == 0.0  # hung up in the same instant
        assert record.outcome == "client_disconnected"
        stats = router.statistics().providers["a"]
        assert (stats.failed, stats.in_flight) == (1, 0)


@pytest.mark.parametrize("field", ["first_token_timeout", "idle_timeout", "queue_wait_threshold"])
@pytest.mark.parametrize("value", [-1.0, math.nan])
async def test_a_bad_limit_built_in_code_is_a_config_error_naming_it(
    field: str, value: float
) -> None:
    """A negative or NaN limit in a config built in code (not decoded, so no msgspec
    check) is refused when the router opens, with the field's path."""
    pc = ProviderConfig(kind="mock", **{field: value})
    with pytest.raises(ConfigError) as caught:
        async with open_router(config({"a": pc}), providers={"a": MockProvider(name="a")}):
            pass
    assert caught.value.path == f"$.providers.a.{field}"


# --------------------------------------------------------------------------- long retry-after


async def test_a_retry_after_beyond_max_retry_after_takes_the_provider_out_of_routing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """retry-after 86400 s (> max_retry_after 60 s): health says unhealthy until then, with
    the time and why; the next call is refused at once with RateLimited (nothing sent);
    at t = 86400 the provider is healthy again and answers."""
    mock = MockProvider(name="a", responses=[RateLimited("quota", retry_after=86400.0)])
    async with open_router(
        config({"a": ProviderConfig(kind="mock")}), providers={"a": mock}
    ) as router:
        with pytest.raises(RateLimited):
            await router.complete(chat())
        health = router.health()["a"]
        assert health.status == "unhealthy"
        assert "until t=86400.000" in (health.reason or "")
        assert "retry-after 86400s" in (health.reason or "")
        assert "max_retry_after (60s)" in (health.reason or "")
        with pytest.raises(RateLimited, match=r"refused until t=86400\.000") as refused:
            await router.complete(chat())
        assert refused.value.retry_after == 86400.0
        assert (trio.current_time(), len(mock.calls)) == (0.0, 1)
        await router.health_value("a").wait_value(lambda h: h.status != "unhealthy")
        assert trio.current_time() == 86400.0
        # The watcher goes back to sleep: it does not keep republishing the ended suspension.
        actor = router._actors["a"]
        published = 0
        publish = actor._publish

        def counting() -> Any:
            nonlocal published
            published += 1
            return publish()

        actor._publish = counting  # type: ignore[method-assign]
        for _ in range(100):
            await trio.lowlevel.checkpoint()
        assert published == 0
        assert (await router.complete(chat())).text == "echo: one two three"
        assert len(mock.calls) == 2


async def test_a_suspended_provider_is_planned_out_and_the_route_fails_over(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """After a's 24 h retry-after, the route's plan excludes a (with the reason) and b
    answers at once."""
    a = MockProvider(name="a", responses=[RateLimited("quota", retry_after=86400.0)])
    cfg = config(
        {"a": ProviderConfig(kind="mock", retry=NO_RETRY), "b": ProviderConfig(kind="mock")},
        {"r": ["a:m", "b:m"]},
    )
    async with open_router(cfg, providers={"a": a, "b": MockProvider(name="b")}) as router:
        assert (await router.complete(chat("r"))).provider == "b"  # a: 429, fail over
        plan = router.plan("r")
        assert [t.provider for t in plan.targets] == ["b"]
        (excluded,) = plan.excluded
        assert excluded.target == "a:m"
        assert "until t=86400.000" in excluded.reason
        response = await router.complete(chat("r"))
    assert (response.provider, [x.provider for x in response.attempts]) == ("b", ["b"])
    assert trio.current_time() == 0.0


async def test_requests_queued_when_a_long_retry_after_arrives_fail_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Two requests queued behind a call that gets a 24 h retry-after fail at that instant
    with RateLimited, instead of waiting a day."""
    mock = MockProvider(
        name="a",
        responses=[MockResponse(error=RateLimited("quota", retry_after=86400.0), latency=1.0)],
    )
    pc = ProviderConfig(kind="mock", max_concurrency=1, retry=NO_RETRY)
    async with open_router(config({"a": pc}), providers={"a": mock}) as router:
        outcomes: list[tuple[str, float]] = []

        async def one() -> None:
            try:
                await router.complete(chat())
            except LLMError as exc:
                outcomes.append((type(exc).__name__, trio.current_time()))

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(one)
    assert outcomes == [("RateLimited", 1.0)] * 3
    assert len(mock.calls) == 1


async def test_a_retry_after_within_max_retry_after_still_holds_the_queue(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """retry-after 30 s (≤ 60 s): a pause, as before — the next call waits exactly 30 s."""
    mock = MockProvider(name="a", responses=[RateLimited("slow", retry_after=30.0)])
    pc = ProviderConfig(kind="mock", retry=NO_RETRY)
    async with open_router(config({"a": pc}), providers={"a": mock}) as router:
        with pytest.raises(RateLimited):
            await router.complete(chat())
        assert router.health()["a"].status != "unhealthy"
        await router.complete(chat())
    assert trio.current_time() == 30.0


@settings(max_examples=60, deadline=None)
@given(
    wait=st.floats(min_value=0.001, max_value=1e6, allow_nan=False),
    cap=st.floats(min_value=0.0, max_value=1000.0, allow_nan=False),
)
def test_a_pause_holds_up_to_the_cap_and_suspends_beyond(wait: float, cap: float) -> None:
    """Invariant: after pause_until(now + w) with max_pause c, nothing is admitted before
    now + w; if w ≤ c a request waits exactly w, else it is refused at once with
    RateLimited(retry_after = w) until then, and admitted at once after."""

    async def main() -> None:
        mailbox = Mailbox("p", max_pause=cap)
        async with trio.open_nursery() as nursery:
            await nursery.start(mailbox.run)
            mailbox.pause_until(wait)
            if wait <= cap:
                permit = await mailbox.admit(Permit())
                assert trio.current_time() == wait
            else:
                with pytest.raises(RateLimited) as refused:
                    await mailbox.admit(Permit())
                assert refused.value.retry_after == wait
                assert (trio.current_time(), mailbox.suspended_until) == (0.0, wait)
                await trio.sleep(wait)
                permit = await mailbox.admit(Permit())
                assert trio.current_time() == wait
            permit.release()
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


# --------------------------------------------------------------------------- presets


@pytest.mark.parametrize(
    ("kind", "base_url", "applies"),
    [
        ("anthropic", None, True),
        ("anthropic", "https://api.anthropic.com", True),
        ("anthropic", "https://API.Anthropic.com./v1", True),
        ("anthropic", "http://localhost:8080", False),
        ("anthropic", "https://llm-proxy.example.com/anthropic", False),
        ("anthropic", "https://api.anthropic.com.evil.example/", False),
        ("openai", "https://api.openai.com/v1", True),
        ("openai", "http://127.0.0.1:8000/v1", False),
        ("gemini", "https://generativelanguage.googleapis.com/v1beta", True),
        ("groq", "https://api.groq.com/openai/v1", True),
        ("together", "https://api.together.ai/v1", True),
        ("together", "https://api.together.xyz/v1", True),
        ("together", "https://my-vllm.internal/v1", False),
    ],
)
def test_presets_apply_only_to_the_vendors_own_endpoint(
    kind: str, base_url: str | None, applies: bool
) -> None:
    """A preset fills unset limits only when base_url is unset or on the vendor's host."""
    pc = ProviderConfig(kind=kind, base_url=base_url)  # type: ignore[arg-type]
    assert preset_limits(pc) == (PRESETS[kind] if applies else None)


async def test_a_local_endpoint_of_a_preset_kind_is_not_throttled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """60 streams to an anthropic-format server on loopback (no rpm configured) all go
    out at once: Anthropic's 50 RPM preset is not applied to someone else's server."""
    async with wire_router({}, {"a": ProviderConfig(kind="anthropic")}) as (up, router):
        async with trio.open_nursery() as nursery:
            for _ in range(60):
                nursery.start_soon(read_all, router, chat())
        assert [r.received_at for r in up.requests] == [0.0] * 60
        assert router.statistics().providers["a"].admitted == 60


async def test_applied_presets_are_logged(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """When a preset applies, the actor says so at INFO, with the limits."""
    caplog.set_level(logging.INFO, logger="trio_llm_router")
    cfg = config({"a": ProviderConfig(kind="anthropic")})
    async with open_router(cfg, providers={"a": MockProvider(name="a")}):
        pass
    (line,) = [r.getMessage() for r in caplog.records if "entry-tier" in r.getMessage()]
    assert "provider a" in line
    assert "rpm=50, tpm=40000" in line


# --------------------------------------------------------------------------- queue waits


async def test_time_queued_is_on_every_attempt_and_long_waits_are_events(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """rpm 60 / burst 1: the second request waits exactly 1 s; its attempt says
    queued = 1.0, a QueueWait event says the rpm limit held it; the first says 0."""
    pc = ProviderConfig(kind="mock", rpm=60, rpm_burst=1, queue_wait_threshold=0.5)
    async with open_router(config({"a": pc}), providers={"a": MockProvider(name="a")}) as router:
        seen, listen = recorder()
        router.add_listener(listen)
        responses = []

        async def one() -> None:
            responses.append(await router.complete(chat()))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(one)
            nursery.start_soon(one)
    assert [r.attempts[0].queued for r in responses] == [0.0, 1.0]
    (wait,) = [e for e in seen if isinstance(e, QueueWait)]
    assert (wait.provider, wait.provider_model, wait.waited) == ("a", "m", 1.0)
    assert (wait.held_by, wait.outcome, wait.time) == ("rpm", "admitted", 1.0)


@pytest.mark.parametrize(
    ("settings_", "script", "held_by", "waited"),
    [
        ({"max_concurrency": 1}, [MockResponse(text="x", latency=2.0)], "concurrency", 1.0),
        ({"tpm": 3000, "tpm_burst": 2000}, [MockResponse(text="x", latency=100.0)], "tpm", None),
        ({}, [RateLimited("slow", retry_after=3.0)], "pause", 2.0),
    ],
    ids=["concurrency", "tpm", "pause"],
)
async def test_queue_wait_names_the_limit_that_held_it(
    settings_: dict[str, Any],
    script: list[Any],
    held_by: str,
    waited: float | None,
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The QueueWait event (and the log line) say which limit held the request."""
    pc = ProviderConfig(kind="mock", retry=NO_RETRY, queue_wait_threshold=0.0, **settings_)
    mock = MockProvider(name="a", responses=script)
    async with open_router(config({"a": pc}), providers={"a": mock}) as router:
        seen, listen = recorder()
        router.add_listener(listen)

        async def one(text: str) -> None:
            try:
                await router.complete(chat(text=text))
            except LLMError:
                pass

        async with trio.open_nursery() as nursery:
            # Each costs ~300 prompt tokens + 1024 output: the second waits for TPM.
            nursery.start_soon(one, "word " * 300)
            await trio.sleep(1.0)  # the first is in flight, failed, or holds the tokens
            nursery.start_soon(one, "word " * 300)
    waits = [e for e in seen if isinstance(e, QueueWait)]
    assert waits
    assert waits[0].held_by == held_by
    if waited is not None:
        assert waits[0].waited == waited


@pytest.mark.parametrize(("threshold", "expected"), [(1.0, 0), (None, 0), (0.5, 1)])
async def test_short_waits_and_a_disabled_threshold_emit_nothing(
    threshold: float | None, expected: int, autojump_clock: trio.testing.MockClock
) -> None:
    """Below queue_wait_threshold (default 1 s), or with it None, no QueueWait is emitted;
    at the threshold one is; the attempt records the time queued either way."""
    pc = ProviderConfig(kind="mock", rpm=120, rpm_burst=1, queue_wait_threshold=threshold)
    async with open_router(config({"a": pc}), providers={"a": MockProvider(name="a")}) as router:
        seen, listen = recorder()
        router.add_listener(listen)
        queued: list[float] = []

        async def one() -> None:
            queued.append((await router.complete(chat())).attempts[0].queued)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(one)
            nursery.start_soon(one)
    assert sorted(queued) == [0.0, 0.5]
    assert sum(isinstance(e, QueueWait) for e in seen) == expected


async def test_a_request_cancelled_in_the_queue_is_reported_as_cancelled(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A caller that gives up after 5 s in the queue: QueueWait(outcome="cancelled",
    waited=5); one INFO log line names the limit, later ones within 10 s are DEBUG."""
    caplog.set_level(logging.DEBUG, logger="trio_llm_router")
    pc = ProviderConfig(kind="mock", max_concurrency=1)
    slow = MockProvider(name="a", default=MockResponse(text="x", latency=100.0))
    async with open_router(config({"a": pc}), providers={"a": slow}) as router:
        seen, listen = recorder()
        router.add_listener(listen)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(router.complete, chat())
            await trio.sleep(1.0)  # it is in flight: the concurrency slot is taken
            for _ in range(2):
                with trio.move_on_after(5.0):
                    await router.complete(chat())
            nursery.cancel_scope.cancel()
    waits = [e for e in seen if isinstance(e, QueueWait)]
    assert [(w.outcome, w.waited, w.held_by) for w in waits] == [
        ("cancelled", 5.0, "concurrency")
    ] * 2
    lines = [r for r in caplog.records if "waited" in r.getMessage()]
    assert [r.levelno for r in lines] == [logging.INFO, logging.DEBUG]
    assert "the concurrency limit (max_concurrency)" in lines[0].getMessage()


# --------------------------------------------------------------------------- one call path


class Scripted(MockProvider):
    """A provider whose every call, after 1 s, answers (``"ok"``), fails with
    ServerError (``"error"``), raises ValueError (``"crash"``) or never ends (``"hang"``).

    A stream that answers sends its first text delta at 1 s and its Done at 2 s; with
    ``"error-mid"`` it fails with StreamInterrupted after that first delta.
    """

    def __init__(self, outcome: str, delay: float = 1.0) -> None:
        mid = MockResponse(text="one two", chunk_latency=0.5, error_after_chunks=1)
        super().__init__(
            name="a",
            default=mid
            if outcome == "error-mid"
            else MockResponse(text="one two", chunk_latency=0.5),
        )
        self.outcome = outcome
        self.delay = delay

    async def _then(self) -> None:
        await trio.sleep(math.inf if self.outcome == "hang" else self.delay)
        if self.outcome == "error":
            raise ServerError("upstream failed", provider="a")
        if self.outcome == "crash":
            raise ValueError("adapter bug")

    async def complete(self, request: ChatRequest) -> Any:
        await self._then()
        return await MockProvider.complete(self, request)

    async def embed(self, request: Any) -> Any:
        await self._then()
        return await MockProvider.embed(self, request)

    def stream(self, request: ChatRequest) -> Any:
        return self._stream(request)

    @asynccontextmanager
    async def _stream(self, request: ChatRequest) -> AsyncIterator[Any]:
        await self._then()
        async with MockProvider.stream(self, request) as events:
            yield events


async def _call(actor: ProviderActor, operation: str, leave_after_content: bool = False) -> None:
    if operation == "complete":
        await actor.complete(chat())
    elif operation == "embed":
        await actor.embed(EmbeddingRequest(model="m", inputs=["some text"]))
    else:
        async with actor.stream(chat()) as events:
            async for event in events:
                if leave_after_content and is_content_event(event):
                    return


# operation -> outcome -> ((succeeded, failed, cancelled), latency sample or None, error)
_SAMPLE_OF = {"complete": False, "embed": False, "stream": True}
CALL_OUTCOMES: list[tuple[str, str, tuple[int, int, int], float | None, type | None]] = [
    (op, outcome, counts, sample, error)
    for op in ("complete", "embed", "stream")
    for outcome, counts, sample, error in [
        ("ok", (1, 0, 0), 1.0, None),  # stream: time to first content
        ("error", (0, 1, 0), None, ServerError),
        ("crash", (0, 1, 0), None, ServerError),
        ("cancelled-mid-call", (0, 0, 1), 0.25, None),  # a censored sample, to the cut
        ("cancelled-before-admission", (0, 0, 0), None, None),
    ]
] + [
    ("stream", "left-after-first-content", (0, 0, 1), 1.0, None),
    ("stream", "error-mid", (0, 1, 0), None, StreamInterrupted),
]


@pytest.mark.parametrize(
    ("operation", "outcome", "counts", "sample", "error"),
    CALL_OUTCOMES,
    ids=[f"{op}-{outcome}" for op, outcome, *_ in CALL_OUTCOMES],
)
async def test_every_operation_accounts_each_outcome_alike(
    operation: str,
    outcome: str,
    counts: tuple[int, int, int],
    sample: float | None,
    error: type | None,
    autojump_clock: trio.testing.MockClock,
) -> None:
    """complete, embed and stream through the one call path: each outcome gives the same
    counts, the same latency sample (of whole answers, or a stream's first content; a
    cancelled call's censored at the cut) and the same error, and returns the permit."""
    script = {"cancelled-mid-call": "hang", "left-after-first-content": "ok"}.get(outcome, outcome)
    provider = Scripted("ok" if script == "cancelled-before-admission" else script)
    async with open_router(
        config({"a": ProviderConfig(kind="mock")}), providers={"a": provider}
    ) as router:
        actor = router._actors["a"]
        await trio.sleep(1.0)  # so that no time reads as 0.0
        start = trio.current_time()
        raised: BaseException | None = None
        with trio.CancelScope() as scope:
            if outcome == "cancelled-before-admission":
                scope.cancel()
            elif outcome == "cancelled-mid-call":
                scope.deadline = start + 0.25
            try:
                await _call(actor, operation, outcome == "left-after-first-content")
            except LLMError as exc:
                raised = exc
        stats = actor.statistics()
        stream = _SAMPLE_OF[operation]
        recorded = actor.expected_latency(stream=stream)
        other = actor.expected_latency(stream=not stream)
    assert (stats.succeeded, stats.failed, stats.cancelled) == counts
    assert (stats.in_flight, stats.queued) == (0, 0)
    assert stats.admitted == (0 if outcome == "cancelled-before-admission" else 1)
    assert recorded == sample
    assert other is None  # the other kind of latency is untouched
    assert type(raised) is (error or type(None))
    if outcome == "crash":
        assert isinstance(raised.__cause__, ValueError)


async def test_a_streams_first_content_at_time_zero_is_its_latency(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Drift pinned: a stream whose first content came at trio time 0.0 records a time to
    first token of 0.0, as an abandoned stream did; the success path read the 0.0 as
    "no content yet" (``first or now``) and recorded the whole stream's 1.0 s."""
    slow_body = MockProvider(
        name="a", default=MockResponse(text="one two three", chunk_latency=0.5)
    )
    async with open_router(
        config({"a": ProviderConfig(kind="mock")}), providers={"a": slow_body}
    ) as router:
        assert trio.current_time() == 0.0
        await read_all(router, chat())
        assert trio.current_time() == 1.5  # Done 1.5 s after the first delta
        assert router._actors["a"].expected_latency(stream=True) == 0.0


def test_no_test_hook_in_the_actor_or_its_mailbox() -> None:
    """Supervision tests crash an actor's loop from tests/_crash.py: the actor has no
    inject_crash, and the mailbox's loop no crash callback."""
    assert not hasattr(ProviderActor, "inject_crash")
    assert list(inspect.signature(Mailbox.run).parameters) == ["self", "task_status"]
