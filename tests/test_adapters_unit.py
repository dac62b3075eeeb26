"""Adapters in isolation: request translation, error mapping, stream translation.

These use ``httpx.MockTransport`` (the documented seam); the same behaviour over real
loopback sockets is proven in ``test_wire.py``.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from typing import Any

import httpx
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from providers import (
    AnthropicProvider,
    AuthenticationError,
    ChatRequest,
    ConnectionFailed,
    ContentFiltered,
    ContextLengthExceeded,
    Done,
    ForceTool,
    ImagePart,
    InvalidRequest,
    LLMError,
    Message,
    ModelNotFound,
    NotFound,
    OpenAIProvider,
    Overloaded,
    PermissionDenied,
    ProtocolError,
    QuotaExceeded,
    RateLimited,
    ResponseFormat,
    Secret,
    ServerError,
    Timeout,
    ToolCall,
    ToolSpec,
    UnsupportedFeature,
)
from providers._anthropic import AnthropicStreamTranslator
from providers._http import _MAX_URLS, surface_headers
from providers._openai import OpenAIStreamTranslator
from providers._sse import ServerSentEvent

KEY = "sk-test-SECRET-0123456789"

Handler = Callable[[httpx.Request], httpx.Response]


def openai_with(handler: Handler, **kw: Any) -> OpenAIProvider:
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return OpenAIProvider(api_key=Secret(KEY), base_url="http://up/v1", client=client, **kw)


def anthropic_with(handler: Handler) -> AnthropicProvider:
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return AnthropicProvider(api_key=Secret(KEY), base_url="http://up", client=client)


def req(**kw: Any) -> ChatRequest:
    kw.setdefault("messages", [Message.user("hi")])
    return ChatRequest(model="m", **kw)


WEATHER = ToolSpec(
    name="get_weather",
    description="Weather",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


# --------------------------------------------------------------------------- translation


def test_openai_body_translates_every_field() -> None:
    """The OpenAI body carries system, parts, images, tools, choice, format and limits."""
    p = OpenAIProvider(api_key=KEY)
    r = ChatRequest(
        model="gpt-4o-mini",
        messages=[
            Message.system("Be terse."),
            Message.user("What is this?", ImagePart.from_bytes(b"\x89PNG", "image/png")),
            Message.assistant(
                tool_calls=[ToolCall(id="c1", name="get_weather", arguments={"city": "P"})]
            ),
            Message.tool("c1", "18C"),
        ],
        max_tokens=50,
        temperature=0.2,
        stop=["END"],
        tools=[WEATHER],
        tool_choice=ForceTool(name="get_weather"),
        response_format=ResponseFormat.json_schema({"type": "object"}, name="x"),
        extra={"service_tier": "flex"},
    )
    body = p.build_body(r, stream=True)
    assert body["messages"][0] == {"role": "system", "content": "Be terse."}
    user = body["messages"][1]["content"]
    assert user[0] == {"type": "text", "text": "What is this?"}
    assert user[1]["image_url"]["url"] == "data:image/png;base64,iVBORw=="
    assistant = body["messages"][2]
    assert assistant["content"] is None
    assert assistant["tool_calls"][0]["function"] == {
        "name": "get_weather",
        "arguments": '{"city":"P"}',
    }
    assert body["messages"][3] == {"role": "tool", "tool_call_id": "c1", "content": "18C"}
    assert body["max_completion_tokens"] == 50
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert body["response_format"]["json_schema"]["name"] == "x"
    assert body["stream_options"] == {"include_usage": True}
    assert body["service_tier"] == "flex"
    assert "metadata" not in body


def test_anthropic_body_moves_system_and_groups_tool_results() -> None:
    """Anthropic gets a top-level system, tool results in one user turn, max_tokens filled."""
    p = AnthropicProvider(api_key=KEY)
    r = ChatRequest(
        model="claude",
        messages=[
            Message.system("Be terse."),
            Message.user("weather?", ImagePart.from_url("https://x/y.png")),
            Message.assistant(
                "Checking.",
                tool_calls=[
                    ToolCall(id="t1", name="get_weather", arguments={"city": "P"}),
                    ToolCall(id="t2", name="get_weather", arguments={"city": "L"}),
                ],
            ),
            Message.tool("t1", "18C"),
            Message.tool("t2", "oops", is_error=True),
        ],
        tools=[WEATHER],
        tool_choice="required",
        stop=["END"],
    )
    body = p.build_body(r, stream=False)
    assert body["system"] == "Be terse."
    assert body["max_tokens"] == AnthropicProvider.default_max_tokens
    assert body["messages"][0]["content"][1] == {
        "type": "image",
        "source": {"type": "url", "url": "https://x/y.png"},
    }
    assert [b["type"] for b in body["messages"][1]["content"]] == ["text", "tool_use", "tool_use"]
    results = body["messages"][2]
    assert results["role"] == "user"
    assert [b["tool_use_id"] for b in results["content"]] == ["t1", "t2"]
    assert results["content"][1]["is_error"] is True
    assert len(body["messages"]) == 3
    assert body["tool_choice"] == {"type": "any"}
    assert body["tools"][0]["input_schema"] == WEATHER.parameters
    assert body["stop_sequences"] == ["END"]


def test_anthropic_refuses_temperature_above_one() -> None:
    """A temperature Anthropic would reject is refused before sending, naming the range."""
    with pytest.raises(InvalidRequest, match="between 0 and 1"):
        AnthropicProvider(api_key=KEY).build_body(req(temperature=1.5), stream=False)


@pytest.mark.parametrize(
    ("request_", "error", "match"),
    [
        (ChatRequest(model="m", messages=[]), InvalidRequest, "no messages"),
        (req(max_tokens=0), InvalidRequest, "max_tokens must be positive"),
        (
            req(messages=[Message.user("a"), Message.system("late")]),
            InvalidRequest,
            "system messages must come before",
        ),
        (
            req(messages=[Message.user("a"), Message.tool("nope", "x")]),
            InvalidRequest,
            "no matching tool call",
        ),
        (req(messages=[Message.assistant("hi")]), InvalidRequest, "must be a user message"),
        (req(tool_choice=ForceTool(name="ghost"), tools=[WEATHER]), InvalidRequest, "ghost"),
    ],
)
async def test_invalid_requests_fail_before_any_network(
    request_: ChatRequest, error: type[LLMError], match: str
) -> None:
    """Bad requests raise a clear InvalidRequest and never reach the transport."""
    sent: list[httpx.Request] = []

    def handler(r: httpx.Request) -> httpx.Response:
        sent.append(r)
        return httpx.Response(200)

    with pytest.raises(error, match=match):
        await openai_with(handler).complete(request_)
    assert sent == []


async def test_image_to_a_target_without_vision_is_refused() -> None:
    """An image sent to a target whose capabilities lack vision is UnsupportedFeature."""
    from providers import Capabilities

    p = openai_with(lambda r: httpx.Response(200), capabilities=Capabilities(vision=False))
    with pytest.raises(UnsupportedFeature, match="images"):
        await p.complete(req(messages=[Message.user("x", ImagePart.from_url("https://a/b.png"))]))


# --------------------------------------------------------------------------- error matrix

OPENAI_ERRORS: list[tuple[int, dict[str, Any], dict[str, str], type[LLMError]]] = [
    (400, {"error": {"message": "bad", "type": "invalid_request_error"}}, {}, InvalidRequest),
    (401, {"error": {"message": "no", "code": "invalid_api_key"}}, {}, AuthenticationError),
    (403, {"error": {"message": "region"}}, {}, PermissionDenied),
    (
        404,
        {"error": {"message": "The model `x` does not exist", "code": "model_not_found"}},
        {},
        ModelNotFound,
    ),
    (404, {"error": {"message": "no such file"}}, {}, NotFound),
    (408, {"error": {"message": "slow"}}, {}, Timeout),
    (409, {"error": {"message": "conflict"}}, {}, ServerError),
    (413, {"error": {"message": "too big"}}, {}, InvalidRequest),
    (422, {"error": {"message": "unprocessable"}}, {}, InvalidRequest),
    (
        429,
        {"error": {"message": "slow down", "code": "rate_limit_exceeded"}},
        {"retry-after": "7"},
        RateLimited,
    ),
    (
        429,
        {"error": {"message": "quota", "type": "insufficient_quota", "code": "insufficient_quota"}},
        {},
        QuotaExceeded,
    ),
    (500, {"error": {"message": "boom", "type": "server_error"}}, {}, ServerError),
    (502, {}, {}, ServerError),
    (503, {"error": {"message": "overloaded"}}, {"retry-after-ms": "250"}, Overloaded),
    (504, {}, {}, ServerError),
    (400, {"error": {"message": "filtered", "code": "content_filter"}}, {}, ContentFiltered),
]


@pytest.mark.parametrize(("status", "body", "headers", "expected"), OPENAI_ERRORS)
async def test_openai_status_matrix(
    status: int, body: dict[str, Any], headers: dict[str, str], expected: type[LLMError]
) -> None:
    """Every status of the retry matrix maps to the right error, retry_after parsed."""
    p = openai_with(lambda r: httpx.Response(status, json=body, headers=headers))
    with pytest.raises(expected) as info:
        await p.complete(req())
    err = info.value
    assert type(err) is expected
    assert err.status_code == status
    assert err.provider == "openai"
    if "retry-after" in headers:
        assert err.retry_after == 7.0
    if "retry-after-ms" in headers:
        assert err.retry_after == 0.25


ANTHROPIC_ERRORS: list[tuple[int, str, str, type[LLMError]]] = [
    (400, "invalid_request_error", "bad", InvalidRequest),
    (
        400,
        "invalid_request_error",
        "prompt is too long: 210000 tokens > 200000 maximum",
        ContextLengthExceeded,
    ),
    (401, "authentication_error", "bad key", AuthenticationError),
    (402, "billing_error", "pay", QuotaExceeded),
    (403, "permission_error", "no", PermissionDenied),
    (404, "not_found_error", "model: claude-x", ModelNotFound),
    (413, "request_too_large", "big", InvalidRequest),
    (429, "rate_limit_error", "slow", RateLimited),
    (500, "api_error", "boom", ServerError),
    (504, "timeout_error", "slow", Timeout),
    (529, "overloaded_error", "Overloaded", Overloaded),
]


@pytest.mark.parametrize(("status", "etype", "message", "expected"), ANTHROPIC_ERRORS)
async def test_anthropic_status_matrix(
    status: int, etype: str, message: str, expected: type[LLMError]
) -> None:
    """Anthropic's error types map to the tree; request ids and retry-after kept."""
    body = {"type": "error", "error": {"type": etype, "message": message}, "request_id": "req_1"}
    p = anthropic_with(lambda r: httpx.Response(status, json=body, headers={"retry-after": "3"}))
    with pytest.raises(expected) as info:
        await p.complete(req())
    assert type(info.value) is expected
    assert info.value.request_id == "req_1"
    assert info.value.retry_after == 3.0
    if expected is ContextLengthExceeded:
        assert isinstance(info.value, ContextLengthExceeded)
        assert (info.value.limit, info.value.requested) == (200000, 210000)


