"""Router events on virtual time: exact sequences, bounded buffers, and harmless observers.

Every test runs MockProvider targets under ``autojump_clock`` and reads the events a
subscription buffered (``receive_nowait`` after the requests), so each event's time is
an exact ``trio.current_time()``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from router import ChatRequest, Message, Router, TextDelta, open_router
from router.config import (
    BreakerConfig,
    BudgetConfig,
    HedgeConfig,
    ModelConfig,
    ProviderConfig,
    RetryConfig,
    RouteConfig,
    RouterConfig,
    SupervisorConfig,
)
from router.errors import BudgetExceeded, LLMError, RouterClosed, ServerError
from router.events import (
    ActorCrashed,
    ActorRestarted,
    AttemptAdmitted,
    AttemptFinished,
    AttemptStarted,
    BreakerChanged,
    BudgetRefused,
    FallbackLaunched,
    HealthChanged,
    HedgeLaunched,
    RequestFinished,
    RequestStarted,
    RetryScheduled,
    RouterEvent,
    Subscription,
)
from router.stats import SubscriptionStatistics
from router.testing import MockProvider, MockResponse
from tests._crash import crash_actor

NO_RETRY = RetryConfig(max_attempts=1)


# --------------------------------------------------------------------------- helpers


def chat(model: str = "r", text: str = "hi", **kw: Any) -> ChatRequest:
    """A one-message request with a small output budget."""
    kw.setdefault("max_tokens", 16)
    return ChatRequest(model=model, messages=[Message.user(text)], **kw)


def drain(subscription: Subscription) -> list[RouterEvent]:
    """Every event buffered in ``subscription`` now."""
    events: list[RouterEvent] = []
    while True:
        try:
            events.append(subscription.receive_nowait())
        except trio.WouldBlock:
            return events


def brief(event: RouterEvent) -> tuple[Any, ...]:
    """(time, type, the fields that tell what happened) of one event."""
    name = type(event).__name__
    match event:
        case RequestStarted(model=m):
            return (event.time, name, m)
        case AttemptStarted(provider=p, kind=k, number=n):
            return (event.time, name, p, k, n)
        case AttemptAdmitted(provider=p, number=n, retry=r, waited=w):
            return (event.time, name, p, n, r, w)
        case AttemptFinished(provider=p, outcome=o, error_type=e, reason=r):
            return (event.time, name, p, o, e if o == "failed" else r)
        case HedgeLaunched(provider=p, previous=prev, delay=d):
            return (event.time, name, p, prev, d)
        case FallbackLaunched(provider=p, failed=f, error_type=e):
            return (event.time, name, p, f, e)
        case RetryScheduled(provider=p, error_type=e, retry=n, delay=d):
            return (event.time, name, p, e, n, d)
        case BudgetRefused(provider=p, scope=s):
            return (event.time, name, p, s)
        case RequestFinished(outcome=o, provider=p, error_type=e):
            return (event.time, name, o, p, e)
        case BreakerChanged(provider=p, old=old, new=new):
            return (event.time, name, p, old, new)
        case HealthChanged(provider=p, status=s):
            return (event.time, name, p, s)
        case ActorCrashed(provider=p, error_type=e, crashes=c, restart_in=d):
            return (event.time, name, p, e, c, d)
        case ActorRestarted(provider=p, restarts=n):
            return (event.time, name, p, n)
    raise AssertionError(f"unexpected event {event!r}")  # pragma: no cover


def mock_config(names: Sequence[str], **kw: Any) -> dict[str, ProviderConfig]:
    """Mock provider configs, one per name, built with ``kw``."""
    return {name: ProviderConfig(kind="mock", **kw) for name in names}


@asynccontextmanager
async def routed(
    targets: dict[str, MockProvider],
    *,
    hedge: HedgeConfig | None = None,
    seed: int = 7,
    **config: Any,
) -> AsyncIterator[Router]:
    """A router with route "r" over ``targets`` (no retries unless ``config`` says)."""
    providers = config.pop("providers", None) or mock_config(targets, retry=NO_RETRY)
    cfg = RouterConfig(
        providers=providers,
        routes={"r": RouteConfig(targets=[f"{n}:m" for n in targets], hedge=hedge)},
        **config,
    )
    async with open_router(cfg, providers=targets, seed=seed) as router:
        yield router


# --------------------------------------------------------------------------- sequences


async def test_hedged_request_events_in_order_at_exact_times(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A hedge at 0.5 s wins at 1.5 s: start, admission, hedge, win, the loser's cancel,
    finish."""
    targets = {
        "slow": MockProvider(name="slow", latency=10.0),
        "fast": MockProvider(name="fast", latency=1.0),
    }
    async with (
        routed(targets, hedge=HedgeConfig(max_attempts=2, delay=0.5)) as router,
        router.subscribe() as events,
    ):
        response = await router.complete(chat())
        got = drain(events)
    assert [brief(e) for e in got] == [
        (0.0, "RequestStarted", "r"),
        (0.0, "AttemptStarted", "slow", "primary", 1),
        (0.0, "AttemptAdmitted", "slow", 1, 0, 0.0),
        (0.5, "HedgeLaunched", "fast", "slow", 0.5),
        (0.5, "AttemptStarted", "fast", "hedge", 2),
        (0.5, "AttemptAdmitted", "fast", 2, 0, 0.0),
        (1.5, "AttemptFinished", "fast", "won", None),
        (1.5, "AttemptFinished", "slow", "cancelled", "lost the race to fast"),
        (1.5, "RequestFinished", "succeeded", "fast", None),
    ]
    finished = got[-1]
    assert isinstance(finished, RequestFinished)
    assert finished.attempts == response.attempts
    assert finished.response == response
    assert (finished.latency, finished.provider_model, finished.usage) == (
        1.5,
        "m",
        response.usage,
    )
    assert len({e.request_id for e in got if not isinstance(e, HealthChanged)}) == 1


