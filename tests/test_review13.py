"""Hostile review of issue 13's fault-hardening, through the public API.

Each test pins one defect found by attacking the router with custom providers (virtual
time) or small hostile loopback servers.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

from providers import (
    Capabilities,
    ChatRequest,
    ChatResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    Message,
    ModelInfo,
    RateLimited,
)
from router import ProviderConfig, RouteConfig, RouterConfig, open_router


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
