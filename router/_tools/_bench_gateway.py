"""``llm-router bench gateway``: the gateway in front of an upstream, against the upstream.

Three processes, so that no two of the things measured share a trio loop by
construction: the fake upstream (``llm-router upstream``), the gateway (``llm-router
serve`` on hypercorn's trio worker, in front of that upstream through the OpenAI
adapter), and this one, the client.  The same chat body goes to the upstream directly
and through the gateway (whose ``model`` names the upstream's provider); both replies
are decoded.

- **latency**, at concurrency 1, 16 and 64, against an upstream that answers after a
  fixed :data:`LATENCY` (250 ms), as a real model does: alternating rounds in one run
  (direct, gateway, direct, ..., gateway, direct); each gateway round is compared with
  the mean of the direct rounds either side of it (which cancels the machine's drift to
  first order), and the figures are the medians of those comparisons: the throughput
  ratio, and the latency the gateway adds at p50 and p99.  Why a fixed latency, and
  why 250 ms: against an upstream that answers at once, c requests in flight keep the
  three processes busy all the time, and on a 2-core machine a request then waits for
  the CPU behind the other c - 1: "added latency" becomes c times the gateway's CPU
  cost plus scheduler noise, not what a caller of a real model sees.  With the
  upstream's latency fixed at 250 ms, concurrency 64 offers at most 256 requests a
  second, which the three processes serve with CPU to spare (50 or 100 ms would offer
  640 to 1,280 a second at concurrency 64, more than the gateway's 1 to 2 ms of CPU per
  request leaves room for on 2 cores), so the difference between the two paths is the
  gateway's own latency.  The c workers start spread over one latency period, so
  that their requests do not arrive at the gateway in convoys of c (a fixed latency
  would otherwise keep them in step for the whole round).
- **cost**, at concurrency 1, against an upstream that answers at once, in the same
  alternating rounds: requests per second both ways, and the gateway process's CPU time
  per request (``/proc/<pid>/stat``, user + system).  This is a throughput and CPU
  figure, not a latency one: read the added latency from the part above.
- **streams**: 1,000 concurrent streaming requests through the gateway (opened in
  batches of 100, the listen backlog hypercorn asks for, each batch once the one before
  it has its response headers; every stream is still open when the last one starts);
  all must end with ``data: [DONE]``.  The gateway process's resident memory is sampled
  (``/proc/<pid>/status``) before and while they run.

The client gives each worker a connection of its own (an ``httpx.AsyncClient`` limited
to one connection, one per worker and path): one client shared by c workers costs the
client CPU in proportion to c per request (httpcore's pool looks at every connection
to place each request), which made the client itself the bottleneck at concurrency 64
(direct requests fell from ~1,000 to ~150 a second).  The gateway's router uses what
``llm-router serve --config`` builds: the default HTTP client (20 keep-alive connections
to the upstream) and no rate limits (``presets = false``).
"""

from __future__ import annotations

import math
import os
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from pathlib import Path

import httpx
import msgspec
import trio

from ._bench import Latencies, _client, _median, _merge, _summary, _upstream_process

__all__ = [
    "LATENCY",
    "GatewayBenchResult",
    "GatewayCost",
    "GatewayRound",
    "GatewayStreams",
    "bench_gateway",
    "report_gateway",
]

_KEY_ENV = "LLM_ROUTER_BENCH_UPSTREAM_KEY"
_KEY = "sk-bench-not-a-key"

#: The fixed-latency upstream's latency, seconds (see the module docstring for why).
LATENCY = 0.25

# "a" answers at once (the cost part), "f" after LATENCY (the latency part), "s" streams.
_SCENARIOS = f"""
[scenarios.f]
latency = {{ dist = "fixed", seconds = {LATENCY} }}
[scenarios.s]
latency = {{ dist = "fixed", seconds = 0.2 }}
chunk_interval = 0.05
"""

