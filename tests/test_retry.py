"""Retry policy: config validation, full-jitter backoff, the decision table, budget, throttle."""

from __future__ import annotations

import math
import random
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import providers._errors as errors
from providers import (
    AllProvidersFailed,
    ConfigError,
    InvalidRequest,
    LLMError,
    Overloaded,
    QuotaExceeded,
    RateLimited,
    ServerError,
)
from router._retry import (
    HedgeThrottle,
    RetryBudget,
    RetryBudgetStatistics,
    RetryConfig,
    backoff_delay,
    retry_delay,
)
from router._validation import validate

# --------------------------------------------------------------------------- helpers


class FixedRandom(random.Random):
    """A Random whose ``random()`` is always ``value``: uniform(0, cap) == value · cap."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


TOP = FixedRandom(1.0)  # every draw at the top of its range: the cap itself
MID = FixedRandom(0.5)


def cap(attempt: int, config: RetryConfig) -> float:
    return min(config.initial_backoff * config.multiplier ** (attempt - 1), config.max_backoff)


# --------------------------------------------------------------------------- RetryConfig


def test_config_defaults() -> None:
    """The defaults are the ones the docstring writes down."""
    assert RetryConfig() == RetryConfig(
        max_attempts=3,
        initial_backoff=0.5,
        max_backoff=8.0,
        multiplier=2.0,
        max_retry_after=60.0,
        budget_ratio=0.2,
        budget_min_per_second=1.0,
        budget_window=10.0,
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_attempts", 0),
        ("max_attempts", 11),
        ("max_attempts", 2.0),
        ("max_attempts", True),
        ("initial_backoff", -0.1),
        ("initial_backoff", math.nan),
        ("max_backoff", 0.1),  # below initial_backoff
        ("max_backoff", math.inf),
        ("multiplier", 0.5),
        ("multiplier", math.inf),
        ("max_retry_after", -1.0),
        ("budget_ratio", -0.2),
        ("budget_ratio", "0.2"),
        ("budget_min_per_second", -1.0),
        ("budget_window", 0.0),
        ("budget_window", 2.5),
        ("budget_window", 61.0),
    ],
)
def test_config_rejects_bad_values(field: str, value: Any) -> None:
    """Each bad field: building the config does not raise; validating it (as
    open_router and load_config do) is a ConfigError at that field."""
    config = RetryConfig(**{field: value})
    with pytest.raises(ConfigError) as info:
        validate(config, RetryConfig)
    assert info.value.path == f"$.{field}"


def test_config_decodes_strictly() -> None:
    """Validating raw values forbids unknown fields and checks ranges, at their path."""
    assert validate({"max_attempts": 5}, RetryConfig).max_attempts == 5
    with pytest.raises(ConfigError, match="unknown field 'retries'") as info:
        validate({"retries": 5}, RetryConfig)
    assert info.value.path == "$.retries"
    with pytest.raises(ConfigError, match="from 1 to 10") as info:
        validate({"max_attempts": 50}, RetryConfig)
    assert info.value.path == "$.max_attempts"


def test_config_is_frozen() -> None:
    """A RetryConfig cannot be changed after it is made."""
    with pytest.raises(AttributeError):
        RetryConfig().max_attempts = 5  # type: ignore[misc]


# --------------------------------------------------------------------------- backoff


@pytest.mark.parametrize(
    ("attempt", "expected_cap"),
    [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 8.0), (6, 8.0), (9, 8.0), (10, 8.0)],
)
def test_backoff_caps_per_attempt(attempt: int, expected_cap: float) -> None:
    """With the defaults, retry n draws from [0, min(0.5 * 2^(n-1), 8)] exactly."""
    config = RetryConfig()
    assert backoff_delay(attempt, config, TOP) == expected_cap
    assert backoff_delay(attempt, config, MID) == expected_cap / 2
    assert backoff_delay(attempt, config, FixedRandom(0.0)) == 0.0


def test_backoff_custom_config() -> None:
    """initial_backoff, multiplier and max_backoff enter the formula as written."""
    config = RetryConfig(initial_backoff=0.1, multiplier=3.0, max_backoff=2.0)
    caps = [backoff_delay(n, config, TOP) for n in range(1, 6)]
    assert caps == pytest.approx([0.1, 0.3, 0.9, 2.0, 2.0])


def test_backoff_huge_attempt_does_not_overflow() -> None:
    """An attempt number far past any config still gives max_backoff, not OverflowError."""
    assert backoff_delay(100_000, RetryConfig(), TOP) == 8.0
    assert backoff_delay(100_000, RetryConfig(multiplier=3, initial_backoff=1), TOP) == 8.0
    assert backoff_delay(100_000, RetryConfig(initial_backoff=0.0, max_backoff=0.0), TOP) == 0.0


def test_backoff_rejects_attempt_zero() -> None:
    """Retries are numbered from 1."""
    with pytest.raises(ValueError, match="attempt"):
        backoff_delay(0, RetryConfig(), TOP)


@given(seed=st.integers(min_value=0, max_value=2**64), attempt=st.integers(1, 12))
def test_backoff_within_cap_and_deterministic(seed: int, attempt: int) -> None:
    """Invariant: 0 <= delay <= cap(attempt), and the same seed gives the same delays."""
    config = RetryConfig()
    first = [backoff_delay(n, config, random.Random(seed)) for n in range(1, attempt + 1)]
    again = [backoff_delay(n, config, random.Random(seed)) for n in range(1, attempt + 1)]
    assert first == again
    for n, delay in enumerate(first, start=1):
        assert 0.0 <= delay <= cap(n, config)


@pytest.mark.parametrize("attempt", [1, 3, 5, 8])
def test_backoff_mean_is_half_the_cap(attempt: int) -> None:
    """Full jitter is uniform: over 20,000 draws the mean is cap/2 within 2%."""
    config = RetryConfig()
    rng = random.Random(attempt)
    draws = [backoff_delay(attempt, config, rng) for _ in range(20_000)]
    expected = cap(attempt, config)
    assert sum(draws) / len(draws) == pytest.approx(expected / 2, rel=0.02)
    assert min(draws) < 0.01 * expected
    assert max(draws) > 0.99 * expected


# --------------------------------------------------------------------------- retry_delay


def _instance(cls: type[LLMError]) -> LLMError:
    return cls("boom")


ERROR_CLASSES = sorted(
    (obj for obj in vars(errors).values() if isinstance(obj, type) and issubclass(obj, LLMError)),
    key=lambda c: c.__name__,
)
RETRYABLE = {
    "RateLimited",
    "Overloaded",
    "ServerError",
    "Timeout",
    "ConnectionFailed",
    "ProtocolError",
    "InvalidOutput",
}


def test_error_tree_is_covered() -> None:
    """The decision table below sees the whole error tree, retryable classes included."""
    names = {c.__name__ for c in ERROR_CLASSES}
    assert names >= RETRYABLE
    assert {"LLMError", "QuotaExceeded", "StreamInterrupted", "AllProvidersFailed"} <= names


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_retry_delay_per_error_class(cls: type[LLMError]) -> None:
    """Transient classes retry after the backoff; every other class is not retried."""
    delay = retry_delay(_instance(cls), 1, RetryConfig(), MID)
    if cls.__name__ in RETRYABLE:
        assert delay == 0.25
    else:
        assert delay is None


@pytest.mark.parametrize(
    "error",
    [
        ValueError("bug"),
        KeyError("k"),
        KeyboardInterrupt(),
        BaseExceptionGroup("g", [ValueError()]),
    ],
    ids=repr,
)
def test_retry_delay_refuses_foreign_errors(error: BaseException) -> None:
    """Anything that is not an LLMError (a bug, a cancellation) is never retried."""
    assert retry_delay(error, 1, RetryConfig(), MID) is None


def test_retry_delay_obeys_x_should_retry() -> None:
    """The per-instance retryable override wins over the class default, both ways."""
    assert retry_delay(RateLimited("x", retryable=False), 1, RetryConfig(), MID) is None
    assert retry_delay(InvalidRequest("x", retryable=True), 1, RetryConfig(), MID) == 0.25


def test_retry_delay_all_providers_failed_follows_its_attempts() -> None:
    """AllProvidersFailed is retried only when one of its attempts' errors was retryable."""
    transient = AllProvidersFailed("all", errors=[QuotaExceeded("quota"), ServerError("500")])
    fatal = AllProvidersFailed("all", errors=[QuotaExceeded("quota")])
    assert retry_delay(transient, 1, RetryConfig(), MID) == 0.25
    assert retry_delay(fatal, 1, RetryConfig(), MID) is None


