"""Prometheus metrics: the exposition parses, and the counters add up against the results."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import pytest
import trio
import trio.testing

pytest.importorskip("prometheus_client")

import prometheus_client
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from router import Attempt, ChatRequest, Message, open_router
from router.config import (
    BudgetConfig,
    HedgeConfig,
    ModelConfig,
    ProviderConfig,
    RetryConfig,
    RouteConfig,
    RouterConfig,
)
from router.errors import LLMError, ServerError
from router.testing import MockProvider, MockResponse

NO_RETRY = RetryConfig(max_attempts=1)
PRICE = ModelConfig(input_price=1.0, output_price=2.0)


def samples(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Every sample of an exposition, by sample name, then by sorted labels."""
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def total(metric: dict[tuple[tuple[str, str], ...], float], **match: str) -> float:
    """The sum of a metric's samples whose labels include ``match``."""
    return sum(
        value for labels, value in metric.items() if set(match.items()) <= set(dict(labels).items())
    )


def config() -> RouterConfig:
    """Route "r": a flaky primary, a hedge target; route "cheap" with a tiny budget."""
    return RouterConfig(
        providers={
            "a": ProviderConfig(kind="mock", retry=NO_RETRY),
            "b": ProviderConfig(kind="mock", retry=NO_RETRY),
        },
        routes={
            "r": RouteConfig(targets=["a:m", "b:m"], hedge=HedgeConfig(max_attempts=2, delay=1.5)),
            "capped": RouteConfig(targets=["b:m"], budget=BudgetConfig(limit=1e-7)),
        },
        models={"a:m": PRICE, "b:m": PRICE},
    )


def targets() -> dict[str, MockProvider]:
    """a: every third answer fails, latencies vary; b: 2 s, past the hedge delay (once a
    is degraded by its failures, b goes first and a is hedged to)."""
    script = [
        MockResponse(
            text=f"a{i}",
            latency=[0.5, 2.0, 1.0, 3.0][i % 4],
            error=ServerError("x") if i % 3 == 0 else None,
        )
        for i in range(30)
    ]
    return {"a": MockProvider(name="a", responses=script), "b": MockProvider(name="b", latency=2.0)}


async def test_metrics_parse_and_add_up(autojump_clock: trio.testing.MockClock) -> None:
    """After 30 requests (hedges, fallbacks, failures, a stream, budget refusals), every
    counter agrees with the answers, their traces and router.statistics()."""
    registry = CollectorRegistry()
    outcomes: Counter[str] = Counter()
    attempts: list[Attempt] = []
    input_tokens = output_tokens = 0
    async with open_router(config(), providers=targets(), metrics_registry=registry) as router:
        for i in range(30):
            request = ChatRequest(model="r", messages=[Message.user(f"q{i}")], max_tokens=20)
            try:
                if i == 7:
                    async with router.stream(request) as stream:
                        async for _ in stream:
                            pass
                    assert stream.response is not None
                    response = stream.response
                else:
                    response = await router.complete(request)
            except LLMError as exc:
                outcomes["failed"] += 1
                attempts += exc.attempts
            else:
                outcomes["succeeded"] += 1
                attempts += response.attempts
                input_tokens += response.usage.input_tokens
                output_tokens += response.usage.output_tokens
        for _ in range(2):
            with pytest.raises(LLMError):
                await router.complete(ChatRequest(model="capped", messages=[Message.user("x")]))
        stats = router.statistics()
        text = generate_latest(registry).decode()
        # Scraped from another thread (as an HTTP exporter does): the same numbers.
        from_thread = (await trio.to_thread.run_sync(generate_latest, registry)).decode()
    got = samples(text)
    assert samples(from_thread) == got

    requests = got["trio_llm_router_requests_total"]
    assert (
        total(requests, model="r", outcome="succeeded") == outcomes["succeeded"] == stats.succeeded
    )
    assert total(requests, model="r", outcome="failed") == outcomes["failed"]
    assert total(requests, model="capped", outcome="failed") == 2
    assert total(got["trio_llm_router_request_errors_total"], error_type="BudgetExceeded") == 2
    assert total(got["trio_llm_router_request_duration_seconds_count"]) == 32
    assert total(got["trio_llm_router_time_to_first_token_seconds_count"]) == 1

    by_outcome = Counter((a.provider, a.outcome) for a in attempts)
    for (provider, outcome), n in by_outcome.items():
        assert total(got["trio_llm_router_attempts_total"], provider=provider, outcome=outcome) == n
    assert total(got["trio_llm_router_attempts_total"]) == len(attempts)
    failed = sum(n for (_, o), n in by_outcome.items() if o == "failed")
    assert total(got["trio_llm_router_attempt_errors_total"], error_type="ServerError") == failed
    assert total(got["trio_llm_router_hedges_total"]) == stats.hedges > 0
    assert total(got["trio_llm_router_fallbacks_total"]) == stats.fallbacks > 0
    assert total(got["trio_llm_router_budget_refusals_total"], scope="route capped") == 2

    tokens = got["trio_llm_router_tokens_total"]
    assert total(tokens, type="input") == input_tokens
    assert total(tokens, type="output") == output_tokens
    assert total(got["trio_llm_router_wasted_tokens_total"]) == stats.wasted_tokens
    spend = got["trio_llm_router_spend_dollars_total"]
    assert math.isclose(total(spend), stats.spend, rel_tol=1e-9)
    for target, dollars in stats.spend_by_target.items():
        provider, _, model = target.partition(":")
        assert math.isclose(total(spend, provider=provider, provider_model=model), dollars)

    # Gauges, read from router.statistics() at scrape time.
    assert got["trio_llm_router_provider_in_flight"] == {
        (("provider", "a"),): 0.0,
        (("provider", "b"),): 0.0,
    }
    for name in ("a", "b"):
        states = got["trio_llm_router_provider_breaker_state"]
        assert total(states, provider=name) == 1.0
        assert total(states, provider=name, state=stats.providers[name].breaker) == 1.0
        health = got["trio_llm_router_provider_health"]
        assert total(health, provider=name, status=stats.providers[name].status) == 1.0
    assert total(got["trio_llm_router_budget_limit_dollars"], scope="route capped") == 1e-7
    assert total(got["trio_llm_router_events_dropped_total"]) == 0.0


async def test_metrics_leave_the_registry_when_the_router_closes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """On exit every metric is unregistered (a new router can use the same registry), and
    nothing ever lands in prometheus_client's global registry."""
    registry = CollectorRegistry()
    before = set(prometheus_client.REGISTRY._names_to_collectors)
    for _ in range(2):
        async with open_router(config(), providers=targets(), metrics_registry=registry) as router:
            await router.complete(ChatRequest(model="b:m", messages=[Message.user("x")]))
            assert b"trio_llm_router_requests_total" in generate_latest(registry)
        assert generate_latest(registry) == b""
    assert set(prometheus_client.REGISTRY._names_to_collectors) == before


def test_a_scrape_after_the_run_is_empty_not_an_error() -> None:
    """A collector outliving its trio run (a scrape racing the exit) yields no samples."""
    registry = CollectorRegistry()
    leaked: list[Any] = []

    async def main() -> None:
        async with open_router(config(), providers=targets()) as router:
            from router._metrics import PrometheusMetrics

            leaked.append(
                PrometheusMetrics(registry, router.statistics, trio.lowlevel.current_trio_token())
            )

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    text = generate_latest(registry).decode()
    assert "trio_llm_router_provider_in_flight{" not in text