#: The latency target of the issue: the gateway adds at most 1 ms at p50 at c=16.
TARGET_ADDED_P50_US = 1000.0
TARGET_CONCURRENCY = 16


class GatewayRound(msgspec.Struct, frozen=True, kw_only=True):
    """One concurrency level: direct against through the gateway, alternating rounds.

    ``direct`` and ``gateway`` merge their rounds (``rounds`` gateway rounds, one more
    direct); ``throughput_ratio`` (gateway / direct) and ``added_p50_us`` /
    ``added_p99_us`` are medians over the rounds of each gateway round against the mean
    of the direct rounds either side of it; ``ratio_low``/``ratio_high`` their range.
    """

    concurrency: int
    rounds: int
    direct: Latencies
    gateway: Latencies
    throughput_ratio: float
    ratio_low: float
    ratio_high: float
    added_p50_us: float
    added_p99_us: float


class GatewayStreams(msgspec.Struct, frozen=True, kw_only=True):
    """Concurrent streams through the gateway, and the gateway process's memory.

    ``peak_open``: the most streams open at once (client side); ``completed``: streams
    that ended with ``data: [DONE]``.  RSS in MB of the gateway process: after a warm-up
    stream, and the highest of the samples taken while the streams ran (``nan`` where
    there is no ``/proc``).
    """

    streams: int
    completed: int
    peak_open: int
    seconds: float
    gateway_rss_before_mb: float
    gateway_rss_peak_mb: float
    rss_per_stream_kb: float


class GatewayCost(msgspec.Struct, frozen=True, kw_only=True):
    """The gateway's cost against an upstream that answers at once, at concurrency 1.

    ``round`` as in the latency part (its "added" figures are CPU time on the request's
    path, not what a caller of a real model waits); ``gateway_cpu_us``: the gateway
    process's CPU time (user + system) per request over the gateway rounds (``nan``
    without ``/proc``).
    """

    round: GatewayRound
    gateway_cpu_us: float


class GatewayBenchResult(msgspec.Struct, frozen=True, kw_only=True):
    """``llm-router bench gateway``: the latency part (``requests``, against an upstream
    answering after ``upstream_latency`` seconds), the cost part, then the streams;
    ``target_met``: the gateway adds at most 1 ms at p50 at concurrency 16 (``None``
    when that level was not measured)."""

    upstream_latency: float
    requests: list[GatewayRound]
    cost: GatewayCost
    streams: GatewayStreams
    target_met: bool | None


# --------------------------------------------------------------------------- processes


@contextmanager
def _gateway_process(upstream: str) -> Iterator[tuple[str, int]]:
    """``llm-router serve`` in a child process in front of ``upstream``; (URL, pid)."""
    providers = "".join(
        f'[providers.{name}]\nkind = "openai"\nbase_url = "{upstream}/{name}/v1"\n'
        f'api_key_env = "{_KEY_ENV}"\npresets = false\nretry = {{ max_attempts = 1 }}\n'
        for name in ("a", "f", "s")
    )
    config = providers + "[gateway]\ngrace = 1.0\n"
    with tempfile.TemporaryDirectory(prefix="llm-router-bench-") as tmp:
        path = Path(tmp) / "gateway.toml"
        path.write_text(config)
        errors = open(Path(tmp) / "stderr.txt", "w+")  # noqa: SIM115 - closed below
        args = [sys.executable, "-m", "router", "serve", "--config", str(path), "--port", "0"]
        env = {**os.environ, _KEY_ENV: _KEY}
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=errors, text=True, env=env)
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if "listening on" not in line:
                proc.wait(timeout=10)
                errors.seek(0)
                raise RuntimeError(f"the gateway did not start: {line!r} {errors.read()[-2000:]!r}")
            yield line.rsplit(" ", 1)[-1].strip(), proc.pid
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:  # pragma: no cover - a wedged child
                proc.kill()
                proc.wait()
            errors.close()


