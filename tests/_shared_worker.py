"""One OS process of the shared-limits tests: a router with ``[shared]`` on a real Redis,
one provider on the test's fake upstream, ``callers`` concurrent requests.

Run as ``python -m tests._shared_worker '<json settings>'`` (``"local": true`` runs
it without ``[shared]``: how the claim that local limits fail the four-process test
was checked).  With ``"barrier": true``
it prints ``ready`` once its router is open and waits for a line on stdin before its
callers start (so that several processes start together).  Prints one JSON line when
every caller has ended: ``{"ok": n, "errors": {"TypeName": n}, "foreign": [...],
"switches": n}`` (how often its limits switched between shared and local) —
``foreign`` lists any exception that is not one of the router's typed errors (the
test demands none).  With ``"hold": true`` it prints ``{"in_flight": n}`` every 50 ms
and never ends (the lease-expiry test kills it with -9).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import trio

from providers import LLMError
from router import ChatRequest, Message, open_router
from router.config import ProviderConfig, RouterConfig, SharedConfig


def _config(s: dict[str, Any]) -> RouterConfig:
    return RouterConfig(
        providers={
            "up": ProviderConfig(
                kind="openai-compatible",
                api_key_env="SHARED_TEST_KEY",
                base_url=s["base_url"],
                rpm=s.get("rpm"),
                rpm_burst=s.get("burst"),
                max_concurrency=s.get("max_concurrency"),
                presets=False,
                queue_wait_threshold=None,
            )
        },
        shared=None
        if s.get("local")
        else SharedConfig(
            redis_url=s["redis_url"],
            prefix=s["prefix"],
            timeout=s.get("timeout", 1.0),
            lease_time=s.get("lease_time", 30.0),
            heartbeat=s.get("heartbeat", 1.0),
        ),
    )


async def main(s: dict[str, Any]) -> None:
    ok = 0
    errors: dict[str, int] = {}
    foreign: list[str] = []
    async with open_router(_config(s)) as router:
        if s.get("barrier"):
            print("ready", flush=True)
            await trio.to_thread.run_sync(sys.stdin.readline)

        async def one(i: int) -> None:
            nonlocal ok
            request = ChatRequest(model="up:fake-model", messages=[Message.user(f"hi {i}")])
            try:
                await router.complete(request)
                ok += 1
            except LLMError as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            except Exception as exc:
                foreign.append(repr(exc))

        async with trio.open_nursery() as nursery:
            for i in range(s["callers"]):
                nursery.start_soon(one, i)
            if s.get("hold"):
                while True:
                    stats = router.statistics().providers["up"]
                    print(json.dumps({"in_flight": stats.in_flight}), flush=True)
                    await trio.sleep(0.05)
        shared = router.statistics().shared
        switches = None if shared is None else shared.switches
    print(
        json.dumps({"ok": ok, "errors": errors, "foreign": foreign, "switches": switches}),
        flush=True,
    )


if __name__ == "__main__":
    trio.run(main, json.loads(sys.argv[1]))