@pytest.mark.parametrize(
    ("retry_after", "attempt", "rng", "expected"),
    [
        (3.0, 1, TOP, 3.0),  # server asks longer than the backoff: honour it
        (0.0, 1, TOP, 0.5),  # "retry now" never makes us earlier than the backoff
        (0.1, 3, TOP, 2.0),  # backoff (cap 2 s) longer than the server asked
        (0.1, 3, MID, 1.0),
        (60.0, 1, MID, 60.0),  # exactly max_retry_after: still honoured
        (60.001, 1, MID, None),  # longer: fail over instead of waiting here
        (math.inf, 1, MID, None),
        (-1.0, 1, MID, 0.25),  # nonsense pushback is ignored: plain backoff
        (math.nan, 1, MID, 0.25),
        (None, 2, TOP, 1.0),
    ],
)
def test_retry_delay_honours_retry_after(
    retry_after: float | None, attempt: int, rng: random.Random, expected: float | None
) -> None:
    """delay = max(retry_after, backoff), and None when retry_after > max_retry_after."""
    error = RateLimited("slow down", retry_after=retry_after)
    assert retry_delay(error, attempt, RetryConfig(max_attempts=5), rng) == expected


def test_retry_delay_max_retry_after_is_configurable() -> None:
    """A lower max_retry_after refuses waits the default would honour."""
    error = Overloaded("busy", retry_after=10.0)
    assert retry_delay(error, 1, RetryConfig(max_retry_after=5.0), MID) is None
    assert retry_delay(error, 1, RetryConfig(max_retry_after=10.0), MID) == 10.0


