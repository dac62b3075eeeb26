"""Both adapters over real loopback sockets against the project's fake upstream.

Every test runs once per wire format (OpenAI, Anthropic), through ``httpx`` to a trio
HTTP server on 127.0.0.1 — no mocks between the adapter and the socket.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx
import msgspec
import pytest
import trio
from hypothesis import HealthCheck, given, settings

from providers import (
    AnthropicProvider,
    AuthenticationError,
    ChatRequest,
    ConnectionFailed,
    ContextLengthExceeded,
    Done,
    EmbeddingRequest,
    ForceTool,
    ImagePart,
    InvalidRequest,
    LLMError,
    Message,
    NotFound,
    OpenAIProvider,
    Overloaded,
    PermissionDenied,
    ProtocolError,
    RateLimited,
    ResponseFormat,
    Secret,
    ServerError,
    StreamInterrupted,
    TextDelta,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    ToolSpec,
)
from providers._http import HTTPProvider
from providers.testing import (
    FakeUpstream,
    Fault,
    Scenario,
    decode_anthropic_request,
    decode_openai_request,
    open_fake_upstream,
)

from ._helpers import collect
from .strategies import anthropic_view, chat_requests

KEY = "sk-wire-SECRET-9876543210"
KINDS = ["openai", "anthropic"]

WEATHER = ToolSpec(
    name="get_weather",
    description="Weather in a city",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


def adapter(
    kind: str, up: FakeUpstream, client: httpx.AsyncClient, scenario: str = "s"
) -> HTTPProvider:
    base = up.base_url(scenario, "openai" if kind == "openai" else "anthropic")
    cls = OpenAIProvider if kind == "openai" else AnthropicProvider
    return cls(name=kind, api_key=Secret(KEY), base_url=base, client=client)


def req(text: str = "hello wire world", **kw: Any) -> ChatRequest:
    kw.setdefault("messages", [Message.system("Be terse."), Message.user(text)])
    return ChatRequest(model="test-model", **kw)


# --------------------------------------------------------------------------- happy paths


@pytest.mark.parametrize("kind", KINDS)
async def test_text_complete_and_stream_agree(
    kind: str, upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    """Non-streaming and streaming give the same text and usage; deltas add up to the text."""
    p = adapter(kind, upstream, client)
    full = await p.complete(req())
    assert full.text == "echo: hello wire world"
    assert full.finish_reason == "stop"
    assert full.usage.input_tokens > 0
    assert full.usage.output_tokens == 4
    assert full.request_id
    events = await collect(p, req())
    deltas = "".join(e.text for e in events if isinstance(e, TextDelta))
    done = events[-1]
    assert isinstance(done, Done)
    assert deltas == done.response.text == full.text
    assert done.response.usage == full.usage
    assert sum(isinstance(e, TextDelta) for e in events) >= 4


@pytest.mark.parametrize("kind", KINDS)
async def test_tool_calls_streamed_and_assembled(
    kind: str, upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    """A streamed tool call arrives as start + ≥2 argument fragments + end, parsed."""
    p = adapter(kind, upstream, client)
    r = req("what is the weather? use get_weather", tools=[WEATHER], tool_choice="required")
    full = await p.complete(r)
    assert [(c.name, c.arguments) for c in full.tool_calls] == [("get_weather", {"city": "value"})]
    assert full.finish_reason == "tool_calls"
    events = await collect(p, r)
    assert isinstance(events[0], ToolCallStart) or any(isinstance(e, ToolCallStart) for e in events)
    assert sum(isinstance(e, ToolCallDelta) for e in events) >= 2
    ends = [e for e in events if isinstance(e, ToolCallEnd)]
    assert [e.call.arguments for e in ends] == [{"city": "value"}]
    assert events[-1].response.tool_calls == [ends[0].call]


@pytest.mark.parametrize("kind", KINDS)
async def test_forced_tool_and_tool_result_round(
    kind: str, upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    """A forced tool is called; sending its result back yields a text answer."""
    p = adapter(kind, upstream, client)
    first = await p.complete(
        req("weather please", tools=[WEATHER], tool_choice=ForceTool(name="get_weather"))
    )
    call = first.tool_calls[0]
    second = await p.complete(
        req(
            messages=[
                Message.user("weather please"),
                first.message,
                Message.tool(call.id, "18C and cloudy"),
            ],
            tools=[WEATHER],
        )
    )
    assert second.text == "tool result: 18C and cloudy"
    assert not second.tool_calls


@pytest.mark.parametrize("kind", KINDS)
async def test_images_sent_in_the_vendor_shape(
    kind: str, upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    """Inline and URL images reach the server in the vendor's own part format."""
    p = adapter(kind, upstream, client)
    r = req(
        messages=[
            Message.user(
                "what is this?",
                ImagePart.from_bytes(b"\x89PNG\r\n", "image/png"),
                ImagePart.from_url("https://example.com/cat.jpg"),
            )
        ]
    )
    await p.complete(r)
    body = upstream.requests[-1].body
    parts = body["messages"][0]["content"]
    if kind == "openai":
        assert parts[1] == {
            "type": "image_url",
            "image_url": {"url": "data:image/png;base64,iVBORw0K"},
        }
        assert parts[2]["image_url"]["url"] == "https://example.com/cat.jpg"
    else:
        assert parts[1] == {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0K"},
        }
        assert parts[2]["source"] == {"type": "url", "url": "https://example.com/cat.jpg"}


