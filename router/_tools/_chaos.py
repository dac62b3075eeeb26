"""The chaos engine behind ``llm-router chaos`` and ``tests/chaos``: faults in, guarantees checked.

A run sends a seeded mix of requests through a real router (the public API only) at
targets that misbehave, injects cancellation at each stage of a request, and then checks
what the router promises (docs/reliability.md):

1. **Bounded endings.**  Every request ends with a result or a typed
   :class:`~providers.LLMError` (or with the caller's own cancellation) no later than its
   deadline, or its injected cancellation, plus ``slack``, plus (on the wire) the time
   the machine kept the process waiting for a CPU while the ending was due
   (:class:`_Stalls`: the kernel's count of time the loop's thread was ready to run
   and not running; a loaded machine's lateness, never the router's).  Anything else escaping (a
   foreign exception, an exception group) is a violation.
2. **Limits.**  The router's admissions, as its ``AttemptAdmitted`` events stamp them
   (each try's grant), obey every provider's token bucket exactly: no window of ``dt``
   seconds holds more than ``burst + rpm * dt / 60`` of them (beyond float rounding,
   :data:`RPM_EPSILON`).  The hostile server counts, per provider, the exchanges in
   progress and the arrival times: the most at once never exceeds ``max_concurrency``,
   and every arrival is explained by an admission no later than it (the k-th arrival
   comes at or after the k-th grant, :func:`unexplained_arrivals`), so nothing reaches
   the server that the router did not admit; in the mock world each ``MockProvider``
   call's start is held to the same rule.  The arrivals are not held to the bucket
   themselves: the trip from admission to the server's read varies with scheduling
   (tenths of a second on a loaded machine), which says nothing of the router.
3. **Nothing left.**  With every request ended: no provider has a request in flight or
   queued; once the router closes, the servers see no open connection; once the
   servers close, trio runs as many tasks as before, the process holds as many file
   descriptors as before, and no ``ResourceWarning`` was raised.
4. **No key anywhere.**  A distinctive key is in the environment for the run and is
   echoed by the hostile server; it must appear in no byte written to stdout or stderr,
   no log record at DEBUG (any logger), no ``str``/``repr`` of an error (causes,
   contexts and group members included) or of a result, no event, no span and no audit
   line.
5. **Memory.**  RSS measured after a warm-up (10 % of the requests) and at the end,
   each after ``gc.collect()`` and ``malloc_trim(0)``; ``llm-router chaos`` fails when it
   grew by more than ``max_rss_growth``.

Two worlds: ``"wire"`` (real loopback sockets: the fake upstream in Anthropic's format,
the hostile server in OpenAI's, and crashing in-process adapters) and ``"mock"``
(``MockProvider`` scripts and the crashing adapters on trio's clock, so a test can run
it under ``MockClock`` with a slack of exactly zero).  Each fault and each cancellation
stage can run alone (``faults=``, ``stages=``), so a failure points at one cause.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import io
import logging
import math
import os
import random
import secrets
import sys
import tempfile
import traceback
import warnings
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec
import trio
import trio.lowlevel

from providers import (
    Capabilities,
    ChatRequest,
    ChatResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    LLMError,
    Message,
    ModelInfo,
    Overloaded,
    RateLimited,
    ServerError,
    StreamEvent,
    TextDelta,
)
from providers.testing import Fault, Fixed, MockProvider, MockResponse, Scenario, open_fake_upstream

# Internal, and why: the hostile server is a test fixture providers.testing does not
# export; chaos is its one user outside the tests.
from providers.testing._hostile import HOSTILE_FAULTS, HostileServer, open_hostile_server
from router import Router, open_router
from router.config import (
    AuditConfig,
    BreakerConfig,
    HedgeConfig,
    ProviderConfig,
    RouteConfig,
    RouterConfig,
)
from router.events import AttemptAdmitted, RouterEvent

from ._format import percentile, table_lines

__all__ = [
    "CRASH_FAULTS",
    "MOCK_FAULTS",
    "STAGES",
    "WIRE_FAULTS",
    "ChaosReport",
    "CrashingProvider",
    "format_report",
    "run_chaos",
    "run_chaos_async",
]

KEY_ENV = "LLM_ROUTER_CHAOS_KEY"


def _hostile_faults() -> tuple[str, ...]:
    """The hostile server's own list, less the paths that answer well (the stages and
    routes use those), plus its second listener's accept-then-hang after ``hang``."""
    faults = [f for f in HOSTILE_FAULTS if f not in ("ok", "late", "slow")]
    faults.insert(faults.index("hang") + 1, "accept-hang")
    return tuple(faults)


#: Faults of the hostile server (OpenAI format), by provider name ``h-<fault>``.
HOSTILE = _hostile_faults()
#: Faults of the fake upstream (Anthropic format), by provider name ``u-<fault>``.
UPSTREAM = {
    "u-429": Fault("status", status=429, retry_after=1.0, rate=1.0),
    "u-500": Fault("status", status=500, rate=1.0),
    "u-529": Fault("status", status=529, rate=1.0),
    "u-reset": Fault("reset", rate=1.0),
    "u-hang": Fault("hang", rate=1.0),
    "u-midstream": Fault("midstream_error", rate=1.0),
    "u-truncate": Fault("truncate", rate=1.0),
    "u-malformed": Fault("malformed", rate=1.0),
    "u-drip": Fault("slow_drip", drip_bytes=8, rate=1.0),
}
CRASH_FAULTS = ("crash-open", "crash-mid")
WIRE_FAULTS = tuple(f"h-{f}" for f in HOSTILE) + tuple(UPSTREAM) + CRASH_FAULTS
MOCK_FAULTS = (
    *("m-429", "m-429-huge", "m-500", "m-529", "m-hang", "m-drip", "m-midstream"),
    *CRASH_FAULTS,
)
STAGES = ("queued", "headers", "body", "stream", "hedge-close")

