"""The floor under ``llm-router bench shared``: one Redis round trip from trio.

Starts a ``redis-server`` of its own (loopback, free port, no persistence) and times,
at concurrency 1, 3,000 round trips each of:

- a raw trio socket: ``PING`` written and ``+PONG`` read on a ``trio.SocketStream``;
- coredis, the client the router uses, on one held connection (as ``SharedClient``
  does): ``PING``, and ``EVALSHA`` of ``return 1``;
- ``SharedClient.call`` of the heartbeat script (the router's bounded call);
- ``ProviderGate.admit`` of one request (``admit.lua`` with RPM, TPM and a lease)
  followed by its release, the whole of what a shared admission adds.

Run: ``python benchmarks/redis_floor.py`` (needs the ``shared`` extra and
``redis-server`` on the PATH).  Figures in docs/benchmarks.md.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable

import coredis
import trio

from router._shared._client import SharedClient
from router._shared._limits import ProviderGate
from router.config import SharedConfig


async def timed(name: str, fn: Callable[[], Awaitable[object]], n: int = 3000) -> None:
    for _ in range(300):
        await fn()
    times = []
    cpu = time.process_time()
    for _ in range(n):
        start = time.perf_counter()
        await fn()
        times.append(time.perf_counter() - start)
    cpu_us = (time.process_time() - cpu) / n * 1e6
    times.sort()
    p50, p99 = times[n // 2] * 1e6, times[int(n * 0.99)] * 1e6
    print(f"  {name:<44} p50 {p50:7.1f} µs  p99 {p99:7.1f} µs  cpu {cpu_us:6.1f} µs")


async def main(port: int) -> None:
    url = f"redis://127.0.0.1:{port}/0"
    stream = await trio.open_tcp_stream("127.0.0.1", port)

    async def raw_ping() -> None:
        await stream.send_all(b"*1\r\n$4\r\nPING\r\n")
        await stream.receive_some(64)

    await timed("raw trio socket PING", raw_ping)
    redis = coredis.Redis.from_url(url, decode_responses=False)
    async with redis:
        one = redis.register_script("return 1")
        await one(keys=["k"], args=[1])
        pool = redis.connection_pool
        connection = await pool.get_connection()
        pool.release(connection)
        await timed("coredis, held connection: PING", lambda: connection.create_request(b"PING"))
        await timed(
            "coredis, held connection: EVALSHA return 1",
            lambda: connection.create_request(b"EVALSHA", one.sha, 1, "k", 1),
        )
        await timed(
            "the same, with a response timeout",
            lambda: connection.create_request(b"EVALSHA", one.sha, 1, "k", 1, timeout=0.5),
        )
    config = SharedConfig(redis_url=url, heartbeat=10.0)
    async with SharedClient(config, url) as client, trio.open_nursery() as nursery:
        await nursery.start(client.run)
        beat = client.script("heartbeat")
        await timed(
            "SharedClient.call(heartbeat.lua)",
            lambda: client.call(beat, [client.key("bench")], ["p", 10_000_000]),
        )
        gate = ProviderGate(
            client,
            "bench",
            rpm=10_000_000,
            tpm=10_000_000_000,
            rpm_burst=None,
            tpm_burst=None,
            max_concurrency=10_000,
        )
        nursery.start_soon(gate.run)

        async def admit() -> None:
            decision = await gate.admit([100.0])
            assert decision is not None
            gate.release(decision.leases[0] if decision.leases else "", -10.0)

        await timed("ProviderGate.admit + release (admit.lua)", admit)
        nursery.cancel_scope.cancel()


def run() -> None:
    executable = shutil.which("redis-server")
    if executable is None:
        raise SystemExit("redis-server is not on the PATH")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        args = [executable, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "no", "--dir", tmp]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL)
        try:
            for _ in range(100):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                    break
                except OSError:
                    time.sleep(0.05)
            print("one Redis round trip from trio, concurrency 1 (3,000 each)")
            trio.run(main, port)
        finally:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    run()
