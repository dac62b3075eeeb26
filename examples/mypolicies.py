"""A routing policy of your own: the cheapest healthy target first (docs/policy-testing.md)."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence

from router.policy import (
    Candidate,
    Exclusion,
    Needs,
    Plan,
    TargetHealth,
    estimated_cost,
    health_of,
    over_budget,
    unfit,
)


def cheapest_healthy(
    candidates: Sequence[Candidate],
    needs: Needs,
    health: Mapping[str, TargetHealth],
    now: float,
    rng: random.Random,
) -> Plan:
    """Cheapest first (unknown prices last); unfit, over-budget or unhealthy: left out."""
    usable: list[Candidate] = []
    excluded: list[Exclusion] = []
    for c in candidates:
        why = unfit(c, needs) or over_budget(c, needs, health)
        if why is None and health_of(health, c).status == "unhealthy":
            why = health_of(health, c).reason or "unhealthy"
        if why is None:
            usable.append(c)
        else:
            excluded.append(Exclusion(c.target, why))

    def cost(c: Candidate) -> float:
        value = estimated_cost(c, needs)
        return math.inf if value is None else value

    usable.sort(key=cost)  # stable: ties keep the route's order
    return Plan(targets=tuple(usable), excluded=tuple(excluded))
