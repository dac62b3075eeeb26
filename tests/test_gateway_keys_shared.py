"""Gateway keys' limits shared through Redis (``[shared]``): a key's rpm, tpm and spend
cap bind every gateway worker together (docs/gateway.md "Keys", docs/scaling.md).

Each test runs two gateways, each over its own router with its own shared client (so
two process ids and two connections, as two workers would have), against one real
``redis-server``.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import msgspec
import pytest
import trio

from providers import ChatRequest, ConfigError, Message
from router import open_router
from router._tools._gateway import Gateway, GatewayApp
from router.config import BudgetConfig, GatewayKeyConfig, RouterConfig, SharedConfig
from router.testing import MockProvider
from tests._redis import RedisServer
from tests.test_gateway_keys import KEY_A, KEY_B, answer, bearer, chat_body, keyed_config, send
from tests.test_gateway_serve import start, stop, url_from


@pytest.fixture(autouse=True)
def _key_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEAM_A_KEY", KEY_A)
    monkeypatch.setenv("TEAM_B_KEY", KEY_B)


def shared(config: RouterConfig, server: RedisServer, prefix: str, **more: float) -> RouterConfig:
    return msgspec.structs.replace(
        config,
        shared=SharedConfig(redis_url=server.url, prefix=prefix, timeout=1.0, **more),  # type: ignore[arg-type]
    )


@asynccontextmanager
async def two_gateways(
    config: RouterConfig, latency: float = 0.0
) -> AsyncIterator[tuple[Gateway, Gateway]]:
    """Two workers of one gateway: two routers, two shared clients, one Redis."""

    def mocks() -> dict[str, MockProvider]:
        return {
            name: MockProvider(name=name, default=answer(latency=latency), record=False)
            for name in ("a", "b")
        }

    async with (
        open_router(config, providers=mocks()) as one,
        open_router(config, providers=mocks()) as two,
    ):
        yield GatewayApp(one, config).gateway, GatewayApp(two, config).gateway


async def test_a_keys_rpm_binds_every_worker(redis_server: RedisServer) -> None:
    """Invariant: a key's rpm bucket is one for all workers: with rpm = 3 (a burst of
    three), requests alternating between two workers pass three times in total, then
    get a 429 with the wait Redis computed (about 20 s) from either worker."""
    config = shared(
        keyed_config(GatewayKeyConfig(key_env="TEAM_A_KEY", rpm=3)), redis_server, "krpm"
    )
    async with two_gateways(config) as (one, two):
        statuses = []
        for i in range(8):
            got = await send(
                one if i % 2 else two, "/v1/chat/completions", chat_body(), bearer(KEY_A)
            )
            statuses.append(got.status)
        assert statuses == [200, 200, 200] + [429] * 5
        assert 18 <= int(got.headers["retry-after"]) <= 20
        assert "over its rate limit of 3 requests per minute" in got.body["error"]["message"]
        assert one.keys is not None
        assert two.keys is not None
        a, b = one.keys.statistics()["team-a"], two.keys.statistics()["team-a"]
        assert (a.requests + b.requests, a.refused + b.refused) == (3, 5)


async def test_a_keys_tpm_is_shared_and_reconciled_with_usage(redis_server: RedisServer) -> None:
    """Invariant: a key's tpm bucket is one for all workers, taken at the estimate and
    corrected to the usage reported (in Redis, for every worker): after worker one's
    request (508 tokens estimated, 55 used) worker two cannot take 598 tokens but can
    take 538."""
    config = shared(
        keyed_config(GatewayKeyConfig(key_env="TEAM_A_KEY", tpm=600)), redis_server, "ktpm"
    )
    async with two_gateways(config) as (one, two):
        got = await send(one, "/v1/chat/completions", chat_body(max_tokens=500), bearer(KEY_A))
        assert got.status == 200
        await trio.sleep(0.1)  # worker one's correction reaches Redis (queued, lingering)
        got = await send(two, "/v1/chat/completions", chat_body(max_tokens=590), bearer(KEY_A))
        assert got.status == 429  # an unshared bucket would have its 600
        assert "over its rate limit of 600 tokens per minute" in got.body["error"]["message"]
        got = await send(two, "/v1/chat/completions", chat_body(max_tokens=530), bearer(KEY_A))
        assert got.status == 200  # only the 55 used were kept (not the 508 estimated)


async def _requests_until_refused(gateways: list[Gateway], limit: int = 40) -> list[int]:
    statuses: list[int] = []
    for i in range(limit):
        got = await send(
            gateways[i % len(gateways)],
            "/v1/chat/completions",
            chat_body(max_tokens=1000),
            bearer(KEY_A),
        )
        statuses.append(got.status)
        if got.status != 200:
            break
        await trio.sleep(0.05)  # its settle reaches Redis before the next reserves
    return statuses


@pytest.mark.parametrize("router_cap", [False, True])
async def test_a_keys_spend_cap_binds_every_worker(
    redis_server: RedisServer, router_cap: bool
) -> None:
    """Invariant: two workers together pass exactly as many requests under a key's
    spend cap as one worker alone does, and spend no more than the cap; the refusal
    says the cap is every worker's together — also when the router has shared caps of
    its own (then one task carries both)."""
    key = GatewayKeyConfig(key_env="TEAM_A_KEY", spend_cap=0.0025)
    base = keyed_config(key)
    if router_cap:
        base = msgspec.structs.replace(base, budget=BudgetConfig(limit=100.0, period="day"))
    alone_config = shared(base, redis_server, f"kcap1{router_cap}")
    async with two_gateways(alone_config) as (one, _):
        alone = await _requests_until_refused([one])
    assert alone[-1] == 429
    config = shared(base, redis_server, f"kcap2{router_cap}")
    async with two_gateways(config) as (one, two):
        together = await _requests_until_refused([one, two])
        got = await send(one, "/v1/chat/completions", chat_body(max_tokens=1000), bearer(KEY_A))
        assert got.status == 429
        assert "every worker of this gateway together" in got.body["error"]["message"]
        assert one.keys is not None
        assert two.keys is not None
        spent = one.keys.statistics()["team-a"].spent + two.keys.statistics()["team-a"].spent
        if router_cap:  # the router's own cap is shared too, in the same round trips
            (stats,) = one.router.statistics().budgets
            assert stats.spent == pytest.approx(spent, abs=1e-9)  # both workers' spend
    assert together == alone
    assert spent <= 0.0025


async def test_without_redis_a_key_falls_back_to_its_fair_share(redis_server: RedisServer) -> None:
    """Redis gone: each of two live workers admits a key's requests from its own bucket
    at half the key's rpm (the fair share of the two processes it last saw), then 429."""
    config = shared(
        keyed_config(GatewayKeyConfig(key_env="TEAM_A_KEY", rpm=4)),
        redis_server,
        "kfair",
        heartbeat=0.1,
    )
    async with two_gateways(config) as (one, two):
        await trio.sleep(0.3)  # a few heartbeats: each sees two live processes
        redis_server.kill()
        for gw in (one, two):
            statuses = [
                (await send(gw, "/v1/chat/completions", chat_body(), bearer(KEY_A))).status
                for _ in range(3)
            ]
            assert statuses == [200, 200, 429], statuses


