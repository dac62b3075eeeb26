"""Prometheus metrics (the ``prometheus`` extra), on a registry the caller passes.

Imported only for ``open_router(config, metrics_registry=registry)``; nothing is ever
registered in ``prometheus_client``'s global default registry unless that is the registry
you pass.  Counters and histograms are fed by the router's events; gauges are read from
``router.statistics()`` when the registry is scraped (from the scraping thread, through
``trio.from_thread``, or directly when scraped from the router's own trio thread).  The
router unregisters everything when it closes.

==============================================  ==================================  ========
metric                                          labels                              type
==============================================  ==================================  ========
``trio_llm_router_requests_total``              model, operation, outcome           counter
``trio_llm_router_request_errors_total``        model, error_type                   counter
``trio_llm_router_request_duration_seconds``    model, operation, outcome           histogram
``trio_llm_router_time_to_first_token_seconds`` model, provider                     histogram
``trio_llm_router_attempts_total``              provider, kind, outcome             counter
``trio_llm_router_attempt_errors_total``        provider, error_type                counter
``trio_llm_router_attempt_duration_seconds``    provider, outcome                   histogram
``trio_llm_router_hedges_total``                model, provider                     counter
``trio_llm_router_fallbacks_total``             model, provider                     counter
``trio_llm_router_retries_total``               provider                            counter
``trio_llm_router_budget_refusals_total``       scope                               counter
``trio_llm_router_breaker_transitions_total``   provider, state                     counter
``trio_llm_router_tokens_total``                provider, provider_model, type      counter
``trio_llm_router_wasted_tokens_total``         provider                            counter
``trio_llm_router_spend_dollars_total``         provider, provider_model            counter
``trio_llm_router_provider_queued``             provider                            gauge
``trio_llm_router_provider_in_flight``          provider                            gauge
``trio_llm_router_provider_breaker_state``      provider, state                     gauge
``trio_llm_router_provider_health``             provider, status                    gauge
``trio_llm_router_provider_latency_p95_seconds``  provider                          gauge
``trio_llm_router_provider_restarts_total``     provider                            counter
``trio_llm_router_budget_spent_dollars``        scope                               gauge
``trio_llm_router_budget_limit_dollars``        scope                               gauge
``trio_llm_router_events_dropped_total``                                            counter
``trio_llm_router_listener_errors_total``                                           counter
``trio_llm_router_audit_records_total``         state (written, dropped, errors)    counter
==============================================  ==================================  ========

``model`` is the model string as requested (a route alias, ``provider:model``...):
keep the set of model strings your application sends bounded.  ``type`` is ``input`` or
``output``; ``state`` of a breaker is ``closed``, ``open`` or ``half_open`` (1 for the
current one, 0 for the others), ``status`` of health ``healthy``, ``degraded`` or
``unhealthy``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import trio
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ._events import (
    AttemptFinished,
    BreakerChanged,
    BudgetRefused,
    FallbackLaunched,
    HedgeLaunched,
    RequestFinished,
    RetryScheduled,
    RouterEvent,
)

if TYPE_CHECKING:
    from ._statistics import RouterStatistics

__all__ = ["LATENCY_BUCKETS", "PrometheusMetrics"]

#: Histogram buckets (seconds) for request, attempt and first-token latency.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)

_NS = "trio_llm_router"
_BREAKER_STATES = ("closed", "open", "half_open")
_HEALTH = ("healthy", "degraded", "unhealthy")


class PrometheusMetrics:
    """The router's metrics in ``registry``: a listener, and a collector for gauges."""

    def __init__(
        self,
        registry: CollectorRegistry,
        statistics: Callable[[], RouterStatistics],
        token: trio.lowlevel.TrioToken,
    ) -> None:
        self._registry = registry
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

        def counter(name: str, doc: str, labels: tuple[str, ...]) -> Counter:
            return Counter(name, doc, labels, namespace=_NS, registry=registry)

        def histogram(name: str, doc: str, labels: tuple[str, ...]) -> Histogram:
            return Histogram(
                name, doc, labels, namespace=_NS, registry=registry, buckets=LATENCY_BUCKETS
            )

        self._metrics: list[Counter | Histogram] = [
            requests := counter(
                "requests", "Requests finished.", ("model", "operation", "outcome")
            ),
            request_errors := counter(
                "request_errors",
                "Requests failed, by the error the caller got.",
                ("model", "error_type"),
            ),
            duration := histogram(
                "request_duration_seconds",
                "Seconds from a request's start to its answer or error (a stream's end).",
                ("model", "operation", "outcome"),
            ),
            ttft := histogram(
                "time_to_first_token_seconds",
                "Seconds from a streamed request's start to its first content.",
                ("model", "provider"),
            ),
            attempts := counter(
                "attempts", "Attempts ended, by outcome.", ("provider", "kind", "outcome")
            ),
            attempt_errors := counter(
                "attempt_errors", "Attempts failed, by error.", ("provider", "error_type")
            ),
            attempt_duration := histogram(
                "attempt_duration_seconds", "Seconds attempts ran.", ("provider", "outcome")
            ),
            hedges := counter("hedges", "Hedged attempts started.", ("model", "provider")),
            fallbacks := counter(
                "fallbacks", "Attempts started after a failure.", ("model", "provider")
            ),
            retries := counter("retries", "Retries scheduled.", ("provider",)),
            refusals := counter("budget_refusals", "Spend-cap refusals.", ("scope",)),
            transitions := counter(
                "breaker_transitions", "Circuit breaker moves, by new state.", ("provider", "state")
            ),
            tokens := counter(
                "tokens",
                "Tokens the answers used, as providers reported.",
                ("provider", "provider_model", "type"),
            ),
            wasted := counter(
                "wasted_tokens",
                "Estimated prompt tokens sent on attempts that lost or failed.",
                ("provider",),
            ),
            spend := counter(
                "spend_dollars",
                "US dollars spent (priced models): answers and lost attempts' prompts.",
                ("provider", "provider_model"),
            ),
        ]
        self._requests = requests
        self._request_errors = request_errors
        self._duration = duration
        self._ttft = ttft
        self._attempts = attempts
        self._attempt_errors = attempt_errors
        self._attempt_duration = attempt_duration
        self._hedges = hedges
        self._fallbacks = fallbacks
        self._retries = retries
        self._refusals = refusals
        self._transitions = transitions
        self._tokens = tokens
        self._wasted = wasted
        self._spend = spend
        self._collector = _StatisticsCollector(statistics, token)
        registry.register(self._collector)

    def unregister(self) -> None:
        """Take every metric out of the registry (the router closed)."""
        for metric in self._metrics:
            self._registry.unregister(metric)
        self._registry.unregister(self._collector)

    def _child(self, metric: Any, *labels: str) -> Any:
        # ``metric.labels()`` validates and locks on every call; the children of a
        # label set never change while the metric is registered, so they are kept.
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def listen(self, event: RouterEvent) -> None:
        """The router's listener: count and time what the event says."""
        child = self._child
        if isinstance(event, RequestFinished):
            self._request_finished(event)
        elif isinstance(event, AttemptFinished):
            child(self._attempts, event.provider, event.kind, event.outcome).inc()
            if event.outcome == "failed":
                child(self._attempt_errors, event.provider, event.error_type or "").inc()
            if event.started is not None:
                child(self._attempt_duration, event.provider, event.outcome).observe(
                    event.time - event.started
                )
        elif isinstance(event, HedgeLaunched):
            child(self._hedges, event.model, event.provider).inc()
        elif isinstance(event, FallbackLaunched):
            child(self._fallbacks, event.model, event.provider).inc()
        elif isinstance(event, RetryScheduled):
            child(self._retries, event.provider).inc()
        elif isinstance(event, BudgetRefused):
            child(self._refusals, event.scope).inc()
        elif isinstance(event, BreakerChanged):
            child(self._transitions, event.provider, event.new).inc()

    def _request_finished(self, event: RequestFinished) -> None:
        child = self._child
        child(self._requests, event.model, event.operation, event.outcome).inc()
        child(self._duration, event.model, event.operation, event.outcome).observe(event.latency)
        if event.outcome == "failed":
            child(self._request_errors, event.model, event.error_type or "").inc()
        if event.ttft is not None and event.provider is not None:
            child(self._ttft, event.model, event.provider).observe(event.ttft)
        usage = event.usage
        if usage is not None and event.provider is not None:
            model = event.provider_model or ""
            child(self._tokens, event.provider, model, "input").inc(usage.input_tokens)
            child(self._tokens, event.provider, model, "output").inc(usage.output_tokens)
        for attempt in event.attempts:
            if attempt.cost:
                child(self._spend, attempt.provider, attempt.model).inc(attempt.cost)
            if attempt.wasted_tokens:
                child(self._wasted, attempt.provider).inc(attempt.wasted_tokens)


