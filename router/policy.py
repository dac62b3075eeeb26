"""Routing policy: how a route's targets are planned for one request.

A :class:`Strategy` is a pure callable ``(candidates, needs, health, now, rng) -> Plan``:
given the route's :class:`Candidate` targets, what the request :class:`Needs` (tools,
vision, context...), each provider's :class:`TargetHealth`, trio's ``now`` and a seeded
``random.Random``, it returns a :class:`Plan` — the targets to try in order and, as
:class:`Exclusion` records, every candidate left out and why.  The router calls the
route's strategy once per request; ``Plan.explain()`` says why targets were left out.

The five built-in strategies are :class:`BuiltinStrategy` objects (:func:`plan_route`
calls one by name).  A strategy of your own is a function (or an object with
``__call__``) named in a route by import path (``strategy =
"mypkg.policies:cheapest_healthy"``); :func:`unfit`, :func:`over_budget`,
:func:`health_of` and :func:`estimated_cost` are the built-ins' rules, to keep them in
yours, and :func:`plan_problem` is the check the router makes of your plans
(docs/routing.md).

Example::

    import math
    from router.policy import Exclusion, Plan, estimated_cost, over_budget, unfit

    def cheapest(candidates, needs, health, now, rng):
        fit, out = [], []
        for c in candidates:
            why = unfit(c, needs) or over_budget(c, needs, health)
            if why is None:
                fit.append(c)
            else:
                out.append(Exclusion(c.target, why))
        cost = lambda c: estimated_cost(c, needs)
        fit.sort(key=lambda c: math.inf if cost(c) is None else cost(c))  # unknown: last
        return Plan(targets=tuple(fit), excluded=tuple(out))
"""

from ._policy import BuiltinStrategy as BuiltinStrategy
from ._policy import Candidate as Candidate
from ._policy import Exclusion as Exclusion
from ._policy import Needs as Needs
from ._policy import Plan as Plan
from ._policy import Strategy as Strategy
from ._policy import TargetHealth as TargetHealth
from ._policy import estimated_cost as estimated_cost
from ._policy import health_of as health_of
from ._policy import over_budget as over_budget
from ._policy import plan_route as plan_route
from ._policy import unfit as unfit
from ._strategies import plan_problem as plan_problem

__all__ = [
    "BuiltinStrategy",
    "Candidate",
    "estimated_cost",
    "Exclusion",
    "health_of",
    "Needs",
    "over_budget",
    "Plan",
    "plan_problem",
    "plan_route",
    "Strategy",
    "TargetHealth",
    "unfit",
]
