"""MockProvider: answer selection, the virtual-time timeline, failures, cancellation, recording."""

from __future__ import annotations

import math
import re
from typing import Any, cast

import msgspec
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from providers._base import EventStream, Provider
from providers._errors import (
    ConnectionFailed,
    InvalidRequest,
    LLMError,
    Overloaded,
    RateLimited,
    ServerError,
    StreamInterrupted,
    UnsupportedFeature,
)
from providers._mock import MockProvider, MockResponse
from providers._types import (
    Capabilities,
    ChatRequest,
    ChatResponse,
    Done,
    EmbeddingRequest,
    ImagePart,
    Message,
    ReasoningDelta,
    StreamAccumulator,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    ToolSpec,
    Usage,
    UsageEvent,
)

# --------------------------------------------------------------------------- helpers


def req(text: str = "hi", **kw: Any) -> ChatRequest:
    return ChatRequest(model="m", messages=[Message.user(text)], **kw)


async def timed_events(provider: MockProvider, request: ChatRequest) -> list[tuple[float, Any]]:
    """Every event of a stream with the virtual time it arrived."""
    out: list[tuple[float, Any]] = []
    async with provider.stream(request) as events:
        async for event in events:
            out.append((trio.current_time(), event))
    return out


async def drain(provider: MockProvider, request: ChatRequest, log: list[tuple[float, Any]]) -> None:
    """Read a stream into ``log`` as (time, event) pairs, starting with (time, "entered")."""
    async with provider.stream(request) as events:
        log.append((trio.current_time(), "entered"))
        async for event in events:
            log.append((trio.current_time(), event))


async def stream_events(provider: MockProvider, request: ChatRequest) -> list[StreamEvent]:
    return [event for _, event in await timed_events(provider, request)]


