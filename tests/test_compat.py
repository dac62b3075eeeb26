"""The OpenAI-compatible adapters: OpenRouter, Groq, Together, Azure OpenAI, any server.

Wire tests run over real loopback sockets against the fake upstream (the OpenAI paths,
or the Azure deployment paths); the vendor traps the fake does not script are proven
with ``httpx.MockTransport``, and URL and body building is checked directly.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import msgspec
import pytest

from providers import (
    AuthenticationError,
    AzureOpenAIProvider,
    ChatRequest,
    ConfigError,
    ContentFiltered,
    Done,
    EmbeddingRequest,
    GroqProvider,
    LLMError,
    Message,
    ModelNotFound,
    OpenAICompatibleProvider,
    OpenRouterProvider,
    Overloaded,
    PermissionDenied,
    QuotaExceeded,
    RateLimited,
    Secret,
    ServerError,
    SSEDecoder,
    StreamInterrupted,
    TextDelta,
    Timeout,
    TogetherProvider,
    UsageEvent,
)
from providers._openai import OpenAIProvider
from providers.testing import FakeUpstream, Fault, Scenario, open_fake_upstream

from ._helpers import collect

KEY = "sk-compat-SECRET-1357924680"


def req(text: str = "hello compat", **kw: Any) -> ChatRequest:
    kw.setdefault("messages", [Message.system("Be terse."), Message.user(text)])
    return ChatRequest(model="test-model", **kw)


async def raw_stream(client: httpx.AsyncClient, url: str, headers: dict[str, str]) -> bytes:
    """The bytes of a streamed chat answer, read without any adapter: proof the trap is there."""
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    response = await client.post(url, json=body, headers=headers)
    assert response.status_code == 200, response.text
    return response.content


def azure_endpoint(up: FakeUpstream, scenario: str) -> str:
    """The fake's Azure resource endpoint for a scenario: ``/{scenario}/openai/...`` below it."""
    return f"{up.url}/{scenario}"


# --------------------------------------------------------------------------- kinds


@pytest.mark.parametrize(
    ("cls", "kind", "base_url"),
    [
        (OpenRouterProvider, "openrouter", "https://openrouter.ai/api/v1"),
        (GroqProvider, "groq", "https://api.groq.com/openai/v1"),
        (TogetherProvider, "together", "https://api.together.xyz/v1"),
    ],
)
def test_each_vendor_has_its_kind_and_default_base_url(
    cls: type[OpenAIProvider], kind: str, base_url: str
) -> None:
    """Each hosted vendor has its own kind and reaches its documented base URL by default."""
    p = cls(api_key=KEY)
    assert (p.kind, p.name, p.base_url) == (kind, kind, base_url)
    assert KEY not in repr(p)


def test_azure_and_generic_need_an_address() -> None:
    """Azure needs an endpoint and a generic server a base URL: a ConfigError says which."""
    with pytest.raises(ConfigError, match="endpoint"):
        AzureOpenAIProvider(api_key=KEY)
    with pytest.raises(ConfigError, match="base_url"):
        OpenAICompatibleProvider()
    assert AzureOpenAIProvider(endpoint="https://r.openai.azure.com").kind == "azure"
    assert OpenAICompatibleProvider(base_url="http://h/v1").kind == "openai-compatible"


# --------------------------------------------------------------------------- OpenRouter


