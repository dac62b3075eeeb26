"""Routing policy: how a route's targets are ordered for one request.

:func:`plan_route` is a pure function: given the route's :class:`Candidate` targets, what
the request :class:`Needs` (tools, vision, context...), each target's
:class:`TargetHealth` and the clock, it returns a :class:`Plan` — the targets to try in
order and, as :class:`Exclusion` records, those left out and why.  The router calls it
once per request; ``Plan.explain()`` is what ``llm-router explain`` prints.  This module
is where the strategy protocol will live (docs/routing.md).
"""

from ._policy import Candidate as Candidate
from ._policy import Exclusion as Exclusion
from ._policy import Needs as Needs
from ._policy import Plan as Plan
from ._policy import TargetHealth as TargetHealth
from ._policy import plan_route as plan_route

__all__ = [
    "Candidate",
    "Exclusion",
    "Needs",
    "Plan",
    "plan_route",
    "TargetHealth",
]
