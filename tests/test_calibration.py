"""The actor learns each model's real prompt size from reported usage and admits by it."""

from __future__ import annotations

import pytest
import trio

from providers import Usage
from providers._tokens import count_input_tokens
from router import ChatRequest, Message, open_router
from router._actor import ActorCall
from router.config import ProviderConfig, RouterConfig
from router.testing import MockProvider, MockResponse


def chat(text: str, max_tokens: int = 10) -> ChatRequest:
    return ChatRequest(model="a:m", messages=[Message.user(text)], max_tokens=max_tokens)


async def test_tpm_cost_follows_the_learned_ratio(autojump_clock: trio.abc.Clock) -> None:
    """A provider reporting twice the counted prompt is charged twice the count next time."""
    text = "word " * 200
    sent = ChatRequest(model="m", messages=[Message.user(text)], max_tokens=10)
    counted = count_input_tokens(sent)
    usage = Usage(input_tokens=2 * counted, output_tokens=1)
    mock = MockProvider(name="a", default=MockResponse(text="ok", usage=usage))
    config = RouterConfig(providers={"a": ProviderConfig(kind="mock", tpm=1_000_000)})
    async with open_router(config, providers={"a": mock}) as router:
        actor = router._actors["a"]
        for _ in range(5):
            await router.complete(chat(text))
        assert actor.calibration.ratio("m") == pytest.approx(2.0)
        assert actor.calibration.samples("m") == 5
        call = ActorCall(actor, sent, None, False)
        assert call.prompt == counted
        assert call.cost == pytest.approx(2 * counted + 10, abs=1)
        assert call.output_cost == 10


async def test_small_prompts_and_missing_usage_teach_nothing(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Prompts under the minimum estimate, or answers without usage, leave the ratio at 1."""
    usage = Usage(input_tokens=500, output_tokens=1)
    mock = MockProvider(name="a", default=MockResponse(text="ok", usage=usage))
    config = RouterConfig(providers={"a": ProviderConfig(kind="mock")})
    async with open_router(config, providers={"a": mock}) as router:
        await router.complete(chat("hi"))
        assert router._actors["a"].calibration.ratio("m") == 1.0