async def test_openai_context_length_numbers_are_parsed() -> None:
    """ContextLengthExceeded carries the model's limit and the request's size."""
    msg = (
        "This model's maximum context length is 128000 tokens. However, your messages "
        "resulted in 130021 tokens. Please reduce the length of the messages."
    )
    body = {
        "error": {
            "message": msg,
            "type": "invalid_request_error",
            "code": "context_length_exceeded",
        }
    }
    p = openai_with(lambda r: httpx.Response(400, json=body))
    with pytest.raises(ContextLengthExceeded) as info:
        await p.complete(req())
    assert (info.value.limit, info.value.requested) == (128000, 130021)
    assert not info.value.retryable


async def test_x_should_retry_overrides_the_default() -> None:
    """A vendor's x-should-retry header decides retryability for that error."""
    p = openai_with(
        lambda r: httpx.Response(
            500, json={"error": {"message": "x"}}, headers={"x-should-retry": "false"}
        )
    )
    with pytest.raises(ServerError) as info:
        await p.complete(req())
    assert info.value.retryable is False
    assert ServerError.retryable is True


@pytest.mark.parametrize(
    "body", [b"not json", b"", b"<html>502 Bad Gateway</html>", b'{"error": 5}', b"[1,2]"]
)
async def test_non_json_error_bodies_still_map_by_status(body: bytes) -> None:
    """An error body that is not the vendor's JSON still gives a typed error, with a snippet."""
    p = openai_with(lambda r: httpx.Response(502, content=body))
    with pytest.raises(ServerError):
        await p.complete(req())


