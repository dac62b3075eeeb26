"""Foundation checklist items the other test files left unproved.

Each test here closes one gap found while auditing the foundation issue against the
suite: the error flags, the remaining validation rules, the default HTTP client, the
headers surfaced on successful results, Anthropic cache writes, OpenAI JSON mode, and
the finish-reason vocabulary.
"""

from __future__ import annotations

import base64
import importlib.util
from typing import Any, Literal, TypeAlias

import httpx
import pytest
import trio

from providers import (
    AllProvidersFailed,
    AnthropicProvider,
    AuthenticationError,
    BudgetExceeded,
    Capabilities,
    ChatRequest,
    ConfigError,
    ConnectionFailed,
    ContentFiltered,
    ContextLengthExceeded,
    Done,
    ForceTool,
    ImagePart,
    InvalidOutput,
    InvalidRequest,
    LLMError,
    Message,
    ModelNotFound,
    NoRoute,
    NotFound,
    OpenAIProvider,
    Overloaded,
    PermissionDenied,
    ProtocolError,
    QuotaExceeded,
    RateLimited,
    ResponseFormat,
    ResponseTooLarge,
    RouterClosed,
    Secret,
    ServerError,
    StreamInterrupted,
    Timeout,
    ToolCall,
    ToolSpec,
    UnsupportedFeature,
    default_client,
    validate_request,
)
from providers._anthropic import anthropic_finish_reason
from providers._openai import openai_finish_reason
from providers.testing import Fault, Scenario, open_fake_upstream

KEY = "sk-gaps-SECRET-1234567890"
Vendor: TypeAlias = Literal["openai", "anthropic"]

WEATHER = ToolSpec(
    name="get_weather",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}},
)
CALL = ToolCall(id="c1", name="get_weather", arguments={"city": "Paris"})


def req(*messages: Message, **kw: Any) -> ChatRequest:
    return ChatRequest(model="m", messages=list(messages) or [Message.user("hi")], **kw)


# --------------------------------------------------------------------------- the error tree

# (class, retryable, is_rate_limit, is_authentication): the table in providers.md.
ERROR_FLAGS = [
    (LLMError, False, False, False),
    (InvalidRequest, False, False, False),
    (ContextLengthExceeded, False, False, False),
    (UnsupportedFeature, False, False, False),
    (AuthenticationError, False, False, True),
    (PermissionDenied, False, False, False),
    (NotFound, False, False, False),
    (ModelNotFound, False, False, False),
    (QuotaExceeded, False, False, False),
    (ContentFiltered, False, False, False),
    (RateLimited, True, True, False),
    (Overloaded, True, False, False),
    (ServerError, True, False, False),
    (Timeout, True, False, False),
    (ConnectionFailed, True, False, False),
    (ProtocolError, True, False, False),
    (InvalidOutput, True, False, False),
    (ResponseTooLarge, False, False, False),
    (StreamInterrupted, False, False, False),
    (ConfigError, False, False, False),
    (RouterClosed, False, False, False),
    (NoRoute, False, False, False),
    (BudgetExceeded, False, False, False),
]


@pytest.mark.parametrize(
    ("cls", "retryable", "rate_limit", "auth"),
    ERROR_FLAGS,
    ids=[row[0].__name__ for row in ERROR_FLAGS],
)
def test_error_flags_follow_the_documented_tree(
    cls: type[LLMError], retryable: bool, rate_limit: bool, auth: bool
) -> None:
    """retryable / is_rate_limit / is_authentication on every class and its instances."""
    error = cls("x")
    assert (cls.retryable, cls.is_rate_limit, cls.is_authentication) == (
        retryable,
        rate_limit,
        auth,
    )
    assert (error.retryable, error.is_rate_limit, error.is_authentication) == (
        retryable,
        rate_limit,
        auth,
    )
    assert isinstance(error, LLMError)


def test_every_public_error_is_in_the_flag_table() -> None:
    """No error class escapes the table above (a new one must say what its flags are)."""
    import providers

    public = {
        v
        for v in vars(providers).values()
        if isinstance(v, type) and issubclass(v, LLMError) and v is not AllProvidersFailed
    }
    assert public == {row[0] for row in ERROR_FLAGS}


