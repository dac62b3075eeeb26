"""Health math: the behaviours that mutation testing found unpinned (docs/testing.md).

Each test names what a user relies on: the edges of every documented range (a value on
the boundary is accepted, the first one past it is not), the defaults written in the
docstrings, ``would_allow`` (the policy's look that takes no probe slot), and the
breaker's handling of outcomes that arrive when no probe is in flight.  Pure and
synchronous, like tests/test_health.py: time is a plain float and assertions are exact.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from providers import ConfigError
from router._health import (
    BreakerConfig,
    CircuitBreaker,
    ErrorWindow,
    LatencySnapshot,
    LatencyStats,
    classify,
)
from router._validation import validate

# --------------------------------------------------------------------------- config ranges


@pytest.mark.parametrize(
    "fields",
    [
        {},  # every default, slow_call_threshold None included
        {"failure_rate_threshold": 1.0},  # (0, 1]: 1 is in
        {"minimum_calls": 1},  # ≥ 1
        {"window": 0.5},  # (0, 3600]: under a second is in
        {"window": 3600.0},  # ... and so is the hour
        {"open_duration": 0.5, "max_open_duration": 0.5},  # positive, under a second too
        {"open_duration": 7.0, "max_open_duration": 7.0},  # max = open_duration is allowed
        {"open_backoff_multiplier": 1.0},  # ≥ 1: no backoff
        {"open_backoff_multiplier": 1.5},
        {"half_open_probes": 1},  # ≥ 1
        {"slow_call_threshold": 0.5},  # positive seconds, under one too
    ],
)
def test_the_edges_of_every_breaker_range_are_accepted(fields: dict[str, Any]) -> None:
    """A BreakerConfig on the boundary of each documented range validates unchanged."""
    config = BreakerConfig(**fields)
    assert validate(config, BreakerConfig) == config


@pytest.mark.parametrize(
    ("fields", "path"),
    [
        ({"open_duration": 0.0}, "open_duration"),  # positive: 0 is out
        ({"max_open_duration": 0.0, "open_duration": 0.0}, "open_duration"),
        ({"open_backoff_multiplier": math.inf}, "open_backoff_multiplier"),
        ({"slow_call_threshold": math.inf}, "slow_call_threshold"),
        ({"slow_call_threshold": -1.0}, "slow_call_threshold"),
    ],
)
def test_just_past_the_breaker_ranges_is_a_config_error(fields: dict[str, Any], path: str) -> None:
    """Zero durations and infinite multipliers or thresholds are ConfigErrors at the field."""
    with pytest.raises(ConfigError) as info:
        validate(BreakerConfig(**fields), BreakerConfig)
    assert info.value.path == f"$.{path}"


def test_window_arguments_are_numbers_of_seconds_up_to_an_hour() -> None:
    """LatencyStats and ErrorWindow take an hour-long window, and refuse a bool or a
    string with a ValueError that names the argument (never a TypeError from inside)."""
    assert LatencyStats(window=3600.0).count(0.0) == 0
    assert ErrorWindow(window=3600).error_rate(0.0) == 0.0
    for bad in (True, "30", None, 3600.5):
        with pytest.raises(ValueError, match=r"^window must be a number of seconds in \(0, 3600\]"):
            LatencyStats(window=bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=r"^window must be a number of seconds in \(0, 3600\]"):
            ErrorWindow(window=bad)  # type: ignore[arg-type]


def test_latency_stats_argument_ranges_include_their_ends() -> None:
    """buckets_per_window is 1..3600 and ewma_alpha (0, 1], both ends included; one past
    either end is a ValueError naming the argument."""
    LatencyStats(buckets_per_window=1)
    LatencyStats(window=3600.0, buckets_per_window=3600)
    LatencyStats(ewma_alpha=1.0)
    with pytest.raises(ValueError, match="buckets_per_window"):
        LatencyStats(buckets_per_window=3601)
    for alpha in (1.5, True):
        with pytest.raises(ValueError, match="ewma_alpha"):
            LatencyStats(ewma_alpha=alpha)
    with pytest.raises(ValueError, match="q must be"):
        LatencyStats().percentile(1.5, now=0.0)


def test_force_open_takes_positive_seconds_not_a_bool() -> None:
    """force_open(duration=True) is a ValueError, not one second of isolation."""
    breaker = CircuitBreaker()
    with pytest.raises(ValueError, match="duration must be positive"):
        breaker.force_open(0.0, True)
    assert breaker.state(0.0) == "closed"


# --------------------------------------------------------------------------- defaults


def test_a_breaker_without_a_config_uses_the_documented_defaults() -> None:
    """CircuitBreaker() runs on BreakerConfig(): ten calls at 50% trip it for 5 s."""
    breaker = CircuitBreaker()
    assert breaker.config == BreakerConfig()
    for t in range(9):
        breaker.record_failure(float(t))
    assert breaker.state(8.0) == "closed"  # nine calls: below minimum_calls
    breaker.record_failure(9.0)
    assert (breaker.state(9.0), breaker.retry_at) == ("open", 14.0)


def test_latency_stats_default_window_is_60_s_in_5_s_buckets() -> None:
    """LatencyStats(): a sample taken at 4.9 s (the first 5 s bucket) counts until 60 s."""
    stats = LatencyStats()
    stats.record(0.25, now=4.9)
    assert stats.count(59.999) == 1
    assert stats.count(60.0) == 0


def test_error_window_default_is_60_s() -> None:
    """ErrorWindow(): a failure at 0 s counts until 60 s, then falls out."""
    errors = ErrorWindow()
    errors.record_failure("Timeout", 0.0)
    assert errors.error_rate(59.999) == 1.0
    assert errors.failures(60.0) == 0


def test_classify_reports_nothing_in_flight_or_queued_by_default() -> None:
    """classify() without in_flight / queued says 0 of each."""
    health = classify("p", CircuitBreaker().snapshot(0.0), LatencySnapshot(), 0.0)
    assert (health.status, health.in_flight, health.queued) == ("healthy", 0, 0)


# --------------------------------------------------------------------------- latency


def test_snapshot_percentiles_are_those_of_the_window() -> None:
    """LatencyStats.snapshot carries p50 and p95 as percentile() computes them."""
    stats = LatencyStats()
    for i in range(1, 21):
        stats.record(i / 10, now=1.0)
    snap = stats.snapshot(1.0)
    assert snap.count == 20
    assert snap.p50 == stats.percentile(0.5, 1.0) == pytest.approx(1.0, rel=0.02)
    assert snap.p95 == stats.percentile(0.95, 1.0) == pytest.approx(1.9, rel=0.02)


def test_an_hour_of_latency_is_reported_as_exactly_an_hour() -> None:
    """A sample of exactly 3600 s lands in the "an hour or more" bucket: reported as 3600.0."""
    stats = LatencyStats()
    stats.record(3600.0, now=0.0)
    assert stats.percentile(1.0, now=0.0) == 3600.0


@settings(max_examples=50, deadline=None)
@given(st.floats(min_value=3000.0, max_value=3600.0, exclude_max=True))
def test_latencies_just_under_an_hour_stay_within_two_percent(x: float) -> None:
    """Invariant: every latency in [1 ms, 1 h) is reported within 2%, up to the last
    float under an hour (the top log bucket, never past it)."""
    stats = LatencyStats()
    stats.record(x, now=0.0)
    assert stats.percentile(0.5, now=0.0) == pytest.approx(x, rel=0.02)


# --------------------------------------------------------------------------- breaker


def test_would_allow_looks_without_taking_a_probe_slot() -> None:
    """would_allow says what allow would, in every state, and never uses up a probe."""
    breaker = CircuitBreaker(BreakerConfig(minimum_calls=1, open_duration=5.0, half_open_probes=2))
    assert breaker.would_allow(0.0) is True  # closed
    breaker.record_failure(0.0)  # open until 5
    assert breaker.would_allow(4.999) is False
    assert breaker.would_allow(5.0) is True  # half-open now, two probes free
    assert breaker.state(5.0) == "half_open"
    for _ in range(5):
        assert breaker.would_allow(5.0) is True  # looking takes nothing
    assert breaker.allow(5.0) is True
    assert breaker.would_allow(5.0) is True  # one probe still free
    assert breaker.allow(5.0) is True
    assert breaker.would_allow(5.0) is False  # both in flight
    assert breaker.snapshot(5.0).probes_in_flight == 2
    breaker.record_success(5.5)
    assert breaker.would_allow(5.5) is False  # one success + one in flight = 2 needed


def test_a_success_exactly_at_the_slow_threshold_is_not_slow() -> None:
    """slow_call_threshold counts latency > threshold as a failure; = threshold is a success."""
    breaker = CircuitBreaker(BreakerConfig(minimum_calls=1, slow_call_threshold=2.0))
    breaker.record_success(0.0, latency=2.0)
    assert breaker.snapshot(0.0).failures == 0
    breaker.record_success(0.0, latency=2.000001)
    assert breaker.state(0.0) == "open"


def test_a_success_after_the_open_period_turns_the_breaker_half_open_at_once() -> None:
    """A late success reported after retry_at applies the due open → half-open transition
    then and there (heard by on_transition, dated retry_at) and is not a probe's."""
    events: list[tuple[str, str, float]] = []
    breaker = CircuitBreaker(
        BreakerConfig(minimum_calls=1, open_duration=5.0, half_open_probes=1),
        on_transition=lambda old, new, t: events.append((old, new, t)),
    )
    breaker.record_failure(1.0)  # open until 6
    breaker.record_success(7.0)
    assert events == [("closed", "open", 1.0), ("open", "half_open", 6.0)]
    assert breaker.snapshot(7.0).probes_in_flight == 0
    assert breaker.allow(7.0) is True  # the one probe is still free