@pytest.mark.parametrize(
    "body",
    [
        b"{",
        b'{"choices": [',
        b'{"choices": "x"}',
        b'{"choices": []}',
        b"null",
        b'{"choices": [{"message": 3}]}',
    ],
)
async def test_malformed_success_bodies_are_protocol_errors(body: bytes) -> None:
    """A 200 whose body we cannot parse is a ProtocolError, never a KeyError or msgspec error."""
    p = openai_with(lambda r: httpx.Response(200, content=body))
    with pytest.raises(ProtocolError):
        await p.complete(req())


async def test_transport_failures_map_to_the_tree() -> None:
    """httpx connect and timeout failures become ConnectionFailed and Timeout."""

    def refuse(r: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=r)

    def slow(r: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=r)

    with pytest.raises(ConnectionFailed):
        await openai_with(refuse).complete(req())
    with pytest.raises(Timeout):
        await openai_with(slow).complete(req())


# --------------------------------------------------------------------------- secrets


async def test_key_never_appears_in_reprs_errors_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    """The API key appears in no repr, error message or log record, even if the vendor echoes it."""
    caplog.set_level(logging.DEBUG)
    seen_auth: list[str] = []

    def handler(r: httpx.Request) -> httpx.Response:
        seen_auth.append(r.headers["authorization"])
        return httpx.Response(
            401, json={"error": {"message": f"Incorrect API key provided: {KEY}"}}
        )

    p = openai_with(handler)
    with pytest.raises(AuthenticationError) as info:
        await p.complete(req())
    assert seen_auth == [f"Bearer {KEY}"]
    texts = [str(info.value), repr(info.value), repr(p), repr(Secret(KEY)), str(info.value.args)]
    texts += [r.getMessage() for r in caplog.records]
    for text in texts:
        assert KEY not in text
    assert "***" in str(info.value)


