"""Work per request in CPU instructions, counted by callgrind: repeatable where time is not.

Wall-clock benchmarks (``llm-router bench``) move with everything else on the machine;
an instruction count does not.  This runs the same request loop under
``valgrind --tool=callgrind`` twice (``--small`` and ``--large`` requests) and prints the
difference per request, so start-up cancels out:

    python benchmarks/instructions.py                # all three figures
    python benchmarks/instructions.py inprocess      # just one

``loopback-routed``  ``router.complete`` over loopback HTTP to the fake upstream (in
                     another process, whose work is not counted), one at a time
``loopback-bare``    the same request as a bare ``httpx.AsyncClient.post`` + JSON decode
``inprocess``        ``router.complete`` over a zero-latency ``MockProvider``

Run it from two checkouts to compare versions.  Needs valgrind (Debian: ``valgrind``).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import msgspec
import trio

MODES = ("loopback-routed", "loopback-bare", "inprocess")


async def _loop(mode: str, requests: int, url: str) -> None:
    from providers.testing import MockProvider
    from router import ChatRequest, Message, open_router
    from router.config import ProviderConfig, RouterConfig

    request = ChatRequest(
        model="a:gpt-4o-mini", messages=[Message.user("hello there")], max_tokens=64
    )
    if mode == "inprocess":
        config = RouterConfig(providers={"a": ProviderConfig(kind="mock")})
        async with open_router(config, providers={"a": MockProvider(name="a", record=False)}) as r:
            for _ in range(requests):
                await r.complete(request)
        return
    import httpx

    body = msgspec.json.encode(
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello there"}]}
        | {"max_tokens": 64}
    )
    headers = {"authorization": "Bearer sk-bench-not-a-key", "content-type": "application/json"}
    config = RouterConfig(
        providers={
            "a": ProviderConfig(
                kind="openai", base_url=f"{url}/a/v1", api_key_env="BENCH_INSTRUCTIONS_KEY"
            )
        }
    )
    async with httpx.AsyncClient() as client, open_router(config) as r:
        for _ in range(requests):
            if mode == "loopback-routed":
                await r.complete(request)
            else:
                response = await client.post(
                    f"{url}/a/v1/chat/completions", content=body, headers=headers
                )
                response.raise_for_status()
                msgspec.json.decode(response.content)


def _count(mode: str, requests: int, url: str, out: Path) -> int:
    """Instructions of one child run (the whole process) under callgrind."""
    args = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
    args += [sys.executable, __file__, "--child", mode, str(requests), url]
    env = {**os.environ, "BENCH_INSTRUCTIONS_KEY": "sk-bench-not-a-key"}
    done = subprocess.run(args, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"the {mode} run failed:\n{done.stderr[-2000:]}")
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise SystemExit(f"callgrind printed no count for {mode}:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modes", nargs="*", help=f"any of {', '.join(MODES)} (default: all)")
    parser.add_argument("--small", type=int, default=100)
    parser.add_argument("--large", type=int, default=500)
    parser.add_argument("--child", nargs=3, metavar=("MODE", "N", "URL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, n, url = args.child
        trio.run(_loop, mode, int(n), url)
        return
    unknown = [m for m in args.modes if m not in MODES]
    if unknown:
        parser.error(f"unknown mode {unknown[0]!r}: choose from {', '.join(MODES)}")
    modes = args.modes or list(MODES)
    upstream = subprocess.Popen(
        [sys.executable, "-m", "router", "upstream", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert upstream.stdout is not None
        line = upstream.stdout.readline()
        found = re.search(r"http://\S+", line)
        if found is None:
            raise SystemExit(f"the fake upstream did not start: {line!r}")
        url = found.group(0)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "callgrind.out"
            for mode in modes:
                small = _count(mode, args.small, url, out)
                large = _count(mode, args.large, url, out)
                per = (large - small) / (args.large - args.small)
                print(f"{mode:16} {per:12,.0f} instructions per request")
    finally:
        upstream.terminate()
        upstream.wait()


if __name__ == "__main__":
    main()