def test_all_providers_failed_is_retryable_if_any_error_was() -> None:
    """AllProvidersFailed takes its retryability from the errors it aggregates."""
    assert AllProvidersFailed("x", errors=[InvalidRequest("a")]).retryable is False
    mixed = [InvalidRequest("a"), RateLimited("b")]
    assert AllProvidersFailed("x", errors=mixed).retryable is True
    assert AllProvidersFailed("x", errors=mixed, retryable=False).retryable is False
    assert not AllProvidersFailed("x").is_rate_limit


# --------------------------------------------------------------------------- types and validation


def test_message_constructors_build_each_role() -> None:
    """Message.system/user/assistant/tool build the right roles, text and parts."""
    image = ImagePart.from_bytes(b"\x89PNG", "image/png")
    user = Message.user("look", image)
    assert (user.role, user.text, user.images) == ("user", "look", [image])
    assert Message.user("plain").content == "plain"
    assert Message.system("s").role == "system"
    assistant = Message.assistant("calling", tool_calls=[CALL])
    assert (assistant.role, assistant.tool_calls) == ("assistant", [CALL])
    tool = Message.tool("c1", "18C", is_error=True)
    assert (tool.role, tool.tool_call_id, tool.text, tool.is_error) == ("tool", "c1", "18C", True)


def test_image_parts_by_url_inline_and_data_url() -> None:
    """An image is a URL or base64 data with a media type; a data: URL is split into both."""
    inline = ImagePart.from_bytes(b"abc", "image/jpeg")
    assert (inline.data, inline.media_type) == (base64.b64encode(b"abc").decode(), "image/jpeg")
    assert inline.data_url == f"data:image/jpeg;base64,{inline.data}"
    split = ImagePart.from_url(inline.data_url)
    assert (split.url, split.data, split.media_type) == (None, inline.data, "image/jpeg")
    assert ImagePart.from_url("https://x/cat.png").url == "https://x/cat.png"
    with pytest.raises(ValueError, match="media_type"):
        ImagePart(data="abc", media_type="image/tiff")
    with pytest.raises(ValueError, match="exactly one"):
        ImagePart(url="https://x/y.png", data="abc", media_type="image/png")
    with pytest.raises(ValueError, match="http"):
        ImagePart(url="ftp://x/y.png")


def test_a_whole_tool_conversation_is_valid() -> None:
    """System, user, assistant tool calls, their results, then more turns: accepted."""
    validate_request(
        req(
            Message.system("s"),
            Message.user("weather?"),
            Message.assistant(tool_calls=[CALL, ToolCall(id="c2", name="get_weather")]),
            Message.tool("c1", "18C"),
            Message.tool("c2", "20C"),
            Message.assistant("Warm."),
            Message.user("thanks"),
        ),
        Capabilities(),
    )


@pytest.mark.parametrize(
    ("request_", "match"),
    [
        pytest.param(req(Message.system("only")), "only system messages", id="only-system"),
        pytest.param(
            req(Message.user("a"), Message.assistant(tool_calls=[CALL]), Message.user("b")),
            "need tool results before the next user message",
            id="user-while-calls-open",
        ),
        pytest.param(
            req(Message.user("a"), Message.assistant(tool_calls=[CALL]), Message.assistant("b")),
            "need tool results before the next assistant message",
            id="assistant-while-calls-open",
        ),
        pytest.param(
            req(
                Message.user("a"),
                Message.assistant(tool_calls=[CALL]),
                Message.tool("c1", "x"),
                Message.tool("c1", "again"),
            ),
            "no matching tool call",
            id="tool-result-twice",
        ),
        pytest.param(req(max_tokens=-5), "max_tokens must be positive", id="negative-max-tokens"),
        pytest.param(req(temperature=2.5), "temperature must be between 0 and 2", id="temperature"),
        pytest.param(req(top_p=0.0), r"top_p must be in \(0, 1\]", id="top-p-zero"),
        pytest.param(req(top_p=1.5), r"top_p must be in \(0, 1\]", id="top-p-above-one"),
        pytest.param(req(stop=["ok", ""]), "stop sequences must be non-empty", id="empty-stop"),
        pytest.param(req(thinking_budget=0), "thinking_budget must be positive", id="thinking"),
        pytest.param(req(tools=[WEATHER, WEATHER]), "tool names must be unique", id="dup-tools"),
        pytest.param(
            req(tool_choice="required"), "needs at least one tool", id="required-no-tools"
        ),
        pytest.param(
            req(tools=[WEATHER], tool_choice=ForceTool(name="ghost")), "ghost", id="force-ghost"
        ),
    ],
)
def test_validation_refuses_with_a_message_that_says_what_to_fix(
    request_: ChatRequest, match: str
) -> None:
    """Each rule of validate_request refuses a bad request with an actionable message."""
    with pytest.raises(InvalidRequest, match=match) as info:
        validate_request(request_, Capabilities())
    assert not isinstance(info.value, UnsupportedFeature)


