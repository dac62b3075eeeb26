"""``llm-router bench gateway --quick``: the benchmark runs end to end and reports its shape.

Three real processes (the fake upstream, ``llm-router serve``, the client), tiny counts.
Structure only: how fast is for docs/benchmarks.md (the coordinator's run on a quiet
machine), never asserted here.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio

from providers.testing import open_fake_upstream
from router._tools._bench_gateway import _body, _drive_spread, _workers

ROOT = Path(__file__).resolve().parent.parent


def test_bench_gateway_quick_prints_its_table_and_writes_its_json(tmp_path: Path) -> None:
    """Every concurrency level is measured against the fixed-latency upstream in
    alternating rounds (one more direct round than gateway rounds, the ratio a median
    inside its rounds' range), the 1 ms target at c=16 is judged on that part, the cost
    part (instant upstream) reports the gateway's CPU per request, every stream through
    the gateway ends with ``[DONE]``, and the gateway's RSS is reported."""
    out = tmp_path / "bench.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "router", "bench", "--quick", "gateway", "--json", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=400,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("gateway (llm-router serve in a child process") for line in lines)
    assert any("upstream latency fixed at 250 ms" in line for line in lines), result.stdout
    header = next(line for line in lines if "direct p50" in line)
    for column in ("direct p99", "direct req/s", "gateway p99", "throughput", "adds p50"):
        assert column in header
    assert [line.split()[0] for line in lines if line.strip().startswith("c=")] == [
        "c=1",
        "c=16",
        "c=64",
    ]
    target = next(line for line in lines if line.strip().startswith("target:"))
    assert "at p50 at c=16" in target
    assert any("CPU and throughput, not latency" in line for line in lines), result.stdout
    assert any("µs per request" in line for line in lines), result.stdout
    assert any("streams: 50/50 completed" in line for line in lines), result.stdout
    figures = json.loads(out.read_text())
    assert set(figures) == {"machine", "gateway"}
    gateway = figures["gateway"]
    assert gateway["upstream_latency"] == 0.25
    assert [level["concurrency"] for level in gateway["requests"]] == [1, 16, 64]
    for level in [*gateway["requests"], gateway["cost"]["round"]]:
        assert level["rounds"] >= 1
        assert level["ratio_low"] <= level["throughput_ratio"] <= level["ratio_high"]
        per_round = level["gateway"]["requests"] // level["rounds"]
        assert level["direct"]["requests"] == level["gateway"]["requests"] + per_round > 0
        for key in ("added_p50_us", "added_p99_us"):
            assert math.isfinite(level[key])
    for level in gateway["requests"]:  # every request waited for the upstream's 250 ms
        assert level["direct"]["p50_us"] >= 250_000
        assert level["gateway"]["p50_us"] >= 250_000
    c16 = gateway["requests"][1]
    assert gateway["target_met"] is (c16["added_p50_us"] <= 1000)
    assert gateway["cost"]["round"]["concurrency"] == 1
    assert gateway["cost"]["round"]["direct"]["p50_us"] < 200_000  # the instant upstream
    if Path("/proc/self/stat").exists():
        assert gateway["cost"]["gateway_cpu_us"] > 0
    streams = gateway["streams"]
    assert streams["streams"] == streams["completed"] == 50
    assert 1 <= streams["peak_open"] <= 50
    if Path("/proc/self/status").exists():
        assert streams["gateway_rss_peak_mb"] >= streams["gateway_rss_before_mb"] > 0
    assert "Traceback" not in result.stderr


async def test_workers_start_spread_over_the_latency_and_call_one_after_another(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Worker ``i`` of ``n`` starts at ``i * spread / n`` (virtual time, exactly) and makes
    its calls one after another: arrivals at the gateway are spread evenly over the
    upstream's latency instead of coming in convoys of ``n``."""
    starts: dict[int, list[float]] = {i: [] for i in range(4)}

    def call_of(i: int) -> Callable[[], Awaitable[None]]:
        async def call() -> None:
            starts[i].append(trio.current_time())
            await trio.sleep(0.2)

        return call

    t0 = trio.current_time()
    result = await _drive_spread([call_of(i) for i in range(4)], 3, 0.2)
    assert result.requests == 12
    for i in range(4):
        first = t0 + i * 0.05
        assert starts[i] == pytest.approx([first, first + 0.2, first + 0.4], abs=1e-9)
    assert trio.current_time() == pytest.approx(t0 + 0.15 + 0.6, abs=1e-9)


async def test_each_worker_keeps_one_connection_of_its_own() -> None:
    """``_workers(c, ...)`` gives each of the c workers a client limited to one
    connection: over real sockets, the upstream sees exactly c connections open, round
    after round (no client pool shared by the c workers, whose cost per request grows
    with c)."""
    async with open_fake_upstream(record=False) as upstream:
        url = upstream.base_url("a", "openai") + "/chat/completions"
        headers = {"content-type": "application/json", "authorization": "Bearer x"}
        async with _workers(8, url, _body("gpt-4o-mini"), headers) as posters:
            assert len(posters) == 8
            for _ in range(3):
                result = await _drive_spread(posters, 5, 0.0)
                assert result.requests == 40
                assert upstream.stats().open_connections == 8
