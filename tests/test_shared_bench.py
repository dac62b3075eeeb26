"""``llm-router bench shared``: its shape, never its speed (docs/benchmarks.md has the
figures; how fast is measured there, not asserted here)."""

from __future__ import annotations

import json
from pathlib import Path

from router._tools._bench import BENCHMARKS
from tests import _cli_runner
from tests._redis import require_redis_server
from tests.test_cli_commands import ENV


def test_bench_shared_quick_reports_latency_and_1_2_4_process_throughput(
    tmp_path: Path,
) -> None:
    """``llm-router bench --quick shared`` starts its own redis-server, runs the
    alternating local/shared latency rounds and the 1, 2 and 4-process throughput
    rounds for real, and prints and writes every figure: structure only."""
    require_redis_server()
    assert "shared" in BENCHMARKS
    out = tmp_path / "bench.json"
    # It spawns 7 worker processes (1 + 2 + 4): more than the usual CLI time limit
    # on a loaded machine.
    command = ["bench", "--quick", "shared", "--json", str(out)]
    result = _cli_runner.run(command, env=ENV, stdin=None, timeout=240)
    assert result.returncode == 0, result.stderr
    assert "shared adds: p50" in result.stdout
    assert "floor, coredis alone" in result.stdout
    assert "4 processes:" in result.stdout
    figures = json.loads(out.read_text())["shared"]
    assert figures["skipped"] is None
    latency = figures["latency"]
    assert latency["rounds"] == 3
    # one more local round than shared ones: they bracket them
    per_round = latency["shared"]["requests"] // latency["rounds"]
    assert latency["local"]["requests"] == latency["shared"]["requests"] + per_round
    assert latency["added_p50_low_us"] <= latency["added_p50_us"] <= latency["added_p50_high_us"]
    # the floor ran in the same rounds, as many requests as the shared ones
    assert latency["coredis"]["requests"] == latency["shared"]["requests"]
    assert latency["coredis_p50_us"] > 0
    assert [t["processes"] for t in figures["throughput"]] == [1, 2, 4]
    for t in figures["throughput"]:
        assert len(t["per_second"]) == 1
        assert t["median_per_second"] > 0
        assert t["requests"] > 0