def text_of(events: list[StreamEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def without_id(response: ChatResponse) -> ChatResponse:
    return msgspec.structs.replace(response, id="")


# --------------------------------------------------------------------------- selection


async def test_echo_is_the_default() -> None:
    """With no script, rules or default, the mock echoes the last user text with numbered ids."""
    mock = MockProvider(name="local")
    first = await mock.complete(req("hi there"))
    second = await mock.complete(req("again"))
    assert first == ChatResponse(
        id="mock-1",
        model="m",
        provider="local",
        text="echo: hi there",
        finish_reason="stop",
        usage=Usage(input_tokens=2, output_tokens=3),
    )
    assert (second.id, second.text) == ("mock-2", "echo: again")


async def test_script_then_rules_then_default() -> None:
    """The script is consumed first (even when a rule matches), then rules, then the default."""
    mock = MockProvider(
        responses=["one", MockResponse(text="two")],
        rules=[("weather", "sunny")],
        default="fallback",
    )
    texts = [(await mock.complete(req(t))).text for t in ["weather?", "x", "weather?", "hello"]]
    assert texts == ["one", "two", "sunny", "fallback"]
    assert mock.remaining == 0


async def test_enqueue_and_add_rule_extend_the_scenario() -> None:
    """Script items and rules can be added after construction, in order."""
    mock = MockProvider(responses=["a"])
    mock.enqueue("b", "c")
    mock.add_rule("x", "rule")
    assert mock.remaining == 3
    texts = [(await mock.complete(req("x"))).text for _ in range(5)]
    assert texts == ["a", "b", "c", "rule", "rule"]


async def test_rescripting_part_way_replaces_script_rules_and_default(
    autojump_clock: trio.abc.Clock,
) -> None:
    """``script``, ``set_rules`` and ``set_default`` replace what is left while calls run: a
    call in flight keeps the answer it chose, the next call gets the new one."""
    mock = MockProvider(responses=["a", "b", "c"], latency=1.0)
    done: list[tuple[float, str]] = []

    async def ask() -> None:
        try:
            text = (await mock.complete(req("weather?"))).text
        except LLMError as exc:
            text = type(exc).__name__
        done.append((trio.current_time(), text))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ask)  # takes "a" at 0.0
        await trio.sleep(0.5)
        mock.script("patched", Overloaded("busy"))  # "b" and "c" are gone
        mock.set_rules([("weather", MockResponse(text="rule", latency=0.5))])
        nursery.start_soon(ask)  # 0.5: "patched"
        await trio.sleep(0.5)
        nursery.start_soon(ask)  # 1.0: Overloaded
        await trio.sleep(1.0)
        nursery.start_soon(ask)  # 2.0: the new rule
        await trio.sleep(2.0)
        mock.set_rules([])
        mock.set_default(ServerError("down"))
        nursery.start_soon(ask)  # 4.0: the new default
        await trio.sleep(1.0)
        mock.set_default(lambda r: f"fn {len(r.messages)}")
        nursery.start_soon(ask)
        await trio.sleep(1.0)
        mock.set_default(None)  # back to echo
        nursery.start_soon(ask)
    assert done == [
        (1.0, "a"),
        (1.5, "patched"),
        (2.0, "Overloaded"),
        (3.5, "rule"),
        (5.0, "ServerError"),
        (6.0, "fn 1"),
        (7.0, "echo: weather?"),
    ]
    assert mock.remaining == 0


async def test_rescripting_checks_every_item_first() -> None:
    """A bad item in ``script``/``set_rules``/``set_default`` is a TypeError that changes
    nothing; ``script()`` with no items clears the script."""
    mock = MockProvider(responses=["a", "b"], rules=[("x", "rule")], default="d")
    with pytest.raises(TypeError, match="MockResponse, a str or an LLMError"):
        mock.script("new", cast(Any, 42))
    with pytest.raises(TypeError, match="pattern"):
        mock.set_rules([("y", "ok"), (cast(Any, 42), "bad")])
    with pytest.raises(TypeError, match="MockResponse, a str or an LLMError"):
        mock.set_default(cast(Any, 42))
    assert mock.remaining == 2
    assert [(await mock.complete(req("x"))).text for _ in range(3)] == ["a", "b", "rule"]
    mock.enqueue("queued")
    mock.script()
    assert mock.remaining == 0
    assert (await mock.complete(req("z"))).text == "d"


async def test_a_stream_keeps_its_answer_when_the_mock_is_rescripted(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A stream opened before ``script`` delivers its own answer on its own timeline."""
    mock = MockProvider(default=MockResponse(text="one two", latency=1.0, chunk_latency=1.0))
    async with mock.stream(req()) as events:
        mock.script("changed")
        got = [(trio.current_time(), e.text) async for e in events if isinstance(e, TextDelta)]
    assert got == [(1.0, "one"), (2.0, " two")]
    assert (await mock.complete(req())).text == "changed"


@given(
    before=st.lists(st.text(max_size=5), max_size=5),
    used=st.integers(min_value=0, max_value=5),
    after=st.lists(st.text(max_size=5), max_size=5),
)
async def test_the_next_calls_answer_exactly_the_new_script(
    before: list[str], used: int, after: list[str]
) -> None:
    """Invariant: however much of the old script was used, after ``script(*after)`` the next
    ``len(after)`` calls answer ``after`` in order, and then the default takes over."""
    mock = MockProvider(responses=before, default="default", record=False)
    for _ in range(used):
        await mock.complete(req("q"))
    mock.script(*after)
    texts = [(await mock.complete(req("q"))).text for _ in range(len(after) + 1)]
    assert texts == [*after, "default"]


async def test_recording_can_be_switched_on_later() -> None:
    """``record`` is settable: a mock built with it off keeps calls once it is turned on."""
    mock = MockProvider(record=False)
    await mock.complete(req("unseen"))
    assert (mock.record, mock.calls) == (False, [])
    mock.record = True
    await mock.complete(req("seen"))
    assert [c.request.messages[-1].text for c in mock.calls] == ["seen"]


async def test_regex_and_callable_rules_first_match_wins() -> None:
    """Regex rules search, callable rules see the whole request, and the first match wins."""
    mock = MockProvider(
        rules=[
            (re.compile(r"\bpi\b"), "3.14"),
            (lambda r: r.max_tokens == 5, "short"),
            ("pi", "substring"),
        ]
    )
    assert (await mock.complete(req("what is pi?"))).text == "3.14"
    assert (await mock.complete(req("pizza"))).text == "substring"
    assert (await mock.complete(req("zzz", max_tokens=5))).text == "short"
    assert (await mock.complete(req("pi", max_tokens=5))).text == "3.14"
    assert (await mock.complete(req("zzz"))).text == "echo: zzz"


async def test_rules_match_the_last_user_message_only() -> None:
    """A rule looks at the last user turn, not at earlier turns of the conversation."""
    mock = MockProvider(rules=[("weather", "sunny")])
    conversation = ChatRequest(
        model="m",
        messages=[
            Message.system("be brief about the weather"),
            Message.user("weather?"),
            Message.assistant("sunny"),
            Message.user("thanks"),
        ],
    )
    assert (await mock.complete(conversation)).text == "echo: thanks"


async def test_fixed_and_callable_defaults() -> None:
    """A default may be a fixed response or a function of the request (str or MockResponse)."""
    fixed = MockProvider(default=MockResponse(text="always"))
    assert (await fixed.complete(req("x"))).text == "always"
    counting = MockProvider(default=lambda r: f"{len(r.messages)} message(s)")
    assert (await counting.complete(req("x"))).text == "1 message(s)"


async def test_bad_items_are_rejected_at_construction() -> None:
    """Script items, rule patterns and MockResponse fields are checked when given."""
    with pytest.raises(TypeError, match="MockResponse, a str or an LLMError"):
        MockProvider(responses=[cast(Any, 42)])
    with pytest.raises(TypeError, match="pattern"):
        MockProvider(rules=[(cast(Any, 42), "x")])
    with pytest.raises(TypeError, match="LLMError"):
        MockResponse(error=cast(Any, ValueError("foreign")))
    with pytest.raises(ValueError, match="non-negative"):
        MockResponse(latency=-1.0)
    with pytest.raises(ValueError, match="chunk_words"):
        MockResponse(chunk_words=0)
    with pytest.raises(ValueError, match="error_after_chunks"):
        MockResponse(error_after_chunks=-1)
    with pytest.raises(ValueError, match="latency"):
        MockProvider(latency=-0.5)


# --------------------------------------------------------------------------- timeline


async def test_complete_answers_after_both_latencies(autojump_clock: trio.abc.Clock) -> None:
    """complete() returns at provider latency + response latency; chunk_latency is ignored."""
    mock = MockProvider(latency=1.0, default=MockResponse(text="a b c", latency=0.5))
    mock.enqueue(MockResponse(text="slow stream", latency=0.25, chunk_latency=100.0))
    await mock.complete(req())
    assert trio.current_time() == 1.25
    await mock.complete(req())
    assert trio.current_time() == 2.75
    assert [(c.started_at, c.ended_at) for c in mock.calls] == [(0.0, 1.25), (1.25, 2.75)]


@pytest.mark.parametrize(
    ("provider_latency", "response", "times", "deltas"),
    [
        pytest.param(
            0.0,
            MockResponse(text="a b c", latency=2.0, chunk_latency=0.5),
            [2.0, 2.5, 3.0, 3.5, 3.5],
            ["a", " b", " c"],
            id="three-chunks",
        ),
        pytest.param(
            0.0,
            MockResponse(text="a b c d e", chunk_latency=1.0, chunk_words=2),
            [0.0, 1.0, 2.0, 3.0, 3.0],
            ["a b", " c d", " e"],
            id="two-words-per-chunk",
        ),
        pytest.param(
            1.0,
            MockResponse(text="x y", latency=0.5, chunk_latency=0.25),
            [1.5, 1.75, 2.0, 2.0],
            ["x", " y"],
            id="provider-latency-adds",
        ),
        pytest.param(
            0.0,
            MockResponse(text="", latency=1.0, chunk_latency=0.25),
            [1.0, 1.0],
            [],
            id="no-content",
        ),
        pytest.param(
            0.0,
            MockResponse(text="  lead and trail \n", chunk_latency=0.5),
            [0.0, 0.5, 1.0, 1.5, 1.5],
            ["  lead", " and", " trail \n"],
            id="whitespace-kept",
        ),
    ],
)
async def test_stream_timeline(
    autojump_clock: trio.abc.Clock,
    provider_latency: float,
    response: MockResponse,
    times: list[float],
    deltas: list[str],
) -> None:
    """Chunk i arrives at L + i*c and the usage trailer with Done at L + n*c, exactly."""
    mock = MockProvider(latency=provider_latency, default=response)
    got = await timed_events(mock, req())
    assert [t for t, _ in got] == times
    events = [e for _, e in got]
    assert [e.text for e in events if isinstance(e, TextDelta)] == deltas
    assert isinstance(events[-2], UsageEvent)
    assert isinstance(events[-1], Done)
    assert events[-1].response.text == response.text
    assert mock.calls[0].ended_at == times[-1]
    assert mock.calls[0].outcome == "ok"


async def test_slow_reader_finds_due_events_buffered(autojump_clock: trio.abc.Clock) -> None:
    """Event times are fixed when the stream opens: a late reader gets due events at once."""
    mock = MockProvider(default=MockResponse(text="a b c", chunk_latency=1.0))
    times: list[float] = []
    async with mock.stream(req()) as events:
        async for _ in events:
            times.append(trio.current_time())
            if len(times) == 1:
                await trio.sleep(10.0)
    assert times == [0.0, 10.0, 10.0, 10.0, 10.0]


async def test_reasoning_streams_before_text() -> None:
    """Reasoning deltas come first, and both paths report the reasoning and its tokens."""
    mock = MockProvider(default=MockResponse(text="It is 4.", reasoning="two plus two"))
    events = await stream_events(mock, req("2+2?"))
    kinds = [type(e) for e in events]
    assert kinds == [ReasoningDelta] * 3 + [TextDelta] * 3 + [UsageEvent, Done]
    done = events[-1]
    assert isinstance(done, Done)
    complete = await mock.complete(req("2+2?"))
    assert complete.reasoning == done.response.reasoning == "two plus two"
    assert complete.usage == Usage(input_tokens=1, output_tokens=6, reasoning_tokens=3)
    assert without_id(done.response) == without_id(complete)


async def test_usage_is_estimated_unless_given() -> None:
    """Estimated usage is chars/4 in and words out (min 1 each); a given usage wins."""
    request = ChatRequest(
        model="m", messages=[Message.system("abcdefgh"), Message.user("hello there")]
    )
    estimated = await MockProvider(default="one two three").complete(request)
    assert estimated.usage == Usage(input_tokens=4, output_tokens=3)
    empty = await MockProvider(default="").complete(req("x"))
    assert empty.usage == Usage(input_tokens=1, output_tokens=1)
    given_usage = Usage(input_tokens=10, output_tokens=20, cached_input_tokens=5)
    mock = MockProvider(default=MockResponse(text="cut", usage=given_usage, finish_reason="length"))
    complete = await mock.complete(request)
    done = (await stream_events(mock, request))[-1]
    assert isinstance(done, Done)
    for response in (complete, done.response):
        assert (response.usage, response.finish_reason) == (given_usage, "length")


# --------------------------------------------------------------------------- failures


async def test_scripted_error_raised_after_latency(autojump_clock: trio.abc.Clock) -> None:
    """A scripted error is raised at its latency as a fresh copy naming the provider."""
    template = RateLimited("slow down", retry_after=2.0)
    mock = MockProvider(
        name="m1", responses=[MockResponse(error=template, latency=1.5), template, "ok"]
    )
    with pytest.raises(RateLimited) as first:
        await mock.complete(req())
    assert trio.current_time() == 1.5
    assert (first.value.provider, first.value.retry_after) == ("m1", 2.0)
    assert first.value is not template
    assert template.provider is None
    with pytest.raises(RateLimited):
        await mock.complete(req())
    assert trio.current_time() == 1.5
    assert (await mock.complete(req())).text == "ok"
    assert [c.outcome for c in mock.calls] == ["error", "error", "ok"]
    assert mock.calls[0].error is first.value
    assert (await mock.complete(req())).id == "mock-4"


async def test_stream_upfront_error_raised_on_entering(autojump_clock: trio.abc.Clock) -> None:
    """An error without error_after_chunks fails stream() on entering, like an HTTP status."""
    mock = MockProvider(responses=[MockResponse(error=Overloaded("busy"), latency=2.0)])
    entered = False
    with pytest.raises(Overloaded):
        async with mock.stream(req()):
            entered = True  # pragma: no cover
    assert not entered
    assert trio.current_time() == 2.0
    assert (mock.calls[0].outcome, mock.calls[0].ended_at) == ("error", 2.0)


async def test_stream_interrupted_after_content(autojump_clock: trio.abc.Clock) -> None:
    """After content, a mid-stream failure is StreamInterrupted caused by the scripted error."""
    mock = MockProvider(
        default=MockResponse(
            text="a b c d",
            error=Overloaded("busy", status_code=529),
            error_after_chunks=2,
            latency=1.0,
            chunk_latency=0.5,
        )
    )
    log: list[tuple[float, Any]] = []
    with pytest.raises(StreamInterrupted) as info:
        await drain(mock, req(), log)
    assert log == [(0.0, "entered"), (1.0, TextDelta(text="a")), (1.5, TextDelta(text=" b"))]
    assert trio.current_time() == 2.0
    assert isinstance(info.value.__cause__, Overloaded)
    assert (info.value.provider, info.value.status_code) == ("mock", 529)
    call = mock.calls[0]
    assert (call.outcome, call.error, call.ended_at) == ("error", info.value, 2.0)


async def test_stream_error_before_content_is_the_raw_error(
    autojump_clock: trio.abc.Clock,
) -> None:
    """error_after_chunks=0 enters fine, then raises the error itself (ServerError if none)."""
    mock = MockProvider(
        responses=[
            MockResponse(text="a b", error_after_chunks=0, latency=3.0),
            MockResponse(text="a b", error=RateLimited("later"), error_after_chunks=0),
        ]
    )
    log: list[tuple[float, Any]] = []
    with pytest.raises(ServerError):
        await drain(mock, req(), log)
    with pytest.raises(RateLimited):
        await drain(mock, req(), log)
    assert log == [(0.0, "entered"), (3.0, "entered")]
    assert trio.current_time() == 3.0
    assert [type(c.error) for c in mock.calls] == [ServerError, RateLimited]


async def test_error_after_more_chunks_than_exist_fails_at_the_trailer(
    autojump_clock: trio.abc.Clock,
) -> None:
    """With fewer chunks than error_after_chunks, the failure replaces the usage trailer."""
    mock = MockProvider(default=MockResponse(text="a b", error_after_chunks=10, chunk_latency=1.0))
    log: list[tuple[float, Any]] = []
    with pytest.raises(StreamInterrupted) as info:
        await drain(mock, req(), log)
    assert [e for _, e in log] == ["entered", TextDelta(text="a"), TextDelta(text=" b")]
    assert trio.current_time() == 2.0
    assert isinstance(info.value.__cause__, ServerError)


async def test_complete_with_error_after_chunks_raises_the_error_itself() -> None:
    """complete() has no partial delivery: a mid-stream failure is the raw error."""
    mock = MockProvider(
        responses=[
            MockResponse(text="a b", error_after_chunks=1),
            MockResponse(text="a b", error=Overloaded("busy"), error_after_chunks=1),
        ]
    )
    with pytest.raises(ServerError):
        await mock.complete(req())
    with pytest.raises(Overloaded):
        await mock.complete(req())


# --------------------------------------------------------------------------- cancellation


async def test_cancelled_complete_is_recorded(autojump_clock: trio.abc.Clock) -> None:
    """A call cancelled while waiting is recorded as cancelled and leaves nothing running."""
    mock = MockProvider(latency=5.0)
    tasks_before = trio.lowlevel.current_statistics().tasks_living
    with trio.move_on_after(1.0) as scope:
        await mock.complete(req())
    assert scope.cancelled_caught
    call = mock.calls[0]
    assert (call.outcome, call.started_at, call.ended_at, call.error) == (
        "cancelled",
        0.0,
        1.0,
        None,
    )
    assert (mock.cancelled, mock.in_flight) == (1, 0)
    assert trio.lowlevel.current_statistics().tasks_living == tasks_before


async def test_cancelled_stream_is_recorded(autojump_clock: trio.abc.Clock) -> None:
    """A stream cancelled between chunks stops at once and is recorded as cancelled."""
    mock = MockProvider(default=MockResponse(text="a b c d", chunk_latency=1.0))
    seen: list[str] = []
    with trio.move_on_after(2.5) as scope:
        async with mock.stream(req()) as events:
            async for event in events:
                assert isinstance(event, TextDelta)
                seen.append(event.text)
    assert scope.cancelled_caught
    assert seen == ["a", " b", " c"]
    assert (mock.calls[0].outcome, mock.calls[0].ended_at) == ("cancelled", 2.5)
    assert (mock.cancelled, mock.in_flight) == (1, 0)


async def test_stream_cancelled_while_entering_is_recorded(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Cancellation during an upfront error's latency is recorded as cancelled, not error."""
    mock = MockProvider(default=MockResponse(error=Overloaded("busy"), latency=3.0))
    with trio.move_on_after(1.0):
        async with mock.stream(req()):
            pytest.fail("never entered")  # pragma: no cover
    assert (mock.calls[0].outcome, mock.calls[0].ended_at) == ("cancelled", 1.0)


async def test_stream_closed_early_counts_as_cancelled() -> None:
    """Leaving the stream before Done abandons it; iterating it afterwards fails loudly."""
    mock = MockProvider(default="a b c")
    async with mock.stream(req()) as events:
        async for _ in events:
            break
    assert mock.calls[0].outcome == "cancelled"
    with pytest.raises(trio.ClosedResourceError):
        await events.__anext__()


async def test_infinite_latency_hangs_until_cancelled(autojump_clock: trio.abc.Clock) -> None:
    """latency=inf never answers and chunk_latency=inf stalls after the first chunk."""
    mock = MockProvider(
        responses=[
            MockResponse(text="x", latency=math.inf),
            MockResponse(text="a b", chunk_latency=math.inf),
        ]
    )
    with trio.move_on_after(30.0):
        await mock.complete(req())
    seen: list[Any] = []
    with trio.move_on_after(100.0):
        async with mock.stream(req()) as events:
            async for event in events:
                seen.append(event)
    assert seen == [TextDelta(text="a")]
    assert trio.current_time() == 130.0
    assert [(c.outcome, c.ended_at) for c in mock.calls] == [
        ("cancelled", 30.0),
        ("cancelled", 130.0),
    ]


async def test_concurrent_calls_overlap(autojump_clock: trio.abc.Clock) -> None:
    """Concurrent calls wait independently; in_flight and max_in_flight track the overlap."""
    mock = MockProvider(default=lambda r: MockResponse(text="ok", latency=float(r.last_user_text)))
    async with trio.open_nursery() as nursery:
        for delay in ("3", "1", "2"):
            nursery.start_soon(mock.complete, req(delay))
        await trio.sleep(0.5)
        assert mock.in_flight == 3
    assert trio.current_time() == 3.0
    ends = {cast(ChatRequest, c.request).last_user_text: c.ended_at for c in mock.calls}
    assert ends == {"1": 1.0, "2": 2.0, "3": 3.0}
    assert (mock.in_flight, mock.max_in_flight) == (0, 3)


# --------------------------------------------------------------------------- tool calls

WEATHER = ToolCall(id="call_w", name="get_weather", arguments={"city": "Paris", "days": 3})


async def test_tool_call_stream_assembles_to_the_complete_call() -> None:
    """A tool-call stream (start, fragments, end) assembles to the call complete() returns."""
    mock = MockProvider(default=MockResponse(text="Let me check.", tool_calls=[WEATHER]))
    complete = await mock.complete(req())
    events = await stream_events(mock, req())
    assert [type(e) for e in events[:4]] == [TextDelta, TextDelta, TextDelta, ToolCallStart]
    fragments = [e.arguments for e in events if isinstance(e, ToolCallDelta)]
    assert len(fragments) > 1
    assert msgspec.json.decode("".join(fragments)) == WEATHER.arguments
    ends = [e.call for e in events if isinstance(e, ToolCallEnd)]
    assert ends == complete.tool_calls == [WEATHER]
    acc = StreamAccumulator(provider="mock", model="m")
    for event in events:
        acc.add(event)
    assert acc.finish_call(0) == WEATHER
    done = events[-1]
    assert isinstance(done, Done)
    assert done.finish_reason == complete.finish_reason == "tool_calls"
    assert without_id(done.response) == without_id(complete)
    # Words of "Let me check." and of '{"city": "Paris", "days": 3}'.
    assert complete.usage.output_tokens == 3 + 4


async def test_tool_calls_without_id_get_unique_ids() -> None:
    """A call with no id gets call_<n>_<index>, the same in its start and end events."""
    mock = MockProvider(default=MockResponse.tool_call("lookup", {"q": "trio"}))
    complete = await mock.complete(req())
    assert [c.id for c in complete.tool_calls] == ["call_1_0"]
    events = await stream_events(mock, req())
    start = next(e for e in events if isinstance(e, ToolCallStart))
    end = next(e for e in events if isinstance(e, ToolCallEnd))
    assert (start.id, end.call.id, end.call.arguments) == ("call_2_0", "call_2_0", {"q": "trio"})


async def test_malformed_tool_arguments_stream_verbatim() -> None:
    """raw_arguments are streamed as sent and the ending call keeps them."""
    broken = ToolCall(id="c1", name="f", raw_arguments='{"x": ')
    events = await stream_events(MockProvider(default=MockResponse(tool_calls=[broken])), req())
    assert "".join(e.arguments for e in events if isinstance(e, ToolCallDelta)) == '{"x": '
    assert [e.call for e in events if isinstance(e, ToolCallEnd)] == [broken]


# --------------------------------------------------------------------------- validation


async def test_invalid_requests_fail_before_consuming_the_script() -> None:
    """Requests are validated first, like a real adapter; the script is left untouched."""
    mock = MockProvider(responses=["kept"])
    empty = ChatRequest(model="m", messages=[])
    with pytest.raises(InvalidRequest, match="no messages"):
        await mock.complete(empty)
    with pytest.raises(InvalidRequest, match="max_tokens"):
        async with mock.stream(req(max_tokens=0)):
            pytest.fail("never entered")  # pragma: no cover
    assert mock.remaining == 1
    assert [(c.method, c.outcome) for c in mock.calls] == [
        ("complete", "error"),
        ("stream", "error"),
    ]
    assert (await mock.complete(req())).id == "mock-1"


async def test_capabilities_gate_features() -> None:
    """Images, tools, streaming and embeddings are refused when the capabilities lack them."""
    mock = MockProvider(
        capabilities=Capabilities(vision=False, tools=False, streaming=False, embeddings=False)
    )
    image = ChatRequest(
        model="m", messages=[Message.user("look", ImagePart.from_url("https://x.test/cat.png"))]
    )
    with pytest.raises(UnsupportedFeature, match="images"):
        await mock.complete(image)
    with pytest.raises(UnsupportedFeature, match="tools"):
        await mock.complete(req(tools=[ToolSpec(name="f")]))
    with pytest.raises(UnsupportedFeature, match="stream"):
        async with mock.stream(req()):
            pytest.fail("never entered")  # pragma: no cover
    with pytest.raises(UnsupportedFeature, match="embed"):
        await mock.embed(EmbeddingRequest(model="e", inputs=["a"]))
    assert mock.cancelled == 0
    assert all(isinstance(c.error, UnsupportedFeature) for c in mock.calls)


# --------------------------------------------------------------------------- the rest


async def test_embeddings_are_deterministic_unit_vectors(autojump_clock: trio.abc.Clock) -> None:
    """Vectors depend only on the text and length, are unit length, and usage is counted."""
    request = EmbeddingRequest(model="e", inputs=["hello world", "a", "hello world"])
    one = await MockProvider().embed(request)
    two = await MockProvider(name="other", latency=2.0).embed(request)
    assert trio.current_time() == 2.0
    assert one.vectors == two.vectors
    assert one.vectors[0] == one.vectors[2] != one.vectors[1]
    assert [len(v) for v in one.vectors] == [8, 8, 8]
    assert all(math.isclose(math.fsum(x * x for x in v), 1.0) for v in one.vectors)
    assert one.usage == Usage(input_tokens=2 + 1 + 2)
    assert (one.model, one.provider, two.provider) == ("e", "mock", "other")
    wide = await MockProvider().embed(EmbeddingRequest(model="e", inputs=["a"], dimensions=64))
    assert len(wide.vectors[0]) == 64
    # Pinned, so a change to the hash (which users may have stored vectors of) is noticed.
    assert one.vectors[1][0] == pytest.approx(0.0382606091)


async def test_closed_provider_fails_every_call() -> None:
    """After aclose (idempotent), every method raises ConnectionFailed naming the provider."""
    mock = MockProvider(name="gone")
    await mock.aclose()
    await mock.aclose()
    assert mock.closed
    with pytest.raises(ConnectionFailed, match="closed") as info:
        await mock.complete(req())
    assert info.value.provider == "gone"
    with pytest.raises(ConnectionFailed):
        async with mock.stream(req()):
            pytest.fail("never entered")  # pragma: no cover
    with pytest.raises(ConnectionFailed):
        await mock.embed(EmbeddingRequest(model="e", inputs=["a"]))
    with pytest.raises(ConnectionFailed):
        await mock.list_models()


async def test_list_models() -> None:
    """list_models reports the configured model ids under the provider's name."""
    models = await MockProvider(name="p", models=["small", "large"]).list_models()
    assert [(m.id, m.provider, m.owned_by) for m in models] == [
        ("small", "p", "mock"),
        ("large", "p", "mock"),
    ]


async def test_satisfies_the_provider_protocol() -> None:
    """MockProvider is a Provider and its streams are EventStreams."""
    mock = MockProvider()
    assert isinstance(mock, Provider)
    assert (mock.name, mock.kind, mock.capabilities) == ("mock", "mock", Capabilities())
    async with mock.stream(req()) as events:
        assert isinstance(events, EventStream)
        assert [type(e) async for e in events] == [TextDelta, TextDelta, UsageEvent, Done]


async def test_recording_helpers_and_reset(autojump_clock: trio.abc.Clock) -> None:
    """requests lists chat requests in order; reset forgets calls and restarts the ids."""
    mock = MockProvider(responses=["a", "b", "c"])
    first, second = req("one"), req("two")
    await mock.complete(first)
    await stream_events(mock, second)
    await mock.embed(EmbeddingRequest(model="e", inputs=["x"]))
    assert mock.requests == [first, second]
    assert [(c.method, c.outcome) for c in mock.calls] == [
        ("complete", "ok"),
        ("stream", "ok"),
        ("embed", "ok"),
    ]
    assert all(c.duration == 0.0 for c in mock.calls)
    assert isinstance(mock.calls[1].response, ChatResponse)
    assert mock.calls[1].response.id == "mock-2"
    mock.reset()
    assert (mock.calls, mock.requests, mock.remaining, mock.max_in_flight) == ([], [], 1, 0)
    assert (await mock.complete(req())).id == "mock-1"
    assert repr(mock) == "MockProvider(name='mock', calls=1)"


async def test_errors_are_llm_errors_only() -> None:
    """Everything the mock raises on its own account is an LLMError."""
    mock = MockProvider(responses=[Overloaded("busy")])
    with pytest.raises(LLMError):
        await mock.complete(req())


# --------------------------------------------------------------------------- property


@settings(max_examples=150, deadline=None)
@given(
    text=st.text(alphabet=st.characters(codec="utf-8"), max_size=60)
    | st.from_regex(r"[ \n\ta-z]{0,40}", fullmatch=True),
    chunk_words=st.integers(min_value=1, max_value=6),
)
async def test_stream_concatenates_to_complete(text: str, chunk_words: int) -> None:
    """For any text and chunk_words, deltas concatenate to complete()'s text and Done matches it."""
    mock = MockProvider(default=MockResponse(text=text, chunk_words=chunk_words))
    complete = await mock.complete(req("prompt"))
    events = await stream_events(mock, req("prompt"))
    deltas = [e.text for e in events if isinstance(e, TextDelta)]
    assert "".join(deltas) == complete.text == text
    assert all(d for d in deltas)
    words = text.split()
    # Whitespace-only text still streams, as one delta.
    assert len(deltas) == (math.ceil(len(words) / chunk_words) if words else int(bool(text)))
    done = events[-1]
    assert isinstance(done, Done)
    assert done.response.id == "mock-2"
    assert without_id(done.response) == without_id(complete)


# --------------------------------------------------------------------------- through a router


async def test_a_toml_configured_mock_is_rescripted_through_the_router(
    autojump_clock: trio.abc.Clock,
) -> None:
    """``router.provider(name)`` is the mock the router built from TOML: re-scripting it
    part-way changes the next routed answers, at their exact times; unknown names are
    NoRoute."""
    from router import open_router
    from router.config import decode_config
    from router.errors import NoRoute

    config = decode_config(
        """
        [providers.local]
        kind = "mock"
        retry = { max_attempts = 1 }
        mock = { reply = "steady", latency = 1.0 }
        """
    )
    answers: list[tuple[float, str]] = []
    async with open_router(config) as router:
        mock = router.provider("local")
        assert isinstance(mock, MockProvider)
        with pytest.raises(NoRoute, match="unknown provider 'nope'; configured: \\['local'\\]"):
            router.provider("nope")
        mock.record = True

        async def ask() -> None:
            try:
                request = ChatRequest(model="local:m", messages=[Message.user("hi")])
                text = (await router.complete(request)).text
            except LLMError as exc:
                text = type(exc).__name__
            answers.append((trio.current_time(), text))

        await ask()  # 0.0 -> 1.0
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask)  # 1.0 -> 2.0, already chose "steady"
            await trio.sleep(0.5)
            mock.script(MockResponse(text="patched", latency=0.5), ServerError("down"))
        await ask()
        await ask()
        await ask()
    assert answers == [
        (1.0, "steady"),
        (2.0, "steady"),
        (3.5, "patched"),
        (4.5, "ServerError"),
        (5.5, "steady"),
    ]
    assert [c.outcome for c in mock.calls] == ["ok", "ok", "ok", "error", "ok"]
