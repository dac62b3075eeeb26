"""The supervisor: runs each provider actor's loop, restarting it when it crashes.

An actor's loop is a task in the router's nursery (started with ``nursery.start``, so
the router's body runs only once every actor is ready).  When the loop raises, the crash
is logged and published (:class:`~router.ActorCrashed`), the actor fails what it held,
and the loop is started again after a backoff: the n-th restart within the window waits
``min(restart_backoff · 2^(n-1), max_restart_backoff)``.  More than ``max_restarts``
crashes within ``restart_window`` seconds mark the provider unhealthy (crashed) for
good.  A crash never reaches the user's nursery; requests caught in it fail over like
any provider failure.
"""

from __future__ import annotations

import logging
from collections import deque

import trio

from ._actor import ProviderActor
from ._config import SupervisorConfig
from ._events import ActorCrashed, ActorRestarted, EventHub

__all__ = ["supervise"]

logger = logging.getLogger("trio_llm_router")


async def supervise(
    actor: ProviderActor,
    cfg: SupervisorConfig,
    hub: EventHub,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``actor``'s loop; restart it with backoff when it crashes (see above)."""
    crashes: deque[float] = deque()
    status: trio.TaskStatus[None] = task_status
    while True:
        try:
            await actor.run(task_status=status)
            return
        except Exception as raised:
            exc = _unwrap(raised)
            status = trio.TASK_STATUS_IGNORED
            now = trio.current_time()
            crashes.append(now)
            while crashes and crashes[0] < now - cfg.restart_window:
                crashes.popleft()
            error_type = type(exc).__name__
            extra: dict[str, object] = {"provider": actor.name, "error_type": error_type}
            delay: float | None = None
            if len(crashes) <= cfg.max_restarts:
                delay = min(cfg.restart_backoff * 2 ** (len(crashes) - 1), cfg.max_restart_backoff)
            hub.emit(
                ActorCrashed(
                    time=now,
                    provider=actor.name,
                    error_type=error_type,
                    error=str(exc),
                    crashes=len(crashes),
                    restart_in=delay,
                )
            )
            actor.on_crash(exc)
            if delay is None:
                reason = (
                    f"crashed {len(crashes)} times within {cfg.restart_window:g}s "
                    f"(last: {error_type}: {exc})"
                )
                logger.error("provider %s: %s; marked unhealthy", actor.name, reason, extra=extra)
                actor.mark_crashed(reason)
                return
            logger.warning(
                "provider %s: actor crashed (%s: %s); restarting in %.3gs",
                actor.name,
                error_type,
                exc,
                delay,
                extra={**extra, "restart_in": delay},
            )
            actor.restarts += 1
            await trio.sleep(delay)
            logger.info(
                "provider %s: actor restarted (restart %d)",
                actor.name,
                actor.restarts,
                extra={"provider": actor.name, "restarts": actor.restarts},
            )
            hub.emit(
                ActorRestarted(
                    time=trio.current_time(), provider=actor.name, restarts=actor.restarts
                )
            )


def _unwrap(exc: BaseException) -> BaseException:
    """The one exception inside (nested) single-member groups, for logs and reasons."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc
