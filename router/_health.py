"""Provider health math: a circuit breaker, latency statistics, an error window, a verdict.

Every provider actor owns one of each of these and feeds them the outcome of every call;
the router publishes the resulting :class:`HealthSnapshot` and its policies route around
providers that are not healthy.

=======================  ==============================================================
:class:`CircuitBreaker`  closed → open → half-open → closed: stop sending to a provider
                         that keeps failing, then probe it back into service
:class:`LatencyStats`    EWMA and windowed percentiles (p50, p95...) of call latency
:class:`ErrorWindow`     successes and failures by error class over a sliding window
:func:`classify`         breaker + latency + error rate → healthy / degraded / unhealthy
=======================  ==============================================================

Everything here is pure, synchronous and cheap enough to run on every call: no I/O, no
clock reads (``now``, seconds on trio's clock, is an argument of every method that needs
time), no randomness, O(1) work per update and O(buckets) per query, and no allocation
that grows with traffic.

Time is taken to be monotonic: a ``now`` earlier than one already seen is treated as the
latest one seen, so an outcome reported with a slightly stale timestamp lands in the
current bucket instead of corrupting the ring.

Synopsis::

    breaker = CircuitBreaker(BreakerConfig(minimum_calls=20))
    latency = LatencyStats()
    errors = ErrorWindow()

    if breaker.allow(now):              # in the actor, before each call
        ...                             # the call; then exactly one of:
        breaker.record_success(now, latency=elapsed)
        breaker.record_failure(now)     # only for errors about the provider's health
        breaker.record_cancelled(now)   # cancelled, or an error that says nothing

    health = classify(
        "openai",
        breaker.snapshot(now),
        latency.snapshot(now),
        errors.error_rate(now),
        degraded_latency=5.0,
    )
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Iterator
from typing import Literal, TypeAlias, TypeGuard

import msgspec

__all__ = [
    "BreakerConfig",
    "BreakerSnapshot",
    "BreakerState",
    "CircuitBreaker",
    "ErrorWindow",
    "HealthSnapshot",
    "HealthStatus",
    "LatencySnapshot",
    "LatencyStats",
    "classify",
]

#: The three states of a :class:`CircuitBreaker`.
BreakerState: TypeAlias = Literal["closed", "open", "half_open"]
#: The verdict of :func:`classify`.
HealthStatus: TypeAlias = Literal["healthy", "degraded", "unhealthy"]

# Per-second buckets over a window of up to an hour: 3,600 slots is the most a ring may
# hold.  Longer windows are not health signals any more; they are reporting.
_MAX_WINDOW = 3600.0


class _Struct(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of this module's records: immutable, keyword-only, strict about unknown fields."""