#: Faults whose answer must never be accepted as a result when sent to them directly.
MUST_REFUSE = {"h-huge", "h-gzip"}
_NO_EMBED = set(UPSTREAM) | {"m-midstream", "m-drip"}
_LIMIT = 4  # max_concurrency of every provider but "queue"
_RPM = 600
_BURST = 20
#: Float rounding allowed in the admission check: the bucket itself compares with 1e-9,
#: and rate * t at trio's clock (~1e5 s) rounds at ~1e-10; a real excess is >= 1.
RPM_EPSILON = 1e-6


class ChaosReport(msgspec.Struct, kw_only=True):
    """What a run did and found; ``passed`` is true when ``violations`` is empty."""

    world: str
    seed: int
    requests: int
    deadline: float
    slack: float
    duration: float
    outcomes: dict[str, int]
    by_fault: dict[str, dict[str, int]]
    by_stage: dict[str, dict[str, int]]
    p50: float
    p99: float
    max_overshoot: float
    #: Seconds the loop's thread waited for a CPU while due to run (wire world; _Stalls).
    starved: float
    concurrency: dict[str, list[int]]
    #: Per provider: the admissions (``AttemptAdmitted`` events) the limits check counted.
    admitted: dict[str, int]
    rss_start: int
    rss_warm: int
    rss_end: int
    rss_after_trim: int
    traced_warm: int | None
    traced_end: int | None
    gc_collections: list[int]
    leaks: dict[str, int]
    key_checked: dict[str, int]
    violations: list[str]
    passed: bool


# --------------------------------------------------------------------------- crashing adapter


class _Boom(Exception):
    """A foreign exception an adapter should never let out."""


class CrashingProvider:
    """An adapter that breaks its contract: foreign exceptions at open and mid-stream.

    ``mode="open"``: ``complete`` raises ``KeyError``, ``stream`` raises ``RuntimeError``
    on entry, ``embed`` raises ``ZeroDivisionError``.  ``mode="mid"``: each call first
    reaches a checkpoint, then ``complete`` raises ``TypeError``, ``embed`` an
    ``ExceptionGroup``, and a stream yields one text delta before raising ``_Boom``.
    """

    kind = "mock"

    def __init__(self, name: str, mode: str) -> None:
        self._name = name
        self.mode = mode
        self.calls = 0

    @property
    def name(self) -> str:
        return self._name

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities()

    async def complete(self, request: ChatRequest) -> ChatResponse:
        self.calls += 1
        if self.mode == "open":
            raise KeyError("choices")
        await trio.lowlevel.checkpoint()
        raise TypeError("'NoneType' object is not subscriptable")

    @contextlib.asynccontextmanager
    async def stream(self, request: ChatRequest) -> AsyncIterator[_CrashStream]:
        self.calls += 1
        if self.mode == "open":
            raise RuntimeError("adapter crashed while opening")
        await trio.lowlevel.checkpoint()
        yield _CrashStream()

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResponse:
        self.calls += 1
        if self.mode == "open":
            raise ZeroDivisionError("division by zero")
        await trio.lowlevel.checkpoint()
        raise ExceptionGroup("inner", [OSError("socket gone"), ValueError("bad")])

    async def list_models(self) -> list[ModelInfo]:
        return []

    async def aclose(self) -> None:
        return None


class _CrashStream:
    def __init__(self) -> None:
        self._sent = False

    def __aiter__(self) -> _CrashStream:
        return self

    async def __anext__(self) -> StreamEvent:
        await trio.lowlevel.checkpoint()
        if not self._sent:
            self._sent = True
            return TextDelta("partial ")
        raise _Boom("adapter crashed mid-stream")


# --------------------------------------------------------------------------- the key scanner


class _Scanner:
    """Looks for the key (and its random tail) in every text it is shown."""

    def __init__(self, key: str) -> None:
        self.needles = (key, key[-16:])
        self.found: list[str] = []
        self.checked: dict[str, int] = {}

    def check(self, where: str, text: str) -> None:
        self.checked[where] = self.checked.get(where, 0) + 1
        for needle in self.needles:
            at = text.find(needle)
            if at >= 0:
                if len(self.found) < 20:
                    excerpt = text[max(0, at - 60) : at].replace("\n", " ")
                    self.found.append(f"key found in {where}: ...{excerpt}<KEY>")
                return

    def check_error(self, exc: BaseException) -> None:
        for e in _chain(exc):
            self.check("exceptions", str(e))
            self.check("exceptions", repr(e))
            if isinstance(e, LLMError):
                self.check("exceptions", repr(e.request_id))
                self.check("exceptions", repr(e.headers))
        self.check("exceptions", "".join(traceback.format_exception(exc)))


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        for nxt in (e.__cause__, e.__context__):
            if nxt is not None:
                todo.append(nxt)
        if isinstance(e, BaseExceptionGroup):
            todo.extend(e.exceptions)