async def test_fallback_events_name_the_failed_target_and_its_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """a fails at 1 s, b takes over at once and answers at 3 s; a's health turns degraded."""
    targets = {
        "a": MockProvider(name="a", default=MockResponse(error=ServerError("boom"), latency=1.0)),
        "b": MockProvider(name="b", latency=2.0),
    }
    async with routed(targets) as router, router.subscribe() as events:
        await router.complete(chat())
        got = drain(events)
    assert [brief(e) for e in got] == [
        (0.0, "RequestStarted", "r"),
        (0.0, "AttemptStarted", "a", "primary", 1),
        (0.0, "AttemptAdmitted", "a", 1, 0, 0.0),
        (1.0, "HealthChanged", "a", "degraded"),
        (1.0, "AttemptFinished", "a", "failed", "ServerError"),
        (1.0, "FallbackLaunched", "b", "a", "ServerError"),
        (1.0, "AttemptStarted", "b", "fallback", 2),
        (1.0, "AttemptAdmitted", "b", 2, 0, 0.0),
        (3.0, "AttemptFinished", "b", "won", None),
        (3.0, "RequestFinished", "succeeded", "b", None),
    ]


async def test_retry_events_before_the_target_succeeds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A retryable error on the only target schedules a retry; the event says when and why."""
    a = MockProvider(
        name="a",
        responses=[MockResponse(error=ServerError("once"), latency=1.0), MockResponse(text="ok")],
    )
    retry = RetryConfig(max_attempts=2, initial_backoff=0.5, max_backoff=0.5)
    async with (
        routed({"a": a}, providers=mock_config(["a"], retry=retry)) as router,
        router.subscribe(types=(RetryScheduled, AttemptFinished)) as events,
    ):
        await router.complete(chat())
        got = drain(events)
    (scheduled, finished) = got
    assert isinstance(scheduled, RetryScheduled)
    assert (scheduled.time, scheduled.provider, scheduled.error_type, scheduled.retry) == (
        1.0,
        "a",
        "ServerError",
        1,
    )
    assert 0.0 <= scheduled.delay <= 0.5
    assert isinstance(finished, AttemptFinished)
    assert (finished.outcome, finished.retries, finished.time) == ("won", 1, 1.0 + scheduled.delay)


async def test_admission_events_carry_the_grant_time_and_the_wait(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """rpm 60 with a burst of 2, four requests at t=0: two admitted at once, the others
    when the bucket refills (t=1, t=2); each AttemptAdmitted's time is its grant and
    ``waited`` the seconds it queued, and it comes after its AttemptStarted."""
    a = MockProvider(name="a", latency=0.5)
    providers = mock_config(["a"], retry=NO_RETRY, rpm=60, rpm_burst=2)
    async with routed({"a": a}, providers=providers) as router, router.subscribe() as events:
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(router.complete, chat())
        got = drain(events)
    admitted = [e for e in got if isinstance(e, AttemptAdmitted)]
    assert sorted((e.time, e.waited, e.retry, e.number) for e in admitted) == [
        (0.0, 0.0, 0, 1),
        (0.0, 0.0, 0, 1),
        (1.0, 1.0, 0, 1),
        (2.0, 2.0, 0, 1),
    ]
    for e in admitted:
        started = [s for s in got if isinstance(s, AttemptStarted)]
        mine = [s for s in started if s.request_id == e.request_id]
        assert len(mine) == 1
        assert got.index(mine[0]) < got.index(e)
        assert (e.provider, e.provider_model, e.kind, e.model) == ("a", "m", "primary", "r")
    # Sent when admitted: the provider saw each call start at its grant.
    assert sorted(c.started_at for c in a.calls) == [0.0, 0.0, 1.0, 2.0]


async def test_each_retry_is_admitted_again_with_its_number(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A retry takes a new grant: one AttemptAdmitted per try, ``retry`` 0 then 1, the
    second at the end of the backoff the RetryScheduled event announced."""
    a = MockProvider(
        name="a",
        responses=[MockResponse(error=ServerError("once"), latency=1.0), MockResponse(text="ok")],
    )
    retry = RetryConfig(max_attempts=2, initial_backoff=0.5, max_backoff=0.5)
    async with (
        routed({"a": a}, providers=mock_config(["a"], retry=retry)) as router,
        router.subscribe(types=(AttemptAdmitted, RetryScheduled)) as events,
    ):
        await router.complete(chat())
        got = drain(events)
    first, scheduled, second = got
    assert isinstance(first, AttemptAdmitted)
    assert isinstance(second, AttemptAdmitted)
    assert isinstance(scheduled, RetryScheduled)
    assert (first.time, first.retry, first.waited) == (0.0, 0, 0.0)
    assert (second.time, second.retry, second.waited) == (1.0 + scheduled.delay, 1, 0.0)
    assert first.number == second.number == 1


