"""The public conformance suite: every shipped adapter passes it, broken ones fail it loudly.

Each run starts its own fake upstream on loopback and takes a fraction of a second.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import trio

from providers import (
    AnthropicProvider,
    AzureOpenAIProvider,
    Capabilities,
    ChatRequest,
    GeminiProvider,
    GroqProvider,
    LLMError,
    Message,
    OllamaProvider,
    OpenAICompatibleProvider,
    OpenAIProvider,
    OpenRouterProvider,
    Provider,
    RateLimited,
    ServerError,
    TogetherProvider,
)
from providers.testing import (
    CONFORMANCE_CHECKS,
    FakeUpstream,
    Scenario,
    check_provider,
    fake_base_url,
    open_fake_upstream,
)

Factory = Callable[..., Provider]


def simple(cls: type[Any], **extra: Any) -> Factory:
    """A factory for adapters that take ``base_url`` as it is."""

    def make(*, base_url: str, api_key: str, client: httpx.AsyncClient) -> Provider:
        provider: Provider = cls(api_key=api_key, base_url=base_url, client=client, **extra)
        return provider

    return make


def azure(api_version: str) -> Factory:
    def make(*, base_url: str, api_key: str, client: httpx.AsyncClient) -> Provider:
        return AzureOpenAIProvider(
            endpoint=base_url, api_key=api_key, api_version=api_version, client=client
        )

    return make


ADAPTERS: list[tuple[str, Factory, str]] = [
    ("openai", simple(OpenAIProvider), "openai"),
    ("anthropic", simple(AnthropicProvider), "anthropic"),
    ("openrouter", simple(OpenRouterProvider, app_name="conformance"), "openai"),
    ("groq", simple(GroqProvider), "openai"),
    ("together", simple(TogetherProvider), "openai"),
    ("openai-compatible", simple(OpenAICompatibleProvider), "openai"),
    ("azure", azure("2024-10-21"), "azure"),
    ("azure-v1", azure("v1"), "azure"),
    ("gemini", simple(GeminiProvider), "gemini"),
    ("ollama", simple(OllamaProvider), "ollama"),
]


@pytest.mark.parametrize(("name", "make", "vendor"), ADAPTERS, ids=[a[0] for a in ADAPTERS])
async def test_every_shipped_adapter_conforms(name: str, make: Factory, vendor: str) -> None:
    """Each shipped HTTP adapter passes every conformance check against the fake upstream."""
    ran = await check_provider(make, vendor=vendor)
    assert ran == list(CONFORMANCE_CHECKS)


# --------------------------------------------------------------------------- broken adapters


class LeaksKeyInRepr(OpenAIProvider):
    def __repr__(self) -> str:
        return f"LeaksKeyInRepr(key={self._api_key.reveal() if self._api_key else None!r})"


class RateLimitIsServerError(OpenAIProvider):
    def _map_error(self, status: int, headers: dict[str, str], body: bytes) -> LLMError:
        error = super()._map_error(status, headers, body)
        if isinstance(error, RateLimited):
            return ServerError(error.message, provider=self._name, status_code=status)
        return error


class ForgetsRetryAfter(OpenAIProvider):
    def _map_error(self, status: int, headers: dict[str, str], body: bytes) -> LLMError:
        error = super()._map_error(status, headers, body)
        error.retry_after = None
        return error


class LeaksKeyInErrors(OpenAIProvider):
    def _map_error(self, status: int, headers: dict[str, str], body: bytes) -> LLMError:
        error = super()._map_error(status, headers, body)
        key = self._api_key.reveal() if self._api_key else ""
        # A careless adapter: the key rides along in the error's cause.
        error.__cause__ = RuntimeError(f"request with key {key} failed")
        return error


class LetsHttpxEscape(OpenAIProvider):
    async def complete(self, request: Any) -> Any:
        raise httpx.ReadError("connection lost")


BROKEN: list[tuple[type[OpenAIProvider], str]] = [
    (LeaksKeyInRepr, r"'secrets' failed: the API key appears in repr\(provider\)"),
    (
        RateLimitIsServerError,
        r"'errors' failed: HTTP 429 from complete\(\) should raise RateLimited",
    ),
    (ForgetsRetryAfter, r"'errors' failed: HTTP 429 from complete\(\): retry_after should be 2"),
    (
        LeaksKeyInErrors,
        r"'secrets' failed: the API key appears in str\(AuthenticationError \(cause",
    ),
    (LetsHttpxEscape, r"'complete' failed: complete\(\) raised httpx.ReadError"),
]


@pytest.mark.parametrize(("cls", "message"), BROKEN, ids=[b[0].__name__ for b in BROKEN])
async def test_a_broken_adapter_fails_with_a_clear_message(
    cls: type[OpenAIProvider], message: str
) -> None:
    """Leaking the key, mis-mapping 429, dropping retry_after or leaking httpx fails the suite."""
    with pytest.raises(AssertionError, match=message) as info:
        await check_provider(simple(cls))
    assert "sk-conformance-SECRET" not in str(info.value)  # the message shows <KEY> instead


class IgnoresCancellation(OpenAIProvider):
    """Swallows the caller's cancellation and reads the stream to its end."""

    def stream(self, request: Any) -> Any:
        inner = super().stream(request)

        class Drain:
            async def __aenter__(self) -> Any:
                self.events = await inner.__aenter__()
                return self

            def __aiter__(self) -> Any:
                return self

            async def __anext__(self) -> Any:
                with trio.CancelScope(shield=True):
                    return await self.events.__anext__()

            async def __aexit__(self, *exc: Any) -> Any:
                return await inner.__aexit__(*exc)

        return Drain()