def test_secret_masks_every_rendering() -> None:
    """A Secret shows *** in str, repr and format, and refuses to be pickled."""
    import pickle

    s = Secret(KEY)
    assert KEY not in f"{s} {s!r} {s:>40} {[s]}"
    assert s.reveal() == KEY
    with pytest.raises(TypeError):
        pickle.dumps(s)


# --------------------------------------------------------------------------- stream translators


def sse(data: Any, event: str = "message") -> ServerSentEvent:
    return ServerSentEvent(
        event=event, data=data if isinstance(data, str) else msgspec.json.encode(data).decode()
    )


def chunk(
    delta: dict[str, Any] | None = None, finish: str | None = None, **kw: Any
) -> ServerSentEvent:
    choices = (
        []
        if delta is None and finish is None
        else [{"index": 0, "delta": delta or {}, "finish_reason": finish}]
    )
    return sse({"id": "c1", "model": "gpt", "choices": choices, **kw})


def run_openai(events: list[ServerSentEvent]) -> list[Any]:
    t = OpenAIStreamTranslator(provider="openai", model="gpt", headers={})
    out: list[Any] = []
    for e in events:
        if t.terminated:
            break
        out += t.feed(e)
    return out + t.finish()


def test_openai_stream_assembles_tool_call_fragments_per_index() -> None:
    """Argument fragments are concatenated per index; parallel calls stay apart."""
    events = [
        chunk({"role": "assistant", "content": ""}),
        chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "a",
                        "type": "function",
                        "function": {"name": "f", "arguments": ""},
                    }
                ]
            }
        ),
        chunk(
            {
                "tool_calls": [
                    {
                        "index": 1,
                        "id": "b",
                        "type": "function",
                        "function": {"name": "g", "arguments": '{"x"'},
                    }
                ]
            }
        ),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
        chunk({"tool_calls": [{"index": 1, "function": {"arguments": ": 1}"}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
        chunk({}, finish="stop"),  # forced tool choice may say "stop"
        chunk(None, usage={"prompt_tokens": 5, "completion_tokens": 7}),
        sse("[DONE]"),
    ]
    out = run_openai(events)
    done = out[-1]
    assert isinstance(done, Done)
    r = done.response
    assert [(c.id, c.name, c.arguments) for c in r.tool_calls] == [
        ("a", "f", {"city": "Paris"}),
        ("b", "g", {"x": 1}),
    ]
    assert r.finish_reason == "tool_calls"
    assert (r.usage.input_tokens, r.usage.output_tokens) == (5, 7)


def test_openai_stream_tolerates_azure_empty_first_chunk_and_filter_chunks() -> None:
    """Chunks with no choices or no delta (Azure filter results) are skipped safely."""
    events = [
        sse({"id": "", "model": "", "choices": [], "prompt_filter_results": [{"x": 1}]}),
        sse({"id": "c9", "model": "gpt", "choices": [{"index": 0, "content_filter_results": {}}]}),
        chunk({"content": "Hel"}),
        chunk({"content": "lo"}, obfuscation="zz"),
        chunk({}, finish="stop"),
        sse("[DONE]"),
    ]
    r = run_openai(events)[-1].response
    assert (r.text, r.id, r.finish_reason) == ("Hello", "c9", "stop")


def test_openai_in_stream_error_raises_typed_error() -> None:
    """A data payload with an error object raises a typed error, not a parse failure."""
    t = OpenAIStreamTranslator(provider="p", model="m", headers={})
    with pytest.raises(ServerError, match="exploded"):
        t.feed(sse({"error": {"message": "exploded", "type": "server_error"}}))


def test_openai_stream_without_terminator_is_a_protocol_error() -> None:
    """A stream that stops before finish_reason or [DONE] was cut short."""
    t = OpenAIStreamTranslator(provider="p", model="m", headers={})
    t.feed(chunk({"content": "partial"}))
    with pytest.raises(ProtocolError, match="ended before"):
        t.finish()


def test_anthropic_stream_full_event_order() -> None:
    """message_start … message_stop with ping, thinking, text and tool_use assemble correctly."""
    events = [
        sse(
            {
                "type": "message_start",
                "message": {
                    "id": "msg_1",
                    "model": "claude",
                    "content": [],
                    "usage": {
                        "input_tokens": 40,
                        "output_tokens": 1,
                        "cache_read_input_tokens": 100,
                    },
                },
            },
            "message_start",
        ),
        sse({"type": "ping"}, "ping"),
        sse(
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "thinking", "thinking": ""},
            },
            "content_block_start",
        ),
        sse(
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "thinking_delta", "thinking": "hmm"},
            },
            "content_block_delta",
        ),
        sse({"type": "content_block_stop", "index": 0}, "content_block_stop"),
        sse(
            {
                "type": "content_block_start",
                "index": 1,
                "content_block": {"type": "text", "text": ""},
            },
            "content_block_start",
        ),
        sse(
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "text_delta", "text": "Checking."},
            },
            "content_block_delta",
        ),
        sse({"type": "content_block_stop", "index": 1}, "content_block_stop"),
        sse(
            {
                "type": "content_block_start",
                "index": 2,
                "content_block": {
                    "type": "tool_use",
                    "id": "toolu_2",
                    "name": "get_weather",
                    "input": {},
                },
            },
            "content_block_start",
        ),
        sse(
            {
                "type": "content_block_delta",
                "index": 2,
                "delta": {"type": "input_json_delta", "partial_json": ""},
            },
            "content_block_delta",
        ),
        sse(
            {
                "type": "content_block_delta",
                "index": 2,
                "delta": {"type": "input_json_delta", "partial_json": '{"city": "Pa'},
            },
            "content_block_delta",
        ),
        sse(
            {
                "type": "content_block_delta",
                "index": 2,
                "delta": {"type": "input_json_delta", "partial_json": 'ris"}'},
            },
            "content_block_delta",
        ),
        sse({"type": "content_block_stop", "index": 2}, "content_block_stop"),
        sse({"type": "some_future_event"}, "some_future_event"),
        sse(
            {
                "type": "message_delta",
                "delta": {"stop_reason": "tool_use"},
                "usage": {"output_tokens": 10},
            },
            "message_delta",
        ),
        sse(
            {"type": "message_delta", "delta": {}, "usage": {"output_tokens": 22}}, "message_delta"
        ),
        sse({"type": "message_stop"}, "message_stop"),
    ]
    t = AnthropicStreamTranslator(provider="anthropic", model="claude", headers={"request-id": "r"})
    out: list[Any] = []
    for e in events:
        out += t.feed(e)
    out += t.finish()
    r = out[-1].response
    assert r.text == "Checking."
    assert r.reasoning == "hmm"
    assert r.tool_calls == [ToolCall(id="toolu_2", name="get_weather", arguments={"city": "Paris"})]
    assert r.finish_reason == "tool_calls"
    # cumulative output usage: the last message_delta wins; cache reads added to input
    assert (r.usage.input_tokens, r.usage.output_tokens, r.usage.cached_input_tokens) == (
        140,
        22,
        100,
    )
    assert r.request_id == "r"