@pytest.mark.parametrize(
    ("request_", "capabilities", "match"),
    [
        pytest.param(
            req(Message.user("x", ImagePart.from_bytes(b"x", "image/png"))),
            Capabilities(vision=False),
            "cannot take images",
            id="no-vision",
        ),
        pytest.param(
            req(Message.user("x", ImagePart.from_url("https://x/y.png"))),
            Capabilities(image_urls=False),
            "inline images only; use ImagePart.from_bytes",
            id="no-image-urls",
        ),
        pytest.param(
            req(tools=[WEATHER]), Capabilities(tools=False), "cannot call tools", id="no-tools"
        ),
        pytest.param(
            req(response_format=ResponseFormat.json_object()),
            Capabilities(structured_output=False),
            "no structured output",
            id="no-structured-output",
        ),
    ],
)
def test_capabilities_refuse_what_the_target_cannot_take(
    request_: ChatRequest, capabilities: Capabilities, match: str
) -> None:
    """A request needing something the target lacks is UnsupportedFeature, saying what."""
    with pytest.raises(UnsupportedFeature, match=match):
        validate_request(request_, capabilities)


def test_inline_images_pass_a_target_that_takes_no_urls() -> None:
    """The advice in the no-URL error works: the same image inline is accepted."""
    inline = req(Message.user("x", ImagePart.from_bytes(b"x", "image/png")))
    validate_request(inline, Capabilities(image_urls=False))


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_both_adapters_validate_before_any_network(kind: str) -> None:
    """Anthropic validates first too: bad requests never reach the transport."""
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(500)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        cls = OpenAIProvider if kind == "openai" else AnthropicProvider
        provider = cls(
            api_key=KEY,
            base_url="http://up",
            client=client,
            capabilities=Capabilities(vision=False),
        )
        bad = [
            ChatRequest(model="m", messages=[]),
            req(Message.user("a"), Message.tool("nope", "x")),
            req(Message.assistant("first")),
            req(max_tokens=0),
            req(Message.user("x", ImagePart.from_url("https://x/y.png"))),
        ]
        for request in bad:
            with pytest.raises(InvalidRequest):
                await provider.complete(request)
            with pytest.raises(InvalidRequest):
                async with provider.stream(request):
                    pass  # pragma: no cover
    assert sent == []


# --------------------------------------------------------------------------- the HTTP client


async def test_default_client_pools_keep_alive_and_uses_http2_when_h2_is_installed() -> None:
    """20 keep-alive connections, 90 s expiry, TLS verified, HTTP/2 iff ``h2`` is importable."""
    async with default_client() as client:
        pool = client._transport._pool  # type: ignore[attr-defined]
        assert pool._max_keepalive_connections == 20
        assert pool._keepalive_expiry == 90.0
        assert pool._http2 is (importlib.util.find_spec("h2") is not None)
        assert pool._ssl_context.verify_mode.name == "CERT_REQUIRED"
        assert client.follow_redirects is False


async def test_default_clients_share_one_verified_tls_context() -> None:
    """Every default client (and so every adapter without an injected client) uses one
    TLS context, loaded once, with verification on: a CA bundle per client cost ~0.9 MiB
    of RSS each (30 providers: +27 MiB)."""
    import ssl

    for http2 in (False, True):
        async with default_client(http2=http2) as a, default_client(http2=http2) as b:
            ctx_a = a._transport._pool._ssl_context  # type: ignore[attr-defined]
            ctx_b = b._transport._pool._ssl_context  # type: ignore[attr-defined]
            assert ctx_a is ctx_b
            assert ctx_a.verify_mode == ssl.CERT_REQUIRED
            assert ctx_a.check_hostname is True
            assert ctx_a.cert_store_stats()["x509_ca"] > 0  # the CA bundle is loaded
    one, two = OpenAIProvider(api_key=KEY), AnthropicProvider(api_key=KEY)
    try:
        assert (
            one._client._transport._pool._ssl_context  # type: ignore[attr-defined]
            is two._client._transport._pool._ssl_context  # type: ignore[attr-defined]
        )
    finally:
        await one.aclose()
        await two.aclose()


