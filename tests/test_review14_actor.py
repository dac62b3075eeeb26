"""Review of issue 14's actor call path (misuse of a call, what a Timeout keeps) and
config validation (integers beyond 64 bits, StrEnum choices).

Every test fails on main at eabb887 and passes after the fix it names.
"""

from __future__ import annotations

import enum
import gc
import weakref
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from providers import ChatRequest, ConfigError, Message, ServerError, Timeout, Usage
from router import open_router
from router._actor import ActorCall
from router._config import decode_config, validate_config
from router.config import (
    BudgetConfig,
    ModelConfig,
    ProviderConfig,
    RetryConfig,
    RouterConfig,
)
from router.testing import MockProvider, MockResponse


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


# --------------------------------------------------------------------------- config


_INT64_MAX = 2**63 - 1


@given(rpm=st.integers(min_value=-(2**600), max_value=2**600))
@settings(max_examples=200, deadline=None)
def test_an_int_field_takes_64_bit_integers_and_names_any_other(rpm: int) -> None:
    """Invariant: for any integer ``rpm`` in TOML, decoding either succeeds (a positive
    64-bit one) or raises ConfigError at ``$.providers.a.rpm`` — never another exception
    (main: an rpm beyond 64 bits decoded, and open_router died in an OverflowError
    inside the mailbox)."""
    text = f'[providers.a]\nkind = "mock"\nrpm = {rpm}\n'
    if 1 <= rpm <= _INT64_MAX:
        assert decode_config(text).providers["a"].rpm == rpm
        return
    with pytest.raises(ConfigError) as info:
        decode_config(text)
    assert info.value.path == "$.providers.a.rpm"
    assert len(str(info.value)) < 200  # a huge value is shown shortened


@pytest.mark.parametrize(
    ("toml", "path"),
    [
        ('[providers.a]\nkind = "mock"\ntpm = 1' + "0" * 30, "$.providers.a.tpm"),
        (
            '[providers.a]\nkind = "mock"\nrpm = 5\nrpm_burst = 1' + "0" * 30,
            "$.providers.a.rpm_burst",
        ),
        (
            "default_max_tokens = 1" + "0" * 30 + '\n[providers.a]\nkind = "mock"',
            "$.default_max_tokens",
        ),
    ],
)
def test_a_limit_too_big_for_the_router_is_a_config_error_not_an_overflow(
    toml: str, path: str
) -> None:
    """Each of these decoded on main and then failed at open (OverflowError from the
    mailbox) or on every request (a ServerError wrapping OverflowError)."""
    with pytest.raises(ConfigError, match="64-bit") as info:
        decode_config(toml)
    assert info.value.path == path


async def test_the_largest_64_bit_limits_open_and_serve(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The boundary: rpm and tpm at 2**63 - 1 are accepted and a request goes through."""
    config = decode_config(
        f'[providers.a]\nkind = "mock"\nrpm = {_INT64_MAX}\ntpm = {_INT64_MAX}\n'
    )
    async with open_router(config, providers={"a": MockProvider(name="a")}) as router:
        response = await router.complete(chat())
    assert response.text


def test_a_float_too_large_is_shown_shortened() -> None:
    """An int too large for a float field is a ConfigError naming the field, with the
    value shortened (main: all 401 digits in the message)."""
    with pytest.raises(ConfigError, match=r"is too large for a float") as info:
        decode_config('[providers.a]\nkind = "mock"\nfirst_token_timeout = 1' + "0" * 400)
    assert info.value.path == "$.providers.a.first_token_timeout"
    assert len(str(info.value)) < 200


def test_a_str_enum_member_is_its_choice() -> None:
    """A StrEnum member built in code is the plain choice it equals, as msgspec takes it
    (main: "'mock' is not one of: ..., mock — did you mean 'mock'?")."""

    class Kind(enum.StrEnum):
        MOCK = "mock"

    config = validate_config(RouterConfig(providers={"a": ProviderConfig(kind=Kind.MOCK)}))
    assert type(config.providers["a"].kind) is str
    assert config.providers["a"].kind == "mock"


# --------------------------------------------------------------------------- usage


async def test_a_negative_usage_is_no_credit(autojump_clock: trio.testing.MockClock) -> None:
    """A server reporting negative token counts (a bug, or hostile) is read as having
    used none: no negative cost settled against the budget (main: spent -2000 dollars,
    room to spend that much more on every other target), no negative token statistics,
    no TPM refunded past the request's cost."""
    lying = MockProvider(
        name="a",
        default=MockResponse(text="ok", usage=Usage(input_tokens=-(10**9), output_tokens=-(10**9))),
    )
    config = RouterConfig(
        providers={"a": ProviderConfig(kind="mock", tpm=10_000)},
        models={"a:m": ModelConfig(input_price=1.0, output_price=1.0)},
        budget=BudgetConfig(limit=1.0),
    )
    async with open_router(config, providers={"a": lying}) as router:
        actor = router._actors["a"]
        response = await router.complete(chat())
        assert response.usage.input_tokens == -(10**9)  # the answer is the server's
        (budget,) = router.statistics().budgets
        stats = actor.statistics()
        tokens = actor.mailbox.statistics().tpm_tokens
    assert budget.spent == 0.0
    assert (stats.input_tokens, stats.output_tokens) == (0, 0)
    # As with no usage reported: the output budget refunded, the prompt still charged
    # (main: refunded to the full bucket, as if the request had given tokens back).
    assert tokens is not None
    assert 9_900.0 < tokens < 10_000.0


class _NoUsage(MockProvider):
    """A user's adapter with a bug: answers whose ``usage`` is ``None``."""

    async def complete(self, request: ChatRequest) -> Any:
        response = await MockProvider.complete(self, request)
        return msgspec.structs.replace(response, usage=None)


async def test_an_answer_without_usage_fails_the_call_and_returns_its_permit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An adapter answering with ``usage=None`` is a failed call (ServerError, the
    AttributeError as its cause) with its permit returned (main: the call was marked
    settled before its usage was read, so it got no outcome and kept its concurrency
    slot for ever)."""
    config = RouterConfig(providers={"a": ProviderConfig(kind="mock", max_concurrency=1)})
    async with open_router(config, providers={"a": _NoUsage(name="a")}) as router:
        actor = router._actors["a"]
        with pytest.raises(ServerError, match="AttributeError") as info:
            await actor.complete(chat())
        assert isinstance(info.value.__cause__, AttributeError)
        stats = actor.statistics()
    assert (stats.succeeded, stats.failed, stats.cancelled) == (0, 1, 0)
    assert (stats.admitted, stats.in_flight) == (1, 0)
