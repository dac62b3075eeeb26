"""``llm-router demo``: hedging against plain fallback, live, on the built-in fake upstream.

Three simulated providers run on 127.0.0.1 — real HTTP, each in its vendor's wire
format, no key and no network — with different latency bodies, rare stalls, some 429s
and some 5xx.  The same few hundred requests go through the router twice: once over a
plain fallback route, once over a hedged one.  Then a table compares them, and one
answer streams to the terminal.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from typing import TextIO

import httpx
import trio

from providers import (
    AnthropicProvider,
    ChatRequest,
    LLMError,
    Message,
    OpenAIProvider,
    Provider,
    Secret,
    TextDelta,
)
from providers.testing import (
    Fault,
    Fixed,
    LogNormal,
    Mixture,
    MixtureComponent,
    Scenario,
    open_fake_upstream,
)
from router import Router, open_router
from router.config import HedgeConfig, ProviderConfig, RouteConfig, RouterConfig

from ._format import percentile, table_lines

__all__ = ["DemoRun", "run_demo"]

TARGETS = ["alpha:gpt-4o-mini", "beta:claude-3-5-haiku-latest", "gamma:gpt-4o-mini"]
QUESTIONS = [
    "What is structured concurrency?",
    "Why should a timeout be a cancel scope?",
    "What does a nursery guarantee?",
    "When is a hedged request worth its cost?",
]
ANSWER = (
    "Structured concurrency means every task has a parent that waits for it, so errors "
    "and cancellation always have somewhere to go."
)


def _latency(median: float, stall: float, speed: float) -> Mixture | Fixed:
    if speed == 0:
        return Fixed(0.0)
    return Mixture(
        [
            MixtureComponent(0.98, LogNormal(median * speed, 0.35)),
            MixtureComponent(0.02, LogNormal(stall * speed, 0.1)),  # the rare stall
        ]
    )


def _scenarios(speed: float) -> dict[str, Scenario]:
    chunk = 0.03 * speed
    return {
        "alpha": Scenario(
            latency=_latency(0.08, 2.0, speed),
            chunk_interval=chunk,
            reply=ANSWER,
            faults=[Fault(kind="status", status=429, retry_after=0.2 * speed, rate=0.02)],
        ),
        "beta": Scenario(
            latency=_latency(0.10, 2.5, speed),
            chunk_interval=chunk,
            reply=ANSWER,
            faults=[Fault(kind="status", status=500, rate=0.03)],
        ),
        "gamma": Scenario(latency=_latency(0.12, 2.5, speed), chunk_interval=chunk, reply=ANSWER),
    }


class DemoRun:
    """The figures of one pass over the requests."""

    def __init__(self, route: str, latencies: list[float], failures: int, stats: dict[str, float]):
        self.route = route
        self.latencies = sorted(latencies)
        self.failures = failures
        self.stats = stats

    def latency(self, q: float) -> float:
        """The ``q`` percentile of the successful requests' latency, in seconds."""
        return percentile(self.latencies, q)

    @property
    def requests(self) -> int:
        return len(self.latencies) + self.failures


async def _pass(
    router: Router,
    route: str,
    requests: int,
    concurrency: int,
    progress: Callable[[str, int, int], None],
) -> DemoRun:
    before = router.statistics()
    latencies: list[float] = []
    failures = 0
    done = 0
    left = iter(range(requests))

    async def worker() -> None:
        nonlocal failures, done
        for i in left:
            request = ChatRequest(
                model=route,
                messages=[Message.user(QUESTIONS[i % len(QUESTIONS)])],
                max_tokens=120,
            )
            t0 = trio.current_time()
            try:
                await router.complete(request)
            except LLMError:
                failures += 1
            else:
                latencies.append(trio.current_time() - t0)
            done += 1
            progress(route, done, requests)

    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
    after = router.statistics()
    stats = {
        "hedges": after.hedges - before.hedges,
        "fallbacks": after.fallbacks - before.fallbacks,
        "retries": after.retries - before.retries,
        "cost": after.spend - before.spend,
    }
    return DemoRun(route, latencies, failures, stats)


def _comparison(runs: list[DemoRun]) -> str:
    head = ["route", "p50", "p95", "p99", "success", "fallbacks", "hedges", "extra load", "cost"]
    rows = [head]
    for r in runs:
        extra = (r.stats["hedges"] + r.stats["fallbacks"] + r.stats["retries"]) / r.requests
        rows.append(
            [
                r.route,
                *(f"{1000 * r.latency(q):.0f}ms" for q in (0.5, 0.95, 0.99)),
                f"{len(r.latencies) / r.requests:.1%}",
                f"{r.stats['fallbacks']:.0f}",
                f"{r.stats['hedges']:.0f}",
                f"{extra:.1%}",
                f"${r.stats['cost']:>8.4f}",
            ]
        )
    widths = [8, 8, 8, 8, 8, 9, 7, 10, 9]
    return "\n".join(
        table_lines(rows, right=range(1, 9), widths=widths, sep=" ", indent="  ", rule=True)
    )