def _rss_mb(pid: int) -> float:
    """A process's resident set size now, MB (``nan`` without ``/proc``)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return math.nan


def _cpu_seconds(pid: int) -> float:
    """A process's CPU time so far (user + system), seconds (``nan`` without ``/proc``)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return math.nan


# --------------------------------------------------------------------------- requests


def _body(model: str, *, stream: bool = False) -> bytes:
    body: dict[str, object] = {
        "model": model,
        "messages": [{"role": "user", "content": "hello there"}],
        "max_tokens": 64,
    }
    if stream:
        body["stream"] = True
    return msgspec.json.encode(body)


def _poster(
    client: httpx.AsyncClient, url: str, body: bytes, headers: dict[str, str]
) -> Callable[[], Awaitable[None]]:
    async def post() -> None:
        response = await client.post(url, content=body, headers=headers)
        response.raise_for_status()
        msgspec.json.decode(response.content)

    return post


async def _drive_spread(
    calls: list[Callable[[], Awaitable[None]]], per_worker: int, spread: float
) -> Latencies:
    """Worker ``i`` makes ``per_worker`` calls of ``calls[i]`` one after another, from
    ``i * spread / len(calls)`` seconds on (``spread``: the upstream's latency, so that
    the workers' requests arrive evenly over it; 0 starts them all at once)."""
    samples: list[float] = []
    n = len(calls)

    async def worker(i: int) -> None:
        if spread:
            await trio.sleep(i * spread / n)
        call = calls[i]
        for _ in range(per_worker):
            t0 = time.perf_counter()
            await call()
            samples.append(time.perf_counter() - t0)

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(worker, i)
    return _summary(samples, time.perf_counter() - start)


@asynccontextmanager
async def _workers(
    concurrency: int, url: str, body: bytes, headers: dict[str, str]
) -> AsyncIterator[list[Callable[[], Awaitable[None]]]]:
    """One poster per worker, each on a client of its own limited to one connection.

    The clients share one TLS context (unused over plain HTTP, but each client would
    otherwise load the CA bundle: ~25 ms apiece on a quiet machine, 128 of them at c=64).
    """
    tls = ssl.create_default_context()
    one = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with AsyncExitStack() as stack:
        posters = []
        for _ in range(concurrency):
            client = httpx.AsyncClient(verify=tls, limits=one, timeout=httpx.Timeout(60.0))
            await stack.enter_async_context(client)
            posters.append(_poster(client, url, body, headers))
        yield posters


async def _requests_round(
    upstream: str,
    gateway: str,
    pid: int,
    scenario: str,
    concurrency: int,
    per_worker: int,
    rounds: int,
    spread: float,
) -> tuple[GatewayRound, float]:
    """Alternating rounds at one concurrency; the round, and the gateway's CPU seconds
    per request over its rounds."""
    json_headers = {"content-type": "application/json"}
    direct_url = f"{upstream}/{scenario}/v1/chat/completions"
    direct_headers = {**json_headers, "authorization": f"Bearer {_KEY}"}
    routed_url = f"{gateway}/v1/chat/completions"
    routed_body = _body(f"{scenario}:gpt-4o-mini")
    cpu = 0.0
    async with (
        _workers(concurrency, direct_url, _body("gpt-4o-mini"), direct_headers) as direct,
        _workers(concurrency, routed_url, routed_body, json_headers) as routed,
    ):
        warm = max(1, min(per_worker, 3))
        await _drive_spread(direct, warm, spread)  # connections, both paths
        await _drive_spread(routed, warm, spread)
        direct_rounds = [await _drive_spread(direct, per_worker, spread)]
        gateway_rounds: list[Latencies] = []
        for _ in range(rounds):
            before = _cpu_seconds(pid)
            gateway_rounds.append(await _drive_spread(routed, per_worker, spread))
            cpu += _cpu_seconds(pid) - before
            direct_rounds.append(await _drive_spread(direct, per_worker, spread))
    ratios: list[float] = []
    added_p50: list[float] = []
    added_p99: list[float] = []
    for i, g in enumerate(gateway_rounds):
        before_round, after_round = direct_rounds[i], direct_rounds[i + 1]
        ratios.append(g.per_second / ((before_round.per_second + after_round.per_second) / 2))
        added_p50.append(g.p50_us - (before_round.p50_us + after_round.p50_us) / 2)
        added_p99.append(g.p99_us - (before_round.p99_us + after_round.p99_us) / 2)
    ratios.sort()
    added_p50.sort()
    added_p99.sort()
    level = GatewayRound(
        concurrency=concurrency,
        rounds=rounds,
        direct=_merge(direct_rounds),
        gateway=_merge(gateway_rounds),
        throughput_ratio=_median(ratios),
        ratio_low=ratios[0],
        ratio_high=ratios[-1],
        added_p50_us=_median(added_p50),
        added_p99_us=_median(added_p99),
    )
    return level, cpu / sum(g.requests for g in gateway_rounds)


