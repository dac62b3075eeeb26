"""The Gemini adapter over real loopback sockets against the fake upstream's Gemini dialect.

Every exchange goes through ``httpx`` to the trio HTTP server on 127.0.0.1; pure parts
(finish reasons, error mapping, the CRLF stream) are also checked directly, and
hypothesis checks that what the server decodes is what the caller built.
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
    ContentFiltered,
    ContextLengthExceeded,
    Done,
    EmbeddingRequest,
    ForceTool,
    GeminiProvider,
    ImagePart,
    InvalidRequest,
    LLMError,
    Message,
    ModelNotFound,
    NotFound,
    Overloaded,
    PermissionDenied,
    ProtocolError,
    QuotaExceeded,
    RateLimited,
    ReasoningDelta,
    ResponseFormat,
    Secret,
    ServerError,
    SSEDecoder,
    StreamEvent,
    StreamInterrupted,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    ToolSpec,
    UnsupportedFeature,
    UsageEvent,
)
from providers._gemini import GeminiStreamTranslator, build_gemini_body, gemini_finish_reason
from providers.testing import (
    FakeUpstream,
    Fault,
    Scenario,
    check_provider,
    decode_gemini_request,
    open_fake_upstream,
)

from ._helpers import collect, one_fault
from .strategies import chat_requests, text

KEY = "AIza-gemini-SECRET-0123456789"
WEATHER = ToolSpec(
    name="get_weather",
    description="Weather in a city",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)

PNG = b"\x89PNG\r\n\x1a\n"


def gemini(
    up: FakeUpstream, client: httpx.AsyncClient, scenario: str = "s", **kw: Any
) -> GeminiProvider:
    kw.setdefault("api_key", Secret(KEY))
    return GeminiProvider(
        name="gemini", base_url=f"{up.url}/{scenario}/v1beta", client=client, **kw
    )


def req(words: str = "hello gemini world", **kw: Any) -> ChatRequest:
    kw.setdefault("messages", [Message.system("Be terse."), Message.user(words)])
    return ChatRequest(model="gemini-test", **kw)


# --------------------------------------------------------------------------- happy paths


async def test_text_complete_and_stream_agree(
    upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    """Complete and stream give the same text and usage; deltas join to the text."""
    p = gemini(upstream, client)
    full = await p.complete(req())
    assert (full.text, full.finish_reason, full.raw_finish_reason) == (
        "echo: hello gemini world",
        "stop",
        "STOP",
    )
    assert full.usage.output_tokens == 4
    assert full.usage.input_tokens > 0
    assert full.model == "gemini-test"
    events = await collect(p, req())
    done = events[-1]
    assert isinstance(done, Done)
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == full.text
    assert done.response.text == full.text
    assert done.response.usage == full.usage


async def test_wire_shape_system_instruction_roles_and_key(
    upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    """systemInstruction, user/model roles, the model in the path, the key in a header."""
    p = gemini(upstream, client)
    history = [
        Message.system("Be terse."),
        Message.user("hi"),
        Message.assistant("hello"),
        Message.user("again"),
    ]
    await p.complete(req(messages=history, temperature=0.5, max_tokens=64, stop=["END"], seed=3))
    sent = upstream.requests[-1]
    assert sent.path == "/s/v1beta/models/gemini-test:generateContent"
    assert sent.model == "gemini-test"
    assert sent.headers["x-goog-api-key"] == KEY
    assert KEY not in sent.query
    assert sent.body == {
        "systemInstruction": {"parts": [{"text": "Be terse."}]},
        "contents": [
            {"role": "user", "parts": [{"text": "hi"}]},
            {"role": "model", "parts": [{"text": "hello"}]},
            {"role": "user", "parts": [{"text": "again"}]},
        ],
        "generationConfig": {
            "temperature": 0.5,
            "maxOutputTokens": 64,
            "stopSequences": ["END"],
            "seed": 3,
        },
    }
    await collect(p, req())
    assert upstream.requests[-1].path.endswith(":streamGenerateContent")
    assert upstream.requests[-1].query == "alt=sse"


async def test_stream_is_crlf_framed_and_usage_comes_from_the_last_chunk(
    upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    """The raw stream is CRLF SSE with usage on every chunk; the adapter keeps the last."""
    body = build_gemini_body(req())
    url = f"{upstream.url}/s/v1beta/models/m:streamGenerateContent?alt=sse"
    raw = await client.post(url, headers={"x-goog-api-key": KEY}, json=body)
    assert raw.headers["content-type"].startswith("text/event-stream")
    blocks = [b for b in raw.text.split("\r\n\r\n") if b]
    assert all(b.startswith("data: ") and "\n" not in b for b in blocks)
    counts = [
        msgspec.json.decode(b[6:])["usageMetadata"].get("candidatesTokenCount", 0) for b in blocks
    ]
    assert len(set(counts)) > 1  # the counts grow: only the last is the total
    events = await collect(gemini(upstream, client), req())
    usages = [e.usage for e in events if isinstance(e, UsageEvent)]
    assert len(usages) == len(blocks)
    assert events[-1].response.usage == usages[-1]
    assert usages[-1].output_tokens == counts[-1] == 4


async def test_tool_calls_arrive_whole_with_object_arguments(
    upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    """A function call comes back whole (args an object), complete and streamed."""
    p = gemini(upstream, client)
    r = req("what is the weather? use get_weather", tools=[WEATHER])
    full = await p.complete(r)
    assert [(c.name, c.arguments) for c in full.tool_calls] == [("get_weather", {"city": "value"})]
    assert full.tool_calls[0].id.startswith("call_")
    assert full.finish_reason == "tool_calls"
    assert full.raw_finish_reason == "STOP"
    events = await collect(p, r)
    kinds = [type(e) for e in events if not isinstance(e, UsageEvent)]
    assert kinds == [ToolCallStart, ToolCallDelta, ToolCallEnd, Done]
    start, delta, end = (e for e in events if not isinstance(e, UsageEvent | Done))
    assert start.id == end.call.id
    assert msgspec.json.decode(delta.arguments) == {"city": "value"}
    assert events[-1].response.tool_calls == [end.call]
    assert events[-1].response.finish_reason == "tool_calls"
    declarations = upstream.requests[-1].body["tools"][0]["functionDeclarations"]
    assert declarations == [
        {
            "name": "get_weather",
            "description": "Weather in a city",
            "parametersJsonSchema": WEATHER.parameters,
        }
    ]


@pytest.mark.parametrize(
    ("choice", "config"),
    [
        ("auto", {"mode": "AUTO"}),
        ("none", {"mode": "NONE"}),
        ("required", {"mode": "ANY"}),
        (ForceTool(name="get_weather"), {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}),
    ],
)
async def test_tool_choice_becomes_function_calling_config(
    choice: Any, config: dict[str, Any], upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    """Each tool choice is sent as the matching functionCallingConfig."""
    resp = await gemini(upstream, client).complete(
        req("weather please", tools=[WEATHER], tool_choice=choice)
    )
    assert upstream.requests[-1].body["toolConfig"] == {"functionCallingConfig": config}
    assert bool(resp.tool_calls) == (choice != "none" and choice != "auto")


async def test_parallel_tool_results_go_back_in_one_turn(
    upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    """Results for a turn's calls share one user turn of functionResponse parts, by id."""
    calls = [
        ToolCall(id="call_a", name="get_weather", arguments={"city": "Paris"}),
        ToolCall(id="call_b", name="get_weather", arguments={"city": "Rome"}),
    ]
    history = [
        Message.user("weather in Paris and Rome"),
        Message.assistant(tool_calls=calls),
        Message.tool("call_a", "18C"),
        Message.tool("call_b", "boom", is_error=True),
    ]
    resp = await gemini(upstream, client).complete(req(messages=history, tools=[WEATHER]))
    assert resp.text == "tool result: 18C boom"
    contents = upstream.requests[-1].body["contents"]
    assert contents[1] == {
        "role": "model",
        "parts": [
            {"functionCall": {"id": "call_a", "name": "get_weather", "args": {"city": "Paris"}}},
            {"functionCall": {"id": "call_b", "name": "get_weather", "args": {"city": "Rome"}}},
        ],
    }
    assert contents[2] == {
        "role": "user",
        "parts": [
            {
                "functionResponse": {
                    "id": "call_a",
                    "name": "get_weather",
                    "response": {"output": "18C"},
                }
            },
            {
                "functionResponse": {
                    "id": "call_b",
                    "name": "get_weather",
                    "response": {"error": "boom"},
                }
            },
        ],
    }