class _LogScan(logging.Handler):
    def __init__(self, scanner: _Scanner) -> None:
        super().__init__(logging.DEBUG)
        self.scanner = scanner
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.scanner.check("logs", self.format(record))


@contextlib.contextmanager
def _debug_logging(scanner: _Scanner) -> Iterator[None]:
    root = logging.getLogger()
    handler = _LogScan(scanner)
    level = root.level
    quiet = {}
    for name in ("trio_llm_router", "httpx", "httpcore", "hpack", "h2"):
        lg = logging.getLogger(name)
        quiet[name] = lg.level
        lg.setLevel(logging.DEBUG)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        for name, lvl in quiet.items():
            logging.getLogger(name).setLevel(lvl)


class _Spans:
    """An OpenTelemetry tracer provider exporting to memory (None without the extra)."""

    def __init__(self, scanner: _Scanner) -> None:
        self.scanner = scanner
        self.provider: Any = None
        self.exporter: Any = None
        try:
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import SimpleSpanProcessor
            from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
                InMemorySpanExporter,
            )
        except ImportError:
            return
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))

    def drain(self) -> None:
        if self.exporter is None:
            return
        for span in self.exporter.get_finished_spans():
            self.scanner.check("spans", span.to_json())
        self.exporter.clear()


# --------------------------------------------------------------------------- measurements