# --------------------------------------------------------------------------- streams

_BATCH = 100


async def _streams(gateway: str, pid: int, streams: int, words: int) -> GatewayStreams:
    body = msgspec.json.encode(
        {
            "model": "s:gpt-4o-mini",
            "stream": True,
            "messages": [{"role": "user", "content": " ".join(["word"] * words)}],
        }
    )
    url = f"{gateway}/v1/chat/completions"
    headers = {"content-type": "application/json"}
    completed = 0
    open_now = 0
    peak_open = 0
    samples: list[float] = []

    async with _client(streams) as client:

        async def one(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            # A stream that fails is counted out (completed < streams), not raised.
            nonlocal completed, open_now, peak_open
            started = done = False
            try:
                async with client.stream("POST", url, content=body, headers=headers) as response:
                    open_now += 1
                    peak_open = max(peak_open, open_now)
                    task_status.started()
                    started = True
                    try:
                        if response.status_code == 200:
                            async for line in response.aiter_lines():
                                done = done or line == "data: [DONE]"
                    finally:
                        open_now -= 1
            except httpx.HTTPError:
                pass
            finally:
                if not started:
                    task_status.started()
            if done:
                completed += 1

        async with client.stream("POST", url, content=body, headers=headers) as warm:
            await warm.aread()  # imports and the upstream's first connection
        before = _rss_mb(pid)
        start = time.perf_counter()
        async with trio.open_nursery() as nursery:

            async def sample() -> None:
                while True:
                    samples.append(_rss_mb(pid))
                    await trio.sleep(0.05)

            nursery.start_soon(sample)
            async with trio.open_nursery() as streaming:
                for first in range(0, streams, _BATCH):
                    async with trio.open_nursery() as batch:
                        for _ in range(min(_BATCH, streams - first)):
                            batch.start_soon(streaming.start, one)
            seconds = time.perf_counter() - start
            nursery.cancel_scope.cancel()
    samples.append(_rss_mb(pid))
    peak = max(samples)
    return GatewayStreams(
        streams=streams,
        completed=completed,
        peak_open=peak_open,
        seconds=seconds,
        gateway_rss_before_mb=before,
        gateway_rss_peak_mb=peak,
        rss_per_stream_kb=(peak - before) * 1024 / streams,
    )


# --------------------------------------------------------------------------- the benchmark


async def bench_gateway(
    per_worker: int = 8,
    concurrencies: tuple[int, ...] = (1, 16, 64),
    rounds: int = 10,
    streams: int = 1_000,
    cost_requests: int = 300,
) -> GatewayBenchResult:
    """The gateway (a child process) against the upstream it fronts (another one).

    Latency part: per level, ``rounds`` gateway rounds (and one more direct) of
    ``per_worker`` requests per worker, against the upstream fixed at :data:`LATENCY`;
    cost part: ``rounds`` rounds of ``cost_requests`` at concurrency 1 against the
    instant upstream; then ``streams`` concurrent streams.
    """
    rounds = max(1, rounds)
    with _upstream_process(_SCENARIOS) as upstream, _gateway_process(upstream) as (gateway, pid):
        levels = [
            (
                await _requests_round(
                    upstream, gateway, pid, "f", c, max(1, per_worker), rounds, LATENCY
                )
            )[0]
            for c in concurrencies
        ]
        cost_round, cpu = await _requests_round(
            upstream, gateway, pid, "a", 1, max(1, cost_requests), rounds, 0.0
        )
        # Long enough (~0.2 s + 0.05 s per word) that the first batch is still
        # streaming when the last batch opens.
        words = 100 if streams > _BATCH else 10
        streamed = await _streams(gateway, pid, streams, words)
    judged = [x for x in levels if x.concurrency == TARGET_CONCURRENCY]
    return GatewayBenchResult(
        upstream_latency=LATENCY,
        requests=levels,
        cost=GatewayCost(round=cost_round, gateway_cpu_us=cpu * 1e6),
        streams=streamed,
        target_met=judged[0].added_p50_us <= TARGET_ADDED_P50_US if judged else None,
    )


def report_gateway(r: GatewayBenchResult) -> str:
    """The printed report of ``llm-router bench gateway``."""
    from ._format import table_lines

    lines = [
        "gateway (llm-router serve in a child process, the fake upstream in another;"
        " OpenAI format)",
        f"  upstream latency fixed at {r.upstream_latency * 1000:.0f} ms:"
        " the latency the gateway adds",
    ]
    header = "direct p50|direct p99|direct req/s|gateway p50|gateway p99|gateway req/s"
    rows = [["", *header.split("|"), "throughput", "(rounds)", "adds p50", "adds p99"]]
    for x in r.requests:
        rows.append(
            [
                f"c={x.concurrency}",
                f"{x.direct.p50_us:.0f} µs",
                f"{x.direct.p99_us:.0f} µs",
                f"{x.direct.per_second:.0f}",
                f"{x.gateway.p50_us:.0f} µs",
                f"{x.gateway.p99_us:.0f} µs",
                f"{x.gateway.per_second:.0f}",
                f"{x.throughput_ratio:.1%}",
                f"{x.ratio_low:.0%}..{x.ratio_high:.0%}",
                f"{x.added_p50_us:.0f} µs",
                f"{x.added_p99_us:.0f} µs",
            ]
        )
    lines += table_lines(rows, right=set(range(1, 11)), sep="  ", indent="  ", rule=True)
    judged = [x for x in r.requests if x.concurrency == TARGET_CONCURRENCY]
    if judged:
        verdict = "met" if r.target_met else "NOT met"
        lines.append(
            f"  target: the gateway adds <= {TARGET_ADDED_P50_US:.0f} µs at p50 at"
            f" c={TARGET_CONCURRENCY}: {verdict} ({judged[0].added_p50_us:.0f} µs)"
        )
    c = r.cost.round
    lines.append(
        "  upstream answering at once, c=1 (the gateway's cost: CPU and throughput, not latency):"
    )
    lines.append(
        f"    direct {c.direct.per_second:.0f} req/s (p50 {c.direct.p50_us:.0f} µs), gateway"
        f" {c.gateway.per_second:.0f} req/s (p50 {c.gateway.p50_us:.0f} µs):"
        f" {c.throughput_ratio:.1%} of direct; the gateway process's CPU"
        f" {r.cost.gateway_cpu_us:.0f} µs per request"
    )
    s = r.streams
    lines.append(
        f"  streams: {s.completed}/{s.streams} completed ({s.peak_open} open at once)"
        f" in {s.seconds:.2f} s; gateway RSS {s.gateway_rss_before_mb:.1f} MB ->"
        f" peak {s.gateway_rss_peak_mb:.1f} MB, {s.rss_per_stream_kb:.1f} KB per stream"
    )
    return "\n".join(lines)
