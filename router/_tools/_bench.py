"""``llm-router bench``: how fast the router is, measured against the obvious baselines.

Each benchmark prints a table and returns its figures as a frozen record (``--json``
writes them all).  Wall-clock time is read here — this is measurement, not routing
logic — with :func:`time.perf_counter`.

============  ==============================================================================
overhead      in-process: MockProvider with zero latency, ``router.complete`` against
              calling the provider directly; µs per request (p50, p99), requests/s at
              concurrency 1 and 100
loopback      over HTTP: the fake upstream in a separate process answering at once; the
              same chat requests through the router and through a bare
              ``httpx.AsyncClient`` (same body, same JSON decode), in alternating
              rounds of the same run (each router round against the bare rounds on
              either side); throughput ratio and added latency (medians over the
              rounds) and the range of the rounds' ratios
hedging       the stall scenario over real sockets (fake upstream in a separate process):
              p50 / p99 / p99.9 with and without hedging, extra attempts
scale         1,000 concurrent streaming requests through one router over loopback: all
              complete; peak RSS and RSS per in-flight stream (client process only)
coldstart     ``python -c "import router"``: wall time and peak RSS
gateway       ``llm-router serve`` (a child process) in front of the fake upstream (another)
              against that upstream directly: the latency it adds at concurrency 1, 16
              and 64 in alternating rounds (upstream latency fixed at 250 ms); its CPU
              per request and throughput (upstream answering at once, concurrency 1);
              then 1,000 concurrent streams through it, and its RSS (``_bench_gateway``)
shared        ``[shared]`` on a redis-server of its own (loopback, temporary directory): the
              latency a request gains with shared limits against the same limits local
              (µs added at p50 and p99, alternating rounds, in-process MockProvider), and
              the throughput of 1, 2 and 4 OS processes sharing one provider's limits,
              in alternating rounds
============  ==============================================================================
"""

from __future__ import annotations

import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import httpx
import msgspec
import trio

from providers import ChatRequest, Message, OpenAIProvider, Secret, TextDelta
from providers.testing import MockProvider
from router import open_router
from router.config import HedgeConfig, ProviderConfig, RouteConfig, RouterConfig

from ._format import percentile, table_lines

__all__ = ["BENCHMARKS", "run_benchmarks"]


class Latencies(msgspec.Struct, frozen=True, kw_only=True):
    """Latency percentiles in microseconds, and throughput."""

    p50_us: float
    p99_us: float
    p999_us: float
    requests: int
    seconds: float
    per_second: float


def _summary(samples: list[float], seconds: float) -> Latencies:
    ordered = sorted(samples)
    n = len(ordered)
    return Latencies(
        p50_us=percentile(ordered, 0.50) * 1e6,
        p99_us=percentile(ordered, 0.99) * 1e6,
        p999_us=percentile(ordered, 0.999) * 1e6,
        requests=n,
        seconds=seconds,
        per_second=n / seconds if seconds else math.nan,
    )


async def _drive(call: Callable[[], Awaitable[Any]], requests: int, concurrency: int) -> Latencies:
    """Run ``requests`` calls with ``concurrency`` workers; per-call latency and rate."""
    samples: list[float] = []
    left = requests

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            t0 = time.perf_counter()
            await call()
            samples.append(time.perf_counter() - t0)

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
    return _summary(samples, time.perf_counter() - start)


def _request(model: str = "m:mock-model", text: str = "hello there") -> ChatRequest:
    return ChatRequest(model=model, messages=[Message.user(text)], max_tokens=64)


# --------------------------------------------------------------------------- overhead


class OverheadResult(msgspec.Struct, frozen=True, kw_only=True):
    """In-process: the router against calling the provider directly."""

    direct_c1: Latencies
    router_c1: Latencies
    direct_c100: Latencies
    router_c100: Latencies
    added_p50_us: float
    added_p99_us: float


