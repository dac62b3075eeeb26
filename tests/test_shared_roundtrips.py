"""What a shared admission costs on the wire, and the order it keeps.

A request asks Redis once: its lease and token corrections ride with the next
admission (or go alone within ``RELEASE_LINGER`` when none comes), and a request that
finds the mailbox idle asks from its own task — yet the mailbox stays FIFO: nobody
behind a question on the wire is asked for before it is answered.
"""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing

from router import ChatRequest, Message, open_router
from router._config import SharedConfig
from router._limiter import Mailbox, Permit
from router._shared._limits import RELEASE_LINGER, Decision
from router.config import ProviderConfig, RetryConfig, RouterConfig
from tests._redis import RedisServer


def chat(text: str = "hi") -> ChatRequest:
    return ChatRequest(model="m:echo", messages=[Message.user(text)])


def _redis(server: RedisServer, *command: str) -> bytes:
    """One command over a plain socket (RESP inline form); its whole raw reply."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall((" ".join(command) + "\r\n").encode())
        data = b""
        while b"\r\n" not in data:
            data += s.recv(65536)
        if data.startswith(b"$"):  # a bulk string: its length, then its bytes
            head, _, _ = data.partition(b"\r\n")
            size = len(head) + 2 + int(head[1:]) + 2
            while len(data) < size:
                data += s.recv(65536)
        return data


def _evalsha_calls(server: RedisServer) -> int:
    info = _redis(server, "INFO", "commandstats").decode()
    for line in info.splitlines():
        if line.startswith("cmdstat_evalsha:"):
            return int(line.split("calls=")[1].split(",")[0])
    return 0


async def test_one_round_trip_per_request_at_concurrency_one(redis_server: RedisServer) -> None:
    """Invariant: at concurrency 1, n requests on shared limits (RPM, TPM and leases)
    cost Redis n admissions and nothing more — each request's release (its lease, its
    TPM correction) rides with the next one's admission — and the last release, with
    no admission after it, still reaches Redis on its own."""
    provider = ProviderConfig(
        kind="mock", rpm=100_000, tpm=100_000_000, max_concurrency=4, queue_wait_threshold=None
    )
    config = RouterConfig(
        providers={"m": provider},
        # Heartbeats and breaker reads far apart: none falls inside the counted requests.
        shared=SharedConfig(
            redis_url=redis_server.url, prefix="trips", heartbeat=10.0, breaker_sync=60.0
        ),
    )
    async with open_router(config) as router:
        await router.complete(chat())  # the script loaded, the connection open
        await trio.sleep(RELEASE_LINGER * 20)  # its release gone on its own
        before = _evalsha_calls(redis_server)
        n = 40
        for _ in range(n):
            await router.complete(chat())
        during = _evalsha_calls(redis_server) - before
        assert during == n, f"{during} round trips for {n} requests"
        # The last request's lease goes alone, after the linger (and a round trip).
        await trio.sleep(RELEASE_LINGER + 0.5)
        assert _redis(redis_server, "ZCARD", "trips:{m}:leases") == b":0\r\n"
        assert _evalsha_calls(redis_server) - before == n + 1


@pytest.mark.parametrize("run", range(4))
async def test_an_idle_mailbox_asks_at_once_yet_stays_fifo(
    redis_server: RedisServer, run: int
) -> None:
    """Invariant: requests are granted in the order they came, also when the first of
    them asked Redis from its own task (an idle mailbox) and was refused: those that
    queued while its question was on the wire are not asked for before it."""
    provider = ProviderConfig(
        kind="mock",
        rpm=600,  # one request each 0.1 s after a burst of one
        rpm_burst=1,
        retry=RetryConfig(max_attempts=1),
        queue_wait_threshold=None,
    )
    config = RouterConfig(
        providers={"m": provider},
        shared=SharedConfig(redis_url=redis_server.url, prefix=f"fifo{run}", timeout=1.0),
    )
    order: list[str] = []
    async with open_router(config) as router:
        await router.complete(chat())  # the burst taken

        async def one(name: str) -> None:
            await router.complete(chat(name))
            order.append(name)

        async with trio.open_nursery() as nursery:
            for name in "abcd":
                nursery.start_soon(one, name)
                await trio.lowlevel.checkpoint()  # in this order
    assert order == list("abcd")


class _WireGate:
    """A stand-in for ProviderGate: each question takes 10 ms on the wire; the first is
    refused (the RPM limit, for 50 ms), every later one granted whole."""

    tpm_cap = 1e9

    def __init__(self) -> None:
        self.asked: list[list[float]] = []

    def attach(self, mailbox: Mailbox) -> None:
        mailbox.share(True, 1)

    async def admit(self, costs: list[float]) -> Decision:
        self.asked.append(list(costs))
        first = len(self.asked) == 1
        await trio.sleep(0.01)
        if first:
            return Decision(0, "rpm", 0.05, [])
        return Decision(len(costs), "", 0.0, [])

    def release(self, lease: str, tokens: float) -> None:
        pass

    def undo(self, lease: str, cost: float) -> None:
        pass

    def pause(self, seconds: float) -> None:
        pass


async def test_nobody_is_asked_for_before_a_question_on_the_wire(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Invariant: while a caller's own question to Redis is on the wire (it found the
    mailbox idle), nobody queued behind it is asked for; refused, it becomes the head
    and is asked for ahead of them — in virtual time, whatever Redis would grant the
    others meanwhile."""
    mailbox = Mailbox("m", rpm=600)
    gate = _WireGate()
    mailbox.attach(gate)  # type: ignore[arg-type]
    granted: list[str] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(mailbox.run)

        async def one(name: str, cost: float) -> None:
            permit = await mailbox.admit(Permit(cost))
            granted.append(name)
            permit.release()

        async with trio.open_nursery() as callers:
            callers.start_soon(one, "first", 5.0)
            await trio.lowlevel.checkpoint()
            callers.start_soon(one, "second", 1.0)
        nursery.cancel_scope.cancel()
    # Refused, the first is the head of the next question, the second behind it (both
    # granted in that one answer, at one instant: the order they wake in is trio's).
    assert gate.asked == [[5.0], [5.0, 1.0]]
    assert sorted(granted) == ["first", "second"]


async def test_a_caller_cancelled_mid_question_leaves_the_mailbox_clean(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A caller cancelled while its own question is on the wire: nothing is granted to
    it, the mailbox is not left "asking", and the next request is asked for at once."""
    mailbox = Mailbox("m", rpm=600)
    gate = _WireGate()
    mailbox.attach(gate)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(mailbox.run)
        with trio.move_on_after(0.005):
            await mailbox.admit(Permit(5.0))
        stats = mailbox.statistics()
        assert (stats.queued, stats.in_flight) == (0, 0)
        gate.asked.append([])  # the first answer was the cancelled one's: grant from now
        start = trio.current_time()
        permit = await mailbox.admit(Permit(1.0))
        assert trio.current_time() - start == pytest.approx(0.01)  # one question, at once
        assert gate.asked[-1] == [1.0]
        permit.release()
        nursery.cancel_scope.cancel()
