"""Health math: breaker state machine, latency histogram, error window, classify().

Everything under test is pure and synchronous, so time is a plain float and every
assertion is exact: scenario tables for the breaker, a hypothesis state machine against
a reference model, and hypothesis properties for the histogram's error bound.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from providers import ConfigError, RateLimited, ServerError
from router._health import (
    BreakerConfig,
    BreakerSnapshot,
    CircuitBreaker,
    ErrorWindow,
    HealthSnapshot,
    LatencySnapshot,
    LatencyStats,
    classify,
)
from router._validation import validate

# --------------------------------------------------------------------------- breaker tables

# Trips at 50% over >= 4 calls in a 10 s window; open 5, 10, 20, 20... s; 2 probes.
CFG = BreakerConfig(
    failure_rate_threshold=0.5,
    minimum_calls=4,
    window=10.0,
    open_duration=5.0,
    open_backoff_multiplier=2.0,
    max_open_duration=20.0,
    half_open_probes=2,
)

Step = tuple[float, str, Any]


def run(steps: Sequence[Step], config: BreakerConfig = CFG) -> CircuitBreaker:
    """Play ``(t, op, expected)`` steps on a fresh breaker, checking each one.

    ``op`` is ``allow`` (expected: its result), ``ok``/``slow``/``fail``/``cancel``
    (expected: the state right after), ``state`` (expected: the state) or ``retry_at``.
    """
    breaker = CircuitBreaker(config)
    for i, (t, op, expected) in enumerate(steps):
        if op == "allow":
            got: Any = breaker.allow(t)
        elif op == "retry_at":
            got = breaker.retry_at
        else:
            if op == "ok":
                breaker.record_success(t, latency=0.1)
            elif op == "slow":
                breaker.record_success(t, latency=60.0)
            elif op == "fail":
                breaker.record_failure(t)
            elif op == "cancel":
                breaker.record_cancelled(t)
            else:
                assert op == "state", op
            got = breaker.state(t)
        assert got == expected, f"step {i}: {op} at t={t}: expected {expected!r}, got {got!r}"
    return breaker


def trip_at_3() -> list[Step]:
    # ok, fail, ok, fail: 4 calls, 50% failures -> open at t=3 until t=8.
    return [
        (0.0, "ok", "closed"),
        (1.0, "fail", "closed"),
        (2.0, "ok", "closed"),
        (3.0, "fail", "open"),
        (3.0, "retry_at", 8.0),
    ]


def test_trips_when_threshold_reached_with_minimum_calls() -> None:
    """Closed -> open on the outcome that makes calls >= minimum and rate >= threshold."""
    breaker = run(trip_at_3())
    snap = breaker.snapshot(3.0)
    assert snap == BreakerSnapshot(
        state="open",
        failure_rate=0.5,
        calls=4,
        failures=2,
        consecutive_trips=1,
        open_until=8.0,
    )


def test_does_not_trip_below_minimum_calls() -> None:
    """A 100% failure rate does not trip until minimum_calls outcomes are in the window."""
    run(
        [
            (0.0, "fail", "closed"),
            (0.5, "fail", "closed"),
            (1.0, "fail", "closed"),
            (1.5, "fail", "open"),
            (1.5, "retry_at", 6.5),
        ]
    )


def test_does_not_trip_below_threshold() -> None:
    """1 failure in 4 calls (25%) stays closed at a 50% threshold; the 2nd of 5 still does."""
    run(
        [
            (0.0, "ok", "closed"),
            (0.0, "ok", "closed"),
            (0.0, "ok", "closed"),
            (0.0, "fail", "closed"),
            (0.0, "fail", "closed"),  # 2/5 = 40%
            (0.0, "fail", "open"),  # 3/6 = 50%
        ]
    )


def test_a_success_can_trip() -> None:
    """A success that brings calls up to the minimum trips if the rate is already over."""
    run([(0.0, "fail", "closed")] * 3 + [(0.0, "ok", "open")])


def test_open_to_half_open_exactly_at_retry_at() -> None:
    """Open refuses every call until opened_at + open_duration, then lets probes in."""
    run(
        [
            *trip_at_3(),
            (3.0, "allow", False),
            (7.999, "allow", False),
            (7.999, "state", "open"),
            (8.0, "state", "half_open"),
            (8.0, "retry_at", None),
            (8.0, "allow", True),
        ]
    )


def test_half_open_probes_limited_and_success_closes() -> None:
    """Half-open admits half_open_probes probes, no more than it still needs; all must succeed."""
    breaker = run(
        [
            *trip_at_3(),
            (8.0, "allow", True),
            (8.0, "allow", True),
            (8.0, "allow", False),  # 2 in flight
            (9.0, "ok", "half_open"),
            (9.0, "allow", False),  # 1 success + 1 in flight: enough to close
            (9.5, "ok", "closed"),
            (9.5, "allow", True),
        ]
    )
    assert breaker.snapshot(9.5) == BreakerSnapshot(state="closed")


def test_probe_failure_reopens_with_doubled_capped_duration() -> None:
    """Each probe failure reopens for min(5 * 2^(k-1), 20) s from its own time; closing resets k."""
    breaker = run(
        [
            *trip_at_3(),  # trip 1: open 3 -> 8
            (8.0, "allow", True),
            (8.5, "fail", "open"),  # trip 2: 10 s
            (8.5, "retry_at", 18.5),
            (18.4, "allow", False),
            (18.5, "allow", True),
            (19.0, "fail", "open"),  # trip 3: 20 s
            (19.0, "retry_at", 39.0),
            (39.0, "allow", True),
            (39.0, "fail", "open"),  # trip 4: 40 s capped to 20 s
            (39.0, "retry_at", 59.0),
            (59.0, "allow", True),
            (59.0, "allow", True),
            (59.0, "ok", "half_open"),
            (60.0, "fail", "open"),  # one failure after a success still reopens: trip 5
            (60.0, "retry_at", 80.0),
            (80.0, "allow", True),
            (80.0, "allow", True),
            (80.0, "ok", "half_open"),
            (80.0, "ok", "closed"),
            # the trip count is back to 0: the next trip is 5 s again
            (90.0, "fail", "closed"),
            (90.0, "fail", "closed"),
            (90.0, "fail", "closed"),
            (90.0, "fail", "open"),
            (90.0, "retry_at", 95.0),
        ]
    )
    assert breaker.snapshot(90.0).consecutive_trips == 1


def test_slow_probe_reopens() -> None:
    """With slow_call_threshold, a slow probe success counts as a probe failure."""
    slow_cfg = msgspec.structs.replace(CFG, slow_call_threshold=30.0)
    run(
        [
            *trip_at_3(),
            (8.0, "allow", True),
            (9.0, "slow", "open"),
            (9.0, "retry_at", 19.0),
        ],
        slow_cfg,
    )


def test_slow_successes_count_as_failures() -> None:
    """A success slower than slow_call_threshold counts as a failure in the window."""
    slow_cfg = msgspec.structs.replace(CFG, slow_call_threshold=30.0)
    breaker = run(
        [
            (0.0, "slow", "closed"),
            (0.0, "ok", "closed"),
            (0.0, "ok", "closed"),
            (0.0, "slow", "open"),
        ],
        slow_cfg,
    )
    assert breaker.snapshot(0.0).failures == 2
    # Without a threshold, latency is ignored.
    run([(0.0, "slow", "closed")] * 6)


def test_old_failures_fall_out_of_the_window() -> None:
    """An outcome at t counts until floor(t) + window (10 s), not a moment longer."""
    breaker = run(
        [
            (0.0, "fail", "closed"),
            (0.9, "fail", "closed"),
            (1.0, "fail", "closed"),
        ]
    )
    assert breaker.snapshot(9.999).calls == 3
    assert breaker.snapshot(10.0) == BreakerSnapshot(
        state="closed", failure_rate=1.0, calls=1, failures=1
    )
    # Two failures aged out: a fourth failure now is 2 calls, not 4, and does not trip.
    breaker.record_failure(10.5)
    assert breaker.state(10.5) == "closed"
    assert breaker.snapshot(11.0) == BreakerSnapshot(
        state="closed", failure_rate=1.0, calls=1, failures=1
    )
    assert breaker.snapshot(1000.0) == BreakerSnapshot(state="closed")


def test_record_cancelled_frees_a_probe_slot() -> None:
    """A cancelled probe releases its slot without counting as success or failure."""
    breaker = run(
        [
            *trip_at_3(),
            (8.0, "allow", True),
            (8.0, "allow", True),
            (8.0, "allow", False),
            (8.5, "cancel", "half_open"),
            (8.5, "allow", True),
            (8.6, "allow", False),
        ]
    )
    assert breaker.snapshot(8.6).probes_in_flight == 2
    # Cancelling in closed state counts nothing either.
    closed = run([(0.0, "allow", True), (0.0, "cancel", "closed")])
    assert closed.snapshot(0.0).calls == 0


def test_outcomes_ignored_while_open_and_without_probes() -> None:
    """Outcomes of calls admitted before the trip change nothing while open or unprobed."""
    run(
        [
            *trip_at_3(),
            (4.0, "ok", "open"),
            (4.0, "fail", "open"),
            (4.0, "retry_at", 8.0),
            (8.0, "fail", "half_open"),  # no probe in flight: not a probe's outcome
            (8.0, "ok", "half_open"),
            (8.0, "allow", True),
            (8.0, "allow", True),
            (8.0, "allow", False),
        ]
    )


def test_window_starts_empty_after_closing() -> None:
    """The failures that tripped the breaker cannot trip it again once it has closed."""
    breaker = run(
        [
            *trip_at_3(),
            (8.0, "allow", True),
            (8.0, "allow", True),
            (8.0, "ok", "half_open"),
            (8.0, "ok", "closed"),
            (8.5, "fail", "closed"),
        ]
    )
    assert breaker.snapshot(8.5) == BreakerSnapshot(
        state="closed", failure_rate=1.0, calls=1, failures=1
    )


def test_transitions_are_reported_with_their_effective_times() -> None:
    """on_transition sees every change once, the lazy open -> half_open at retry_at."""
    events: list[tuple[str, str, float]] = []
    breaker = CircuitBreaker(CFG, on_transition=lambda *e: events.append(e))
    for t, failed in [(0.0, False), (1.0, True), (2.0, False), (3.0, True)]:
        if failed:
            breaker.record_failure(t)
        else:
            breaker.record_success(t)
    assert breaker.allow(9.25)  # noticed late; it happened at 8.0
    breaker.record_failure(9.5)
    breaker.state(19.5)
    breaker.force_open(20.0, 1.0)
    breaker.reset(21.0)
    breaker.reset(22.0)  # already closed: nothing to report
    assert events == [
        ("closed", "open", 3.0),
        ("open", "half_open", 8.0),
        ("half_open", "open", 9.5),
        ("open", "half_open", 19.5),
        ("half_open", "open", 20.0),
        ("open", "closed", 21.0),
    ]


def test_force_open_and_reset() -> None:
    """force_open isolates for at least its duration (never shortening), reset closes fresh."""
    breaker = CircuitBreaker(CFG)
    breaker.force_open(0.0, 10.0)
    assert breaker.retry_at == 10.0
    breaker.force_open(1.0, 2.0)  # would end at 3.0: keeps 10.0
    assert breaker.retry_at == 10.0
    breaker.force_open(2.0, 30.0)
    assert breaker.retry_at == 32.0
    assert breaker.snapshot(5.0).consecutive_trips == 0  # manual: not a trip
    assert not breaker.allow(31.9)
    assert breaker.allow(32.0)
    breaker.force_open(33.0, math.inf)
    assert not breaker.allow(1e12)
    assert breaker.snapshot(1e12).open_until == math.inf
    breaker.reset(1e12)
    assert breaker.state(1e12) == "closed"
    assert breaker.allow(1e12)
    with pytest.raises(ValueError, match="duration"):
        breaker.force_open(0.0, 0.0)


def test_docstring_example() -> None:
    """The CircuitBreaker docstring example runs as written."""
    events: list[tuple[str, str, float]] = []
    breaker = CircuitBreaker(
        BreakerConfig(minimum_calls=2, open_duration=5.0, half_open_probes=1),
        on_transition=lambda old, new, t: events.append((old, new, t)),
    )
    breaker.record_failure(10.0)
    breaker.record_failure(10.5)
    assert breaker.allow(15.4) is False
    assert breaker.allow(15.5) is True
    assert breaker.allow(15.5) is False
    breaker.record_success(15.7)
    assert events == [
        ("closed", "open", 10.5),
        ("open", "half_open", 15.5),
        ("half_open", "closed", 15.7),
    ]


def test_stale_now_lands_in_the_latest_bucket() -> None:
    """A now earlier than one already seen counts as the latest (time never runs back)."""
    breaker = CircuitBreaker(CFG)
    breaker.record_success(20.0)
    breaker.record_success(5.0)  # stale: counted at 20.0, so it lives until 30.0
    assert breaker.snapshot(29.0).calls == 2
    assert breaker.snapshot(30.0).calls == 0


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"failure_rate_threshold": 0.0}, "failure_rate_threshold"),
        ({"failure_rate_threshold": 1.5}, "failure_rate_threshold"),
        ({"failure_rate_threshold": math.nan}, "failure_rate_threshold"),
        ({"minimum_calls": 0}, "minimum_calls"),
        ({"window": 0.0}, "window"),
        ({"window": 7200.0}, "window"),
        ({"open_duration": -1.0}, "open_duration"),
        ({"open_duration": math.inf}, "open_duration"),
        ({"max_open_duration": 1.0}, "max_open_duration"),
        ({"open_backoff_multiplier": 0.5}, "open_backoff_multiplier"),
        ({"half_open_probes": 0}, "half_open_probes"),
        ({"slow_call_threshold": 0.0}, "slow_call_threshold"),
    ],
)
def test_config_validation(fields: dict[str, Any], message: str) -> None:
    """Out-of-range values: building the config does not raise; validating it (as
    open_router and load_config do) is a ConfigError at the field."""
    config = BreakerConfig(**fields)
    with pytest.raises(ConfigError) as info:
        validate(config, BreakerConfig)
    assert info.value.path == f"$.{message}"


def test_config_defaults_and_unknown_fields() -> None:
    """The documented defaults hold, and decoding rejects unknown fields."""
    assert BreakerConfig() == BreakerConfig(
        failure_rate_threshold=0.5,
        minimum_calls=10,
        window=30.0,
        open_duration=5.0,
        open_backoff_multiplier=2.0,
        max_open_duration=120.0,
        half_open_probes=3,
        slow_call_threshold=None,
    )
    with pytest.raises(msgspec.ValidationError, match="unknown"):
        msgspec.json.decode(b'{"treshold": 0.5}', type=BreakerConfig)


# --------------------------------------------------------------------------- breaker model


class ModelBreaker:
    """The breaker's documented semantics, written plainly: lists and full recounts.

    Integer windows only: an outcome recorded at ``t`` is in the window at ``now`` iff
    ``t >= floor(now) - window + 1``.
    """

    def __init__(self, config: BreakerConfig) -> None:
        self.c = config
        self.state = "closed"
        self.outcomes: list[tuple[float, bool]] = []  # (t, failed), while closed
        self.trips = 0
        self.open_until: float | None = None
        self.in_flight = 0
        self.successes = 0  # probe successes since entering half-open
        self.log: list[tuple[str, str, float]] = []

    def go(self, new: str, t: float) -> None:
        self.log.append((self.state, new, t))
        self.state = new

    def tick(self, now: float) -> None:
        if self.state == "open":
            assert self.open_until is not None
            if now >= self.open_until:
                self.go("half_open", self.open_until)
                self.in_flight = self.successes = 0
                self.open_until = None

    def window(self, now: float) -> tuple[int, int]:
        start = math.floor(now) - int(self.c.window) + 1
        inside = [failed for t, failed in self.outcomes if t >= start]
        return len(inside), sum(inside)

    def rate(self, now: float) -> float:
        calls, failures = self.window(now)
        return failures / calls if calls else 0.0

    def trip(self, now: float) -> None:
        self.trips += 1
        c = self.c
        duration = min(
            c.open_duration * c.open_backoff_multiplier ** (self.trips - 1), c.max_open_duration
        )
        self.go("open", now)
        self.open_until = now + duration
        self.in_flight = self.successes = 0

    def close(self, now: float) -> None:
        if self.state != "closed":
            self.go("closed", now)
        self.outcomes = []
        self.trips = self.in_flight = self.successes = 0
        self.open_until = None

    def allow(self, now: float) -> bool:
        self.tick(now)
        if self.state == "closed":
            return True
        if self.state == "half_open" and self.in_flight + self.successes < self.c.half_open_probes:
            self.in_flight += 1
            return True
        return False

    def outcome(self, now: float, failed: bool) -> None:
        self.tick(now)
        if self.state == "closed":
            self.outcomes.append((now, failed))
            calls, _ = self.window(now)
            if calls >= self.c.minimum_calls and self.rate(now) >= self.c.failure_rate_threshold:
                self.trip(now)
        elif self.state == "half_open" and self.in_flight > 0:
            self.in_flight -= 1
            if failed:
                self.trip(now)
            else:
                self.successes += 1
                if self.successes == self.c.half_open_probes:
                    self.close(now)

    def cancel(self, now: float) -> None:
        self.tick(now)
        if self.state == "half_open" and self.in_flight > 0:
            self.in_flight -= 1

    def force_open(self, now: float, duration: float) -> None:
        self.tick(now)
        if self.state == "open":
            assert self.open_until is not None
            self.open_until = max(self.open_until, now + duration)
        else:
            self.go("open", now)
            self.open_until = now + duration
            self.in_flight = self.successes = 0


# Times and durations are dyadic (k / 2^m), so every sum of them is exact in binary and
# the model's pow() agrees with the breaker's step-by-step multiplication bit for bit.
@st.composite
def breaker_configs(draw: st.DrawFn) -> BreakerConfig:
    base = draw(st.sampled_from([1.0, 2.5]))
    return BreakerConfig(
        failure_rate_threshold=draw(st.sampled_from([0.25, 0.5, 0.75, 1.0, 0.3])),
        minimum_calls=draw(st.integers(1, 6)),
        window=draw(st.sampled_from([1.0, 3.0, 10.0])),
        open_duration=base,
        open_backoff_multiplier=draw(st.sampled_from([1.0, 1.5, 2.0])),
        # A low cap is reached within a few trips, so the cap is exercised too.
        max_open_duration=base * draw(st.sampled_from([1.0, 2.0, 4.0, 12.0])),
        half_open_probes=draw(st.integers(1, 3)),
        slow_call_threshold=draw(st.sampled_from([None, 1.0])),
    )


outcomes = st.sampled_from(["ok", "ok", "slow", "fail", "cancel"])


class BreakerMachine(RuleBasedStateMachine):
    """Any interleaving of allow / outcomes / cancels / manual control / clock advances.

    Invariants checked after every step (and by comparing every allow() with the model):

    * ``allow_matches_model``: never allows while open before retry_at, never refuses
      while closed, and half-open admits exactly while in_flight + successes < probes.
    * ``probes_bounded``: never more than half_open_probes probes in flight.
    * ``snapshot_matches_model``: state, failure rate and calls over the window, trips
      and open_until equal the model's; so it closes only after half_open_probes
      successful probes and reopens for min(base * mult^(k-1), max).
    * ``transitions_match_model``: on_transition saw exactly the model's transitions,
      with their effective times.
    """

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.pending = 0  # calls admitted and not yet reported

    @initialize(config=breaker_configs(), start=st.sampled_from([0.0, 1000.25]))
    def setup(self, config: BreakerConfig, start: float) -> None:
        self.config = config
        self.now = start
        self.log: list[tuple[str, str, float]] = []
        self.breaker = CircuitBreaker(config, on_transition=lambda *e: self.log.append(e))
        self.model = ModelBreaker(config)

    @rule(dt=st.sampled_from([0.25, 0.5, 0.75, 1.0, 2.5, 7.5, 40.0]))
    def advance(self, dt: float) -> None:
        self.now += dt

    @rule()
    def allow_matches_model(self) -> None:
        got = self.breaker.allow(self.now)
        assert got == self.model.allow(self.now)
        self.pending += got

    @precondition(lambda self: self.pending > 0)
    @rule(outcome=outcomes)
    def report(self, outcome: str) -> None:
        """Report one of the calls in flight (possibly admitted in an earlier state)."""
        self.pending -= 1
        self.record(outcome)

    @rule(outcome=outcomes)
    def call(self, outcome: str) -> None:
        """A whole call: allow(), then at once its outcome if it was admitted."""
        admitted = self.breaker.allow(self.now)
        assert admitted == self.model.allow(self.now)
        if admitted:
            self.record(outcome)

    def record(self, outcome: str) -> None:
        if outcome == "cancel":
            self.breaker.record_cancelled(self.now)
            self.model.cancel(self.now)
        elif outcome == "fail":
            self.breaker.record_failure(self.now)
            self.model.outcome(self.now, failed=True)
        else:
            self.breaker.record_success(self.now, latency=2.0 if outcome == "slow" else 0.5)
            slow = outcome == "slow" and self.config.slow_call_threshold is not None
            self.model.outcome(self.now, failed=slow)

    @rule(action=st.sampled_from([0.5, 4.0, math.inf, "reset"]))
    def manual(self, action: float | str) -> None:
        """force_open(now, duration) or reset(now)."""
        if action == "reset":
            self.breaker.reset(self.now)
            self.model.close(self.now)
        else:
            assert isinstance(action, float)
            self.breaker.force_open(self.now, action)
            self.model.force_open(self.now, action)

    @invariant()
    def probes_bounded(self) -> None:
        snap = self.breaker.snapshot(self.now)
        assert 0 <= snap.probes_in_flight <= self.config.half_open_probes

    @invariant()
    def snapshot_matches_model(self) -> None:
        model = self.model
        model.tick(self.now)
        calls, failures = model.window(self.now)
        assert self.breaker.snapshot(self.now) == BreakerSnapshot(
            state=model.state,  # type: ignore[arg-type]
            failure_rate=model.rate(self.now),
            calls=calls,
            failures=failures,
            consecutive_trips=model.trips,
            open_until=model.open_until,
            probes_in_flight=model.in_flight,
        )
        assert self.breaker.retry_at == model.open_until

    @invariant()
    def transitions_match_model(self) -> None:
        self.breaker.state(self.now)
        self.model.tick(self.now)
        assert self.log == self.model.log


TestBreakerMachine = BreakerMachine.TestCase
TestBreakerMachine.settings = settings(max_examples=200, stateful_step_count=50, deadline=None)


# --------------------------------------------------------------------------- latency


def exact_percentile(samples: Sequence[float], q: float) -> float:
    """Nearest rank, as documented: the max(1, ceil(q*n))-th smallest."""
    ordered = sorted(samples)
    rank = max(1, math.ceil(q * len(ordered) - 1e-9))
    return ordered[rank - 1]


@settings(max_examples=300, deadline=None)
@given(
    samples=st.lists(
        st.floats(min_value=1e-3, max_value=3599.0, allow_nan=False), min_size=1, max_size=200
    ),
    q=st.floats(min_value=0.0, max_value=1.0),
)
def test_percentile_within_two_percent(samples: list[float], q: float) -> None:
    """percentile(q) is within 2% (relative) of the exact nearest-rank sample, 1 ms..1 h."""
    stats = LatencyStats()
    for i, x in enumerate(samples):
        stats.record(x, now=i * 0.01)
    got = stats.percentile(q, now=2.0)
    want = exact_percentile(samples, q)
    assert got is not None
    assert abs(got - want) <= 0.02 * want * (1 + 1e-9)


@settings(max_examples=100, deadline=None)
@given(
    x=st.floats(min_value=1e-3, max_value=3599.999, allow_nan=False),
    copies=st.integers(1, 5),
)
def test_percentile_of_identical_samples(x: float, copies: int) -> None:
    """Every percentile of identical samples is that sample to within 2%."""
    stats = LatencyStats()
    for _ in range(copies):
        stats.record(x, now=0.0)
    for q in (0.0, 0.5, 0.95, 1.0):
        got = stats.percentile(q, now=0.0)
        assert got is not None
        assert abs(got - x) <= 0.02 * x * (1 + 1e-9)


def test_percentile_ranks_and_range_ends() -> None:
    """q=0 is the min, q=1 the max; under 1 ms reads 0.0, an hour or more reads 3600.0."""
    stats = LatencyStats()
    for x in [0.0, 0.0005, 1.0, 2.0, 7200.0]:
        stats.record(x, now=0.0)
    assert stats.percentile(0.0, 0.0) == 0.0
    assert stats.percentile(0.4, 0.0) == 0.0  # rank 2: 0.5 ms
    assert stats.percentile(1.0, 0.0) == 3600.0
    p60 = stats.percentile(0.6, 0.0)  # rank 3: 1.0 s
    assert p60 is not None
    assert abs(p60 - 1.0) <= 0.02
    # 0.07 * 100 is 7.000000000000001 in floats; the rank is still 7.
    hundred = LatencyStats()
    for i in range(1, 101):
        hundred.record(float(i), now=0.0)
    p7 = hundred.percentile(0.07, 0.0)
    assert p7 is not None
    assert abs(p7 - 7.0) <= 0.02 * 7.0


def test_latency_window_eviction_exact() -> None:
    """A sample at t counts until (floor(t/5) + 12) * 5 with the default 60 s / 12 buckets."""
    stats = LatencyStats(window=60.0, buckets_per_window=12)
    assert stats.percentile(0.5, 0.0) is None
    stats.record(1.0, now=3.0)  # bucket [0, 5): out at 60
    stats.record(2.0, now=4.999)
    stats.record(4.0, now=5.0)  # bucket [5, 10): out at 65
    assert stats.count(59.999) == 3
    assert stats.count(60.0) == 1
    p = stats.percentile(0.0, 60.0)
    assert p is not None
    assert abs(p - 4.0) <= 0.08
    assert stats.count(64.999) == 1
    assert stats.count(65.0) == 0
    assert stats.percentile(0.5, 65.0) is None
    # A jump of many windows clears everything and the ring still works afterwards.
    stats.record(3.0, now=10_000.0)
    assert stats.count(10_000.0) == 1
    assert stats.snapshot(10_000.0).count == 1


def test_ewma_formula_exact() -> None:
    """ewma is the first sample, then ewma + alpha * (x - ewma), never windowed."""
    stats = LatencyStats(ewma_alpha=0.25)
    assert stats.ewma is None
    stats.record(1.0, now=0.0)
    assert stats.ewma == 1.0
    stats.record(3.0, now=1.0)
    assert stats.ewma == 1.5  # 1 + 0.25 * 2
    stats.record(5.0, now=2.0)
    assert stats.ewma == 2.375  # 1.5 + 0.25 * 3.5
    stats.count(10_000.0)  # the window empties; the EWMA stays
    assert stats.ewma == 2.375
    assert stats.snapshot(10_000.0) == LatencySnapshot(ewma=2.375)


@given(st.lists(st.floats(min_value=0.0, max_value=100.0), min_size=1, max_size=30))
def test_ewma_matches_textbook_form(samples: list[float]) -> None:
    """ewma equals the recursion alpha*x + (1-alpha)*ewma up to float rounding."""
    stats = LatencyStats()
    want = samples[0]
    for x in samples[1:]:
        want = 0.2 * x + 0.8 * want
    for x in samples:
        stats.record(x, now=0.0)
    assert stats.ewma == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_latency_stats_validation() -> None:
    """Bad constructor arguments, samples and quantiles raise ValueError."""
    for kwargs in ({"window": 0.0}, {"buckets_per_window": 0}, {"ewma_alpha": 0.0}):
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            LatencyStats(**kwargs)  # type: ignore[arg-type]
    stats = LatencyStats()
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="latency"):
            stats.record(bad, now=0.0)
    with pytest.raises(ValueError, match="q must be"):
        stats.percentile(95, now=0.0)


# --------------------------------------------------------------------------- error window


def test_error_window_rates_and_counts() -> None:
    """error_rate is failures / outcomes; counts groups failures by error class name."""
    errors = ErrorWindow(window=60.0)
    assert errors.error_rate(0.0) == 0.0
    assert errors.counts(0.0) == {}
    errors.record_success(0.0)
    errors.record_failure(RateLimited("slow down"), 0.5)
    errors.record_failure(ServerError, 1.0)
    errors.record_failure("ServerError", 1.0)
    assert errors.error_rate(1.0) == 0.75
    assert errors.counts(1.0) == {"RateLimited": 1, "ServerError": 2}
    assert (errors.successes(1.0), errors.failures(1.0)) == (1, 3)


def test_error_window_eviction_exact() -> None:
    """An outcome at t counts until floor(t) + 60; evicted classes leave counts()."""
    errors = ErrorWindow(window=60.0)
    errors.record_failure("Timeout", 0.5)
    errors.record_success(1.0)
    errors.record_failure("Timeout", 1.5)
    assert errors.counts(59.999) == {"Timeout": 2}
    assert errors.error_rate(60.0) == 0.5
    assert errors.counts(60.0) == {"Timeout": 1}
    assert errors.error_rate(61.0) == 0.0
    assert errors.counts(61.0) == {}
    # Reusing the same slots after a wrap, and a jump far ahead.
    errors.record_failure("Overloaded", 121.0)
    assert errors.counts(121.0) == {"Overloaded": 1}
    assert errors.failures(10_000.0) == 0
    with pytest.raises(ValueError, match="window"):
        ErrorWindow(window=-1.0)


@settings(max_examples=300, deadline=None)
@given(
    window=st.sampled_from([0.3, 0.7, 1.0, 2.0, 10 / 3, 4.0, 60.0]),
    steps=st.lists(
        st.tuples(
            st.integers(0, 40).map(lambda k: k / 8) | st.floats(0.0, 5.0),
            st.booleans(),
            st.integers(0, 2),
        ),
        min_size=1,
        max_size=60,
    ),
)
def test_windows_count_exactly_what_a_recount_of_the_log_gives(
    window: float, steps: list[tuple[float, bool, int]]
) -> None:
    """Invariant: at every instant, the error window's counts and the latency window's
    count equal a recount of the event log — an event at ``t`` counts at ``now`` iff
    ``floor(now/w) - n < floor(t/w)``, ``w`` the bucket width — however the ring caches
    its current bucket between calls.

    Time never goes backwards; several events and reads share an instant (as a call's
    bookkeeping does); steps are multiples of 1/8 s or any float, widths exact in binary
    or not (a cached bucket must agree with the division to the last bit), and after the
    last event the windows are read as they empty.
    """
    errors = ErrorWindow(window=window)
    latency = LatencyStats(window=window, buckets_per_window=4)
    n_err = max(1, math.ceil(window))
    log: list[tuple[float, bool]] = []

    def check(at: float) -> None:
        w_err = window / n_err
        live = [f for t, f in log if math.floor(at / w_err) - n_err < math.floor(t / w_err)]
        assert errors.failures(at) == sum(live)
        assert errors.successes(at) == len(live) - sum(live)
        w_lat = window / 4
        assert latency.count(at) == sum(
            1 for t, _ in log if math.floor(at / w_lat) - 4 < math.floor(t / w_lat)
        )

    now = 0.0
    for step, failed, reads in steps:
        now += step
        log.append((now, failed))
        if failed:
            errors.record_failure("ServerError", now)
        else:
            errors.record_success(now)
        latency.record(0.5, now)
        for _ in range(reads + 1):
            check(now)
    for eighths in range(1, int(window * 8) * 2 + 2):
        check(now + eighths / 8)


def test_a_cached_bucket_agrees_with_the_division_at_a_float_edge() -> None:
    """5.699999999999999 < 19 * 0.3 as floats, yet floor(5.699999999999999 / 0.3) is 19:
    the ring's cached bucket must end where the division says, not at the product."""
    errors = ErrorWindow(window=0.3)  # one bucket, 0.3 s wide
    errors.record_failure("ServerError", 5.5)  # bucket 18
    t = 5.699999999999999
    assert math.floor(t / 0.3) == 19
    assert t < 19 * 0.3
    errors.record_failure("ServerError", t)  # bucket 19: the first one falls out
    assert errors.counts(5.75) == {"ServerError": 1}


