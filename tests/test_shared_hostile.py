"""Hostile-operator checks of shared limits: secrets in every URL form coredis accepts,
and grants Redis made for a request whose answer never arrived."""

from __future__ import annotations

import trio

from router._config import SharedConfig, redact_url
from router._events import SharedLimitsChanged
from router._shared._client import SharedClient
from router._shared._limits import ProviderGate
from tests._redis import RedisServer


def test_redact_url_hides_every_password_form() -> None:
    """Invariant: no form of password coredis accepts (userinfo, even with '@' in it;
    the ``password`` query parameter) survives redaction; host, port and db do."""
    urls = {
        "redis://:p@ss@h:1/0": "redis://***@h:1/0",
        "redis://u:s3cret@h:1/0": "redis://***@h:1/0",
        "redis://h:1/0?password=s3cret": "redis://h:1/0?password=***",
        "redis://h:1/0?db=2&password=s3cret&x=1": "redis://h:1/0?db=2&password=***&x=1",
        "unix:///tmp/r.sock?password=s%40cret&db=0": "unix:///tmp/r.sock?password=***&db=0",
    }
    for url, shown in urls.items():
        assert redact_url(url) == shown, url
        secret = "ss" if "p@ss" in url else "cret"
        assert secret not in repr(SharedConfig(redis_url=url)), url


async def test_query_password_never_leaks_when_redis_refuses_it(
    redis_server: RedisServer,
) -> None:
    """A wrong password given as ``?password=`` (coredis sends it): Redis refuses auth;
    the client's repr, reason, statistics and event never show it."""
    await trio.run_process(
        ["redis-cli", "-p", str(redis_server.port), "config", "set", "requirepass", "RIGHTpw"],
        capture_stdout=True,
    )
    url = f"{redis_server.url}?password=WRONGpw"
    events: list[SharedLimitsChanged] = []
    client = SharedClient(SharedConfig(redis_url=url, timeout=1.0), url, on_event=events.append)
    async with client, trio.open_nursery() as nursery:
        await nursery.start(client.run)
        assert not client.shared
        seen = [repr(client), str(client.reason), repr(client.statistics()), *map(repr, events)]
        nursery.cancel_scope.cancel()
    for text in seen:
        assert "WRONGpw" not in text, text


async def test_a_grant_whose_answer_timed_out_frees_its_lease(redis_server: RedisServer) -> None:
    """Redis frozen while an admission is on the wire: the caller gives up at the bound,
    Redis then runs the script (taking a concurrency lease nobody knows of).  Once Redis
    answers again the lease is freed with the next round trip, not held for lease_time
    (30 s) as a slot lost to the whole cluster."""
    config = SharedConfig(
        redis_url=redis_server.url, prefix="orphan", timeout=0.2, heartbeat=0.1, max_backoff=0.2
    )
    back = trio.Event()

    def on_event(event: SharedLimitsChanged) -> None:
        if event.state == "shared" and event.reason is None and client.statistics().switches > 1:
            back.set()

    client = SharedClient(config, redis_server.url, on_event=on_event)
    async with client, trio.open_nursery() as nursery:
        await nursery.start(client.run)
        assert client.shared
        gate = ProviderGate(
            client, "p", rpm=None, tpm=None, rpm_burst=None, tpm_burst=None, max_concurrency=1
        )
        warm = await gate.admit([])  # the script loaded, the connection open
        assert warm is not None
        assert warm.granted == 0
        redis_server.pause()
        try:
            assert await gate.admit([1]) is None  # timed out: local limits now
        finally:
            redis_server.resume()
        with trio.fail_after(5):
            await back.wait()  # shared again
        decision = await gate.admit([1])
        assert decision is not None
        assert (decision.granted, decision.hold) == (1, ""), decision.hold
        nursery.cancel_scope.cancel()


async def test_a_call_that_ends_while_local_frees_its_lease_when_redis_is_back(
    redis_server: RedisServer,
) -> None:
    """A shared grant whose call ends while Redis is frozen: its lease is freed as soon
    as Redis answers again, not held for lease_time as a slot the cluster lost."""
    config = SharedConfig(
        redis_url=redis_server.url, prefix="ended", timeout=0.2, heartbeat=0.1, max_backoff=0.2
    )
    back = trio.Event()

    def on_event(event: SharedLimitsChanged) -> None:
        if event.state == "shared" and client.statistics().switches > 1:
            back.set()

    client = SharedClient(config, redis_server.url, on_event=on_event)
    async with client, trio.open_nursery() as nursery:
        await nursery.start(client.run)
        gate = ProviderGate(
            client, "p", rpm=None, tpm=None, rpm_burst=None, tpm_burst=None, max_concurrency=1
        )
        other = ProviderGate(
            client, "q", rpm=None, tpm=None, rpm_burst=None, tpm_burst=None, max_concurrency=None
        )
        await nursery.start(gate.run)
        granted = await gate.admit([1])
        assert granted is not None
        assert granted.granted == 1
        assert await other.admit([]) is not None  # its script loaded too
        redis_server.pause()
        try:
            assert await other.admit([1]) is None  # local limits now; no lease involved
            gate.release(granted.leases[0], 0)  # the call ends while local
        finally:
            redis_server.resume()
        with trio.fail_after(5):
            await back.wait()
        await trio.sleep(0.1)  # the queued release goes in the background
        decision = await gate.admit([1])
        assert decision is not None
        assert (decision.granted, decision.hold) == (1, ""), decision.hold
        nursery.cancel_scope.cancel()


async def test_keys_of_the_wrong_type_do_not_flap_shared_limits(
    redis_server: RedisServer,
) -> None:
    """Someone writes a string where the leases and live-process sets live, and garbage
    where the RPM bucket lives: the scripts replace what is not theirs and decide as
    usual (an empty key), rather than failing every call — which switched the process
    to local limits and back at each heartbeat, one extra burst each time."""
    url = redis_server.url
    client = SharedClient(SharedConfig(redis_url=url, prefix="typo", timeout=1.0), url)
    async with client, trio.open_nursery() as nursery:
        await nursery.start(client.run)
        assert client.shared
        gate = ProviderGate(
            client, "p", rpm=60, tpm=None, rpm_burst=2, tpm_burst=None, max_concurrency=2
        )
        cli = ["redis-cli", "-p", str(redis_server.port)]
        await trio.run_process([*cli, "set", "typo:{p}:leases", "x"], capture_stdout=True)
        await trio.run_process([*cli, "set", "typo:{p}:rpm", "garbage"], capture_stdout=True)
        await trio.run_process([*cli, "set", "typo:processes", "x"], capture_stdout=True)
        assert await client._beat()
        gate.leases.add("some-lease")
        await trio.run_process([*cli, "set", "typo:{p}:leases", "x"], capture_stdout=True)
        await gate.heartbeat()  # renews into a string: must not fail
        await trio.run_process([*cli, "set", "typo:{p}:leases", "x"], capture_stdout=True)
        decision = await gate.admit([1, 1, 1])
        assert decision is not None
        assert (decision.granted, decision.hold) == (2, "concurrency")
        assert client.shared
        assert client.statistics().failures == 0
        nursery.cancel_scope.cancel()