class _StatisticsCollector(Collector):  # type: ignore[misc, unused-ignore]
    """Gauges read from ``router.statistics()`` at scrape time."""

    def __init__(
        self, statistics: Callable[[], RouterStatistics], token: trio.lowlevel.TrioToken
    ) -> None:
        self._statistics = statistics
        self._token = token

    def _snapshot(self) -> RouterStatistics | None:
        try:
            here = trio.lowlevel.current_trio_token()
        except RuntimeError:
            here = None
        if here is self._token:
            return self._statistics()
        try:
            return trio.from_thread.run_sync(self._statistics, trio_token=self._token)
        except (trio.RunFinishedError, RuntimeError):
            return None  # the router's run is over, or this is another trio thread

    def describe(self) -> Iterable[Metric]:
        return self._families(None)

    def collect(self) -> Iterable[Metric]:
        return self._families(self._snapshot())

    def _families(self, stats: RouterStatistics | None) -> list[Metric]:
        def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"{_NS}_{name}", doc, labels=labels)

        def count(name: str, doc: str, labels: tuple[str, ...] = ()) -> CounterMetricFamily:
            return CounterMetricFamily(f"{_NS}_{name}", doc, labels=labels)

        queued = gauge(
            "provider_queued", "Requests waiting in the provider's mailbox.", ("provider",)
        )
        in_flight = gauge("provider_in_flight", "Requests in flight.", ("provider",))
        breaker = gauge(
            "provider_breaker_state", "1 for the breaker's current state.", ("provider", "state")
        )
        health = gauge(
            "provider_health", "1 for the current health verdict.", ("provider", "status")
        )
        p95 = gauge("provider_latency_p95_seconds", "p95 latency of whole answers.", ("provider",))
        restarts = count("provider_restarts", "Actor restarts.", ("provider",))
        spent = gauge("budget_spent_dollars", "Spent in the cap's current period.", ("scope",))
        limit = gauge("budget_limit_dollars", "The cap per period.", ("scope",))
        dropped = count("events_dropped", "Events dropped by full subscriber buffers.")
        listener_errors = count("listener_errors", "Exceptions raised by event listeners.")
        audit = count("audit_records", "Audit records by what became of them.", ("state",))
        families: list[Metric] = [
            queued,
            in_flight,
            breaker,
            health,
            p95,
            restarts,
            spent,
            limit,
            dropped,
            listener_errors,
            audit,
        ]
        if stats is None:
            return families
        for name, p in stats.providers.items():
            queued.add_metric([name], p.queued)
            in_flight.add_metric([name], p.in_flight)
            for state in _BREAKER_STATES:
                breaker.add_metric([name, state], 1.0 if p.breaker == state else 0.0)
            for status in _HEALTH:
                health.add_metric([name, status], 1.0 if p.status == status else 0.0)
            if p.latency_p95 is not None:
                p95.add_metric([name], p.latency_p95)
            restarts.add_metric([name], p.restarts)
        for b in stats.budgets:
            spent.add_metric([b.scope], b.spent)
            limit.add_metric([b.scope], b.limit)
        dropped.add_metric([], stats.events_dropped)
        listener_errors.add_metric([], stats.listener_errors)
        if stats.audit is not None:
            audit.add_metric(["written"], stats.audit.written)
            audit.add_metric(["dropped"], stats.audit.dropped)
            audit.add_metric(["errors"], stats.audit.errors)
        return families
