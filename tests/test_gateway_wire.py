"""The gateway's translation, without sockets: request bodies in, replies and streams out,
errors to statuses, and the deadline on virtual time through ``Gateway.handle``.

The wire tests (real sockets, the SDKs) are in tests/test_gateway.py.
"""

from __future__ import annotations

import itertools
import re
from contextlib import AsyncExitStack
from typing import Any

import msgspec
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

import router.errors as errors_module
from providers import (
    ChatResponse,
    Done,
    ForceTool,
    ImagePart,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    Usage,
    UsageEvent,
)
from router import open_router
from router._tools._gateway import Gateway, Inbound, failure
from router._tools._gateway_anthropic import EventEncoder, decode_messages, encode_message
from router._tools._gateway_openai import ChunkEncoder, decode_chat, encode_completion
from router._tools._gateway_wire import BadRequest
from router.config import ProviderConfig, RouterConfig
from router.errors import (
    AllProvidersFailed,
    BudgetExceeded,
    LLMError,
    RateLimited,
    ServerError,
)
from router.testing import MockProvider, MockResponse
from tests.strategies import arguments, names

# --------------------------------------------------------------------------- strategies


@st.composite
def responses(draw: st.DrawFn) -> ChatResponse:
    """A whole answer: text, tool calls, a finish reason and usage."""
    calls = [
        ToolCall(id=f"call_{i}", name=draw(names), arguments=draw(arguments))
        for i in range(draw(st.integers(0, 3)))
    ]
    return ChatResponse(
        id="r",
        model="gpt-4o-mini",
        provider="oa",
        text=draw(st.text(max_size=40)),
        tool_calls=calls,
        finish_reason=draw(st.sampled_from(["stop", "length", "tool_calls", "content_filter"])),
        usage=Usage(input_tokens=draw(st.integers(0, 99)), output_tokens=draw(st.integers(0, 99))),
    )


def pieces(draw: st.DrawFn, whole: str) -> list[str]:
    """``whole`` cut at drawn points (the pieces join to it)."""
    cuts = sorted(draw(st.sets(st.integers(0, len(whole)), max_size=5)))
    bounds = [0, *cuts, len(whole)]
    return [whole[a:b] for a, b in itertools.pairwise(bounds)]


@st.composite
def streams(draw: st.DrawFn) -> tuple[ChatResponse, list[StreamEvent]]:
    """An answer and a stream of it as an adapter might send it: text in pieces, each tool
    call streamed (start, fragments, end), or only ended, or only in the final answer."""
    response = draw(responses())
    events: list[StreamEvent] = [TextDelta(text=p) for p in pieces(draw, response.text)]
    for i, call in enumerate(response.tool_calls):
        how = draw(st.sampled_from(["streamed", "ended", "done only"]))
        if how == "streamed":
            events.append(ToolCallStart(index=i, id=call.id, name=call.name))
            encoded = msgspec.json.encode(call.arguments).decode()
            events += [ToolCallDelta(index=i, arguments=p) for p in pieces(draw, encoded)]
            events.append(ToolCallEnd(index=i, call=call))
        elif how == "ended":
            events.append(ToolCallEnd(index=i, call=call))
    events.append(UsageEvent(usage=response.usage))
    events.append(Done(response=response))
    return response, events


def sse_payloads(raw: bytes) -> list[bytes]:
    """The ``data:`` payloads of an unnamed-event SSE body."""
    assert raw.endswith(b"\n\n")
    out = []
    for event in raw.split(b"\n\n")[:-1]:
        assert event.startswith(b"data: ")
        assert b"\n" not in event
        out.append(event[6:])
    return out


# --------------------------------------------------------------------------- OpenAI


