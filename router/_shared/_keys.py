"""Gateway keys' limits shared through Redis: each key's RPM/TPM and spend cap bind
every gateway worker together, as a provider's limits do.

For each ``[gateway.keys.NAME]`` with an ``rpm``, a ``tpm`` or a ``spend_cap``, the
router (when ``[shared]`` is set) makes a :class:`SharedKeyLimits` next to its
providers' gates, and runs its tasks in its own nursery:

- **rpm/tpm**: a :class:`~router._shared._limits.ProviderGate` named ``gwkey:NAME``
  (keys ``prefix:{gwkey:NAME}:rpm`` / ``:tpm``): ``admit.lua``, the same GCRA, one
  round trip per request, RPM and TPM taken together or not at all.  A key refuses
  rather than queues (a 429 with the wait Redis computed), so there is no mailbox:
  the gateway asks :meth:`SharedKeyLimits.admit` and reconciles the tokens with
  :meth:`SharedKeyLimits.release` when the answer reports its usage.
- **spend cap**: a :class:`~router._shared._budgets.SharedBudget` under the router's
  shared budgets (one task, one script, the router's own caps' guarantee: the workers
  together never cross it while answers cost no more than they reserved).  A key
  without ``spend_period`` has one window that never resets (not one per process).

While Redis does not answer, the key's local buckets decide at the process's fair share
(the gateway resizes them on :meth:`~router._shared._client.Listener.switched`), and
the cap's fair share is the shared budget's own fallback.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import trio

from .._budget import Budget, period_seconds
from ..config import GatewayKeyConfig
from ._budgets import SharedBudget, SharedBudgets
from ._client import SharedClient
from ._limits import Decision, ProviderGate

__all__ = ["SharedKeyLimits", "share_key_limits"]

#: The window of a cap without ``spend_period``, shared: a century (never resets).
FOREVER = 100 * 365.25 * 86400.0


class SharedKeyLimits:
    """One gateway key's shared limits: its GCRA gate and its shared spend cap."""

    __slots__ = ("budget", "config", "gate", "name")

    def __init__(
        self,
        name: str,
        config: GatewayKeyConfig,
        gate: ProviderGate | None,
        budget: SharedBudget | None,
    ) -> None:
        self.name = name
        self.config = config
        self.gate = gate
        self.budget = budget

    def __repr__(self) -> str:
        return f"<SharedKeyLimits gateway key {self.name!r}>"

    @property
    def shared(self) -> bool:
        """Whether Redis decides now (else the fair-share local limits do)."""
        return self.gate is not None and self.gate.client.shared

    async def admit(self, tokens: float) -> Decision | None:
        """Take one request and ``tokens`` (0 without a tpm) from the shared buckets;
        ``None`` when Redis does not answer (the local fair share decides).  The round
        trip is shielded from the caller's cancellation (bounded by the client's
        ``timeout``), so its outcome is always known."""
        assert self.gate is not None
        # Shielded (bounded by the client's timeout): a caller cancelled while the
        # script runs would not know whether it was granted; the caller gives a grant
        # back when it finds itself cancelled.
        with trio.CancelScope(shield=True):
            decision = await self.gate.admit([tokens])
        return decision

    def undo(self, tokens: float) -> None:
        """Give back a grant whose request was then refused (queued; never waits)."""
        if self.gate is not None:
            self.gate.undo("", tokens)

    def release(self, delta: float) -> None:
        """Charge ``delta`` tokens more (negative: refund): the reported usage against
        the estimate taken at admission (queued; never waits)."""
        if self.gate is not None and delta:
            self.gate.release("", delta)

    async def reserve(self, amount: float) -> bool:
        """Reserve ``amount`` dollars under the shared cap (or its fair share while
        Redis does not answer): whether it fits."""
        assert self.budget is not None
        return await self.budget._owner.reserve([self.budget], amount) is None


def share_key_limits(
    client: SharedClient,
    keys: Mapping[str, GatewayKeyConfig],
    budgets: SharedBudgets | None,
    now: float,
) -> tuple[dict[str, SharedKeyLimits], list[ProviderGate], SharedBudgets | None]:
    """The shared limits of every key that has one; the gates whose task must run; the
    budgets' owner (``budgets``, or a new one when a key has a cap and the router had
    none; its task must run then)."""
    found: dict[str, SharedKeyLimits] = {}
    gates: list[ProviderGate] = []
    owner = budgets
    for name, key in keys.items():
        gate = None
        if key.rpm is not None or key.tpm is not None:
            gate = ProviderGate(
                client,
                f"gwkey:{name}",
                rpm=key.rpm,
                tpm=key.tpm,
                rpm_burst=key.rpm_burst,
                tpm_burst=key.tpm_burst,
                max_concurrency=None,
            )
            gates.append(gate)
        budget = None
        if key.spend_cap is not None:
            if owner is None:
                owner = SharedBudgets(client, [])
                client.add_listener(owner)
            period = FOREVER if key.spend_period is None else period_seconds(key.spend_period)
            scope = f"gateway key {name!r}"
            local = Budget(scope, limit=key.spend_cap, period=period, start=now)
            budget = SharedBudget(owner, client.key("{budgets}", f"gwkey:{name}"), local)
            owner.budgets.append(budget)
        if gate is not None or budget is not None:
            found[name] = SharedKeyLimits(name, key, gate, budget)
    assert all(math.isfinite(b.period) for b in (owner.budgets if owner else ()))
    return found, gates, owner