# --------------------------------------------------------------------------- classify

CLOSED = BreakerSnapshot(state="closed")
OPEN = BreakerSnapshot(
    state="open", failure_rate=0.6, calls=10, failures=6, consecutive_trips=2, open_until=15.0
)
HALF = BreakerSnapshot(state="half_open", consecutive_trips=1, probes_in_flight=2)
FAST = LatencySnapshot(ewma=0.5, p50=0.4, p95=0.9, count=50)
SLOW = LatencySnapshot(ewma=2.0, p50=1.5, p95=2.4, count=50)
NONE = LatencySnapshot()


@pytest.mark.parametrize(
    ("breaker", "latency", "error_rate", "kwargs", "status", "reason"),
    [
        (CLOSED, FAST, 0.0, {"degraded_latency": 2.0}, "healthy", None),
        (CLOSED, NONE, 0.0, {"degraded_latency": 2.0}, "healthy", None),
        (CLOSED, SLOW, 0.0, {}, "healthy", None),  # no latency threshold set
        (CLOSED, FAST, 0.099, {}, "healthy", None),
        (
            CLOSED,
            FAST,
            0.1,
            {},
            "degraded",
            "error rate 10.0% >= 10.0% over the window",
        ),
        (
            CLOSED,
            SLOW,
            0.0,
            {"degraded_latency": 2.4},
            "degraded",
            "p95 latency 2.400s >= 2.400s",
        ),
        (
            HALF,
            SLOW,
            0.25,
            {"degraded_latency": 2.0},
            "degraded",
            "circuit half-open: probing recovery (2 in flight); "
            "error rate 25.0% >= 10.0% over the window; p95 latency 2.400s >= 2.000s",
        ),
        (
            OPEN,
            SLOW,
            0.6,
            {"degraded_latency": 2.0},
            "unhealthy",
            "circuit open until t=15.000 (trip 2, failure rate 60.0% of 10 calls)",
        ),
        (
            BreakerSnapshot(state="open", open_until=math.inf),
            FAST,
            0.0,
            {},
            "unhealthy",
            "circuit open until reset",
        ),
        (
            CLOSED,
            FAST,
            0.0,
            {"crashed": "RuntimeError('boom')", "restart_at": 12.5},
            "unhealthy",
            "actor crashed: RuntimeError('boom'); restarting at t=12.500",
        ),
        (
            OPEN,
            FAST,
            0.0,
            {"crashed": "RuntimeError('boom')"},
            "unhealthy",
            "actor crashed: RuntimeError('boom'); "
            "circuit open until t=15.000 (trip 2, failure rate 60.0% of 10 calls)",
        ),
        (CLOSED, FAST, 0.3, {"degraded_error_rate": 0.5}, "healthy", None),
        (
            CLOSED,
            FAST,
            0.0,
            {"suspended": "rate limited until t=86400.000: retry-after 86400s"},
            "unhealthy",
            "rate limited until t=86400.000: retry-after 86400s",
        ),
        (
            OPEN,
            FAST,
            0.0,
            {"suspended": "rate limited until t=99.000"},
            "unhealthy",
            "rate limited until t=99.000; "
            "circuit open until t=15.000 (trip 2, failure rate 60.0% of 10 calls)",
        ),
    ],
)
def test_classify_table(
    breaker: BreakerSnapshot,
    latency: LatencySnapshot,
    error_rate: float,
    kwargs: dict[str, Any],
    status: str,
    reason: str | None,
) -> None:
    """classify() gives each combination its documented status and a reason with numbers."""
    health = classify("p", breaker, latency, error_rate, **kwargs)
    assert (health.status, health.reason) == (status, reason)