async def bench_overhead(requests: int = 20_000) -> OverheadResult:
    """Router overhead over a zero-latency MockProvider (in-process, no HTTP)."""
    provider = MockProvider(name="m", record=False)
    config = RouterConfig(providers={"m": ProviderConfig(kind="mock")})
    direct_req = _request("mock-model")
    routed_req = _request()

    async def direct() -> None:
        await provider.complete(direct_req)

    async with open_router(config, providers={"m": provider}) as router:

        async def routed() -> None:
            await router.complete(routed_req)

        await _drive(routed, 1000, 1)  # warm up
        await _drive(direct, 1000, 1)
        direct_c1 = await _drive(direct, requests, 1)
        router_c1 = await _drive(routed, requests, 1)
        direct_c100 = await _drive(direct, requests, 100)
        router_c100 = await _drive(routed, requests, 100)
    return OverheadResult(
        direct_c1=direct_c1,
        router_c1=router_c1,
        direct_c100=direct_c100,
        router_c100=router_c100,
        added_p50_us=router_c1.p50_us - direct_c1.p50_us,
        added_p99_us=router_c1.p99_us - direct_c1.p99_us,
    )


# --------------------------------------------------------------------------- upstream


@contextmanager
def _upstream_process(scenarios_toml: str = "") -> Iterator[str]:
    """A fake upstream in a child process (its CPU is not ours); yields its URL."""
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(scenarios_toml)
        path = f.name
    args = [sys.executable, "-m", "router", "upstream", "--port", "0", "--scenario", path]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if "listening on" not in line:
            raise RuntimeError(f"the fake upstream did not start: {line!r}")
        yield line.rsplit(" ", 1)[-1].strip()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - a wedged child
            proc.kill()
        os.unlink(path)


def _client(limit: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        limits=httpx.Limits(max_connections=limit, max_keepalive_connections=limit),
        timeout=httpx.Timeout(60.0),
    )


@asynccontextmanager
async def _openai_router(
    url: str, client: httpx.AsyncClient, routes: dict[str, RouteConfig] | None = None
) -> AsyncIterator[Any]:
    names = ["a", "b"] if routes else ["a"]
    providers = {
        name: OpenAIProvider(
            name=name,
            api_key=Secret("sk-bench-not-a-key"),
            base_url=f"{url}/{name}/v1",
            client=client,
        )
        for name in names
    }
    config = RouterConfig(
        providers={name: ProviderConfig(kind="openai", presets=False) for name in names},
        routes=routes or {},
    )
    async with open_router(config, providers=providers) as router:
        yield router


class LoopbackResult(msgspec.Struct, frozen=True, kw_only=True):
    """Over HTTP: the router against bare httpx, same server, same run.

    They run in alternating rounds, bare first and last (``rounds`` router rounds,
    ``rounds + 1`` bare ones); each router round is compared with the mean of the bare
    rounds either side of it, which cancels drift in the machine or the server to first
    order.  ``throughput_ratio`` and ``added_p50_us`` are the medians of those
    comparisons, ``ratio_low``/``ratio_high`` the lowest and highest.
    """

    concurrency: int
    bare: Latencies
    router: Latencies
    throughput_ratio: float
    added_p50_us: float
    rounds: int = 1
    ratio_low: float = math.nan
    ratio_high: float = math.nan


