"""One provider's circuit breaker, shared by every process through Redis.

Each process keeps its own :class:`~router._health.CircuitBreaker` (the window of
outcomes, the trip count, the backoff): evidence stays local, decisions are shared.
:class:`SharedBreaker` is that breaker plus three things, all off the hot path:

- **Opening is published.**  When the breaker opens here (its own evidence, a failed
  probe, ``force_open``), its open-until goes to a record in Redis (a hash per provider:
  ``seq``, ``state``, ``until`` on Redis's clock, ``origin``, ``trips``), sent by the
  breaker's own task at once; a later open never shortens a longer one already there.
- **The record is read** by that task every ``breaker_sync`` seconds (and with every
  publication).  A decision of another process that this one has not applied yet (each
  write has a new ``seq``) is applied: an open becomes ``force_open`` for the time left
  on Redis's clock, measured from now on this process's clock; a close (the cluster's
  probes succeeded) closes a breaker that is open or half-open here.
- **Half-open probes are limited cluster-wide.**  A call the local breaker admits as a
  probe must also take a token (``probe.lua``: a sorted set of tokens with expiry, at
  most ``half_open_probes`` minus the probes that already succeeded, none while the
  record holds another process's open that has not ended); without one it is refused
  as if every local slot were taken.  Each probe's outcome goes back with the next
  publication: ``half_open_probes`` successes,
  counted in Redis across the processes, close the record — and so every breaker.  A
  failed probe reopens the local breaker, which publishes the open.

What is still queued when the router closes (an open, probe tokens given back) goes as
the task ends or, queued after that, as the client closes (:meth:`SharedBreaker._flush`
is one of its closers): a token given back then frees the others' probes at once, not
``lease_time`` later, and an open decided then reaches them.

The bound, derived: an open at ``t0`` in process A is written by ``t0 + timeout`` (one
bounded call; A's task wakes at once).  Process B reads every ``breaker_sync`` seconds
after its previous read ended, each read taking at most ``timeout``; the first read that
starts after the write ends by ``write + breaker_sync + 2·timeout``.  So B's breaker is
open by ``t0 + breaker_sync + 3·timeout`` (0.65 s with the defaults).  While Redis does
not answer, nothing is published or read: each breaker is local, as without
``[shared]``, and a decision made then is not sent later.

Cost: none per request while the breaker is closed (the probe check is one attribute
test); one round trip per half-open probe; one script per provider per ``breaker_sync``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import trio

from providers import Overloaded

from .._events import BreakerShared
from .._health import BreakerConfig, CircuitBreaker
from ._client import SharedClient, SharedUnavailable
from ._replies import MalformedReply, array, integer, refuse, text

if TYPE_CHECKING:
    from .._actor import ProviderActor

__all__ = ["SharedBreaker"]

#: The longest open published (a ``force_open(inf)`` is published as this long;
#: breaker_record.lua's LONGEST).
_LONGEST_OPEN = 86400.0

#: A record: seq, open, remaining (us), origin (process id), trips.
_Record = tuple[int, bool, int, str, int]


def _read_record(values: Sequence[object], script: str) -> _Record:
    """A record as breaker_record.lua returns it; :class:`MalformedReply` if it is not."""
    seq, is_open, remaining, origin, trips = array(values, 5, script)
    return (
        integer(seq, f"{script} seq", 0),
        integer(is_open, f"{script} open", 0, 1) == 1,
        integer(remaining, f"{script} remaining", 0, int(_LONGEST_OPEN * 1e6)),
        text(origin, f"{script} origin"),
        integer(trips, f"{script} trips", 0),
    )


class SharedBreaker(CircuitBreaker):
    """A :class:`~router._health.CircuitBreaker` whose decisions every process shares.

    Made by the router for each provider when ``[shared]`` is configured; it replaces
    the actor's breaker before the actor starts (:meth:`install`).
    """

    __slots__ = (
        "_applying",
        "_client",
        "_done",
        "_keys",
        "_on_applied",
        "_on_event",
        "_open_end",
        "_open_trips",
        "_probe",
        "_provider",
        "_seen",
        "_sync",
        "_taken",
        "_token_us",
        "_tokens",
        "_untokened",
        "_wake",
        "origin",
    )

    def __init__(
        self,
        client: SharedClient,
        provider: str,
        config: BreakerConfig,
        *,
        on_transition: Callable[[str, str, float], None] | None = None,
        on_event: Callable[[BreakerShared], None] | None = None,
        on_applied: Callable[[], object] | None = None,
    ) -> None:
        super().__init__(config, on_transition=on_transition)
        self._client = client
        self._provider = provider
        tag = "{" + provider + "}"  # the provider's hash slot, as its limits'
        self._keys = [client.key(tag, "breaker"), client.key(tag, "probes")]
        self._sync = self._client.script("breaker", prelude=("breaker_record",))
        self._probe = self._client.script("probe", prelude=("breaker_record",))
        self._token_us = int(client.config.lease_time * 1e6)
        self._on_event = on_event
        self._on_applied = on_applied
        self._applying = False
        #: The highest record ``seq`` applied (or seen as this process's own).
        self._seen = 0
        # News not yet published: an open (its end, trio time; -inf: none) with its
        # trips, probe outcomes.
        self._open_end = -math.inf
        self._open_trips = 0
        self._done: list[tuple[str, str]] = []
        #: Probe tokens this process holds (renewed with each read).
        self._tokens: list[str] = []
        #: Local probe slots granted by ``allow`` and not yet given a token.
        self._untokened = 0
        self._taken = 0
        self._wake = trio.Event()
        #: The process whose decision set the current state, when it was another one.
        self.origin: str | None = None
        client.add_closer(self._flush)

    @classmethod
    def install(
        cls,
        client: SharedClient,
        actor: ProviderActor,
        on_event: Callable[[BreakerShared], None] | None,
    ) -> SharedBreaker:
        """Replace ``actor``'s (fresh) breaker with a shared one; return it."""

        def applied() -> None:
            actor._breaker_changed.set()  # its watcher re-reads retry_at
            actor.refresh_health()

        breaker = cls(
            client,
            actor.name,
            actor.breaker.config,
            on_transition=actor._breaker_moved,
            on_event=on_event,
            on_applied=applied,
        )
        actor.breaker = breaker
        actor._probe_gate = breaker
        return breaker

    def __repr__(self) -> str:
        return f"<SharedBreaker {self._provider!r} {self._state} trips={self._trips}>"

    # -- the local breaker, with its news queued -----------------------------------------

    def allow(self, now: float) -> bool:
        allowed = super().allow(now)
        if allowed and self._state == "half_open":
            self._untokened += 1
        return allowed

    def record_success(self, now: float, latency: float | None = None) -> None:
        super().record_success(now, latency)
        if self._tokens:
            self._settle_tokens("1")

    def record_failure(self, now: float) -> None:
        super().record_failure(now)
        if self._tokens:
            self._settle_tokens("0")

    def record_cancelled(self, now: float) -> None:
        super().record_cancelled(now)
        if self._tokens:
            self._settle_tokens("0")

    def _settle_tokens(self, outcome: str) -> None:
        """Give back the tokens no local probe holds any more (the breaker counts
        outcomes, not calls: any token will do), with the outcome that freed them."""
        keep = self._in_flight if self._state == "half_open" else 0
        while len(self._tokens) > keep:
            self._done.append((self._tokens.pop(), outcome))
            self._wake.set()

    def _notify(self, old: str, new: str, at: float) -> None:
        if not self._applying:
            self.origin = None
            if new == "open":
                # Published as the time left when it is sent (the local end is the
                # authority; Redis's copy ends at most a round trip later).
                self._open_end = max(self._open_end, min(self._open_until, at + _LONGEST_OPEN))
                self._open_trips = self._trips
                self._wake.set()
        if new != "half_open":
            self._untokened = 0
        super()._notify(old, new, at)

    # -- half-open probes ---------------------------------------------------------------

    async def take_probe(self) -> None:
        """The call just admitted as a local probe takes a cluster-wide token too, or is
        refused (:class:`~providers.Overloaded`, not retryable, its slot freed).  With
        Redis unavailable the local decision stands."""
        if not self._untokened:
            return
        self._untokened -= 1
        self._taken += 1
        token = f"{self._client.process_id}:{self._taken}"
        try:
            reply = await self._client.call(
                self._probe,
                self._keys,
                [token, self._config.half_open_probes, self._token_us, self._client.process_id],
            )
        except SharedUnavailable:
            return
        except BaseException:
            # Cancelled: the token may have been taken; give it back with no verdict.
            self._done.append((token, "0"))
            self._wake.set()
            CircuitBreaker.record_cancelled(self, trio.current_time())
            raise
        try:
            values = array(reply, 6, "probe.lua")
            granted = integer(values[0], "probe.lua granted", 0, 1)
            record = _read_record(values[1:], "probe.lua")
        except MalformedReply as exc:
            refuse(self._client, "probe", exc)
            return  # as when Redis fails: the local decision stands
        if granted:
            self._tokens.append(token)
            return
        now = trio.current_time()
        CircuitBreaker.record_cancelled(self, now)
        self._apply(record)
        raise Overloaded(
            "circuit breaker half-open: every probe slot across the processes sharing "
            "this provider is taken; not sent",
            provider=self._provider,
            retryable=False,
        )

    # -- the breaker's own task ---------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Publish news at once, read the record every ``breaker_sync`` (until cancelled).

        Cancelled (the router closes), it sends what is still queued first (:meth:`_flush`);
        what is queued after it ended goes as the client closes (the same, a closer).
        """
        task_status.started()
        interval = self._client.config.breaker_sync
        try:
            while True:
                with trio.move_on_after(interval):
                    await self._wake.wait()
                self._wake = trio.Event()
                if not self._client.shared:
                    self._drop()
                    continue
                with trio.CancelScope(shield=True):  # bounded by the client; news not lost
                    await self.sync()
        finally:
            await self._flush()

    async def _flush(self) -> None:
        """Send the news still queued now, shielded (bounded by the client): as
        :meth:`run` ends, and as the client closes (a closer: a probe token given back,
        or an open decided, after :meth:`run` ended goes then)."""
        if not self._client.shared:
            self._drop()
        elif self._open_end > -math.inf or self._done:
            with trio.CancelScope(shield=True):
                await self.sync()

    def _drop(self) -> None:
        """Not sent later: a decision made while Redis fails stays local."""
        self._open_end = -math.inf
        self._done.clear()

    async def sync(self) -> None:
        """One round trip: the queued news out, the record in (and applied)."""
        open_end, trips, done = self._open_end, self._open_trips, self._done
        self._open_end = -math.inf
        self._done = []
        left = open_end - trio.current_time()
        open_us = math.ceil(left * 1e6) if left > 0 else 0
        args: list[Any] = [
            self._client.process_id,
            open_us,
            trips,
            self._config.half_open_probes,
            self._token_us,
            len(done),
        ]
        for token, outcome in done:
            args += (token, outcome)
        args += self._tokens
        try:
            reply = await self._client.call(self._sync, self._keys, args)
            record = _read_record(reply, "breaker.lua")
        except SharedUnavailable:
            return
        except MalformedReply as exc:
            refuse(self._client, "breaker", exc)
            return  # as when Redis fails: the news is not sent again
        self._apply(record)

    def _apply(self, record: _Record) -> None:
        """Apply another process's decision that is newer than any applied here."""
        seq, is_open, remaining_us, origin, _trips = record
        if seq <= self._seen or self._open_end > -math.inf or self._done:
            # Nothing new; or this process has news on its way that is newer still
            # (the next read brings the record after it).
            return
        self._seen = seq
        mine = origin == self._client.process_id
        now = trio.current_time()
        before = (self._state, self.retry_at)
        self._applying = True
        try:
            if is_open:
                if mine or remaining_us <= 0:
                    return
                self.force_open(now, remaining_us / 1e6)
                if (self._state, self.retry_at) != before:
                    self.origin = origin
            elif self.state(now) != "closed":
                self._tokens.clear()
                self.reset(now)
                self.origin = None if mine else origin
        finally:
            self._applying = False
        if (self._state, self.retry_at) == before:
            return
        if self._on_event is not None:
            self._on_event(
                BreakerShared(
                    time=now,
                    provider=self._provider,
                    state="open" if self._state == "open" else "closed",
                    open_until=self.retry_at,
                    origin=origin,
                )
            )
        if self._on_applied is not None:
            self._on_applied()
