"""The Ollama adapter over real loopback sockets against the fake upstream's Ollama dialect.

Every exchange goes through ``httpx`` to the trio HTTP server on 127.0.0.1; pure parts
(done reasons, the NDJSON stream) are also checked directly, and hypothesis checks that
what the server decodes is what the caller built.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx
import msgspec
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from providers import (
    AuthenticationError,
    ChatRequest,
    ContextLengthExceeded,
    Done,
    EmbeddingRequest,
    ForceTool,
    ImagePart,
    InvalidRequest,
    LLMError,
    Message,
    ModelNotFound,
    NDJSONDecoder,
    NotFound,
    OllamaProvider,
    Overloaded,
    ProtocolError,
    RateLimited,
    ReasoningDelta,
    ResponseFormat,
    Secret,
    ServerError,
    StreamEvent,
    StreamInterrupted,
    TextDelta,
    TextPart,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    ToolSpec,
    UnsupportedFeature,
    UsageEvent,
)
from providers._ollama import OllamaStreamTranslator, build_ollama_body, ollama_finish_reason
from providers.testing import (
    FakeUpstream,
    Fault,
    Scenario,
    check_provider,
    decode_ollama_request,
    open_fake_upstream,
)
from providers.testing._decode import sniff_image_type

from ._helpers import collect, one_fault
from .strategies import chat_requests, text

KEY = "ollama-cloud-SECRET-0123456789"
WEATHER = ToolSpec(
    name="get_weather",
    description="Weather in a city",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)

TIME = ToolSpec(name="get_time")


def ollama(
    up: FakeUpstream, client: httpx.AsyncClient, scenario: str = "s", **kw: Any
) -> OllamaProvider:
    return OllamaProvider(name="ollama", base_url=f"{up.url}/{scenario}", client=client, **kw)


def req(words: str = "hello ollama world", **kw: Any) -> ChatRequest:
    kw.setdefault("messages", [Message.system("Be terse."), Message.user(words)])
    return ChatRequest(model="llama3.2", **kw)


# --------------------------------------------------------------------------- happy paths


async def test_text_complete_and_stream_agree(
    upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    """Complete and stream give the same text and usage (from the done object)."""
    p = ollama(upstream, client)
    full = await p.complete(req())
    assert (full.text, full.finish_reason, full.raw_finish_reason) == (
        "echo: hello ollama world",
        "stop",
        "stop",
    )
    assert full.usage.output_tokens == 4
    assert full.usage.input_tokens > 0
    events = await collect(p, req())
    kinds = [type(e) for e in events]
    assert kinds == [TextDelta] * 4 + [UsageEvent, Done]
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == full.text
    assert events[-1].response.usage == full.usage


async def test_wire_shape_stream_flag_options_and_no_key(
    upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    """complete sends "stream": false (Ollama streams by default); sampling goes in options."""
    p = ollama(upstream, client, keep_alive="10m", num_ctx=8192)
    await p.complete(req(temperature=0.2, top_p=0.9, max_tokens=64, stop=["END"], seed=7))
    sent = upstream.requests[-1]
    assert sent.path == "/s/api/chat"
    assert "authorization" not in sent.headers
    assert sent.body == {
        "model": "llama3.2",
        "messages": [
            {"role": "system", "content": "Be terse."},
            {"role": "user", "content": "hello ollama world"},
        ],
        "options": {
            "temperature": 0.2,
            "top_p": 0.9,
            "num_predict": 64,
            "stop": ["END"],
            "seed": 7,
            "num_ctx": 8192,
        },
        "keep_alive": "10m",
        "stream": False,
    }
    await collect(p, req(extra={"options": {"top_k": 20}}))
    assert upstream.requests[-1].body["stream"] is True
    assert upstream.requests[-1].body["options"] == {"num_ctx": 8192, "top_k": 20}


async def test_omitted_counts_default_to_zero(client: httpx.AsyncClient) -> None:
    """A fully cached prompt has no prompt_eval_count at all: usage reads it as 0."""
    async with open_fake_upstream({"s": Scenario(cached_tokens=10_000)}) as up:
        p = ollama(up, client)
        full = await p.complete(req())
        done = (await collect(p, req()))[-1]
        raw = await up_chat(
            client, up, {"model": "m", "messages": [{"role": "user", "content": "x"}]}
        )
    assert "prompt_eval_count" not in raw.text.splitlines()[-1]
    assert full.usage.input_tokens == done.response.usage.input_tokens == 0
    assert full.usage.output_tokens == 4


async def up_chat(client: httpx.AsyncClient, up: FakeUpstream, body: Any) -> httpx.Response:
    return await client.post(f"{up.url}/s/api/chat", json=body)


async def test_tool_calls_arrive_whole_with_object_arguments(
    upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    """A tool call comes back whole (arguments an object), complete and streamed."""
    p = ollama(upstream, client)
    r = req("what is the weather? use get_weather", tools=[WEATHER])
    full = await p.complete(r)
    assert [(c.name, c.arguments) for c in full.tool_calls] == [("get_weather", {"city": "value"})]
    assert full.finish_reason == "tool_calls"
    events = await collect(p, r)
    kinds = [type(e) for e in events if not isinstance(e, UsageEvent)]
    assert kinds == [ToolCallStart, ToolCallDelta, ToolCallEnd, Done]
    end = next(e for e in events if isinstance(e, ToolCallEnd))
    assert events[-1].response.tool_calls == [end.call]
    assert events[-1].response.finish_reason == "tool_calls"
    second = await p.complete(
        req(
            messages=[
                Message.user("use get_weather"),
                full.message,
                Message.tool(full.tool_calls[0].id, "18C"),
            ],
            tools=[WEATHER],
        )
    )
    assert second.text == "tool result: 18C"
    messages = upstream.requests[-1].body["messages"]
    assert messages[1]["tool_calls"] == [
        {
            "id": full.tool_calls[0].id,
            "function": {"name": "get_weather", "arguments": {"city": "value"}},
        }
    ]
    assert messages[2] == {
        "role": "tool",
        "content": "18C",
        "tool_call_id": full.tool_calls[0].id,
        "tool_name": "get_weather",
    }


@pytest.mark.parametrize(
    ("choice", "offered"),
    [
        (None, ["get_weather", "get_time"]),
        ("auto", ["get_weather", "get_time"]),
        ("required", ["get_weather", "get_time"]),
        ("none", []),
        (ForceTool(name="get_time"), ["get_time"]),
    ],
)
async def test_tool_choice_is_honoured_by_what_is_offered(
    choice: Any, offered: list[str], upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    """Ollama has no tool_choice: "none" offers no tools, a forced tool is offered alone."""
    await ollama(upstream, client).complete(req(tools=[WEATHER, TIME], tool_choice=choice))
    body = upstream.requests[-1].body
    assert [t["function"]["name"] for t in body.get("tools", [])] == offered
    assert "tool_choice" not in body


async def test_images_are_bare_base64_on_the_message(
    upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    """Inline images and data: URLs go as a base64 list on the message; URLs are refused."""
    p = ollama(upstream, client)
    message = Message.user(
        "what is this?",
        ImagePart.from_bytes(b"\x89PNG\r\n\x1a\n", "image/png"),
        ImagePart(url="data:image/gif;base64,R0lGODlhAQABAAAAACw="),
    )
    await p.complete(req(messages=[message]))
    assert upstream.requests[-1].body["messages"][0] == {
        "role": "user",
        "content": "what is this?",
        "images": ["iVBORw0KGgo=", "R0lGODlhAQABAAAAACw="],
    }
    count = len(upstream.requests)
    with pytest.raises(UnsupportedFeature, match="inline images only"):
        await p.complete(
            req(messages=[Message.user("look", ImagePart.from_url("https://example.com/a.png"))])
        )
    assert len(upstream.requests) == count


async def test_format_carries_the_schema(upstream: FakeUpstream, client: httpx.AsyncClient) -> None:
    """A JSON Schema goes in "format" (JSON mode as "json"); the answer parses."""
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
    p = ollama(upstream, client)
    resp = await p.complete(req(response_format=ResponseFormat.json_schema(schema)))
    assert upstream.requests[-1].body["format"] == schema
    assert msgspec.json.decode(resp.text) == {"name": "value", "age": 1}
    resp = await p.complete(req(response_format=ResponseFormat.json_object()))
    assert upstream.requests[-1].body["format"] == "json"
    assert msgspec.json.decode(resp.text) == {"reply": "echo: hello ollama world"}


async def test_thinking_is_reasoning(upstream: FakeUpstream, client: httpx.AsyncClient) -> None:
    """A thinking budget turns "think" on; message.thinking is reasoning, streamed first."""
    p = ollama(upstream, client)
    full = await p.complete(req(thinking_budget=256))
    assert upstream.requests[-1].body["think"] is True
    assert full.reasoning
    events = await collect(p, req(thinking_budget=256))
    assert isinstance(events[0], ReasoningDelta)
    assert events[-1].response.reasoning == full.reasoning
    assert events[-1].response.text == full.text


async def test_embeddings_and_models(upstream: FakeUpstream, client: httpx.AsyncClient) -> None:
    """/api/embed gives one vector per input with usage; /api/tags lists the models."""
    p = ollama(upstream, client)
    e = await p.embed(EmbeddingRequest(model="nomic-embed-text", inputs=["a", "b"], dimensions=4))
    assert upstream.requests[-1].body == {
        "model": "nomic-embed-text",
        "input": ["a", "b"],
        "dimensions": 4,
    }
    assert [len(v) for v in e.vectors] == [4, 4]
    assert e.vectors[0] != e.vectors[1]
    assert e.usage.input_tokens == 2
    assert [m.id for m in await p.list_models()] == ["fake-model"]
    assert upstream.requests[-1].path == "/s/api/tags"


# --------------------------------------------------------------------------- errors

STATUS_MATRIX: list[tuple[int, type[LLMError]]] = [
    (400, InvalidRequest),
    (401, AuthenticationError),
    (404, ModelNotFound),
    (429, RateLimited),
    (500, ServerError),
    (502, ServerError),
    (503, Overloaded),
]


@pytest.mark.parametrize(("status", "expected"), STATUS_MATRIX)
async def test_status_matrix_over_the_wire(
    status: int, expected: type[LLMError], client: httpx.AsyncClient
) -> None:
    """Each status, with Ollama's {"error": "..."} body, maps to the right error."""
    async with open_fake_upstream(one_fault("status", status=status, retry_after=1.5)) as up:
        p = ollama(up, client)
        with pytest.raises(LLMError) as info:
            await p.complete(req())
        with pytest.raises(LLMError) as streamed:
            await collect(p, req())
    for err in (info.value, streamed.value):
        assert type(err) is expected, (status, err)
        assert err.status_code == status
        assert err.message  # the plain-string error, not the JSON around it
        assert not err.message.startswith("{")
    if status == 404:
        assert "try pulling it first" in info.value.message
    if status == 429:
        assert info.value.retry_after == 1.5