def test_anthropic_in_stream_error_is_overloaded() -> None:
    """event: error with overloaded_error is the in-stream form of a 529."""
    t = AnthropicStreamTranslator(provider="a", model="m", headers={})
    with pytest.raises(Overloaded):
        t.feed(
            sse(
                {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
                "error",
            )
        )


@settings(max_examples=60, deadline=None)
@given(
    pieces=st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=12),
    args=st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=4),
    cuts=st.lists(st.integers(0, 200), max_size=5),
)
def test_openai_translator_reassembles_any_fragmentation(
    pieces: list[str], args: dict[str, Any], cuts: list[int]
) -> None:
    """Invariant: however text and argument JSON are fragmented, the response is the same."""
    raw = msgspec.json.encode(args).decode()
    bounds = sorted({min(c, len(raw)) for c in cuts} | {0, len(raw)})
    frags = [raw[a:b] for a, b in itertools.pairwise(bounds)]
    events = [chunk({"content": p}) for p in pieces]
    events.append(
        chunk({"tool_calls": [{"index": 0, "id": "x", "function": {"name": "f", "arguments": ""}}]})
    )
    events += [chunk({"tool_calls": [{"index": 0, "function": {"arguments": f}}]}) for f in frags]
    events += [chunk({}, finish="tool_calls"), sse("[DONE]")]
    r = run_openai(events)[-1].response
    assert r.text == "".join(pieces)
    assert r.tool_calls[0].arguments == args


