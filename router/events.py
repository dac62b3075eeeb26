"""Events: what the router did, as typed records, for listeners and subscriptions.

:meth:`Router.subscribe() <router.Router.subscribe>` gives a :class:`Subscription` (a
trio receive channel of :data:`RouterEvent`); :meth:`Router.add_listener()
<router.Router.add_listener>` calls a :data:`Listener` synchronously.  Every event is a
frozen ``msgspec.Struct`` tagged on its ``"type"`` field, so it encodes to JSON as is.
docs/observability.md describes each field.

==========================  ============================================================
:class:`RequestStarted`     a request entered the router
:class:`AttemptStarted`     an attempt on a provider began
:class:`AttemptAdmitted`    its provider's mailbox admitted it (or a retry): sent next
:class:`HedgeLaunched`      a hedge went out beside an attempt with no answer yet
:class:`FallbackLaunched`   the next target went out after a failure
:class:`RetryScheduled`     the same target will be tried again after a backoff
:class:`AttemptFinished`    an attempt ended: won, failed, cancelled or skipped
:class:`BudgetRefused`      a spend cap refused the request
:class:`RequestFinished`    the caller got its answer or its error: outcome, latency, cost
:class:`BreakerChanged`     a provider's circuit breaker changed state
:class:`BreakerShared`      it took another process's decision (``[shared]``)
:class:`HealthChanged`      a provider's health changed
:class:`ActorCrashed`       a provider actor crashed
:class:`ActorRestarted`     the supervisor restarted it
:class:`QueueWait`          a request waited in a provider's mailbox
:class:`SharedLimitsChanged` limits shared on Redis switched to local, or back
==========================  ============================================================

Example::

    from router.events import AttemptFinished

    async with router.subscribe() as events:
        async for event in events:
            if isinstance(event, AttemptFinished):
                print(event.target, event.outcome)
"""

from ._events import ActorCrashed as ActorCrashed
from ._events import ActorRestarted as ActorRestarted
from ._events import AttemptAdmitted as AttemptAdmitted
from ._events import AttemptFinished as AttemptFinished
from ._events import AttemptStarted as AttemptStarted
from ._events import BreakerChanged as BreakerChanged
from ._events import BreakerShared as BreakerShared
from ._events import BudgetRefused as BudgetRefused
from ._events import FallbackLaunched as FallbackLaunched
from ._events import HealthChanged as HealthChanged
from ._events import HedgeLaunched as HedgeLaunched
from ._events import Listener as Listener
from ._events import QueueWait as QueueWait
from ._events import RequestFinished as RequestFinished
from ._events import RequestOutcome as RequestOutcome
from ._events import RequestStarted as RequestStarted
from ._events import RetryScheduled as RetryScheduled
from ._events import RouterEvent as RouterEvent
from ._events import SharedLimitsChanged as SharedLimitsChanged
from ._events import Subscription as Subscription

__all__ = [
    "ActorCrashed",
    "ActorRestarted",
    "AttemptAdmitted",
    "AttemptFinished",
    "AttemptStarted",
    "BreakerChanged",
    "BreakerShared",
    "BudgetRefused",
    "FallbackLaunched",
    "HealthChanged",
    "HedgeLaunched",
    "Listener",
    "QueueWait",
    "RequestFinished",
    "RequestOutcome",
    "RequestStarted",
    "RetryScheduled",
    "RouterEvent",
    "SharedLimitsChanged",
    "Subscription",
]