@given(streams(), st.booleans())
def test_an_openai_stream_joins_to_the_completion(
    stream: tuple[ChatResponse, list[StreamEvent]], include_usage: bool
) -> None:
    """Invariant: however an answer is streamed, the chunks the gateway sends join (the
    content, each call's id, name and arguments by index) to the non-streamed message,
    with the same finish reason; framing: role chunk first, usage chunk only with
    include_usage (and ``usage: null`` before it), ``data: [DONE]`` last."""
    response, events = stream
    encoder = ChunkEncoder("c", "oa:gpt-4o-mini", include_usage=include_usage)
    raw = encoder.start() + b"".join(encoder.event(e) for e in events)
    payloads = sse_payloads(raw)
    assert payloads[-1] == b"[DONE]"
    chunks = [msgspec.json.decode(p) for p in payloads[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    if include_usage:
        assert chunks[-1]["choices"] == []
        assert chunks[-1]["usage"]["completion_tokens"] == response.usage.output_tokens
        assert all(c["usage"] is None for c in chunks[:-1])
        chunks = chunks[:-1]
    else:
        assert all("usage" not in c for c in chunks)
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    calls: dict[int, dict[str, str]] = {}
    for c in chunks:
        for d in c["choices"][0]["delta"].get("tool_calls", []):
            if "id" in d:
                assert d["index"] == len(calls)  # indexes 0, 1, ... in order of appearance
                calls[d["index"]] = {"id": d["id"], "name": d["function"]["name"], "args": ""}
            calls[d["index"]]["args"] += d["function"]["arguments"]
    finishes = [c["choices"][0]["finish_reason"] for c in chunks]
    assert finishes[:-1] == [None] * (len(finishes) - 1)
    message = msgspec.json.decode(encode_completion(response, "c"))["choices"][0]
    assert content == (message["message"]["content"] or "")
    whole = [
        (t["id"], t["function"]["name"], msgspec.json.decode(t["function"]["arguments"]))
        for t in message["message"].get("tool_calls", [])
    ]
    streamed = sorted(
        (c["id"], c["name"], msgspec.json.decode(c["args"] or "{}")) for c in calls.values()
    )
    assert streamed == sorted(whole, key=lambda t: t[0])
    assert finishes[-1] == message["finish_reason"]


def body(**fields: Any) -> bytes:
    base: dict[str, Any] = {"model": "fast", "messages": [{"role": "user", "content": "hi"}]}
    return msgspec.json.encode({**base, **fields})


@pytest.mark.parametrize(
    ("fields", "says", "param"),
    [
        ({"n": 2}, "n must be 1", "n"),
        ({"presence_penalty": 0.5}, "presence_penalty", "presence_penalty"),
        ({"bogus": 1}, "unknown field `bogus`", "bogus"),
        ({"max_tokens": "x"}, "`$.max_tokens`", "max_tokens"),
        ({"stream_options": {"include_usage": True}}, "only allowed when stream", "stream_options"),
        (
            {"messages": [{"role": "tool", "content": "x"}]},
            "tool_call_id",
            "messages[0].tool_call_id",
        ),
        (
            {"messages": [{"role": "function", "content": "x"}]},
            "`function` role",
            "messages[0].role",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "file", "file": {}}]}]},
            "type `file`",
            "messages[0].content",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "ftp://x"}}],
                    }
                ]
            },
            "http(s)",
            "messages[0].content",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "bad name"}}]},
            "tool name",
            "tools[0].function",
        ),
        (
            {"response_format": {"type": "json_schema"}},
            "json_schema.schema",
            "response_format.json_schema",
        ),
        ({"metadata": {str(i): "v" for i in range(17)}}, "16 pairs", "metadata"),
    ],
)
def test_openai_bodies_the_vendor_refuses_are_a_400_naming_the_field(
    fields: dict[str, Any], says: str, param: str | None
) -> None:
    """Each mistake is a BadRequest (a 400) whose message and ``param`` name the field."""
    with pytest.raises(BadRequest) as caught:
        decode_chat(body(**fields), request_id="gw-1")
    assert says in caught.value.message
    assert caught.value.param == param
    assert caught.value.status == 400


def test_an_openai_body_becomes_the_routers_request() -> None:
    """Roles, parts, tools, tool choice, response format, user and metadata all land
    where the router reads them; the gateway's request id wins in the metadata."""
    call = decode_chat(
        body(
            messages=[
                {"role": "developer", "content": "Be terse."},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is this?"},
                        {
                            "type": "image_url",
                            "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="},
                        },
                    ],
                },
                {
                    "role": "assistant",
                    "content": None,
                    "refusal": None,
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "f", "arguments": '{"a": 1}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "42"},
            ],
            tools=[{"type": "function", "function": {"name": "f"}}],
            tool_choice={"type": "function", "function": {"name": "f"}},
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "n", "schema": {"type": "object"}},
            },
            max_completion_tokens=50,
            stop="END",
            stream=True,
            user="alice",
            metadata={"team": "x", "request_id": "spoofed"},
            store=True,
        ),
        request_id="gw-7",
    )
    request = call.request
    assert call.stream
    assert not call.include_usage
    assert [m.role for m in request.messages] == ["system", "user", "assistant", "tool"]
    assert isinstance(request.messages[1].parts[1], ImagePart)
    assert request.messages[1].parts[1].media_type == "image/png"
    assert request.messages[2].tool_calls == [ToolCall(id="c1", name="f", arguments={"a": 1})]
    assert request.tool_choice == ForceTool(name="f")
    assert request.response_format is not None
    assert request.response_format.schema == {"type": "object"}
    assert request.max_tokens == 50
    assert request.stop == ["END"]
    assert request.metadata == {"team": "x", "request_id": "gw-7", "user": "alice"}