async def test_openrouter_sends_attribution_headers_and_routing(
    upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    """HTTP-Referer and X-Title go out, and provider/models/transforms pass through verbatim."""
    p = OpenRouterProvider(
        api_key=KEY,
        base_url=upstream.base_url("or", "openai"),
        client=client,
        app_url="https://example.com/app",
        app_name="Compat Tests",
        provider_routing={"sort": "throughput"},
    )
    routing = {"order": ["groq", "together"], "allow_fallbacks": False}
    extra = {"provider": routing, "models": ["a/x", "b/y"], "transforms": ["middle-out"]}
    resp = await p.complete(req(extra=extra, max_tokens=50))
    assert resp.text == "echo: hello compat"
    sent = upstream.requests[-1]
    assert sent.headers["http-referer"] == "https://example.com/app"
    assert sent.headers["x-title"] == "Compat Tests"
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.body["provider"] == routing
    assert sent.body["models"] == ["a/x", "b/y"]
    assert sent.body["transforms"] == ["middle-out"]
    assert sent.body["max_tokens"] == 50
    await p.complete(req())
    assert upstream.requests[-1].body["provider"] == {"sort": "throughput"}


async def test_openrouter_processing_comments_are_skipped(client: httpx.AsyncClient) -> None:
    """`: OPENROUTER PROCESSING` keep-alives before the first chunk change nothing in the stream."""
    async with open_fake_upstream({"s": Scenario(openrouter_processing=3)}) as up:
        p = OpenRouterProvider(api_key=KEY, base_url=up.base_url("s", "openai"), client=client)
        events = await collect(p, req())
        whole = await p.complete(req())
        bearer = {"authorization": f"Bearer {KEY}"}
        raw = await raw_stream(client, up.base_url("s", "openai") + "/chat/completions", bearer)
    assert raw.startswith(b": OPENROUTER PROCESSING\n\n" * 3 + b"data: ")
    done = events[-1]
    assert isinstance(done, Done)
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == whole.text
    assert done.response.text == "echo: hello compat"


def test_sse_decoder_drops_comment_lines_wherever_they_split() -> None:
    """Comment lines yield no event, even split across chunks or between data lines."""
    stream = (
        b": OPENROUTER PROCESSING\n\n: OPENROUTER PROCESSING\r\n\r\n"
        b'data: {"a": 1}\n: inside an event\ndata: {"b": 2}\n\n'
    )
    for size in (1, 3, 7, len(stream)):
        decoder = SSEDecoder()
        events = []
        for start in range(0, len(stream), size):
            events += decoder.feed(stream[start : start + size])
        events += decoder.close()
        assert [e.data for e in events] == ['{"a": 1}\n{"b": 2}']


def sse_body(*payloads: Any, comments: int = 0) -> list[bytes]:
    """An SSE body in pieces: keep-alive comments first, then one ``data:`` event each."""
    pieces = [b": OPENROUTER PROCESSING\n\n"] * comments
    for p in payloads:
        data = p if isinstance(p, str) else msgspec.json.encode(p).decode()
        pieces.append(f"data: {data}\n\n".encode())
    return pieces


def streaming(pieces: list[bytes]) -> Callable[[httpx.Request], httpx.Response]:
    async def body() -> AsyncIterator[bytes]:
        for piece in pieces:
            yield piece

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body(), headers={"content-type": "text/event-stream"})

    return handler


def openrouter_with(handler: Callable[[httpx.Request], httpx.Response]) -> OpenRouterProvider:
    mock = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return OpenRouterProvider(api_key=KEY, base_url="http://or/api/v1", client=mock)


def content_chunk(text: str) -> dict[str, Any]:
    return {"id": "gen-1", "choices": [{"index": 0, "delta": {"content": text}}]}


def error_chunk(code: Any, message: str = "upstream failed") -> dict[str, Any]:
    return {
        "id": "gen-1",
        "error": {"code": code, "message": message},
        "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}],
    }


IN_BAND: list[tuple[Any, type[LLMError]]] = [
    (429, RateLimited),
    (402, QuotaExceeded),
    (401, AuthenticationError),
    (408, Timeout),
    (502, ServerError),
    (503, Overloaded),
    ("server_error", ServerError),
]


