"""The chaos engine on MockProviders and crashing adapters, in virtual time (slack 0)."""

from __future__ import annotations

import pytest
import trio

from router._tools._chaos import MOCK_FAULTS, STAGES, ChaosReport, run_chaos_async


def _violations(report: ChaosReport) -> str:
    return "\n".join(report.violations[:20])


@pytest.mark.parametrize("fault", MOCK_FAULTS)
async def test_each_fault_alone(fault: str, autojump_clock: trio.testing.MockClock) -> None:
    """One fault alone: every request ends typed, exactly by its deadline, nothing left, no key."""
    report = await run_chaos_async(world="mock", requests=40, seed=11, faults=[fault], stages=[])
    assert report.requests == 40
    assert set(report.by_fault) == {fault}
    assert report.violations == [], _violations(report)


@pytest.mark.parametrize("stage", STAGES)
async def test_each_cancellation_stage_alone(
    stage: str, autojump_clock: trio.testing.MockClock
) -> None:
    """Cancellation at one stage: it returns at the cancel instant, and leaves nothing behind."""
    report = await run_chaos_async(world="mock", requests=30, seed=5, faults=[], stages=[stage])
    assert set(report.by_stage) == {stage}
    assert report.by_stage[stage].get("cancelled", 0) > 0
    assert report.max_overshoot <= 0.0
    assert report.violations == [], _violations(report)


async def test_the_whole_mix(autojump_clock: trio.testing.MockClock) -> None:
    """400 requests of every fault and stage at once: every guarantee holds, to the
    nanosecond, and "ok" is admitted more often than its burst (the RPM check bites)."""
    report = await run_chaos_async(world="mock", requests=400, seed=2, parallel=24)
    assert report.requests == 400
    assert set(report.by_fault) == set(MOCK_FAULTS)
    assert set(report.by_stage) == set(STAGES)
    assert report.key_checked["events"] > 0
    assert report.key_checked["spans"] > 0
    assert report.admitted["ok"] > 20, report.admitted  # the RPM check has a saturated bucket
    assert report.violations == [], _violations(report)


async def test_the_same_seed_gives_the_same_run(autojump_clock: trio.testing.MockClock) -> None:
    """The mix is seeded: one caller on virtual time, two runs of one seed end alike."""
    a = await run_chaos_async(world="mock", requests=80, seed=9, stages=[], parallel=1)
    b = await run_chaos_async(world="mock", requests=80, seed=9, stages=[], parallel=1)
    assert a.outcomes == b.outcomes
    assert a.by_fault == b.by_fault