@pytest.mark.parametrize("kind", KINDS)
async def test_json_schema_output(
    kind: str, upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    """Structured output is requested in the vendor's form and parses as the schema's shape."""
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
    p = adapter(kind, upstream, client)
    resp = await p.complete(req(response_format=ResponseFormat.json_schema(schema, name="person")))
    assert msgspec.json.decode(resp.text) == {"name": "value", "age": 1}
    body = upstream.requests[-1].body
    if kind == "openai":
        assert body["response_format"]["json_schema"]["schema"] == schema
    else:  # Anthropic: a forced tool whose input is the answer
        assert body["tools"] == [{"name": "person", "input_schema": schema}]
        assert body["tool_choice"] == {"type": "tool", "name": "person"}
        assert "output_config" not in body
        assert resp.finish_reason == "stop"
        assert resp.tool_calls == []


@pytest.mark.parametrize("kind", KINDS)
async def test_cached_tokens_are_normalised(kind: str, client: httpx.AsyncClient) -> None:
    """Cached prompt tokens are a subset of input tokens for both vendors."""
    async with open_fake_upstream({"s": Scenario(cached_tokens=7)}) as up:
        p = adapter(kind, up, client)
        full = await p.complete(req())
        streamed = (await collect(p, req()))[-1].response
    for r in (full, streamed):
        assert r.usage.cached_input_tokens == 7
        assert r.usage.input_tokens >= 7
    assert full.usage == streamed.usage


async def test_openai_embeddings_and_models(
    upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    """Embeddings (with dimensions) and the model list over the wire."""
    p = adapter("openai", upstream, client)
    e = await p.embed(
        EmbeddingRequest(model="text-embedding-3-small", inputs=["a", "b"], dimensions=4)
    )
    assert [len(v) for v in e.vectors] == [4, 4]
    assert e.vectors[0] != e.vectors[1]
    assert [m.id for m in await p.list_models()] == ["fake-model"]


async def test_anthropic_models(upstream: FakeUpstream, client: httpx.AsyncClient) -> None:
    """Anthropic's model list over the wire."""
    assert [m.id for m in await adapter("anthropic", upstream, client).list_models()] == [
        "fake-model"
    ]


# --------------------------------------------------------------------------- errors

STATUS_MATRIX: list[tuple[int, type[LLMError]]] = [
    (400, InvalidRequest),
    (401, AuthenticationError),
    (403, PermissionDenied),
    (404, NotFound),
    (429, RateLimited),
    (500, ServerError),
    (502, ServerError),
    (503, Overloaded),
    (504, ServerError),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("status", "expected"), STATUS_MATRIX)
async def test_status_matrix_over_the_wire(
    kind: str, status: int, expected: type[LLMError], client: httpx.AsyncClient
) -> None:
    """Each status of the retry matrix, in the vendor's error body, maps to the right error."""
    fault = Fault(kind="status", status=status, retry_after=2.5, on_requests=[1, 2])
    async with open_fake_upstream({"s": Scenario(faults=[fault])}) as up:
        p = adapter(kind, up, client)
        with pytest.raises(LLMError) as info:
            await p.complete(req())
        with pytest.raises(LLMError) as info_stream:
            await collect(p, req())
    for err in (info.value, info_stream.value):
        if kind == "anthropic" and status == 504:
            assert type(err).__name__ in ("ServerError", "Timeout")
        else:
            assert isinstance(err, expected), (status, err)
        assert err.status_code == status
        assert err.provider == kind
        assert KEY not in str(err)
    if status == 429:
        assert info.value.retry_after == 2.5
        assert any(
            h.startswith(("x-ratelimit-", "anthropic-ratelimit-")) for h in info.value.headers
        )


async def test_anthropic_529_is_overloaded(client: httpx.AsyncClient) -> None:
    """Anthropic's 529 overloaded_error is Overloaded, retryable."""
    async with open_fake_upstream(
        {"s": Scenario(faults=[Fault(kind="status", status=529, rate=1.0)])}
    ) as up:
        with pytest.raises(Overloaded) as info:
            await adapter("anthropic", up, client).complete(req())
    assert info.value.retryable
    assert info.value.status_code == 529


@pytest.mark.parametrize("kind", KINDS)
async def test_context_window_error_carries_numbers(kind: str, client: httpx.AsyncClient) -> None:
    """A prompt over the window is ContextLengthExceeded with limit and size parsed."""
    async with open_fake_upstream({"s": Scenario(context_window=10)}) as up:
        with pytest.raises(ContextLengthExceeded) as info:
            await adapter(kind, up, client).complete(req("x" * 400))
    assert info.value.limit == 10
    assert info.value.requested is not None
    assert info.value.requested > 10


@pytest.mark.parametrize("kind", KINDS)
async def test_in_stream_error_before_and_after_content(
    kind: str, client: httpx.AsyncClient
) -> None:
    """An in-stream error after content is StreamInterrupted from the vendor's error."""
    fault = Fault(kind="midstream_error", rate=1.0, after_chunks=2)
    async with open_fake_upstream({"s": Scenario(faults=[fault])}) as up:
        p = adapter(kind, up, client)
        seen: list[Any] = []
        with pytest.raises(StreamInterrupted) as info:
            async with p.stream(req()) as events:
                async for e in events:
                    seen.append(e)
    assert sum(isinstance(e, TextDelta) for e in seen) == 2
    assert isinstance(info.value.__cause__, ServerError | Overloaded)
    early = Fault(kind="midstream_error", rate=1.0, after_chunks=0)
    async with open_fake_upstream({"s": Scenario(faults=[early])}) as up:
        with pytest.raises((ServerError, Overloaded)) as raw:
            await collect(adapter(kind, up, client), req())
    assert raw.value.retryable  # nothing was delivered: the router may fail over


@pytest.mark.parametrize("kind", KINDS)
async def test_truncated_stream(kind: str, client: httpx.AsyncClient) -> None:
    """A stream cut short after content is StreamInterrupted; before content, retryable."""
    async with open_fake_upstream(
        {"s": Scenario(faults=[Fault(kind="truncate", rate=1.0, after_chunks=2)])}
    ) as up:
        with pytest.raises(StreamInterrupted):
            await collect(adapter(kind, up, client), req())
    async with open_fake_upstream(
        {"s": Scenario(faults=[Fault(kind="truncate", rate=1.0, after_chunks=0)])}
    ) as up:
        with pytest.raises(LLMError) as info:
            await collect(adapter(kind, up, client), req())
    assert info.value.retryable


@pytest.mark.parametrize("kind", KINDS)
async def test_malformed_bodies_are_protocol_errors(kind: str, client: httpx.AsyncClient) -> None:
    """Invalid JSON from the server is a ProtocolError (or StreamInterrupted after content)."""
    async with open_fake_upstream(
        {"s": Scenario(faults=[Fault(kind="malformed", rate=1.0, after_chunks=0)])}
    ) as up:
        p = adapter(kind, up, client)
        with pytest.raises(ProtocolError):
            await p.complete(req())
        with pytest.raises(ProtocolError):
            await collect(p, req())


@pytest.mark.parametrize("kind", KINDS)
async def test_connection_reset_is_connection_failed(kind: str, client: httpx.AsyncClient) -> None:
    """A connection reset before any answer maps to a retryable connection/protocol error."""
    async with open_fake_upstream({"s": Scenario(faults=[Fault(kind="reset", rate=1.0)])}) as up:
        with pytest.raises((ConnectionFailed, ProtocolError)) as info:
            await adapter(kind, up, client).complete(req())
    assert info.value.retryable


@pytest.mark.parametrize("kind", KINDS)
async def test_slow_drip_still_parses(kind: str, client: httpx.AsyncClient) -> None:
    """A body written a few bytes at a time parses exactly like a fast one."""
    scenario = Scenario(
        faults=[Fault(kind="slow_drip", rate=1.0, drip_bytes=7)], chunk_interval=0.0005
    )
    async with open_fake_upstream({"s": scenario}) as up:
        p = adapter(kind, up, client)
        events = await collect(p, req())
    assert events[-1].response.text == "echo: hello wire world"


async def test_connection_refused(client: httpx.AsyncClient) -> None:
    """Nothing listening: ConnectionFailed, retryable, no httpx exception escapes."""
    with trio.socket.socket() as s:
        await s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = OpenAIProvider(api_key=KEY, base_url=f"http://127.0.0.1:{port}/v1", client=client)
    with pytest.raises(ConnectionFailed):
        await p.complete(req())


# --------------------------------------------------------------------------- cancellation


@pytest.mark.parametrize("kind", KINDS)
async def test_cancel_mid_stream_closes_the_connection(
    kind: str, client: httpx.AsyncClient
) -> None:
    """Cancelling mid-stream closes the HTTP response: the server sees the disconnect."""
    async with open_fake_upstream(
        {"s": Scenario(chunk_interval=0.05, reply="one two three four five six seven eight")}
    ) as up:
        p = adapter(kind, up, client)
        got: list[Any] = []
        with trio.move_on_after(0.12):
            async with p.stream(req()) as events:
                async for e in events:
                    got.append(e)
        assert 0 < sum(isinstance(e, TextDelta) for e in got) < 8
        record = up.requests[-1]
        with trio.fail_after(2):
            await record.finished.wait()
        assert record.outcome == "client_disconnected"
        assert up.stats("s").client_disconnected == 1


@pytest.mark.parametrize("kind", KINDS)
async def test_cancel_while_waiting_for_headers(kind: str, client: httpx.AsyncClient) -> None:
    """Cancelling a call the server hangs on ends it promptly and the server sees it."""
    async with open_fake_upstream({"s": Scenario(faults=[Fault(kind="hang", rate=1.0)])}) as up:
        p = adapter(kind, up, client)
        with trio.move_on_after(0.1) as scope:
            await p.complete(req())
        assert scope.cancelled_caught
        with trio.fail_after(2):
            await up.requests[-1].finished.wait()
        assert up.requests[-1].outcome == "client_disconnected"


async def test_no_task_outlives_a_cancelled_stream(client: httpx.AsyncClient) -> None:
    """After a cancelled stream, only the test's own tasks remain."""
    async with open_fake_upstream({"s": Scenario(chunk_interval=0.05)}) as up:
        before = len(trio.lowlevel.current_root_task().child_nurseries[0].child_tasks)
        with trio.move_on_after(0.07):
            await collect(adapter("openai", up, client), req("a b c d e f"))
        await up.requests[-1].finished.wait()
        after = len(trio.lowlevel.current_root_task().child_nurseries[0].child_tasks)
    assert after == before


# --------------------------------------------------------------------------- secrets and fidelity


@pytest.mark.parametrize("kind", KINDS)
async def test_key_is_sent_but_never_shown(
    kind: str, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    """The key reaches the server in the right header and appears in no repr, error or log."""
    caplog.set_level(logging.DEBUG)
    fault = Fault(kind="status", status=401, rate=1.0)
    async with open_fake_upstream({"ok": Scenario(), "bad": Scenario(faults=[fault])}) as up:
        good = adapter(kind, up, client, "ok")
        await good.complete(req())
        headers = up.requests[-1].headers
        assert headers.get("authorization") == f"Bearer {KEY}" or headers.get("x-api-key") == KEY
        with pytest.raises(AuthenticationError) as info:
            await adapter(kind, up, client, "bad").complete(req())
    rendered = [repr(good), str(info.value), repr(info.value), repr(info.value.headers)]
    rendered += [r.getMessage() for r in caplog.records]
    assert all(KEY not in text for text in rendered)


@pytest.mark.parametrize("kind", KINDS)
@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(request=chat_requests(seed=False))
async def test_what_the_server_reads_is_what_the_caller_built(
    kind: str, request: ChatRequest
) -> None:
    """Invariant: over real sockets, the upstream decodes exactly the request the caller built."""
    async with open_fake_upstream() as up, httpx.AsyncClient() as client:
        p = adapter(kind, up, client)
        try:
            await p.complete(request)
        except LLMError:
            pass  # the reply does not matter here; what was received does
        body = up.requests[-1].body
    if kind == "openai":
        assert decode_openai_request(body) == request
    else:
        assert decode_anthropic_request(body) == anthropic_view(request)
