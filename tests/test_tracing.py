"""OpenTelemetry spans: the tree of a hedged request, GenAI attributes, context across tasks.

Spans go to an in-memory exporter; under ``autojump_clock`` their timestamps are trio
times mapped to the wall clock, so the offsets within a trace are exact.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind, StatusCode

from router import ChatRequest, ChatResponse, Message, Router, open_router
from router.config import (
    HedgeConfig,
    ProviderConfig,
    RetryConfig,
    RouteConfig,
    RouterConfig,
    TracingConfig,
)
from router.errors import AllProvidersFailed, ServerError
from router.testing import MockProvider, MockResponse

NO_RETRY = RetryConfig(max_attempts=1)


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    """An in-memory exporter behind a fresh tracer provider."""
    exporter = InMemorySpanExporter()
    yield exporter
    exporter.clear()


def provider_for(exporter: InMemorySpanExporter) -> TracerProvider:
    """A tracer provider exporting every span to ``exporter`` at once."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def chat(model: str = "r", text: str = "hi") -> ChatRequest:
    return ChatRequest(model=model, messages=[Message.user(text)], max_tokens=16, temperature=0.5)


@asynccontextmanager
async def traced(
    exporter: InMemorySpanExporter,
    targets: dict[str, MockProvider],
    *,
    hedge: HedgeConfig | None = None,
) -> AsyncIterator[tuple[Router, TracerProvider]]:
    """A traced router with route "r" over ``targets``."""
    tracer_provider = provider_for(exporter)
    config = RouterConfig(
        providers={name: ProviderConfig(kind="mock", retry=NO_RETRY) for name in targets},
        routes={"r": RouteConfig(targets=[f"{n}:m" for n in targets], hedge=hedge)},
    )
    async with open_router(config, providers=targets, tracer_provider=tracer_provider) as router:
        yield router, tracer_provider


def by_provider(spans: list[ReadableSpan]) -> dict[str, ReadableSpan]:
    """Attempt spans by the configured provider they ran on."""
    return {
        str(s.attributes["trio_llm_router.provider"]): s
        for s in spans
        if s.kind == SpanKind.CLIENT and s.attributes is not None
    }


def request_span(spans: list[ReadableSpan]) -> ReadableSpan:
    """The one request span."""
    (span,) = [s for s in spans if s.kind == SpanKind.INTERNAL and s.name.startswith("chat r")]
    return span


def offset(span: ReadableSpan, root: ReadableSpan) -> tuple[float, float]:
    """(start, end) of ``span`` in seconds since ``root`` started."""
    assert span.start_time is not None
    assert span.end_time is not None
    assert root.start_time is not None
    return (
        (span.start_time - root.start_time) / 1e9,
        (span.end_time - root.start_time) / 1e9,
    )


async def test_hedged_request_span_tree(
    exporter: InMemorySpanExporter, autojump_clock: trio.testing.MockClock
) -> None:
    """A request span with two attempt children: the slow primary cancelled (status
    unset, outcome and reason attributes), the hedge won with the answer's GenAI
    attributes; exact offsets 0 to 1.5 s and 0.5 to 1.5 s."""
    targets = {
        "slow": MockProvider(name="slow", latency=10.0),
        "fast": MockProvider(name="fast", latency=1.0),
    }
    async with traced(exporter, targets, hedge=HedgeConfig(max_attempts=2, delay=0.5)) as (
        router,
        _,
    ):
        response = await router.complete(chat())
    spans = list(exporter.get_finished_spans())
    root = request_span(spans)
    attempts = by_provider(spans)
    assert len(spans) == 3
    assert set(attempts) == {"slow", "fast"}
    assert root.parent is None
    assert root.context is not None
    for attempt in attempts.values():
        assert attempt.parent is not None
        assert attempt.parent.span_id == root.context.span_id
        assert attempt.context is not None
        assert attempt.context.trace_id == root.context.trace_id
        assert attempt.name == "chat m"

    assert offset(root, root) == (0.0, 1.5)
    assert root.attributes is not None
    assert dict(root.attributes) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "r",
        "gen_ai.request.max_tokens": 16,
        "gen_ai.request.temperature": 0.5,
        "gen_ai.provider.name": "mock",
        "gen_ai.system": "mock",
        "gen_ai.response.model": response.model,
        "gen_ai.response.id": response.id,
        "gen_ai.response.finish_reasons": ("stop",),
        "gen_ai.usage.input_tokens": response.usage.input_tokens,
        "gen_ai.usage.output_tokens": response.usage.output_tokens,
        "trio_llm_router.request_id": root.attributes["trio_llm_router.request_id"],
        "trio_llm_router.stream": False,
        "trio_llm_router.provider": "fast",
        "trio_llm_router.outcome": "succeeded",
        "trio_llm_router.attempts": 2,
        "trio_llm_router.spend": 0.0,
    }
    assert root.status.status_code == StatusCode.UNSET
    assert [(e.name, offset_ns(e.timestamp, root)) for e in root.events] == [
        ("trio_llm_router.hedge", 0.5)
    ]

    slow, fast = attempts["slow"], attempts["fast"]
    assert offset(slow, root) == (0.0, 1.5)
    assert offset(fast, root) == (0.5, 1.5)
    assert slow.attributes is not None
    assert fast.attributes is not None
    assert slow.attributes["trio_llm_router.attempt.outcome"] == "cancelled"
    assert slow.attributes["trio_llm_router.attempt.reason"] == "lost the race to fast"
    assert slow.attributes["trio_llm_router.attempt.kind"] == "primary"
    assert "error.type" not in slow.attributes
    assert slow.status.status_code == StatusCode.UNSET
    assert fast.attributes["trio_llm_router.attempt.outcome"] == "won"
    assert fast.attributes["trio_llm_router.attempt.kind"] == "hedge"
    assert fast.attributes["gen_ai.request.model"] == "m"
    assert fast.attributes["gen_ai.provider.name"] == "mock"
    assert fast.attributes["gen_ai.response.model"] == response.model
    assert fast.attributes["gen_ai.usage.output_tokens"] == response.usage.output_tokens
    assert fast.status.status_code == StatusCode.UNSET