@pytest.mark.parametrize(
    ("max_attempts", "attempt", "retries"),
    [(1, 1, False), (2, 1, True), (2, 2, False), (3, 2, True), (3, 3, False), (10, 9, True)],
)
def test_retry_delay_stops_when_attempts_are_spent(
    max_attempts: int, attempt: int, retries: bool
) -> None:
    """After `attempt` tries, a retry is allowed only while attempt < max_attempts."""
    config = RetryConfig(max_attempts=max_attempts)
    delay = retry_delay(ServerError("500"), attempt, config, TOP)
    assert (delay is not None) is retries
    if retries:
        assert delay == cap(attempt, config)


# --------------------------------------------------------------------------- RetryBudget


def test_budget_floor_allows_retries_without_traffic() -> None:
    """With no requests at all, the floor grants min_per_second x window retries."""
    budget = RetryBudget(RetryConfig())  # 1/s over 10 s
    assert [budget.try_spend(now=0.5) for _ in range(11)] == [True] * 10 + [False]
    assert budget.statistics(now=0.5) == RetryBudgetStatistics(requests=0, retries=10, available=0)


def test_budget_ratio_of_requests() -> None:
    """Without a floor, 100 requests fund exactly 20 retries at ratio 0.2."""
    budget = RetryBudget(RetryConfig(budget_min_per_second=0.0))
    for _ in range(100):
        budget.record_request(now=3.0)
    assert budget.statistics(now=3.0) == RetryBudgetStatistics(
        requests=100, retries=0, available=20
    )
    assert sum(budget.try_spend(now=3.5) for _ in range(25)) == 20


