"""One provider's shared limits: RPM and TPM as GCRA buckets, concurrency as leases,
and the provider's pauses, all in Redis, all decided by one Lua script.

The local mailbox (:class:`~router._limiter.Mailbox`) stays the FIFO in front of
Redis: while limits are shared, its own task hands the first requests of its queue (up
to 32) to :meth:`ProviderGate.admit`, which runs ``admit.lua`` once — one
round trip — and learns how many of them, in order, Redis admitted, and what holds the
next one and for how long.  So the queue stays fair in each process, and the processes
together never pass the limits.

What the script decides, atomically, on Redis's clock (``TIME``):

- a **pause** any process set (``retry-after``, a window with nothing left) holds
  every process until its key expires;
- **concurrency**: a sorted set of lease ids scored by expiry.  Expired leases are
  dropped first, so a process killed with ``kill -9`` frees its slots after
  ``lease_time``; live processes renew their leases every heartbeat;
- **RPM** and **TPM**: GCRA (``gcra.lua``, the formula in docs/scaling.md) with the
  provider's ``rpm``/``tpm`` and burst.  TPM is charged the request's estimate and
  reconciled with the reported usage when the call ends, exactly as the local bucket
  is (``Permit.release``).

Releases (a lease to free, tokens to reconcile, a grant undone) are queued without
waiting and go to Redis with the next admission, or on their own (:meth:`run`) when no
admission has taken them within :data:`RELEASE_LINGER` — so a process that keeps
asking pays one round trip per admission, not two.  A pause goes at once.  What is
still queued when the router closes goes as :meth:`run` ends or, queued after that, as
the client closes (:meth:`ProviderGate._flush` is one of its closers).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import trio

from ._client import SharedClient, SharedUnavailable
from ._replies import MalformedReply, array, integer, refuse

if TYPE_CHECKING:
    from .._limiter import Mailbox

__all__ = ["Decision", "ProviderGate"]

#: Seconds a queued release waits for an admission to carry it before it goes alone.
#: It delays only what other processes see (a lease freed, tokens refunded) by at most
#: this much; this process's own queue is served by the admission the release wakes.
RELEASE_LINGER = 0.001

_HOLDS: tuple[str, ...] = ("", "pause", "concurrency", "rpm", "tpm", "never")


class Decision:
    """What Redis said of a batch: the first ``granted`` admitted (with ``leases``),
    and what holds the next one (``hold``) for ``retry_after`` seconds."""

    __slots__ = ("granted", "hold", "leases", "retry_after")

    def __init__(
        self,
        granted: int,
        hold: Literal["", "pause", "concurrency", "rpm", "tpm", "never"],
        retry_after: float,
        leases: Sequence[str],
    ) -> None:
        self.granted = granted
        self.hold = hold
        self.retry_after = retry_after
        self.leases = leases


class ProviderGate:
    """The shared limits of one provider, seen from one process.

    Made by the router for each provider when ``[shared]`` is configured, and attached
    to the provider's mailbox (:meth:`~router._limiter.Mailbox.attach`).
    """

    def __init__(
        self,
        client: SharedClient,
        provider: str,
        *,
        rpm: float | None,
        tpm: float | None,
        rpm_burst: float | None,
        tpm_burst: float | None,
        max_concurrency: int | None,
    ) -> None:
        self.client = client
        self.provider = provider
        # Microseconds per request / per token, and the bursts (capacities).
        self._rpm_interval = 60e6 / rpm if rpm else 0.0
        self._rpm_cap = float(rpm_burst or rpm or 0)
        self._tpm_interval = 60e6 / tpm if tpm else 0.0
        #: The TPM bucket's capacity: a request costing more is never admitted.
        self.tpm_cap = float(tpm_burst or tpm or 0)
        self._max_concurrency = max_concurrency or 0
        self._lease_us = int(client.config.lease_time * 1e6)
        tag = "{" + provider + "}"  # one hash slot per provider (Redis Cluster)
        self._keys = [
            client.key(tag, "rpm"),
            client.key(tag, "tpm"),
            client.key(tag, "leases"),
            client.key(tag, "pause"),
        ]
        self._admit = client.script("admit", prelude=("gcra",))
        self._pause = client.script("pause")
        self._renew = client.script("renew")
        self._batches = 0
        #: Leases this process holds (renewed each heartbeat).
        self.leases: set[str] = set()
        # Releases not yet sent: leases to free, tokens to reconcile, requests refunded.
        self._freed: list[str] = []
        self._tpm_delta = 0.0
        self._rpm_refund = 0
        self._pause_ms = 0
        #: When what is queued goes on its own (:meth:`run`): ``inf`` while nothing is
        #: queued (or an admission carried it), ``-inf`` for a pause (at once).  The
        #: run task sleeps in a cancel scope with this deadline, so an admission that
        #: carries the releases costs it no wake-up at all.
        self._due = math.inf
        self._wake: trio.CancelScope | None = None
        self._mailbox: Mailbox | None = None
        client.add_closer(self._flush)

    def __repr__(self) -> str:
        return f"<ProviderGate {self.provider!r} shared={self.client.shared}>"

    # -- the client's listener -------------------------------------------------------

    def attach(self, mailbox: Mailbox) -> None:
        """Serve ``mailbox``; from now on it hears of every switch."""
        self._mailbox = mailbox
        self.client.add_listener(self)

    def switched(self, shared: bool, processes: int) -> None:
        """Limits are now shared, or local at 1/``processes`` of each.

        What was queued for Redis stays queued (it goes with the next admission once
        Redis answers), and the leases held stay held and renewed: a short outage
        loses nothing.  What ends *during* the outage is not queued (see
        :meth:`release`).
        """
        if self._mailbox is not None:
            self._mailbox.share(shared, processes)
        if shared and (self._freed or self._tpm_delta or self._rpm_refund):
            self._arm(-math.inf)  # what was queued while Redis was away goes now

    async def heartbeat(self) -> None:
        """Renew this process's leases (their expiry moves to now + lease_time)."""
        if not self.leases:
            return
        try:
            await self.client.call(
                self._renew, [self._keys[2]], [self._lease_us, *sorted(self.leases)]
            )
        except SharedUnavailable:
            pass

    # -- admission ---------------------------------------------------------------------

    async def admit(self, costs: Sequence[float]) -> Decision | None:
        """Ask Redis to admit requests of ``costs`` (tokens) in order; ``None`` if Redis
        is unavailable (the client has switched to local limits)."""
        self._batches += 1
        base = f"{self.client.process_id}:{self._batches}:"
        args = self._release_args()
        args.append(len(costs))
        args.extend(math.ceil(c) for c in costs)
        try:
            reply = await self.client.call(self._admit, self._keys, self._head(base) + args)
        except BaseException as exc:
            # No answer (late past the bound, or the caller cancelled): the script may
            # still have run, taking leases nobody here knows of.  Free them, and the
            # leases this call was to free, with the next round trip (freeing a lease
            # that does not exist does nothing).
            self._lost(args, base, len(costs))
            if isinstance(exc, SharedUnavailable):
                return None
            raise
        try:
            values = array(reply, 4, "admit.lua's reply")
            granted = integer(values[0], "admit.lua's granted", 0, len(costs))
            hold = integer(values[1], "admit.lua's hold", 0, len(_HOLDS) - 1)
            retry_us = integer(values[2], "admit.lua's wait", 0)
        except MalformedReply as problem:
            # Not what admit.lua answers (a proxy, another server): as if Redis failed.
            # Leases it may have taken are freed with the next round trip.
            self._lost(args, base, len(costs))
            refuse(self.client, "admit", problem)
            return None
        leases: list[str] = []
        if self._max_concurrency:
            leases = [f"{base}{i}" for i in range(1, granted + 1)]
            self.leases.update(leases)
        return Decision(granted, _HOLDS[hold], retry_us / 1e6, leases)  # type: ignore[arg-type]

    def _head(self, lease_prefix: str) -> list[object]:
        return [
            self._rpm_interval,
            self._rpm_cap,
            self._tpm_interval,
            self.tpm_cap,
            self._max_concurrency,
            self._lease_us,
            lease_prefix,
        ]

    def _lost(self, args: Sequence[object], lease_prefix: str, n: int) -> None:
        """A round trip with release ``args`` (and ``n`` requests to admit under
        ``lease_prefix``) got no answer: queue its lease ids again.  Its TPM and RPM
        corrections are not: applied twice they would admit more than the limits."""
        freed = [str(a) for a in args[3 : 3 + int(str(args[2]))]]
        if self._max_concurrency and n:
            freed += [f"{lease_prefix}{i}" for i in range(1, n + 1)]
        if freed:
            self._freed.extend(freed)
            if self.client.shared:
                self._arm(trio.current_time() + RELEASE_LINGER)  # else when Redis is back

    def _release_args(self) -> list[object]:
        """The queued releases, as admit.lua's release arguments (the queue is emptied)."""
        freed = self._freed
        args: list[object] = [self._rpm_refund, self._tpm_delta, len(freed), *freed]
        self._freed = []
        self._rpm_refund = 0
        self._tpm_delta = 0.0
        if self._due != math.inf and not self._pause_ms:
            # Carried: the run task need not wake (its deadline goes back to never).
            self._due = math.inf
            if self._wake is not None:
                self._wake.deadline = math.inf
        return args

    def _arm(self, due: float) -> None:
        """Have :meth:`run` send what is queued by ``due`` at the latest."""
        if due < self._due:
            self._due = due
            if self._wake is not None:
                self._wake.deadline = due

    # -- releases ----------------------------------------------------------------------

    def release(self, lease: str, tokens: float) -> None:
        """A call ended: free ``lease`` (``""``: none) and charge ``tokens`` more TPM
        (negative: refund).  Queued; never waits.

        While limits are local only the lease is queued (it is freed when Redis is
        back, or expires after ``lease_time`` if Redis restarted); the tokens are not
        reconciled (docs/scaling.md).
        """
        if lease:
            self.leases.discard(lease)
            self._freed.append(lease)
        if not self.client.shared:
            return
        self._tpm_delta += tokens
        if self._due == math.inf:  # the first release queued: it lingers from now
            self._arm(trio.current_time() + RELEASE_LINGER)

    def undo(self, lease: str, cost: float) -> None:
        """A grant that was never used (its caller was cancelled in the same instant):
        refund the request and its tokens, free its lease."""
        if self.client.shared:
            self._rpm_refund += 1
        self.release(lease, -cost)

    def pause(self, seconds: float) -> None:
        """Pause the provider for every process for ``seconds`` (queued; never waits)."""
        if not self.client.shared or not seconds > 0:
            return
        self._pause_ms = max(self._pause_ms, math.ceil(seconds * 1000))
        self._arm(-math.inf)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Send queued releases and pauses as they come (until cancelled).

        Cancelled (the router closes), it sends what is still queued first — shielded,
        bounded by the client's ``timeout`` — so a lease freed as the router closes is
        freed for the other processes now, not ``lease_time`` later.  What is queued
        after it ended goes as the client closes (:meth:`_flush`, a closer).
        """
        task_status.started()
        try:
            while True:
                # Asleep until what is queued is due: an admission that carries it
                # first puts the deadline back to never (:meth:`_release_args`).
                with trio.CancelScope(deadline=self._due) as self._wake:
                    await trio.sleep_forever()
                self._wake = None
                await self._send()
        finally:
            await self._flush()

    async def _flush(self) -> None:
        """Send what is still queued now, shielded (bounded by the client): as
        :meth:`run` ends, and as the client closes (a closer: what was queued after
        :meth:`run` ended, such as an admission cancelled unanswered as the router
        closes, goes then)."""
        if self.client.shared and (
            self._freed or self._tpm_delta or self._rpm_refund or self._pause_ms
        ):
            with trio.CancelScope(shield=True):
                await self._send()

    async def _send(self) -> None:
        """Send the queued pause, then the queued releases (each bounded by the client).

        While limits are local nothing is taken off the queue (nothing could be sent,
        so nothing is lost): the releases go once Redis answers again (:meth:`switched`);
        a pause, relative to when it was asked for, is dropped.
        """
        pause = self._pause_ms
        self._pause_ms = 0
        self._due = math.inf  # all that is queued goes now (or stays, while local)
        if not self.client.shared:
            return
        try:
            if pause:
                await self.client.call(self._pause, [self._keys[3]], [pause])
            if self._freed or self._tpm_delta or self._rpm_refund:
                args = self._release_args()
                args.append(0)
                try:
                    await self.client.call(self._admit, self._keys, self._head("") + args)
                except BaseException:
                    self._lost(args, "", 0)
                    raise
        except SharedUnavailable:
            pass
