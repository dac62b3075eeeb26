"""OpenTelemetry tracing: a span per request, a child span per attempt (the ``otel`` extra).

Imported only when tracing is on (``open_router(config, tracer_provider=...)`` or
``[tracing] enabled = true``); the rest of the router never imports OpenTelemetry.

The spans follow the OpenTelemetry semantic conventions for generative AI::

    chat fast                          INTERNAL   the request, as the caller named it
    ├── chat slow-model                CLIENT     attempt 1 (primary): cancelled, lost the race
    └── chat fast-model                CLIENT     attempt 2 (hedge): won

=====================================  ===================================================
``gen_ai.operation.name``              ``chat`` or ``embeddings``
``gen_ai.request.model``               the request span: the model string as requested
                                       (a route alias); an attempt: the vendor's model id
``gen_ai.provider.name``,              the vendor (``openai``, ``anthropic``,
``gen_ai.system``                      ``gcp.gemini``, ``azure.ai.openai``, ...)
``gen_ai.response.model``,             from the answer
``gen_ai.response.id``,
``gen_ai.response.finish_reasons``
``gen_ai.usage.input_tokens``,         the answer's usage
``gen_ai.usage.output_tokens``
``gen_ai.request.max_tokens``,         the request's parameters, when set
``gen_ai.request.temperature``,
``gen_ai.request.top_p``
``error.type``                         the error class, on failures (status ERROR)
``trio_llm_router.*``                  ``request_id``, ``provider`` (the configured
                                       name), ``attempt.kind``, ``attempt.number``,
                                       ``attempt.outcome``, ``attempt.reason``,
                                       ``outcome``, ``cost``, ``spend``, ``ttft``...
=====================================  ===================================================

A hedge loser is cancelled, not failed: ``trio_llm_router.attempt.outcome`` is
``"cancelled"`` with the reason (``"lost the race to fast"``) and its status stays
unset.  Hedges, fallbacks, retries, skipped targets and budget refusals are span events
on the request span.

Context: the request span is made current in the caller's task while the request runs
(for a stream, until its block exits), and each attempt span in the task that runs the
attempt.  trio copies the spawning task's context into every task it starts, so the
attempts of a hedged race — each in its own task of the race's nursery — are children of
the request span, and spans made inside an attempt (an instrumented HTTP client's) are
children of the attempt's.  Timestamps are trio's clock mapped to the wall clock, so
under a virtual clock they are exact.
"""

from __future__ import annotations

import time
from contextvars import Token
from typing import Any

import trio
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, TracerProvider

from ._events import (
    AttemptFinished,
    AttemptStarted,
    BudgetRefused,
    FallbackLaunched,
    HedgeLaunched,
    RequestFinished,
    RequestStarted,
    RetryScheduled,
    RouterEvent,
)

__all__ = ["Tracing"]

#: ``gen_ai.provider.name`` by adapter kind, where the conventions name the vendor.
GEN_AI_PROVIDERS = {
    "openai": "openai",
    "anthropic": "anthropic",
    "gemini": "gcp.gemini",
    "azure": "azure.ai.openai",
    "groq": "groq",
}

_PREFIX = "trio_llm_router."


class _Request:
    """A request span, its context token, and its attempts by number."""

    __slots__ = ("attempts", "operation", "request_id", "span", "token", "winner")

    def __init__(self, request_id: str, span: Span, token: Token[Context], operation: str) -> None:
        self.request_id = request_id
        self.span = span
        self.token = token
        self.operation = operation
        self.attempts: dict[int, _Attempt] = {}
        self.winner: Span | None = None


class _Attempt:
    """An attempt span and its context token."""

    __slots__ = ("number", "request", "span", "token")

    def __init__(self, request: _Request, number: int, span: Span, token: Token[Context]) -> None:
        self.request = request
        self.number = number
        self.span = span
        self.token = token


