"""The chaos engine over loopback: the fake upstream, the hostile server, crashing adapters."""

from __future__ import annotations

import pytest

from router._tools._chaos import STAGES, WIRE_FAULTS, ChaosReport, run_chaos_async


def _violations(report: ChaosReport) -> str:
    return "\n".join(report.violations[:20])


# The faults are each their own provider, server path and route, so a run of several
# keeps them apart: outcomes, lateness, untyped endings, accepted bodies, in-flight
# counts and the server's concurrency are all per fault.  What is shared (tasks, file
# descriptors, connections left, ResourceWarnings, the key) is attributed on failure by
# running each fault of the group alone.  Four runs of seven faults instead of 28 runs:
# 21 callers (three per fault, as many as the mix has): a run lasts about two of its
# slowest requests (~1 s of deadline and backoff each).
FAULT_GROUPS = [WIRE_FAULTS[i::4] for i in range(4)]


async def _alone(fault: str) -> ChaosReport:
    return await run_chaos_async(
        world="wire", requests=6, seed=3, faults=[fault], stages=[], deadline=1.0, parallel=6
    )


@pytest.mark.parametrize("group", FAULT_GROUPS, ids=lambda g: "+".join(g))
async def test_each_fault_alone(group: tuple[str, ...]) -> None:
    """Each fault on its own provider on the wire (seven side by side, each sent >= 3
    requests): typed endings within deadline + 1 s, limits, no leak, no key; a failure
    names the fault that caused it."""
    n = 6 * len(group)
    report = await run_chaos_async(
        world="wire", requests=n, seed=3, faults=group, stages=[], deadline=1.0, parallel=n // 2
    )
    assert report.requests == n
    assert set(report.by_fault) == set(group)
    assert min(sum(report.by_fault[f].values()) for f in group) >= 3
    if report.violations:
        culprits = {f: (await _alone(f)).violations for f in group}
        culprits = {f: v for f, v in culprits.items() if v}
        raise AssertionError(f"{_violations(report)}\nalone: {culprits}")


def test_the_groups_hold_every_fault_once() -> None:
    """No fault is left out of the grouped runs, and none is run twice."""
    assert sorted(f for g in FAULT_GROUPS for f in g) == sorted(WIRE_FAULTS)


@pytest.mark.parametrize("stage", STAGES)
async def test_each_cancellation_stage_alone(stage: str) -> None:
    """Cancellation at one stage of a real HTTP exchange leaves no connection, permit or task."""
    report = await run_chaos_async(
        world="wire", requests=10, seed=4, faults=[], stages=[stage], deadline=1.0, parallel=10
    )
    assert report.by_stage[stage].get("cancelled", 0) > 0
    assert report.violations == [], _violations(report)


async def test_the_whole_mix() -> None:
    """300 requests of every fault and stage at once: every guarantee holds over loopback
    (the RPM check on "ok" meaning something: more admissions there than its burst)."""
    report = await run_chaos_async(world="wire", requests=300, seed=1, parallel=32, deadline=1.5)
    assert report.requests == 300
    assert report.concurrency, "the hostile server counted nothing"
    assert report.admitted["ok"] > 20, report.admitted
    assert report.violations == [], _violations(report)