@pytest.mark.parametrize("period", [None, "day"])
async def test_shared_key_limits_differing_from_the_routers_are_refused(
    redis_server: RedisServer, period: str | None
) -> None:
    """A gateway whose keys' limits differ from those its router shares on Redis is
    refused at start, naming the key (the shared limits are the router's)."""
    config = shared(
        keyed_config(GatewayKeyConfig(key_env="TEAM_A_KEY", spend_cap=1.0, spend_period=period)),
        redis_server,
        "kdiff",
    )
    other = keyed_config(GatewayKeyConfig(key_env="TEAM_A_KEY", spend_cap=2.0))
    async with open_router(
        config, providers={"a": MockProvider(name="a"), "b": MockProvider(name="b")}
    ) as router:
        with pytest.raises(Exception, match="'team-a': its limits differ") as info:
            GatewayApp(router, other)
        assert "gateway.keys.team-a" in str(info.value)


def test_two_served_workers_share_a_keys_rpm(redis_server: RedisServer, tmp_path: Path) -> None:
    """Two ``llm-router serve`` processes with one configuration file (``[shared]`` on
    one Redis, a key with rpm = 4) in front of the fake upstream: requests alternating
    between them pass four times in total, then 429 from both."""
    upstream = start("upstream", "--port", "0", cwd=tmp_path)
    workers: list[subprocess.Popen[str]] = []
    try:
        upstream_url = url_from(upstream, "fake upstream listening on ")
        (tmp_path / "router.toml").write_text(
            f"""
[providers.oa]
kind = "openai"
base_url = "{upstream_url}/oa/v1"
api_key_env = "GW_SERVE_TEST_KEY"

[shared]
redis_url = "{redis_server.url}"
prefix = "served"

[gateway.keys.team-a]
key_env = "TEAM_A_KEY"
rpm = 4
"""
        )
        urls = []
        for _ in range(2):
            workers.append(start("serve", "--config", "router.toml", "--port", "0", cwd=tmp_path))
            urls.append(url_from(workers[-1], "llm-router gateway listening on "))
        body = {"model": "oa:gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        with httpx.Client(timeout=30, headers=bearer(KEY_A)) as client:
            statuses = [
                client.post(f"{urls[i % 2]}/v1/chat/completions", json=body).status_code
                for i in range(10)
            ]
        assert statuses == [200] * 4 + [429] * 6
    finally:
        for proc in workers:
            stop(proc)
        stop(upstream)


# -- hostile review: cancellation, config, refusals ------------------------------------


def _hi() -> ChatRequest:
    return ChatRequest(model="fast", messages=[Message.user("hi")], max_tokens=50)


@pytest.mark.parametrize("during", ["rate", "reservation"])
async def test_an_admission_cancelled_while_redis_answers_keeps_nothing(
    redis_server: RedisServer, during: str
) -> None:
    """A key's admission cancelled while Redis answers (its rpm/tpm script has run, or
    its spend reservation is on the wire) gives back what it took: with rpm = 1 the next
    request (from the other worker) passes, and the cancelled one is neither admitted
    nor counted as refused."""
    key = GatewayKeyConfig(key_env="TEAM_A_KEY", rpm=1, tpm=1000, spend_cap=1.0)
    config = shared(keyed_config(key), redis_server, f"kcancel{during}")
    async with two_gateways(config) as (one, two):
        assert one.keys is not None
        state = one.keys.by_name["team-a"]
        assert state.shared is not None
        assert state.shared.gate is not None
        assert state.shared.budget is not None
        client = state.shared.gate.client
        real = client.call
        target = state.shared.gate._keys if during == "rate" else state.shared.budget._owner._script
        with trio.CancelScope() as scope:

            async def call(script: object, keys: list[str], args: list[object]) -> object:
                reply = await real(script, keys, args)
                if target is keys or target is script:
                    scope.cancel()  # the answer is here; the caller is cancelled now
                    await trio.lowlevel.checkpoint()
                return reply

            client.call = call  # type: ignore[method-assign]
            try:
                await one.keys.admit(state, one.router, "fast", request=_hi())
            finally:
                del client.call
        assert scope.cancelled_caught
        await trio.sleep(0.1)  # worker one's refund reaches Redis (queued, lingering)
        got = await send(two, "/v1/chat/completions", chat_body(), bearer(KEY_A))
        assert got.status == 200, got.body
        stats = one.keys.statistics()["team-a"]
        assert (stats.requests, stats.refused) == (0, 0)


async def test_a_shared_cap_without_period_says_it_never_resets(redis_server: RedisServer) -> None:
    """A key's shared spend cap without ``spend_period`` (one window, never reset) is
    refused as the local one is: no reset to wait for (``retry-after: 1``, the gateway's
    floor, not a year) and no "it resets in ..." in the message, which says it never
    resets."""
    key = GatewayKeyConfig(key_env="TEAM_A_KEY", spend_cap=0.0025)
    config = shared(keyed_config(key), redis_server, "knever")
    async with two_gateways(config) as (one, _):
        statuses = await _requests_until_refused([one])
        assert statuses[-1] == 429
        got = await send(one, "/v1/chat/completions", chat_body(max_tokens=1000), bearer(KEY_A))
        assert got.status == 429
        message = got.body["error"]["message"]
        assert "it never resets" in message
        assert "resets in" not in message
        assert got.headers["retry-after"] == "1"  # as without [shared]; not a year


async def test_a_gateway_key_with_limits_the_router_does_not_share_is_refused(
    redis_server: RedisServer,
) -> None:
    """A gateway over a ``[shared]`` router, with a key whose limits the router's own
    configuration does not have (so nothing on Redis), is refused at start naming that
    key: its limits would otherwise be each worker's own, silently."""
    config = shared(
        keyed_config(GatewayKeyConfig(key_env="TEAM_A_KEY", rpm=3)), redis_server, "kmissing"
    )
    other = keyed_config(
        GatewayKeyConfig(key_env="TEAM_A_KEY", rpm=3),
        b=GatewayKeyConfig(key_env="TEAM_B_KEY", rpm=5),
    )
    async with open_router(
        config, providers={"a": MockProvider(name="a"), "b": MockProvider(name="b")}
    ) as router:
        with pytest.raises(ConfigError, match="'team-b'") as info:
            GatewayApp(router, other)
        assert info.value.path == "$.gateway.keys.team-b"


async def test_key_statistics_say_whether_redis_or_the_local_buckets_decide(
    redis_server: RedisServer,
) -> None:
    """After shared admissions a key's statistics say ``limits == "shared"``: its
    ``rpm_tokens`` (still full: 3) are the local fallback, not what is left on Redis
    (1); with Redis gone they say ``"local"``, and a key with only a cap says ``None``."""
    key = GatewayKeyConfig(key_env="TEAM_A_KEY", rpm=3)
    capped = GatewayKeyConfig(key_env="TEAM_B_KEY", spend_cap=1.0)
    config = shared(keyed_config(key, b=capped), redis_server, "kstats")
    async with two_gateways(config) as (one, _):
        assert one.keys is not None
        for _ in range(2):
            got = await send(one, "/v1/chat/completions", chat_body(), bearer(KEY_A))
            assert got.status == 200
        stats = one.keys.statistics()
        assert (stats["team-a"].requests, stats["team-a"].limits) == (2, "shared")
        assert stats["team-a"].rpm_tokens == 3.0  # the fallback bucket, not drawn from
        assert stats["team-b"].limits is None
        redis_server.kill()
        got = await send(one, "/v1/chat/completions", chat_body(), bearer(KEY_A))
        assert got.status == 200  # Redis does not answer: the local bucket decides
        assert one.keys.statistics()["team-a"].limits == "local"


async def test_a_grant_refused_by_the_cap_gives_its_request_back_on_redis(
    redis_server: RedisServer,
) -> None:
    """Invariant: a request granted by the shared rpm bucket and then refused by the
    key's cap takes nothing: with rpm = 2 and a cap no request fits under, five
    requests across two workers are all refused by the cap, never by the rpm."""
    key = GatewayKeyConfig(key_env="TEAM_A_KEY", rpm=2, spend_cap=0.000001)
    config = shared(keyed_config(key), redis_server, "kcaprpm")
    async with two_gateways(config) as (one, two):
        codes = []
        for i in range(5):
            got = await send((one, two)[i % 2], "/v1/chat/completions", chat_body(), bearer(KEY_A))
            codes.append(got.body["error"]["code"])
            await trio.sleep(0.05)  # the refund reaches Redis (queued, lingering)
        assert codes == ["insufficient_quota"] * 5