def offset_ns(timestamp: int, root: ReadableSpan) -> float:
    """Seconds from ``root``'s start to ``timestamp``."""
    assert root.start_time is not None
    return (timestamp - root.start_time) / 1e9


async def test_failed_attempts_and_requests_are_errors_with_their_type(
    exporter: InMemorySpanExporter, autojump_clock: trio.testing.MockClock
) -> None:
    """Every target fails: attempt spans and the request span have status ERROR and
    ``error.type``; a fallback is an event on the request span."""
    error = MockResponse(error=ServerError("down"), latency=1.0)
    targets = {
        "a": MockProvider(name="a", default=error),
        "b": MockProvider(name="b", default=error),
    }
    async with traced(exporter, targets) as (router, _):
        with pytest.raises(AllProvidersFailed):
            await router.complete(chat())
    spans = list(exporter.get_finished_spans())
    root = request_span(spans)
    assert root.attributes is not None
    assert root.status.status_code == StatusCode.ERROR
    assert root.attributes["error.type"] == "AllProvidersFailed"
    assert [e.name for e in root.events] == ["trio_llm_router.fallback"]
    for name, span in by_provider(spans).items():
        assert span.attributes is not None
        assert span.status.status_code == StatusCode.ERROR, name
        assert span.attributes["error.type"] == "ServerError"
        assert span.attributes["trio_llm_router.attempt.outcome"] == "failed"
    assert [
        offset(s, root)
        for s in sorted(by_provider(spans).values(), key=lambda s: s.start_time or 0)
    ] == [
        (0.0, 1.0),
        (1.0, 2.0),
    ]


async def test_the_request_span_is_a_child_of_the_callers_span_and_context_is_restored(
    exporter: InMemorySpanExporter, autojump_clock: trio.testing.MockClock
) -> None:
    """Called inside the application's span, the request span is its child; after the
    call, the application's span is current again (complete and stream alike)."""
    from opentelemetry import trace

    targets = {"a": MockProvider(name="a", latency=1.0)}
    async with traced(exporter, targets) as (router, tracer_provider):
        tracer = tracer_provider.get_tracer("app")
        with tracer.start_as_current_span("handle order") as app:
            await router.complete(chat())
            assert trace.get_current_span() is app
            async with router.stream(chat()) as stream:
                async for _ in stream:
                    pass
            assert trace.get_current_span() is app
    spans = list(exporter.get_finished_spans())
    (app_span,) = [s for s in spans if s.name == "handle order"]
    assert app_span.context is not None
    requests = [s for s in spans if s.name == "chat r"]
    assert len(requests) == 2
    for span in requests:
        assert span.parent is not None
        assert span.parent.span_id == app_span.context.span_id
    streamed = [s for s in requests if s.attributes and s.attributes["trio_llm_router.stream"]]
    (stream_span,) = streamed
    assert stream_span.attributes is not None
    assert stream_span.attributes["trio_llm_router.ttft"] == 1.0