def _is_number(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


# --------------------------------------------------------------------------- the ring


class _Ring(abc.ABC):
    """A ring of ``n`` time buckets covering ``window`` seconds, evicted lazily.

    Bucket ``e`` (its *epoch*) covers ``[e·w, (e+1)·w)`` with ``w = window / n``.  At time
    ``now`` the ring holds epochs ``floor(now/w) - n + 1 .. floor(now/w)``, so something
    recorded at ``t`` counts until ``(floor(t/w) + n)·w``: for between ``window - w`` and
    ``window`` seconds.

    Why lazy, subtract-on-evict (as resilience4j's time-based window): a subclass keeps
    running totals next to the buckets; moving the clock forward clears only the buckets
    that fell out, subtracting each from the totals.  An update is O(1) amortised, a
    query reads the totals, and nothing runs while nothing happens (no timer task).
    """

    __slots__ = ("_head", "_last_slot", "_n", "_valid_from", "_valid_until", "_width")

    def __init__(self, window: float, n: int) -> None:
        self._n = n
        self._width = window / n
        self._head: int | None = None  # the newest epoch seen
        # The last answer of _slot and the times it holds for: from the instant it was
        # computed to the end of the head bucket, the ring cannot move (a call's
        # bookkeeping asks several times, thousands of calls a second ask within one
        # bucket).
        self._valid_from = math.inf
        self._valid_until = -math.inf
        self._last_slot = 0

    def _slot(self, now: float) -> int:
        """Move the ring to ``now``, evicting what fell out; the index of now's bucket."""
        if self._valid_from <= now < self._valid_until:
            return self._last_slot
        slot = self._move(now)
        head = self._head
        assert head is not None
        self._valid_from = now
        self._valid_until = self._epoch_end(head)
        self._last_slot = slot
        return slot

    def _epoch_end(self, epoch: int) -> float:
        """The first time whose epoch, ``floor(t / w)``, is past ``epoch``.

        ``(epoch + 1)·w`` give or take a few ulps: the product and the division round
        separately, and the cache must agree with ``floor(t / w)`` to the last bit
        (division is monotonic, so the boundary is one number).
        """
        width = self._width
        end = (epoch + 1) * width
        while math.floor(end / width) <= epoch:
            end = math.nextafter(end, math.inf)
        while math.floor(math.nextafter(end, -math.inf) / width) > epoch:
            end = math.nextafter(end, -math.inf)
        return end

    def _move(self, now: float) -> int:
        epoch = math.floor(now / self._width)
        head = self._head
        if head is None:
            self._head = epoch
        elif epoch > head:
            for e in range(head + 1, head + 1 + min(epoch - head, self._n)):
                self._evict(e % self._n)
            self._head = epoch
        else:
            epoch = head  # time never goes backwards: a stale now is the latest one seen
        return epoch % self._n

    @abc.abstractmethod
    def _evict(self, slot: int) -> None:
        """Subtract bucket ``slot`` from the running totals and clear it."""

    def _clear(self) -> None:
        """Forget everything: O(n), for rare events such as the breaker closing."""
        for slot in range(self._n):
            self._evict(slot)
        self._head = None
        self._valid_from = math.inf
        self._valid_until = -math.inf


def _check_window(window: object, name: str = "window") -> float:
    if not _is_number(window) or not 0 < window <= _MAX_WINDOW:
        raise ValueError(f"{name} must be a number of seconds in (0, 3600], got {window!r}")
    return float(window)


def _second_buckets(window: float) -> int:
    # One bucket per second: a whole-second window gets buckets exactly 1 s wide.
    return max(1, math.ceil(window))


class _CallWindow(_Ring):
    """Calls and failures over a sliding window, for the breaker's failure rate."""

    __slots__ = ("_call_buckets", "_calls", "_fail_buckets", "_failures")

    def __init__(self, window: float) -> None:
        n = _second_buckets(window)
        super().__init__(window, n)
        self._call_buckets = [0] * n
        self._fail_buckets = [0] * n
        self._calls = 0
        self._failures = 0

    def _evict(self, slot: int) -> None:
        self._calls -= self._call_buckets[slot]
        self._failures -= self._fail_buckets[slot]
        self._call_buckets[slot] = 0
        self._fail_buckets[slot] = 0

    def add(self, now: float, failed: bool) -> None:
        slot = self._slot(now)
        self._call_buckets[slot] += 1
        self._calls += 1
        if failed:
            self._fail_buckets[slot] += 1
            self._failures += 1

    def totals(self, now: float) -> tuple[int, int]:
        self._slot(now)
        return self._calls, self._failures

    @property
    def has_failures(self) -> bool:
        """Whether any failure may still be in the window (eviction only lowers it)."""
        return self._failures > 0


def _rate(failures: int, calls: int) -> float:
    return failures / calls if calls else 0.0


# --------------------------------------------------------------------------- breaker


class BreakerConfig(_Struct, frozen=True):
    """How a :class:`CircuitBreaker` trips, waits and recovers.

    ==========================  =======  =================================================
    ``failure_rate_threshold``  0.5      trip when failures / calls ≥ this, in (0, 1]
    ``minimum_calls``           10       ... and at least this many calls are in the window
    ``window``                  30.0 s   sliding window, in per-second buckets
    ``open_duration``           5.0 s    how long the first trip stays open
    ``open_backoff_multiplier`` 2.0      each consecutive trip stays open this much longer
    ``max_open_duration``       120.0 s  ... up to this
    ``half_open_probes``        3        probes needed to close (and most in flight)
    ``slow_call_threshold``     None     a success slower than this (s) counts as failure
    ==========================  =======  =================================================

    The window holds the calls that *completed* in roughly the last ``window`` seconds: an
    outcome recorded at ``t`` counts until ``floor(t) + window`` for a whole-second window
    (see :class:`ErrorWindow`).  The breaker trips from closed when, right after recording
    an outcome::

        calls ≥ minimum_calls  and  failures / calls ≥ failure_rate_threshold

    The ``k``-th consecutive trip (``k = 1`` from closed, ``k + 1`` each time a half-open
    probe fails) stays open for::

        d(k) = min(open_duration · open_backoff_multiplier^(k-1), max_open_duration)
             = 5, 10, 20, 40, 80, 120, 120, ... s by default

    and ``k`` goes back to 0 when the breaker closes.  Defaults follow Polly v8 (30 s
    sampling, 5 s break) with resilience4j's 50% threshold, scaled to an LLM provider's
    traffic: ten calls are enough evidence, and a provider that is still down after a
    probe is left alone for twice as long.

    Example::

        config = BreakerConfig(minimum_calls=20, slow_call_threshold=30.0)

    Building one never raises: ``open_router`` and ``load_config`` validate it, and an
    out-of-range field is a ``ConfigError`` at its path
    (``$.providers.openai.breaker.window``).
    """

    failure_rate_threshold: float = 0.5
    minimum_calls: int = 10
    window: float = 30.0
    open_duration: float = 5.0
    open_backoff_multiplier: float = 2.0
    max_open_duration: float = 120.0
    half_open_probes: int = 3
    slow_call_threshold: float | None = None

    def _problems(self) -> Iterator[tuple[tuple[str | int, ...], str]]:
        """Out-of-range fields, as ``((field,), message)`` (see router._validation):
        building a config never raises; ``open_router`` and ``load_config`` report
        these as a ConfigError at the field's path."""
        rate = self.failure_rate_threshold
        if not 0 < rate <= 1:
            yield ("failure_rate_threshold",), f"must be in (0, 1], got {rate!r}"
        if self.minimum_calls < 1:
            yield ("minimum_calls",), f"must be an integer ≥ 1, got {self.minimum_calls!r}"
        if not 0 < self.window <= _MAX_WINDOW:
            yield ("window",), f"must be a number of seconds in (0, 3600], got {self.window!r}"
        for name in ("open_duration", "max_open_duration"):
            value = getattr(self, name)
            if not 0 < value < math.inf:
                yield (name,), f"must be a positive number of seconds, got {value!r}"
        if self.max_open_duration < self.open_duration:
            yield (
                ("max_open_duration",),
                f"must be ≥ open_duration ({self.open_duration!r}), got {self.max_open_duration!r}",
            )
        mult = self.open_backoff_multiplier
        if not 1 <= mult < math.inf:
            yield ("open_backoff_multiplier",), f"must be ≥ 1, got {mult!r}"
        if self.half_open_probes < 1:
            yield ("half_open_probes",), f"must be an integer ≥ 1, got {self.half_open_probes!r}"
        slow = self.slow_call_threshold
        if slow is not None and not 0 < slow < math.inf:
            yield ("slow_call_threshold",), f"must be positive seconds, got {slow!r}"


class BreakerSnapshot(_Struct, frozen=True):
    """A frozen view of a :class:`CircuitBreaker` at one moment.

    Attributes:
        state: ``"closed"``, ``"open"`` or ``"half_open"``.
        failure_rate: ``failures / calls`` over the window, 0.0 when there are no calls.
        calls: outcomes recorded over the window (they are recorded only while closed;
            the window starts empty each time the breaker closes).
        failures: how many of them were failures (slow successes included).
        consecutive_trips: trips since the breaker last closed (0 while closed).
        open_until: when an open breaker admits its first probe; ``None`` unless open.
            ``math.inf`` after :meth:`CircuitBreaker.force_open` with an infinite duration.
        probes_in_flight: half-open probes admitted and not yet reported.

    Example::

        snap = breaker.snapshot(now)
        if snap.state == "open":
            print(f"back at t={snap.open_until}")
    """

    state: BreakerState
    failure_rate: float = 0.0
    calls: int = 0
    failures: int = 0
    consecutive_trips: int = 0
    open_until: float | None = None
    probes_in_flight: int = 0


class CircuitBreaker:
    """A circuit breaker over a time-based sliding window, with backoff between trips.

    =============  ==========================  ============================================
    state          :meth:`allow`               leaves when
    =============  ==========================  ============================================
    closed         always                      an outcome makes calls ≥ minimum_calls and
                                               failure rate ≥ threshold → open
    open           never                       ``now ≥ retry_at`` → half-open (lazily, on
                                               the next call that passes ``now``)
    half-open      while ``in_flight +         ``half_open_probes`` probes succeed →
                   successes < probes``        closed; any probe fails → open, longer
    =============  ==========================  ============================================

    Half-open semantics: the breaker needs ``half_open_probes`` successful probes with no
    failure in between, and never admits more probes than it still needs
    (``probes_in_flight + probe_successes < half_open_probes``), so at most
    ``half_open_probes`` are ever in flight and none is wasted.  One probe failure (or a
    slow success) reopens at once, for ``d(k+1)`` (see :class:`BreakerConfig`).  A
    cancelled probe frees its slot for another.

    The caller reports exactly one outcome for every :meth:`allow` that returned True:

    * :meth:`record_failure` only for errors that say something about the provider's
      health.  Deciding which is the actor's job, not the breaker's; in the error tree
      of :mod:`providers` the natural ones are ``ServerError``, ``Overloaded``,
      ``Timeout``, ``ConnectionFailed``, ``ProtocolError`` and ``StreamInterrupted``.
    * :meth:`record_cancelled` for a call cancelled by its caller (a hedge that lost, a
      deadline) *and* for an error that says nothing about the provider's health
      (``InvalidRequest`` and its subclasses, ``ContentFiltered``; a ``RateLimited`` the
      actor's token buckets already account for): like resilience4j's ignored
      exceptions, it frees a probe slot and counts neither way.
    * :meth:`record_success` otherwise, with the latency if slow calls should count.

    The breaker counts outcomes, not call identities.  While open it ignores outcomes
    (calls admitted before it tripped); while half-open an outcome is taken as a probe's
    (a late success or failure is fresh evidence too) and ignored if no probe is in
    flight.  So the probe limit holds for the calls the breaker has admitted and not
    heard back from; a late outcome of a call admitted before the trip can free a slot
    while a real probe still runs.  The window records outcomes only while closed and
    starts empty each time the breaker closes, so the failures that tripped it cannot
    trip it again.

    Args:
        config: the thresholds and durations; ``BreakerConfig()`` if omitted.
        on_transition: called as ``on_transition(old, new, t)`` after every state
            change, with ``t`` the time it took effect (for the lazy open → half-open,
            the ``retry_at`` it reached, which may be earlier than the ``now`` that
            noticed).  The breaker's state is consistent when it runs; what it raises
            propagates to the caller.  May be set later as the ``on_transition``
            attribute.

    Example::

        events = []
        breaker = CircuitBreaker(
            BreakerConfig(minimum_calls=2, open_duration=5.0, half_open_probes=1),
            on_transition=lambda old, new, t: events.append((old, new, t)),
        )
        breaker.record_failure(10.0)          # 1 call: below minimum_calls
        breaker.record_failure(10.5)          # 2 calls, 100% failures: open until 15.5
        assert breaker.allow(15.4) is False
        assert breaker.allow(15.5) is True    # the one probe
        assert breaker.allow(15.5) is False   # ... and only one
        breaker.record_success(15.7)          # closes
        assert events == [("closed", "open", 10.5), ("open", "half_open", 15.5),
                          ("half_open", "closed", 15.7)]
    """

    __slots__ = (
        "_config",
        "_duration",
        "_in_flight",
        "_open_until",
        "_probe_successes",
        "_state",
        "_trips",
        "_window",
        "on_transition",
    )

    def __init__(
        self,
        config: BreakerConfig | None = None,
        *,
        on_transition: Callable[[str, str, float], None] | None = None,
    ) -> None:
        self._config = config if config is not None else BreakerConfig()
        self.on_transition = on_transition
        self._state: BreakerState = "closed"
        self._window = _CallWindow(self._config.window)
        self._trips = 0
        self._duration = 0.0  # how long the current trip stays open
        self._open_until = 0.0  # meaningful only while open
        self._in_flight = 0  # half-open probes admitted, not reported
        self._probe_successes = 0

    @property
    def config(self) -> BreakerConfig:
        """The configuration this breaker was built with."""
        return self._config

    @property
    def retry_at(self) -> float | None:
        """When an open breaker admits its next probe; ``None`` unless open.

        It is not moved by reading it: if it is already past, the next call given a
        ``now`` (``allow``, ``state``, ...) turns the breaker half-open.
        """
        return self._open_until if self._state == "open" else None

    # -- queries

    def state(self, now: float) -> BreakerState:
        """The state at ``now``, after applying a due open → half-open transition."""
        if self._state == "open":
            self._tick(now)
        return self._state

    def snapshot(self, now: float) -> BreakerSnapshot:
        """A frozen view at ``now``: state, failure rate over the window, trips, deadline."""
        self._tick(now)
        calls, failures = self._window.totals(now)
        return BreakerSnapshot(
            state=self._state,
            failure_rate=_rate(failures, calls),
            calls=calls,
            failures=failures,
            consecutive_trips=self._trips,
            open_until=self._open_until if self._state == "open" else None,
            probes_in_flight=self._in_flight,
        )

    # -- the call protocol

    def allow(self, now: float) -> bool:
        """May a call start at ``now``?  If so, exactly one ``record_*`` must follow.

        Closed: yes.  Open: no, until ``retry_at``.  Half-open: yes while
        ``probes_in_flight + probe_successes < half_open_probes`` (the call is a probe).
        """
        if self._state == "closed":  # the hot path: no window work at all
            return True
        self._tick(now)
        if (
            self._state == "half_open"
            and self._in_flight + self._probe_successes < self._config.half_open_probes
        ):
            self._in_flight += 1
            return True
        return False  # open (_tick never closes)

    def would_allow(self, now: float) -> bool:
        """Whether :meth:`allow` would say yes at ``now``, without taking a probe slot."""
        if self._state == "closed":
            return True
        self._tick(now)
        return (
            self._state == "half_open"
            and self._in_flight + self._probe_successes < self._config.half_open_probes
        )

    def record_success(self, now: float, latency: float | None = None) -> None:
        """A call admitted by :meth:`allow` succeeded, ``latency`` seconds after it began.

        With ``slow_call_threshold`` set, a success with ``latency > slow_call_threshold``
        counts as a failure (in the window, and as a failed probe when half-open).
        """
        slow = self._config.slow_call_threshold
        if slow is not None and latency is not None and latency > slow:
            self.record_failure(now)
            return
        if self._state == "open":
            self._tick(now)
        if self._state == "closed":
            window = self._window
            window.add(now, failed=False)
            if window.has_failures:  # with none in the window the rate is 0: no trip
                self._maybe_trip(now)
        elif self._state == "half_open" and self._in_flight:
            self._in_flight -= 1
            self._probe_successes += 1
            if self._probe_successes >= self._config.half_open_probes:
                self._close(now)

    def record_failure(self, now: float) -> None:
        """A call admitted by :meth:`allow` failed in a way that reflects on the provider."""
        self._tick(now)
        if self._state == "closed":
            self._window.add(now, failed=True)
            self._maybe_trip(now)
        elif self._state == "half_open" and self._in_flight:
            self._open(now)  # a probe failed: reopen (which frees every probe slot)

    def record_cancelled(self, now: float) -> None:
        """A call admitted by :meth:`allow` ended without a verdict: free its probe slot."""
        self._tick(now)
        if self._state == "half_open" and self._in_flight:
            self._in_flight -= 1

    # -- manual control

    def force_open(self, now: float, duration: float) -> None:
        """Open now, for at least ``duration`` seconds (``math.inf``: until :meth:`reset`).

        Manual isolation is not evidence of failure: ``consecutive_trips`` is unchanged.
        It never shortens an open period already running (close with :meth:`reset`).
        After it ends, the breaker probes as usual.
        """
        if not _is_number(duration) or not duration > 0:
            raise ValueError(f"duration must be positive seconds, got {duration!r}")
        self._tick(now)
        until = now + duration
        if self._state == "open":
            self._open_until = max(self._open_until, until)
            return
        old = self._state
        self._state = "open"
        self._open_until = until
        self._in_flight = self._probe_successes = 0
        self._notify(old, "open", now)

    def reset(self, now: float) -> None:
        """Close now, forgetting the window and the trip count: as good as a new breaker.

        Reports a transition unless the breaker was already closed.
        """
        self._close(now)

    # -- the machine

    def _tick(self, now: float) -> None:
        if self._state == "open" and now >= self._open_until:
            self._state = "half_open"
            self._in_flight = self._probe_successes = 0
            self._notify("open", "half_open", self._open_until)

    def _maybe_trip(self, now: float) -> None:
        calls, failures = self._window.totals(now)
        config = self._config
        # The rate as documented (failures / calls), so reports and decisions agree.
        if calls >= config.minimum_calls and failures / calls >= config.failure_rate_threshold:
            self._open(now)

    def _open(self, now: float) -> None:
        """Trip (from closed) or re-trip (a probe failed): open for d(k)."""
        config = self._config
        # Multiplying step by step, capped each time, never overflows (2.0**2000 raises).
        if self._trips == 0:
            self._duration = config.open_duration
        else:
            self._duration = min(
                self._duration * config.open_backoff_multiplier, config.max_open_duration
            )
        self._trips += 1
        old = self._state
        self._state = "open"
        self._open_until = now + self._duration
        self._in_flight = self._probe_successes = 0
        self._notify(old, "open", now)

    def _close(self, now: float) -> None:
        old = self._state
        self._state = "closed"
        self._trips = 0  # the next trip's duration starts again from open_duration
        self._in_flight = self._probe_successes = 0
        self._window._clear()
        if old != "closed":
            self._notify(old, "closed", now)

    def _notify(self, old: str, new: str, at: float) -> None:
        if self.on_transition is not None:
            self.on_transition(old, new, at)

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self._state} trips={self._trips}>"