def test_a_half_open_success_with_no_probe_in_flight_is_ignored() -> None:
    """Half-open, no probe admitted: a stray success counts for nothing — the breaker
    still needs its half_open_probes real probes to close."""
    breaker = CircuitBreaker(BreakerConfig(minimum_calls=1, open_duration=5.0, half_open_probes=2))
    breaker.record_failure(0.0)
    assert breaker.state(5.0) == "half_open"
    breaker.record_success(5.0)
    snap = breaker.snapshot(5.0)
    assert (snap.state, snap.probes_in_flight) == ("half_open", 0)
    assert [breaker.allow(5.0), breaker.allow(5.0)] == [True, True]  # still two slots
    assert breaker.allow(5.0) is False
    breaker.record_success(5.1)
    assert breaker.state(5.1) == "half_open"  # one real probe is not enough
    breaker.record_success(5.2)
    assert breaker.state(5.2) == "closed"


# --------------------------------------------------------------------------- windows


def test_a_window_of_a_second_or_less_is_one_bucket() -> None:
    """ErrorWindow(window=0.5) and (window=1.0) are one bucket each: what was recorded
    falls out as soon as the next bucket starts (at 0.5 s and 1.0 s)."""
    half = ErrorWindow(window=0.5)
    half.record_failure("Timeout", 0.3)
    assert (half.failures(0.49), half.failures(0.5)) == (1, 0)
    one = ErrorWindow(window=1.0)
    one.record_failure("Timeout", 0.7)
    assert (one.failures(0.99), one.failures(1.0)) == (1, 0)


