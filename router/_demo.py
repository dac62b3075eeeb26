"""``llm-router demo``: the adapters and the router at work on the built-in fake upstream.

Everything runs on 127.0.0.1 against :func:`providers.testing.open_fake_upstream`; no key
and no network are needed.
"""

from __future__ import annotations

import sys
from typing import TextIO

import httpx
import trio

from providers import (
    AnthropicProvider,
    ChatRequest,
    Done,
    LLMError,
    Message,
    OpenAIProvider,
    Provider,
    Secret,
    TextDelta,
    ToolSpec,
)
from providers.testing import Fault, Fixed, LogNormal, Scenario, open_fake_upstream

__all__ = ["run_demo"]

ANSWERS = {
    "openai": (
        "Structured concurrency means every task has a parent that waits for it, so "
        "errors and cancellation always have somewhere to go."
    ),
    "anthropic": (
        "A nursery is a scope for tasks: it does not exit until every task it started "
        "has finished, and a failure in one cancels the rest."
    ),
}

WEATHER = ToolSpec(
    name="get_weather",
    description="Current weather in a city",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


def _scenarios(speed: float) -> dict[str, Scenario]:
    return {
        name: Scenario(
            reply=text,
            latency=LogNormal(median=0.12 * speed, sigma=0.3) if speed else Fixed(0.0),
            chunk_interval=0.035 * speed,
            chunk_words=1,
        )
        for name, text in ANSWERS.items()
    } | {
        "limited": Scenario(faults=[Fault(kind="status", status=429, retry_after=1.5, rate=1.0)]),
        "tools": Scenario(
            latency=LogNormal(median=0.05 * speed, sigma=0.2) if speed else Fixed(0.0)
        ),
    }


async def _stream_one(
    out: TextIO, provider: Provider, label: str, model: str, question: str
) -> None:
    print(f"\n▸ {label} · streamed · model {model}", file=out)
    print(f"  you: {question}", file=out)
    print("  ", end="", file=out, flush=True)
    start = trio.current_time()
    first: float | None = None
    request = ChatRequest(model=model, messages=[Message.user(question)], max_tokens=200)
    async with provider.stream(request) as events:
        async for event in events:
            if isinstance(event, TextDelta):
                if first is None:
                    first = trio.current_time() - start
                print(event.text, end="", file=out, flush=True)
            elif isinstance(event, Done):
                r = event.response
                total = trio.current_time() - start
                print(
                    f"\n  [{r.finish_reason} · {r.usage.input_tokens} in / {r.usage.output_tokens} "
                    f"out tokens · first token {1000 * (first or total):.0f} ms · "
                    f"{1000 * total:.0f} ms total · request id {r.request_id}]",
                    file=out,
                )


async def run_demo(speed: float = 1.0, out: TextIO | None = None) -> None:
    """Run the demo, printing to ``out`` (stdout by default)."""
    out = out or sys.stdout
    async with (
        open_fake_upstream(_scenarios(speed), record=False) as up,
        httpx.AsyncClient() as client,
    ):
        print(
            "trio-llm-router demo — everything below talks to the built-in fake upstream at\n"
            f"{up.url} over real HTTP, in each vendor's own wire format. No keys, no network.",
            file=out,
        )
        key = Secret("sk-demo-not-a-real-key")
        openai = OpenAIProvider(
            api_key=key, base_url=up.base_url("openai", "openai"), client=client
        )
        anthropic = AnthropicProvider(
            api_key=key, base_url=up.base_url("anthropic", "anthropic"), client=client
        )
        await _stream_one(
            out, openai, "OpenAI Chat Completions", "gpt-4o-mini", "What is structured concurrency?"
        )
        await _stream_one(
            out, anthropic, "Anthropic Messages", "claude-3-5-haiku-latest", "What is a nursery?"
        )

        tools = OpenAIProvider(api_key=key, base_url=up.base_url("tools", "openai"), client=client)
        reply = await tools.complete(
            ChatRequest(
                model="gpt-4o-mini",
                messages=[Message.user("What's the weather in Paris? Use get_weather.")],
                tools=[WEATHER],
            )
        )
        call = reply.tool_calls[0]
        print(f"\n▸ Tool call, assembled from the wire: {call.name}({call.arguments})", file=out)

        limited = AnthropicProvider(
            api_key=key, base_url=up.base_url("limited", "anthropic"), client=client
        )
        try:
            await limited.complete(
                ChatRequest(model="claude-3-5-haiku-latest", messages=[Message.user("hi")])
            )
        except LLMError as exc:
            print(
                f"\n▸ A rate-limited provider, as a typed error:\n  {type(exc).__name__}: {exc}\n"
                f"  retryable={exc.retryable} rate_limit={exc.is_rate_limit} "
                f"retry_after={exc.retry_after}s",
                file=out,
            )
        print(
            "\nThe key given to every adapter above never appears in any output or error: "
            f"{key!r}.",
            file=out,
        )
