"""The chaos engine over loopback: the fake upstream, the hostile server, crashing adapters."""

from __future__ import annotations

import pytest

from router._chaos import STAGES, WIRE_FAULTS, ChaosReport, run_chaos_async


def _violations(report: ChaosReport) -> str:
    return "\n".join(report.violations[:20])


@pytest.mark.parametrize("fault", WIRE_FAULTS)
async def test_each_fault_alone(fault: str) -> None:
    """One fault alone on the wire: typed endings within deadline + 1 s, limits, no leak, no key."""
    report = await run_chaos_async(
        world="wire", requests=6, seed=3, faults=[fault], stages=[], deadline=1.0, parallel=6
    )
    assert report.requests == 6
    assert report.violations == [], _violations(report)


@pytest.mark.parametrize("stage", STAGES)
async def test_each_cancellation_stage_alone(stage: str) -> None:
    """Cancellation at one stage of a real HTTP exchange leaves no connection, permit or task."""
    report = await run_chaos_async(
        world="wire", requests=10, seed=4, faults=[], stages=[stage], deadline=1.0, parallel=10
    )
    assert report.by_stage[stage].get("cancelled", 0) > 0
    assert report.violations == [], _violations(report)


async def test_the_whole_mix() -> None:
    """300 requests of every fault and stage at once: every guarantee holds over loopback."""
    report = await run_chaos_async(world="wire", requests=300, seed=1, parallel=32, deadline=1.5)
    assert report.requests == 300
    assert report.concurrency, "the hostile server counted nothing"
    assert report.violations == [], _violations(report)