def test_classify_copies_the_numbers() -> None:
    """The snapshot carries the latency figures, error rate, breaker and load unchanged."""
    health = classify("openai", CLOSED, FAST, 0.05, in_flight=3, queued=7)
    assert health == HealthSnapshot(
        provider="openai",
        status="healthy",
        reason=None,
        latency_ewma=0.5,
        latency_p50=0.4,
        latency_p95=0.9,
        error_rate=0.05,
        breaker=CLOSED,
        in_flight=3,
        queued=7,
    )
    # It is a plain frozen record: it encodes and decodes unchanged.
    assert msgspec.json.decode(msgspec.json.encode(health), type=HealthSnapshot) == health


def test_end_to_end_from_live_objects() -> None:
    """The module synopsis: live breaker, stats and window feed classify() at one now."""
    breaker = CircuitBreaker(BreakerConfig(minimum_calls=2))
    stats = LatencyStats()
    errors = ErrorWindow()
    for t in (0.0, 1.0):
        assert breaker.allow(t)
        breaker.record_failure(t)
        errors.record_failure(ServerError("boom"), t)
    stats.record(0.25, 1.0)
    health = classify(
        "mock",
        breaker.snapshot(2.0),
        stats.snapshot(2.0),
        errors.error_rate(2.0),
        degraded_latency=5.0,
    )
    assert health.status == "unhealthy"
    assert health.reason == "circuit open until t=6.000 (trip 1, failure rate 100.0% of 2 calls)"
    assert health.breaker.open_until == 6.0
