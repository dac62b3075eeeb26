"""Gateway keys: identity, routes, rate limits and spend caps (docs/gateway.md, "Keys")."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import trio
import trio.testing
from hypothesis import example, given, settings
from hypothesis import strategies as st

from providers import ChatRequest, Message, Usage
from router import open_router
from router._tools import _gateway_keys
from router._tools._gateway import Gateway, GatewayApp, Inbound
from router._tools._serve import check_bind, serve_gateway
from router.config import (
    AuditConfig,
    GatewayConfig,
    GatewayKeyConfig,
    HedgeConfig,
    ModelConfig,
    ProviderConfig,
    RouteConfig,
    RouterConfig,
    decode_config,
)
from router.errors import ConfigError
from router.events import RequestFinished
from router.policy import Needs
from router.testing import MockProvider, MockResponse

#: Distinctive key values: a test scans every output for them.
KEY_A = "sk-gw-TEAMA-5f1d0c2a9b8e7d6c5b4a"
KEY_B = "sk-gw-TEAMB-0a1b2c3d4e5f60718293"
PRICES = ModelConfig(input_price=1.0, output_price=2.0)  # $ per million tokens


def keyed_config(
    a: GatewayKeyConfig | None = None,
    *,
    b: GatewayKeyConfig | None = None,
    routes: Mapping[str, RouteConfig] | None = None,
    audit: AuditConfig | None = None,
) -> RouterConfig:
    """Providers ``a`` and ``b`` (mocks, priced), route ``fast`` (a:m), and keys."""
    keys = {"team-a": a or GatewayKeyConfig(key_env="TEAM_A_KEY")}
    if b is not None:
        keys["team-b"] = b
    return RouterConfig(
        providers={"a": ProviderConfig(kind="mock"), "b": ProviderConfig(kind="mock")},
        models={"a:m": PRICES, "b:m": PRICES},
        routes=dict(routes or {"fast": RouteConfig(targets=["a:m"])}),
        gateway=GatewayConfig(keys=keys),
        audit=audit,
    )


def answer(output_tokens: int = 50, latency: float = 1.0) -> MockResponse:
    return MockResponse(
        text="ok", latency=latency, usage=Usage(input_tokens=5, output_tokens=output_tokens)
    )


@pytest.fixture(autouse=True)
def _key_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEAM_A_KEY", KEY_A)
    monkeypatch.setenv("TEAM_B_KEY", KEY_B)


@asynccontextmanager
async def open_app(
    config: RouterConfig, default: MockResponse | None = None
) -> AsyncIterator[GatewayApp]:
    """The gateway's ASGI app over mocks ``a`` and ``b`` answering ``default``."""
    mocks = {
        name: MockProvider(name=name, default=default or answer(latency=0.0), record=False)
        for name in ("a", "b")
    }
    async with open_router(config, providers=mocks) as router:
        yield GatewayApp(router, config)


@asynccontextmanager
async def open_gateway(
    config: RouterConfig, default: MockResponse | None = None
) -> AsyncIterator[Gateway]:
    """An in-process gateway (no ASGI, no socket): requests go to ``Gateway.handle``."""
    async with open_app(config, default) as app:
        yield app.gateway


class Answer(msgspec.Struct):
    status: int
    headers: dict[str, str]
    body: Any


def chat_body(model: str = "fast", max_tokens: int = 50, stream: bool = False) -> bytes:
    return json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": max_tokens,
            "stream": stream,
        }
    ).encode()


def messages_body(model: str = "fast", max_tokens: int = 50) -> bytes:
    return json.dumps(
        {"model": model, "max_tokens": max_tokens, "messages": [{"role": "user", "content": "hi"}]}
    ).encode()


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def send(
    gateway: Gateway,
    path: str,
    body: bytes = b"",
    headers: Mapping[str, str] | None = None,
    *,
    method: str = "POST",
    client: str | None = "127.0.0.1",
) -> Answer:
    """One request through ``Gateway.handle``, its body read (a stream's to the end)."""
    async with AsyncExitStack() as stack:
        reply = await gateway.handle(
            Inbound(method, path, dict(headers or {}), body, client), stack
        )
        data = reply.body
        if reply.chunks is not None:
            data = b"".join([chunk async for chunk in reply.chunks])
    heads = {k.decode(): v.decode() for k, v in reply.headers}
    parsed: Any = data.decode()
    if heads.get("content-type") == "application/json":
        parsed = json.loads(data)
    return Answer(reply.status, heads, parsed)


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("toml", "path", "says"),
    [
        ('key_env = "K"\nrpm = 0', "$.gateway.keys.t.rpm", "must be >= 1"),
        ('key_env = "K"\ntpm_burst = 5', "$.gateway.keys.t.tpm_burst", "needs tpm"),
        ("rpm = 3", "$.gateway.keys.t.key_env", "exactly one of the two"),
        ('key_env = "K"\nkey_sha256 = "' + "0" * 64 + '"', "$.gateway.keys.t.key_env", "exactly"),
        ('key_sha256 = "abc"', "$.gateway.keys.t.key_sha256", "64 lower-case hex"),
        ('key_env = "${K}"', "$.gateway.keys.t.key_env", "names the variable itself"),
        ('key_env = "sk live key"', "$.gateway.keys.t.key_env", "not the key itself"),
        ('key_env = "K"\nroutes = ["fsat"]', "$.gateway.keys.t.routes[0]", "did you mean 'fast'"),
        ('key_env = "K"\nspend_cap = -1.0', "$.gateway.keys.t.spend_cap", "positive"),
        ('key_env = "K"\nspend_period = "day"', "$.gateway.keys.t.spend_period", "needs spend"),
        ('key_env = "K"\nbogus = 1', "$.gateway.keys.t.bogus", "unknown field"),
    ],
)
def test_key_config_mistakes_name_their_path(toml: str, path: str, says: str) -> None:
    """Every mistake in a ``[gateway.keys.NAME]`` table is a ConfigError naming its path."""
    text = '[providers.a]\nkind = "mock"\n[routes.fast]\ntargets = ["a:m"]\n'
    text += f"[gateway.keys.t]\n{toml}\n"
    with pytest.raises(ConfigError) as info:
        decode_config(text, environ={"K": "sk-very-secret-value"})
    assert info.value.path == path
    assert says in str(info.value)
    assert "sk-very-secret-value" not in str(info.value)
    assert "sk live key" not in str(info.value)