async def test_breaker_trip_and_half_open_events_at_their_times(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Two failures trip the breaker at 2 s; it turns half-open at 7 s, when health says so."""
    failing = MockProvider(name="a", default=MockResponse(error=ServerError("down"), latency=1.0))
    breaker = BreakerConfig(minimum_calls=2, open_duration=5.0)
    providers = mock_config(["a"], retry=NO_RETRY, breaker=breaker)
    async with (
        routed({"a": failing}, providers=providers) as router,
        router.subscribe(types=(BreakerChanged, HealthChanged)) as events,
    ):
        for _ in range(2):
            with pytest.raises(ServerError):
                await router.complete(chat())
        await router.health_value("a").wait_value(lambda h: h.status != "unhealthy")
        got = drain(events)
    assert [brief(e) for e in got] == [
        (1.0, "HealthChanged", "a", "degraded"),
        (2.0, "BreakerChanged", "a", "closed", "open"),
        (2.0, "HealthChanged", "a", "unhealthy"),
        (7.0, "BreakerChanged", "a", "open", "half_open"),
        (7.0, "HealthChanged", "a", "degraded"),
    ]


async def test_actor_crash_and_restart_events(autojump_clock: trio.testing.MockClock) -> None:
    """A crashed actor loop: ActorCrashed at once (restart in 0.1 s), ActorRestarted at 0.1 s."""
    async with (
        routed({"a": MockProvider(name="a")}) as router,
        router.subscribe(types=(ActorCrashed, ActorRestarted)) as events,
    ):
        await trio.sleep(1.0)
        crash_actor(router._actors["a"], RuntimeError("boom"))
        await trio.sleep(1.0)
        got = drain(events)
    assert [brief(e) for e in got] == [
        (1.0, "ActorCrashed", "a", "RuntimeError", 1, 0.1),
        (1.1, "ActorRestarted", "a", 1),
    ]
    crashed = got[0]
    assert isinstance(crashed, ActorCrashed)
    assert crashed.error == "boom"


async def test_actor_given_up_on_after_too_many_crashes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Past ``max_restarts``, ActorCrashed says no restart is coming (``restart_in`` None)."""
    config = {"supervisor": SupervisorConfig(max_restarts=0)}
    async with (
        routed({"a": MockProvider(name="a")}, **config) as router,
        router.subscribe(types=(ActorCrashed, ActorRestarted, HealthChanged)) as events,
    ):
        crash_actor(router._actors["a"], RuntimeError("boom"))
        await trio.sleep(1.0)
        got = drain(events)
    assert [brief(e) for e in got] == [
        (0.0, "ActorCrashed", "a", "RuntimeError", 1, None),
        (0.0, "HealthChanged", "a", "unhealthy"),
    ]


async def test_budget_refusals_of_a_request_and_of_one_target(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A router cap refuses the request before any attempt; a provider cap refuses a
    target, and the request falls back to the next."""
    prices = {"a:m": ModelConfig(input_price=1.0, output_price=2.0)}
    refused_router = RouterConfig(
        providers=mock_config(["a"]),
        routes={"r": RouteConfig(targets=["a:m"])},
        models=prices,
        budget=BudgetConfig(limit=1e-6),
    )
    async with (
        open_router(refused_router, providers={"a": MockProvider(name="a")}) as router,
        router.subscribe() as events,
    ):
        with pytest.raises(BudgetExceeded):
            await router.complete(chat())
        got = drain(events)
    assert [brief(e) for e in got] == [
        (0.0, "RequestStarted", "r"),
        (0.0, "BudgetRefused", None, "router"),
        (0.0, "RequestFinished", "failed", None, "BudgetExceeded"),
    ]

    # The cheapest target fits the router's cap, so the request is taken; the plan's
    # first target does not, so its reservation is refused and the route moves on.
    refused_target = RouterConfig(
        providers=mock_config(["a", "b"]),
        routes={"r": RouteConfig(targets=["a:m", "b:m"])},
        models={
            "a:m": ModelConfig(input_price=100.0, output_price=100.0),
            "b:m": ModelConfig(input_price=1.0, output_price=1.0),
        },
        budget=BudgetConfig(limit=0.001),
    )
    mocks = {"a": MockProvider(name="a"), "b": MockProvider(name="b", latency=1.0)}
    async with (
        open_router(refused_target, providers=mocks) as router,
        router.subscribe() as events,
    ):
        response = await router.complete(chat())
        got = drain(events)
    assert response.provider == "b"
    assert [brief(e) for e in got] == [
        (0.0, "RequestStarted", "r"),
        (0.0, "AttemptStarted", "a", "primary", 1),
        (0.0, "BudgetRefused", "a", "router"),
        (0.0, "AttemptFinished", "a", "failed", "BudgetExceeded"),
        (0.0, "FallbackLaunched", "b", "a", "BudgetExceeded"),
        (0.0, "AttemptStarted", "b", "fallback", 2),
        (0.0, "AttemptAdmitted", "b", 2, 0, 0.0),
        (1.0, "AttemptFinished", "b", "won", None),
        (1.0, "RequestFinished", "succeeded", "b", None),
    ]


async def test_a_request_that_fails_everywhere_finishes_failed_with_its_trace(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """AllProvidersFailed: RequestFinished says failed, with the error and every attempt."""
    error = MockResponse(error=ServerError("down"), latency=1.0)
    targets = {
        "a": MockProvider(name="a", default=error),
        "b": MockProvider(name="b", default=error),
    }
    async with routed(targets) as router, router.subscribe(types=(RequestFinished,)) as events:
        with pytest.raises(LLMError) as info:
            await router.complete(chat())
        (finished,) = drain(events)
    assert isinstance(finished, RequestFinished)
    assert (finished.outcome, finished.error_type, finished.time) == (
        "failed",
        "AllProvidersFailed",
        2.0,
    )
    assert finished.error == str(info.value)
    assert tuple(finished.attempts) == info.value.attempts


async def test_cancelled_request_finishes_cancelled(autojump_clock: trio.testing.MockClock) -> None:
    """A caller's deadline cancels the request: RequestFinished says cancelled, no error."""
    async with (
        routed({"a": MockProvider(name="a", latency=10.0)}) as router,
        router.subscribe(types=(AttemptFinished, RequestFinished)) as events,
    ):
        with trio.move_on_after(2.0):
            await router.complete(chat())
        got = drain(events)
    assert [brief(e) for e in got] == [
        (2.0, "AttemptFinished", "a", "cancelled", "the caller was cancelled"),
        (2.0, "RequestFinished", "cancelled", None, None),
    ]


async def test_stream_finishes_when_its_block_exits_with_ttft_and_usage(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A stream read to its end finishes at its Done; one left early is cancelled, with the
    text it had delivered."""
    a = MockProvider(
        name="a", default=MockResponse(text="one two three", latency=1.0, chunk_latency=0.5)
    )
    async with (
        routed({"a": a}) as router,
        router.subscribe(types=(RequestFinished,)) as events,
    ):
        async with router.stream(chat()) as stream:
            async for _ in stream:
                pass
        async with router.stream(chat()) as stream:
            async for event in stream:
                if isinstance(event, TextDelta):
                    break
        done, left = drain(events)
    assert isinstance(done, RequestFinished)
    assert isinstance(left, RequestFinished)
    assert (done.outcome, done.ttft, done.latency, done.stream) == ("succeeded", 1.0, 2.5, True)
    assert done.request_id == stream.request_id.replace("-2", "-1")
    assert done.response is not None
    assert done.usage == done.response.usage
    assert done.response.text == "one two three"
    assert (left.outcome, left.ttft, left.streamed_text, left.response) == (
        "cancelled",
        1.0,
        "one",
        None,
    )
    assert left.request_id == stream.request_id


async def test_a_request_id_given_in_metadata_is_the_requests_id(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``metadata={"request_id": ...}`` names the request in its events."""
    async with routed({"a": MockProvider(name="a")}) as router, router.subscribe() as events:
        await router.complete(chat(metadata={"request_id": "order-42"}))
        got = drain(events)
    assert {e.request_id for e in got if hasattr(e, "request_id")} == {"order-42"}


async def test_request_ids_are_reproducible_for_a_seed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With a seed, request ids are ``<8 hex digits>-<n>``, the same in every run."""
    ids: list[list[str]] = []
    for _ in range(2):
        async with (
            routed({"a": MockProvider(name="a")}, seed=3) as router,
            router.subscribe(types=(RequestStarted,)) as events,
        ):
            for _ in range(2):
                await router.complete(chat())
            ids.append([e.request_id for e in drain(events)])  # type: ignore[union-attr]
    assert ids[0] == ids[1]
    prefix = ids[0][0].partition("-")[0]
    assert ids[0] == [f"{prefix}-1", f"{prefix}-2"]
    assert len(prefix) == 8


# --------------------------------------------------------------------------- buffers


async def test_a_full_buffer_drops_events_and_counts_them(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Buffer 3, three requests of 5 events each, nobody reading: 12 dropped, counted twice."""
    async with (
        routed({"a": MockProvider(name="a", latency=1.0)}) as router,
        router.subscribe(buffer=3) as events,
    ):
        for _ in range(3):
            await router.complete(chat())
        kept = drain(events)
        stats = router.statistics()
    assert [type(e).__name__ for e in kept] == [
        "RequestStarted",
        "AttemptStarted",
        "AttemptAdmitted",
    ]
    assert (events.received, events.dropped) == (3, 12)
    assert (stats.events_emitted, stats.events_dropped, stats.subscribers) == (15, 12, 1)


async def test_no_listener_no_events(autojump_clock: trio.testing.MockClock) -> None:
    """Without listeners nothing is built; a closed subscription stops receiving."""
    async with routed({"a": MockProvider(name="a")}) as router:
        await router.complete(chat())
        assert router.statistics().events_emitted == 0
        async with router.subscribe() as events:
            await router.complete(chat())
        emitted = router.statistics().events_emitted
        await router.complete(chat())
        stats = router.statistics()
    with pytest.raises(trio.ClosedResourceError):
        events.receive_nowait()  # the block exited: its buffer is gone
    assert emitted == 5
    assert (stats.events_emitted, stats.subscribers) == (5, 0)


async def test_iteration_ends_when_the_router_closes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A subscriber's ``async for`` ends when the router's block exits."""
    seen: list[str] = []

    async def watch(router: Router, task_status: trio.TaskStatus[None]) -> None:
        async with router.subscribe() as events:
            task_status.started()
            async for event in events:
                seen.append(type(event).__name__)
        seen.append("ended")

    async with trio.open_nursery() as nursery, routed({"a": MockProvider(name="a")}) as router:
        await nursery.start(watch, router)
        await router.complete(chat())
    assert seen == [
        "RequestStarted",
        "AttemptStarted",
        "AttemptAdmitted",
        "AttemptFinished",
        "RequestFinished",
        "ended",
    ]


async def test_subscribing_to_a_closed_router_is_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """After the router's block exits, ``subscribe`` raises RouterClosed like every call."""
    async with routed({"a": MockProvider(name="a")}) as router:
        pass
    with pytest.raises(RouterClosed):
        router.subscribe()


def test_buffer_must_be_a_size() -> None:
    """``buffer`` is an int >= 0 or math.inf."""
    from router._events import EventHub

    for bad in (-1, 1.5, "10"):
        with pytest.raises(ValueError, match="buffer"):
            Subscription(EventHub(), bad, None)  # type: ignore[arg-type]
    assert Subscription(EventHub(), math.inf, None).buffer == math.inf


# --------------------------------------------------------------------------- a ReceiveChannel


async def test_subscription_is_a_trio_receive_channel(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``receive()`` waits for the next event and wakes at its exact time; ``receive_nowait``
    raises WouldBlock on an empty buffer; ``statistics()`` is a frozen snapshot."""
    got: list[tuple[float, float, str]] = []

    async def reader(events: Subscription, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        for _ in range(2):
            event = await events.receive()
            got.append((trio.current_time(), event.time, type(event).__name__))

    async with (
        routed({"a": MockProvider(name="a", latency=1.0)}) as router,
        router.subscribe(types=(RequestStarted, RequestFinished)) as events,
        trio.open_nursery() as nursery,
    ):
        assert isinstance(events, trio.abc.ReceiveChannel)
        with pytest.raises(trio.WouldBlock):
            events.receive_nowait()
        await nursery.start(reader, events)
        assert events.statistics() == SubscriptionStatistics(
            buffer=1000, buffered=0, received=0, dropped=0, tasks_waiting=1, closed=False
        )
        await trio.sleep(0.5)
        await router.complete(chat())
    assert got == [(0.5, 0.5, "RequestStarted"), (1.5, 1.5, "RequestFinished")]
    assert events.statistics() == SubscriptionStatistics(
        buffer=1000, buffered=0, received=2, dropped=0, tasks_waiting=0, closed=True
    )


async def test_closing_a_subscription_wakes_its_reader_and_stops_delivery(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``aclose()`` from another task raises ClosedResourceError in a blocked ``receive``;
    afterwards every receive raises it and the router builds no more events for it."""
    outcome: list[str] = []

    async def reader(events: Subscription) -> None:
        try:
            await events.receive()
        except trio.ClosedResourceError:
            outcome.append(f"closed at {trio.current_time()}")

    async with routed({"a": MockProvider(name="a")}) as router:
        events = router.subscribe(types=(BreakerChanged,))  # usable without `async with`
        assert router.statistics().subscribers == 1
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader, events)
            await trio.sleep(2.0)
            await events.aclose()
        await router.complete(chat())
        stats = router.statistics()
        events.close()  # idempotent
    assert outcome == ["closed at 2.0"]
    assert (stats.subscribers, stats.events_emitted) == (0, 0)
    with pytest.raises(trio.ClosedResourceError):
        await events.receive()
    with pytest.raises(trio.ClosedResourceError):
        events.receive_nowait()
    with pytest.raises(trio.ClosedResourceError):
        async for _ in events:
            pass  # pragma: no cover


async def test_the_router_closing_ends_the_channel_after_the_buffered_events(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Events buffered before the router closed are still received, then EndOfChannel."""
    async with routed({"a": MockProvider(name="a")}) as router:
        events = router.subscribe(types=(RequestStarted,))
        await router.complete(chat())
        await router.complete(chat())
    assert events.statistics().closed
    assert [type(await events.receive()).__name__ for _ in range(2)] == ["RequestStarted"] * 2
    with pytest.raises(trio.EndOfChannel):
        await events.receive()
    with pytest.raises(trio.EndOfChannel):
        events.receive_nowait()
    assert [e async for e in events] == []
    await events.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await events.receive()


@given(
    buffer=st.integers(min_value=0, max_value=5),
    steps=st.lists(st.sampled_from(["emit", "emit", "receive"]), max_size=40),
)
def test_a_subscription_keeps_order_and_counts_every_event(buffer: int, steps: list[str]) -> None:
    """Invariant: events come out in the order they were kept; every emitted event is
    either received into the buffer or dropped (counted), and the buffer never exceeds
    its size."""
    from router._events import EventHub

    hub = EventHub()
    subscription = Subscription(hub, buffer, None)
    emitted = 0
    taken: list[float] = []
    for step in steps:
        if step == "emit":
            hub.emit(ActorRestarted(time=float(emitted), provider="p", restarts=emitted))
            emitted += 1
        else:
            try:
                taken.append(subscription.receive_nowait().time)
            except trio.WouldBlock:
                pass
        stats = subscription.statistics()
        assert stats.received + stats.dropped == emitted == hub.emitted
        assert stats.buffered == stats.received - len(taken) <= buffer
    assert taken == sorted(taken)
    assert hub.dropped == subscription.dropped


# --------------------------------------------------------------------------- bad observers

WORKLOAD_LATENCIES = [0.3, 2.0, 0.7, 5.0, 1.1, 0.2, 3.3, 0.9]


async def workload(router: Router) -> list[tuple[float, str, str]]:
    """Eight requests started 0.25 s apart on a hedged route with a failing target;
    (seconds to answer, provider, text) of each, in order."""
    results: list[tuple[float, str, str]] = [(0.0, "", "")] * len(WORKLOAD_LATENCIES)

    async def one(i: int) -> None:
        start = trio.current_time()
        try:
            response = await router.complete(chat(text=f"q{i}"))
        except LLMError as exc:
            results[i] = (trio.current_time() - start, "error", type(exc).__name__)
        else:
            results[i] = (trio.current_time() - start, response.provider, response.text)

    async with trio.open_nursery() as nursery:
        for i in range(len(WORKLOAD_LATENCIES)):
            nursery.start_soon(one, i)
            await trio.sleep(0.25)
    return results


def workload_targets() -> dict[str, MockProvider]:
    """A flaky primary (every third answer fails), a scripted secondary, a steady third."""
    flaky = MockProvider(
        name="a",
        responses=[
            MockResponse(text=f"a{i}", latency=lat, error=ServerError("x") if i % 3 == 0 else None)
            for i, lat in enumerate(WORKLOAD_LATENCIES)
        ],
    )
    return {
        "a": flaky,
        "b": MockProvider(name="b", latency=1.0),
        "c": MockProvider(name="c", latency=4.0),
    }


async def _observed_workload(bad: bool) -> tuple[list[tuple[float, str, str]], Any]:
    """The workload on a fresh router (from t=0), with or without the bad observers."""
    hedge = HedgeConfig(max_attempts=3, delay=1.5, budget_burst=10.0)
    calls = 0

    def raising(event: RouterEvent) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("listener bug")

    async def raising_subscriber(router: Router, task_status: trio.TaskStatus[None]) -> None:
        try:
            async with router.subscribe(buffer=10) as events:
                task_status.started()
                async for _ in events:
                    raise RuntimeError("subscriber bug")
        except RuntimeError:
            pass

    async def stuck_subscriber(router: Router, task_status: trio.TaskStatus[None]) -> None:
        async with router.subscribe(buffer=1) as events:
            task_status.started()
            async for _ in events:
                await trio.sleep_forever()

    async with routed(workload_targets(), hedge=hedge) as router:
        if not bad:
            return await workload(router), router.statistics()
        async with trio.open_nursery() as nursery:
            router.add_listener(raising)
            await nursery.start(raising_subscriber, router)
            await nursery.start(stuck_subscriber, router)
            results = await workload(router)
            stats = router.statistics()
            nursery.cancel_scope.cancel()
        assert stats.listener_errors == calls
        return results, stats


def test_bad_subscribers_and_listeners_change_no_result_and_no_time(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With a subscriber that raises, one that blocks forever and a listener that raises,
    every answer and every completion time is exactly what it is without them."""
    clock = trio.testing.MockClock
    clean, _ = trio.run(_observed_workload, False, clock=clock(autojump_threshold=0))
    watched, stats = trio.run(_observed_workload, True, clock=clock(autojump_threshold=0))
    assert watched == clean  # exact floats: the bound on the difference is zero
    assert {provider for _, provider, _ in clean} >= {"a", "b"}  # fallbacks and hedges ran
    assert stats.listener_errors == stats.events_emitted > 0
    # The raising subscriber's block exited at its first event; the stuck one took the
    # first, holds the second in its buffer of one, and dropped every other.
    assert stats.events_dropped == stats.events_emitted - 2
    logged = [r for r in caplog.records if "listener" in r.getMessage()]
    assert len(logged) == 1
    assert logged[0].levelno == logging.ERROR


async def test_listeners_can_be_removed_even_by_themselves(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A listener that removes itself sees exactly the event it did so in."""
    seen: list[str] = []
    async with routed({"a": MockProvider(name="a")}) as router:

        def once(event: RouterEvent) -> None:
            seen.append(type(event).__name__)
            router.remove_listener(once)

        router.add_listener(once)
        await router.complete(chat())
        router.remove_listener(once)  # not registered any more: ignored
    assert seen == ["RequestStarted"]


# --------------------------------------------------------------------------- encoding


async def test_every_event_round_trips_through_json(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Events encode to JSON and decode back equal as the RouterEvent union."""
    seen: list[RouterEvent] = []
    hedge = HedgeConfig(max_attempts=3, delay=1.5)
    async with routed(workload_targets(), hedge=hedge) as router:
        router.add_listener(seen.append)
        await workload(router)
        crash_actor(router._actors["c"], RuntimeError("boom"))
        await trio.sleep(1.0)
    types = {type(e) for e in seen}
    assert {RequestFinished, HedgeLaunched, FallbackLaunched, ActorCrashed} <= types
    decoder = msgspec.json.Decoder(RouterEvent)
    for event in seen:
        data = msgspec.json.encode(event)
        assert decoder.decode(data) == event
        assert msgspec.json.decode(data)["type"] == _snake(type(event).__name__)


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")


# --------------------------------------------------------------------------- logging


async def test_log_lines_carry_structured_fields_at_their_levels(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Fallback INFO, hedge DEBUG, breaker open WARNING, each with provider (and request id)."""
    caplog.set_level(logging.DEBUG, logger="trio_llm_router")
    error = MockResponse(error=ServerError("down"), latency=1.0)
    breaker = BreakerConfig(minimum_calls=1, open_duration=5.0)
    targets = {
        "a": MockProvider(name="a", default=error),
        "b": MockProvider(name="b", latency=3.0),
        "c": MockProvider(name="c", latency=1.0),
    }
    providers = mock_config(targets, retry=NO_RETRY, breaker=breaker)
    async with (
        routed(
            targets, providers=providers, hedge=HedgeConfig(max_attempts=3, delay=2.0)
        ) as router,
        router.subscribe(types=(RequestStarted,)) as events,
    ):
        await router.complete(chat())
        (started,) = drain(events)
    assert isinstance(started, RequestStarted)
    lines = {
        (r.levelno, r.getMessage().partition(":")[0]): r
        for r in caplog.records
        if r.name == "trio_llm_router"
    }
    fallback = lines[(logging.INFO, f"request {started.request_id}")]
    assert "falling back to b, a failed (ServerError)" in fallback.getMessage()
    assert (fallback.request_id, fallback.provider) == (started.request_id, "b")  # type: ignore[attr-defined]
    hedge = lines[(logging.DEBUG, f"request {started.request_id}")]
    assert "hedging on c" in hedge.getMessage()
    breaker_open = lines[(logging.WARNING, "provider a")]
    assert breaker_open.getMessage() == "provider a: circuit breaker closed -> open"
    assert breaker_open.provider == "a"  # type: ignore[attr-defined]