def _progress_printer(out: TextIO) -> Callable[[str, int, int], None]:
    tty = out.isatty()
    width = 30

    def show(route: str, done: int, total: int) -> None:
        if tty:
            filled = width * done // total
            bar = "█" * filled + "·" * (width - filled)
            end = "\n" if done == total else ""
            print(f"\r  {route:<8} [{bar}] {done}/{total}", end=end, file=out, flush=True)
        elif done == total:
            print(f"  {route:<8} {done}/{total} requests done", file=out, flush=True)

    return show


def _plot(runs: list[DemoRun], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for run in runs:
        xs = [1000 * x for x in run.latencies]
        ys = [(i + 1) / len(xs) for i in range(len(xs))]
        ax.step(xs, ys, where="post", label=run.route)
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms, log scale)")
    ax.set_ylabel("fraction of requests")
    ax.set_title("llm-router demo: latency CDF, plain fallback vs hedged")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def check_plot_available() -> None:
    """Raise a clear error when ``--plot`` cannot work (matplotlib is an optional extra)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise RuntimeError(
            "--plot needs matplotlib, an optional extra: pip install 'trio-llm-router[plot]'"
        ) from None


async def run_demo(
    speed: float = 1.0,
    out: TextIO | None = None,
    *,
    requests: int = 300,
    concurrency: int = 16,
    plot: str | None = None,
) -> list[DemoRun]:
    """Run the demo, printing to ``out`` (stdout by default); return both passes' figures.

    ``speed`` scales every simulated latency (0: instant); ``plot`` writes a latency CDF.
    """
    out = out or sys.stdout
    if plot is not None:
        check_plot_available()
    key = Secret("sk-demo-not-a-real-key")
    hedge = HedgeConfig(max_attempts=2, delay="p95", min_samples=20, default_delay=0.25 * speed)
    config = RouterConfig(
        providers={
            name: ProviderConfig(kind=kind, presets=False)  # type: ignore[arg-type]
            for name, kind in (("alpha", "openai"), ("beta", "anthropic"), ("gamma", "openai"))
        },
        routes={
            "plain": RouteConfig(targets=TARGETS),
            "hedged": RouteConfig(targets=TARGETS, hedge=hedge),
        },
    )
    async with (
        open_fake_upstream(_scenarios(speed), record=False, seed=7) as up,
        httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=64)) as client,
    ):
        providers: dict[str, Provider] = {
            "alpha": OpenAIProvider(
                name="alpha", api_key=key, base_url=up.base_url("alpha", "openai"), client=client
            ),
            "beta": AnthropicProvider(
                name="beta", api_key=key, base_url=up.base_url("beta", "anthropic"), client=client
            ),
            "gamma": OpenAIProvider(
                name="gamma", api_key=key, base_url=up.base_url("gamma", "openai"), client=client
            ),
        }
        print(
            "trio-llm-router demo: three simulated providers on the built-in fake upstream at\n"
            f"{up.url} (real HTTP, each vendor's own wire format; no keys, no network).\n"
            "  alpha (OpenAI format)     ~80 ms, 2% stalls of ~2 s, 2% answer 429\n"
            "  beta  (Anthropic format) ~100 ms, 2% stalls, 3% answer 500\n"
            "  gamma (OpenAI format)    ~120 ms, 2% stalls\n"
            f"\n{requests} requests, {concurrency} at a time, through each route:\n"
            "  plain   fallback: alpha, then beta, then gamma, on failure only\n"
            "  hedged  the same, plus a second request once the first has been out longer\n"
            "          than alpha's observed p95 latency; the slower one is cancelled\n",
            file=out,
        )
        progress = _progress_printer(out)
        async with open_router(config, providers=providers, seed=7) as router:
            runs = [
                await _pass(router, route, requests, concurrency, progress)
                for route in ("plain", "hedged")
            ]
            print("\n" + _comparison(runs), file=out)
            plain, hedged = runs
            p99_plain, p99_hedged = plain.latency(0.99), hedged.latency(0.99)
            if p99_hedged > 0 and not math.isnan(p99_plain):
                hedges = hedged.stats["hedges"] / hedged.requests
                print(
                    f"\n  Hedging took p99 from {1000 * p99_plain:.0f} ms to "
                    f"{1000 * p99_hedged:.0f} ms ({p99_plain / p99_hedged:.1f}x), sending a "
                    f"hedge for {hedges:.1%} of the requests.",
                    file=out,
                )

            question = "What is structured concurrency?"
            print(
                f"\n▸ One answer, streamed through the hedged route\n  you: {question}\n  ",
                end="",
                file=out,
            )
            request = ChatRequest(model="hedged", messages=[Message.user(question)], max_tokens=200)
            async with router.stream(request) as events:
                async for event in events:
                    if isinstance(event, TextDelta):
                        print(event.text, end="", file=out, flush=True)
                response = events.response
            if response is not None:
                cost = f"${response.cost:.6f}" if response.cost is not None else "unpriced"
                print(
                    f"\n  [answered by {response.provider} ({response.model}) · "
                    f"{response.usage.input_tokens} in / {response.usage.output_tokens} out · "
                    f"{cost} · {len(response.attempts)} attempt(s)]",
                    file=out,
                )
        print(
            f"\nThe key given to every provider never appears in any output or error: {key!r}.",
            file=out,
        )
    if plot is not None:
        _plot(runs, plot)
        print(f"Latency CDF written to {plot}.", file=out)
    return runs
