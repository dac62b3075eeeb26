"""Shared limits across real OS processes, a real redis-server and the fake upstream:
the limit holds for all of them together, and a process killed with -9 frees its
concurrency slots after the lease time."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from providers.testing import Fixed, Scenario, open_fake_upstream
from router import ChatRequest, Message, open_router
from router.config import ProviderConfig, RouterConfig, SharedConfig
from tests._helpers import run_workers, worker_env
from tests._redis import RedisServer

ROOT = Path(__file__).resolve().parent.parent


def _max_in_window(times: list[float], window: float) -> int:
    """The most arrivals in any window of ``window`` seconds (two pointers)."""
    times = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] > window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


async def test_four_processes_share_one_rpm_limit(redis_server: RedisServer) -> None:
    """4 OS processes x 100 concurrent callers, started together, on one provider (rpm
    1500 = 25/s, burst 5): every caller ends with an answer or a typed error, and the
    fake upstream never sees more than the shared limit allows, where four local limits
    would allow 4x.

    The tolerance, derived: GCRA admits at most W/I + b requests in any window of W
    seconds (I = 60/rpm = 40 ms, b = 5; plus 1 us of slack).  A request reaches the
    upstream some time after its admission; if that delay varies by at most J, the
    arrivals in a window W come from admissions in a window W + J, so at most
    (W + J)/I + b arrive.  J is the scheduling jitter of 6 busy processes on 2 shared
    cores: we allow 0.5 s.  So a 2 s window sees at most 2.5 x 25 + 5 = 67.5 arrivals,
    where four unshared processes would send up to 4 x (2 x 25 + 5) = 220 (the same
    test with local limits fails).  The rate is low so that the machine, loaded, can
    still send well over it: the limit, not the machine, must be what holds.  Each
    process stays on shared limits throughout (one switch: the first, to shared).
    """
    rpm, burst, callers, processes = 1500, 5, 100, 4
    interval = 60.0 / rpm
    async with open_fake_upstream({"up": Scenario(latency=Fixed(0.005))}) as up:
        settings = {
            "redis_url": redis_server.url,
            "prefix": "four",
            "base_url": up.base_url("up", "openai"),
            "callers": callers,
            "rpm": rpm,
            "burst": burst,
        }
        with trio.fail_after(90):
            summaries = await run_workers("tests._shared_worker", settings, processes)
        arrivals = [r.received_at for r in up.requests]
    for s in summaries:
        assert s["switches"] == 1, "a process fell back to local limits"
        assert s["foreign"] == []
        assert s["ok"] + sum(s["errors"].values()) == callers
    assert sum(s["ok"] for s in summaries) == callers * processes
    assert len(arrivals) == callers * processes
    jitter = 0.5
    for window in (1.0, 2.0, 4.0):
        bound = (window + jitter) / interval + burst
        assert _max_in_window(arrivals, window) <= bound, window
    # The whole run cannot be faster than the limit: (n - burst) intervals at least.
    assert max(arrivals) - min(arrivals) >= (callers * processes - burst) * interval - jitter


async def test_kill_9_frees_leases_after_lease_time(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process killed with -9 while holding both concurrency slots frees them when its
    leases expire (lease_time 1 s after its last renewal): another process's request
    waits for that, then goes — it is neither admitted early nor stuck."""
    lease_time = 1.0
    monkeypatch.setenv("SHARED_TEST_KEY", "sk-shared-test")
    async with open_fake_upstream({"slow": Scenario(latency=Fixed(60.0))}) as up:
        settings = {
            "redis_url": redis_server.url,
            "prefix": "kill9",
            "base_url": up.base_url("slow", "openai"),
            "callers": 2,
            "max_concurrency": 2,
            "lease_time": lease_time,
            "heartbeat": 0.2,
            "hold": True,
        }
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "tests._shared_worker", json.dumps(settings)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=worker_env(),
            cwd=ROOT,
        )
        try:
            with trio.fail_after(20):
                # The upstream has no event for "n in flight": poll it.
                while up.stats("slow").in_flight < 2:  # noqa: ASYNC110
                    await trio.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            killed_at = trio.current_time()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        up.set_scenario("slow", Scenario())
        config = RouterConfig(
            providers={
                "up": ProviderConfig(
                    kind="openai-compatible",
                    api_key_env="SHARED_TEST_KEY",
                    base_url=up.base_url("slow", "openai"),
                    max_concurrency=2,
                    presets=False,
                )
            },
            shared=SharedConfig(
                redis_url=redis_server.url,
                prefix="kill9",
                lease_time=lease_time,
                heartbeat=0.2,
                timeout=1.0,
            ),
        )
        async with open_router(config) as router:
            with trio.fail_after(10):
                await router.complete(
                    ChatRequest(model="up:fake-model", messages=[Message.user("hi")])
                )
            waited = trio.current_time() - killed_at
    # The killed process renewed its leases at most one heartbeat before it died.
    assert lease_time - 0.2 - 0.05 <= waited <= lease_time + 1.0, waited