class Tracing:
    """The tracing listener: turns the router's events into spans.

    A request's state is found through the current span (the request's in the caller's
    task, an attempt's in the task running it), so two requests that share an id (one
    given in ``metadata``) never get each other's spans; the id is the fallback.
    """

    def __init__(self, tracer_provider: TracerProvider | None, kinds: dict[str, str]) -> None:
        provider = tracer_provider if tracer_provider is not None else trace.get_tracer_provider()
        self._tracer = provider.get_tracer("trio_llm_router")
        self._systems = {name: GEN_AI_PROVIDERS.get(kind, kind) for name, kind in kinds.items()}
        self._requests: dict[int, _Request] = {}  # by id() of the request span
        self._attempts: dict[int, _Attempt] = {}  # by id() of the attempt span
        self._by_id: dict[str, _Request] = {}  # the latest request with that id
        # Trio time → wall-clock nanoseconds: read once, then advanced by trio's clock.
        self._wall0 = time.time_ns()
        self._trio0 = trio.current_time()

    def _ns(self, t: float) -> int:
        return self._wall0 + round((t - self._trio0) * 1e9)

    def _current(self) -> tuple[_Request | None, _Attempt | None]:
        key = id(trace.get_current_span())
        attempt = self._attempts.get(key)
        if attempt is not None:
            return attempt.request, attempt
        return self._requests.get(key), None

    def _find(self, request_id: str) -> tuple[_Request | None, bool]:
        """The request's state, and whether the current span is its own."""
        request, attempt = self._current()
        if request is not None and request.request_id == request_id:
            return request, attempt is None
        return self._by_id.get(request_id), False

    def __call__(self, event: RouterEvent) -> None:
        if isinstance(event, RequestStarted):
            self._request_started(event)
        elif isinstance(event, AttemptStarted):
            self._attempt_started(event)
        elif isinstance(event, AttemptFinished):
            self._attempt_finished(event)
        elif isinstance(event, RequestFinished):
            self._request_finished(event)
        elif isinstance(event, HedgeLaunched | FallbackLaunched | RetryScheduled | BudgetRefused):
            self._point(event)

    def _request_started(self, event: RequestStarted) -> None:
        span = self._tracer.start_span(
            f"{event.operation} {event.model}",
            kind=SpanKind.INTERNAL,
            start_time=self._ns(event.time),
            attributes={
                "gen_ai.operation.name": event.operation,
                "gen_ai.request.model": event.model,
                _PREFIX + "request_id": event.request_id,
                _PREFIX + "stream": event.stream,
            },
        )
        token = otel_context.attach(trace.set_span_in_context(span))
        request = _Request(event.request_id, span, token, event.operation)
        self._requests[id(span)] = self._by_id[event.request_id] = request

    def _attempt_started(self, event: AttemptStarted) -> None:
        request, _ = self._find(event.request_id)
        if request is None:
            return
        system = self._systems.get(event.provider, event.provider)
        # No explicit parent: the current span is the request's, in the caller's task
        # or (a hedged race) in the context trio copied into the attempt's own task.
        span = self._tracer.start_span(
            f"{request.operation} {event.provider_model}",
            kind=SpanKind.CLIENT,
            start_time=self._ns(event.time),
            attributes={
                "gen_ai.operation.name": request.operation,
                "gen_ai.request.model": event.provider_model,
                "gen_ai.provider.name": system,
                "gen_ai.system": system,
                _PREFIX + "request_id": event.request_id,
                _PREFIX + "provider": event.provider,
                _PREFIX + "attempt.kind": event.kind,
                _PREFIX + "attempt.number": event.number,
            },
        )
        token = otel_context.attach(trace.set_span_in_context(span))
        attempt = _Attempt(request, event.number, span, token)
        request.attempts[event.number] = self._attempts[id(span)] = attempt

    def _attempt_finished(self, event: AttemptFinished) -> None:
        if event.outcome == "skipped":
            request, _ = self._find(event.request_id)
            if request is not None:
                request.span.add_event(
                    _PREFIX + "attempt.skipped",
                    {_PREFIX + "provider": event.provider, _PREFIX + "reason": event.reason or ""},
                    timestamp=self._ns(event.time),
                )
            return
        request, attempt = self._current()
        current = (
            attempt is not None
            and attempt.number == event.number
            and attempt.request.request_id == event.request_id
        )
        if not current:
            request = self._by_id.get(event.request_id)
            attempt = None if request is None else request.attempts.get(event.number)
        if attempt is None:
            return
        del attempt.request.attempts[attempt.number]
        span = attempt.span
        del self._attempts[id(span)]
        if current:
            otel_context.detach(attempt.token)
        span.set_attribute(_PREFIX + "attempt.outcome", event.outcome)
        if event.retries:
            span.set_attribute(_PREFIX + "attempt.retries", event.retries)
        if event.reason is not None and event.outcome != "won":
            span.set_attribute(_PREFIX + "attempt.reason", event.reason)
        if event.outcome == "failed":
            error_type = event.error_type or "Exception"
            span.set_attribute("error.type", error_type)
            span.set_status(Status(StatusCode.ERROR, f"{error_type}: {event.reason or ''}"))
        if event.usage is not None:
            _usage(span, event.usage.input_tokens, event.usage.output_tokens)
        if event.cost is not None:
            span.set_attribute(_PREFIX + "cost", event.cost)
        if event.outcome == "won":
            # The winner's answer (model, finish reason, a stream's usage) comes with the
            # request's end; its span ends then.
            attempt.request.winner = span
            return
        span.end(end_time=self._ns(event.time))

    def _request_finished(self, event: RequestFinished) -> None:
        request, current = self._find(event.request_id)
        if request is None:
            return
        del self._requests[id(request.span)]
        if self._by_id.get(event.request_id) is request:
            del self._by_id[event.request_id]
        if current:
            otel_context.detach(request.token)
        end = self._ns(event.time)
        span = request.span
        attributes: dict[str, Any] = {
            _PREFIX + "outcome": event.outcome,
            _PREFIX + "attempts": len(event.attempts),
            _PREFIX + "spend": event.spend,
        }
        answer: dict[str, Any] = {}
        if event.provider is not None:
            system = self._systems.get(event.provider, event.provider)
            attributes["gen_ai.provider.name"] = system
            attributes["gen_ai.system"] = system
            attributes[_PREFIX + "provider"] = event.provider
        if event.response_model is not None:
            answer["gen_ai.response.model"] = event.response_model
        if event.response is not None:
            answer["gen_ai.response.id"] = event.response.id
        if event.finish_reason is not None:
            answer["gen_ai.response.finish_reasons"] = (event.finish_reason,)
        if event.usage is not None:
            answer["gen_ai.usage.input_tokens"] = event.usage.input_tokens
            answer["gen_ai.usage.output_tokens"] = event.usage.output_tokens
        if event.cost is not None:
            answer[_PREFIX + "cost"] = event.cost
        if event.ttft is not None:
            attributes[_PREFIX + "ttft"] = event.ttft
        if event.request is not None:
            for name, value in (
                ("max_tokens", event.request.max_tokens),
                ("temperature", event.request.temperature),
                ("top_p", event.request.top_p),
            ):
                if value is not None:
                    attributes[f"gen_ai.request.{name}"] = value
        span.set_attributes({**attributes, **answer})
        if event.outcome == "failed":
            error_type = event.error_type or "Exception"
            span.set_attribute("error.type", error_type)
            span.set_status(Status(StatusCode.ERROR, f"{error_type}: {event.error or ''}"))
        winner = request.winner
        if winner is not None:
            winner.set_attributes(answer)
            winner.end(end_time=end)
        for attempt in request.attempts.values():  # pragma: no cover - defensive
            del self._attempts[id(attempt.span)]
            attempt.span.end(end_time=end)
        span.end(end_time=end)

    def _point(
        self, event: HedgeLaunched | FallbackLaunched | RetryScheduled | BudgetRefused
    ) -> None:
        request, _ = self._find(event.request_id)
        if request is None:
            return
        attributes: dict[str, Any] = {}
        if isinstance(event, HedgeLaunched):
            name = "hedge"
            attributes = {
                "provider": event.provider,
                "previous": event.previous,
                "delay": event.delay,
            }
        elif isinstance(event, FallbackLaunched):
            name = "fallback"
            attributes = {
                "provider": event.provider,
                "failed": event.failed or "",
                "error_type": event.error_type or "",
            }
        elif isinstance(event, RetryScheduled):
            name = "retry"
            attributes = {
                "provider": event.provider,
                "error_type": event.error_type,
                "retry": event.retry,
                "delay": event.delay,
            }
        else:
            name = "budget_refused"
            attributes = {"provider": event.provider or "", "scope": event.scope}
        request.span.add_event(
            _PREFIX + name,
            {_PREFIX + k: v for k, v in attributes.items()},
            timestamp=self._ns(event.time),
        )


def _usage(span: Span, input_tokens: int, output_tokens: int) -> None:
    span.set_attribute("gen_ai.usage.input_tokens", input_tokens)
    span.set_attribute("gen_ai.usage.output_tokens", output_tokens)