@pytest.mark.parametrize(("code", "expected"), IN_BAND)
async def test_openrouter_error_chunk_maps_by_its_code(code: Any, expected: type[LLMError]) -> None:
    """An error chunk maps like its code before content, and is StreamInterrupted after it."""
    early = openrouter_with(streaming(sse_body(error_chunk(code), comments=2)))
    with pytest.raises(LLMError) as info:
        await collect(early, req())
    assert type(info.value) is expected
    assert info.value.status_code is None  # the HTTP status was 200
    late = openrouter_with(
        streaming(sse_body(content_chunk("Hel"), content_chunk("lo"), error_chunk(code)))
    )
    seen: list[Any] = []
    with pytest.raises(StreamInterrupted) as interrupted:
        async with late.stream(req()) as events:
            async for e in events:
                seen.append(e)
    assert "".join(e.text for e in seen if isinstance(e, TextDelta)) == "Hello"
    assert type(interrupted.value.__cause__) is expected


async def test_openrouter_error_in_a_whole_response_choice() -> None:
    """A 200 whose choice carries an error and finish_reason "error" raises the mapped error."""
    body = {
        "id": "gen-1",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": ""},
                "finish_reason": "error",
                "error": {"code": 429, "message": "provider rate limited"},
            }
        ],
    }
    p = openrouter_with(lambda r: httpx.Response(200, json=body))
    with pytest.raises(RateLimited, match="provider rate limited"):
        await p.complete(req())


async def test_openrouter_in_band_error_is_scrubbed_of_the_key() -> None:
    """A vendor message echoing the key is scrubbed in in-band errors too."""
    p = openrouter_with(streaming(sse_body(error_chunk(500, f"bad key {KEY}"))))
    with pytest.raises(ServerError) as info:
        await collect(p, req())
    assert KEY not in str(info.value)
    assert "***" in str(info.value)


@pytest.mark.parametrize(
    ("status", "expected"), [(429, RateLimited), (500, ServerError), (502, ServerError)]
)
async def test_openrouter_error_chunk_over_the_wire(
    status: int, expected: type[LLMError], client: httpx.AsyncClient
) -> None:
    """The fake's error chunk maps by its code before content, and is StreamInterrupted after."""
    early = Scenario(faults=[Fault(kind="error_chunk", status=status, rate=1.0, after_chunks=0)])
    late = Scenario(
        reply="one two three four five",
        faults=[Fault(kind="error_chunk", status=status, rate=1.0, after_chunks=2)],
    )
    async with open_fake_upstream({"early": early, "late": late}) as up:
        p = OpenRouterProvider(api_key=KEY, base_url=up.base_url("early", "openai"), client=client)
        with pytest.raises(LLMError) as info:
            await collect(p, req())
        assert type(info.value) is expected
        assert info.value.provider == "openrouter"
        assert info.value.retryable
        p = OpenRouterProvider(api_key=KEY, base_url=up.base_url("late", "openai"), client=client)
        seen: list[Any] = []
        with pytest.raises(StreamInterrupted) as interrupted:
            async with p.stream(req()) as events:
                async for e in events:
                    seen.append(e)
    assert sum(isinstance(e, TextDelta) for e in seen) == 2
    assert type(interrupted.value.__cause__) is expected
    assert KEY not in str(interrupted.value)


async def test_openrouter_402_is_quota_exceeded(client: httpx.AsyncClient) -> None:
    """Out of credits (402) is QuotaExceeded: not retryable, whatever the body says."""
    fault = Fault(kind="status", status=402, rate=1.0)
    async with open_fake_upstream({"s": Scenario(faults=[fault])}) as up:
        p = OpenRouterProvider(api_key=KEY, base_url=up.base_url("s", "openai"), client=client)
        with pytest.raises(QuotaExceeded) as info:
            await p.complete(req())
        with pytest.raises(QuotaExceeded):
            await collect(p, req())
    assert not info.value.retryable
    assert info.value.status_code == 402


