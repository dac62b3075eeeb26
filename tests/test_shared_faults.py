"""Shared limits on a real redis-server under attack: what is queued as the router
closes, and Redis faults on the one connection the client holds.  Real time (Redis's
clock decides); each test takes well under a second or two."""

from __future__ import annotations

import math
import socket

import trio

from router import ChatRequest, Message, open_router
from router._shared._client import SharedClient
from router._shared._limits import ProviderGate
from router.config import ProviderConfig, RouterConfig, SharedConfig
from tests._redis import RedisServer


def chat(text: str = "hi") -> ChatRequest:
    return ChatRequest(model="m:echo", messages=[Message.user(text)])


def _redis(server: RedisServer, *command: str) -> bytes:
    """One command over a plain socket (RESP inline form); its raw reply's first line."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall((" ".join(command) + "\r\n").encode())
        data = b""
        while b"\r\n" not in data:
            data += s.recv(65536)
        return data.split(b"\r\n")[0]


async def test_releases_queued_as_the_router_closes_reach_redis(
    redis_server: RedisServer,
) -> None:
    """A request's lease and TPM correction, queued as it ends, still reach Redis when
    the router closes right after (within the release linger): the slot is free for
    the other processes at once, not ``lease_time`` (30 s) later, and the TPM bucket
    holds what the call used, not its estimate."""
    provider = ProviderConfig(
        kind="mock", tpm=1_000_000, max_concurrency=2, queue_wait_threshold=None
    )
    config = RouterConfig(
        providers={"m": provider},
        shared=SharedConfig(redis_url=redis_server.url, prefix="closing", timeout=1.0),
    )
    async with open_router(config) as router:
        await router.complete(chat())
    assert _redis(redis_server, "ZCARD", "closing:{m}:leases") == b":0"
    # The estimate (prompt + max output) was charged; the echo used a few tokens: the
    # correction refunds the rest, and the key expires at once (nothing left to owe).
    assert _redis(redis_server, "EXISTS", "closing:{m}:tpm") == b":0"


async def test_non_finite_numbers_in_our_keys_neither_flap_nor_spin(
    redis_server: RedisServer,
) -> None:
    """Someone writes numbers that are not ours under the prefix — an RPM or TPM TAT of
    ``inf``, ``nan`` or ``1e300``, a lease scored ``+inf`` — the script reads the TAT
    as missing (as it does garbage) and never answers a wait Redis cannot send: no
    call fails (which switched every process to local limits at each call) and no
    wait comes back negative (which had a queued request ask again at once, in a
    tight loop, instead of every 10 ms)."""
    url = redis_server.url
    client = SharedClient(SharedConfig(redis_url=url, prefix="nums", timeout=1.0), url)
    async with client, trio.open_nursery() as nursery:
        await nursery.start(client.run)
        assert client.shared
        gate = ProviderGate(
            client, "p", rpm=60, tpm=6000, rpm_burst=5, tpm_burst=6000, max_concurrency=None
        )
        held = ProviderGate(
            client, "q", rpm=None, tpm=None, rpm_burst=None, tpm_burst=None, max_concurrency=1
        )
        for value in ("inf", "nan", "1e300", "-inf"):
            _redis(redis_server, "SET", "nums:{p}:rpm", value)
            _redis(redis_server, "SET", "nums:{p}:tpm", value)
            decision = await gate.admit([1])
            assert decision is not None, (value, client.reason)
            assert (decision.granted, decision.hold) == (1, ""), value
        for score in ("+inf", "1e300"):
            _redis(redis_server, "DEL", "nums:{q}:leases")
            _redis(redis_server, "ZADD", "nums:{q}:leases", score, "hostile")
            decision = await held.admit([1])
            assert decision is not None, (score, client.reason)
            assert (decision.granted, decision.hold) == (0, "concurrency"), score
            assert 0 < decision.retry_after < math.inf, (score, decision.retry_after)
        assert client.shared
        assert client.statistics().failures == 0
        nursery.cancel_scope.cancel()
