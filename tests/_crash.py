"""Crashing a provider actor's own loop, for the supervision tests.

Production code has no hook for this.  :func:`crash_actor` reaches the loop the way a
bug would: the mailbox's ``_serve`` step, which the actor's loop runs on every wake-up,
raises once; the loop is woken so that it happens at once (or, while the supervisor is
waiting to restart the loop, on the restart's first step).
"""

from __future__ import annotations

from router._actor import ProviderActor


def crash_actor(actor: ProviderActor, exc: BaseException) -> None:
    """Make ``actor``'s loop raise ``exc`` at its next wake-up (once), and wake it."""
    mailbox = actor.mailbox
    serve = type(mailbox)._serve

    def crashing(now: float) -> float:
        del mailbox._serve  # once: the restarted loop serves as before
        serve(mailbox, now)  # the step itself runs, as a bug after it would let it
        raise exc

    mailbox._serve = crashing  # type: ignore[method-assign]
    mailbox._changed.set()
