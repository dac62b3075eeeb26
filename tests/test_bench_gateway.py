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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_gateway_quick_prints_its_table_and_writes_its_json(tmp_path: Path) -> None:
    """Every concurrency level is measured in alternating rounds (one more direct round
    than gateway rounds, the ratio a median inside its rounds' range), every stream
    through the gateway ends with ``[DONE]``, and the gateway's RSS is reported."""
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
    header = next(line for line in lines if "direct p50" in line)
    for column in ("gateway p99", "throughput", "adds p50", "adds p99"):
        assert column in header
    assert [line.split()[0] for line in lines if line.strip().startswith("c=")] == [
        "c=1",
        "c=16",
        "c=64",
    ]
    assert any("streams: 50/50 completed" in line for line in lines), result.stdout
    figures = json.loads(out.read_text())
    assert set(figures) == {"machine", "gateway"}
    gateway = figures["gateway"]
    assert [level["concurrency"] for level in gateway["requests"]] == [1, 16, 64]
    for level in gateway["requests"]:
        assert level["rounds"] >= 1
        assert level["ratio_low"] <= level["throughput_ratio"] <= level["ratio_high"]
        per_round = level["gateway"]["requests"] // level["rounds"]
        assert level["direct"]["requests"] == level["gateway"]["requests"] + per_round > 0
        for key in ("added_p50_us", "added_p99_us"):
            assert math.isfinite(level[key])
    streams = gateway["streams"]
    assert streams["streams"] == streams["completed"] == 50
    assert 1 <= streams["peak_open"] <= 50
    if Path("/proc/self/status").exists():
        assert streams["gateway_rss_peak_mb"] >= streams["gateway_rss_before_mb"] > 0
    assert "Traceback" not in result.stderr