async def test_an_adapter_that_ignores_cancellation_fails() -> None:
    """An adapter whose reads ignore the caller's cancel scope fails the cancellation check."""
    with pytest.raises(AssertionError, match=r"'cancellation' failed: .*never reached the read"):
        await check_provider(simple(IgnoresCancellation))


# --------------------------------------------------------------------------- the suite's options


async def test_skip_and_capabilities_choose_the_checks() -> None:
    """Skipped checks and those needing a capability the adapter lacks do not run."""
    no_tools = Capabilities(tools=False)
    ran = await check_provider(simple(OpenAIProvider, capabilities=no_tools), skip=["cancellation"])
    assert ran == [
        c for c in CONFORMANCE_CHECKS if c not in {"tools", "tools_stream", "cancellation"}
    ]
    with pytest.raises(ValueError, match="unknown checks"):
        await check_provider(simple(OpenAIProvider), skip=["nope"])


async def test_base_url_for_overrides_the_vendor_table() -> None:
    """A custom base_url_for decides where every scenario's adapter points."""
    asked: list[str] = []

    def where(up: FakeUpstream, scenario: str) -> str:
        asked.append(scenario)
        return up.base_url(scenario, "openai")

    await check_provider(simple(OpenAIProvider), vendor="unknown-format", base_url_for=where)
    assert asked
    assert all(s.startswith("conformance-") for s in asked)


@pytest.fixture
async def shared() -> AsyncIterator[FakeUpstream]:
    async with open_fake_upstream({"mine": Scenario(reply="untouched")}) as up:
        yield up


async def test_a_given_upstream_and_client_are_used_and_left_alone(shared: FakeUpstream) -> None:
    """With a caller's upstream and client, the suite adds its own scenarios and closes nothing."""
    async with httpx.AsyncClient() as client:
        await check_provider(simple(OpenAIProvider), upstream=shared, client=client)
        assert not client.is_closed
        assert shared.scenario("mine").reply == "untouched"
        assert shared.requests
        assert all(r.scenario.startswith("conformance-") for r in shared.requests)
        p = OpenAIProvider(
            api_key="k", base_url=fake_base_url(shared, "mine", "openai"), client=client
        )
        assert (await p.complete(ChatRequest(model="m", messages=[Message.user("x")]))).text == (
            "untouched"
        )


def test_fake_base_url_knows_azure_and_defers_the_rest() -> None:
    """Azure gets the resource endpoint; others are asked of the upstream, then a known table."""

    class Up:
        url = "http://127.0.0.1:1"

        def base_url(self, scenario: str, kind: str) -> str:
            if kind == "future":
                return f"{self.url}/{scenario}/future"
            raise ValueError(kind)

    up: Any = Up()
    assert fake_base_url(up, "a b", "azure") == "http://127.0.0.1:1/a%20b"
    assert fake_base_url(up, "s", "future") == "http://127.0.0.1:1/s/future"
    assert fake_base_url(up, "s", "gemini") == "http://127.0.0.1:1/s/v1beta"
    assert fake_base_url(up, "s", "ollama") == "http://127.0.0.1:1/s"
    with pytest.raises(ValueError, match="base_url_for"):
        fake_base_url(up, "s", "nope")
