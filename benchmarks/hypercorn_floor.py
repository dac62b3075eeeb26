"""The floor under ``llm-router bench gateway``: what hypercorn's trio worker costs
per request with an ASGI app that does nothing.

Serves a trivial ASGI app (reads the body, answers an 11-byte JSON reply with
``content-length``) on hypercorn's trio worker in a child process, drives 3,000 POSTs at
concurrency 1 from one keep-alive ``httpx.Client``, and prints the server process's CPU
time per request (user + system, ``/proc/<pid>/stat``) and the client's wall time per
request.  The gateway does all of that and more for every request, so its added latency
cannot be below this.

Run: ``python benchmarks/hypercorn_floor.py`` (Linux; needs the ``gateway`` extra).
Figures in docs/benchmarks.md.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx

APP = """
import sys, trio
from hypercorn.config import Config
from hypercorn.trio import serve

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    while (await receive()).get("more_body"):
        pass
    body = b'{"ok": true}'
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})

config = Config()
config.bind = [f"127.0.0.1:{sys.argv[1]}"]
config.accesslog = None
config.errorlog = None
trio.run(serve, app, config)
"""


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()  # noqa: SIM115
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(n: int = 3000) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-c", APP, str(port)])
    url = f"http://127.0.0.1:{port}/"
    try:
        with httpx.Client() as client:
            for _ in range(200):
                try:
                    client.post(url, json={"a": 1})
                    break
                except httpx.TransportError:
                    time.sleep(0.05)
            for _ in range(300):
                client.post(url, json={"a": 1})
            cpu = cpu_seconds(server.pid)
            start = time.perf_counter()
            for _ in range(n):
                client.post(url, json={"a": 1})
            wall = time.perf_counter() - start
        server_cpu = (cpu_seconds(server.pid) - cpu) / n * 1e6
        print(
            f"hypercorn (trio worker), a do-nothing ASGI app, concurrency 1, {n} requests: "
            f"server CPU {server_cpu:.0f} µs per request; client wall {wall / n * 1e6:.0f} µs"
        )
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