async def test_adapter_closes_only_the_client_it_created() -> None:
    """Without a client an adapter pools its own and closes it; an injected one is left open."""
    own = OpenAIProvider(api_key=KEY)
    created = own._client
    await own.aclose()
    assert created.is_closed

    async with httpx.AsyncClient() as injected:
        borrowed = AnthropicProvider(api_key=KEY, client=injected)
        await borrowed.aclose()
        assert not injected.is_closed
        with pytest.raises(ConnectionFailed, match="closed"):
            await borrowed.complete(req())


# --------------------------------------------------------------------------- headers on results


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_rate_limit_headers_and_request_id_surface_on_results(
    kind: Vendor, client: httpx.AsyncClient
) -> None:
    """A success carries the vendor's rate-limit headers and request id, complete or streamed."""
    prefix = "x-ratelimit-" if kind == "openai" else "anthropic-ratelimit-"
    id_header = "x-request-id" if kind == "openai" else "request-id"
    scenario = Scenario(ratelimit_headers=True, ratelimit_requests=10)
    async with open_fake_upstream({"rl": scenario}) as up:
        cls = OpenAIProvider if kind == "openai" else AnthropicProvider
        provider = cls(api_key=KEY, base_url=up.base_url("rl", kind), client=client)
        complete = await provider.complete(req())
        async with provider.stream(req()) as events:
            streamed = [e async for e in events][-1]
    assert isinstance(streamed, Done)
    for response in (complete, streamed.response):
        assert response.request_id
        assert response.headers[id_header] == response.request_id
        limits = {k: v for k, v in response.headers.items() if k.startswith(prefix)}
        assert limits, response.headers
        assert KEY not in repr(response)
    remaining = "x-ratelimit-remaining-requests"
    if kind == "anthropic":
        remaining = "anthropic-ratelimit-requests-remaining"
    assert int(complete.headers[remaining]) > int(streamed.response.headers[remaining])


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_request_id_and_retry_headers_surface_on_errors(
    kind: Vendor, client: httpx.AsyncClient
) -> None:
    """A 429 over the wire carries the request id, retry-after and the rate-limit headers."""
    fault = Fault("status", status=429, retry_after=0.75, rate=1.0)
    async with open_fake_upstream({"rl": Scenario(faults=[fault])}) as up:
        cls = OpenAIProvider if kind == "openai" else AnthropicProvider
        provider = cls(api_key=KEY, base_url=up.base_url("rl", kind), client=client)
        with pytest.raises(RateLimited) as info:
            await provider.complete(req())
    error = info.value
    id_header = "x-request-id" if kind == "openai" else "request-id"
    assert error.request_id
    assert error.headers[id_header] == error.request_id
    assert error.retry_after == 0.75
    assert float(error.headers["retry-after"]) == 0.75
    if kind == "openai":
        assert error.headers["retry-after-ms"] == "750"
    prefix = "x-ratelimit-" if kind == "openai" else "anthropic-ratelimit-"
    assert any(name.startswith(prefix) for name in error.headers)
    assert error.is_rate_limit
    assert error.retryable


def task_tree(root: trio.lowlevel.Task) -> set[trio.lowlevel.Task]:
    """``root`` and every task below it."""
    found: set[trio.lowlevel.Task] = set()
    todo = [root]
    while todo:
        task = todo.pop()
        found.add(task)
        for nursery in task.child_nurseries:
            todo.extend(nursery.child_tasks)
    return found