async def test_thought_signatures_are_echoed_next_turn(
    upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    """A signed call's thoughtSignature goes back unchanged; calls Gemini never made get none."""
    p = gemini(upstream, client)
    r = req("use get_weather", tools=[WEATHER])
    first = await p.complete(r)
    streamed = next(e for e in await collect(p, r) if isinstance(e, ToolCallEnd)).call
    made_up = ToolCall(id="call_mine", name="get_weather", arguments={})
    history = [
        Message.user("use get_weather"),
        first.message,
        Message.tool(first.tool_calls[0].id, "1"),
        Message.assistant(tool_calls=[streamed]),
        Message.tool(streamed.id, "2"),
        Message.assistant(tool_calls=[made_up]),
        Message.tool("call_mine", "3"),
    ]
    await p.complete(req(messages=history, tools=[WEATHER]))
    contents = upstream.requests[-1].body["contents"]
    signatures = [
        part.get("thoughtSignature")
        for content in contents
        for part in content["parts"]
        if "functionCall" in part
    ]
    assert signatures[0]
    assert signatures[1]
    assert signatures[0] != signatures[1]
    assert signatures[2] is None


async def test_images_are_inline_data(upstream: FakeUpstream, client: httpx.AsyncClient) -> None:
    """Inline images and data: URLs become inlineData parts; nothing else is sent."""
    p = gemini(upstream, client)
    message = Message.user(
        "what is this?",
        ImagePart.from_bytes(PNG, "image/png"),
        ImagePart(url="data:image/jpeg;base64,/9j/4AAQ"),
    )
    await p.complete(req(messages=[message]))
    assert upstream.requests[-1].body["contents"][0]["parts"] == [
        {"text": "what is this?"},
        {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
        {"inlineData": {"mimeType": "image/jpeg", "data": "/9j/4AAQ"}},
    ]


async def test_image_urls_are_unsupported_before_sending(
    upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    """An http(s) image is UnsupportedFeature, raised before any request is sent."""
    p = gemini(upstream, client)
    assert not p.capabilities.image_urls
    r = req(messages=[Message.user("look", ImagePart.from_url("https://example.com/cat.png"))])
    with pytest.raises(UnsupportedFeature, match="inline images only"):
        await p.complete(r)
    with pytest.raises(UnsupportedFeature):
        await collect(p, r)
    assert upstream.requests == []


async def test_structured_output(upstream: FakeUpstream, client: httpx.AsyncClient) -> None:
    """JSON Schema goes as responseJsonSchema (or responseSchema) with the JSON mime type."""
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    fmt = ResponseFormat.json_schema(schema, name="person")
    resp = await gemini(upstream, client).complete(req(response_format=fmt))
    assert msgspec.json.decode(resp.text) == {"name": "value", "age": 1}
    assert upstream.requests[-1].body["generationConfig"] == {
        "responseMimeType": "application/json",
        "responseJsonSchema": schema,
    }
    legacy = gemini(upstream, client, json_schema=False)
    resp = await legacy.complete(req("use get_weather", response_format=fmt, tools=[WEATHER]))
    body = upstream.requests[-1].body
    # The OpenAPI subset: upper-case types, no additionalProperties (Gemini refuses it).
    assert body["generationConfig"]["responseSchema"] == {
        "type": "OBJECT",
        "properties": {"name": {"type": "STRING"}, "age": {"type": "INTEGER"}},
        "required": ["name", "age"],
    }
    assert "parameters" in body["tools"][0]["functionDeclarations"][0]
    resp = await gemini(upstream, client).complete(
        req(response_format=ResponseFormat.json_object())
    )
    assert upstream.requests[-1].body["generationConfig"] == {
        "responseMimeType": "application/json"
    }
    assert msgspec.json.decode(resp.text) == {"reply": "echo: hello gemini world"}


async def test_thinking_budget_streams_reasoning(
    upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    """A thinking budget asks for thoughts; thought parts are reasoning, counted as output."""
    p = gemini(upstream, client)
    r = req(thinking_budget=512)
    full = await p.complete(r)
    assert upstream.requests[-1].body["generationConfig"]["thinkingConfig"] == {
        "thinkingBudget": 512,
        "includeThoughts": True,
    }
    assert full.reasoning
    assert full.text == "echo: hello gemini world"
    assert full.usage.reasoning_tokens > 0
    assert full.usage.output_tokens == 4 + full.usage.reasoning_tokens
    events = await collect(p, r)
    assert isinstance(events[0], ReasoningDelta)
    assert events[-1].response.reasoning == full.reasoning


async def test_embeddings_single_and_batched(
    upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    """One input uses embedContent; more use batchEmbedContents in batches of 100."""
    p = gemini(upstream, client)
    one = await p.embed(EmbeddingRequest(model="gemini-embedding-001", inputs=["a"], dimensions=4))
    assert upstream.requests[-1].path.endswith("gemini-embedding-001:embedContent")
    assert upstream.requests[-1].body == {
        "content": {"parts": [{"text": "a"}]},
        "outputDimensionality": 4,
    }
    inputs = [f"text {i}" for i in range(150)]
    many = await p.embed(EmbeddingRequest(model="gemini-embedding-001", inputs=["a", *inputs]))
    batches = upstream.requests[-2:]
    assert [len(b.body["requests"]) for b in batches] == [100, 51]
    assert all(b.path.endswith(":batchEmbedContents") for b in batches)
    assert batches[0].body["requests"][0]["model"] == "models/gemini-embedding-001"
    assert len(many.vectors) == 151
    assert len(one.vectors[0]) == 4
    assert many.vectors[0][:4] != many.vectors[1][:4]
    again = await p.embed(EmbeddingRequest(model="gemini-embedding-001", inputs=["a", "b"]))
    assert again.vectors[0] == many.vectors[0]


async def test_models_are_listed_across_pages(client: httpx.AsyncClient) -> None:
    """list_models follows nextPageToken; ids lose the "models/" prefix."""
    names = [f"gemini-{i:04d}" for i in range(1005)]
    async with open_fake_upstream({"s": Scenario(models=names, context_window=32768)}) as up:
        models = await gemini(up, client).list_models()
        pages = [r.query for r in up.requests]
    assert [m.id for m in models] == names
    assert models[0].context_window == 32768
    assert len(pages) == 2
    assert "pageToken=" in pages[1]


# --------------------------------------------------------------------------- errors

STATUS_MATRIX: list[tuple[int, type[LLMError]]] = [
    (400, InvalidRequest),
    (401, AuthenticationError),
    (403, PermissionDenied),
    (404, ModelNotFound),
    (429, RateLimited),
    (500, ServerError),
    (503, Overloaded),
    (504, ServerError),
]


@pytest.mark.parametrize(("status", "expected"), STATUS_MATRIX)
async def test_status_matrix_over_the_wire(
    status: int, expected: type[LLMError], client: httpx.AsyncClient
) -> None:
    """Each status, in Google's error body, maps to the right error from complete and stream."""
    async with open_fake_upstream(one_fault("status", status=status, retry_after=2.5)) as up:
        p = gemini(up, client)
        with pytest.raises(LLMError) as info:
            await p.complete(req())
        with pytest.raises(LLMError) as streamed:
            await collect(p, req())
    for err in (info.value, streamed.value):
        assert type(err) is expected, (status, err)
        assert err.status_code == status
        assert err.provider == "gemini"
    if status == 429:
        # No retry-after header: the wait comes from the RetryInfo detail.
        assert "retry-after" not in info.value.headers
        assert info.value.retry_after == 2.5
        assert info.value.retryable


async def test_missing_key_is_a_400_api_key_invalid(client: httpx.AsyncClient) -> None:
    """No key: Gemini's 400 with reason API_KEY_INVALID is an AuthenticationError."""
    async with open_fake_upstream() as up:
        p = gemini(up, client, api_key=None)
        with pytest.raises(AuthenticationError) as info:
            await p.complete(req())
        with pytest.raises(AuthenticationError):
            await collect(p, req())
        assert "x-goog-api-key" not in up.requests[-1].headers
    assert info.value.status_code == 400
    assert "API key not valid" in info.value.message
    assert not info.value.retryable


async def test_context_window_error_carries_the_numbers(client: httpx.AsyncClient) -> None:
    """Gemini's "input token count (N) exceeds ... (L)" is ContextLengthExceeded(L, N)."""
    async with open_fake_upstream({"s": Scenario(context_window=10)}) as up:
        with pytest.raises(ContextLengthExceeded) as info:
            await gemini(up, client).complete(req("x" * 400))
    assert info.value.limit == 10
    assert info.value.requested is not None
    assert info.value.requested > 10


async def test_blocked_prompt_is_content_filtered(client: httpx.AsyncClient) -> None:
    """promptFeedback.blockReason without candidates is ContentFiltered, both ways."""
    async with open_fake_upstream(one_fault("content_filter", after_chunks=0)) as up:
        p = gemini(up, client)
        with pytest.raises(ContentFiltered, match="SAFETY"):
            await p.complete(req())
        with pytest.raises(ContentFiltered, match="SAFETY"):
            await collect(p, req())
        assert [r.fault for r in up.requests] == ["content_filter"] * 2


async def test_safety_stop_after_some_output(client: httpx.AsyncClient) -> None:
    """A SAFETY finish after some text keeps the text, with finish_reason content_filter."""
    reply = "one two three four five"
    scenarios = {
        "s": Scenario(reply=reply, faults=[Fault("content_filter", rate=1.0, after_chunks=2)])
    }
    async with open_fake_upstream(scenarios) as up:
        p = gemini(up, client)
        full = await p.complete(req())
        events = await collect(p, req())
    assert (full.text, full.finish_reason, full.raw_finish_reason) == (
        "one two",
        "content_filter",
        "SAFETY",
    )
    assert events[-1].response.text == "one two"
    assert events[-1].finish_reason == "content_filter"


async def test_in_stream_error_before_and_after_content(client: httpx.AsyncClient) -> None:
    """An error chunk after content is StreamInterrupted; before it, a retryable ServerError."""
    async with open_fake_upstream(one_fault("midstream_error", after_chunks=2)) as up:
        seen: list[Any] = []
        with pytest.raises(StreamInterrupted) as info:
            async with gemini(up, client).stream(req()) as events:
                async for e in events:
                    seen.append(e)
    assert sum(isinstance(e, TextDelta) for e in seen) == 2
    assert isinstance(info.value.__cause__, ServerError)
    async with open_fake_upstream(one_fault("midstream_error", after_chunks=0)) as up:
        with pytest.raises(ServerError) as early:
            await collect(gemini(up, client), req())
    assert early.value.retryable


async def test_truncated_streams_are_protocol_errors(client: httpx.AsyncClient) -> None:
    """A body cut short is a ProtocolError before content, StreamInterrupted after."""
    async with open_fake_upstream(one_fault("truncate", after_chunks=0)) as up:
        with pytest.raises(ProtocolError):
            await collect(gemini(up, client), req())
    async with open_fake_upstream(one_fault("truncate", after_chunks=2)) as up:
        with pytest.raises(StreamInterrupted) as info:
            await collect(gemini(up, client), req())
    assert isinstance(info.value.__cause__, ProtocolError)


def test_clean_end_without_a_finish_reason_is_a_protocol_error() -> None:
    """Gemini has no terminator: a stream that ends before any finishReason was cut short."""
    translator = GeminiStreamTranslator(provider="g", model="m", headers={})
    decoder = SSEDecoder()
    chunk = {"candidates": [{"content": {"role": "model", "parts": [{"text": "Hi"}]}}]}
    for item in decoder.feed(b"data: " + msgspec.json.encode(chunk) + b"\r\n\r\n"):
        assert translator.feed(item) == [TextDelta(text="Hi")]
    with pytest.raises(ProtocolError, match="finishReason"):
        translator.finish()


async def test_malformed_bodies_are_protocol_errors(client: httpx.AsyncClient) -> None:
    """Broken JSON, whole or in a stream chunk, is a ProtocolError."""
    async with open_fake_upstream(one_fault("malformed", after_chunks=0)) as up:
        p = gemini(up, client)
        with pytest.raises(ProtocolError):
            await p.complete(req())
        with pytest.raises(ProtocolError):
            await collect(p, req())


async def test_wrong_base_url_is_not_found(
    upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    """Google's HTML 404 for an unknown path is NotFound, not a missing model."""
    p = GeminiProvider(api_key=KEY, base_url=f"{upstream.url}/s/v1beta/oops", client=client)
    with pytest.raises(NotFound) as info:
        await p.complete(req())
    assert type(info.value) is NotFound
    assert "404" in info.value.message


async def test_slow_drip_splits_crlf_pairs_and_still_parses(client: httpx.AsyncClient) -> None:
    """A stream written 3 bytes at a time (CR and LF land in different reads) parses the same."""
    scenario = Scenario(
        reply="drip", faults=[Fault("slow_drip", rate=1.0, drip_bytes=3)], chunk_interval=0.0001
    )
    async with open_fake_upstream({"s": scenario}) as up:
        events = await collect(gemini(up, client), req())
    assert events[-1].response.text == "drip"
    assert events[-1].response.usage.output_tokens == 1


# --------------------------------------------------------------------------- cancellation, secrets


async def test_cancel_mid_stream_closes_the_connection(client: httpx.AsyncClient) -> None:
    """Cancelling mid-stream closes the response: the upstream records the disconnect."""
    scenario = Scenario(chunk_interval=0.05, reply="one two three four five six seven eight")
    async with open_fake_upstream({"s": scenario}) as up:
        got: list[Any] = []
        with trio.move_on_after(0.12):
            async with gemini(up, client).stream(req()) as events:
                async for e in events:
                    got.append(e)
        assert 0 < sum(isinstance(e, TextDelta) for e in got) < 8
        record = up.requests[-1]
        with trio.fail_after(2):
            await record.finished.wait()
        assert record.outcome == "client_disconnected"
        assert up.stats("s").client_disconnected == 1


async def test_key_is_sent_but_never_shown(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    """The key travels only in x-goog-api-key, never in a URL, repr, error or log line."""
    caplog.set_level(logging.DEBUG)
    bad = Scenario(faults=[Fault(kind="status", status=400, rate=1.0)])
    async with open_fake_upstream({"ok": Scenario(), "bad": bad}) as up:
        good = gemini(up, client, "ok")
        await good.complete(req())
        sent = up.requests[-1]
        with pytest.raises(InvalidRequest) as info:
            await gemini(up, client, "bad").complete(req())
    assert sent.headers["x-goog-api-key"] == KEY
    rendered = [repr(good), str(info.value), repr(info.value), repr(info.value.headers)]
    rendered += [sent.path, sent.query] + [r.getMessage() for r in caplog.records]
    assert all(KEY not in item for item in rendered)


async def test_passes_the_conformance_suite() -> None:
    """The shared adapter conformance suite passes against the fake's Gemini dialect."""
    ran = await check_provider(
        lambda *, base_url, api_key, client: GeminiProvider(
            api_key=api_key, base_url=base_url, client=client
        ),
        vendor="gemini",
        base_url_for=lambda up, scenario: f"{up.url}/{scenario}/v1beta",
    )
    assert "cancellation" in ran


# --------------------------------------------------------------------------- pure mapping


@pytest.mark.parametrize(
    ("raw", "calls", "expected"),
    [
        ("STOP", False, "stop"),
        ("STOP", True, "tool_calls"),
        (None, False, "stop"),
        ("MAX_TOKENS", False, "length"),
        ("SAFETY", False, "content_filter"),
        ("RECITATION", False, "content_filter"),
        ("PROHIBITED_CONTENT", False, "content_filter"),
        ("MALFORMED_FUNCTION_CALL", False, "error"),
        ("LANGUAGE", False, "other"),
        ("FINISH_REASON_UNSPECIFIED", False, "other"),
    ],
)
def test_finish_reasons_are_normalised(raw: str | None, calls: bool, expected: str) -> None:
    """Gemini's finish reasons map to one vocabulary; calls come back with STOP."""
    assert gemini_finish_reason(raw, has_tool_calls=calls) == expected


def google_error(status: str, code: int, message: str, *details: Any) -> bytes:
    body = {"error": {"code": code, "message": message, "status": status, "details": details}}
    return msgspec.json.encode(body)


@pytest.mark.parametrize(
    ("status", "body", "headers", "expected", "retry_after"),
    [
        (
            400,
            google_error(
                "INVALID_ARGUMENT",
                400,
                "API key expired. Please renew the API key.",
                {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"},
            ),
            {},
            AuthenticationError,
            None,
        ),
        (
            400,
            google_error("FAILED_PRECONDITION", 400, "User location is not supported."),
            {},
            PermissionDenied,
            None,
        ),
        (
            400,
            google_error("FAILED_PRECONDITION", 400, "Please enable billing for this project."),
            {},
            QuotaExceeded,
            None,
        ),
        (
            429,
            google_error(
                "RESOURCE_EXHAUSTED",
                429,
                "quota",
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37s"},
            ),
            {"retry-after": "5"},
            RateLimited,
            5.0,  # a header, when there is one, wins over the detail
        ),
        (500, b"<html>oops</html>", {}, ServerError, None),
        (502, b"", {}, ServerError, None),
    ],
)
def test_error_mapping_in_one_place(
    status: int,
    body: bytes,
    headers: dict[str, str],
    expected: type[LLMError],
    retry_after: float | None,
) -> None:
    """_map_error reads google.rpc status, ErrorInfo reasons and RetryInfo details."""
    err = GeminiProvider(api_key=KEY)._map_error(status, headers, body)
    assert type(err) is expected
    assert err.retry_after == retry_after
    assert err.status_code == status


# --------------------------------------------------------------------------- properties


def inline_images(request: ChatRequest) -> ChatRequest:
    """The request with URL images replaced by inline ones (Gemini takes only those)."""

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


def gemini_view(request: ChatRequest) -> ChatRequest:
    """What Gemini can carry: no image detail."""

    def strip(m: Message) -> Message:
        if isinstance(m.content, str):
            return m
        parts = [
            msgspec.structs.replace(p, detail=None) if isinstance(p, ImagePart) else p
            for p in m.content
        ]
        return msgspec.structs.replace(m, content=parts)

    return msgspec.structs.replace(request, messages=[strip(m) for m in request.messages])


def json_roundtrip(body: dict[str, Any]) -> dict[str, Any]:
    decoded: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(body))
    return decoded


@settings(max_examples=60, deadline=None)
@given(chat_requests().map(inline_images))
def test_translation_round_trips(request: ChatRequest) -> None:
    """Invariant: decode_gemini(build_body(r)) == r, up to what Gemini cannot carry."""
    body = build_gemini_body(request)
    decoded = decode_gemini_request(json_roundtrip(body), model=request.model)
    assert decoded == gemini_view(request)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(request=chat_requests().map(inline_images))
async def test_what_the_server_reads_is_what_the_caller_built(request: ChatRequest) -> None:
    """Invariant: over real sockets, the fake upstream accepts and decodes the caller's request."""
    async with open_fake_upstream() as up, httpx.AsyncClient() as client:
        resp = await gemini(up, client).complete(request)
        sent = up.requests[-1]
    assert sent.status == 200, resp
    assert decode_gemini_request(sent.body, model=sent.model or "") == gemini_view(request)


def run_stream(pieces: list[bytes]) -> list[StreamEvent]:
    decoder = SSEDecoder()
    translator = GeminiStreamTranslator(provider="g", model="m", headers={})
    events: list[StreamEvent] = []
    for piece in pieces:
        for item in decoder.feed(piece):
            events += translator.feed(item)
    for item in decoder.close():
        events += translator.feed(item)
    return events + translator.finish()


@settings(max_examples=80, deadline=None)
@given(
    words=st.lists(text, min_size=1, max_size=6),
    cuts=st.lists(st.integers(0, 4096), max_size=16),
    prompt=st.integers(1, 500),
)
def test_crlf_stream_parses_the_same_however_it_is_split(
    words: list[str], cuts: list[int], prompt: int
) -> None:
    """Invariant: any split of a CRLF Gemini stream gives the same events; the last usage wins."""
    chunks: list[dict[str, Any]] = [
        {
            "candidates": [{"content": {"role": "model", "parts": [{"text": w}]}, "index": 0}],
            "usageMetadata": {"promptTokenCount": prompt, "candidatesTokenCount": i + 1},
        }
        for i, w in enumerate(words)
    ]
    chunks.append(
        {
            "candidates": [{"finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": prompt, "candidatesTokenCount": 99},
        }
    )
    body = b"".join(b"data: " + msgspec.json.encode(c) + b"\r\n\r\n" for c in chunks)
    points = sorted({c % (len(body) + 1) for c in cuts})
    pieces = [body[a:b] for a, b in zip([0, *points], [*points, len(body)], strict=True)]
    whole = run_stream([body])
    assert run_stream(pieces) == whole
    done = whole[-1]
    assert isinstance(done, Done)
    assert done.response.text == "".join(words)
    assert (done.response.usage.input_tokens, done.response.usage.output_tokens) == (prompt, 99)