async def bench_loopback(
    requests: int = 5_000, concurrency: int = 1, rounds: int = 10
) -> LoopbackResult:
    """Router over loopback HTTP against a bare ``httpx.AsyncClient`` to the same server."""
    body = msgspec.json.encode(
        {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "hello there"}],
            "max_tokens": 64,
        }
    )
    headers = {"authorization": "Bearer sk-bench-not-a-key", "content-type": "application/json"}
    rounds = max(1, min(rounds, requests // max(concurrency, 1)))
    with _upstream_process() as url:
        async with _client(max(concurrency, 1)) as client, _openai_router(url, client) as router:
            request = _request("a:gpt-4o-mini")

            async def bare() -> None:
                response = await client.post(
                    f"{url}/a/v1/chat/completions", content=body, headers=headers
                )
                response.raise_for_status()
                msgspec.json.decode(response.content)

            async def routed() -> None:
                await router.complete(request)

            await _drive(bare, 300, concurrency)  # warm up connections on both paths
            await _drive(routed, 300, concurrency)
            # bare, router, bare, router, ..., bare: each router round is compared with
            # the bare rounds either side of it, which cancels drift (the machine, the
            # server warming up) to first order.
            per_round = requests // rounds
            bare_samples = [await _drive(bare, per_round, concurrency)]
            routed_samples: list[Latencies] = []
            for _ in range(rounds):
                routed_samples.append(await _drive(routed, per_round, concurrency))
                bare_samples.append(await _drive(bare, per_round, concurrency))
    ratios: list[float] = []
    added: list[float] = []
    for i, r in enumerate(routed_samples):
        before, after = bare_samples[i], bare_samples[i + 1]
        ratios.append(r.per_second / ((before.per_second + after.per_second) / 2))
        added.append(r.p50_us - (before.p50_us + after.p50_us) / 2)
    ratios.sort()
    added.sort()
    return LoopbackResult(
        concurrency=concurrency,
        bare=_merge(bare_samples),
        router=_merge(routed_samples),
        throughput_ratio=_median(ratios),
        added_p50_us=_median(added),
        rounds=rounds,
        ratio_low=ratios[0],
        ratio_high=ratios[-1],
    )


def _median(ordered: list[float]) -> float:
    n = len(ordered)
    mid = n // 2
    return ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _merge(parts: list[Latencies]) -> Latencies:
    # Percentiles of the rounds' medians would be biased; use the weighted mean of the
    # rounds' percentiles (rounds are equal in size) and the total rate.
    n = sum(p.requests for p in parts)
    seconds = sum(p.seconds for p in parts)
    return Latencies(
        p50_us=sum(p.p50_us for p in parts) / len(parts),
        p99_us=sum(p.p99_us for p in parts) / len(parts),
        p999_us=sum(p.p999_us for p in parts) / len(parts),
        requests=n,
        seconds=seconds,
        per_second=n / seconds,
    )


# --------------------------------------------------------------------------- hedging

_STALL_SCENARIOS = """
[scenarios.a]
latency = { dist = "mixture", components = [
  { weight = 0.98, latency = { dist = "lognormal", median = 0.02, sigma = 0.3 } },
  { weight = 0.02, latency = { dist = "fixed", seconds = 1.0 } } ] }
[scenarios.b]
latency = { dist = "mixture", components = [
  { weight = 0.98, latency = { dist = "lognormal", median = 0.02, sigma = 0.3 } },
  { weight = 0.02, latency = { dist = "fixed", seconds = 1.0 } } ] }
"""


class HedgingResult(msgspec.Struct, frozen=True, kw_only=True):
    """The stall scenario over real sockets, with and without hedging (milliseconds)."""

    requests: int
    plain_p50_ms: float
    plain_p99_ms: float
    plain_p999_ms: float
    hedged_p50_ms: float
    hedged_p99_ms: float
    hedged_p999_ms: float
    extra_attempts: float


async def bench_hedging(requests: int = 2_000, concurrency: int = 4) -> HedgingResult:
    """Tail latency over loopback: 2% of answers stall for 50x the median."""
    hedge = HedgeConfig(max_attempts=2, delay="p95", min_samples=20, default_delay=0.05)
    routes = {
        "plain": RouteConfig(targets=["a:gpt-4o-mini", "b:gpt-4o-mini"]),
        "hedged": RouteConfig(targets=["a:gpt-4o-mini", "b:gpt-4o-mini"], hedge=hedge),
    }
    with _upstream_process(_STALL_SCENARIOS) as url:
        async with (
            _client(concurrency * 2) as client,
            _openai_router(url, client, routes) as router,
        ):
            results: dict[str, Latencies] = {}
            for name in ("plain", "hedged"):
                request = _request(name)

                async def call(request: ChatRequest = request) -> None:
                    await router.complete(request)

                before = router.statistics()
                results[name] = await _drive(call, requests, concurrency)
                after = router.statistics()
            # Every extra call sent upstream: hedges, fallbacks and retries.
            kinds = ("hedges", "fallbacks", "retries")
            extra = sum(getattr(after, k) - getattr(before, k) for k in kinds) / requests
    plain, hedged = results["plain"], results["hedged"]
    return HedgingResult(
        requests=requests,
        plain_p50_ms=plain.p50_us / 1000,
        plain_p99_ms=plain.p99_us / 1000,
        plain_p999_ms=plain.p999_us / 1000,
        hedged_p50_ms=hedged.p50_us / 1000,
        hedged_p99_ms=hedged.p99_us / 1000,
        hedged_p999_ms=hedged.p999_us / 1000,
        extra_attempts=extra,
    )


# --------------------------------------------------------------------------- scale

_SCALE_SCENARIOS = """
[scenarios.a]
latency = { dist = "fixed", seconds = 0.2 }
chunk_interval = 0.05
reply = "one two three four five six seven eight nine ten eleven twelve"
"""


class ScaleResult(msgspec.Struct, frozen=True, kw_only=True):
    """Concurrent streams through one router (client process only)."""

    streams: int
    completed: int
    seconds: float
    baseline_rss_mb: float
    peak_rss_mb: float
    rss_per_stream_kb: float


def _rss_mb() -> float:
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def bench_scale(streams: int = 1_000) -> ScaleResult:
    """``streams`` concurrent streaming requests through one router; all must complete."""
    with _upstream_process(_SCALE_SCENARIOS) as url:
        async with _client(streams) as client, _openai_router(url, client) as router:
            request = _request("a:gpt-4o-mini", "stream please")
            # Warm up one stream so imports and pools are not counted per stream.
            async with router.stream(request) as events:
                async for _ in events:
                    pass
            baseline = _rss_mb()
            completed = 0

            async def one() -> None:
                nonlocal completed
                text = []
                async with router.stream(request) as events:
                    async for event in events:
                        if isinstance(event, TextDelta):
                            text.append(event.text)
                if text:
                    completed += 1

            start = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for _ in range(streams):
                    nursery.start_soon(one)
            seconds = time.perf_counter() - start
            peak = _rss_mb()
    return ScaleResult(
        streams=streams,
        completed=completed,
        seconds=seconds,
        baseline_rss_mb=baseline,
        peak_rss_mb=peak,
        rss_per_stream_kb=(peak - baseline) * 1024 / streams,
    )


# --------------------------------------------------------------------------- cold start


class ColdStartResult(msgspec.Struct, frozen=True, kw_only=True):
    """``python -c "import router"``: median wall time and peak RSS over runs."""

    runs: int
    median_seconds: float
    min_seconds: float
    python_only_seconds: float
    peak_rss_mb: float


def bench_coldstart(runs: int = 15) -> ColdStartResult:
    """Import time of ``router`` in a fresh interpreter (and of a bare interpreter)."""
    # Peak RSS of the child's own image: /proc's VmHWM where there is one.  ru_maxrss
    # would do elsewhere, but on Linux it keeps the high-water mark from before exec,
    # so a fork of a large parent (a benchmark run after the others) reports the
    # parent's size.
    probe = (
        "import resource, router\n"
        "try:\n"
        "    status = open('/proc/self/status').read()\n"
        "    kb = int(status.split('VmHWM:')[1].split()[0])\n"
        "except (OSError, IndexError, ValueError):\n"
        "    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(kb)"
    )

    def timed(code: str) -> tuple[float, str]:
        start = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
        return time.perf_counter() - start, out

    walls: list[float] = []
    rss: list[float] = []
    bare: list[float] = []
    for _ in range(runs):
        seconds, out = timed(probe)
        walls.append(seconds)
        rss.append(int(out.strip()) / 1024)
        bare.append(timed("pass")[0])
    walls.sort()
    bare.sort()
    return ColdStartResult(
        runs=runs,
        median_seconds=walls[runs // 2],
        min_seconds=walls[0],
        python_only_seconds=bare[runs // 2],
        peak_rss_mb=max(rss),
    )


# --------------------------------------------------------------------------- shared

# Limits that never bind: the benchmark measures what sharing them costs, not limiting.
_SHARED_LIMITS: dict[str, Any] = {
    "rpm": 10_000_000,
    "tpm": 10_000_000_000,
    "max_concurrency": 10_000,
}


class SharedLatency(msgspec.Struct, frozen=True, kw_only=True):
    """Concurrency 1, in-process MockProvider: the same limits, local and on Redis.

    Rounds alternate local, shared, local, ..., local; each shared round is compared
    with the mean of the local rounds either side; the added figures are the medians of
    those comparisons (targets: ≤ 300 µs at p50, ≤ 1,000 µs at p99).

    ``coredis`` is the floor under the added figures, measured in the same rounds (after
    each shared one): the one request a shared admission makes — ``EVALSHA admit.lua``
    for one request, same keys and arguments — written by coredis on the connection the
    router holds, awaited bare (no bound, no bookkeeping of ours).  ``coredis_p50_us``
    is the median of its rounds' p50.
    """

    rounds: int
    local: Latencies
    shared: Latencies
    added_p50_us: float
    added_p99_us: float
    added_p50_low_us: float
    added_p50_high_us: float
    coredis: Latencies
    coredis_p50_us: float


class SharedThroughput(msgspec.Struct, frozen=True, kw_only=True):
    """``processes`` OS processes at once, each a router with ``[shared]`` driving
    ``concurrency`` callers at one provider: requests per second together (requests /
    the span from the first start to the last end), by round."""

    processes: int
    concurrency: int
    requests: int
    per_second: list[float]
    median_per_second: float


class SharedResult(msgspec.Struct, frozen=True, kw_only=True):
    """``llm-router bench shared``; ``skipped`` says why when it could not run."""

    skipped: str | None = None
    redis: str = ""
    latency: SharedLatency | None = None
    throughput: list[SharedThroughput] = msgspec.field(default_factory=list)


@contextmanager
def _redis_server() -> Iterator[str]:
    """A redis-server of our own on a free loopback port, no persistence; its URL."""
    import shutil
    import socket

    executable = shutil.which("redis-server")
    assert executable is not None, "checked by bench_shared"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with tempfile.TemporaryDirectory() as folder:
        args = [executable, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "no", "--dir", folder, "--daemonize", "no"]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                        s.sendall(b"PING\r\n")
                        if s.recv(16).startswith(b"+PONG"):
                            break
                except OSError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start")
                time.sleep(0.02)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:  # pragma: no cover - a wedged child
                proc.kill()


def _shared_config(url: str | None, prefix: str) -> RouterConfig:
    from router.config import SharedConfig

    shared = None if url is None else SharedConfig(redis_url=url, prefix=prefix)
    return RouterConfig(
        providers={"m": ProviderConfig(kind="mock", queue_wait_threshold=None, **_SHARED_LIMITS)},
        shared=shared,
    )


async def bench_shared_latency(url: str, requests: int = 2_000, rounds: int = 10) -> SharedLatency:
    """Added latency of shared limits at concurrency 1 (see :class:`SharedLatency`)."""
    provider = MockProvider(name="m", record=False)
    request = _request()
    per_round = max(1, requests // rounds)
    async with (
        open_router(_shared_config(None, "bench"), providers={"m": provider}) as local,
        open_router(_shared_config(url, "bench"), providers={"m": provider}) as shared,
    ):

        async def via_local() -> None:
            await local.complete(request)

        async def via_shared() -> None:
            await shared.complete(request)

        await _drive(via_local, min(200, requests), 1)  # warm up both paths
        await _drive(via_shared, min(200, requests), 1)
        # The floor: what the shared admission above sends, sent bare through coredis on
        # the connection the router's client holds (it is held once the warm-up ran).
        gate = shared._actors["m"].mailbox._gate
        assert gate is not None
        assert gate.client._connection is not None
        connection = gate.client._connection
        admission = [b"EVALSHA", gate._admit.sha, len(gate._keys), *gate._keys]
        admission += [*gate._head("bench-floor:"), 0, 0, 0, 1, 100]  # 1 request, 100 tokens

        async def via_coredis() -> None:
            await connection.create_request(*admission)

        await _drive(via_coredis, min(200, requests), 1)
        local_rounds = [await _drive(via_local, per_round, 1)]
        shared_rounds: list[Latencies] = []
        coredis_rounds: list[Latencies] = []
        for _ in range(rounds):
            shared_rounds.append(await _drive(via_shared, per_round, 1))
            coredis_rounds.append(await _drive(via_coredis, per_round, 1))
            local_rounds.append(await _drive(via_local, per_round, 1))
    p50s: list[float] = []
    p99s: list[float] = []
    for i, r in enumerate(shared_rounds):
        before, after = local_rounds[i], local_rounds[i + 1]
        p50s.append(r.p50_us - (before.p50_us + after.p50_us) / 2)
        p99s.append(r.p99_us - (before.p99_us + after.p99_us) / 2)
    p50s.sort()
    p99s.sort()
    return SharedLatency(
        rounds=rounds,
        local=_merge(local_rounds),
        shared=_merge(shared_rounds),
        added_p50_us=_median(p50s),
        added_p99_us=_median(p99s),
        added_p50_low_us=p50s[0],
        added_p50_high_us=p50s[-1],
        coredis=_merge(coredis_rounds),
        coredis_p50_us=_median(sorted(r.p50_us for r in coredis_rounds)),
    )


async def _shared_worker(settings: dict[str, Any]) -> None:
    """A process of the throughput rounds: open the router, say ``ready``; then for each
    line on stdin (a number of requests) run them and print ``{"start": t, "end": t,
    "requests": n}`` (wall times); an empty line or the end of stdin ends it."""
    provider = MockProvider(name="m", record=False)
    request = _request()
    config = _shared_config(settings["redis_url"], settings["prefix"])
    async with open_router(config, providers={"m": provider}) as router:

        async def call() -> None:
            await router.complete(request)

        await _drive(call, 100, settings["concurrency"])  # warm up
        print("ready", flush=True)
        while line := (await trio.to_thread.run_sync(sys.stdin.readline)).strip():
            start = time.time()
            result = await _drive(call, int(line), settings["concurrency"])
            end = time.time()
            report = {"start": start, "end": end, "requests": result.requests}
            print(msgspec.json.encode(report).decode(), flush=True)


def _shared_rounds(
    url: str, counts: tuple[int, ...], rounds: int, requests: int, concurrency: int
) -> dict[int, list[float]]:
    """Requests per second of ``n`` processes together, for each ``n`` in ``counts``, in
    alternating rounds (1, 2, 4, 1, 2, 4, ...: drift hits each alike).  The workers
    are started once; a round of ``n`` runs ``requests / n`` in each of the first ``n``
    at once (the others idle)."""
    settings = msgspec.json.encode(
        {"redis_url": url, "prefix": "bench", "concurrency": concurrency}
    ).decode()
    args = [sys.executable, "-m", "router._tools._bench", settings]
    workers = [
        subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for _ in range(max(counts))
    ]
    rates: dict[int, list[float]] = {n: [] for n in counts}
    try:
        for w in workers:
            assert w.stdout is not None
            if w.stdout.readline().strip() != "ready":
                raise RuntimeError("a benchmark worker did not start")
        for _ in range(rounds):
            for n in counts:
                for w in workers[:n]:
                    assert w.stdin is not None
                    w.stdin.write(f"{requests // n}\n")
                    w.stdin.flush()
                reports = []
                for w in workers[:n]:
                    assert w.stdout is not None
                    line = w.stdout.readline()
                    if not line:
                        raise RuntimeError("a benchmark worker failed")
                    reports.append(msgspec.json.decode(line))
                span = max(r["end"] for r in reports) - min(r["start"] for r in reports)
                total = sum(r["requests"] for r in reports)
                rates[n].append(total / span if span > 0 else math.nan)
    finally:
        for w in workers:
            try:
                w.communicate(input="\n", timeout=30)
            except (subprocess.TimeoutExpired, OSError, ValueError):
                w.kill()
                w.wait()
    return rates


def bench_shared(
    requests: int = 2_000,
    rounds: int = 10,
    throughput_requests: int = 5_000,
    throughput_rounds: int = 3,
    concurrency: int = 16,
) -> SharedResult:
    """``[shared]`` against local limits: added latency, then 1/2/4-process throughput."""
    try:
        import coredis
    except ImportError:
        return SharedResult(
            skipped="coredis is not installed: pip install 'trio-llm-router[shared]'"
        )
    import shutil

    if shutil.which("redis-server") is None:
        return SharedResult(
            skipped="redis-server is not installed (Debian: apt-get install redis-server)"
        )
    with _redis_server() as url:
        latency = trio.run(bench_shared_latency, url, requests, rounds)
        by_count = _shared_rounds(
            url, (1, 2, 4), throughput_rounds, throughput_requests, concurrency
        )
    return SharedResult(
        redis=f"redis-server on loopback, coredis {coredis.__version__}",
        latency=latency,
        throughput=[
            SharedThroughput(
                processes=n,
                concurrency=concurrency,
                requests=throughput_requests // n * n,
                per_second=rates,
                median_per_second=_median(sorted(rates)),
            )
            for n, rates in by_count.items()
        ],
    )


# --------------------------------------------------------------------------- running

BENCHMARKS = ("overhead", "loopback", "hedging", "scale", "coldstart", "gateway", "shared")


def _machine() -> str:
    import platform

    return (
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"trio {trio.__version__}, httpx {httpx.__version__}, msgspec {msgspec.__version__}"
    )


def _labelled(rows: Iterable[tuple[str, str]], width: int = 0) -> list[str]:
    """Lines of a report: a label column (at least ``width`` wide), then the figures."""
    return table_lines([list(row) for row in rows], widths=[width], sep=" ", indent="  ")


def _report(name: str, r: Any) -> str:
    if name == "overhead":
        rows = [
            ("direct c=1", r.direct_c1),
            ("router c=1", r.router_c1),
            ("direct c=100", r.direct_c100),
            ("router c=100", r.router_c100),
        ]
        lines = [f"overhead (in-process, MockProvider, {r.router_c1.requests} requests)"]
        figures = [
            (label, f"p50 {x.p50_us:7.1f} µs  p99 {x.p99_us:7.1f} µs  {x.per_second:8.0f} req/s")
            for label, x in rows
        ]
        lines += _labelled(figures, width=13)
        lines.append(f"  router adds: p50 {r.added_p50_us:.1f} µs, p99 {r.added_p99_us:.1f} µs")
        return "\n".join(lines)
    if name == "loopback":
        lines = ["loopback (fake upstream in another process, OpenAI format)"]
        figures = [
            (
                f"c={x.concurrency}",
                f"bare p50 {x.bare.p50_us:7.1f} µs {x.bare.per_second:6.0f} req/s"
                f" | router p50 {x.router.p50_us:7.1f} µs {x.router.per_second:6.0f} req/s",
            )
            for x in r
        ]
        for x, row in zip(r, _labelled(figures, width=5), strict=True):
            lines.append(row)
            lines.append(
                f"        throughput ratio {x.throughput_ratio:.1%}"
                f" (rounds {x.ratio_low:.1%}..{x.ratio_high:.1%}),"
                f" router adds {x.added_p50_us:.1f} µs at p50"
            )
        return "\n".join(lines)
    if name == "hedging":
        lines = [f"hedging over loopback ({r.requests} requests, 2% stalls of 50x the median)"]
        lines += _labelled(
            [
                (
                    "plain:",
                    f"p50 {r.plain_p50_ms:7.1f} ms  p99 {r.plain_p99_ms:7.1f} ms"
                    f"  p99.9 {r.plain_p999_ms:7.1f} ms",
                ),
                (
                    "hedged:",
                    f"p50 {r.hedged_p50_ms:7.1f} ms  p99 {r.hedged_p99_ms:7.1f} ms"
                    f"  p99.9 {r.hedged_p999_ms:7.1f} ms  extra attempts {r.extra_attempts:.1%}",
                ),
            ]
        )
        return "\n".join(lines)
    if name == "gateway":
        from ._bench_gateway import report_gateway

        return report_gateway(r)
    if name == "scale":
        return (
            f"scale ({r.streams} concurrent streams)\n"
            f"  completed {r.completed}/{r.streams} in {r.seconds:.2f} s;"
            f" RSS {r.baseline_rss_mb:.1f} MB -> peak {r.peak_rss_mb:.1f} MB,"
            f" {r.rss_per_stream_kb:.1f} KB per in-flight stream"
        )
    if name == "shared":
        return _shared_report(r)
    return (
        f"cold start (python -c 'import router', {r.runs} runs)\n"
        f"  median {r.median_seconds * 1000:.0f} ms (min {r.min_seconds * 1000:.0f} ms;"
        f" bare interpreter {r.python_only_seconds * 1000:.0f} ms),"
        f" peak RSS {r.peak_rss_mb:.1f} MB"
    )


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def _shared_report(r: SharedResult) -> str:
    if r.skipped is not None or r.latency is None:
        return f"shared: skipped ({r.skipped})"
    x = r.latency
    lines = [f"shared limits ({r.redis}; MockProvider in-process, c=1, {x.rounds} rounds)"]
    lines += _labelled(
        [
            ("local:", f"p50 {x.local.p50_us:7.1f} µs  p99 {x.local.p99_us:7.1f} µs"),
            ("shared:", f"p50 {x.shared.p50_us:7.1f} µs  p99 {x.shared.p99_us:7.1f} µs"),
        ],
        width=8,
    )
    lines.append(
        f"  shared adds: p50 {x.added_p50_us:.1f} µs (rounds {x.added_p50_low_us:.1f}.."
        f"{x.added_p50_high_us:.1f}), p99 {x.added_p99_us:.1f} µs"
        f" (targets: 300 µs {_met(x.added_p50_us <= 300)},"
        f" 1000 µs {_met(x.added_p99_us <= 1000)})"
    )
    lines.append(
        f"  floor, coredis alone (the admission's EVALSHA on the held connection):"
        f" p50 {x.coredis_p50_us:.1f} µs, p99 {x.coredis.p99_us:.1f} µs;"
        f" the router adds {x.added_p50_us - x.coredis_p50_us:.1f} µs above it at p50"
    )
    lines.append("  throughput, processes sharing one provider's limits (rounds alternate):")
    lines += _labelled(
        [
            (
                f"{t.processes} process{'es' if t.processes > 1 else ''}:",
                f"{t.median_per_second:8.0f} req/s together (median of "
                + ", ".join(f"{v:.0f}" for v in t.per_second)
                + f"; c={t.concurrency} each)",
            )
            for t in r.throughput
        ],
        width=12,
    )
    return "\n".join(lines)


def run_benchmarks(names: tuple[str, ...] = BENCHMARKS, *, quick: bool = False) -> dict[str, Any]:
    """Run the named benchmarks (``quick`` shrinks them for a smoke test); print tables.

    Returns every result by name, plus ``"machine"``.
    """
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise ValueError(f"unknown benchmark {unknown[0]!r}; choose from {', '.join(BENCHMARKS)}")
    scale = 0.1 if quick else 1.0
    results: dict[str, Any] = {"machine": _machine()}
    print(f"machine: {results['machine']}", flush=True)
    for name in names:
        r: Any
        if name == "overhead":
            r = trio.run(bench_overhead, int(20_000 * scale))
        elif name == "loopback":
            r = [trio.run(bench_loopback, int(5_000 * scale), c) for c in (1, 16)]
        elif name == "hedging":
            r = trio.run(bench_hedging, int(2_000 * scale))
        elif name == "scale":
            r = trio.run(bench_scale, int(1_000 * scale))
        elif name == "gateway":
            from ._bench_gateway import bench_gateway

            if quick:  # a smoke test: tiny counts, every part of the report
                r = trio.run(bench_gateway, 2, (1, 16, 64), 2, 50, 30)
            else:
                r = trio.run(bench_gateway)
        elif name == "shared":
            r = bench_shared(
                int(2_000 * scale),
                3 if quick else 10,
                int(5_000 * scale),
                1 if quick else 3,
                4 if quick else 16,
            )
        else:
            r = bench_coldstart(5 if quick else 15)
        print("\n" + _report(name, r), flush=True)
        results[name] = r
    return results


if __name__ == "__main__":  # a worker of bench_shared's throughput rounds
    trio.run(_shared_worker, msgspec.json.decode(sys.argv[1]))
