"""Review of issue 14's actor call path: misuse of a call, and what a Timeout keeps.

Every test fails on main at eabb887 and passes after the fix it names.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from providers import ChatRequest, Message, Timeout
from router import open_router
from router._actor import ActorCall
from router.config import ProviderConfig, RetryConfig, RouterConfig
from router.testing import MockProvider


def chat(model: str = "a:m") -> ChatRequest:
    return ChatRequest(model=model, messages=[Message.user("one two three")])


class _Marker:
    """A local of the adapter's frame, watched through a weak reference."""


class Hanging(MockProvider):
    """An adapter whose calls (and stream openings) never end, each holding a
    :class:`_Marker` in a local for as long as its frame lives."""

    def __init__(self) -> None:
        super().__init__(name="a")
        self.markers: list[weakref.ref[_Marker]] = []

    async def _hang(self) -> None:
        marker = _Marker()
        self.markers.append(weakref.ref(marker))
        await trio.sleep_forever()

    async def complete(self, request: ChatRequest) -> Any:
        await self._hang()

    def stream(self, request: ChatRequest) -> Any:
        return self._stream()

    @asynccontextmanager
    async def _stream(self) -> AsyncIterator[Any]:
        await self._hang()
        yield  # pragma: no cover


@pytest.fixture
def no_gc() -> Iterator[None]:
    """Only reference counting frees objects during the test."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


async def _stream_through(actor: Any) -> None:
    async with actor.stream(chat()):
        pass  # pragma: no cover


@pytest.mark.parametrize("operation", ["complete", "stream"])
async def test_a_timed_out_call_keeps_none_of_its_frames_alive(
    operation: str, no_gc: None, autojump_clock: trio.testing.MockClock
) -> None:
    """The first-token limit's Timeout is raised in place of the limit's own Cancelled,
    which Python chains as its __context__: on main that Cancelled kept its traceback,
    so a Timeout someone holds kept every frame of the cut call (the adapter's locals)
    alive; now the adapter's frame is freed when the call ends, by reference counting."""
    provider = Hanging()
    config = RouterConfig(providers={"a": ProviderConfig(kind="mock", first_token_timeout=1.0)})
    async with open_router(config, providers={"a": provider}) as router:
        actor = router._actors["a"]
        with pytest.raises(Timeout) as info:
            if operation == "complete":
                await actor.complete(chat())
            else:
                await _stream_through(actor)
        error = info.value  # held, as an attempt's record holds it
        assert trio.current_time() == 1.0
        assert [m() for m in provider.markers] == [None]
        assert "within 1s" in str(error)


async def test_a_timeout_kept_by_a_failed_route_keeps_no_frame_of_the_adapter(
    no_gc: None, autojump_clock: trio.testing.MockClock
) -> None:
    """Through the router: the error of a request whose only attempt hit the
    first-token limit holds none of the adapter's frames (main: it did, via the
    swallowed Cancelled's traceback)."""
    provider = Hanging()
    config = RouterConfig(
        providers={
            "a": ProviderConfig(
                kind="mock", first_token_timeout=1.0, retry=RetryConfig(max_attempts=1)
            )
        }
    )
    async with open_router(config, providers={"a": provider}) as router:
        with pytest.raises(Timeout):
            await router.complete(chat())
        assert [m() for m in provider.markers] == [None]


async def test_a_stream_entered_twice_refuses_and_leaks_no_slot(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Entering one ``actor.stream(...)`` twice raises RuntimeError and admits nothing
    (main: the second entry took a second grant that no exit released: in_flight 1
    forever, a concurrency slot gone)."""
    config = RouterConfig(providers={"a": ProviderConfig(kind="mock", max_concurrency=1)})
    async with open_router(config, providers={"a": MockProvider(name="a")}) as router:
        actor = router._actors["a"]
        stream = actor.stream(chat())
        async with stream as events:
            _ = [event async for event in events]
        with pytest.raises(RuntimeError, match="entered once"):
            async with stream:
                pass  # pragma: no cover
        stats = actor.statistics()
        assert (stats.succeeded, stats.admitted, stats.in_flight) == (1, 1, 0)
        # The slot is there for the next call.
        with trio.fail_after(1):
            await actor.complete(chat())


async def test_an_actor_call_entered_twice_refuses_even_while_held(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An ActorCall entered again while its grant is held, or after its outcome, raises
    RuntimeError and leaves the counts as they were; the one grant is released once."""
    config = RouterConfig(providers={"a": ProviderConfig(kind="mock")})
    async with open_router(config, providers={"a": MockProvider(name="a")}) as router:
        actor = router._actors["a"]
        call = ActorCall(actor, chat(), None, False)
        async with call:
            with pytest.raises(RuntimeError, match="entered once"):
                await call.__aenter__()
            assert actor.mailbox.in_flight == 1
        with pytest.raises(RuntimeError, match="entered once"):
            await call.__aenter__()
        stats = actor.statistics()
        assert (stats.admitted, stats.in_flight, stats.cancelled) == (1, 0, 1)


async def test_a_stream_read_after_its_block_is_a_runtime_error_not_the_providers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Reading an actor stream after its ``async with`` block is the caller's mistake:
    RuntimeError, counts untouched (main: a ServerError saying "the provider adapter
    raised ClosedResourceError", blaming the provider)."""
    config = RouterConfig(providers={"a": ProviderConfig(kind="mock")})
    async with open_router(config, providers={"a": MockProvider(name="a")}) as router:
        actor = router._actors["a"]
        stream = actor.stream(chat())
        async with stream:
            pass
        with pytest.raises(RuntimeError, match="not open"):
            await stream.__anext__()
        stats = actor.statistics()
        assert (stats.succeeded, stats.failed, stats.cancelled, stats.in_flight) == (0, 0, 1, 0)