# --------------------------------------------------------------------------- latency

# Log-scale histogram buckets, as DDSketch: for a relative accuracy a, bucket k covers
# [lo·g^k, lo·g^(k+1)) with g = (1+a)/(1-a), and its harmonic midpoint
# 2·lo·g^(k+1)/(1+g) is within a relative a of any value in it: the midpoint m of [x, g·x]
# is 2g·x/(1+g), and (m - x)/x = (g·x - m)/(g·x) = (g-1)/(g+1) = a.
_ALPHA = 0.02
_LO = 1e-3  # 1 ms
_HI = 3600.0  # 1 hour
_GAMMA = (1 + _ALPHA) / (1 - _ALPHA)
_LOG_GAMMA = math.log(_GAMMA)
_LOG_BUCKETS = math.ceil(math.log(_HI / _LO) / _LOG_GAMMA)  # 378
# Index 0: under 1 ms, reported as 0.0 ("instant"); 1..378: the log buckets; 379: an hour
# or more, reported as one hour.
_VALUES: tuple[float, ...] = (
    0.0,
    *(2 * _LO * _GAMMA ** (k + 1) / (1 + _GAMMA) for k in range(_LOG_BUCKETS)),
    _HI,
)
_SIZE = len(_VALUES)


def _latency_index(latency: float) -> int:
    if latency < _LO:
        return 0
    if latency >= _HI:
        return _SIZE - 1
    k = int(math.log(latency / _LO) / _LOG_GAMMA)
    return min(k, _LOG_BUCKETS - 1) + 1  # min: float noise just under _HI