def tasks_but_the_servers() -> set[trio.lowlevel.Task]:
    """Every task of the run except the fake upstream's (the current task's nurseries)."""
    server: set[trio.lowlevel.Task] = set()
    for nursery in trio.lowlevel.current_task().child_nurseries:
        for task in nursery.child_tasks:
            server |= task_tree(task)
    root = trio.lowlevel.current_root_task()
    assert root is not None
    return task_tree(root) - server


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_a_cancelled_stream_leaves_no_task_behind(
    kind: Vendor, client: httpx.AsyncClient
) -> None:
    """Cancelled mid-stream, either adapter leaves exactly the tasks there were before."""
    async with open_fake_upstream({"slow": Scenario(chunk_interval=0.05)}) as up:
        cls = OpenAIProvider if kind == "openai" else AnthropicProvider
        provider = cls(api_key=KEY, base_url=up.base_url("slow", kind), client=client)
        before = tasks_but_the_servers()
        received = 0
        with trio.move_on_after(0.12) as scope:
            async with provider.stream(req(Message.user("a b c d e f g h i j"))) as events:
                async for _ in events:
                    received += 1
        after = tasks_but_the_servers()
        await up.requests[-1].finished.wait()
    assert scope.cancelled_caught
    assert received > 0
    assert after == before
    assert up.requests[-1].outcome == "client_disconnected"


def test_metadata_is_never_sent_to_a_vendor() -> None:
    """ChatRequest.metadata is for the router only: neither wire body carries it."""
    request = req(metadata={"user": "alice-7f3"})
    for provider in (OpenAIProvider(api_key=KEY), AnthropicProvider(api_key=KEY)):
        body = provider.build_body(request, stream=False)
        assert "metadata" not in body
        assert "alice-7f3" not in repr(body)


# --------------------------------------------------------------------------- vendor details


async def test_anthropic_cache_writes_count_as_input() -> None:
    """Cache reads and cache writes are both added back into input_tokens."""
    body = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude",
        "content": [{"type": "text", "text": "ok"}],
        "stop_reason": "end_turn",
        "usage": {
            "input_tokens": 10,
            "output_tokens": 3,
            "cache_read_input_tokens": 100,
            "cache_creation_input_tokens": 50,
        },
    }
    transport = httpx.MockTransport(lambda r: httpx.Response(200, json=body))
    async with httpx.AsyncClient(transport=transport) as client:
        provider = AnthropicProvider(api_key=KEY, base_url="http://up", client=client)
        usage = (await provider.complete(req())).usage
    assert (usage.input_tokens, usage.cached_input_tokens, usage.cache_write_tokens) == (
        160,
        100,
        50,
    )
    assert usage.output_tokens == 3


def test_openai_json_mode_and_schema_bodies() -> None:
    """json_object is sent as OpenAI's JSON mode; json_schema carries name, schema, strict."""
    provider = OpenAIProvider(api_key=KEY)
    body = provider.build_body(req(response_format=ResponseFormat.json_object()), stream=False)
    assert body["response_format"] == {"type": "json_object"}
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    fmt = ResponseFormat.json_schema(schema, name="answer", strict=False)
    body = provider.build_body(req(response_format=fmt), stream=False)
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["name"] == "answer"
    assert body["response_format"]["json_schema"]["schema"] == schema
    assert body["response_format"]["json_schema"]["strict"] is False


@pytest.mark.parametrize(
    ("raw", "tools", "expected"),
    [
        ("stop", False, "stop"),
        ("length", False, "length"),
        ("tool_calls", True, "tool_calls"),
        ("function_call", True, "tool_calls"),
        ("content_filter", False, "content_filter"),
        ("stop", True, "tool_calls"),  # a forced tool call that the vendor calls "stop"
        ("something_new", False, "other"),
        (None, False, "stop"),
    ],
)
def test_openai_finish_reasons_are_normalised(raw: str | None, tools: bool, expected: str) -> None:
    """OpenAI's finish_reason maps onto the shared vocabulary."""
    assert openai_finish_reason(raw, has_tool_calls=tools) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "other"),
        (None, "stop"),
    ],
)
def test_anthropic_stop_reasons_are_normalised(raw: str | None, expected: str) -> None:
    """Anthropic's stop_reason maps onto the shared vocabulary."""
    assert anthropic_finish_reason(raw) == expected


async def test_a_str_key_is_wrapped_in_a_secret_and_never_shown() -> None:
    """Adapters wrap a plain-str key in Secret; their repr shows neither form."""
    async with httpx.AsyncClient() as client:
        for key in (KEY, Secret(KEY)):
            for cls in (OpenAIProvider, AnthropicProvider):
                provider = cls(api_key=key, client=client)
                assert KEY not in repr(provider)
                assert provider._api_key == Secret(KEY)
