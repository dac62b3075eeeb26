"""Shared limits on a real redis-server under attack: what is queued as the router
closes, and Redis faults on the one connection the client holds.  Real time (Redis's
clock decides); each test takes well under a second or two."""

from __future__ import annotations

import socket

from router import ChatRequest, Message, open_router
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