def test_budget_ratio_plus_floor() -> None:
    """Ratio and floor add up: 10 requests at 0.5 plus 0.5/s over 4 s allow 7 retries."""
    config = RetryConfig(budget_ratio=0.5, budget_min_per_second=0.5, budget_window=4.0)
    budget = RetryBudget(config)
    for _ in range(10):
        budget.record_request(now=0.0)
    assert sum(budget.try_spend(now=1.0) for _ in range(10)) == 7


def test_budget_window_slides() -> None:
    """Requests and retries leave the window exactly budget_window seconds later."""
    budget = RetryBudget(RetryConfig(budget_min_per_second=0.0, budget_window=5.0))
    for _ in range(10):
        budget.record_request(now=100.2)
    assert budget.try_spend(now=100.9)
    assert budget.try_spend(now=104.99)
    assert not budget.try_spend(now=104.99)
    # At 105.0 the bucket of second 100 is evicted: its requests and its retry go,
    # while the retry of second 104 stays counted.
    assert budget.statistics(now=105.0) == RetryBudgetStatistics(requests=0, retries=1, available=0)
    assert not budget.try_spend(now=105.0)


def test_budget_partial_eviction() -> None:
    """Only the buckets that fell out of the window are subtracted."""
    budget = RetryBudget(RetryConfig(budget_min_per_second=0.0, budget_window=3.0))
    for second in (0.0, 1.0, 2.0):
        for _ in range(5):
            budget.record_request(now=second)
    assert budget.statistics(now=2.5).requests == 15
    assert budget.statistics(now=3.0).requests == 10
    assert budget.statistics(now=4.7).requests == 5
    assert budget.statistics(now=50.0).requests == 0


def test_budget_time_going_backwards_counts_in_newest_bucket() -> None:
    """An earlier `now` than already seen is counted in the current bucket, not lost."""
    budget = RetryBudget(RetryConfig(budget_min_per_second=0.0, budget_window=2.0))
    budget.record_request(now=10.0)
    for _ in range(9):
        budget.record_request(now=3.0)
    assert budget.statistics(now=10.0).requests == 10
    assert budget.statistics(now=11.0).requests == 10
    assert budget.statistics(now=12.0).requests == 0


def test_budget_works_on_negative_clock() -> None:
    """trio's clock may start anywhere, even below zero."""
    budget = RetryBudget(RetryConfig(budget_min_per_second=0.0, budget_window=2.0))
    for _ in range(5):
        budget.record_request(now=-3.5)
    assert budget.try_spend(now=-2.1)
    assert budget.statistics(now=-2.0).requests == 0


events = st.lists(
    st.tuples(
        st.floats(min_value=0.0, max_value=5.0, allow_nan=False),
        st.sampled_from(["request", "request", "spend", "stats"]),
    ),
    max_size=150,
)
configs = st.builds(
    RetryConfig,
    budget_ratio=st.sampled_from([0.0, 0.1, 0.2, 0.5, 1.0, 3.0]),
    budget_min_per_second=st.sampled_from([0.0, 0.1, 0.3, 1.0, 2.5]),
    budget_window=st.integers(1, 12).map(float),
)