def _rank(q: float, count: int) -> int:
    # Nearest rank, ⌈q·n⌉ ≥ 1; the 1e-9 keeps float noise (0.07·100 = 7.000000000000001)
    # from moving the rank up by one.
    return max(1, math.ceil(q * count - 1e-9))


class LatencySnapshot(_Struct, frozen=True):
    """A frozen view of a :class:`LatencyStats` at one moment; ``None`` with no samples.

    Attributes:
        ewma: exponentially weighted moving average over all samples ever recorded.
        p50: median over the window.
        p95: 95th percentile over the window (the hedge delay of "The Tail at Scale").
        count: samples in the window.

    Example::

        view = stats.snapshot(now)
        delay = view.p95 if view.p95 is not None else 1.0
    """

    ewma: float | None = None
    p50: float | None = None
    p95: float | None = None
    count: int = 0


class LatencyStats(_Ring):
    """Latency of a provider: an EWMA, and percentiles over a sliding window.

    ``ewma`` follows every sample, however old::

        ewma₁ = x₁,   ewmaₙ = ewmaₙ₋₁ + alpha·(xₙ - ewmaₙ₋₁)
                          (= alpha·xₙ + (1 - alpha)·ewmaₙ₋₁)

    Percentiles come from a windowed histogram, as Finagle's backup-request filter: the
    window is ``buckets_per_window`` time buckets of ``w = window / buckets_per_window``
    seconds (5 s by default), each a log-scale histogram; a sample recorded at ``t``
    counts until ``(floor(t/w) + buckets_per_window)·w``, for between ``window - w`` and
    ``window`` seconds.

    Accuracy: :meth:`percentile` returns the nearest-rank sample (the ``⌈q·n⌉``-th
    smallest of the ``n`` in the window) to within 2% relative error for latencies
    between 1 ms and 1 hour::

        |percentile(q) - x| ≤ 0.02·x

    A sample under 1 ms is reported as 0.0 (absolute error under 1 ms) and one of an hour
    or more as 3600.0.

    Why a log-scale histogram rather than a reservoir of samples: memory and query cost
    are fixed (380 counters, whatever the traffic), counts are exact so there is no
    sampling error and no randomness to inject, the error bound is a guarantee rather
    than a probability, and histograms add and subtract, so the window keeps a running
    total and evicts a bucket by subtracting it.  Each time bucket is a sparse dict
    ``{index: count}`` (a provider's latencies cluster in a few dozen indexes), the total
    is dense; a query walks the total once, O(380), never the samples.

    Args:
        window: seconds of history for percentiles, in (0, 3600].
        buckets_per_window: time buckets in the window (its granularity), 1..3600.
        ewma_alpha: weight of the newest sample in the EWMA, in (0, 1].

    Example::

        stats = LatencyStats(window=60.0)
        for t, latency in [(0.0, 0.8), (1.0, 1.2), (2.0, 0.9)]:
            stats.record(latency, t)
        stats.percentile(0.5, now=2.0)   # ≈ 0.9, within 2%
        stats.ewma                       # 0.8 + 0.2·(1.2-0.8) = 0.88, then 0.884
    """

    __slots__ = ("_alpha", "_buckets", "_count", "_ewma", "_total")

    def __init__(
        self, window: float = 60.0, buckets_per_window: int = 12, ewma_alpha: float = 0.2
    ) -> None:
        window = _check_window(window)
        if not isinstance(buckets_per_window, int) or not 1 <= buckets_per_window <= 3600:
            raise ValueError(
                f"buckets_per_window must be an integer in 1..3600, got {buckets_per_window!r}"
            )
        if not _is_number(ewma_alpha) or not 0 < ewma_alpha <= 1:
            raise ValueError(f"ewma_alpha must be in (0, 1], got {ewma_alpha!r}")
        super().__init__(window, buckets_per_window)
        self._alpha = float(ewma_alpha)
        self._ewma: float | None = None
        # Sparse per time bucket, reused after eviction; dense running total.
        self._buckets: list[dict[int, int]] = [{} for _ in range(buckets_per_window)]
        self._total = [0] * _SIZE
        self._count = 0

    def _evict(self, slot: int) -> None:
        bucket = self._buckets[slot]
        if bucket:
            total = self._total
            for index, n in bucket.items():
                total[index] -= n
                self._count -= n
            bucket.clear()

    @property
    def ewma(self) -> float | None:
        """The EWMA of every sample recorded; ``None`` before the first."""
        return self._ewma

    def record(self, latency: float, now: float) -> None:
        """Add one sample: ``latency`` seconds, observed at ``now``.

        Raises:
            ValueError: ``latency`` is negative, NaN or infinite (a clock bug upstream).
        """
        if not 0.0 <= latency < math.inf:
            raise ValueError(f"latency must be finite and ≥ 0, got {latency!r}")
        ewma = self._ewma
        self._ewma = latency if ewma is None else ewma + self._alpha * (latency - ewma)
        index = _latency_index(latency)
        bucket = self._buckets[self._slot(now)]
        bucket[index] = bucket.get(index, 0) + 1
        self._total[index] += 1
        self._count += 1

    def count(self, now: float) -> int:
        """How many samples the window holds at ``now``."""
        self._slot(now)
        return self._count

    def percentile(self, q: float, now: float) -> float | None:
        """The ``q``-quantile (``0.95`` for p95) of the window at ``now``; ``None`` if empty.

        The nearest-rank definition: the ``max(1, ⌈q·n⌉)``-th smallest of the ``n``
        samples, to within 2% (see the class docstring).  ``q = 0`` is the minimum and
        ``q = 1`` the maximum.

        Raises:
            ValueError: ``q`` is not in [0, 1].
        """
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"q must be in [0, 1] (0.95 for p95), got {q!r}")
        self._slot(now)
        if not self._count:
            return None
        rank = _rank(q, self._count)
        seen = 0
        for index, n in enumerate(self._total):
            seen += n
            if seen >= rank:
                return _VALUES[index]
        raise AssertionError("unreachable: the total holds count samples")  # pragma: no cover

    def snapshot(self, now: float) -> LatencySnapshot:
        """A frozen view at ``now``: EWMA, p50, p95 and the window's sample count."""
        return LatencySnapshot(
            ewma=self._ewma,
            p50=self.percentile(0.5, now),
            p95=self.percentile(0.95, now),
            count=self._count,
        )