async def test_context_length_error(client: httpx.AsyncClient) -> None:
    """ "the input length exceeds the context length" is ContextLengthExceeded."""
    async with open_fake_upstream({"s": Scenario(context_window=10)}) as up:
        with pytest.raises(ContextLengthExceeded):
            await ollama(up, client).complete(req("x" * 400))


async def test_wrong_base_url_is_not_found(
    upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    """A plain-text "404 page not found" (a wrong base URL) is NotFound, not a missing model."""
    p = OllamaProvider(base_url=f"{upstream.url}/s/api/v2", client=client)
    with pytest.raises(NotFound) as info:
        await p.complete(req())
    assert type(info.value) is NotFound
    assert info.value.message == "404 page not found"


async def test_in_stream_error_line_before_and_after_content(client: httpx.AsyncClient) -> None:
    """An {"error"} line after content is StreamInterrupted; before it, a ServerError."""
    async with open_fake_upstream(one_fault("midstream_error", after_chunks=2)) as up:
        seen: list[Any] = []
        with pytest.raises(StreamInterrupted) as info:
            async with ollama(up, client).stream(req()) as events:
                async for e in events:
                    seen.append(e)
    assert sum(isinstance(e, TextDelta) for e in seen) == 2
    assert isinstance(info.value.__cause__, ServerError)
    assert "unexpected EOF" in str(info.value.__cause__)
    async with open_fake_upstream(one_fault("midstream_error", after_chunks=0)) as up:
        with pytest.raises(ServerError) as early:
            await collect(ollama(up, client), req())
    assert early.value.retryable


async def test_truncated_streams_are_protocol_errors(client: httpx.AsyncClient) -> None:
    """A body cut short is a ProtocolError before content, StreamInterrupted after."""
    async with open_fake_upstream(one_fault("truncate", after_chunks=0)) as up:
        with pytest.raises(ProtocolError):
            await collect(ollama(up, client), req())
    async with open_fake_upstream(one_fault("truncate", after_chunks=2)) as up:
        with pytest.raises(StreamInterrupted) as info:
            await collect(ollama(up, client), req())
    assert isinstance(info.value.__cause__, ProtocolError)


def test_clean_end_without_the_done_object_is_a_protocol_error() -> None:
    """A stream that ends cleanly but without "done": true was cut short."""
    translator = OllamaStreamTranslator(provider="o", model="m", headers={})
    line = b'{"model":"m","message":{"role":"assistant","content":"Hi"},"done":false}'
    assert translator.feed(line) == [TextDelta(text="Hi")]
    with pytest.raises(ProtocolError, match="done"):
        translator.finish()


async def test_malformed_bodies_are_protocol_errors(client: httpx.AsyncClient) -> None:
    """Broken JSON, whole or as a stream line, is a ProtocolError."""
    async with open_fake_upstream(one_fault("malformed", after_chunks=0)) as up:
        p = ollama(up, client)
        with pytest.raises(ProtocolError):
            await p.complete(req())
        with pytest.raises(ProtocolError):
            await collect(p, req())


async def test_slow_drip_still_parses(client: httpx.AsyncClient) -> None:
    """A stream written a few bytes at a time parses exactly like a fast one."""
    scenario = Scenario(faults=[Fault("slow_drip", rate=1.0, drip_bytes=5)], chunk_interval=0.0001)
    async with open_fake_upstream({"s": scenario}) as up:
        events = await collect(ollama(up, client), req())
    assert events[-1].response.text == "echo: hello ollama world"


# --------------------------------------------------------------------------- the fake's traps


async def test_the_fake_refuses_what_ollama_refuses(
    upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    """Content arrays, data: URL images and string arguments are 400s; no model is a 400."""
    user = {"role": "user", "content": "hi"}
    cases = [
        ({"messages": [user]}, "model is required"),
        (
            {"model": "m", "messages": [{"role": "user", "content": [{"type": "text"}]}]},
            "cannot unmarshal array",
        ),
        (
            {
                "model": "m",
                "messages": [{**user, "images": ["data:image/png;base64,iVBORw0KGgo="]}],
            },
            "illegal base64 data at input byte 4",
        ),
        (
            {
                "model": "m",
                "messages": [
                    user,
                    {
                        "role": "assistant",
                        "content": "",
                        "tool_calls": [{"function": {"name": "f", "arguments": '{"a": 1}'}}],
                    },
                ],
            },
            "cannot unmarshal string",
        ),
    ]
    for body, message in cases:
        r = await up_chat(client, upstream, body)
        assert r.status_code == 400, body
        assert message in r.json()["error"]
    r = await up_chat(client, upstream, {"model": "m", "messages": [user]})
    assert r.headers["content-type"] == "application/x-ndjson"  # streams unless told not to
    assert [msgspec.json.decode(line)["done"] for line in r.text.splitlines()][-1] is True


# --------------------------------------------------------------------------- cancellation, secrets


async def test_cancel_mid_stream_closes_the_connection(client: httpx.AsyncClient) -> None:
    """Cancelling mid-stream closes the response: the upstream records the disconnect."""
    scenario = Scenario(chunk_interval=0.05, reply="one two three four five six seven eight")
    async with open_fake_upstream({"s": scenario}) as up:
        got: list[Any] = []
        with trio.move_on_after(0.12):
            async with ollama(up, client).stream(req()) as events:
                async for e in events:
                    got.append(e)
        assert 0 < sum(isinstance(e, TextDelta) for e in got) < 8
        record = up.requests[-1]
        with trio.fail_after(2):
            await record.finished.wait()
        assert record.outcome == "client_disconnected"
        assert up.stats("s").client_disconnected == 1


async def test_cloud_key_is_sent_but_never_shown(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    """A key (ollama.com) goes as a Bearer token and appears in no repr, error or log."""
    caplog.set_level(logging.DEBUG)
    bad = Scenario(faults=[Fault(kind="status", status=401, rate=1.0)])
    async with open_fake_upstream({"ok": Scenario(), "bad": bad}) as up:
        good = ollama(up, client, "ok", api_key=Secret(KEY))
        await good.complete(req())
        sent = up.requests[-1]
        with pytest.raises(AuthenticationError) as info:
            await ollama(up, client, "bad", api_key=KEY).complete(req())
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    rendered = [repr(good), str(info.value), repr(info.value), repr(info.value.headers)]
    rendered += [r.getMessage() for r in caplog.records]
    assert all(KEY not in item for item in rendered)


async def test_passes_the_conformance_suite() -> None:
    """The shared adapter conformance suite passes against the fake's Ollama dialect."""
    ran = await check_provider(
        lambda *, base_url, api_key, client: OllamaProvider(
            api_key=api_key, base_url=base_url, client=client
        ),
        vendor="ollama",
        base_url_for=lambda up, scenario: f"{up.url}/{scenario}",
    )
    assert "cancellation" in ran


@pytest.mark.parametrize(
    ("raw", "calls", "expected"),
    [
        ("stop", False, "stop"),
        ("stop", True, "tool_calls"),
        (None, False, "stop"),
        ("length", False, "length"),
        ("load", False, "other"),
        ("unload", False, "other"),
    ],
)
def test_done_reasons_are_normalised(raw: str | None, calls: bool, expected: str) -> None:
    """Ollama's done_reason maps to one vocabulary; tool calls come with "stop"."""
    assert ollama_finish_reason(raw, has_tool_calls=calls) == expected


# --------------------------------------------------------------------------- properties


def inline_images(request: ChatRequest) -> ChatRequest:
    """The request with URL images replaced by inline ones (Ollama takes only those)."""

    def fix(m: Message) -> Message:
        if isinstance(m.content, str):
            return m
        parts = [
            ImagePart(data="iVBORw0KGgo=", media_type="image/png", detail=p.detail)
            if isinstance(p, ImagePart) and p.url is not None
            else p
            for p in m.content
        ]
        return msgspec.structs.replace(m, content=parts)

    return msgspec.structs.replace(request, messages=[fix(m) for m in request.messages])


def ollama_view(request: ChatRequest) -> ChatRequest:
    """What Ollama can carry: text then images (typed by their bytes), no tool_choice."""

    def carry(m: Message) -> Message:
        if isinstance(m.content, str) or m.role != "user":
            return m
        parts: list[Any] = [TextPart(text=m.text)] if m.text else []
        parts += [
            ImagePart(data=p.data, media_type=sniff_image_type(p.data or "")) for p in m.images
        ]
        return msgspec.structs.replace(m, content=parts)

    tools = request.tools
    if request.tool_choice == "none":
        tools = []
    elif isinstance(request.tool_choice, ForceTool):
        tools = [t for t in tools if t.name == request.tool_choice.name]
    return msgspec.structs.replace(
        request,
        messages=[carry(m) for m in request.messages],
        tools=tools,
        tool_choice=None,
    )


def json_roundtrip(body: dict[str, Any]) -> dict[str, Any]:
    decoded: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(body))
    return decoded


@settings(max_examples=60, deadline=None)
@given(chat_requests().map(inline_images))
def test_translation_round_trips(request: ChatRequest) -> None:
    """Invariant: decode_ollama(build_body(r)) == r, up to what Ollama cannot carry."""
    body = build_ollama_body(request, stream=False)
    assert decode_ollama_request(json_roundtrip(body)) == ollama_view(request)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(request=chat_requests().map(inline_images))
async def test_what_the_server_reads_is_what_the_caller_built(request: ChatRequest) -> None:
    """Invariant: over real sockets, the fake upstream accepts and decodes the caller's request."""
    async with open_fake_upstream() as up, httpx.AsyncClient() as client:
        await ollama(up, client).complete(request)
        sent = up.requests[-1]
    assert sent.status == 200
    assert decode_ollama_request(sent.body) == ollama_view(request)


def run_stream(pieces: list[bytes]) -> list[StreamEvent]:
    decoder = NDJSONDecoder()
    translator = OllamaStreamTranslator(provider="o", model="m", headers={})
    events: list[StreamEvent] = []
    for piece in pieces:
        for line in decoder.feed(piece):
            if not translator.terminated:
                events += translator.feed(line)
    for line in decoder.close():
        if not translator.terminated:
            events += translator.feed(line)
    return events + translator.finish()


@settings(max_examples=80, deadline=None)
@given(
    words=st.lists(text, min_size=1, max_size=6),
    cuts=st.lists(st.integers(0, 4096), max_size=16),
    counts=st.tuples(st.integers(0, 500), st.integers(0, 500)),
    crlf=st.booleans(),
)
def test_ndjson_stream_parses_the_same_however_it_is_split(
    words: list[str], cuts: list[int], counts: tuple[int, int], crlf: bool
) -> None:
    """Invariant: any split of an NDJSON stream (U+2028 and all) gives the same events."""
    lines: list[dict[str, Any]] = [
        {"model": "m", "message": {"role": "assistant", "content": w}, "done": False} for w in words
    ]
    done: dict[str, Any] = {"model": "m", "message": {"content": ""}, "done": True}
    done |= {"done_reason": "stop", "prompt_eval_count": counts[0], "eval_count": counts[1]}
    end = b"\r\n" if crlf else b"\n"
    body = b"".join(msgspec.json.encode(x) + end for x in [*lines, done])
    points = sorted({c % (len(body) + 1) for c in cuts})
    pieces = [body[a:b] for a, b in zip([0, *points], [*points, len(body)], strict=True)]
    whole = run_stream([body])
    assert run_stream(pieces) == whole
    final = whole[-1]
    assert isinstance(final, Done)
    assert final.response.text == "".join(words)
    assert (final.response.usage.input_tokens, final.response.usage.output_tokens) == counts
