"""One OS process of the shared-breaker test: a router with ``[shared]`` whose provider
(the fake upstream answering 500) fails until its breaker opens.

Run as ``python -m tests._shared_breaker_worker '<json settings>'``; prints one
JSON line, ``{"opened_at": <wall time of the open>}``, once the open has had time to
be published (the publication goes out at once; it waits one timeout more).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import trio

from providers import LLMError
from router import ChatRequest, Message, open_router
from router.config import (
    BreakerConfig,
    ProviderConfig,
    RetryConfig,
    RouterConfig,
    SharedConfig,
)
from router.events import BreakerChanged, RouterEvent


def _config(s: dict[str, Any]) -> RouterConfig:
    return RouterConfig(
        providers={
            "p": ProviderConfig(
                kind="openai-compatible",
                api_key_env="SHARED_TEST_KEY",
                base_url=s["base_url"],
                presets=False,
                breaker=BreakerConfig(minimum_calls=2, open_duration=5.0),
                retry=RetryConfig(max_attempts=1),
            )
        },
        shared=SharedConfig(
            redis_url=s["redis_url"],
            prefix=s["prefix"],
            timeout=s["timeout"],
            breaker_sync=s["breaker_sync"],
        ),
        panic_threshold=0.0,
    )


async def main(config: RouterConfig) -> None:
    opened: list[float] = []

    def listen(event: RouterEvent) -> None:
        if isinstance(event, BreakerChanged) and event.new == "open":
            opened.append(time.time())

    async with open_router(config) as router:
        router.add_listener(listen)
        while not opened:
            try:
                await router.complete(
                    ChatRequest(model="p:fake-model", messages=[Message.user("x")])
                )
            except LLMError:
                pass
        assert config.shared is not None
        await trio.sleep(config.shared.timeout * 4)
    print(json.dumps({"opened_at": opened[0]}), flush=True)


if __name__ == "__main__":
    trio.run(main, _config(json.loads(sys.argv[1])))
