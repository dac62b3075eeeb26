"""Statistics: frozen snapshots of the router's state, for dashboards and tests.

:meth:`Router.statistics() <router.Router.statistics>` returns a :class:`RouterStatistics`
holding the others; :meth:`Router.health() <router.Router.health>` returns a
:class:`HealthSnapshot` per provider.  Each is a frozen ``msgspec.Struct``: reading one
never blocks and never changes the router.

==============================  ========================================================
:class:`RouterStatistics`       the whole router: requests, spend, providers, hedging, events
:class:`ActorStatistics`        one provider actor: status, queue, in flight, outcomes, tokens
:class:`HedgeStatistics`        one hedged route: its delay, hedge budget, hedges sent and not
:class:`BudgetStatistics`       one spend cap: its scope, cap, spend and reservations
:class:`AuditStatistics`        the audit log: records written, dropped, waiting; file size
:class:`SubscriptionStatistics` one subscription: buffer, received, dropped, closed
:class:`HealthSnapshot`         one provider: health verdict and why, latency, errors, breaker
:class:`BreakerSnapshot`        a circuit breaker at one moment: its state and error window
:class:`SharedStatistics`       limits shared on Redis: shared or local now, live processes
==============================  ========================================================
"""

from ._actor import ActorStatistics as ActorStatistics
from ._audit import AuditStatistics as AuditStatistics
from ._budget import BudgetStatistics as BudgetStatistics
from ._events import SubscriptionStatistics as SubscriptionStatistics
from ._health import BreakerSnapshot as BreakerSnapshot
from ._health import HealthSnapshot as HealthSnapshot
from ._shared._stats import SharedStatistics as SharedStatistics
from ._statistics import HedgeStatistics as HedgeStatistics
from ._statistics import RouterStatistics as RouterStatistics

__all__ = [
    "ActorStatistics",
    "AuditStatistics",
    "BreakerSnapshot",
    "BudgetStatistics",
    "HealthSnapshot",
    "HedgeStatistics",
    "RouterStatistics",
    "SharedStatistics",
    "SubscriptionStatistics",
]