def test_a_bucket_ends_where_the_division_says_when_the_product_falls_short() -> None:
    """3 · 0.7 is 2.0999999999999996 as a float, and floor(that / 0.7) is 2: the bucket
    that started at 1.4 s still holds there, and ends at 2.1 s exactly."""
    errors = ErrorWindow(window=0.7)  # one bucket, 0.7 s wide
    errors.record_failure("Timeout", 1.5)  # bucket 2
    assert errors.failures(3 * 0.7) == 1
    assert errors.failures(2.1) == 0


def test_evicting_successes_takes_them_out_once() -> None:
    """A success counts for its window, then never again: after it falls out (60 s) and
    its bucket is reused and evicted again (120 s), successes are 0, not negative."""
    errors = ErrorWindow()
    errors.record_success(0.0)
    errors.record_success(0.5)
    assert errors.successes(59.0) == 2
    assert errors.successes(60.0) == 0
    assert errors.successes(120.0) == 0
    errors.record_success(120.0)
    assert errors.successes(120.0) == 1


def test_identical_latencies_in_one_bucket_are_evicted_together() -> None:
    """Three equal samples in one time bucket all fall out together: count 3, then 0."""
    stats = LatencyStats()
    for _ in range(3):
        stats.record(0.5, now=1.0)
    assert stats.count(59.0) == 3
    assert stats.count(60.0) == 0
    assert stats.percentile(0.5, now=60.0) is None


# --------------------------------------------------------------------------- probes


