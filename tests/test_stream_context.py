"""``router.stream(request)``: used wrongly it says how to use it; used rightly nothing changed.

Each test runs on virtual time over MockProvider targets, with exact times.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from router import ChatRequest, Done, Message, Router, TextDelta, open_router
from router.config import ProviderConfig, RetryConfig, RouteConfig, RouterConfig
from router.events import RequestFinished
from router.testing import MockProvider, MockResponse

USAGE = "async with router.stream(request) as events:\n        async for event in events:"


def chat(text: str = "one two three") -> ChatRequest:
    """A one-message request on route "r"."""
    return ChatRequest(model="r", messages=[Message.user(text)], max_tokens=16)


@asynccontextmanager
async def routed(mock: MockProvider) -> AsyncIterator[Router]:
    """A router whose route "r" goes to ``mock`` alone (no retries)."""
    config = RouterConfig(
        providers={"a": ProviderConfig(kind="mock", retry=RetryConfig(max_attempts=1))},
        routes={"r": RouteConfig(targets=["a:m"])},
    )
    async with open_router(config, providers={"a": mock}) as router:
        yield router


async def test_async_for_on_the_context_manager_says_to_use_async_with(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``async for`` straight on ``router.stream(...)`` is a TypeError showing the right
    code, raised before any request is made."""
    mock = MockProvider(name="a")
    async with routed(mock) as router:
        with pytest.raises(TypeError, match="is not an async iterator") as info:
            async for _ in router.stream(chat()):  # type: ignore[attr-defined]
                pass  # pragma: no cover
        stats = router.statistics()
    assert USAGE in str(info.value)
    assert (mock.calls, stats.requests) == ([], 0)


async def test_await_on_the_context_manager_says_to_use_async_with(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``await router.stream(...)`` is a TypeError showing the right code; nothing is sent."""
    mock = MockProvider(name="a")
    async with routed(mock) as router:
        with pytest.raises(TypeError, match="cannot be awaited") as info:
            await router.stream(chat())  # type: ignore[misc]
        stats = router.statistics()
    assert USAGE in str(info.value)
    assert (mock.calls, stats.requests) == ([], 0)
    assert "async with" in repr(router.stream(chat()))


async def test_a_stream_context_is_entered_once(autojump_clock: trio.testing.MockClock) -> None:
    """Entering the same ``router.stream(...)`` object twice is a RuntimeError, not a
    second request."""
    mock = MockProvider(name="a")
    async with routed(mock) as router:
        opener = router.stream(chat())
        async with opener as events:
            assert [type(e).__name__ async for e in events][-1] == "Done"
        with pytest.raises(RuntimeError, match="entered once"):
            async with opener:
                pass  # pragma: no cover
    assert len(mock.calls) == 1


async def test_streaming_to_the_end_and_leaving_early_keep_their_timing_and_outcomes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Read to Done: three deltas at 1.0, 1.5, 2.0 and a succeeded request; cancelled
    after the first delta: the call is cancelled 1.2 s in and the request reported so."""
    reply = MockResponse(text="one two three", latency=1.0, chunk_latency=0.5)
    mock = MockProvider(name="a", default=reply)
    finished: list[RequestFinished] = []
    async with routed(mock) as router:
        router.add_listener(
            lambda e: finished.append(e) if isinstance(e, RequestFinished) else None
        )
        seen: list[tuple[float, str]] = []
        async with router.stream(chat()) as events:
            async for event in events:
                if isinstance(event, TextDelta):
                    seen.append((trio.current_time(), event.text))
                elif isinstance(event, Done):
                    assert events.response is not None
                    assert events.response.text == "one two three"
        assert seen == [(1.0, "one"), (1.5, " two"), (2.0, " three")]
        start = trio.current_time()
        with trio.move_on_after(1.2):
            async with router.stream(chat()) as events:
                async for _ in events:
                    pass
    assert (mock.calls[1].outcome, mock.calls[1].ended_at) == ("cancelled", start + 1.2)
    assert [(f.outcome, f.latency) for f in finished] == [
        ("succeeded", 2.5),  # the usage trailer and Done come one chunk_latency after
        ("cancelled", (start + 1.2) - start),
    ]


async def test_an_error_in_the_block_passes_through_unchanged(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The caller's own exception leaves the block as the same object, the provider's
    stream is closed, and the request is reported as failed with that error."""
    mock = MockProvider(name="a", default=MockResponse(text="a b c", chunk_latency=1.0))
    finished: list[RequestFinished] = []
    boom = ValueError("caller bug")
    async with routed(mock) as router:
        router.add_listener(
            lambda e: finished.append(e) if isinstance(e, RequestFinished) else None
        )
        with pytest.raises(ValueError) as info:
            async with router.stream(chat()) as events:
                async for _ in events:
                    raise boom
    assert info.value is boom
    assert (mock.calls[0].outcome, mock.calls[0].ended_at) == ("cancelled", 0.0)
    assert [(f.outcome, f.error_type) for f in finished] == [("failed", "ValueError")]
