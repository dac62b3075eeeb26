"""One OS process of the shared-budget test: a router with ``[shared]`` and a $ cap on a
real Redis, one priced provider on the test's fake upstream, ``callers`` concurrent
callers that each ask again until the cap refuses them (at most ``tries`` times).

Run as ``python -m tests._shared_budget_worker '<json settings>'``.  With ``"barrier":
true`` (tests._helpers.run_workers), once its router is open (its first round trip with
Redis done) it prints ``ready`` and waits for a line on its standard input, so the test
starts every process's callers at once.  At the end it prints
one JSON line: ``{"ok": n, "refused": n, "errors": {...}, "spend": $, "foreign": [...],
"per_caller": [n, ...], "shared": {...}}`` — ``refused`` counts callers stopped by
``BudgetExceeded``, ``errors`` the other typed errors by name, ``foreign`` any exception
that is not a typed error, ``per_caller`` each caller's answers, ``shared`` the router's
``statistics().shared`` (shared or local, the failures and switches).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import msgspec
import trio

from providers import BudgetExceeded, LLMError
from router import ChatRequest, Message, open_router
from router.config import BudgetConfig, ModelConfig, ProviderConfig, RouterConfig, SharedConfig


def _config(s: dict[str, Any]) -> RouterConfig:
    return RouterConfig(
        providers={
            "up": ProviderConfig(
                kind="openai-compatible",
                api_key_env="SHARED_TEST_KEY",
                base_url=s["base_url"],
                presets=False,
            )
        },
        models={"up:fake-model": ModelConfig(input_price=1.0, output_price=2.0)},
        budget=BudgetConfig(limit=s["limit"], period="day"),
        shared=SharedConfig(redis_url=s["redis_url"], prefix=s["prefix"], timeout=s["timeout"]),
    )


async def main(s: dict[str, Any]) -> None:
    ok = refused = 0
    per_caller = [0] * s["callers"]
    errors: dict[str, int] = {}
    foreign: list[str] = []
    async with open_router(_config(s)) as router:

        async def caller(i: int) -> None:
            nonlocal ok, refused
            for _ in range(s["tries"]):
                request = ChatRequest(
                    model="up:fake-model", messages=[Message.user(f"hi {i}")], max_tokens=20
                )
                try:
                    await router.complete(request)
                    ok += 1
                    per_caller[i] += 1
                except BudgetExceeded:
                    refused += 1
                    return
                except LLMError as exc:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    return
                except Exception as exc:
                    foreign.append(repr(exc))
                    return

        if s.get("barrier"):
            print("ready", flush=True)
            await trio.wrap_file(sys.stdin).readline()  # the go: every process is ready
        async with trio.open_nursery() as nursery:
            for i in range(s["callers"]):
                nursery.start_soon(caller, i)
        stats = router.statistics()
    summary = {
        "ok": ok,
        "refused": refused,
        "errors": errors,
        "spend": stats.spend,
        "foreign": foreign,
        "per_caller": per_caller,
        "shared": msgspec.to_builtins(stats.shared),
    }
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    trio.run(main, json.loads(sys.argv[1]))