def _rss() -> int:
    """Resident set size in bytes (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def _malloc_trim() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return -1


def rpm_excess(arrivals: Sequence[float], rpm: int, burst: int, tolerance: float) -> float:
    """How far the busiest window of ``arrivals`` goes over the token bucket (<= 0: never).

    A bucket of capacity ``burst`` refilled at ``rpm / 60`` per second admits at most
    ``burst + rpm * dt / 60`` requests in any window of length ``dt``.  For arrivals
    ``i < j`` the window holds ``j - i + 1``; the worst ``i`` for each ``j`` maximises
    ``rate * t_i - i``, kept as a running maximum: O(n).
    """
    rate = rpm / 60.0
    best = -math.inf
    worst = -math.inf
    for j, t in enumerate(sorted(arrivals)):
        best = max(best, rate * t - j)
        count_minus_allowed = (j + 1) - rate * t + best - burst - rate * tolerance
        worst = max(worst, count_minus_allowed)
    return worst


def unexplained_arrivals(arrivals: Sequence[float], grants: Sequence[float]) -> int:
    """How many of ``arrivals`` no grant explains (0: each has its own grant no later).

    Each request the server reads must have been admitted first, by a grant of its own.
    Such a matching exists exactly when, at every instant, the arrivals so far are no
    more than the grants so far (Hall's condition on a line): with both sorted, the k-th
    arrival is at or after the k-th grant.  The answer is the largest shortfall; a grant
    and an arrival at the same instant match (the grant counts first).  Extra grants
    (requests admitted and then cancelled before they were sent) explain nothing and
    cost nothing.
    """
    timeline = sorted([(t, 0) for t in grants] + [(t, 1) for t in arrivals])
    worst = balance = 0
    for _, is_arrival in timeline:
        balance += 1 if is_arrival else -1
        worst = max(worst, balance)
    return worst


def limit_violations(
    admitted: Mapping[str, Sequence[float]],
    seen: Mapping[str, tuple[str, Sequence[float]]],
) -> list[str]:
    """The rate-limit verdict of a run (guarantee 2 of the module docstring).

    ``admitted``: per provider, the grant times of its admissions (``AttemptAdmitted``).
    Each provider's are held to the token bucket exactly (``rpm_excess`` with no
    tolerance, beyond :data:`RPM_EPSILON`).  ``seen``: where requests were counted on
    arrival (a hostile server path, a ``MockProvider``) -> (the provider sending there,
    the arrival times); each arrival must be explained by an admission of that provider
    no later than it (:func:`unexplained_arrivals`).  The arrivals are not held to the
    bucket: the trip from grant to arrival varies with the machine's load.
    """
    violations = []
    for name, times in sorted(admitted.items()):
        excess = rpm_excess(times, _RPM, _BURST, 0.0)
        if excess > RPM_EPSILON:
            violations.append(
                f"the router admitted {excess:.2f} requests on {name!r} beyond "
                f"rpm={_RPM} (burst {_BURST}) in one window"
            )
    for where, (provider, arrivals) in sorted(seen.items()):
        unexplained = unexplained_arrivals(arrivals, admitted.get(provider, ()))
        if unexplained:
            violations.append(
                f"{where} saw {unexplained} requests that no admission of provider "
                f"{provider!r} explains (an arrival before its grant)"
            )
    return violations


# --------------------------------------------------------------------------- the plan


class _Spec(msgspec.Struct, frozen=True):
    index: int
    fault: str
    op: str
    stage: str
    via: str
    cancel_at: float | None  # seconds after the start, or None


def plan_requests(
    n: int, seed: int, faults: Sequence[str], stages: Sequence[str], *, stage_share: float = 0.35
) -> list[_Spec]:
    """The seeded request mix: which fault, operation, stage and route each request gets."""
    rng = random.Random(seed)
    specs = []
    for i in range(n):
        if stages and (not faults or rng.random() < stage_share):
            stage = rng.choice(list(stages))
            fault, op, via, at = _stage_target(stage, rng)
            specs.append(_Spec(i, fault, op, stage, via, at))
            continue
        fault = rng.choice(list(faults))
        ops = ["complete", "stream"] + ([] if fault in _NO_EMBED else ["embed"])
        op = rng.choice(ops)
        vias = ["direct", "fallback"] + ([] if fault in CRASH_FAULTS else ["hedge"])
        specs.append(_Spec(i, fault, op, "none", rng.choice(vias), None))
    return specs


def _stage_target(stage: str, rng: random.Random) -> tuple[str, str, str, float | None]:
    if stage == "queued":
        return "queue", "complete", "direct", rng.uniform(0.0, 0.05)
    if stage == "headers":
        return "hang", rng.choice(["complete", "stream"]), "direct", rng.uniform(0.005, 0.1)
    if stage == "body":
        return "drip", "complete", "direct", rng.uniform(0.1, 0.5)
    if stage == "stream":
        return "drip", "stream", "direct", None  # cancelled after the first event
    # hedge-close: the commit of a hedged stream, at once or around the moment it lands
    return "late", "stream", "hedge-close", rng.choice([None, rng.uniform(0.015, 0.06)])


# --------------------------------------------------------------------------- the worlds


def _limited(pc: ProviderConfig) -> ProviderConfig:
    return msgspec.structs.replace(
        pc,
        max_concurrency=pc.max_concurrency or _LIMIT,
        rpm=_RPM,
        rpm_burst=_BURST,
        breaker=BreakerConfig(open_duration=0.5, max_open_duration=2.0),
    )


def _routes(names: Sequence[str], ok: str) -> dict[str, RouteConfig]:
    routes = {"hc": RouteConfig(targets=["late:m", f"{ok}:m"], hedge=HedgeConfig(delay=0.02))}
    for name in names:
        routes[f"fb-{name}"] = RouteConfig(targets=[f"{name}:m", f"{ok}:m"])
        routes[f"hg-{name}"] = RouteConfig(
            targets=[f"{name}:m", f"{ok}:m"], hedge=HedgeConfig(delay=0.05)
        )
    return routes


def _mock_providers() -> dict[str, Any]:
    mocks: dict[str, Any] = {
        "ok": MockProvider(name="ok", default=MockResponse(text="fine answer", latency=0.01)),
        "late": MockProvider(
            name="late", default=MockResponse(text="late answer", latency=0.1), record=False
        ),
        "queue": MockProvider(name="queue", default=MockResponse(latency=math.inf)),
        "hang": MockProvider(name="hang", default=MockResponse(text="never", latency=math.inf)),
        "drip": MockProvider(
            name="drip",
            # A mock answer has no body on the wire: 1 s to the first word stands for it.
            default=MockResponse(text=" ".join(["word"] * 40), latency=1.0, chunk_latency=0.05),
        ),
        "m-429": MockProvider(
            name="m-429", default=MockResponse(error=RateLimited("slow", retry_after=1.0))
        ),
        "m-429-huge": MockProvider(
            name="m-429-huge", default=MockResponse(error=RateLimited("slow", retry_after=86400.0))
        ),
        "m-500": MockProvider(name="m-500", default=MockResponse(error=ServerError("boom"))),
        "m-529": MockProvider(
            name="m-529", default=MockResponse(error=Overloaded("busy", status_code=529))
        ),
        "m-hang": MockProvider(name="m-hang", default=MockResponse(latency=math.inf)),
        "m-drip": MockProvider(
            name="m-drip", default=MockResponse(text=" ".join(["w"] * 200), chunk_latency=0.05)
        ),
        "m-midstream": MockProvider(
            name="m-midstream",
            default=MockResponse(
                text="one two three four", error=ServerError("gone"), error_after_chunks=2
            ),
        ),
        "crash-open": CrashingProvider("crash-open", "open"),
        "crash-mid": CrashingProvider("crash-mid", "mid"),
    }
    for m in mocks.values():
        if isinstance(m, MockProvider):
            m.models = ["m"]
    return mocks


class _World:
    """The servers and the router config of one run."""

    def __init__(self) -> None:
        self.config: RouterConfig | None = None
        self.given: dict[str, Any] = {}
        self.hostile: HostileServer | None = None
        self.upstream: Any = None
        #: The hostile server's paths (``fault`` or ``fault~tag``) -> the provider sending there.
        self.paths: dict[str, str] = {}


_HELPERS = ("ok", "late", "queue", "hang", "drip")  # the providers the stages and routes use


@contextlib.asynccontextmanager
async def _open_world(kind: str, audit_path: str, faults: Sequence[str]) -> AsyncIterator[_World]:
    """The servers and the config: the helpers plus only the providers of ``faults``."""
    world = _World()
    audit = AuditConfig(path=audit_path, content="truncated", max_chars=200)
    wanted = set(_HELPERS) | set(faults)
    routes = _routes(list(faults), "ok")
    if kind == "mock":
        world.given = {n: p for n, p in _mock_providers().items() if n in wanted}
        providers = {
            name: _limited(
                ProviderConfig(kind="mock", max_concurrency=1 if name == "queue" else None)
            )
            for name in world.given
        }
        world.config = RouterConfig(providers=providers, routes=routes, audit=audit)
        yield world
        return
    limits = {f: _LIMIT for f in HOSTILE if f != "accept-hang"}
    limits.update({"ok": _LIMIT, "late": _LIMIT, "hang~queue": 1, "hang~h": _LIMIT})
    limits.update({"drip~h": _LIMIT})
    scenarios = {
        name: Scenario(faults=[fault], latency=Fixed(0.0)) for name, fault in UPSTREAM.items()
    }
    async with (
        open_hostile_server(limits) as hostile,
        open_fake_upstream(scenarios, record=False) as upstream,
    ):
        world.hostile, world.upstream = hostile, upstream

        def openai(fault: str, concurrency: int | None = None, tag: str = "") -> ProviderConfig:
            return _limited(
                ProviderConfig(
                    kind="openai",
                    api_key_env=KEY_ENV,
                    base_url=hostile.base_url(fault, tag),
                    max_concurrency=concurrency,
                )
            )

        providers = {f"h-{f}": openai(f) for f in HOSTILE if f"h-{f}" in wanted}
        providers.update(ok=openai("ok"), late=openai("late"), queue=openai("hang", 1, "queue"))
        providers.update(hang=openai("hang", tag="h"), drip=openai("drip", tag="h"))
        world.paths = {f: f"h-{f}" for f in HOSTILE if f"h-{f}" in wanted and f != "accept-hang"}
        world.paths.update({"ok": "ok", "late": "late", "hang~queue": "queue"})
        world.paths.update({"hang~h": "hang", "drip~h": "drip"})
        for name in UPSTREAM:
            if name in wanted:
                providers[name] = _limited(
                    ProviderConfig(
                        kind="anthropic",
                        api_key_env=KEY_ENV,
                        base_url=upstream.base_url(name, "anthropic"),
                    )
                )
        for name in CRASH_FAULTS:
            if name in wanted:
                providers[name] = _limited(ProviderConfig(kind="mock"))
                world.given[name] = CrashingProvider(name, name.removeprefix("crash-"))
        world.config = RouterConfig(providers=providers, routes=routes, audit=audit)
        yield world


# --------------------------------------------------------------------------- one request


class _Outcome(msgspec.Struct):
    spec: _Spec
    outcome: str
    elapsed: float
    overshoot: float
    end: float


class _Stalls:
    """When the machine kept the process off the CPU although it was ready to run.

    A task sleeps ``period`` again and again.  When it wakes late, the lateness is time
    the loop spent running code (the router's work, a huge body parsed in the loop), time
    it was blocked in a system call (a synchronous sleep or lookup), or time it was ready
    to run and waiting for a CPU other processes held: starved.  Linux counts the last
    for each thread (``/proc/thread-self/schedstat``, the second field: nanoseconds spent
    waiting on a run queue), and only that part of the lateness is kept, so a router that
    blocks or busies its own loop is never excused.  Without that file nothing is kept,
    and the bound is as strict as ``slack`` alone.  On an idle machine nothing is kept.
    """

    def __init__(self) -> None:
        #: (woke from, woke at, seconds starved) of each late wake-up.
        self.spans: list[tuple[float, float, float]] = []

    @staticmethod
    def _waited() -> float | None:
        """Seconds this thread has spent ready to run but not running; None: unknown."""
        try:
            with open("/proc/thread-self/schedstat", "rb") as f:
                return int(f.read().split()[1]) / 1e9
        except (OSError, IndexError, ValueError):
            return None

    async def watch(self, period: float = 0.01) -> None:
        if self._waited() is None:
            return
        while True:
            t0, waited0 = trio.current_time(), self._waited() or 0.0
            await trio.sleep(period)
            t1 = trio.current_time()
            starved = min(t1 - t0 - period, (self._waited() or 0.0) - waited0)
            if starved > 0.001:
                self.spans.append((t0, t1, starved))

    def between(self, start: float, end: float) -> float:
        """Seconds starved in the wake-ups that overlap ``start``..``end``."""
        return sum(s for a, b, s in self.spans if b > start and a < end)

    @property
    def total(self) -> float:
        return sum(s for _, _, s in self.spans)


def _model(spec: _Spec) -> str:
    if spec.via == "hedge-close":
        return "hc"
    if spec.via == "fallback":
        return f"fb-{spec.fault}"
    if spec.via == "hedge":
        return f"hg-{spec.fault}"
    return f"{spec.fault}:m"


async def _one(router: Router, spec: _Spec, deadline: float, scanner: _Scanner) -> _Outcome:
    """Send one request; classify how it ended and how late."""
    start = trio.current_time()
    model = _model(spec)
    request = ChatRequest(model=model, messages=[Message.user(f"chaos request {spec.index}")])
    outcome = "ok"
    limit = start + deadline
    with trio.CancelScope(deadline=limit) as caller:
        with trio.CancelScope() as inject:
            if spec.cancel_at is not None:
                inject.deadline = start + spec.cancel_at
                limit = min(limit, inject.deadline)
            try:
                if spec.op == "complete":
                    reply = await router.complete(request)
                    scanner.check("results", repr(reply))
                elif spec.op == "embed":
                    vectors = await router.embed(model, ["chaos", "input"])
                    scanner.check("results", repr(vectors))
                else:
                    async with router.stream(request) as events:
                        if spec.stage == "hedge-close" and spec.cancel_at is None:
                            limit = trio.current_time()  # cancelled as the race commits
                            inject.cancel()
                        async for event in events:
                            scanner.check("results", repr(event))
                            if spec.stage == "stream" and spec.cancel_at is None:
                                limit = trio.current_time()
                                inject.cancel()
                                await trio.lowlevel.checkpoint()
            except LLMError as exc:
                outcome = type(exc).__name__
                scanner.check_error(exc)
            except Exception as exc:  # the thing that must never happen
                outcome = f"foreign:{type(exc).__name__}"
                scanner.check_error(exc)
        if inject.cancelled_caught:
            outcome = "cancelled"
    if caller.cancelled_caught:
        outcome = "deadline"
    end = trio.current_time()
    if outcome not in ("cancelled", "deadline") and not inject.cancel_called:
        # Ended on its own before any injected cancellation: only the deadline bounds it.
        # (An error or a result after the injected cancel is bounded by the cancel.)
        limit = start + deadline
    return _Outcome(spec, outcome, end - start, end - limit, end)


# --------------------------------------------------------------------------- the run


async def run_chaos_async(
    *,
    requests: int = 300,
    seed: int = 0,
    world: str = "wire",
    faults: Sequence[str] | None = None,
    stages: Sequence[str] | None = None,
    parallel: int = 16,
    deadline: float | None = None,
    slack: float | None = None,
    max_rss_growth: float = 64 * 2**20,
    trace_memory: bool = False,
    key: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> ChaosReport:
    """Run the chaos mix inside the current trio run; see the module docstring.

    ``faults`` and ``stages`` default to all of the world's; pass one of each (or an
    empty ``faults``) to run a single cause alone.  ``deadline`` is per request (default
    2 s on the wire, 5 s in the mock world); ``slack`` what an ending may be late by
    (default 1 s on the wire, 0 in the mock world: virtual time is exact), on the wire
    beyond the time the machine kept the process waiting for a CPU (``_Stalls``).
    """
    if world not in ("wire", "mock"):
        raise ValueError(f"world must be 'wire' or 'mock', got {world!r}")
    known = WIRE_FAULTS if world == "wire" else MOCK_FAULTS
    faults = tuple(known if faults is None else faults)
    stages = tuple(STAGES if stages is None else stages)
    for f in faults:
        if f not in known:
            raise ValueError(f"unknown fault {f!r} for the {world} world; known: {known}")
    for s in stages:
        if s not in STAGES:
            raise ValueError(f"unknown stage {s!r}; known: {STAGES}")
    if not faults and not stages:
        raise ValueError("nothing to run: give at least one fault or stage")
    deadline = deadline if deadline is not None else (2.0 if world == "wire" else 5.0)
    slack = slack if slack is not None else (1.0 if world == "wire" else 0.0)
    key = key or os.environ.get(KEY_ENV) or f"sk-chaos-{secrets.token_hex(16)}"
    scanner = _Scanner(key)
    violations: list[str] = []
    specs = plan_requests(requests, seed, faults, stages)

    import tracemalloc

    gc.collect()
    gc_before = [s["collections"] for s in gc.get_stats()]
    fds_start = _fds()
    tasks_start = trio.lowlevel.current_statistics().tasks_living
    rss_start = _rss()
    started = trio.current_time()
    results: list[_Outcome] = []
    rss_warm = 0
    traced_warm: int | None = None
    leaks: dict[str, int] = {}
    concurrency: dict[str, list[int]] = {}
    grants: dict[str, list[float]] = {}
    stalls = _Stalls()
    seen: dict[str, tuple[str, list[float]]] = {}
    old_env = os.environ.get(KEY_ENV)
    os.environ[KEY_ENV] = key
    spans = _Spans(scanner)
    out, err = io.StringIO(), io.StringIO()
    tmp = tempfile.TemporaryDirectory(prefix="llm-router-chaos-")
    audit_path = str(Path(tmp.name) / "audit.jsonl")
    if trace_memory:
        tracemalloc.start()
    try:
        with (
            warnings.catch_warnings(record=True) as caught,
            _debug_logging(scanner),
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
        ):
            warnings.simplefilter("always")
            async with _open_world(world, audit_path, faults) as w:
                assert w.config is not None
                async with open_router(
                    w.config, providers=w.given, seed=seed, tracer_provider=spans.provider
                ) as router:

                    def listen(event: RouterEvent) -> None:
                        scanner.check("events", repr(event))
                        if isinstance(event, AttemptAdmitted):
                            grants.setdefault(event.provider, []).append(event.time)

                    router.add_listener(listen)
                    todo = iter(specs)
                    warm_at = max(1, len(specs) // 10)

                    async def worker() -> None:
                        nonlocal rss_warm, traced_warm
                        for spec in todo:
                            results.append(await _one(router, spec, deadline, scanner))
                            done = len(results)
                            if done == warm_at:
                                gc.collect()
                                _malloc_trim()  # as at the end: compare like with like
                                rss_warm = _rss()
                                if trace_memory:
                                    traced_warm = tracemalloc.get_traced_memory()[0]
                            if done % 200 == 0:
                                spans.drain()
                                if progress is not None:
                                    progress(done)

                    async with trio.open_nursery() as nursery:
                        if world == "wire":
                            nursery.start_soon(stalls.watch)
                        if stages and "queued" in stages:
                            # Keep "queue"'s one slot busy so queued requests really queue.
                            nursery.start_soon(_hold_slot, router)
                            await trio.sleep(0.01)
                        async with trio.open_nursery() as workers:
                            for _ in range(max(1, min(parallel, len(specs)))):
                                workers.start_soon(worker)
                        nursery.cancel_scope.cancel()
                    stats = router.statistics()
                    for name, actor in stats.providers.items():
                        if actor.in_flight or actor.queued:
                            violations.append(
                                f"provider {name}: {actor.in_flight} in flight and "
                                f"{actor.queued} queued after every request ended"
                            )
                        leaks[f"in_flight:{name}"] = actor.in_flight + actor.queued
                        if name in CRASH_FAULTS and actor.cancelled:
                            violations.append(
                                f"provider {name}: {actor.cancelled} crashes counted as "
                                "cancellations (none was cancelled)"
                            )
                    for name, given in w.given.items():
                        if not isinstance(given, MockProvider):
                            continue
                        if given.in_flight:
                            violations.append(f"mock {name}: {given.in_flight} calls still open")
                        # The mock world's "server": each recorded call began after a grant.
                        seen[f"mock {name!r}"] = (name, [c.started_at for c in given.calls])
                # the router is closed: every connection it held must close
                if w.hostile is not None:
                    open_h = await _settle(lambda: w.hostile.open_connections)  # type: ignore[union-attr]
                    open_u = await _settle(lambda: w.upstream.stats().open_connections)
                    leaks["server_connections"] = open_h + open_u
                    if open_h or open_u:
                        violations.append(
                            f"{open_h} hostile and {open_u} upstream connections still open "
                            "after the router closed"
                        )
                    for fault in w.hostile.faults_seen():
                        counts = w.hostile.counts(fault)
                        seen[f"server path {fault!r}"] = (w.paths.get(fault, ""), counts.arrivals)
                        limit = w.hostile.limits.get(fault)
                        if limit is None:
                            continue
                        concurrency[fault] = [counts.max_concurrency, limit]
                        if counts.max_concurrency > limit:
                            violations.append(
                                f"server counted {counts.max_concurrency} concurrent requests "
                                f"on {fault!r}, over max_concurrency={limit}"
                            )
                violations.extend(limit_violations(grants, seen))
            spans.drain()
            # servers closed: tasks and file descriptors back where they started
            await trio.lowlevel.checkpoint()
            gc.collect()
            tasks_end = trio.lowlevel.current_statistics().tasks_living
            leaks["tasks"] = tasks_end - tasks_start
            if tasks_end != tasks_start:
                violations.append(f"{tasks_end - tasks_start} trio tasks left running")
            fds_end = _fds()
            leaks["fds"] = fds_end - fds_start
            if fds_end > fds_start:
                violations.append(f"{fds_end - fds_start} file descriptors left open")
            gc.collect()
            resource = [w for w in caught if issubclass(w.category, ResourceWarning)]
            leaks["resource_warnings"] = len(resource)
            for warning in resource[:5]:
                violations.append(f"ResourceWarning: {warning.message}")
            for warning in caught:
                scanner.check("warnings", str(warning.message))
        for text in _read_audit(Path(tmp.name)):
            scanner.check("audit", text)
    finally:
        if old_env is None:
            os.environ.pop(KEY_ENV, None)
        else:
            os.environ[KEY_ENV] = old_env
        tmp.cleanup()
        traced_end = tracemalloc.get_traced_memory()[0] if trace_memory else None
        if trace_memory:
            tracemalloc.stop()
        scanner.check("stdout", out.getvalue())
        scanner.check("stderr", err.getvalue())
        sys.stdout.write(out.getvalue())
        sys.stderr.write(err.getvalue())

    gc.collect()
    rss_end = _rss()
    _malloc_trim()
    rss_after_trim = _rss()
    gc_after = [s["collections"] for s in gc.get_stats()]
    violations.extend(scanner.found)
    latencies = []
    outcomes: dict[str, int] = {}
    by_fault: dict[str, dict[str, int]] = {}
    by_stage: dict[str, dict[str, int]] = {}
    max_overshoot = -math.inf
    for r in results:
        outcomes[r.outcome] = outcomes.get(r.outcome, 0) + 1
        group = by_stage if r.spec.stage != "none" else by_fault
        name = r.spec.stage if r.spec.stage != "none" else r.spec.fault
        row = group.setdefault(name, {})
        row[r.outcome] = row.get(r.outcome, 0) + 1
        latencies.append(r.elapsed)
        max_overshoot = max(max_overshoot, r.overshoot)
        if r.outcome.startswith("foreign:"):
            violations.append(
                f"request {r.spec.index} ({r.spec.fault}, {r.spec.op}, {r.spec.via}) "
                f"ended with an untyped {r.outcome.removeprefix('foreign:')}"
            )
        if r.overshoot > slack:
            # The machine's share: the process starved while this ending was due.
            starved = stalls.between(r.end - r.overshoot, r.end)
            if r.overshoot > slack + starved:
                violations.append(
                    f"request {r.spec.index} ({r.spec.fault}, {r.spec.op}, {r.spec.via}, "
                    f"stage {r.spec.stage}) ended {r.overshoot:.3f}s past its bound "
                    f"(slack {slack}s + {starved:.3f}s the loop waited for a CPU)"
                )
        if r.spec.fault in MUST_REFUSE and r.spec.via == "direct" and r.outcome == "ok":
            violations.append(
                f"request {r.spec.index}: the {r.spec.fault} body ({r.spec.op}) was accepted "
                "as a result; it must be refused with a typed error"
            )
    if len(results) != len(specs):
        violations.append(f"{len(specs) - len(results)} requests never ended")
    if rss_warm and rss_after_trim - rss_warm > max_rss_growth:
        violations.append(
            f"RSS grew {(rss_after_trim - rss_warm) / 2**20:.1f} MiB after the warm-up "
            f"(allowed {max_rss_growth / 2**20:.0f} MiB)"
        )
    return ChaosReport(
        world=world,
        seed=seed,
        requests=len(results),
        deadline=deadline,
        slack=slack,
        duration=trio.current_time() - started,
        outcomes=dict(sorted(outcomes.items())),
        by_fault=by_fault,
        by_stage=by_stage,
        p50=percentile(latencies, 0.5) if latencies else 0.0,
        p99=percentile(latencies, 0.99) if latencies else 0.0,
        max_overshoot=max_overshoot if results else 0.0,
        starved=stalls.total,
        concurrency=concurrency,
        admitted={name: len(times) for name, times in sorted(grants.items())},
        rss_start=rss_start,
        rss_warm=rss_warm,
        rss_end=rss_end,
        rss_after_trim=rss_after_trim,
        traced_warm=traced_warm,
        traced_end=traced_end,
        gc_collections=[a - b for a, b in zip(gc_after, gc_before, strict=True)],
        leaks=leaks,
        key_checked=dict(sorted(scanner.checked.items())),
        violations=violations,
        passed=not violations,
    )


async def _hold_slot(router: Router) -> None:
    """One request that hangs in "queue"'s only slot until cancelled."""
    with contextlib.suppress(LLMError):
        await router.complete(ChatRequest(model="queue:m", messages=[Message.user("hold")]))