async def test_openrouter_403_moderation_is_content_filtered() -> None:
    """A 403 with moderation metadata is ContentFiltered; a bare 403 stays PermissionDenied."""
    flagged = {
        "error": {
            "code": 403,
            "message": "Input flagged",
            "metadata": {"reasons": ["violence"], "flagged_input": "..."},
        }
    }
    p = openrouter_with(lambda r: httpx.Response(403, json=flagged))
    with pytest.raises(ContentFiltered) as info:
        await p.complete(req())
    assert info.value.status_code == 403
    plain = {"error": {"code": 403, "message": "Forbidden"}}
    p = openrouter_with(lambda r: httpx.Response(403, json=plain))
    with pytest.raises(PermissionDenied):
        await p.complete(req())


def test_openrouter_body_keeps_an_explicit_provider_object() -> None:
    """A request's own provider object wins over the constructor's default routing."""
    p = OpenRouterProvider(api_key=KEY, provider_routing={"sort": "price"})
    mine = {"only": ["groq"]}
    assert p.build_body(req(extra={"provider": mine}), stream=False)["provider"] == mine
    assert p.build_body(req(), stream=True)["provider"] == {"sort": "price"}
    assert p.build_body(req(), stream=True)["stream_options"] == {"include_usage": True}


# --------------------------------------------------------------------------- Groq

GROQ_EXTRA = {"logprobs": True, "top_logprobs": 3, "logit_bias": {"50256": -100}, "n": 2}


