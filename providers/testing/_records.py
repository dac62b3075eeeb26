"""What the fake upstream records and counts: requests, statistics, per-scenario state.

:class:`RecordedRequest` and :class:`UpstreamStats` are public (re-exported by
:mod:`providers.testing`); :class:`ScenarioState` is what the server keeps per scenario
name, and what a wire format reads to word a rate-limit fault (its buckets feed the
``x-ratelimit-*`` headers).
"""

from __future__ import annotations

import random
from typing import Any

import msgspec
import trio

from ._scenario import Scenario

__all__ = ["RATE_WINDOW", "Bucket", "RecordedRequest", "ScenarioState", "UpstreamStats"]
#: Seconds for a rate-limit bucket to refill completely.
RATE_WINDOW = 60.0


class RecordedRequest(msgspec.Struct, kw_only=True):
    """One request the fake upstream received, and how its exchange ended.

    Attributes:
        scenario: the scenario name from the URL.
        method: ``"POST"``, ``"GET"``...
        path: the URL path, scenario included (``/flaky/v1/chat/completions``).
        query: the raw query string ("" if none).
        headers: request headers, names lower-cased (repeated headers joined by ", ").
            Test keys arrive here as sent (``authorization``, ``x-api-key``,
            ``api-key``, ``x-goog-api-key``), so tests can assert on them.
        body: the decoded JSON body, or None (no body, or not JSON).
        model: the model the request addressed: the body's ``model``, the Gemini model
            in the path, or the Azure deployment in the path (None if none).
        received_at: ``trio.current_time()`` when the request was complete.
        outcome: "pending", "completed" (answered as scripted, error answers included),
            "client_disconnected" (the client went away first), or ``"fault:<kind>"``
            (the scripted fault ran to its end).  A request still pending when the
            server shuts down stays "pending".
        fault: the kind of fault applied to this request, if any.
        status: the HTTP status sent, if a status line was sent.
        finished: set when the exchange ends, whatever the outcome.
    """

    scenario: str
    method: str
    path: str
    query: str = ""
    headers: dict[str, str] = {}
    body: Any = None
    model: str | None = None
    received_at: float = 0.0
    outcome: str = "pending"
    fault: str | None = None
    status: int | None = None
    finished: trio.Event = msgspec.field(default_factory=trio.Event)


class UpstreamStats(msgspec.Struct, frozen=True, kw_only=True):
    """A frozen snapshot of one scenario's counters (or of all, see :meth:`FakeUpstream.stats`).

    Attributes:
        requests: requests received.
        completed: exchanges that ended "completed".
        client_disconnected: exchanges the client abandoned.
        faults: applied faults by kind.
        in_flight: exchanges not ended yet.
        open_connections: TCP connections open now (server-wide: a keep-alive connection
            may serve several scenarios).
    """

    requests: int = 0
    completed: int = 0
    client_disconnected: int = 0
    faults: dict[str, int] = {}
    in_flight: int = 0
    open_connections: int = 0


# --------------------------------------------------------------------------- per-scenario state


class Bucket:
    """A rate-limit bucket refilling linearly over ``RATE_WINDOW``, for the headers."""

    __slots__ = ("level", "limit", "updated")

    def __init__(self, limit: int, now: float) -> None:
        self.limit = float(limit)
        self.level = float(limit)
        self.updated = now

    def take(self, amount: float, now: float) -> None:
        refill = (now - self.updated) * self.limit / RATE_WINDOW
        self.level = max(0.0, min(self.limit, self.level + refill) - amount)
        self.updated = now

    def remaining(self) -> int:
        return int(self.level)

    def reset_after(self) -> float:
        """Seconds until the bucket is full again."""
        return (self.limit - self.level) * RATE_WINDOW / self.limit


class ScenarioState:
    """A scenario's config, its random streams and request numbering, and its counters.

    The counters survive :meth:`FakeUpstream.set_scenario`; the request numbering and
    the random streams restart, so a scenario installed twice replays the same faults.
    """

    def __init__(self, name: str, scenario: Scenario, seed: int, now: float) -> None:
        self.name = name
        self.seed = seed
        self.requests = 0
        self.completed = 0
        self.client_disconnected = 0
        self.in_flight = 0
        self.faults: dict[str, int] = {}
        self.install(scenario, now)

    def install(self, scenario: Scenario, now: float) -> None:
        self.scenario = scenario
        self.served = 0
        # String seeds are hashed with SHA-512: stable across runs and PYTHONHASHSEED.
        self.fault_rng = random.Random(f"{self.seed}/{self.name}/faults")
        self.latency_rng = random.Random(f"{self.seed}/{self.name}/latency")
        self.request_bucket = Bucket(scenario.ratelimit_requests, now)
        self.token_bucket = Bucket(scenario.ratelimit_tokens, now)

    def snapshot(self, open_connections: int) -> UpstreamStats:
        return UpstreamStats(
            requests=self.requests,
            completed=self.completed,
            client_disconnected=self.client_disconnected,
            faults=dict(self.faults),
            in_flight=self.in_flight,
            open_connections=open_connections,
        )
