"""Hostile review of issue 13's fault-hardening, through the public API.

Each test pins one defect found by attacking the router with custom providers (virtual
time) or small hostile loopback servers.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx
import msgspec
import pytest
import trio

from providers import (
    AzureOpenAIProvider,
    Capabilities,
    ChatRequest,
    ChatResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    LLMError,
    Message,
    ModelInfo,
    RateLimited,
    ServerError,
)
from router import open_router
from router.config import ProviderConfig, RetryConfig, RouteConfig, RouterConfig
from tests.test_hardening import KEY, adapter, answer, assert_no_key, hostile, ours, texts


class Headed:
    """A provider whose every answer carries ``headers``."""

    kind = "custom"
    capabilities = Capabilities()

    def __init__(self, name: str, headers: dict[str, str]) -> None:
        self.name = name
        self.headers = headers
        self.calls = 0

    async def complete(self, request: ChatRequest) -> ChatResponse:
        self.calls += 1
        await trio.sleep(0.01)
        return ChatResponse(
            id="r", model=request.model, provider=self.name, text="ok", headers=self.headers
        )

    def stream(self, request: ChatRequest) -> Any:
        raise NotImplementedError

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResponse:
        raise NotImplementedError

    async def list_models(self) -> list[ModelInfo]:
        return []

    async def aclose(self) -> None:
        pass


def chat(model: str) -> ChatRequest:
    return ChatRequest(model=model, messages=[Message.user("hi")])


EXHAUSTED = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "86400s"}


async def test_an_exhausted_window_resetting_in_a_day_is_a_visible_suspension(
    autojump_clock: trio.abc.Clock,
) -> None:
    """``x-ratelimit-remaining-requests: 0`` with a reset 24 h away takes the provider out
    of routing as a long retry-after does: health says why and until when, a lone call
    with no deadline is refused at once (not queued for a day), a route fails over."""
    a = Headed("a", EXHAUSTED)
    b = Headed("b", {})
    config = RouterConfig(
        providers={"a": ProviderConfig(kind="openai"), "b": ProviderConfig(kind="openai")},
        routes={"r": RouteConfig(targets=["a:m", "b:m"])},
    )
    async with open_router(config, providers={"a": a, "b": b}) as router:
        await router.complete(chat("a:m"))
        health = router.health()["a"]
        assert health.status != "healthy"
        assert "window resets: 86400s, longer than max_retry_after" in (health.reason or "")
        start = trio.current_time()
        with pytest.raises(RateLimited) as info:
            await router.complete(chat("a:m"))
        assert trio.current_time() == start
        assert "out of routing" in str(info.value)
        assert a.calls == 1
        answer = await router.complete(chat("r"))
        assert answer.provider == "b"
        assert trio.current_time() == start + 0.01


# --------------------------------------------------------------------------- a key in headers


HEADER_KEY = "gw-secret-4Rk8Pz1QmW7vT3yN6cJ0"


@pytest.mark.parametrize("kind", ["openai-compatible", "ollama"])
@pytest.mark.parametrize(
    "header", [("authorization", f"Bearer {HEADER_KEY}"), ("x-api-key", HEADER_KEY)]
)
async def test_a_key_sent_in_a_configured_header_is_scrubbed_like_the_api_key(
    kind: str, header: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """A gateway key given as an extra header (``headers = {authorization = "Bearer ..."}``,
    the way a keyless kind such as Ollama reaches an authenticating proxy) and echoed by
    the upstream in its error body and ``x-request-id`` shows in no error, event or log
    record: the adapter scrubs it as it scrubs its API key."""
    caplog.set_level(logging.DEBUG)
    echo = {"x-request-id": HEADER_KEY}
    body = msgspec.json.encode({"error": f"bad credentials {HEADER_KEY}"})
    seen: list[Any] = []
    async with hostile(answer(500, body, echo)) as (url, heads):
        config = RouterConfig(
            providers={
                "p": ProviderConfig(
                    kind=kind,
                    base_url=url,
                    headers=dict([header]),
                    retry=RetryConfig(max_attempts=1),
                )
            }
        )
        async with open_router(config) as router:
            router.add_listener(seen.append)
            with pytest.raises(LLMError) as info:
                await router.complete(chat("p:m"))
            seen.append(info.value)
    assert HEADER_KEY.encode() in heads[0]  # it was sent
    everything = [text for thing in seen for text in texts(thing)] + ours(caplog)
    leaks = [text for text in everything if HEADER_KEY[:12] in text]
    assert not leaks, [leak[:200] for leak in leaks]


async def test_an_azure_entra_token_echoed_in_headers_is_not_in_the_http_debug_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An Azure adapter authenticated by an Entra token alone (no API key): an upstream
    echoing the token in ``x-request-id`` leaves it out of httpcore's DEBUG trace of the
    response headers, as the API key is."""
    caplog.set_level(logging.DEBUG)
    async with hostile(answer(500, b"{}", {"x-request-id": HEADER_KEY})) as (url, _):
        provider = AzureOpenAIProvider(
            name="az", endpoint=url, azure_ad_token=HEADER_KEY, api_version="v1"
        )
        try:
            with pytest.raises(LLMError) as info:
                await provider.complete(chat("m"))
        finally:
            await provider.aclose()
    assert info.value.request_id == "***"
    traced = [text for text in ours(caplog) if "x-request-id" in text]
    assert traced, "httpcore's DEBUG trace of the headers was not seen"
    assert not [text for text in traced if HEADER_KEY[:12] in text]