# --------------------------------------------------------------------------- errors


class ErrorWindow(_Ring):
    """Successes and failures, by error class name, over a sliding window.

    The window is per-second buckets (``⌈window⌉`` of them, each ``window / ⌈window⌉``
    seconds, exactly 1 s for a whole-second window); an outcome recorded at ``t`` counts
    until ``floor(t) + window`` for a whole-second window.  Unlike the breaker's window
    it records everything the caller reports, in any breaker state, so it shows what
    callers actually saw::

        error_rate = failures / (successes + failures)     (0.0 with no outcomes)

    Args:
        window: seconds, in (0, 3600].

    Example::

        errors = ErrorWindow(window=60.0)
        errors.record_success(0.0)
        errors.record_failure(RateLimited("slow down"), 0.5)
        errors.record_failure("Timeout", 1.0)
        errors.error_rate(1.0)     # 2/3
        errors.counts(1.0)         # {"RateLimited": 1, "Timeout": 1}
        errors.error_rate(60.0)    # 0.0: all three fell out
    """

    __slots__ = ("_failures", "_kind_buckets", "_kinds", "_success_buckets", "_successes")

    def __init__(self, window: float = 60.0) -> None:
        window = _check_window(window)
        n = _second_buckets(window)
        super().__init__(window, n)
        self._success_buckets = [0] * n
        # Created on a bucket's first failure and reused after: healthy providers never
        # allocate one, and a 3,600 s window does not hold 3,600 empty dicts.
        self._kind_buckets: list[dict[str, int] | None] = [None] * n
        self._successes = 0
        self._failures = 0
        self._kinds: dict[str, int] = {}

    def _evict(self, slot: int) -> None:
        self._successes -= self._success_buckets[slot]
        self._success_buckets[slot] = 0
        bucket = self._kind_buckets[slot]
        if bucket:
            kinds = self._kinds
            for kind, n in bucket.items():
                self._failures -= n
                left = kinds[kind] - n
                if left:
                    kinds[kind] = left
                else:
                    del kinds[kind]
            bucket.clear()

    def record_success(self, now: float) -> None:
        """One call succeeded at ``now``."""
        slot = self._slot(now)
        self._success_buckets[slot] += 1
        self._successes += 1

    def record_failure(self, error: BaseException | type[BaseException] | str, now: float) -> None:
        """One call failed at ``now`` with ``error`` (an exception, its class, or a name)."""
        if isinstance(error, str):
            kind = error
        elif isinstance(error, type):
            kind = error.__name__
        else:
            kind = type(error).__name__
        slot = self._slot(now)
        bucket = self._kind_buckets[slot]
        if bucket is None:
            bucket = self._kind_buckets[slot] = {}
        bucket[kind] = bucket.get(kind, 0) + 1
        self._kinds[kind] = self._kinds.get(kind, 0) + 1
        self._failures += 1

    def successes(self, now: float) -> int:
        """Successes in the window at ``now``."""
        self._slot(now)
        return self._successes

    def failures(self, now: float) -> int:
        """Failures in the window at ``now``, all classes together."""
        self._slot(now)
        return self._failures

    def error_rate(self, now: float) -> float:
        """``failures / (successes + failures)`` over the window; 0.0 when it is empty."""
        if not self._failures:
            return 0.0  # moving the window can only evict failures, never add one
        self._slot(now)
        return _rate(self._failures, self._successes + self._failures)

    def counts(self, now: float) -> dict[str, int]:
        """Failures in the window at ``now`` by error class name (a fresh dict)."""
        self._slot(now)
        return dict(self._kinds)