def test_key_config_round_trips_from_toml() -> None:
    """A full key table decodes into GatewayKeyConfig; globs are not checked against routes."""
    config = decode_config(
        '[providers.a]\nkind = "mock"\n[routes.fast]\ntargets = ["a:m"]\n'
        '[gateway.keys.team-a]\nkey_env = "TEAM_A_KEY"\nroutes = ["fast", "a:*", "team-*"]\n'
        'rpm = 60\nrpm_burst = 10\ntpm = 1000\nspend_cap = 2.5\nspend_period = "day"\n'
    )
    key = config.gateway.keys["team-a"]
    assert (key.routes, key.rpm, key.rpm_burst, key.spend_cap) == (
        ["fast", "a:*", "team-*"],
        60,
        10,
        2.5,
    )


@pytest.mark.parametrize(
    ("env", "says"),
    [({}, "TEAM_A_KEY is not set"), ({"TEAM_A_KEY": "short"}, "shorter than 16")],
)
async def test_key_env_problems_at_start_name_the_variable_not_a_value(
    env: dict[str, str], says: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key whose variable is unset or too short stops the gateway with a ConfigError
    naming the variable and the key's path, never a value."""
    monkeypatch.delenv("TEAM_A_KEY")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config = keyed_config()
    async with open_router(config, providers={"a": MockProvider(name="a")}) as router:
        with pytest.raises(ConfigError) as info:
            GatewayApp(router, config)
    assert info.value.path == "$.gateway.keys.team-a.key_env"
    assert says in str(info.value)
    assert "short'" not in str(info.value)


async def test_two_keys_with_one_value_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two keys with the same value (one by env, one by hash) are a ConfigError: a caller
    would be either."""
    digest = hashlib.sha256(KEY_A.encode()).hexdigest()
    config = keyed_config(b=GatewayKeyConfig(key_sha256=digest))
    async with open_router(config, providers={"a": MockProvider(name="a")}) as router:
        with pytest.raises(ConfigError, match="same value") as info:
            Gateway(router, config)
    assert info.value.path == "$.gateway.keys.team-b.key_sha256"


# --------------------------------------------------------------------------- 401 / 403


async def test_missing_and_unknown_keys_are_401_in_both_vendor_shapes() -> None:
    """No key, a wrong key, a non-Bearer Authorization: 401 in the endpoint's vendor
    shape (OpenAI's error object with its code; Anthropic's authentication_error)."""
    async with open_gateway(keyed_config()) as gw:
        for headers, code in [
            ({}, "missing_api_key"),
            (bearer("sk-wrong-0123456789abcdef"), "invalid_api_key"),
            ({"authorization": f"Basic {KEY_A}"}, "missing_api_key"),
            ({"x-api-key": "sk-wrong-0123456789abcdef"}, "invalid_api_key"),
        ]:
            got = await send(gw, "/v1/chat/completions", chat_body(), headers)
            assert got.status == 401
            error = got.body["error"]
            assert (error["type"], error["code"], error["param"]) == (
                "invalid_request_error",
                code,
                None,
            )
            got = await send(gw, "/v1/messages", messages_body(), headers)
            assert got.status == 401
            assert got.body["type"] == "error"
            assert got.body["error"]["type"] == "authentication_error"
        for path, method in [("/v1/embeddings", "POST"), ("/v1/models", "GET")]:
            got = await send(gw, path, b"{}", {}, method=method)
            assert got.status == 401


async def test_both_header_styles_authenticate_on_every_endpoint() -> None:
    """``Authorization: Bearer`` and ``x-api-key`` both carry the key, to every /v1
    endpoint; /healthz and /readyz need none; /metrics does."""
    async with open_gateway(keyed_config()) as gw:
        for headers in (bearer(KEY_A), {"x-api-key": KEY_A}):
            assert (await send(gw, "/v1/chat/completions", chat_body(), headers)).status == 200
            assert (await send(gw, "/v1/messages", messages_body(), headers)).status == 200
            embed = json.dumps({"model": "a:m", "input": ["x"]}).encode()
            assert (await send(gw, "/v1/embeddings", embed, headers)).status == 200
            assert (await send(gw, "/v1/models", b"", headers, method="GET")).status == 200
            streamed = await send(gw, "/v1/chat/completions", chat_body(stream=True), headers)
            assert streamed.status == 200
            assert streamed.body.endswith("data: [DONE]\n\n")
        for path in ("/healthz", "/readyz"):
            assert (await send(gw, path, method="GET")).status == 200
        assert (await send(gw, "/metrics", method="GET")).status == 401


async def test_a_model_outside_the_keys_routes_is_403() -> None:
    """A key limited to ``fast`` may call ``fast`` but not ``b:m`` directly (403 in both
    shapes, naming the key and what it may use); a ``provider:model`` glob lets targets in."""
    config = keyed_config(
        GatewayKeyConfig(key_env="TEAM_A_KEY", routes=["fast"]),
        b=GatewayKeyConfig(key_env="TEAM_B_KEY", routes=["b:*"]),
    )
    async with open_gateway(config) as gw:
        assert (await send(gw, "/v1/chat/completions", chat_body(), bearer(KEY_A))).status == 200
        got = await send(gw, "/v1/chat/completions", chat_body("b:m"), bearer(KEY_A))
        assert got.status == 403
        error = got.body["error"]
        assert (error["type"], error["code"], error["param"]) == (
            "permission_error",
            "model_not_allowed",
            "model",
        )
        assert "'team-a' may not use model 'b:m'; it may use: fast" in error["message"]
        got = await send(gw, "/v1/messages", messages_body("b:m"), {"x-api-key": KEY_A})
        assert (got.status, got.body["error"]["type"]) == (403, "permission_error")
        embed = json.dumps({"model": "b:m", "input": ["x"]}).encode()
        assert (await send(gw, "/v1/embeddings", embed, bearer(KEY_A))).status == 403
        # team-b: targets of b, nothing else
        assert (
            await send(gw, "/v1/chat/completions", chat_body("b:m"), bearer(KEY_B))
        ).status == 200
        got = await send(gw, "/v1/chat/completions", chat_body("fast"), bearer(KEY_B))
        assert got.status == 403


async def test_models_lists_only_what_the_key_may_use() -> None:
    """``GET /v1/models`` shows each key its own routes and targets, in both shapes."""
    config = keyed_config(
        GatewayKeyConfig(key_env="TEAM_A_KEY", routes=["fast"]),
        b=GatewayKeyConfig(key_env="TEAM_B_KEY"),
    )
    async with open_gateway(config) as gw:
        got = await send(gw, "/v1/models", b"", bearer(KEY_A), method="GET")
        assert [m["id"] for m in got.body["data"]] == ["fast"]
        anthropic = {"x-api-key": KEY_A, "anthropic-version": "2023-06-01"}
        got = await send(gw, "/v1/models", b"", anthropic, method="GET")
        assert [m["id"] for m in got.body["data"]] == ["fast"]
        assert (got.body["first_id"], got.body["last_id"]) == ("fast", "fast")
        got = await send(gw, "/v1/models", b"", bearer(KEY_B), method="GET")
        ids = [m["id"] for m in got.body["data"]]
        assert "fast" in ids
        assert "b:m" in ids


async def test_every_configured_digest_is_compared_in_constant_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The presented key's sha256 is compared with every key's digest by
    hmac.compare_digest, with no early exit (whichever key matches, or none)."""
    calls: list[tuple[bytes, bytes]] = []

    def compare(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return a == b

    monkeypatch.setattr(_gateway_keys.hmac, "compare_digest", compare)
    config = keyed_config(b=GatewayKeyConfig(key_env="TEAM_B_KEY"))
    async with open_gateway(config) as gw:
        for key, status in [(KEY_A, 200), (KEY_B, 200), ("sk-nobody-0123456789abcd", 401)]:
            calls.clear()
            got = await send(gw, "/v1/models", b"", bearer(key), method="GET")
            assert got.status == status
            presented = hashlib.sha256(key.encode()).digest()
            assert [a for a, _ in calls] == [presented, presented]
            assert sorted(b for _, b in calls) == sorted(
                hashlib.sha256(k.encode()).digest() for k in (KEY_A, KEY_B)
            )


async def test_a_key_given_as_its_hash_authenticates() -> None:
    """``key_sha256`` (what ``llm-router key hash`` prints) identifies the same caller as
    the value itself would."""
    digest = hashlib.sha256(KEY_B.encode()).hexdigest()
    config = keyed_config(GatewayKeyConfig(key_sha256=digest))
    async with open_gateway(config) as gw:
        assert (await send(gw, "/v1/chat/completions", chat_body(), bearer(KEY_B))).status == 200
        assert (await send(gw, "/v1/chat/completions", chat_body(), bearer(KEY_A))).status == 401


# --------------------------------------------------------------------------- 429


async def test_rpm_refuses_with_retry_after_on_virtual_time(
    autojump_clock: trio.abc.Clock,
) -> None:
    """rpm = 2: two requests pass at once, the third is a 429 whose retry-after is the
    bucket's refill time (30 s) in both shapes; at exactly +30 s one passes again."""
    config = keyed_config(GatewayKeyConfig(key_env="TEAM_A_KEY", rpm=2))
    async with open_gateway(config) as gw:
        t0 = trio.current_time()
        for _ in range(2):
            assert (
                await send(gw, "/v1/chat/completions", chat_body(), bearer(KEY_A))
            ).status == 200
        got = await send(gw, "/v1/chat/completions", chat_body(), bearer(KEY_A))
        assert (got.status, got.headers["retry-after"]) == (429, "30")
        error = got.body["error"]
        assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limit_exceeded")
        assert "'team-a' is over its rate limit of 2 requests per minute" in error["message"]
        got = await send(gw, "/v1/messages", messages_body(), {"x-api-key": KEY_A})
        assert (got.status, got.body["error"]["type"]) == (429, "rate_limit_error")
        await trio.sleep_until(t0 + 29.0)
        assert (await send(gw, "/v1/chat/completions", chat_body(), bearer(KEY_A))).status == 429
        await trio.sleep_until(t0 + 30.0)
        assert (await send(gw, "/v1/chat/completions", chat_body(), bearer(KEY_A))).status == 200
        assert gw.keys is not None
        stats = gw.keys.statistics()["team-a"]
        assert (stats.requests, stats.refused) == (3, 3)


async def test_tpm_counts_estimate_then_usage(autojump_clock: trio.abc.Clock) -> None:
    """tpm takes input estimate + max_tokens at admission and is corrected to the usage
    reported; a request larger than the bucket is a 400 naming the limit (never passable)."""
    config = keyed_config(GatewayKeyConfig(key_env="TEAM_A_KEY", tpm=600))
    async with open_gateway(config, default=answer(output_tokens=10, latency=0.0)) as gw:
        assert gw.keys is not None
        got = await send(gw, "/v1/chat/completions", chat_body(max_tokens=2000), bearer(KEY_A))
        assert got.status == 400
        assert (
            "more than gateway key 'team-a' may use at once under its tpm"
            in got.body["error"]["message"]
        )
        assert gw.keys.statistics()["team-a"].tpm_tokens == 600.0  # nothing taken
        got = await send(gw, "/v1/chat/completions", chat_body(max_tokens=500), bearer(KEY_A))
        assert got.status == 200
        # 5 + 10 tokens used (the mock's usage), whatever was estimated
        assert gw.keys.statistics()["team-a"].tpm_tokens == pytest.approx(585.0)
        # 585 held: a request estimated above it waits for the bucket
        got = await send(gw, "/v1/chat/completions", chat_body(max_tokens=590), bearer(KEY_A))
        assert got.status == 429
        assert int(got.headers["retry-after"]) >= 1


async def test_spend_cap_refusal_is_429_insufficient_quota_with_the_cap() -> None:
    """Over its cap a key gets 429 ``insufficient_quota`` (OpenAI) / rate_limit_error
    (Anthropic) with the cap in the message; unpriced usage never counts."""
    # one answer: 5 in + 50 out = $0.000105; the estimate (~ prompt + 1000 out) more.
    config = keyed_config(GatewayKeyConfig(key_env="TEAM_A_KEY", spend_cap=0.0025))
    async with open_gateway(config) as gw:
        assert gw.keys is not None
        statuses = []
        for _ in range(30):
            got = await send(gw, "/v1/chat/completions", chat_body(max_tokens=1000), bearer(KEY_A))
            statuses.append(got.status)
            if got.status == 429:
                break
        assert statuses[-1] == 429
        assert set(statuses[:-1]) == {200}
        error = got.body["error"]
        assert (error["type"], error["code"]) == ("rate_limit_error", "insufficient_quota")
        assert (
            "'team-a' has reached its spend cap of $0.0025 for this gateway process's"
            in (error["message"])
        )
        got = await send(gw, "/v1/messages", messages_body(max_tokens=1000), {"x-api-key": KEY_A})
        assert (got.status, got.body["error"]["type"]) == (429, "rate_limit_error")
        assert "spend cap of $0.0025" in got.body["error"]["message"]
        stats = gw.keys.statistics()["team-a"]
        assert stats.spent == pytest.approx((len(statuses) - 1) * 0.000105)
        assert stats.reserved == pytest.approx(0.0, abs=1e-12)


@settings(max_examples=30, deadline=None)
@given(
    fits=st.floats(0.5, 6.0),
    n=st.integers(1, 40),
    max_tokens=st.integers(10, 400),
    output_share=st.sampled_from([0.0, 0.5, 1.0]),
    prompt_words=st.integers(1, 800),
    latency=st.floats(0.0, 3.0),
    hedged=st.booleans(),
    stream_every=st.integers(0, 4),
)
# The corner the reservation is for: a hedged race whose loser is charged a large
# prompt besides the winner's full answer (a reservation of one answer crosses here).
@example(
    fits=3.0,
    n=6,
    max_tokens=10,
    output_share=1.0,
    prompt_words=800,
    latency=1.0,
    hedged=True,
    stream_every=0,
)
@example(
    fits=3.0,
    n=6,
    max_tokens=10,
    output_share=1.0,
    prompt_words=800,
    latency=1.0,
    hedged=True,
    stream_every=2,
)
def test_concurrent_requests_of_a_key_never_cross_its_cap(
    fits: float,
    n: int,
    max_tokens: int,
    output_share: float,
    prompt_words: int,
    latency: float,
    hedged: bool,
    stream_every: int,
) -> None:
    """Invariant: N concurrent requests of one key (plain and streamed; on a hedged
    two-target route too, where the loser's prompt is charged besides the winner's
    answer) never together spend more than its cap, even when every answer costs all it
    may (the full prompt, ``max_tokens`` out); every refusal is a 429 insufficient_quota,
    nothing stays reserved, and the key's books match the router's."""
    prompt = " ".join(["word"] * prompt_words)
    output = int(max_tokens * output_share)  # the provider honours max_tokens
    route = RouteConfig(targets=["a:m", "b:m"], hedge=HedgeConfig(max_attempts=2, delay=0.0))
    routes = {"fast": route} if hedged else None
    statuses: list[int] = []

    def reply(request: ChatRequest) -> MockResponse:
        # The prompt as the router counted it: the answer costs exactly its estimate
        # when it uses all of max_tokens.
        counted = Needs.of(request, streaming=False, default_max_tokens=1).input_tokens
        usage = Usage(input_tokens=counted, output_tokens=output)
        return MockResponse(text="ok", latency=latency, usage=usage)

    def body(stream: bool) -> bytes:
        return json.dumps(
            {
                "model": "fast",
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": max_tokens,
                "stream": stream,
            }
        ).encode()

    async def main() -> None:
        probe = ChatRequest(model="fast", messages=[Message.user(prompt)], max_tokens=max_tokens)
        full = Needs.of(probe, streaming=False, default_max_tokens=1024)
        one = (full.input_tokens * 1.0 + max_tokens * 2.0) / 1e6  # PRICES
        cap = fits * one
        config = keyed_config(GatewayKeyConfig(key_env="TEAM_A_KEY", spend_cap=cap), routes=routes)
        mocks = {m: MockProvider(name=m, default=reply, record=False) for m in ("a", "b")}
        async with open_router(config, providers=mocks) as router:
            gw = Gateway(router, config)
            assert gw.keys is not None

            async def one_request(i: int) -> None:
                stream = stream_every > 0 and i % stream_every == 0
                got = await send(gw, "/v1/chat/completions", body(stream), bearer(KEY_A))
                statuses.append(got.status)
                if got.status == 429:
                    assert got.body["error"]["code"] == "insufficient_quota"

            async with trio.open_nursery() as nursery:
                for i in range(n):
                    nursery.start_soon(one_request, i)
            stats = gw.keys.statistics()["team-a"]
            assert stats.spent <= cap * (1 + 1e-9)
            assert stats.reserved == pytest.approx(0.0, abs=1e-12)
            assert stats.requests == statuses.count(200)
            # what the router charged, by its own books, is what the key settled
            assert math.isclose(router.statistics().spend, stats.spent, abs_tol=1e-12)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert set(statuses) <= {200, 429}
    assert len(statuses) == n


# --------------------------------------------------------------------------- who spent what


async def test_key_name_in_audit_and_events_and_key_value_nowhere(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The key's name (never its value) is in the request's metadata, so in the audit
    record and the RequestFinished event; the value appears in no log line (DEBUG), reply,
    error, audit line, event or repr, for answered, refused and rejected requests."""
    audit = tmp_path / "audit.jsonl"
    config = keyed_config(
        GatewayKeyConfig(key_env="TEAM_A_KEY", routes=["fast"], rpm=2),
        audit=AuditConfig(path=str(audit)),
    )
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    finished: list[RequestFinished] = []
    async with open_gateway(config) as gw, gw.router.subscribe() as events:
        for headers, body in [
            (bearer(KEY_A), chat_body()),
            ({"x-api-key": KEY_A}, chat_body(stream=True)),
            (bearer(KEY_A), chat_body("b:m")),  # 403
            (bearer(KEY_A), chat_body()),  # 429
            (bearer(KEY_A + "x"), chat_body()),  # 401, a near-miss of the key
            ({"x-api-key": KEY_A}, b"{not json"),
        ]:
            got = await send(gw, "/v1/chat/completions", body, headers)
            seen.append(json.dumps(got.body) + json.dumps(got.headers))
        seen += [repr(gw), repr(gw.keys), repr(config), repr(gw.keys.states if gw.keys else 0)]
        seen.append(repr(gw.keys.statistics() if gw.keys else 0))
        while True:  # every event was emitted by now (a stream's when it closed)
            try:
                event = events.receive_nowait()
            except trio.WouldBlock:
                break
            seen.append(repr(event))
            if isinstance(event, RequestFinished):
                finished.append(event)
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [r["metadata"]["gateway_key"] for r in records] == ["team-a", "team-a"]
    assert [e.request.metadata["gateway_key"] for e in finished if e.request] == ["team-a"] * 2
    everything = "\n".join([*seen, audit.read_text(), caplog.text])
    assert KEY_A not in everything
    assert KEY_A[6:] not in everything  # nor most of it
    assert "team-a" in caplog.text  # the refusals were logged, by name


async def test_a_client_cannot_spoof_the_key_name_in_metadata(tmp_path: Path) -> None:
    """``metadata.gateway_key`` sent by a client is replaced by the real key's name."""
    audit = tmp_path / "audit.jsonl"
    config = keyed_config(audit=AuditConfig(path=str(audit)))
    body = json.loads(chat_body())
    body["metadata"] = {"gateway_key": "team-b"}
    async with open_gateway(config) as gw:
        got = await send(gw, "/v1/chat/completions", json.dumps(body).encode(), bearer(KEY_A))
        assert got.status == 200
    record = json.loads(audit.read_text().splitlines()[0])
    assert record["metadata"]["gateway_key"] == "team-a"


# --------------------------------------------------------------------------- binding


def test_non_loopback_bind_needs_keys() -> None:
    """Without keys a non-loopback host is refused (naming keys as the way out); with
    keys it is allowed."""
    bare = RouterConfig(providers={"a": ProviderConfig(kind="mock")})
    for host in ("127.0.0.1", "::1", "localhost"):
        check_bind(host, bare)
    with pytest.raises(ConfigError, match=r"\[gateway.keys.NAME\]") as info:
        check_bind("0.0.0.0", bare)
    assert info.value.path == "$.gateway.host"
    check_bind("0.0.0.0", keyed_config())
    check_bind("192.0.2.7", keyed_config())


async def test_keys_serve_non_loopback_clients_and_keyless_does_not() -> None:
    """A gateway with keys serves a remote client that has one (and 401s one that does
    not); without keys a remote client is a 403."""
    async with open_gateway(keyed_config()) as gw:
        remote = "192.0.2.7"
        got = await send(gw, "/v1/chat/completions", chat_body(), bearer(KEY_A), client=remote)
        assert got.status == 200
        got = await send(gw, "/v1/chat/completions", chat_body(), {}, client=remote)
        assert got.status == 401
    bare = RouterConfig(providers={n: ProviderConfig(kind="mock") for n in ("a", "b")})
    async with open_gateway(bare) as gw:
        got = await send(gw, "/v1/chat/completions", chat_body("a:m"), {}, client=remote)
        assert got.status == 403


# --------------------------------------------------------------------------- the wire, the SDKs


@asynccontextmanager
async def served(config: RouterConfig) -> AsyncIterator[str]:
    """The gateway over mocks on a loopback port (hypercorn's trio worker): its URL."""
    async with open_app(config) as app, trio.open_nursery() as nursery:
        url = await nursery.start(functools.partial(serve_gateway, app, port=0))
        yield url
        nursery.cancel_scope.cancel()


async def test_over_the_wire_401_and_429_headers() -> None:
    """Over a real socket: 401 for no key, then the rpm 429 with its retry-after header."""
    config = keyed_config(GatewayKeyConfig(key_env="TEAM_A_KEY", rpm=1))
    async with served(config) as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/v1/chat/completions", content=chat_body())
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "missing_api_key"
        ok = await client.post("/v1/chat/completions", content=chat_body(), headers=bearer(KEY_A))
        assert ok.status_code == 200
        refused = await client.post(
            "/v1/chat/completions", content=chat_body(), headers=bearer(KEY_A)
        )
        assert (refused.status_code, refused.headers["retry-after"]) == (429, "60")


async def test_official_sdks_get_their_typed_errors() -> None:
    """The openai and anthropic SDKs raise AuthenticationError, PermissionDeniedError and
    RateLimitError (429 from a key's rpm) against the gateway, and succeed with the key."""
    import anthropic
    import openai

    config = keyed_config(
        GatewayKeyConfig(key_env="TEAM_A_KEY", routes=["fast"], rpm=2),
        b=GatewayKeyConfig(key_env="TEAM_B_KEY", routes=["fast"], rpm=2),
    )
    async with (
        served(config) as url,
        openai.AsyncOpenAI(api_key="sk-wrong-0123", base_url=f"{url}/v1", max_retries=0) as o_bad,
        openai.AsyncOpenAI(api_key=KEY_A, base_url=f"{url}/v1", max_retries=0) as o_good,
        anthropic.AsyncAnthropic(api_key="sk-wrong-0123", base_url=url, max_retries=0) as a_bad,
        anthropic.AsyncAnthropic(api_key=KEY_B, base_url=url, max_retries=0) as a_good,
    ):
        messages: Any = [{"role": "user", "content": "hi"}]
        with pytest.raises(openai.AuthenticationError) as auth:
            await o_bad.chat.completions.create(model="fast", messages=messages)
        assert auth.value.status_code == 401
        with pytest.raises(openai.PermissionDeniedError):
            await o_good.chat.completions.create(model="b:m", messages=messages)
        reply = await o_good.chat.completions.create(model="fast", messages=messages)
        assert reply.choices[0].message.content == "ok"
        await o_good.chat.completions.create(model="fast", messages=messages)
        with pytest.raises(openai.RateLimitError) as limited:
            await o_good.chat.completions.create(model="fast", messages=messages)
        assert limited.value.response.headers["retry-after"] == "30"

        with pytest.raises(anthropic.AuthenticationError):
            await a_bad.messages.create(model="fast", max_tokens=50, messages=messages)
        with pytest.raises(anthropic.PermissionDeniedError):
            await a_good.messages.create(model="b:m", max_tokens=50, messages=messages)
        message = await a_good.messages.create(model="fast", max_tokens=50, messages=messages)
        assert message.content[0].type == "text"
        await a_good.messages.create(model="fast", max_tokens=50, messages=messages)
        with pytest.raises(anthropic.RateLimitError):
            await a_good.messages.create(model="fast", max_tokens=50, messages=messages)


async def test_bare_model_ids_are_checked_as_the_target_they_resolve_to() -> None:
    """Over loopback, gateway to fake upstream: a key allowed ``oa:gpt-4o-mini`` may send
    the bare ``gpt-4o-mini`` (the router resolves it to that target), but neither bare
    ``gpt-4o`` nor ``oa:gpt-4o``: a bare id is no way around the key's routes."""
    from providers import OpenAIProvider, Secret
    from providers.testing import Scenario, open_fake_upstream

    config = RouterConfig(
        providers={"oa": ProviderConfig(kind="openai")},
        gateway=GatewayConfig(
            keys={"team-a": GatewayKeyConfig(key_env="TEAM_A_KEY", routes=["oa:gpt-4o-mini"])}
        ),
    )
    async with (
        open_fake_upstream({"oa": Scenario()}) as upstream,
        httpx.AsyncClient() as upstream_client,
    ):
        provider = OpenAIProvider(
            name="oa",
            api_key=Secret("sk-upstream-0123456789abcdef"),
            base_url=upstream.base_url("oa", "openai"),
            client=upstream_client,
        )
        async with (
            open_router(config, providers={"oa": provider}) as router,
            trio.open_nursery() as nursery,
        ):
            url = await nursery.start(
                functools.partial(serve_gateway, GatewayApp(router, config), port=0)
            )
            async with httpx.AsyncClient(base_url=url, headers=bearer(KEY_A)) as client:
                statuses = {}
                for model in ("gpt-4o-mini", "gpt-4o", "oa:gpt-4o", "oa:gpt-4o-mini"):
                    response = await client.post("/v1/chat/completions", content=chat_body(model))
                    statuses[model] = response.status_code
            nursery.cancel_scope.cancel()
    assert statuses == {"gpt-4o-mini": 200, "gpt-4o": 403, "oa:gpt-4o": 403, "oa:gpt-4o-mini": 200}
    assert len(upstream.requests) == 2  # the refused ones never left the gateway


async def test_a_request_cut_by_its_deadline_is_charged_its_reservation(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A request cancelled before its answer (x-request-timeout) leaves no trace to settle
    from: the key is charged its whole reservation (never less than it may have cost), and
    nothing stays reserved."""
    config = keyed_config(GatewayKeyConfig(key_env="TEAM_A_KEY", spend_cap=1.0))
    async with open_gateway(config, default=answer(latency=5.0)) as gw:
        assert gw.keys is not None
        headers = {**bearer(KEY_A), "x-request-timeout": "1"}
        got = await send(gw, "/v1/chat/completions", chat_body(max_tokens=1000), headers)
        assert got.status == 504
        stats = gw.keys.statistics()["team-a"]
        needs = 1000 * 2.0 / 1e6  # the output budget alone, at $2 per million
        assert stats.spent > needs
        assert stats.spent < needs + 100 * 1.0 / 1e6  # + a prompt of "hi", well under 100
        assert stats.reserved == 0.0


def test_key_new_and_key_hash_commands() -> None:
    """``llm-router key new`` prints a fresh key and its sha256; ``key hash`` reads a
    key from standard input and prints the sha256 that ``key_sha256`` takes."""
    from tests import _cli_runner

    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    made = _cli_runner.run(["key", "new"], env=env)
    assert made.returncode == 0, made.stderr
    lines = dict(line.split(":", 1) for line in made.stdout.splitlines())
    value, digest = lines["key"].strip(), lines["key_sha256"].strip()
    assert value.startswith("sk-gw-")
    assert len(value) >= 40
    assert digest == hashlib.sha256(value.encode()).hexdigest()
    hashed = _cli_runner.run(["key", "hash"], env=env, stdin=value + "\n")
    assert (hashed.returncode, hashed.stdout) == (0, digest + "\n")
    assert value not in hashed.stdout + hashed.stderr
    empty = _cli_runner.run(["key", "hash"], env=env, stdin="\n")
    assert empty.returncode == 1
    assert "no key on standard input" in empty.stderr


async def test_a_refused_request_takes_nothing_from_the_other_limits(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A request refused by one limit gives back what the earlier ones took: a 403, a
    spend-cap 429 or a request too large for tpm leaves the rpm and tpm buckets full."""
    config = keyed_config(
        GatewayKeyConfig(key_env="TEAM_A_KEY", routes=["fast"], rpm=1, tpm=2000, spend_cap=0.000001)
    )
    async with open_gateway(config) as gw:
        assert gw.keys is not None
        for _ in range(3):
            got = await send(gw, "/v1/chat/completions", chat_body("b:m"), bearer(KEY_A))
            assert got.status == 403
            got = await send(gw, "/v1/chat/completions", chat_body(), bearer(KEY_A))
            assert (got.status, got.body["error"]["code"]) == (429, "insufficient_quota")
        got = await send(gw, "/v1/chat/completions", chat_body(max_tokens=5000), bearer(KEY_A))
        assert got.status == 400  # larger than the tpm bucket
        stats = gw.keys.statistics()["team-a"]
        assert (stats.rpm_tokens, stats.tpm_tokens, stats.requests, stats.refused) == (
            1.0,
            2000.0,
            0,
            7,
        )


def test_serve_with_keys_binds_every_address_and_never_shows_a_key(tmp_path: Path) -> None:
    """``llm-router serve --host 0.0.0.0`` starts when keys are configured (it refuses
    without them); a keyed request is answered, a wrong key is a 401, and after SIGTERM
    neither the process's output nor the audit log holds the key's value, while the
    audit record names the key."""
    import os
    import select
    import signal
    import subprocess
    import sys
    import time

    (tmp_path / "router.toml").write_text(
        '[providers.a]\nkind = "mock"\n[routes.fast]\ntargets = ["a:m"]\n'
        '[audit]\npath = "audit.jsonl"\n'
        '[gateway.keys.team-a]\nkey_env = "TEAM_A_KEY"\nroutes = ["fast"]\n'
    )
    root = Path(__file__).resolve().parents[1]
    any_address = ("--host", "0.0.0.0", "--port", "0")
    env = {**os.environ, "TEAM_A_KEY": KEY_A, "NO_PROXY": "*", "no_proxy": "*"}
    env["PYTHONPATH"] = str(root)
    proc = subprocess.Popen(
        [sys.executable, "-m", "router", "serve", "--config", "router.toml", *any_address],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        prefix = "llm-router gateway listening on "
        deadline = time.monotonic() + 60.0
        url = None
        first = ""
        while url is None and time.monotonic() < deadline:
            if select.select([proc.stdout], [], [], 0.1)[0]:
                first = proc.stdout.readline()
                if first.startswith(prefix):
                    url = first.removeprefix(prefix).strip()
                elif not first:
                    break
        assert url is not None, proc.stderr.read() if proc.stderr else ""
        assert url.startswith("http://0.0.0.0:")
        local = url.replace("0.0.0.0", "127.0.0.1")
        with httpx.Client(base_url=local, trust_env=False) as client:
            ok = client.post("/v1/chat/completions", content=chat_body(), headers=bearer(KEY_A))
            assert ok.status_code == 200
            wrong = client.post(
                "/v1/chat/completions", content=chat_body(), headers=bearer(KEY_A[:-1])
            )
            assert wrong.status_code == 401
            assert KEY_A[:-1] not in wrong.text
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    audit = (tmp_path / "audit.jsonl").read_text()
    assert json.loads(audit.splitlines()[0])["metadata"]["gateway_key"] == "team-a"
    for text in (first, out, err, audit):
        assert KEY_A[:-1] not in text


async def test_a_periodic_cap_says_when_it_resets_and_resets_then(
    autojump_clock: trio.abc.Clock,
) -> None:
    """``spend_period = 60``: over the cap, the 429's retry-after is the whole seconds
    left in the period and the message says so; at the period's end the key spends again."""
    config = keyed_config(
        GatewayKeyConfig(key_env="TEAM_A_KEY", spend_cap=0.0021, spend_period=60.0)
    )
    async with open_gateway(config) as gw:
        t0 = trio.current_time()
        assert (
            await send(gw, "/v1/chat/completions", chat_body(max_tokens=1000), bearer(KEY_A))
        ).status == 200
        await trio.sleep_until(t0 + 20.0)
        got = await send(gw, "/v1/chat/completions", chat_body(max_tokens=1000), bearer(KEY_A))
        assert (got.status, got.headers["retry-after"]) == (429, "40")
        assert "spend cap of $0.0021 per 60s" in got.body["error"]["message"]
        assert "it resets in 40s" in got.body["error"]["message"]
        await trio.sleep_until(t0 + 60.0)
        got = await send(gw, "/v1/chat/completions", chat_body(max_tokens=1000), bearer(KEY_A))
        assert got.status == 200


async def test_a_capped_key_sends_the_output_budget_it_was_charged_for() -> None:
    """A request without ``max_tokens`` from a key with a spend cap (or tpm) goes upstream
    with ``max_tokens = default_max_tokens`` (the budget it reserved for: OpenAI's API
    would otherwise answer at any length); a client's own max_tokens, and an uncapped
    key's request, go as they are."""
    config = keyed_config(
        GatewayKeyConfig(key_env="TEAM_A_KEY", spend_cap=1.0),
        b=GatewayKeyConfig(key_env="TEAM_B_KEY"),
    )
    mock = MockProvider(name="a", default=answer(latency=0.0))
    no_budget = json.dumps({"model": "fast", "messages": [{"role": "user", "content": "hi"}]})
    async with open_router(config, providers={"a": mock, "b": MockProvider(name="b")}) as router:
        gw = Gateway(router, config)
        for key, body in [(KEY_A, no_budget.encode()), (KEY_A, chat_body(max_tokens=7))]:
            assert (await send(gw, "/v1/chat/completions", body, bearer(key))).status == 200
        assert (
            await send(gw, "/v1/chat/completions", no_budget.encode(), bearer(KEY_B))
        ).status == 200
    assert [r.max_tokens for r in mock.requests] == [config.default_max_tokens, 7, None]
    assert [r.metadata["gateway_key"] for r in mock.requests] == ["team-a", "team-a", "team-b"]