class SpanningMock(MockProvider):
    """A MockProvider that makes a span of its own while it answers (an HTTP client's),
    and notes the task it answers in."""

    def __init__(self, tracer_provider: TracerProvider | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.tracer_provider = tracer_provider
        self.tasks: list[trio.lowlevel.Task] = []

    async def complete(self, request: ChatRequest) -> ChatResponse:
        assert self.tracer_provider is not None
        self.tasks.append(trio.lowlevel.current_task())
        with self.tracer_provider.get_tracer("http").start_as_current_span(f"POST {self.name}"):
            return await super().complete(request)


async def test_spans_inside_an_attempt_are_children_of_its_span_in_every_task(
    exporter: InMemorySpanExporter, autojump_clock: trio.testing.MockClock
) -> None:
    """In a hedged race each attempt runs in its own task: a span made inside it (an
    instrumented client's) is the child of that attempt's span, which trio's copy of
    the context carries into the task."""
    targets = {
        "slow": SpanningMock(name="slow", latency=10.0),
        "fast": SpanningMock(name="fast", latency=1.0),
    }
    tracer_provider = provider_for(exporter)
    for mock in targets.values():
        mock.tracer_provider = tracer_provider
    config = RouterConfig(
        providers={n: ProviderConfig(kind="mock", retry=NO_RETRY) for n in targets},
        routes={
            "r": RouteConfig(
                targets=["slow:m", "fast:m"], hedge=HedgeConfig(max_attempts=2, delay=0.5)
            )
        },
    )
    async with open_router(
        config, providers=dict(targets), tracer_provider=tracer_provider
    ) as router:
        await router.complete(chat())
        caller = trio.lowlevel.current_task()
    # Each attempt ran in a task of its own, not the caller's.
    assert len({caller, *targets["slow"].tasks, *targets["fast"].tasks}) == 3
    spans = list(exporter.get_finished_spans())
    attempts = by_provider(spans)
    root = request_span(spans)
    assert root.context is not None
    for name in ("slow", "fast"):
        # The attempt span took its parent from the context current in its own task.
        parent = attempts[name].parent
        assert parent is not None
        assert parent.span_id == root.context.span_id
        (inner,) = [s for s in spans if s.name == f"POST {name}"]
        attempt = attempts[name]
        assert attempt.context is not None
        assert inner.parent is not None
        assert inner.parent.span_id == attempt.context.span_id, name


async def test_tracing_switched_on_in_config_uses_the_global_provider(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``[tracing] enabled = true`` traces through the global provider (a no-op one here)."""
    config = RouterConfig(
        providers={"a": ProviderConfig(kind="mock")}, tracing=TracingConfig(enabled=True)
    )
    async with open_router(config, providers={"a": MockProvider(name="a")}) as router:
        response = await router.complete(chat("a:m"))
        assert router.statistics().events_emitted == 5
    assert response.text == "echo: hi"


def test_the_core_imports_and_routes_without_the_extras() -> None:
    """With opentelemetry and prometheus_client unimportable, the router imports and
    answers; asking for tracing or metrics is a ConfigError naming the extra."""
    code = """
import sys
for name in ("opentelemetry", "prometheus_client"):
    sys.modules[name] = None  # import fails
import trio, trio.testing
from router import ChatRequest, Message, open_router
from router.config import ProviderConfig, RouterConfig
from router.errors import ConfigError
from router.testing import MockProvider

async def main():
    config = RouterConfig(providers={"a": ProviderConfig(kind="mock")})
    async with open_router(config, providers={"a": MockProvider(name="a")}) as router:
        assert (await router.complete(ChatRequest(model="a:m", messages=[Message.user("x")]))).text
    for kw, extra in (({"tracer_provider": object()}, "otel"), ({"metrics_registry": object()}, "prometheus")):
        try:
            async with open_router(config, providers={"a": MockProvider(name="a")}, **kw):
                raise AssertionError("opened")
        except ConfigError as exc:
            assert extra in str(exc), exc
    assert not [m for m in sys.modules if m.startswith(("opentelemetry.", "prometheus_client."))]

trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
"""
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


async def test_concurrent_requests_sharing_an_id_keep_their_own_spans(
    exporter: InMemorySpanExporter, autojump_clock: trio.testing.MockClock
) -> None:
    """Two hedged requests at once with the same ``metadata`` request id: each attempt
    span is the child of its own request's span, and every span ends."""
    targets = {
        "slow": MockProvider(name="slow", latency=10.0),
        "fast": MockProvider(name="fast", latency=1.0),
    }
    request = ChatRequest(model="r", messages=[Message.user("hi")], metadata={"request_id": "dup"})
    async with (
        # budget_ratio 1: a cold hedge budget holds one hedge; each request earns one more.
        traced(
            exporter, targets, hedge=HedgeConfig(max_attempts=2, delay=0.5, budget_ratio=1.0)
        ) as (router, _),
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(router.complete, request)
        await trio.sleep(0.25)
        nursery.start_soon(router.complete, request)
    spans = list(exporter.get_finished_spans())
    roots = [s for s in spans if s.kind == SpanKind.INTERNAL]
    children = [s for s in spans if s.kind == SpanKind.CLIENT]
    assert (len(roots), len(children)) == (2, 4)
    for root in roots:
        assert root.context is not None
        mine = [c for c in children if c.parent and c.parent.span_id == root.context.span_id]
        assert sorted(offset(c, root) for c in mine) == [(0.0, 1.5), (0.5, 1.5)]