# --------------------------------------------------------------------------- Anthropic

_GRAMMAR = re.compile(
    r"message_start( content_block_start( content_block_delta)* content_block_stop)*"
    r" message_delta message_stop"
)


@given(streams())
def test_an_anthropic_stream_keeps_the_event_order_and_joins_to_the_message(
    stream: tuple[ChatResponse, list[StreamEvent]],
) -> None:
    """Invariant: the events follow Anthropic's grammar (message_start, blocks that never
    overlap with indexes 0, 1, ..., message_delta, message_stop) and their text and
    tool inputs join to the non-streamed message's content, with the same stop reason."""
    response, events = stream
    encoder = EventEncoder("m", "oa:gpt-4o-mini")
    raw = encoder.start() + b"".join(encoder.event(e) for e in events)
    parsed = []
    for event in raw.split(b"\n\n")[:-1]:
        name_line, data_line = event.split(b"\n")
        name = name_line.removeprefix(b"event: ").decode()
        data = msgspec.json.decode(data_line.removeprefix(b"data: "))
        assert data["type"] == name
        parsed.append(data)
    assert _GRAMMAR.fullmatch(" ".join(d["type"] for d in parsed))
    starts = [d["index"] for d in parsed if d["type"] == "content_block_start"]
    assert starts == list(range(len(starts)))
    blocks: list[dict[str, Any]] = []
    for d in parsed:
        if d["type"] == "content_block_start":
            blocks.append({**d["content_block"], "_json": ""})
        elif d["type"] == "content_block_delta":
            assert d["index"] == len(blocks) - 1
            delta = d["delta"]
            if delta["type"] == "text_delta":
                blocks[-1]["text"] += delta["text"]
            else:
                blocks[-1]["_json"] += delta["partial_json"]
    for b in blocks:
        if b["type"] == "tool_use":
            b["input"] = msgspec.json.decode(b["_json"])
        del b["_json"]
    whole = msgspec.json.decode(encode_message(response, "m"))
    text_streamed = "".join(b["text"] for b in blocks if b["type"] == "text")
    assert text_streamed == "".join(b["text"] for b in whole["content"] if b["type"] == "text")
    tools = [b for b in blocks if b["type"] == "tool_use"]
    assert sorted(tools, key=lambda b: b["id"]) == [
        b for b in whole["content"] if b["type"] == "tool_use"
    ]
    (final,) = [d for d in parsed if d["type"] == "message_delta"]
    assert final["delta"]["stop_reason"] == whole["stop_reason"]