async def test_groq_drops_unsupported_fields_and_logs_each_once(
    upstream: FakeUpstream, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    """logprobs, top_logprobs, logit_bias, n>1 and message names never reach Groq; each is logged once."""
    caplog.set_level(logging.WARNING, logger="trio_llm_router")
    p = GroqProvider(api_key=KEY, base_url=upstream.base_url("groq", "openai"), client=client)
    named = ChatRequest(
        model="llama-3.3-70b-versatile",
        messages=[Message(role="user", content="hi", name="alice")],
        extra=dict(GROQ_EXTRA),
        temperature=0.0,
    )
    await p.complete(named)
    body = upstream.requests[-1].body
    for field in GROQ_EXTRA:
        assert field not in body
    assert "name" not in body["messages"][0]
    assert body["temperature"] == 0.0  # Groq maps 0 to 1e-8 itself
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for field in ("logprobs", "top_logprobs", "logit_bias", "n", "messages[].name"):
        assert sum(f"'{field}'" in m for m in warned) == 1, (field, warned)
    await collect(p, named)
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == len(warned)
    assert all(KEY not in m for m in warned)


def test_groq_keeps_n_of_one_and_everything_else(caplog: pytest.LogCaptureFixture) -> None:
    """n=1 and the supported fields are sent unchanged; nothing is logged for them."""
    caplog.set_level(logging.DEBUG, logger="trio_llm_router")
    p = GroqProvider(api_key=KEY)
    r = req(extra={"n": 1, "seed": 3}, temperature=0.5, top_p=0.9, max_tokens=7)
    body = p.build_body(r, stream=False)
    assert (body["n"], body["seed"], body["temperature"], body["top_p"]) == (1, 3, 0.5, 0.9)
    assert body["max_completion_tokens"] == 7
    assert not caplog.records


async def test_groq_usage_from_x_groq_over_the_wire(client: httpx.AsyncClient) -> None:
    """When Groq puts stream usage under x_groq.usage, Done still carries the usage."""
    async with open_fake_upstream({"s": Scenario(usage_location="x_groq")}) as up:
        p = GroqProvider(api_key=KEY, base_url=up.base_url("s", "openai"), client=client)
        whole = await p.complete(req())
        events = await collect(p, req())
        bearer = {"authorization": f"Bearer {KEY}"}
        raw = await raw_stream(client, up.base_url("s", "openai") + "/chat/completions", bearer)
    assert b'"x_groq":{' in raw
    assert b'"choices":[]' not in raw  # no standard usage chunk: x_groq is the only source
    done = events[-1]
    assert isinstance(done, Done)
    assert done.response.usage.output_tokens > 0
    assert done.response.usage == whole.usage


async def test_groq_usage_location_unit() -> None:
    """x_groq.usage is read when the standard usage is absent, and ignored when it is present."""
    x_groq = {"usage": {"prompt_tokens": 9, "completion_tokens": 4, "queue_time": 0.01}}
    only_x = [
        content_chunk("hi"),
        {
            "id": "c",
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            "x_groq": x_groq,
        },
        "[DONE]",
    ]
    both = [
        content_chunk("hi"),
        {
            "id": "c",
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            "x_groq": x_groq,
        },
        {"id": "c", "choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 5}},
        "[DONE]",
    ]
    for chunks, expected in ((only_x, (9, 4)), (both, (10, 5))):
        mock = httpx.AsyncClient(transport=httpx.MockTransport(streaming(sse_body(*chunks))))
        p = GroqProvider(api_key=KEY, base_url="http://groq/v1", client=mock)
        events = await collect(p, req())
        usage = events[-1].response.usage
        assert (usage.input_tokens, usage.output_tokens) == expected
        assert any(isinstance(e, UsageEvent) for e in events)


async def test_groq_498_flex_capacity_is_overloaded(client: httpx.AsyncClient) -> None:
    """Groq's 498 (flex-tier capacity exceeded) is Overloaded, so the router retries or fails over."""
    fault = Fault(kind="status", status=498, rate=1.0)
    async with open_fake_upstream({"s": Scenario(faults=[fault])}) as up:
        p = GroqProvider(api_key=KEY, base_url=up.base_url("s", "openai"), client=client)
        with pytest.raises(Overloaded) as info:
            await p.complete(req())
    assert info.value.retryable
    assert info.value.status_code == 498


# --------------------------------------------------------------------------- Together


async def test_together_over_the_wire(upstream: FakeUpstream, client: httpx.AsyncClient) -> None:
    """Together gets bearer auth, max_tokens, and its extra sampling fields verbatim."""
    p = TogetherProvider(api_key=KEY, base_url=upstream.base_url("t", "openai"), client=client)
    r = req(max_tokens=2, extra={"top_k": 40, "repetition_penalty": 1.1})
    resp = await p.complete(r)
    assert resp.text == "echo: hello"
    assert resp.finish_reason == "length"
    sent = upstream.requests[-1]
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert (sent.body["max_tokens"], sent.body["top_k"]) == (2, 40)
    assert "max_completion_tokens" not in sent.body
    events = await collect(p, req())
    assert events[-1].response.text == "echo: hello compat"


# --------------------------------------------------------------------------- Azure


def test_azure_urls_classic_v1_and_preview() -> None:
    """Deployment URLs carry api-version; the v1 API uses plain paths; names are quoted."""
    classic = AzureOpenAIProvider(
        endpoint="https://res.openai.azure.com/",
        api_key=KEY,
        deployments={"gpt-4o-mini": "prod mini"},
    )
    assert classic._chat_url(req()) == (
        "https://res.openai.azure.com/openai/deployments/test-model/chat/completions"
        "?api-version=2024-10-21"
    )
    mini = ChatRequest(model="gpt-4o-mini", messages=[Message.user("hi")])
    assert classic._chat_url(mini) == (
        "https://res.openai.azure.com/openai/deployments/prod%20mini/chat/completions"
        "?api-version=2024-10-21"
    )
    emb = EmbeddingRequest(model="text-embedding-3-small", inputs=["a"])
    assert classic._embeddings_url(emb) == (
        "https://res.openai.azure.com/openai/deployments/text-embedding-3-small/embeddings"
        "?api-version=2024-10-21"
    )
    assert classic._models_url() == (
        "https://res.openai.azure.com/openai/models?api-version=2024-10-21"
    )
    assert classic.build_body(mini, stream=False)["model"] == "prod mini"
    v1 = AzureOpenAIProvider(endpoint="https://res.openai.azure.com", api_version="v1")
    assert v1.uses_v1
    assert v1._chat_url(mini) == "https://res.openai.azure.com/openai/v1/chat/completions"
    assert v1._embeddings_url(emb) == "https://res.openai.azure.com/openai/v1/embeddings"
    assert v1._models_url() == "https://res.openai.azure.com/openai/v1/models"
    preview = AzureOpenAIProvider(endpoint="https://res.openai.azure.com", api_version="preview")
    assert preview._chat_url(mini).endswith("/openai/v1/chat/completions?api-version=preview")
    assert KEY not in repr(classic)
    assert "api_version='2024-10-21'" in repr(classic)


def test_azure_auth_headers_and_secrets() -> None:
    """The key goes in api-key (never Authorization); an Entra token goes in Authorization."""
    key_only = AzureOpenAIProvider(endpoint="https://r", api_key=KEY)
    assert key_only._auth_headers() == {"api-key": KEY}
    token = AzureOpenAIProvider(endpoint="https://r", azure_ad_token="entra-TOKEN-abcdef")
    assert token._auth_headers() == {"authorization": "Bearer entra-TOKEN-abcdef"}
    assert "entra-TOKEN-abcdef" in token._secrets
    assert "entra-TOKEN-abcdef" not in repr(token)


async def test_azure_deployment_url_api_version_and_key_header(
    upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    """Chat goes to the deployment URL with api-version and the api-key header, no bearer."""
    p = AzureOpenAIProvider(
        endpoint=azure_endpoint(upstream, "az"),
        api_key=KEY,
        api_version="2024-10-21",
        deployments={"test-model": "my-deployment"},
        client=client,
    )
    resp = await p.complete(req())
    assert resp.text == "echo: hello compat"
    sent = upstream.requests[-1]
    assert sent.path == "/az/openai/deployments/my-deployment/chat/completions"
    assert sent.query == "api-version=2024-10-21"
    assert sent.headers["api-key"] == KEY
    assert "authorization" not in sent.headers
    events = await collect(p, req())
    assert events[-1].response.text == resp.text


async def test_azure_stream_tolerates_a_filter_only_first_chunk(client: httpx.AsyncClient) -> None:
    """A first chunk with choices: [] and prompt_filter_results is skipped, not an error."""
    async with open_fake_upstream({"az": Scenario(azure_filter_chunks=True)}) as up:
        p = AzureOpenAIProvider(endpoint=azure_endpoint(up, "az"), api_key=KEY, client=client)
        events = await collect(p, req())
        whole = await p.complete(req())
        url = (
            azure_endpoint(up, "az")
            + "/openai/deployments/d/chat/completions?api-version=2024-10-21"
        )
        raw = await raw_stream(client, url, {"api-key": KEY})
    first = msgspec.json.decode(raw.split(b"\n\n")[0].removeprefix(b"data: "))
    assert first["choices"] == []
    assert "prompt_filter_results" in first
    done = events[-1]
    assert isinstance(done, Done)
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == whole.text
    assert done.response.usage == whole.usage


async def test_azure_embeddings_via_the_deployment_url(
    upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    """Embeddings go to /deployments/{deployment}/embeddings with api-version."""
    p = AzureOpenAIProvider(
        endpoint=azure_endpoint(upstream, "az"),
        api_key=KEY,
        deployments={"text-embedding-3-small": "emb"},
        client=client,
    )
    e = await p.embed(
        EmbeddingRequest(model="text-embedding-3-small", inputs=["a", "b"], dimensions=4)
    )
    assert [len(v) for v in e.vectors] == [4, 4]
    sent = upstream.requests[-1]
    assert sent.path == "/az/openai/deployments/emb/embeddings"
    assert sent.query.startswith("api-version=")


async def test_azure_v1_form_over_the_wire(
    upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    """The v1 API: /openai/v1/chat/completions, no api-version, the deployment as model."""
    p = AzureOpenAIProvider(
        endpoint=azure_endpoint(upstream, "az"),
        api_key=KEY,
        api_version="v1",
        deployments={"test-model": "dep-v1"},
        client=client,
    )
    resp = await p.complete(req())
    assert resp.text == "echo: hello compat"
    sent = upstream.requests[-1]
    assert sent.path == "/az/openai/v1/chat/completions"
    assert "api-version" not in sent.query
    assert sent.body["model"] == "dep-v1"
    assert sent.headers["api-key"] == KEY


def azure_with(handler: Callable[[httpx.Request], httpx.Response]) -> AzureOpenAIProvider:
    mock = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return AzureOpenAIProvider(endpoint="http://az", api_key=KEY, client=mock)


AZURE_FILTERED = {
    "error": {
        "message": "The response was filtered due to the prompt triggering Azure OpenAI's "
        "content management policy.",
        "type": None,
        "param": "prompt",
        "code": "content_filter",
        "status": 400,
        "innererror": {
            "code": "ResponsibleAIPolicyViolation",
            "content_filter_result": {"hate": {"filtered": True, "severity": "high"}},
        },
    }
}


async def test_azure_content_filter_errors_are_content_filtered() -> None:
    """A prompt blocked by the content filter (400) is ContentFiltered, by code or innererror."""
    p = azure_with(lambda r: httpx.Response(400, json=AZURE_FILTERED))
    with pytest.raises(ContentFiltered) as info:
        await p.complete(req())
    assert info.value.status_code == 400
    assert not info.value.retryable
    inner_only = {"error": {**AZURE_FILTERED["error"], "code": "invalid_prompt"}}
    p = azure_with(lambda r: httpx.Response(400, json=inner_only))
    with pytest.raises(ContentFiltered):
        await collect(p, req())


async def test_azure_missing_deployment_is_model_not_found() -> None:
    """404 DeploymentNotFound is ModelNotFound, so the router can try another target."""
    body = {
        "error": {"code": "DeploymentNotFound", "message": "The API deployment does not exist."}
    }
    p = azure_with(lambda r: httpx.Response(404, json=body))
    with pytest.raises(ModelNotFound):
        await p.complete(req())


async def test_azure_stream_with_filter_chunks_unit() -> None:
    """Filter-only chunks (no choices, or a choice without delta) are skipped in a stream."""
    pieces = sse_body(
        {"id": "", "model": "", "choices": [], "prompt_filter_results": [{"prompt_index": 0}]},
        content_chunk("Hi"),
        {"id": "c", "choices": [{"index": 0, "content_filter_results": {}}]},
        {"id": "c", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        "[DONE]",
    )
    p = azure_with(streaming(pieces))
    events = await collect(p, req())
    assert events[-1].response.text == "Hi"


# --------------------------------------------------------------------------- any compatible server


async def test_generic_without_key_sends_no_authorization(client: httpx.AsyncClient) -> None:
    """Without a key no Authorization header is sent, and a keyless server answers."""
    async with open_fake_upstream({"local": Scenario(require_auth=False)}) as up:
        p = OpenAICompatibleProvider(base_url=up.base_url("local", "openai"), client=client)
        resp = await p.complete(req(max_tokens=10))
        sent = up.requests[-1]
        events = await collect(p, req())
    assert resp.text == "echo: hello compat"
    assert "authorization" not in sent.headers
    assert sent.body["max_tokens"] == 10
    assert events[-1].response.usage.output_tokens > 0


async def test_generic_with_key_and_options(
    upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    """With a key it is a bearer; the max-tokens field and stream_options are configurable."""
    p = OpenAICompatibleProvider(
        name="vllm",
        api_key=Secret(KEY),
        base_url=upstream.base_url("vllm", "openai"),
        client=client,
        max_tokens_field="max_completion_tokens",
        stream_usage=False,
    )
    events = await collect(p, req(max_tokens=10))
    sent = upstream.requests[-1]
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.body["max_completion_tokens"] == 10
    assert "stream_options" not in sent.body
    assert events[-1].response.text == "echo: hello compat"
    assert events[-1].response.provider == "vllm"
    assert OpenAIProvider.max_tokens_field == "max_completion_tokens"  # the class is untouched