def test_each_probe_outcome_frees_exactly_its_own_slot() -> None:
    """Three probes in flight: a success leaves two in flight (one more may not start:
    2 + 1 = 3), a cancel leaves one (one more may start)."""
    breaker = CircuitBreaker(BreakerConfig(minimum_calls=1, open_duration=5.0, half_open_probes=3))
    breaker.record_failure(0.0)
    assert [breaker.allow(5.0) for _ in range(4)] == [True, True, True, False]
    breaker.record_cancelled(5.05)  # one of three: two left in flight
    assert breaker.snapshot(5.05).probes_in_flight == 2
    assert breaker.allow(5.05) is True  # its slot is free again: three in flight
    breaker.record_success(5.1)
    assert breaker.snapshot(5.1).probes_in_flight == 2
    assert breaker.allow(5.1) is False
    breaker.record_cancelled(5.2)
    assert breaker.snapshot(5.2).probes_in_flight == 1
    assert breaker.allow(5.2) is True
    assert breaker.allow(5.2) is False


def test_a_stray_cancel_while_half_open_frees_nothing() -> None:
    """Half-open with no probe in flight, record_cancelled changes nothing: the breaker
    still admits exactly half_open_probes probes."""
    breaker = CircuitBreaker(BreakerConfig(minimum_calls=1, open_duration=5.0, half_open_probes=1))
    breaker.record_failure(0.0)
    assert breaker.state(5.0) == "half_open"
    breaker.record_cancelled(5.0)
    assert breaker.snapshot(5.0).probes_in_flight == 0
    assert [breaker.allow(5.0), breaker.allow(5.0)] == [True, False]


def test_a_cancel_after_the_open_period_turns_the_breaker_half_open() -> None:
    """record_cancelled past retry_at applies the due open → half-open transition."""
    events: list[tuple[str, str, float]] = []
    breaker = CircuitBreaker(
        BreakerConfig(minimum_calls=1, open_duration=5.0),
        on_transition=lambda old, new, t: events.append((old, new, t)),
    )
    breaker.record_failure(0.0)
    breaker.record_cancelled(6.0)
    assert events[-1] == ("open", "half_open", 5.0)


def test_force_open_forgets_the_probes_in_flight() -> None:
    """Forcing a half-open breaker open drops its probes: the snapshot shows none in
    flight, and after the forced period it admits a full set again."""
    breaker = CircuitBreaker(BreakerConfig(minimum_calls=1, open_duration=5.0, half_open_probes=2))
    breaker.record_failure(0.0)
    assert breaker.allow(5.0) is True
    breaker.force_open(5.0, 10.0)
    snap = breaker.snapshot(5.0)
    assert (snap.state, snap.probes_in_flight, snap.open_until) == ("open", 0, 15.0)
    assert [breaker.allow(15.0), breaker.allow(15.0), breaker.allow(15.0)] == [True, True, False]


def test_consecutive_trips_count_each_reopening() -> None:
    """A failed probe is trip 2, then trip 3: consecutive_trips counts them, and the
    open periods back off 5, 10, 20 s."""
    breaker = CircuitBreaker(BreakerConfig(minimum_calls=1, open_duration=5.0, half_open_probes=1))
    breaker.record_failure(0.0)
    assert (breaker.snapshot(0.0).consecutive_trips, breaker.retry_at) == (1, 5.0)
    assert breaker.allow(5.0)
    breaker.record_failure(5.0)
    assert (breaker.snapshot(5.0).consecutive_trips, breaker.retry_at) == (2, 15.0)
    assert breaker.allow(15.0)
    breaker.record_failure(15.0)
    assert (breaker.snapshot(15.0).consecutive_trips, breaker.retry_at) == (3, 35.0)


def test_failures_of_one_kind_in_one_bucket_fall_out_together() -> None:
    """Two Timeouts and a ServerError in the same second: all three count until 61 s,
    then none does, and counts() is empty (not left with phantom failures)."""
    errors = ErrorWindow()
    errors.record_failure("Timeout", 1.0)
    errors.record_failure("Timeout", 1.5)
    errors.record_failure("ServerError", 1.5)
    assert errors.counts(60.5) == {"Timeout": 2, "ServerError": 1}
    assert (errors.failures(61.0), errors.counts(61.0), errors.error_rate(61.0)) == (0, {}, 0.0)
