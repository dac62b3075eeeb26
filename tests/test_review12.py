"""Hostile review of issue 12: defects found through the public API, each pinned here.

Everything runs on virtual time (``autojump_clock``) with exact assertions.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from router import ChatRequest, Message, open_router
from router.config import ProviderConfig, RetryConfig, RouteConfig, RouterConfig, decode_config
from router.errors import ConfigError, InvalidRequest, LLMError, RateLimited
from router.testing import MockProvider, MockResponse

NO_RETRY = RetryConfig(max_attempts=1)


def chat(model: str) -> ChatRequest:
    """A one-message request for ``model``."""
    return ChatRequest(model=model, messages=[Message.user("hi")])


async def test_a_suspended_provider_does_not_spin_a_retry_until_deadline_loop(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A provider out of routing (retry-after 3600 s > max_retry_after) is refused at
    once, not retryable: a loop retrying retryable errors until its deadline stops after
    the refusal instead of spinning without time passing (autojump could never end it)."""
    a = MockProvider(name="a", responses=[RateLimited("slow down", retry_after=3600.0)])
    config = RouterConfig(providers={"a": ProviderConfig(kind="mock", retry=NO_RETRY)})
    async with open_router(config, providers={"a": a}) as router:
        tries = 0
        last: LLMError | None = None
        with trio.move_on_after(10.0):
            while tries < 100:
                tries += 1
                try:
                    await router.complete(chat("a:m"))
                    break
                except LLMError as exc:
                    last = exc
                    if not exc.retryable:
                        break
        assert tries == 2
        assert trio.current_time() == 0.0
        assert isinstance(last, RateLimited)
        assert not last.retryable
        assert "refused until t=3600.000" in str(last)
        assert last.retry_after == 3600.0
        assert len(a.calls) == 1  # the refusal sent nothing


async def test_a_request_queued_when_its_target_is_suspended_fails_over(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A request waiting in a's mailbox when a retry-after of 3600 s suspends a is failed
    at once by the suspension (not retryable) and still fails over to the route's next
    target."""
    a = MockProvider(
        name="a", responses=[MockResponse(error=RateLimited("x", retry_after=3600.0), latency=1.0)]
    )
    b = MockProvider(name="b")
    providers = {
        "a": ProviderConfig(kind="mock", retry=NO_RETRY, max_concurrency=1),
        "b": ProviderConfig(kind="mock", retry=NO_RETRY),
    }
    config = RouterConfig(providers=providers, routes={"r": RouteConfig(targets=["a:m", "b:m"])})
    async with open_router(config, providers={"a": a, "b": b}) as router:
        answers: list[str] = []

        async def routed() -> None:
            answers.append((await router.complete(chat("r"))).text)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(routed)  # takes a's only slot, gets the 3600 s retry-after
            await trio.sleep(0.5)
            nursery.start_soon(routed)  # planned [a, b], queued behind the first in a
        assert trio.current_time() == 1.0
        assert len(a.calls) == 1
        assert len(b.calls) == 2
        assert answers == ["echo: hi", "echo: hi"]


async def test_an_empty_base_url_is_a_config_error_not_the_vendors_endpoint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """base_url "" (e.g. ``${PROXY_URL}`` set to nothing) is a ConfigError at its path,
    in code and in TOML alike: it never silently means the vendor's own endpoint (where
    the key would be sent instead of to the proxy meant)."""
    config = RouterConfig(providers={"a": ProviderConfig(kind="openai", base_url=" ")})
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with pytest.raises(ConfigError, match="server's URL") as built:
        async with open_router(config):
            pass
    assert built.value.path == "$.providers.a.base_url"
    toml = "[providers.a]\nkind = 'openai'\nbase_url = '${PROXY_URL}'\n"
    with pytest.raises(ConfigError, match="server's URL") as decoded:
        decode_config(toml, environ={"PROXY_URL": ""})
    assert decoded.value.path == "$.providers.a.base_url"


def test_a_nested_reference_in_a_default_is_an_error_and_dollars_in_it_are_literal() -> None:
    """``${A:-${B}}`` is a ConfigError at the value's path (it used to become the literal
    text ``${B}``), and ``$$`` in a default is a ``$`` as everywhere else."""
    toml = "[providers.a]\nkind = 'mock'\nbase_url = '%s'\n"
    for text in ("${A:-${B}}", "http://h:${A:-${B:-80}}/v1"):
        with pytest.raises(ConfigError, match="cannot reference a variable") as info:
            decode_config(toml % text, environ={"B": "http://b"})
        assert info.value.path == "$.providers.a.base_url"
    config = decode_config(toml % "http://h/${A:-a$$b}", environ={})
    assert config.providers["a"].base_url == "http://h/a$b"


async def test_a_schema_dict_that_is_not_json_is_an_invalid_request(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A JSON Schema dict holding something JSON cannot encode is refused before sending
    with InvalidRequest saying so, not msgspec's bare TypeError from deep inside."""
    config = RouterConfig(providers={"a": ProviderConfig(kind="mock")})
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "x": object()}
    async with open_router(config) as router:
        with pytest.raises(InvalidRequest, match="cannot be encoded as JSON"):
            await router.structured(chat("a:m"), schema)
        nan = {"type": "object", "properties": {"a": {"type": "number", "maximum": [1j]}}}
        with pytest.raises(InvalidRequest, match="cannot be encoded as JSON"):
            await router.structured(chat("a:m"), nan)


async def test_bad_embedding_inputs_are_the_callers_error_not_a_provider_failure(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A str (which embedded each character), an empty list, a non-str item, None or a
    bad ``dimensions`` is an InvalidRequest before any attempt: never a retryable
    ServerError counted against the provider's health."""
    config = RouterConfig(providers={"a": ProviderConfig(kind="mock")})
    async with open_router(config) as router:
        bad: list[tuple[Any, dict[str, Any]]] = [
            ("hello", {}),
            ([], {}),
            (["ok", 1], {}),
            (None, {}),
            (["ok"], {"dimensions": 0}),
            (["ok"], {"dimensions": True}),
        ]
        for inputs, kw in bad:
            with pytest.raises(InvalidRequest):
                await router.embed("a:m", inputs, **kw)
        stats = router.statistics().providers["a"]
        assert (stats.admitted, stats.failed) == (0, 0)
        assert router.health()["a"].breaker.calls == 0


async def test_generator_inputs_reach_every_attempt_of_a_route(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """inputs given as a generator are read once: the fallback after a failed first
    target embeds the same texts (it used to get an exhausted, empty list)."""
    a = MockProvider(name="a")
    await a.aclose()  # its embed now fails with ConnectionFailed
    b = MockProvider(name="b")
    providers = {
        "a": ProviderConfig(kind="mock", retry=NO_RETRY),
        "b": ProviderConfig(kind="mock", retry=NO_RETRY),
    }
    config = RouterConfig(providers=providers, routes={"r": RouteConfig(targets=["a:m", "b:m"])})
    async with open_router(config, providers={"a": a, "b": b}) as router:
        response = await router.embed("r", (t for t in ["x", "y"]))
        assert response.provider == "b"
        assert len(response.vectors) == 2