# --------------------------------------------------------------------------- verdict


class HealthSnapshot(_Struct, frozen=True):
    """What the router publishes about one provider: a verdict, why, and the numbers.

    Attributes:
        provider: the configured provider name.
        status: ``"healthy"``, ``"degraded"`` (usable, but prefer another) or
            ``"unhealthy"`` (do not send).
        reason: why it is not healthy, with the numbers; ``None`` when healthy.
        latency_ewma: EWMA of latency, seconds.
        latency_p50: median latency over the window, seconds.
        latency_p95: p95 latency over the window, seconds.
        error_rate: failures / outcomes over the error window.
        breaker: the circuit breaker's snapshot.
        in_flight: calls running now.
        queued: calls waiting in the mailbox.
        limits: with ``[shared]``: ``"shared"`` while Redis decides the limits,
            ``"local"`` while the process falls back to its fair share of them
            (docs/scaling.md); ``None`` without ``[shared]``.
        breaker_origin: with ``[shared]``: the id of the process whose decision set the
            breaker's state (it opened, or its probe closed the breaker) when that was
            another process; ``None`` when the state is this process's own.

    Example::

        if router.health()["openai"].status == "unhealthy":
            print(router.health()["openai"].reason)
    """

    provider: str
    status: HealthStatus
    reason: str | None
    latency_ewma: float | None
    latency_p50: float | None
    latency_p95: float | None
    error_rate: float
    breaker: BreakerSnapshot
    in_flight: int = 0
    queued: int = 0
    limits: str | None = None
    breaker_origin: str | None = None


