"""Shared limits on a real redis-server under attack: what is queued as the router
closes, and Redis faults on the one connection the client holds.  Real time (Redis's
clock decides); each test takes well under a second or two."""

from __future__ import annotations

import math
import socket

import pytest
import trio

from router import ChatRequest, Message, open_router
from router._shared._client import SharedClient, SharedUnavailable
from router._shared._limits import ProviderGate
from router.config import ProviderConfig, RouterConfig, SharedConfig
from router.events import SharedLimitsChanged
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


async def test_a_correction_queued_before_redis_went_away_is_sent_when_it_is_back(
    redis_server: RedisServer,
) -> None:
    """A call's TPM correction queued while limits were shared, still lingering when
    another operation found Redis gone: it stays queued and goes once Redis answers
    again (a short outage loses nothing queued), rather than being taken off the queue
    by a send that could not happen and dropped."""
    config = SharedConfig(
        redis_url=redis_server.url, prefix="kept", timeout=0.2, heartbeat=0.1, max_backoff=0.2
    )
    back = trio.Event()

    def on_event(event: SharedLimitsChanged) -> None:
        if event.state == "shared" and client.statistics().switches > 1:
            back.set()

    client = SharedClient(config, redis_server.url, on_event=on_event)
    async with client, trio.open_nursery() as nursery:
        await nursery.start(client.run)
        # 6000 TPM, burst 6000: 10 ms per token.
        gate = ProviderGate(
            client, "p", rpm=None, tpm=6000, rpm_burst=None, tpm_burst=6000, max_concurrency=None
        )
        other = ProviderGate(
            client, "q", rpm=None, tpm=None, rpm_burst=None, tpm_burst=None, max_concurrency=None
        )
        granted = await gate.admit([5000])
        assert granted is not None
        assert granted.granted == 1
        assert await other.admit([]) is not None  # its script loaded too
        gate.release("", -4900)  # the call used 100 of its 5000: refund 4900
        redis_server.pause()
        try:
            assert await other.admit([1]) is None  # Redis is gone: local limits
            # The gate's task wakes for the queued refund now, while Redis is gone.
            await nursery.start(gate.run)
            await trio.sleep(0.05)
        finally:
            redis_server.resume()
        with trio.fail_after(5):
            await back.wait()
        await trio.sleep(0.1)  # the refund goes in the background
        decision = await gate.admit([5000])  # fits only if the 4900 came back
        assert decision is not None
        assert (decision.granted, decision.hold) == (1, ""), decision.hold
        nursery.cancel_scope.cancel()


async def test_a_late_noscript_leaves_the_reload_only_the_rest_of_the_bound(
    redis_server: RedisServer,
) -> None:
    """Invariant: one shared operation never waits on Redis longer than ``timeout``,
    even when Redis has lost the script and answers NOSCRIPT late: the reload gets what
    is left of the same bound, not a second ``timeout`` (Redis here answers each request
    after 0.8 ``timeout``: before the fix the operation took ~1.8 ``timeout``)."""
    timeout = 0.25
    config = SharedConfig(redis_url=redis_server.url, timeout=timeout, heartbeat=60.0)
    async with SharedClient(config, redis_server.url) as client, trio.open_nursery() as nursery:
        await nursery.start(client.run)
        beat = client.script("heartbeat")
        await client.call(beat, [client.key("late")], ["p", 10_000_000])  # held, loaded
        assert _redis(redis_server, "SCRIPT", "FLUSH") == b"+OK"
        connection = client._connection
        real = connection.create_request

        async def late(*args: object, **kwargs: object) -> object:
            await trio.sleep(0.8 * timeout)  # Redis busy: every answer comes late
            return await real(*args, **kwargs)  # type: ignore[arg-type]

        connection.create_request = late
        start = trio.current_time()
        with pytest.raises(SharedUnavailable):  # the bound ran out during the reload
            await client.call(beat, [client.key("late")], ["p", 10_000_000])
        took = trio.current_time() - start
        del connection.create_request
        assert took < timeout + 0.1, took
        assert client.reason == f"Redis did not answer within {timeout * 1000:g} ms"
        nursery.cancel_scope.cancel()