async def test_openai_embeddings_and_models() -> None:
    """Embeddings come back in input order; models are listed."""

    def handler(r: httpx.Request) -> httpx.Response:
        if r.url.path.endswith("/embeddings"):
            return httpx.Response(
                200,
                json={
                    "object": "list",
                    "model": "e",
                    "data": [{"index": 1, "embedding": [2.0]}, {"index": 0, "embedding": [1.0]}],
                    "usage": {"prompt_tokens": 3, "total_tokens": 3},
                },
            )
        return httpx.Response(
            200,
            json={
                "object": "list",
                "data": [{"id": "gpt-4o", "object": "model", "owned_by": "system"}],
            },
        )

    from providers import EmbeddingRequest

    p = openai_with(handler)
    e = await p.embed(EmbeddingRequest(model="e", inputs=["a", "b"]))
    assert e.vectors == [[1.0], [2.0]]
    assert e.usage.input_tokens == 3
    assert [m.id for m in await p.list_models()] == ["gpt-4o"]


async def test_anthropic_has_no_embeddings() -> None:
    """Asking Anthropic for embeddings says so instead of sending anything."""
    from providers import EmbeddingRequest

    with pytest.raises(UnsupportedFeature, match="no embeddings"):
        await anthropic_with(lambda r: httpx.Response(500)).embed(
            EmbeddingRequest(model="x", inputs=["a"])
        )