def _open_reason(breaker: BreakerSnapshot, origin: str | None = None) -> str:
    until = breaker.open_until
    head = (
        "circuit open until reset"
        if until is None or until == math.inf
        else f"circuit open until t={until:.3f}"
    )
    details = [] if origin is None else [f"opened by process {origin}"]
    if breaker.consecutive_trips:
        details.append(f"trip {breaker.consecutive_trips}")
    if breaker.calls:
        details.append(f"failure rate {breaker.failure_rate:.1%} of {breaker.calls} calls")
    return f"{head} ({', '.join(details)})" if details else head


def classify(
    provider: str,
    breaker: BreakerSnapshot,
    latency: LatencySnapshot,
    error_rate: float,
    *,
    degraded_latency: float | None = None,
    degraded_error_rate: float = 0.1,
    crashed: str | None = None,
    restart_at: float | None = None,
    suspended: str | None = None,
    in_flight: int = 0,
    queued: int = 0,
    limits: str | None = None,
    breaker_origin: str | None = None,
) -> HealthSnapshot:
    """Turn one provider's numbers into a verdict, with the reasons spelled out.

    ===========  ==========================================================  ===========
    status       when (every condition that holds is named in ``reason``)    reason e.g.
    ===========  ==========================================================  ===========
    unhealthy    the actor crashed (``crashed`` is not None), the provider   ``circuit
                 is out of routing for a long retry-after (``suspended``),   open until
                 or the breaker is open                                      t=15.000``
    degraded     the breaker is half-open, or ``error_rate ≥                 ``p95
                 degraded_error_rate``, or ``p95 ≥ degraded_latency``        latency
                                                                             2.400s >=
                                                                             2.000s``
    healthy      none of the above                                           ``None``
    ===========  ==========================================================  ===========

    Args:
        provider: the configured provider name.
        breaker: :meth:`CircuitBreaker.snapshot` at ``now``.
        latency: :meth:`LatencyStats.snapshot` at ``now``.
        error_rate: :meth:`ErrorWindow.error_rate` at ``now``.
        degraded_latency: p95 seconds at or above which the provider is degraded;
            ``None`` (default) disables the latency check.
        degraded_error_rate: error rate at or above which the provider is degraded.
        crashed: why the actor crashed (e.g. ``"RuntimeError('boom')"``), or ``None``.
        restart_at: when the supervisor restarts a crashed actor, if it will.
        suspended: why the provider is out of routing (a ``retry-after`` longer than
            ``max_retry_after``, with the time it ends), or ``None``.
        in_flight: calls running now, copied into the snapshot.
        queued: calls waiting, copied into the snapshot.
        limits: where the limits are decided (``[shared]`` only), copied.
        breaker_origin: the other process whose decision set the breaker's state
            (``[shared]`` only), named in an open breaker's reason and copied.

    Example::

        health = classify("openai", breaker.snapshot(now), stats.snapshot(now),
                          errors.error_rate(now), degraded_latency=5.0)
        health.status      # "healthy"
    """
    reasons: list[str] = []
    status: HealthStatus
    if crashed is not None:
        reasons.append(
            f"actor crashed: {crashed}"
            + (f"; restarting at t={restart_at:.3f}" if restart_at is not None else "")
        )
    if suspended is not None:
        reasons.append(suspended)
    if breaker.state == "open":
        reasons.append(_open_reason(breaker, breaker_origin))
    if reasons:
        status = "unhealthy"
    else:
        if breaker.state == "half_open":
            reasons.append(
                f"circuit half-open: probing recovery ({breaker.probes_in_flight} in flight)"
            )
        if error_rate >= degraded_error_rate:
            reasons.append(
                f"error rate {error_rate:.1%} >= {degraded_error_rate:.1%} over the window"
            )
        p95 = latency.p95
        if degraded_latency is not None and p95 is not None and p95 >= degraded_latency:
            reasons.append(f"p95 latency {p95:.3f}s >= {degraded_latency:.3f}s")
        status = "degraded" if reasons else "healthy"
    return HealthSnapshot(
        provider=provider,
        status=status,
        reason="; ".join(reasons) if reasons else None,
        latency_ewma=latency.ewma,
        latency_p50=latency.p50,
        latency_p95=latency.p95,
        error_rate=error_rate,
        breaker=breaker,
        in_flight=in_flight,
        queued=queued,
        limits=limits,
        breaker_origin=breaker_origin,
    )
