"""Review of issue 15: a strategy of the user's that fails in the simulator is reported
as such (counted, and said under its row), not as a policy with "nans" latencies."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

from router._tools._simulate import format_results
from router.config import RouteConfig
from router.policy import Candidate, Needs, Plan, TargetHealth
from router.testing import SimProvider, SimScenario, simulate


def forgets_to_return(
    candidates: Sequence[Candidate],
    needs: Needs,
    health: Mapping[str, TargetHealth],
    now: float,
    rng: random.Random,
) -> Plan:
    """Broken: returns None (the ``return`` forgotten)."""
    return None  # type: ignore[return-value]


def test_a_failing_strategy_is_counted_and_said_in_the_simulators_table() -> None:
    """Every request of a policy whose strategy returns None fails; its PolicyResult
    counts them in ``strategy_errors``, and the table says so under its row and shows
    ``-`` for latencies it has none of (a working policy beside it: 0, nothing said)."""
    scenario = SimScenario(
        providers={"a": SimProvider(), "b": SimProvider()},
        policies={
            "fallback": RouteConfig(targets=["a:m", "b:m"]),
            "mine": RouteConfig(targets=["a:m", "b:m"], strategy=forgets_to_return),
        },
        requests=20,
    )
    ok, broken = simulate(scenario, requests=20)
    assert (ok.strategy_errors, ok.succeeded) == (0, 20)
    assert (broken.strategy_errors, broken.succeeded) == (20, 0)
    table = format_results(scenario, [ok, broken])
    assert "20 requests failed by the strategy (it raised or returned an invalid plan)" in table
    assert "nan" not in table
    row = next(line for line in table.splitlines() if line.startswith("mine"))
    assert row.split()[1:5] == ["-", "-", "-", "-"]
