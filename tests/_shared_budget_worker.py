"""One OS process of the shared-budget test: a router with ``[shared]`` and a $ cap on a
real Redis, one priced provider on the test's fake upstream, ``callers`` concurrent
callers that each ask again until the cap refuses them (at most 50 times).

Run as ``python -m tests._shared_budget_worker '<json settings>'``; prints one JSON line:
``{"ok": n, "refused": n, "spend": $, "foreign": [...]}`` — ``refused`` counts callers
stopped by ``BudgetExceeded``, ``foreign`` any exception that is not a typed error.
"""

from __future__ import annotations

import json
import sys
from typing import Any

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
        shared=SharedConfig(redis_url=s["redis_url"], prefix=s["prefix"], timeout=0.25),
    )


async def main(s: dict[str, Any]) -> None:
    ok = refused = 0
    errors: dict[str, int] = {}
    foreign: list[str] = []
    async with open_router(_config(s)) as router:

        async def caller(i: int) -> None:
            nonlocal ok, refused
            for _ in range(50):
                request = ChatRequest(
                    model="up:fake-model", messages=[Message.user(f"hi {i}")], max_tokens=20
                )
                try:
                    await router.complete(request)
                    ok += 1
                except BudgetExceeded:
                    refused += 1
                    return
                except LLMError as exc:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    return
                except Exception as exc:
                    foreign.append(repr(exc))
                    return

        async with trio.open_nursery() as nursery:
            for i in range(s["callers"]):
                nursery.start_soon(caller, i)
        spend = router.statistics().spend
    print(
        json.dumps(
            {"ok": ok, "refused": refused, "errors": errors, "spend": spend, "foreign": foreign}
        ),
        flush=True,
    )


if __name__ == "__main__":
    trio.run(main, json.loads(sys.argv[1]))