def test_an_anthropic_body_becomes_the_routers_request() -> None:
    """system, tool_use and tool_result blocks, images, tool_choice any, thinking,
    output_config and metadata.user_id are translated; top_k and documents are refused."""
    raw = msgspec.json.encode(
        {
            "model": "fast",
            "max_tokens": 64,
            "system": [{"type": "text", "text": "Be terse."}],
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image",
                            "source": {
                                "type": "base64",
                                "media_type": "image/png",
                                "data": "iVBORw0KGgo=",
                            },
                        },
                        {"type": "text", "text": "where?"},
                    ],
                },
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "hmm", "signature": "s"},
                        {"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}},
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "t1",
                            "content": [{"type": "text", "text": "42"}],
                        },
                        {"type": "text", "text": "and now?"},
                    ],
                },
            ],
            "tools": [
                {
                    "name": "f",
                    "input_schema": {"type": "object"},
                    "cache_control": {"type": "ephemeral"},
                }
            ],
            "tool_choice": {"type": "any"},
            "thinking": {"type": "enabled", "budget_tokens": 1024},
            "output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}},
            "metadata": {"user_id": "bob"},
        }
    )
    request = decode_messages(raw, request_id="gw-9").request
    assert [m.role for m in request.messages] == ["system", "user", "assistant", "tool", "user"]
    assert request.messages[0].text == "Be terse."
    assert request.messages[2].tool_calls == [ToolCall(id="t1", name="f", arguments={"a": 1})]
    assert request.messages[3].tool_call_id == "t1"
    assert request.messages[3].text == "42"
    assert request.tool_choice == "required"
    assert request.thinking_budget == 1024
    assert request.response_format is not None
    assert request.response_format.type == "json_schema"
    assert request.metadata == {"request_id": "gw-9", "user": "bob"}
    for extra, says in [
        ({"top_k": 5}, "top_k"),
        ({"bogus": 1}, "unknown field `bogus`"),
        (
            {"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]},
            "document blocks",
        ),
    ]:
        base = {"model": "fast", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
        with pytest.raises(BadRequest, match=re.escape(says)):
            decode_messages(msgspec.json.encode({**base, **extra}), request_id="gw-1")


# --------------------------------------------------------------------------- errors

ERROR_CLASSES = [
    cls
    for name in errors_module.__all__
    if isinstance(cls := getattr(errors_module, name), type) and issubclass(cls, LLMError)
]


@given(
    st.sampled_from(ERROR_CLASSES),
    st.none() | st.floats(0, 1000),
    st.lists(st.sampled_from([RateLimited, ServerError, BudgetExceeded]), max_size=3),
)
def test_every_router_error_maps_to_a_gateway_status(
    cls: type[LLMError], retry_after: float | None, inner: list[type[LLMError]]
) -> None:
    """Invariant: every error of the tree gets a 4xx or 5xx the vendors use, never
    401/403 (an upstream's key trouble is not the client's); 429 exactly for rate
    limits and spend caps (every attempt rate limited, for a failed route), with the
    wait carried; 5xx for what the client cannot fix."""
    if cls is AllProvidersFailed:
        exc: LLMError = AllProvidersFailed(
            "all failed", errors=[c("x", retry_after=retry_after) for c in inner]
        )
    else:
        exc = cls("boom", retry_after=retry_after)
    f = failure(exc)
    assert f.status in {400, 404, 429, 500, 502, 503, 504}
    limited = isinstance(exc, RateLimited | BudgetExceeded) or (
        isinstance(exc, AllProvidersFailed) and inner and all(c is RateLimited for c in inner)
    )
    assert (f.status == 429) == bool(limited)
    if f.status == 429 and retry_after is not None:
        assert f.retry_after == retry_after
    if isinstance(exc, errors_module.InvalidRequest):
        assert f.status == 400
    if isinstance(exc, errors_module.AuthenticationError | errors_module.PermissionDenied):
        assert f.status == 502


SECRET = "sk-upstream-secret-key-0123456789"


async def test_error_bodies_scrub_secrets_and_round_retry_after_up() -> None:
    """An error reply never shows a known secret (message or attempt reasons), and its
    retry-after is the wait rounded up to whole seconds, at least 1."""
    config = RouterConfig(providers={"m": ProviderConfig(kind="mock")})
    async with open_router(config, providers={"m": MockProvider()}) as r:
        gateway = Gateway(r, config, secrets_=(SECRET,))
        reply = gateway.llm_error_reply(
            "openai", RateLimited(f"slow down {SECRET}", retry_after=2.1), "gw-1"
        )
        assert SECRET not in reply.body.decode()
        assert dict(reply.headers)[b"retry-after"] == b"3"
        reply = gateway.llm_error_reply("anthropic", BudgetExceeded("cap"), "gw-2")
        assert reply.status == 429
        assert dict(reply.headers)[b"retry-after"] == b"1"
        assert msgspec.json.decode(reply.body)["error"]["type"] == "rate_limit_error"


# --------------------------------------------------------------------------- virtual time


def chat(model: str = "m:x", **fields: Any) -> bytes:
    return msgspec.json.encode(
        {"model": model, "messages": [{"role": "user", "content": "a b c d e"}], **fields}
    )


async def test_the_deadline_is_a_cancel_scope_exact_on_virtual_time(autojump_clock: Any) -> None:
    """x-request-timeout 2.5 against a 5 s answer: the 504 comes at exactly t=2.5 and
    the provider's call was cancelled; mid-stream, the error event comes at exactly
    t=2.5 (after the chunks due by then) and the stream has no [DONE]."""
    mock = MockProvider(default=MockResponse(text="late", latency=5.0))
    config = RouterConfig(providers={"m": ProviderConfig(kind="mock")})
    async with open_router(config, providers={"m": mock}) as r:
        gateway = Gateway(r, config)
        timeout = {"x-request-timeout": "2.5"}
        async with AsyncExitStack() as stack:
            reply = await gateway.handle(
                Inbound("POST", "/v1/chat/completions", timeout, chat()), stack
            )
        assert reply.status == 504
        assert trio.current_time() == 2.5
        assert mock.calls[-1].outcome == "cancelled"

        mock.script(MockResponse(text="a b c d e", latency=1.0, chunk_latency=1.0))
        t0 = trio.current_time()
        async with AsyncExitStack() as stack:
            reply = await gateway.handle(
                Inbound("POST", "/v1/chat/completions", timeout, chat(stream=True)), stack
            )
            assert reply.status == 200
            assert reply.chunks is not None
            parts = [part async for part in reply.chunks]
        assert trio.current_time() - t0 == 2.5
        payloads = sse_payloads(b"".join(parts))
        last = msgspec.json.decode(payloads[-1])
        assert last["error"]["code"] == "deadline_exceeded"
        assert b"[DONE]" not in payloads
        texts = [
            msgspec.json.decode(p)["choices"][0]["delta"].get("content") for p in payloads[:-1]
        ]
        assert "".join(t or "" for t in texts) == "a b"  # chunks at t=1 and t=2 only


async def test_a_failure_after_the_first_byte_is_an_in_stream_error(autojump_clock: Any) -> None:
    """A stream that fails after content has begun (the router's StreamInterrupted)
    ends with the dialect's error event: OpenAI's ``data: {"error": ...}``, Anthropic's
    ``event: error``; the status was already 200."""
    mock = MockProvider(
        default=MockResponse(text="a b c d", chunk_latency=0.1, error_after_chunks=2)
    )
    config = RouterConfig(providers={"m": ProviderConfig(kind="mock")})
    async with open_router(config, providers={"m": mock}) as r:
        gateway = Gateway(r, config)
        async with AsyncExitStack() as stack:
            reply = await gateway.handle(
                Inbound("POST", "/v1/chat/completions", {}, chat(stream=True)), stack
            )
            assert reply.chunks is not None
            raw = b"".join([p async for p in reply.chunks])
        assert reply.status == 200
        error = msgspec.json.decode(sse_payloads(raw)[-1])["error"]
        assert error["type"] == "server_error"
        messages = msgspec.json.encode(
            {
                "model": "m:x",
                "max_tokens": 9,
                "stream": True,
                "messages": [{"role": "user", "content": "a b c d"}],
            }
        )
        async with AsyncExitStack() as stack:
            reply = await gateway.handle(Inbound("POST", "/v1/messages", {}, messages), stack)
            assert reply.chunks is not None
            raw = b"".join([p async for p in reply.chunks])
        assert raw.split(b"\n\n")[-2].startswith(b"event: error\n")
        assert b"message_stop" not in raw


async def test_without_keys_only_loopback_and_in_process_callers_are_served() -> None:
    """authenticate(): a non-loopback peer gets a 403 in the endpoint's shape; loopback
    peers (IPv4, IPv6, localhost) and in-process callers (no peer) are served."""
    config = RouterConfig(providers={"m": ProviderConfig(kind="mock")})
    async with open_router(config, providers={"m": MockProvider()}) as r:
        gateway = Gateway(r, config)
        for client, status in [
            ("203.0.113.5", 403),
            ("10.0.0.1", 403),
            ("127.0.0.1", 200),
            ("::1", 200),
            ("localhost", 200),
            (None, 200),
        ]:
            async with AsyncExitStack() as stack:
                reply = await gateway.handle(
                    Inbound("POST", "/v1/messages", {}, ANTHROPIC_HI, client), stack
                )
            assert reply.status == status, client
            if status == 403:
                error = msgspec.json.decode(reply.body)
                assert error["error"]["type"] == "permission_error"
                assert "loopback" in error["error"]["message"]


ANTHROPIC_HI = msgspec.json.encode(
    {"model": "m:x", "max_tokens": 9, "messages": [{"role": "user", "content": "hi"}]}
)


@pytest.mark.parametrize(
    ("toml", "path"),
    [
        ("grace = -1", "$.gateway.grace"),
        ("port = 70000", "$.gateway.port"),
        ("max_timeout = 5\ndefault_timeout = 10", "$.gateway.default_timeout"),
        ("hots = '127.0.0.1'", "$.gateway"),
    ],
)
def test_gateway_config_mistakes_name_their_path(toml: str, path: str) -> None:
    """[gateway] is validated like the rest: a bad value or an unknown field is a
    ConfigError naming where it is."""
    from router.config import decode_config
    from router.errors import ConfigError

    text = f'[providers.m]\nkind = "mock"\n[gateway]\n{toml}\n'
    with pytest.raises(ConfigError) as caught:
        decode_config(text)
    assert (caught.value.path or "").startswith(path)
