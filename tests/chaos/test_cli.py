"""``llm-router chaos`` in a subprocess: its report, its exit status, and no key in its output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

KEY = "sk-chaos-cli-5f0c9e2a7b4d4c1e8a6f3b2d1c0e9f8a"
ROOT = Path(__file__).resolve().parents[2]


def _chaos(*args: str) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ, LLM_ROUTER_CHAOS_KEY=KEY, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "router", "chaos", *args],
        env=env,
        capture_output=True,
        timeout=240,
        check=False,
    )


def test_chaos_json_run_passes_and_never_prints_the_key() -> None:
    """A seeded wire run: exit 0 with passed=true, the figures present, the key in no byte out."""
    done = _chaos("--requests", "60", "--seed", "7", "--json", "--deadline", "1.5")
    assert KEY.encode() not in done.stdout
    assert KEY.encode() not in done.stderr
    assert KEY[-16:].encode() not in done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert (done.returncode == 0) == report["passed"]
    assert report["requests"] == 60
    assert report["seed"] == 7
    assert {"p50", "p99", "max_overshoot", "rss_start", "rss_end", "leaks"} <= set(report)
    assert report["violations"] == [], report["violations"][:10]
    assert report["passed"] is True
    assert done.returncode == 0


def test_chaos_table_in_the_mock_world_and_a_bad_flag() -> None:
    """The table names the figures; the mock world holds slack 0; an unknown fault exits 1."""
    done = _chaos(
        "--requests", "20", "--seed", "2", "--stage", "headers", "--slack", "0", "--world", "mock"
    )
    out = done.stdout.decode()
    assert "latency p50" in out
    assert "server-counted concurrency" not in out  # the mock world has no server
    assert "RSS start" in out
    assert KEY.encode() not in done.stdout + done.stderr
    assert done.returncode == 0, out  # virtual time: cancellation lands exactly, slack 0 holds
    bad = _chaos("--fault", "nope")
    assert bad.returncode == 1
    assert b"unknown fault 'nope'" in bad.stderr