async def _settle(count: Callable[[], int], *, within: float = 1.0) -> int:
    """Poll ``count()`` until it is 0 or ``within`` seconds passed; the last value."""
    with trio.move_on_after(within):
        while count():  # noqa: ASYNC110 - the servers' counters have no event to wait on
            await trio.sleep(0.01)
    return count()


def _read_audit(directory: Path) -> list[str]:
    return [p.read_text("utf-8", errors="replace") for p in sorted(directory.glob("audit*"))]


def run_chaos(*, clock: trio.abc.Clock | None = None, **kwargs: Any) -> ChaosReport:
    """:func:`run_chaos_async` in a fresh ``trio.run`` (call it from synchronous code).

    ``clock``: e.g. ``trio.testing.MockClock(autojump_threshold=0)`` for the mock world.
    """

    async def main() -> ChaosReport:
        return await run_chaos_async(**kwargs)

    return trio.run(main, clock=clock)


# --------------------------------------------------------------------------- the table


def format_report(report: ChaosReport) -> str:
    """The summary table ``llm-router chaos`` prints."""
    mib = 2**20
    lines = [
        f"chaos: {report.requests} requests, {report.world} world, seed {report.seed}, "
        f"{report.duration:.1f}s; deadline {report.deadline}s + slack {report.slack}s",
        "",
        "outcome                      count",
    ]
    rows = [[name, str(count)] for name, count in report.outcomes.items()]
    lines += table_lines(rows, right={1}, widths=[26, 6], sep=" ", indent="  ")
    lines += [
        "",
        f"latency p50 {report.p50 * 1000:.0f} ms, p99 {report.p99 * 1000:.0f} ms; "
        f"max overshoot past the bound {report.max_overshoot * 1000:+.0f} ms; the loop "
        f"waited {report.starved * 1000:.0f} ms in all for a CPU other processes held",
    ]
    if report.concurrency:
        worst = max(report.concurrency.items(), key=lambda kv: kv[1][0] / kv[1][1])
        lines.append(
            f"server-counted concurrency: max {worst[1][0]} on {worst[0]!r} (limit {worst[1][1]})"
        )
    if report.admitted:
        lines.append(
            f"rpm: {sum(report.admitted.values())} admissions on {len(report.admitted)} "
            f"providers checked against {_RPM}/min + burst {_BURST}, exactly"
            + ("; each server arrival against an admission before it" if report.concurrency else "")
        )
    lines.append(
        f"RSS start {report.rss_start / mib:.1f} MiB, after warm-up {report.rss_warm / mib:.1f}, "
        f"end {report.rss_end / mib:.1f}, after malloc_trim {report.rss_after_trim / mib:.1f}"
    )
    if report.traced_end is not None and report.traced_warm is not None:
        lines.append(
            f"tracemalloc: {report.traced_warm / mib:.1f} MiB after warm-up, "
            f"{report.traced_end / mib:.1f} MiB at the end"
        )
    leaks = {k: v for k, v in report.leaks.items() if v and not k.startswith("in_flight:")}
    lines.append(f"leaks found: {leaks or 'none'}")
    checked = ", ".join(f"{k} {v}" for k, v in report.key_checked.items())
    lines.append(f"key searched in: {checked}")
    if report.violations:
        lines += ["", f"FAILED: {len(report.violations)} guarantee violation(s)"]
        lines += [f"  - {v}" for v in report.violations[:30]]
        if len(report.violations) > 30:
            lines.append(f"  ... and {len(report.violations) - 30} more")
    else:
        lines += ["", "every guarantee held"]
    return "\n".join(lines)
