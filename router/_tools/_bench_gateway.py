"""``llm-router bench gateway``: the gateway in front of an upstream, against the upstream.

Three processes, so that no two of the things measured share a trio loop or a core's
run queue by construction: the fake upstream (``llm-router upstream``, answering at
once), the gateway (``llm-router serve`` on hypercorn's trio worker, in front of that
upstream through the OpenAI adapter), and this one, the client, one
``httpx.AsyncClient``.  The same chat body goes to the upstream directly and through
the gateway (whose ``model`` names the upstream's provider); both replies are decoded.

- **requests**, at concurrency 1, 16 and 64: alternating rounds in one run (direct,
  gateway, direct, ..., gateway, direct); each gateway round is compared with the mean
  of the direct rounds either side of it (which cancels the machine's drift to first
  order), and the figures are the medians of those comparisons: the throughput ratio,
  and the latency the gateway adds at p50 and p99.
- **streams**: 1,000 concurrent streaming requests through the gateway (opened in
  batches of 100, the listen backlog hypercorn asks for, each batch once the one before
  it has its response headers; every stream is still open when the last one starts);
  all must end with ``data: [DONE]``.  The gateway process's resident memory is sampled
  (``/proc/<pid>/status``) before and while they run.

The gateway's router uses what ``llm-router serve --config`` builds: the default HTTP
client (20 keep-alive connections to the upstream) and no rate limits (``presets =
false``); the client keeps as many connections as it has workers.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import msgspec
import trio

from ._bench import Latencies, _client, _drive, _median, _merge, _upstream_process

__all__ = [
    "GatewayBenchResult",
    "GatewayRound",
    "GatewayStreams",
    "bench_gateway",
    "report_gateway",
]

_KEY_ENV = "LLM_ROUTER_BENCH_UPSTREAM_KEY"
_KEY = "sk-bench-not-a-key"

_SCENARIOS = """
[scenarios.s]
latency = { dist = "fixed", seconds = 0.2 }
chunk_interval = 0.05
"""


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


class GatewayBenchResult(msgspec.Struct, frozen=True, kw_only=True):
    """``llm-router bench gateway``: every concurrency level, then the streams."""

    requests: list[GatewayRound]
    streams: GatewayStreams


# --------------------------------------------------------------------------- processes


@contextmanager
def _gateway_process(upstream: str) -> Iterator[tuple[str, int]]:
    """``llm-router serve`` in a child process in front of ``upstream``; (URL, pid)."""
    providers = "".join(
        f'[providers.{name}]\nkind = "openai"\nbase_url = "{upstream}/{name}/v1"\n'
        f'api_key_env = "{_KEY_ENV}"\npresets = false\nretry = {{ max_attempts = 1 }}\n'
        for name in ("a", "s")
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


async def _requests_round(
    upstream: str, gateway: str, requests: int, concurrency: int, rounds: int
) -> GatewayRound:
    rounds = max(1, min(rounds, requests // max(concurrency, 1)))
    json_headers = {"content-type": "application/json"}
    async with _client(max(concurrency, 1)) as client:
        direct = _poster(
            client,
            f"{upstream}/a/v1/chat/completions",
            _body("gpt-4o-mini"),
            {**json_headers, "authorization": f"Bearer {_KEY}"},
        )
        routed = _poster(
            client, f"{gateway}/v1/chat/completions", _body("a:gpt-4o-mini"), json_headers
        )
        warm = max(concurrency, min(300, requests // 2))
        await _drive(direct, warm, concurrency)  # connections, both paths
        await _drive(routed, warm, concurrency)
        per_round = max(1, requests // rounds)
        direct_rounds = [await _drive(direct, per_round, concurrency)]
        gateway_rounds: list[Latencies] = []
        for _ in range(rounds):
            gateway_rounds.append(await _drive(routed, per_round, concurrency))
            direct_rounds.append(await _drive(direct, per_round, concurrency))
    ratios: list[float] = []
    added_p50: list[float] = []
    added_p99: list[float] = []
    for i, g in enumerate(gateway_rounds):
        before, after = direct_rounds[i], direct_rounds[i + 1]
        ratios.append(g.per_second / ((before.per_second + after.per_second) / 2))
        added_p50.append(g.p50_us - (before.p50_us + after.p50_us) / 2)
        added_p99.append(g.p99_us - (before.p99_us + after.p99_us) / 2)
    ratios.sort()
    added_p50.sort()
    added_p99.sort()
    return GatewayRound(
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
    requests: int = 5_000,
    concurrencies: tuple[int, ...] = (1, 16, 64),
    rounds: int = 10,
    streams: int = 1_000,
) -> GatewayBenchResult:
    """The gateway (a child process) against the upstream it fronts (another one)."""
    with _upstream_process(_SCENARIOS) as upstream, _gateway_process(upstream) as (gateway, pid):
        levels = [
            await _requests_round(upstream, gateway, requests, c, rounds) for c in concurrencies
        ]
        # Long enough (~0.2 s + 0.05 s per word) that the first batch is still
        # streaming when the last batch opens.
        words = 100 if streams > _BATCH else 10
        streamed = await _streams(gateway, pid, streams, words)
    return GatewayBenchResult(requests=levels, streams=streamed)


def report_gateway(r: GatewayBenchResult) -> str:
    """The printed table of ``llm-router bench gateway``."""
    from ._format import table_lines

    lines = [
        "gateway (llm-router serve in a child process, the fake upstream in another; OpenAI format)"
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
    s = r.streams
    lines.append(
        f"  streams: {s.completed}/{s.streams} completed ({s.peak_open} open at once)"
        f" in {s.seconds:.2f} s; gateway RSS {s.gateway_rss_before_mb:.1f} MB ->"
        f" peak {s.gateway_rss_peak_mb:.1f} MB, {s.rss_per_stream_kb:.1f} KB per stream"
    )
    return "\n".join(lines)