@given(config=configs, steps=events, start=st.floats(min_value=-1e6, max_value=1e6))
def test_budget_never_exceeds_ratio_of_requests_plus_floor(
    config: RetryConfig, steps: list[tuple[float, str]], start: float
) -> None:
    """Invariant: at every spend, retries in the window <= ratio x requests + floor x window.

    The window is the one the budget keeps: the current one-second bucket of trio time and
    the budget_window - 1 before it.  A brute-force model over every recorded timestamp
    also proves the budget is not stricter than that: it refuses only when one more retry
    would break the bound.
    """
    budget = RetryBudget(config)
    window = int(config.budget_window)
    requests: list[float] = []
    retries: list[float] = []
    now = start

    def in_window(times: list[float], at: float) -> int:
        newest = math.floor(at)
        return sum(1 for t in times if newest - window < math.floor(t) <= newest)

    for gap, kind in steps:
        now += gap  # trio's clock never goes backwards
        allowed = config.budget_ratio * in_window(requests, now) + (
            config.budget_min_per_second * config.budget_window
        )
        if kind == "request":
            budget.record_request(now)
            requests.append(now)
        elif kind == "spend":
            granted = budget.try_spend(now)
            assert granted is (in_window(retries, now) + 1 <= allowed + 1e-9)
            if granted:
                retries.append(now)
                # Checked when spending: later, the requests that paid for these retries
                # may leave the window before the retries do.
                assert in_window(retries, now) <= allowed + 1e-9
        else:
            stats = budget.statistics(now)
            assert stats.requests == in_window(requests, now)
            assert stats.retries == in_window(retries, now)
            assert stats.available == max(0, math.floor(allowed - stats.retries + 1e-9))


# --------------------------------------------------------------------------- HedgeThrottle


def test_throttle_starts_full_and_allowed() -> None:
    """A new throttle holds max_tokens and allows hedges."""
    throttle = HedgeThrottle()
    assert throttle.tokens == 10.0
    assert throttle.allowed()


def test_throttle_stops_at_half() -> None:
    """With 10 tokens, four failures still allow hedges; the fifth (5 = max/2) stops them."""
    throttle = HedgeThrottle()
    for _ in range(4):
        throttle.record_failure()
    assert throttle.tokens == 6.0
    assert throttle.allowed()
    throttle.record_failure()
    assert throttle.tokens == 5.0
    assert not throttle.allowed()


def test_throttle_recovers_with_successes() -> None:
    """From exactly half, one success (+0.1) lifts the count above half again."""
    throttle = HedgeThrottle()
    for _ in range(5):
        throttle.record_failure()
    throttle.record_success()
    assert throttle.tokens == 5.1
    assert throttle.allowed()


def test_throttle_bounds() -> None:
    """Tokens never go below zero nor above max_tokens, and the sums are exact."""
    throttle = HedgeThrottle()
    for _ in range(50):
        throttle.record_failure()
    assert throttle.tokens == 0.0
    for _ in range(30):
        throttle.record_success()
    assert throttle.tokens == 3.0  # thirty tenths, no float drift
    for _ in range(200):
        throttle.record_success()
    assert throttle.tokens == 10.0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 1001}, "max_tokens"),
        ({"max_tokens": math.nan}, "max_tokens"),
        ({"token_ratio": 0}, "token_ratio"),
        ({"token_ratio": -0.1}, "token_ratio"),
        ({"token_ratio": math.inf}, "token_ratio"),
    ],
)
def test_throttle_rejects_bad_settings(kwargs: dict[str, float], field: str) -> None:
    """Out-of-range settings raise ValueError naming the field."""
    with pytest.raises(ValueError, match=f"^{field}: "):
        HedgeThrottle(**kwargs)


@given(
    max_tokens=st.integers(1, 100),
    ratio_milli=st.integers(1, 2000),
    outcomes=st.lists(st.booleans(), max_size=200),
)
def test_throttle_matches_grpc_model(
    max_tokens: int, ratio_milli: int, outcomes: list[bool]
) -> None:
    """Invariant: tokens follow gRPC's rule exactly, and allowed() iff tokens > max/2."""
    ratio = Fraction(ratio_milli, 1000)
    throttle = HedgeThrottle(max_tokens=max_tokens, token_ratio=float(ratio))
    tokens = Fraction(max_tokens)
    for success in outcomes:
        if success:
            throttle.record_success()
            tokens = min(Fraction(max_tokens), tokens + ratio)
        else:
            throttle.record_failure()
            tokens = max(Fraction(0), tokens - 1)
        assert throttle.tokens == float(tokens)
        assert throttle.allowed() is (tokens > Fraction(max_tokens, 2))