def test_errors_are_picklable_with_their_attributes() -> None:
    """Errors survive pickling with provider, status and retry_after intact."""
    import pickle

    e = RateLimited("slow", provider="p", status_code=429, retry_after=2.0)
    e2 = pickle.loads(pickle.dumps(e))
    assert (type(e2), e2.provider, e2.status_code, e2.retry_after, str(e2)) == (
        RateLimited,
        "p",
        429,
        2.0,
        str(e),
    )


def test_parsed_endpoint_urls_are_reused_and_bounded() -> None:
    """Each endpoint URL is parsed once and reused (httpx parses string URLs on every
    request); per-model endpoints cannot grow the cache past its bound; query parameters
    still merge into the parsed URL."""
    provider = OpenAIProvider(
        api_key="sk-test", base_url="https://api.example.test/v1", client=httpx.AsyncClient()
    )
    first = provider._request("POST", "https://api.example.test/v1/chat/completions", {})
    again = provider._request("POST", "https://api.example.test/v1/chat/completions", {})
    assert str(first.url) == str(again.url) == "https://api.example.test/v1/chat/completions"
    assert len(provider._urls) == 1
    for i in range(_MAX_URLS + 10):
        request = provider._request(
            "POST", f"https://api.example.test/v1/models/m{i}:go", {}, params={"v": "1"}
        )
        assert str(request.url) == f"https://api.example.test/v1/models/m{i}:go?v=1"
        assert len(provider._urls) <= _MAX_URLS


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(
                [
                    "Retry-After",
                    "retry-after-ms",
                    "X-Request-ID",
                    "x-ratelimit-remaining-requests",
                    "Anthropic-RateLimit-Tokens-Reset",
                    "content-type",
                    "date",
                    "x-should-retry",
                ]
            ),
            st.text(st.characters(min_codepoint=0x21, max_codepoint=0x3FF), max_size=12),
        ),
        max_size=10,
    )
)
def test_surface_headers_reads_httpx_headers_as_their_mapping(
    pairs: list[tuple[str, str]],
) -> None:
    """Invariant: from an ``httpx.Headers``, surface_headers keeps exactly what it keeps
    from the same headers as a plain mapping (httpx's decoded, joined view), with
    lower-case names — the raw fast path changes nothing."""
    headers = httpx.Headers([(k.encode(), v.encode("utf-8")) for k, v in pairs])
    assert surface_headers(headers) == surface_headers(dict(headers.items()))