# --------------------------------------------------------------------------- embed and list_models

EMBEDDINGS = {
    "openai": {"model": KEY, "data": [{"index": 0, "embedding": [0.5]}]},
    "openrouter": {"model": KEY, "data": [{"index": 0, "embedding": [0.5]}]},
    "ollama": {"model": KEY, "embeddings": [[0.5]]},
}
MODELS = {
    "openai": {"data": [{"id": KEY, "owned_by": KEY}]},
    "openrouter": {"data": [{"id": KEY}]},
    "anthropic": {"data": [{"id": KEY, "type": "model"}]},
    "gemini": {"models": [{"name": f"models/{KEY}"}]},
    "ollama": {"models": [{"name": KEY}]},
}


@pytest.mark.parametrize("kind", sorted(MODELS))
async def test_model_ids_and_names_echoing_the_key_are_scrubbed(
    kind: str, client: httpx.AsyncClient
) -> None:
    """An upstream whose model list (ids, owners) and embedding answer (``model``) echo the
    key: what ``list_models`` and ``embed`` return shows none of it, as a chat answer's
    ``id`` and ``model`` do not."""
    got: list[Any] = []
    async with hostile(answer(200, msgspec.json.encode(MODELS[kind]))) as (url, _):
        got.extend(await adapter(kind, url, client).list_models())
    if kind in EMBEDDINGS:
        async with hostile(answer(200, msgspec.json.encode(EMBEDDINGS[kind]))) as (url, _):
            request = EmbeddingRequest(model="m", inputs=["x"])
            got.append(await adapter(kind, url, client).embed(request))
    assert got
    assert_no_key(*got)


def test_a_key_in_a_configured_header_is_not_in_the_configs_repr() -> None:
    """``repr``/``str`` of a provider's config (and of the router config holding it) hide
    the values of secret-named headers, as the adapter does; other headers show."""
    provider = ProviderConfig(
        kind="openai-compatible",
        headers={"Authorization": f"Bearer {HEADER_KEY}", "x-team": "search"},
    )
    for text in (repr(provider), str(RouterConfig(providers={"p": provider}))):
        assert HEADER_KEY[:12] not in text
        assert "'x-team': 'search'" in text


class SyncCrash(Headed):
    """A provider whose ``stream()`` raises at once, before handing out a context manager
    (as one that does not stream might: ``raise NotImplementedError``)."""

    def stream(self, request: ChatRequest) -> Any:
        raise KeyError(request.model)


async def test_a_stream_call_that_raises_before_opening_is_typed_and_returns_its_permit(
    autojump_clock: trio.abc.Clock,
) -> None:
    """``provider.stream(request)`` raising a foreign exception itself (not from its
    context manager): the caller gets a typed ServerError, the call counts as a failure,
    and its permit comes back (``in_flight`` 0, so a ``max_concurrency = 1`` provider
    still takes the next request)."""
    crash = SyncCrash("a", {})
    config = RouterConfig(
        providers={
            "a": ProviderConfig(kind="openai", max_concurrency=1, retry=RetryConfig(max_attempts=1))
        }
    )
    async with open_router(config, providers={"a": crash}) as router:
        with trio.fail_after(60):  # a permit never returned would hold the second forever
            await streams_twice(router)
        stats = router.statistics().providers["a"]
        assert (stats.in_flight, stats.queued, stats.failed, stats.cancelled) == (0, 0, 2, 0)
        answer = await router.complete(chat("a:m"))
        assert answer.text == "ok"


async def streams_twice(router: Any) -> None:
    for _ in range(2):
        with pytest.raises(ServerError, match="KeyError"):
            async with router.stream(chat("a:m")) as events:
                async for _event in events:
                    pass
